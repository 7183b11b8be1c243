"""Supervised contrastive (SupCon) loss, optionally restricted to mined pairs.

PairTune, stage 1 of AudioConFit (``../shared/seeds/002_5040cf44179b95f4.txt``, §2.1 and §3.2
"Loss"): "We use the supervised contrastive (SUPCON) loss [8] with a scalar temperature
parameter tau = 0.1, following [8]", on projections "normalise[d] ... to lie on the unit
hyper-sphere, which enables using an inner product to measure distances", with "hard pair
mining [9]" choosing which positives and negatives enter the loss. The seed writes no formula of
its own; [8] is Khosla et al., "Supervised contrastive learning", NeurIPS 2020, whose
recommended form L^sup_out (their eq. 2) averages over an anchor's positives *outside* the log.
[9] is the multi-similarity miner of Wang et al., CVPR 2019 (:func:`~.mining.hard_pair_miner`).

For ``N`` rows ``z_i`` with labels ``y_i``, ``u_i = z_i / ||z_i||`` and, for each anchor ``i``,

* ``P(i)``: its positives. Without a miner every ``p != i`` with ``y_p = y_i``; with a miner
  the mined positives of row ``i``;
* ``N(i)``: its negatives. Without a miner every ``n`` with ``y_n != y_i``; with a miner the
  mined negatives of row ``i``;
* ``A(i) = P(i) ∪ N(i)``: the contrast set of the softmax (without a miner every ``a != i``,
  exactly Khosla's ``A(i)``; with a miner the pairs the miner kept, as in the
  pytorch-metric-learning composition "a miner plugs into a loss")::

    l_i = -1/|P(i)| * sum_{p in P(i)} log( exp(u_i·u_p / tau) / sum_{a in A(i)} exp(u_i·u_a / tau) )

    L   = 1/|V| * sum_{i in V} l_i,      V = { i : |P(i)| > 0 }

Anchors with no positive (a class seen once in the batch, or an anchor the miner found nothing
hard for) are **skipped**, never NaN: they are left out of ``V``. If ``V`` is empty the loss is
``0`` (still attached to the graph, so ``backward()`` gives zero gradients). Khosla et al. sum
over anchors; the mean over ``V`` keeps the scale independent of the batch size.

Two views of a clip are two rows with the same label (stack them: ``z = [z1; z2]``,
``labels = [y; y]``).

Shapes: ``z [N, d]`` (normalised here, so scale-free), ``labels [N]`` (integers) and optionally
``pairs = (positives [N, N], negatives [N, N])`` boolean -> scalar.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tympan.errors import ConfigError, TympanError

__all__ = ["SupConLoss", "supcon_loss"]


def _check_pairs(pairs: tuple[Tensor, Tensor], n: int, same: Tensor) -> tuple[Tensor, Tensor]:
    if not isinstance(pairs, (tuple, list)) or len(pairs) != 2:
        raise TympanError(
            "pairs: expected (positives, negatives), two boolean [N, N] masks as returned by "
            "tympan.objectives.mining.hard_pair_miner"
        )
    pos, neg = (torch.as_tensor(m, device=same.device) for m in pairs)
    for name, m in (("positives", pos), ("negatives", neg)):
        if m.shape != (n, n):
            raise TympanError(
                f"pairs.{name}: expected shape {(n, n)}, got {tuple(m.shape)}; mine on the same batch as z"
            )
        if m.dtype != torch.bool:
            raise TympanError(f"pairs.{name}: expected a boolean mask, got {m.dtype}; pass mask.bool()")
    # the diagonal is ignored, whatever the miner put there
    eye = torch.eye(n, dtype=torch.bool, device=same.device)
    pos, neg = pos & ~eye, neg & ~eye
    if (pos & ~same).any():
        raise TympanError("pairs.positives: marks a pair of different classes as positive; check the miner's labels")
    if (neg & same).any():
        raise TympanError("pairs.negatives: marks a pair of the same class as negative; check the miner's labels")
    return pos, neg


def supcon_loss(
    z: Tensor,
    labels: Tensor,
    temperature: float = 0.1,
    pairs: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """SupCon loss (Khosla et al., 2020, L_out) of ``z [N, d]`` with ``labels [N]``.

    ``pairs``: optional ``(positives, negatives)`` boolean ``[N, N]`` masks from a miner
    (:func:`tympan.objectives.mining.hard_pair_miner`); the diagonal is ignored. Without it all
    same-class pairs are positives and all other-class pairs negatives. See the module docstring
    for the formula; anchors without a positive are skipped.
    """
    if z.dim() != 2:
        raise TympanError(f"z: expected projections of shape [N, d], got {tuple(z.shape)}")
    labels = torch.as_tensor(labels, device=z.device)
    if labels.dim() != 1 or labels.shape[0] != z.shape[0]:
        raise TympanError(f"labels: expected shape [{z.shape[0]}] to match z, got {tuple(labels.shape)}")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ConfigError(f"temperature={temperature!r}: use a positive number (the seed uses 0.1)")

    n = z.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    same = labels[:, None] == labels[None, :]
    if pairs is None:
        pos, neg = same & ~eye, ~same
    else:
        pos, neg = _check_pairs(pairs, n, same)
    contrast = pos | neg

    valid = pos.any(dim=1)
    # float64 stays float64; half precision is upcast so that exp(1/tau) cannot overflow
    u = F.normalize(z if z.dtype in (torch.float32, torch.float64) else z.float(), dim=1)
    if not bool(valid.any()):
        # nothing to learn from in this batch; keep the graph so backward() still works
        return u.sum() * 0.0

    # only anchors with a positive: their contrast sets are non-empty, so logsumexp is finite
    # and no -inf/NaN reaches the gradient
    logits = (u[valid] @ u.T) / temperature
    pos_v = pos[valid]
    denom = torch.logsumexp(logits.masked_fill(~contrast[valid], float("-inf")), dim=1, keepdim=True)
    log_prob = logits - denom
    mean_log_prob_pos = torch.where(pos_v, log_prob, torch.zeros_like(log_prob)).sum(dim=1) / pos_v.sum(dim=1)
    return -mean_log_prob_pos.mean()


class SupConLoss(nn.Module):
    """:func:`supcon_loss` as a module; ``miner`` (e.g. ``hard_pair_miner``) is applied per batch.

    ``miner(z, labels) -> (positives, negatives)`` runs on the same ``z`` the loss sees; its
    masks carry no gradient.
    """

    def __init__(
        self, temperature: float = 0.1, miner: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None
    ) -> None:
        super().__init__()
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
            raise ConfigError(f"temperature={temperature!r}: use a positive number (the seed uses 0.1)")
        self.temperature = float(temperature)
        self.miner = miner

    def forward(self, z: Tensor, labels: Tensor) -> Tensor:
        pairs = self.miner(z, labels) if self.miner is not None else None
        return supcon_loss(z, labels, self.temperature, pairs)
