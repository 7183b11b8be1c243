"""Barlow Twins against hand and naive-loop values, its identity minimum, gradients and errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tympan.objectives.barlow_twins import barlow_twins_loss, cross_correlation, standardize


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _naive(z1: np.ndarray, z2: np.ndarray, lam: float, eps: float) -> float:
    """Standardise with loops, build C entry by entry, sum the two penalties."""
    n, d = z1.shape

    def std_cols(z: np.ndarray) -> list[list[float]]:
        out = [[0.0] * d for _ in range(n)]
        for i in range(d):
            mean = sum(z[k, i] for k in range(n)) / n
            var = sum((z[k, i] - mean) ** 2 for k in range(n)) / n  # biased
            for k in range(n):
                out[k][i] = (z[k, i] - mean) / math.sqrt(var + eps)
        return out

    a, b = std_cols(z1), std_cols(z2)
    loss = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(a[k][i] * b[k][j] for k in range(n)) / n
            loss += (1 - c) ** 2 if i == j else lam * c**2
    return loss


# three columns of the 4 x 4 Hadamard matrix: mean 0, biased std 1, mutually orthogonal
HADAMARD = torch.tensor([[1.0, 1.0, 1.0], [1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]])


def test_hand_computed_two_samples() -> None:
    # N = 2: every standardised column is +-1. z1 -> [[-1, -1], [1, 1]], z2 -> [[1, -1], [-1, 1]]
    z1 = torch.tensor([[0.0, 0.0], [2.0, 1.0]])
    z2 = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    c = cross_correlation(z1, z2, eps=0.0)
    assert torch.allclose(c, torch.tensor([[-1.0, 1.0], [-1.0, 1.0]]))
    # (1 - (-1))^2 + (1 - 1)^2 + lambda * (1^2 + (-1)^2)
    lam = 0.5
    assert barlow_twins_loss(z1, z2, lambda_offdiag=lam, eps=0.0).item() == pytest.approx(4 + 2 * lam)
    # with the default eps the value moves only slightly (column 2 of z1 has variance 1/4)
    assert barlow_twins_loss(z1, z2, lambda_offdiag=lam).item() == pytest.approx(4 + 2 * lam, rel=1e-4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_examples_match_a_naive_loop(seed: int) -> None:
    g = _gen(seed)
    z1, z2 = torch.randn(6, 4, generator=g), 2 * torch.randn(6, 4, generator=g) + 1
    for lam in (5e-3, 0.1, 1.0):
        expected = _naive(z1.double().numpy(), z2.double().numpy(), lam, 1e-5)
        assert barlow_twins_loss(z1, z2, lam).item() == pytest.approx(expected, rel=1e-4)
    # the default lambda is 5e-3
    assert barlow_twins_loss(z1, z2).item() == pytest.approx(barlow_twins_loss(z1, z2, 5e-3).item(), rel=1e-6)


def test_zero_when_the_cross_correlation_is_the_identity() -> None:
    z = HADAMARD
    assert torch.allclose(cross_correlation(z, z, eps=0.0), torch.eye(3))
    assert barlow_twins_loss(z, z.clone(), eps=0.0).item() == pytest.approx(0.0, abs=1e-10)
    assert barlow_twins_loss(z, z.clone()).item() == pytest.approx(0.0, abs=1e-8)
    # invariant to a positive scale and a shift per dimension of either view
    scale, shift = torch.tensor([0.5, 3.0, 10.0]), torch.tensor([-1.0, 4.0, 0.0])
    assert barlow_twins_loss(z, scale * z + shift, eps=0.0).item() == pytest.approx(0.0, abs=1e-8)
    # a larger batch: orthonormal columns of a random matrix, orthogonal to the ones vector
    g = _gen(3)
    q = torch.linalg.qr(torch.cat([torch.ones(16, 1), torch.randn(16, 8, generator=g)], dim=1))[0][:, 1:]
    z = q * 4.0  # columns: mean 0, sum of squares 16 = N, i.e. biased std 1
    assert barlow_twins_loss(z, z.clone(), lambda_offdiag=1.0, eps=0.0).item() == pytest.approx(0.0, abs=1e-6)


def test_off_diagonal_and_diagonal_penalties() -> None:
    z = HADAMARD
    # swapping two dimensions of one view: C is a permutation, two diagonal zeros, two off-diagonal ones
    swapped = z[:, [1, 0, 2]]
    for lam in (0.0, 0.1, 1.0):
        assert barlow_twins_loss(z, swapped, lam, eps=0.0).item() == pytest.approx(2 + 2 * lam, rel=1e-6)
    # a flipped sign on every dimension: C = -I, each diagonal term (1 - (-1))^2 = 4
    assert barlow_twins_loss(z, -z, eps=0.0).item() == pytest.approx(12.0, rel=1e-6)
    # collapsed (constant) embeddings standardise to 0: C = 0, the loss is d
    ones = torch.ones(5, 7)
    assert barlow_twins_loss(ones, ones.clone()).item() == pytest.approx(7.0, rel=1e-6)


def test_standardize() -> None:
    g = _gen(4)
    z = 3 * torch.randn(10, 4, generator=g) + 5
    zn = standardize(z, eps=0.0)
    assert torch.allclose(zn.mean(0), torch.zeros(4), atol=1e-6)
    assert torch.allclose(zn.var(0, unbiased=False), torch.ones(4), atol=1e-5)
    # diagonal of C is the Pearson correlation of each dimension across the views
    z2 = z + torch.randn(10, 4, generator=g)
    c = cross_correlation(z, z2, eps=0.0)
    pearson = [np.corrcoef(z[:, i].numpy(), z2[:, i].numpy())[0, 1] for i in range(4)]
    assert torch.allclose(torch.diagonal(c), torch.tensor(pearson, dtype=torch.float32), atol=1e-5)


def test_gradients_flow_to_both_views_and_descend() -> None:
    g = _gen(5)
    z1 = torch.randn(8, 4, generator=g).requires_grad_()
    z2 = torch.randn(8, 4, generator=g).requires_grad_()
    loss = barlow_twins_loss(z1, z2, 0.1)
    loss.backward()
    for z in (z1, z2):
        assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
        # the loss does not see a per-dimension shift: gradients sum to 0 over the batch
        assert z.grad.sum(0).abs().max() < 1e-5
    with torch.no_grad():
        assert barlow_twins_loss(z1 - 0.05 * z1.grad, z2 - 0.05 * z2.grad, 0.1) < loss


@pytest.mark.parametrize(
    ("a", "b"), [((4, 3), (5, 3)), ((4, 3), (4, 2)), ((4,), (4,)), ((1, 3), (1, 3)), ((2, 4, 3), (2, 4, 3))]
)
def test_shape_errors(a: tuple[int, ...], b: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="barlow_twins_loss"):
        barlow_twins_loss(torch.randn(*a), torch.randn(*b))
