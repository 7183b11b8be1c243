"""SimSiam's negative cosine and the augmentation-prediction BCE against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from tympan.objectives.aug_prediction import aug_prediction_loss
from tympan.objectives.simsiam import negative_cosine, simsiam_loss


def test_negative_cosine_by_hand() -> None:
    p = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    z = torch.tensor([[0.0, 2.0], [3.0, 3.0]])
    # cos = 0 for the first row, 1 for the second -> mean -0.5
    assert negative_cosine(p, z).item() == pytest.approx(-0.5)


def test_simsiam_symmetrised_by_hand() -> None:
    p1 = torch.tensor([[1.0, 0.0]])
    p2 = torch.tensor([[0.0, 1.0]])
    z1 = torch.tensor([[1.0, 1.0]])
    z2 = torch.tensor([[1.0, 0.0]])
    # D(p1, z2) = -1, D(p2, z1) = -1/sqrt(2)
    expected = 0.5 * -1.0 + 0.5 * -1.0 / math.sqrt(2.0)
    assert simsiam_loss(p1, p2, z1, z2).item() == pytest.approx(expected)


def test_simsiam_stops_the_gradient_through_z() -> None:
    p1, p2, z1, z2 = (torch.randn(4, 3, requires_grad=True) for _ in range(4))
    simsiam_loss(p1, p2, z1, z2).backward()
    assert z1.grad is None and z2.grad is None
    assert p1.grad is not None and p1.grad.abs().sum() > 0


def test_simsiam_minimum_is_minus_one() -> None:
    z = torch.randn(8, 5)
    assert simsiam_loss(2 * z, 3 * z, z, z).item() == pytest.approx(-1.0, abs=1e-6)


def test_simsiam_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="four"):
        simsiam_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 4))


def test_aug_prediction_bce_by_hand() -> None:
    logits = torch.tensor([[0.0, 2.0], [-1.0, 0.5]])
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    sig = lambda v: 1.0 / (1.0 + math.exp(-v))  # noqa: E731
    terms = [
        -math.log(sig(0.0)),  # y=1
        -math.log(1 - sig(2.0)),  # y=0
        -math.log(1 - sig(-1.0)),  # y=0
        -math.log(sig(0.5)),  # y=1
    ]
    assert aug_prediction_loss(logits, labels).item() == pytest.approx(sum(terms) / 4)


def test_aug_prediction_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="same|one shape"):
        aug_prediction_loss(torch.zeros(2, 7), torch.zeros(2, 6))
