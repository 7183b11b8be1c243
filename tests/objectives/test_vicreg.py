"""VICReg's three terms against hand and naive-loop values; the weighted total; gradients; errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tympan.objectives.vicreg import (
    VICRegTerms,
    covariance_penalty,
    variance_hinge,
    vicreg_loss,
    vicreg_terms,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _naive_terms(z1: np.ndarray, z2: np.ndarray, gamma: float, eps: float) -> tuple[float, float, float]:
    n, d = z1.shape
    inv = sum((z1[k, i] - z2[k, i]) ** 2 for k in range(n) for i in range(d)) / (n * d)

    def var_cov(z: np.ndarray) -> tuple[float, float]:
        means = [sum(z[k, i] for k in range(n)) / n for i in range(d)]
        cov = [
            [sum((z[k, i] - means[i]) * (z[k, j] - means[j]) for k in range(n)) / (n - 1) for j in range(d)]
            for i in range(d)
        ]
        v = sum(max(0.0, gamma - math.sqrt(cov[i][i] + eps)) for i in range(d)) / d
        c = sum(cov[i][j] ** 2 for i in range(d) for j in range(d) if i != j) / d
        return v, c

    (v1, c1), (v2, c2) = var_cov(z1), var_cov(z2)
    return inv, (v1 + v2) / 2, c1 + c2


def test_hand_computed_two_samples() -> None:
    z1 = torch.tensor([[1.0, 0.0], [3.0, 2.0]])
    z2 = torch.tensor([[1.0, 1.0], [1.0, 2.0]])
    inv, var, cov = vicreg_terms(z1, z2, gamma=1.0, eps=0.0)
    # invariance: (0^2 + 1^2 + 2^2 + 0^2) / 4
    assert inv.item() == pytest.approx(5 / 4)
    # unbiased variances: z1 (2, 2) -> stds above 1, hinge 0; z2 (0, 1/2) -> hinges 1 and 1 - 1/sqrt(2)
    v2 = (1.0 + 1.0 - 1 / math.sqrt(2.0)) / 2
    assert var.item() == pytest.approx((0.0 + v2) / 2, rel=1e-6)
    # Cov(z1) = [[2, 2], [2, 2]] -> (2^2 + 2^2) / 2 = 4; Cov(z2) = [[0, 0], [0, 1/2]] -> 0
    assert cov.item() == pytest.approx(4.0, rel=1e-6)
    total = vicreg_loss(z1, z2, 25.0, 25.0, 1.0, gamma=1.0, eps=0.0)
    assert total.item() == pytest.approx(25 * 5 / 4 + 25 * v2 / 2 + 4.0, rel=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_examples_match_a_naive_loop(seed: int) -> None:
    g = _gen(seed)
    z1, z2 = 0.7 * torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g) + 2
    for gamma, eps in ((1.0, 1e-4), (2.0, 0.0), (0.5, 1e-2)):
        expected = _naive_terms(z1.double().numpy(), z2.double().numpy(), gamma, eps)
        got = vicreg_terms(z1, z2, gamma, eps)
        for a, b in zip(got, expected):
            assert a.item() == pytest.approx(b, rel=1e-4, abs=1e-7)


def test_total_is_the_weighted_sum_of_the_terms() -> None:
    g = _gen(3)
    z1, z2 = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g) * 0.5
    terms = vicreg_terms(z1, z2)
    assert isinstance(terms, VICRegTerms)
    default = 25 * terms.invariance + 25 * terms.variance + 1 * terms.covariance
    assert vicreg_loss(z1, z2).item() == pytest.approx(default.item(), rel=1e-6)
    # the seed's repository weights: 1 / 1 / 1
    ones = terms.invariance + terms.variance + terms.covariance
    assert vicreg_loss(z1, z2, 1.0, 1.0, 1.0).item() == pytest.approx(ones.item(), rel=1e-6)
    only_cov = vicreg_loss(z1, z2, sim_coeff=0.0, std_coeff=0.0, cov_coeff=2.0)
    assert only_cov.item() == pytest.approx(2 * terms.covariance.item(), rel=1e-6)


def test_variance_term_is_zero_when_every_std_reaches_gamma() -> None:
    g = _gen(4)
    z = torch.randn(32, 6, generator=g)
    z = z / z.std(0) * torch.tensor([1.0, 1.5, 2.0, 3.0, 1.0, 10.0])  # stds >= 1
    assert variance_hinge(z, gamma=1.0).item() == 0.0
    assert vicreg_terms(z, z.clone()).variance.item() == 0.0
    # below gamma the hinge is gamma - std, averaged over dimensions
    half = z[:, :1].repeat(1, 2) * torch.tensor([0.5, 2.0])  # stds 0.5 and 2
    assert variance_hinge(half, gamma=1.0, eps=0.0).item() == pytest.approx(0.25, rel=1e-5)
    # collapsed embeddings pay gamma - sqrt(eps) on every dimension
    ones = torch.ones(4, 3)
    assert variance_hinge(ones, gamma=1.0, eps=1e-4).item() == pytest.approx(0.99, rel=1e-6)


def test_covariance_and_invariance_zero_cases() -> None:
    # Hadamard columns are uncorrelated: no covariance penalty; identical views: no invariance
    h = torch.tensor([[1.0, 1.0, 1.0], [1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]])
    terms = vicreg_terms(h, h.clone())
    assert terms.invariance.item() == 0.0
    assert terms.covariance.item() == pytest.approx(0.0, abs=1e-12)
    # unbiased std of each column is sqrt(4/3) > 1
    assert terms.variance.item() == 0.0
    assert vicreg_loss(h, h.clone()).item() == pytest.approx(0.0, abs=1e-10)
    # one dimension: there is no off-diagonal covariance
    assert covariance_penalty(torch.randn(5, 1)).item() == 0.0
    # perfectly correlated pair of dims with variance s: Cov = s [[1, 1], [1, 1]] -> 2 s^2 / 2
    x = torch.tensor([[0.0], [1.0], [2.0]])  # unbiased variance 1
    assert covariance_penalty(torch.cat([x, x], 1)).item() == pytest.approx(1.0, rel=1e-6)


def test_gradients_flow_to_both_views() -> None:
    g = _gen(5)
    z1 = (0.3 * torch.randn(8, 4, generator=g)).requires_grad_()
    z2 = (0.3 * torch.randn(8, 4, generator=g)).requires_grad_()
    loss = vicreg_loss(z1, z2)
    loss.backward()
    for z in (z1, z2):
        assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    with torch.no_grad():
        assert vicreg_loss(z1 - 1e-3 * z1.grad, z2 - 1e-3 * z2.grad) < loss


@pytest.mark.parametrize(
    ("a", "b"), [((4, 3), (5, 3)), ((4, 3), (4, 2)), ((4,), (4,)), ((1, 3), (1, 3)), ((2, 4, 3), (2, 4, 3))]
)
def test_shape_errors(a: tuple[int, ...], b: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="vicreg"):
        vicreg_loss(torch.randn(*a), torch.randn(*b))
    with pytest.raises(ValueError, match="vicreg"):
        vicreg_terms(torch.randn(*a), torch.randn(*b))
