"""DINO-style clustering against a hand cross-entropy; stop-gradient, centre, schedules, usage."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tympan.objectives.dino import (
    PrototypeUsage,
    dino_loss,
    prototype_usage,
    teacher_probs,
    teacher_temperature,
    update_center,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _softmax(v: list[float]) -> list[float]:
    m = max(v)
    e = [math.exp(x - m) for x in v]
    return [x / sum(e) for x in e]


def _naive_ce(t: np.ndarray, s: np.ndarray, c: np.ndarray, tt: float, ts: float) -> float:
    """``mean_i -sum_k q_ik log p_ik`` with loops and plain math."""
    total = 0.0
    for i in range(t.shape[0]):
        q = _softmax([(t[i, k] - c[k]) / tt for k in range(t.shape[1])])
        p = _softmax([s[i, k] / ts for k in range(s.shape[1])])
        total += -sum(q[k] * math.log(p[k]) for k in range(len(q)))
    return total / t.shape[0]


def test_hand_cross_entropy_one_sample_two_prototypes() -> None:
    # temperatures 1, centre 0: q = softmax(t), log p = log_softmax(s)
    s1, s2 = torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]])  # p = (1/2, 1/2), (3/4, 1/4)
    t1, t2 = torch.tensor([[0.0, math.log(3.0)]]), torch.tensor([[0.0, 0.0]])  # q = (1/4, 3/4), (1/2, 1/2)
    c = torch.zeros(2)
    # H(q1, s2) = -(1/4 log 3/4 + 3/4 log 1/4); H(q2, s1) = log 2
    h12 = -(0.25 * math.log(0.75) + 0.75 * math.log(0.25))
    expected = 0.5 * h12 + 0.5 * math.log(2.0)
    loss = dino_loss(s1, s2, t1, t2, c, student_temp=1.0, teacher_temp=1.0)
    assert loss.dim() == 0
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # same-view pairs would give H(q1, s1) / 2 + H(q2, s2) / 2 instead: a different number
    same_view = 0.5 * math.log(2.0) + 0.5 * -(0.5 * math.log(0.75) + 0.5 * math.log(0.25))
    assert abs(same_view - expected) > 0.05


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_examples_match_a_naive_loop(seed: int) -> None:
    g = _gen(seed)
    s1, s2, t1, t2 = (torch.randn(4, 6, generator=g) for _ in range(4))
    c = 0.3 * torch.randn(6, generator=g)
    for ts, tt in ((0.1, 0.04), (0.5, 0.2), (1.0, 1.0)):
        a, b, x, y, cc = (t.double().numpy() for t in (s1, s2, t1, t2, c))
        expected = 0.5 * _naive_ce(x, b, cc, tt, ts) + 0.5 * _naive_ce(y, a, cc, tt, ts)
        got = dino_loss(s1, s2, t1, t2, c, student_temp=ts, teacher_temp=tt).item()
        assert got == pytest.approx(expected, rel=1e-4)
    # defaults are 0.1 / 0.04 and a [1, K] centre behaves like a [K] one
    assert dino_loss(s1, s2, t1, t2, c).item() == pytest.approx(
        dino_loss(s1, s2, t1, t2, c[None], student_temp=0.1, teacher_temp=0.04).item(), rel=1e-6
    )


def test_centering_is_a_shift_of_the_teacher_logits() -> None:
    g = _gen(3)
    s1, s2, t1, t2 = (torch.randn(3, 5, generator=g) for _ in range(4))
    c = torch.randn(5, generator=g)
    ref = dino_loss(s1, s2, t1, t2, c)
    assert torch.allclose(dino_loss(s1, s2, t1 - c, t2 - c, torch.zeros(5)), ref, rtol=1e-5)
    # a constant added to a teacher row does not change its softmax
    assert torch.allclose(dino_loss(s1, s2, t1 + 7.0, t2 - 2.0, c), ref, rtol=1e-5)
    q = teacher_probs(t1, c, 0.04)
    assert torch.allclose(q.sum(1), torch.ones(3))
    assert torch.allclose(q, torch.softmax((t1 - c) / 0.04, dim=1))


def test_sharper_teacher_is_closer_to_one_hot() -> None:
    t = torch.tensor([[1.0, 0.5, 0.0]])
    hot, cold = teacher_probs(t, torch.zeros(3), 1.0), teacher_probs(t, torch.zeros(3), 0.04)
    assert cold.max() > hot.max() and cold.max().item() > 0.99


def test_gradient_does_not_flow_into_the_teacher_or_centre() -> None:
    g = _gen(4)
    s1, s2, t1, t2 = (torch.randn(4, 5, generator=g).requires_grad_() for _ in range(4))
    c = torch.randn(5, generator=g).requires_grad_()
    dino_loss(s1, s2, t1, t2, c).backward()
    assert t1.grad is None and t2.grad is None and c.grad is None
    for s in (s1, s2):
        assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
        # d/ds of a cross-entropy of a softmax sums to zero over the prototypes
        assert s.grad.sum(1).abs().max() < 1e-5


def test_update_center_momentum_formula() -> None:
    center = torch.tensor([[1.0, 0.0, -2.0]])
    logits = torch.tensor([[2.0, 4.0, 0.0], [0.0, 2.0, 2.0]])  # batch mean (1, 3, 1)
    new = update_center(center, logits, momentum=0.9)
    assert new.shape == (1, 3)
    assert torch.allclose(new, torch.tensor([[1.0, 0.3, -1.7]]))
    assert torch.equal(center, torch.tensor([[1.0, 0.0, -2.0]]))  # not modified in place
    assert torch.allclose(update_center(center[0], logits, momentum=0.0), torch.tensor([1.0, 3.0, 1.0]))
    assert torch.equal(update_center(center, logits, momentum=1.0), center)
    # default momentum 0.9, and no autograd history even for logits that require grad
    with_grad = update_center(center, logits.clone().requires_grad_())
    assert torch.allclose(with_grad, new) and not with_grad.requires_grad


def test_teacher_temperature_schedule() -> None:
    assert teacher_temperature(0, 10) == pytest.approx(0.02)
    assert teacher_temperature(5, 10) == pytest.approx(0.03)
    assert teacher_temperature(10, 10) == pytest.approx(0.04)
    assert teacher_temperature(1000, 10) == pytest.approx(0.04)
    assert teacher_temperature(0, 0) == pytest.approx(0.04)  # no warm-up
    assert teacher_temperature(3, 4, start=0.04, end=0.07) == pytest.approx(0.04 + 0.03 * 0.75)
    values = [teacher_temperature(k, 10) for k in range(11)]
    assert all(a < b for a, b in zip(values, values[1:]))
    with pytest.raises(ValueError):
        teacher_temperature(-1, 10)


def test_prototype_usage() -> None:
    # two of four prototypes used, mean assignment (1/2, 1/2, 0, 0): entropy log 2
    one_hot = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [1.0, 0, 0, 0], [0, 1.0, 0, 0]])
    usage = prototype_usage(one_hot)
    assert isinstance(usage, PrototypeUsage)
    assert usage.used_fraction.item() == pytest.approx(0.5)
    assert usage.entropy.item() == pytest.approx(math.log(2.0), rel=1e-6)
    # full collapse: one prototype, entropy 0
    collapsed = prototype_usage(torch.tensor([[0.0, 1.0, 0.0]] * 5))
    assert collapsed.used_fraction.item() == pytest.approx(1 / 3)
    assert collapsed.entropy.item() == pytest.approx(0.0, abs=1e-7)
    # soft assignments: mean (0.45, 0.45, 0.1), argmaxes 0 and 1
    soft = torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1]])
    used, entropy = prototype_usage(soft)
    assert used.item() == pytest.approx(2 / 3)
    assert entropy.item() == pytest.approx(-(2 * 0.45 * math.log(0.45) + 0.1 * math.log(0.1)), rel=1e-6)
    # every sample on its own prototype: everything used, entropy log K
    eye = prototype_usage(torch.eye(6))
    assert eye.used_fraction.item() == 1.0 and eye.entropy.item() == pytest.approx(math.log(6), rel=1e-6)


def test_shape_errors() -> None:
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="four"):
        dino_loss(x, x, x, torch.zeros(2, 4), torch.zeros(3))
    with pytest.raises(ValueError, match="four"):
        dino_loss(*(torch.zeros(3) for _ in range(4)), torch.zeros(3))
    with pytest.raises(ValueError, match="center"):
        dino_loss(x, x, x, x, torch.zeros(4))
    with pytest.raises(ValueError, match="center"):
        update_center(torch.zeros(2, 3), x)
    with pytest.raises(ValueError):
        update_center(torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError):
        prototype_usage(torch.zeros(3))
    with pytest.raises(ValueError):
        teacher_probs(x, torch.zeros(3), 0.0)
