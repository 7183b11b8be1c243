"""Hard pair mining for supervised contrastive fine-tuning.

PairTune (``../shared/seeds/002_5040cf44179b95f4.txt``, §2.1): "we employ hard pair mining [9],
aiming to identify the most challenging positive and negative instances through cosine
similarity. Specifically, this involves locating data within the same class that exhibits the
lowest cosine similarity to the anchor, as well as identifying data from distinct classes that
bears the highest cosine similarity to the anchor." [9] is the multi-similarity (MS) loss of
Wang et al., CVPR 2019, whose mining step compares each pair with the *hardest* pair of the
other kind, with a margin ``epsilon`` (0.1 in [9]).

With ``S_ij = cos(z_i, z_j)`` and, for each anchor ``i``, ``P(i) = {j != i : y_j = y_i}`` and
``N(i) = {j : y_j != y_i}``::

    hard positives of i:  { j in P(i) : S_ij < max_{k in N(i)} S_ik + epsilon }
    hard negatives of i:  { j in N(i) : S_ij > min_{k in P(i)} S_ik - epsilon }

Strict inequalities, as in [9]. An anchor with no negative in the batch keeps no positive
(``max`` over an empty set is ``-inf``), an anchor with no positive keeps no negative. Both sets
are non-empty exactly when ``min P-similarity - max N-similarity < epsilon``: an anchor whose
classes are already separated by more than the margin contributes nothing, which is the point
(the seed: easy pairs give "negligible contrastive loss gradients").

``hardest=True`` is the literal reading of the seed's sentence instead: only *the*
lowest-similarity positive and *the* highest-similarity negative of each anchor (ties broken by
the lower index). The default is the MS rule above because the seed cites [9] for it and
because a single pair per anchor leaves SupCon a two-way softmax.

The masks are computed without gradient (they select terms; they are not part of the loss).
Shapes: ``z [N, d]``, ``labels [N]`` -> ``MinedPairs(positives [N, N], negatives [N, N])``
boolean, diagonal always ``False``; row ``i`` lists anchor ``i``'s pairs.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from tympan.errors import ConfigError, TympanError

__all__ = ["MinedPairs", "hard_pair_miner"]


class MinedPairs(NamedTuple):
    """Boolean ``[N, N]`` masks; ``positives[i, j]``: ``j`` is a kept positive of anchor ``i``."""

    positives: Tensor
    negatives: Tensor


@torch.no_grad()
def hard_pair_miner(z: Tensor, labels: Tensor, epsilon: float = 0.1, *, hardest: bool = False) -> MinedPairs:
    """Multi-similarity hard pairs of ``z [N, d]`` with ``labels [N]`` (see the module docstring).

    Plug the result into :func:`tympan.objectives.supcon.supcon_loss` as ``pairs=``.
    """
    if z.dim() != 2:
        raise TympanError(f"z: expected embeddings of shape [N, d], got {tuple(z.shape)}")
    labels = torch.as_tensor(labels, device=z.device)
    if labels.dim() != 1 or labels.shape[0] != z.shape[0]:
        raise TympanError(f"labels: expected shape [{z.shape[0]}] to match z, got {tuple(labels.shape)}")
    if not (isinstance(epsilon, (int, float)) and math.isfinite(epsilon)):
        raise ConfigError(f"epsilon={epsilon!r}: use a finite margin (the seed's source [9] uses 0.1)")

    n = z.shape[0]
    if n == 0:
        empty = torch.zeros(0, 0, dtype=torch.bool, device=z.device)
        return MinedPairs(empty, empty.clone())
    z = z.detach()
    u = F.normalize(z if z.dtype in (torch.float32, torch.float64) else z.float(), dim=1)
    sim = u @ u.T
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    same = labels[:, None] == labels[None, :]
    all_pos = same & ~eye
    all_neg = ~same

    if hardest:
        # one-hot of the arg-min / arg-max; rows without a candidate keep nothing
        hard_pos = sim.masked_fill(~all_pos, float("inf")).argmin(dim=1)
        hard_neg = sim.masked_fill(~all_neg, float("-inf")).argmax(dim=1)
        rows = torch.arange(n, device=z.device)
        pos = torch.zeros_like(eye)
        neg = torch.zeros_like(eye)
        pos[rows, hard_pos] = True
        neg[rows, hard_neg] = True
        return MinedPairs(pos & all_pos, neg & all_neg)

    max_neg = sim.masked_fill(~all_neg, float("-inf")).amax(dim=1, keepdim=True)
    min_pos = sim.masked_fill(~all_pos, float("inf")).amin(dim=1, keepdim=True)
    pos = all_pos & (sim < max_neg + epsilon)
    neg = all_neg & (sim > min_pos - epsilon)
    return MinedPairs(pos, neg)
