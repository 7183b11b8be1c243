"""BYOL's normalised MSE against hand values, its per-sample reduction, stop-gradient and EMA."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from tympan.objectives.byol import byol_loss, ema_momentum, ema_update_, normalized_mse


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _naive(p: np.ndarray, z: np.ndarray) -> float:
    """``mean_i (2 - 2 cos(p_i, z_i))`` with a plain double loop (rows, then features)."""
    total = 0.0
    for i in range(p.shape[0]):
        dot = sum(p[i, k] * z[i, k] for k in range(p.shape[1]))
        total += 2.0 - 2.0 * dot / (math.sqrt((p[i] ** 2).sum()) * math.sqrt((z[i] ** 2).sum()))
    return total / p.shape[0]


def test_normalized_mse_by_hand() -> None:
    p = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    z = torch.tensor([[0.0, 2.0], [3.0, 3.0]])
    # cos = 0 (distance 2) for the first row, 1 (distance 0) for the second -> mean 1
    assert normalized_mse(p, z).item() == pytest.approx(1.0)
    # it is the squared distance of the unit vectors: |(1,0) - (0,1)|^2 = 2, |u - u|^2 = 0
    unit = lambda t: t / t.norm(dim=1, keepdim=True)  # noqa: E731
    assert ((unit(p) - unit(z)) ** 2).sum(1).mean().item() == pytest.approx(1.0)


def test_byol_symmetrised_by_hand() -> None:
    p1 = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    z2 = torch.tensor([[0.0, 2.0], [3.0, 3.0]])  # d = 2, 0 -> 1
    p2 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z1 = torch.tensor([[1.0, 1.0], [0.0, -1.0]])  # cos = 1/sqrt(2), -1 -> d = 2 - sqrt(2), 4
    expected = 0.5 * 1.0 + 0.5 * (6.0 - math.sqrt(2.0)) / 2.0
    assert byol_loss(p1, p2, z1, z2).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_examples_match_a_naive_loop(seed: int) -> None:
    g = _gen(seed)
    p1, p2, z1, z2 = (torch.randn(5, 3, generator=g) for _ in range(4))
    a, b, c, d = (t.double().numpy() for t in (p1, p2, z1, z2))
    expected = 0.5 * _naive(a, d) + 0.5 * _naive(b, c)
    assert byol_loss(p1, p2, z1, z2).item() == pytest.approx(expected, rel=1e-5)


def test_reduces_over_features_per_sample_not_over_the_batch() -> None:
    g = _gen(3)
    p, z = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    # per sample: the batch loss is the mean of the one-row losses, each independent of the others
    rows = [normalized_mse(p[i : i + 1], z[i : i + 1]).item() for i in range(4)]
    assert normalized_mse(p, z).item() == pytest.approx(sum(rows) / 4, rel=1e-6)
    # the defect of reducing the normalised product over the batch axis gives something else
    pn, zn = p / p.norm(dim=1, keepdim=True), z / z.norm(dim=1, keepdim=True)
    batch_axis = (2 - 2 * (pn * zn).sum(dim=0)).mean().item()
    assert abs(batch_axis - normalized_mse(p, z).item()) > 0.1
    # and shuffling the other samples cannot change one sample's term
    q = torch.cat([p[:1], torch.randn(3, 3, generator=g)])
    w = torch.cat([z[:1], torch.randn(3, 3, generator=g)])
    first = lambda a, b: (2 - 2 * torch.cosine_similarity(a, b, dim=1))[0]  # noqa: E731
    assert first(q, w).item() == pytest.approx(rows[0], rel=1e-6)


def test_zero_when_predictions_are_parallel_and_independent_of_row_norms() -> None:
    g = _gen(4)
    z1, z2 = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    s = torch.rand(6, 1, generator=g) * 10 + 0.1  # a different positive factor per row
    assert byol_loss(s * z2, 3 * z1, z1, z2).item() == pytest.approx(0.0, abs=1e-6)
    p1, p2 = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    ref = byol_loss(p1, p2, z1, z2)
    scaled = byol_loss(s * p1, 1e-3 * p2, 1e3 * z1, s.flip(0) * z2)
    assert torch.allclose(scaled, ref, rtol=1e-5)
    # anti-parallel predictions give the maximum, 4
    assert byol_loss(-z2, -z1, z1, z2).item() == pytest.approx(4.0, abs=1e-6)


def test_gradient_does_not_flow_into_the_targets() -> None:
    g = _gen(5)
    p1, p2, z1, z2 = (torch.randn(4, 3, generator=g).requires_grad_() for _ in range(4))
    byol_loss(p1, p2, z1, z2).backward()
    assert z1.grad is None and z2.grad is None
    for p in (p1, p2):
        assert p.grad is not None and torch.isfinite(p.grad).all() and (p.grad.norm(dim=1) > 0).all()
        # the loss is scale-invariant in each row of p: gradients are orthogonal to the rows
        radial = (p.grad * p.detach()).sum(1) / (p.grad.norm(dim=1) * p.detach().norm(dim=1))
        assert radial.abs().max() < 1e-4


@pytest.mark.parametrize(
    "shapes", [[(4, 3)] * 3 + [(4, 2)], [(4, 3)] * 3 + [(5, 3)], [(3,)] * 4, [(2, 3, 4)] * 4]
)
def test_shape_errors(shapes: list[tuple[int, ...]]) -> None:
    with pytest.raises(ValueError, match="four"):
        byol_loss(*(torch.zeros(*s) for s in shapes))


def test_ema_momentum_schedule() -> None:
    assert ema_momentum(0, 100) == pytest.approx(0.996, abs=1e-12)
    assert ema_momentum(100, 100) == pytest.approx(1.0, abs=1e-12)
    assert ema_momentum(250, 100) == pytest.approx(1.0, abs=1e-12)  # clamped after the end
    assert ema_momentum(50, 100) == pytest.approx(0.998, abs=1e-12)  # half-way on the cosine
    # quarter-way: 1 - 0.004 * (cos(pi/4) + 1) / 2
    assert ema_momentum(25, 100) == pytest.approx(1 - 0.004 * (math.sqrt(0.5) + 1) / 2, abs=1e-12)
    values = [ema_momentum(k, 10) for k in range(11)]
    assert all(a < b for a, b in zip(values, values[1:]))
    assert ema_momentum(0, 10, base=0.9, final=0.99) == pytest.approx(0.9)
    assert ema_momentum(10, 10, base=0.9, final=0.99) == pytest.approx(0.99)
    with pytest.raises(ValueError):
        ema_momentum(0, 0)
    with pytest.raises(ValueError):
        ema_momentum(-1, 10)


def test_ema_update_on_a_tiny_linear() -> None:
    target, online = nn.Linear(2, 2), nn.Linear(2, 2)
    with torch.no_grad():
        target.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        target.bias.copy_(torch.tensor([0.0, 10.0]))
        online.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, -4.0]]))
        online.bias.copy_(torch.tensor([1.0, 0.0]))
    ema_update_(target, online, 0.75)
    # t = 0.75 t + 0.25 o
    assert torch.allclose(target.weight, torch.tensor([[0.75, 1.5], [2.5, 2.0]]))
    assert torch.allclose(target.bias, torch.tensor([0.25, 7.5]))
    # the online network is untouched, and no autograd history is recorded on the target
    assert torch.equal(online.weight, torch.tensor([[0.0, 0.0], [1.0, -4.0]]))
    assert target.weight.grad_fn is None and target.weight.requires_grad
    # momentum 1 keeps the target, momentum 0 copies the online network
    before = target.weight.detach().clone()
    ema_update_(target, online, 1.0)
    assert torch.equal(target.weight, before)
    ema_update_(target, online, 0.0)
    assert torch.equal(target.weight, online.weight) and torch.equal(target.bias, online.bias)


def test_ema_update_copies_batchnorm_buffers() -> None:
    target = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    online = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    online.train()
    online(torch.randn(8, 3, generator=_gen(6)))  # moves the running statistics
    assert not torch.equal(online[1].running_mean, target[1].running_mean)
    w_t, w_o = target[0].weight.detach().clone(), online[0].weight.detach().clone()
    ema_update_(target, online, 0.9)
    assert torch.equal(target[1].running_mean, online[1].running_mean)
    assert torch.equal(target[1].running_var, online[1].running_var)
    assert target[1].num_batches_tracked.item() == 1
    assert torch.allclose(target[0].weight, 0.9 * w_t + 0.1 * w_o)


def test_ema_update_errors() -> None:
    with pytest.raises(ValueError, match="shape"):
        ema_update_(nn.Linear(2, 3), nn.Linear(2, 4), 0.9)
    with pytest.raises(ValueError, match="differ"):
        ema_update_(nn.Linear(2, 3), nn.Linear(2, 3, bias=False), 0.9)
    with pytest.raises(ValueError, match="momentum"):
        ema_update_(nn.Linear(2, 3), nn.Linear(2, 3), 1.5)
