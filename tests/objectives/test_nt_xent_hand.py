"""NT-Xent against a hand-computed example."""

from __future__ import annotations

import math

import pytest
import torch

from tympan.objectives.distributed import gather
from tympan.objectives.nt_xent import nt_xent


def test_hand_computed_two_pairs() -> None:
    # u = [z1_0, z1_1, z2_0, z2_1] (already unit length): cosines are dot products
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z2 = torch.tensor([[0.6, 0.8], [-0.6, 0.8]])
    tau = 0.5
    u = [(1.0, 0.0), (0.0, 1.0), (0.6, 0.8), (-0.6, 0.8)]
    partner = [2, 3, 0, 1]
    total = 0.0
    for i in range(4):
        s = {j: (u[i][0] * u[j][0] + u[i][1] * u[j][1]) / tau for j in range(4) if j != i}
        total += -s[partner[i]] + math.log(sum(math.exp(v) for v in s.values()))
    assert nt_xent(z1, z2, tau).item() == pytest.approx(total / 4, rel=1e-6)
    # scale invariance: the loss uses cosine similarity
    assert nt_xent(3 * z1, 0.1 * z2, tau).item() == pytest.approx(total / 4, rel=1e-6)


def test_aligned_pairs_beat_random_and_gradients_flow() -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(32, 16, generator=g)
    aligned = nt_xent(z, z + 0.01 * torch.randn(32, 16, generator=g))
    random = nt_xent(z, torch.randn(32, 16, generator=g))
    assert aligned < random
    w = torch.randn(32, 16, requires_grad=True)
    nt_xent(w, torch.randn(32, 16)).backward()
    assert w.grad is not None and torch.isfinite(w.grad).all() and w.grad.abs().sum() > 0


def test_shape_errors_and_gather_without_process_group() -> None:
    with pytest.raises(ValueError):
        nt_xent(torch.randn(4, 3), torch.randn(5, 3))
    x = torch.randn(3, 2)
    assert gather(x) is x
