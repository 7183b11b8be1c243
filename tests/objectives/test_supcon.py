"""SupCon (AudioConFit's PairTune loss, Khosla et al. L_out) against direct evaluations of the formula."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tympan.errors import ConfigError, TympanError
from tympan.objectives.mining import hard_pair_miner
from tympan.objectives.nt_xent import nt_xent
from tympan.objectives.supcon import SupConLoss, supcon_loss


def _reference(z: np.ndarray, y: list[int], tau: float, pos=None, neg=None) -> float:
    """The docstring's formula, one anchor and one term at a time."""
    u = z / np.linalg.norm(z, axis=1, keepdims=True)
    n = len(y)
    losses = []
    for i in range(n):
        P = [j for j in range(n) if j != i and (y[j] == y[i] if pos is None else pos[i][j])]
        N = [j for j in range(n) if j != i and (y[j] != y[i] if neg is None else neg[i][j])]
        if not P:
            continue  # skipped anchor
        denom = sum(math.exp(float(u[i] @ u[a]) / tau) for a in P + N)
        losses.append(-sum(math.log(math.exp(float(u[i] @ u[p]) / tau) / denom) for p in P) / len(P))
    return sum(losses) / len(losses)


Z4 = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-0.6, 0.8]])
Y4 = [0, 0, 1, 1]


def test_hand_computed_four_samples_two_classes() -> None:
    tau = 0.5
    # written out: u are unit vectors, so cosines are dot products
    s = Z4 @ Z4.T / tau
    by_hand = 0.0
    for i, p in [(0, 1), (1, 0), (2, 3), (3, 2)]:
        others = [j for j in range(4) if j != i]
        by_hand += -(s[i, p] - math.log(sum(math.exp(s[i, j]) for j in others)))
    by_hand /= 4
    assert by_hand == pytest.approx(_reference(Z4, Y4, tau), rel=1e-12)
    z = torch.tensor(Z4, dtype=torch.float32)
    assert supcon_loss(z, torch.tensor(Y4), tau).item() == pytest.approx(by_hand, rel=1e-5)
    # cosine similarity: the scale of each row does not matter
    scaled = z * torch.tensor([[3.0], [0.2], [1.0], [7.0]])
    assert supcon_loss(scaled, torch.tensor(Y4), tau).item() == pytest.approx(by_hand, rel=1e-5)


def test_several_positives_are_averaged_outside_the_log() -> None:
    g = np.random.default_rng(0)
    z = g.normal(size=(9, 5))
    y = [0, 0, 0, 1, 1, 1, 1, 2, 2]
    got = supcon_loss(torch.tensor(z, dtype=torch.float64), torch.tensor(y), 0.1).item()
    assert got == pytest.approx(_reference(z, y, 0.1), rel=1e-9)


def test_no_miner_is_standard_supcon_and_one_positive_is_nt_xent() -> None:
    g = torch.Generator().manual_seed(1)
    z = torch.randn(8, 6, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 0, 2, 1, 2, 0, 1])
    eye = torch.eye(8, dtype=torch.bool)
    same = y[:, None] == y[None, :]
    assert supcon_loss(z, y).item() == pytest.approx(supcon_loss(z, y, pairs=(same & ~eye, ~same)).item(), rel=1e-12)
    # two views of N clips, each clip its own class: SupCon is NT-Xent
    z1, z2 = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    labels = torch.arange(5).repeat(2)
    assert supcon_loss(torch.cat([z1, z2]), labels, 0.2).item() == pytest.approx(nt_xent(z1, z2, 0.2).item(), rel=1e-5)


def test_mined_masks_restrict_the_terms() -> None:
    z = np.random.default_rng(2).normal(size=(6, 3))
    y = [0, 0, 0, 1, 1, 1]
    pos = np.zeros((6, 6), dtype=bool)
    neg = np.zeros((6, 6), dtype=bool)
    pos[0, 2] = True
    neg[0, 4] = True  # anchor 0: one positive against one negative
    pos[3, [4, 5]] = True
    neg[3, [0, 1, 2]] = True  # anchor 3: all its pairs
    # anchors 1, 2, 4, 5: nothing mined, so skipped
    zt = torch.tensor(z, dtype=torch.float64)
    got = supcon_loss(zt, torch.tensor(y), 0.1, pairs=(torch.tensor(pos), torch.tensor(neg))).item()
    assert got == pytest.approx(_reference(z, y, 0.1, pos, neg), rel=1e-9)
    assert got != pytest.approx(supcon_loss(zt, torch.tensor(y), 0.1).item(), rel=1e-3)
    # anchor 0 alone: a two-way softmax
    u = z / np.linalg.norm(z, axis=1, keepdims=True)
    l0 = math.log(1 + math.exp((u[0] @ u[4] - u[0] @ u[2]) / 0.1))
    only0 = (torch.tensor(pos) & (torch.arange(6)[:, None] == 0), torch.tensor(neg) & (torch.arange(6)[:, None] == 0))
    assert supcon_loss(zt, torch.tensor(y), 0.1, pairs=only0).item() == pytest.approx(l0, rel=1e-9)


def test_with_the_hard_pair_miner_and_module() -> None:
    g = torch.Generator().manual_seed(3)
    z = torch.randn(12, 4, generator=g, dtype=torch.float64)
    y = torch.arange(4).repeat_interleave(3)
    pairs = hard_pair_miner(z, y, epsilon=0.1)
    want = _reference(z.numpy(), y.tolist(), 0.1, pairs.positives.numpy(), pairs.negatives.numpy())
    assert supcon_loss(z, y, pairs=pairs).item() == pytest.approx(want, rel=1e-9)
    assert SupConLoss(miner=hard_pair_miner)(z, y).item() == pytest.approx(want, rel=1e-9)
    assert SupConLoss()(z, y).item() == pytest.approx(supcon_loss(z, y).item(), rel=1e-12)


def test_gradient_flows() -> None:
    w = torch.randn(10, 8, requires_grad=True)
    y = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
    supcon_loss(w, y).backward()
    assert w.grad is not None and torch.isfinite(w.grad).all() and w.grad.abs().sum() > 0
    w.grad = None
    supcon_loss(w, y, pairs=hard_pair_miner(w, y, epsilon=1.0)).backward()
    assert torch.isfinite(w.grad).all() and w.grad.abs().sum() > 0


def test_anchor_without_positive_is_skipped_never_nan() -> None:
    z = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    y = [0, 0, 1]  # anchor 2 has no positive
    w = torch.tensor(z, requires_grad=True)
    loss = supcon_loss(w, torch.tensor(y), 0.5)
    assert loss.item() == pytest.approx(_reference(z, y, 0.5), rel=1e-9)
    # anchors 0 and 1, each with one positive and the singleton as negative
    l0 = math.log(1 + math.exp((0.0 - 0.6) / 0.5))
    l1 = math.log(1 + math.exp((0.8 - 0.6) / 0.5))
    assert loss.item() == pytest.approx((l0 + l1) / 2, rel=1e-9)
    loss.backward()
    assert torch.isfinite(w.grad).all()
    # no anchor has a positive: zero, still differentiable
    v = torch.randn(4, 3, requires_grad=True)
    empty = supcon_loss(v, torch.arange(4))
    assert empty.item() == 0.0
    empty.backward()
    assert torch.equal(v.grad, torch.zeros_like(v))
    nothing = torch.zeros(4, 4, dtype=torch.bool)
    assert supcon_loss(v, torch.tensor([0, 0, 1, 1]), pairs=(nothing, nothing)).item() == 0.0


def test_temperature_scaling() -> None:
    # two tight, orthogonal clusters: each anchor has cos 1 to its positive, 0 to two negatives,
    # so l_i = -log(e^(1/tau) / (e^(1/tau) + 2)) = log(1 + 2 e^(-1/tau))
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
    y = torch.tensor([0, 0, 1, 1])
    losses = []
    for tau in (1.0, 0.5, 0.1):
        got = supcon_loss(z, y, tau).item()
        assert got == pytest.approx(math.log(1 + 2 * math.exp(-1 / tau)), rel=1e-9)
        losses.append(got)
    assert losses[0] > losses[1] > losses[2]
    assert supcon_loss(z, y).item() == supcon_loss(z, y, 0.1).item()  # the seed's default
    # on random data the loss is the formula with every similarity divided by tau
    r = np.random.default_rng(4).normal(size=(6, 3))
    for tau in (0.05, 0.3, 2.0):
        got = supcon_loss(torch.tensor(r), torch.tensor([0, 1, 0, 1, 2, 2]), tau).item()
        assert got == pytest.approx(_reference(r, [0, 1, 0, 1, 2, 2], tau), rel=1e-9)


def test_errors_name_the_field() -> None:
    z, y = torch.randn(4, 3), torch.tensor([0, 0, 1, 1])
    with pytest.raises(ConfigError, match="temperature"):
        supcon_loss(z, y, 0.0)
    with pytest.raises(ConfigError, match="temperature"):
        SupConLoss(temperature=-1.0)
    with pytest.raises(TympanError, match="labels"):
        supcon_loss(z, torch.tensor([0, 1]))
    with pytest.raises(TympanError, match="z"):
        supcon_loss(torch.randn(4), y)
    ok = torch.zeros(4, 4, dtype=torch.bool)
    with pytest.raises(TympanError, match="pairs.positives"):
        supcon_loss(z, y, pairs=(torch.zeros(3, 3, dtype=torch.bool), ok))
    cross = ok.clone()
    cross[0, 2] = True
    with pytest.raises(TympanError, match="pairs.positives"):
        supcon_loss(z, y, pairs=(cross, ok))
    with pytest.raises(TympanError, match="pairs.negatives"):
        supcon_loss(z, y, pairs=(ok, ~ok))
    # a diagonal set by a miner is ignored, not an error
    diag = torch.eye(4, dtype=torch.bool)
    same = y[:, None] == y[None, :]
    assert supcon_loss(z, y, pairs=(same, ~same | diag)).item() == pytest.approx(supcon_loss(z, y).item())
