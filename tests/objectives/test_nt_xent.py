"""NT-Xent against hand-computed values, its invariances, gradients and errors; gather()."""

from __future__ import annotations

import math

import pytest
import torch

from tympan.objectives.distributed import gather, world_size
from tympan.objectives.nt_xent import nt_xent


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _by_hand(z1: list[list[float]], z2: list[list[float]], tau: float) -> tuple[list[list[float]], list[float]]:
    """Cosine matrix of ``u = [z1; z2]`` and the per-row losses, with plain Python math."""
    u = z1 + z2
    n = len(z1)

    def cos(a: list[float], b: list[float]) -> float:
        dot = sum(x * y for x, y in zip(a, b))
        return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))

    c = [[cos(a, b) for b in u] for a in u]
    rows = []
    for i in range(2 * n):
        p = (i + n) % (2 * n)
        denom = sum(math.exp(c[i][j] / tau) for j in range(2 * n) if j != i)
        rows.append(-math.log(math.exp(c[i][p] / tau) / denom))
    return c, rows


def test_hand_computed_two_pairs_in_two_dimensions() -> None:
    # not unit length on purpose: the loss must use cosines
    z1 = [[3.0, 0.0], [0.0, 2.0]]
    z2 = [[1.0, 1.0], [-1.0, 2.0]]
    tau = 0.5
    c, rows = _by_hand(z1, z2, tau)
    # the 4 x 4 cosine matrix, written out: u = [(1,0), (0,1), (1,1)/r2, (-1,2)/r5]
    r2, r5 = math.sqrt(2), math.sqrt(5)
    expected = [
        [1.0, 0.0, 1 / r2, -1 / r5],
        [0.0, 1.0, 1 / r2, 2 / r5],
        [1 / r2, 1 / r2, 1.0, 1 / (r2 * r5)],
        [-1 / r5, 2 / r5, 1 / (r2 * r5), 1.0],
    ]
    for i in range(4):
        for j in range(4):
            assert c[i][j] == pytest.approx(expected[i][j], abs=1e-12)
    # row 0 by hand: positive is row 2, negatives rows 1 and 3
    row0 = -(1 / r2) / tau + math.log(math.exp((1 / r2) / tau) + math.exp(0.0) + math.exp((-1 / r5) / tau))
    assert rows[0] == pytest.approx(row0, rel=1e-12)
    # row 3 by hand: positive is row 1, negatives rows 0 and 2
    row3 = -(2 / r5) / tau + math.log(
        math.exp((2 / r5) / tau) + math.exp((-1 / r5) / tau) + math.exp((1 / (r2 * r5)) / tau)
    )
    assert rows[3] == pytest.approx(row3, rel=1e-12)
    loss = nt_xent(torch.tensor(z1), torch.tensor(z2), temperature=tau)
    assert loss.dim() == 0
    assert loss.item() == pytest.approx(sum(rows) / 4, rel=1e-5)


def test_hand_computed_perfect_alignment_closed_form() -> None:
    # positives identical, negatives orthogonal: each row is -1/t + log(e^{1/t} + (2N - 2) e^0)
    z = torch.eye(3)
    for tau in (0.1, 0.5, 1.0):
        expected = math.log(1.0 + 4.0 * math.exp(-1.0 / tau))
        assert nt_xent(z, z.clone(), tau).item() == pytest.approx(expected, rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_examples_match_the_hand_formula(seed: int) -> None:
    g = _gen(seed)
    z1, z2 = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    for tau in (0.07, 0.1, 0.5, 2.0):
        _, rows = _by_hand(z1.double().tolist(), z2.double().tolist(), tau)
        assert nt_xent(z1, z2, tau).item() == pytest.approx(sum(rows) / 10, rel=1e-4)


def test_default_temperature_is_point_one() -> None:
    g = _gen(3)
    z1, z2 = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    assert nt_xent(z1, z2).item() == pytest.approx(nt_xent(z1, z2, 0.1).item(), rel=1e-6)


def test_aligned_orthogonal_beats_random() -> None:
    g = _gen(4)
    z = torch.linalg.qr(torch.randn(16, 16, generator=g))[0][:8]  # 8 orthonormal rows
    aligned = nt_xent(z, z.clone())
    random = nt_xent(z, torch.randn(8, 16, generator=g))
    assert aligned < 1e-3 < random
    assert aligned < random - 1.0


def test_temperature_scaling() -> None:
    z = torch.eye(4)
    # aligned with orthogonal negatives: a colder softmax is more confident, lower loss
    losses = [nt_xent(z, z.clone(), t).item() for t in (2.0, 1.0, 0.5, 0.1)]
    assert all(a > b for a, b in zip(losses, losses[1:])), losses
    # anti-aligned positives: colder makes the wrong answer costlier, higher loss
    anti = [nt_xent(z, -z, t).item() for t in (2.0, 1.0, 0.5, 0.1)]
    assert all(a < b for a, b in zip(anti, anti[1:])), anti
    # collapsed embeddings: every logit equal, loss log(2N - 1) whatever the temperature
    ones = torch.ones(4, 3)
    for t in (0.1, 1.0, 5.0):
        assert nt_xent(ones, ones.clone(), t).item() == pytest.approx(math.log(7), rel=1e-5)
    # very hot softmax: all logits ~equal -> log(2N - 1) for any inputs
    g = _gen(5)
    hot = nt_xent(torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g), 1e4).item()
    assert hot == pytest.approx(math.log(7), rel=1e-3)


def test_invariant_to_scaling_each_embedding() -> None:
    g = _gen(6)
    z1, z2 = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    ref = nt_xent(z1, z2, 0.2)
    s1 = torch.rand(6, 1, generator=g) * 10 + 0.1  # a different positive factor per row
    s2 = torch.rand(6, 1, generator=g) * 10 + 0.1
    assert torch.allclose(nt_xent(s1 * z1, s2 * z2, 0.2), ref, rtol=1e-5)
    assert torch.allclose(nt_xent(1e-3 * z1, 1e3 * z2, 0.2), ref, rtol=1e-5)
    # not invariant to a sign flip of one view (positives become anti-aligned)
    assert not torch.allclose(nt_xent(z1, -z2, 0.2), ref, rtol=1e-3)


def test_symmetric_in_views_and_pair_order() -> None:
    g = _gen(7)
    z1, z2 = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    ref = nt_xent(z1, z2)
    assert torch.allclose(nt_xent(z2, z1), ref, rtol=1e-5)
    perm = torch.randperm(6, generator=g)
    assert torch.allclose(nt_xent(z1[perm], z2[perm]), ref, rtol=1e-5)
    # but pairing matters: shuffling only one view changes the loss
    assert not torch.allclose(nt_xent(z1, z2.roll(1, 0)), ref, rtol=1e-3)


def test_gradients_flow_to_both_views() -> None:
    g = _gen(8)
    z1 = torch.randn(8, 6, generator=g).requires_grad_()
    z2 = torch.randn(8, 6, generator=g).requires_grad_()
    loss = nt_xent(z1, z2, 0.5)
    loss.backward()
    for z in (z1, z2):
        assert z.grad is not None and torch.isfinite(z.grad).all()
        assert (z.grad.norm(dim=1) > 0).all()  # every row gets a gradient
        # scale invariance => each row's gradient is orthogonal to the row
        radial = (z.grad * z.detach()).sum(1) / (z.grad.norm(dim=1) * z.detach().norm(dim=1))
        assert radial.abs().max() < 1e-4
    # a small step against the gradient lowers the loss
    with torch.no_grad():
        after = nt_xent(z1 - 0.05 * z1.grad, z2 - 0.05 * z2.grad, 0.5)
    assert after < loss


def test_gradient_matches_finite_differences() -> None:
    g = _gen(9)
    z1, z2 = torch.randn(3, 2, generator=g), torch.randn(3, 2, generator=g)
    w = z1.clone().requires_grad_()
    nt_xent(w, z2, 0.5).backward()
    eps = 1e-3
    for i in range(3):
        for k in range(2):
            plus, minus = z1.clone(), z1.clone()
            plus[i, k] += eps
            minus[i, k] -= eps
            fd = (nt_xent(plus, z2, 0.5) - nt_xent(minus, z2, 0.5)).item() / (2 * eps)
            assert w.grad[i, k].item() == pytest.approx(fd, abs=2e-3)


def test_single_pair_has_zero_loss() -> None:
    # N = 1: each row's only candidate is its positive
    assert nt_xent(torch.randn(1, 4), torch.randn(1, 4)).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize(
    ("a", "b"),
    [((4, 3), (5, 3)), ((4, 3), (4, 2)), ((4,), (4,)), ((2, 4, 3), (2, 4, 3))],
)
def test_shape_errors(a: tuple[int, ...], b: tuple[int, ...]) -> None:
    with pytest.raises(ValueError):
        nt_xent(torch.randn(*a), torch.randn(*b))


def test_gather_without_process_group_is_identity() -> None:
    assert not torch.distributed.is_initialized()
    assert world_size() == 1
    x = torch.randn(3, 2, requires_grad=True)
    y = gather(x)
    assert y is x
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones(3, 2))
    # and the loss on gathered embeddings equals the local loss
    z2 = torch.randn(3, 2)
    assert torch.equal(nt_xent(gather(x), gather(z2)), nt_xent(x, z2))
