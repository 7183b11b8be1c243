"""Hard pair miner (multi-similarity rule of the seed's [9]) on hand-listed cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tympan.errors import ConfigError, TympanError
from tympan.objectives.mining import MinedPairs, hard_pair_miner

# unit vectors at these angles: cos(a_i - a_j) is the similarity
ANGLES = [0, 10, 80, 60, 170, 100]
LABELS = [0, 0, 0, 1, 1, 1]


def _points(angles: list[float]) -> torch.Tensor:
    a = torch.deg2rad(torch.tensor(angles, dtype=torch.float64))
    return torch.stack([torch.cos(a), torch.sin(a)], dim=1)


def _as_lists(mask: torch.Tensor) -> dict[int, list[int]]:
    return {i: torch.nonzero(row).flatten().tolist() for i, row in enumerate(mask)}


def test_hand_listed_hard_pairs() -> None:
    # anchor 0 (0°): positives 10° (cos .985) and 80° (.174); negatives 60° (.500), 170° (-.985),
    # 100° (-.174). Hardest negative .500 -> positives below .600: only 80° (index 2).
    # Hardest positive .174 -> negatives above .074: only 60° (index 3).
    # The other anchors the same way (cosines in degrees of angle difference):
    #   1 (10°):  max neg cos50=.643 -> pos < .743: {2 (cos70=.342)};  min pos .342 -> neg > .242: {3}
    #   2 (80°):  max neg cos20=.940 -> pos < 1.04: {0, 1};            min pos .174 -> neg > .074: {3, 5}
    #   3 (60°):  max neg cos20=.940 -> pos < 1.04: {4, 5};            min pos cos110=-.342 -> neg > -.442: {0, 1, 2}
    #   4 (170°): max neg cos90=0    -> pos < .100: {3 (cos110)};      min pos -.342 -> neg > -.442: {2}
    #   5 (100°): max neg cos20=.940 -> pos < 1.04: {3, 4};            min pos cos70=.342 -> neg > .242: {2}
    pairs = hard_pair_miner(_points(ANGLES), torch.tensor(LABELS), epsilon=0.1)
    assert isinstance(pairs, MinedPairs)
    assert _as_lists(pairs.positives) == {0: [2], 1: [2], 2: [0, 1], 3: [4, 5], 4: [3], 5: [3, 4]}
    assert _as_lists(pairs.negatives) == {0: [3], 1: [3], 2: [3, 5], 3: [0, 1, 2], 4: [2], 5: [2]}


def test_matches_the_rule_written_as_loops() -> None:
    g = np.random.default_rng(0)
    z = g.normal(size=(20, 5))
    y = g.integers(0, 4, size=20)
    u = z / np.linalg.norm(z, axis=1, keepdims=True)
    s = u @ u.T
    eps = 0.05
    pos = np.zeros((20, 20), dtype=bool)
    neg = np.zeros((20, 20), dtype=bool)
    for i in range(20):
        P = [j for j in range(20) if j != i and y[j] == y[i]]
        N = [j for j in range(20) if y[j] != y[i]]
        for j in P:
            pos[i, j] = bool(N) and s[i, j] < max(s[i, N]) + eps
        for j in N:
            neg[i, j] = bool(P) and s[i, j] > min(s[i, P]) - eps
    got = hard_pair_miner(torch.tensor(z), torch.tensor(y), epsilon=eps)
    assert np.array_equal(got.positives.numpy(), pos)
    assert np.array_equal(got.negatives.numpy(), neg)


def test_shapes_dtype_diagonal_and_no_grad() -> None:
    z = torch.randn(9, 4, requires_grad=True)
    y = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    pos, neg = hard_pair_miner(z, y, epsilon=10.0)  # huge margin: every pair is hard
    assert pos.shape == neg.shape == (9, 9)
    assert pos.dtype == neg.dtype == torch.bool and not pos.requires_grad
    assert not pos.diagonal().any() and not neg.diagonal().any()
    same = y[:, None] == y[None, :]
    assert torch.equal(pos, same & ~torch.eye(9, dtype=torch.bool))
    assert torch.equal(neg, ~same)


def test_separated_classes_give_nothing_and_each_anchor_gets_both_or_neither() -> None:
    # two tight clusters far apart: every anchor is easy
    z = torch.tensor([[1.0, 0.0], [0.99, 0.05], [0.0, 1.0], [0.05, 0.99]])
    pos, neg = hard_pair_miner(z, torch.tensor([0, 0, 1, 1]))
    assert not pos.any() and not neg.any()
    g = torch.Generator().manual_seed(1)
    zr, yr = torch.randn(30, 3, generator=g), torch.randint(0, 3, (30,), generator=g)
    pos, neg = hard_pair_miner(zr, yr, epsilon=0.1)
    assert torch.equal(pos.any(dim=1), neg.any(dim=1))
    # a singleton class: no positive, hence no negative either; a batch of one class: nothing
    pos, neg = hard_pair_miner(torch.randn(3, 2), torch.tensor([0, 0, 1]), epsilon=5.0)
    assert not pos[2].any() and not neg[2].any()
    pos, neg = hard_pair_miner(torch.randn(3, 2), torch.tensor([4, 4, 4]), epsilon=5.0)
    assert not pos.any() and not neg.any()


def test_larger_epsilon_keeps_more() -> None:
    g = torch.Generator().manual_seed(2)
    z, y = torch.randn(24, 6, generator=g), torch.arange(4).repeat(6)
    small, large = hard_pair_miner(z, y, 0.0), hard_pair_miner(z, y, 0.3)
    assert not (small.positives & ~large.positives).any() and not (small.negatives & ~large.negatives).any()
    assert large.positives.sum() + large.negatives.sum() > small.positives.sum() + small.negatives.sum()


def test_hardest_only() -> None:
    # the last point at 105° rather than 100°, so that anchor 2 (80°) has no tied negatives
    pos, neg = hard_pair_miner(_points([0, 10, 80, 60, 170, 105]), torch.tensor(LABELS), hardest=True)
    # anchor 0: lowest-similarity positive 80° (2), highest-similarity negative 60° (3)
    assert _as_lists(pos) == {0: [2], 1: [2], 2: [0], 3: [4], 4: [3], 5: [4]}
    assert _as_lists(neg) == {0: [3], 1: [3], 2: [3], 3: [2], 4: [2], 5: [2]}


def test_errors() -> None:
    with pytest.raises(TympanError, match="labels"):
        hard_pair_miner(torch.randn(4, 2), torch.tensor([0, 1]))
    with pytest.raises(TympanError, match="z"):
        hard_pair_miner(torch.randn(4), torch.tensor([0, 1, 0, 1]))
    with pytest.raises(ConfigError, match="epsilon"):
        hard_pair_miner(torch.randn(4, 2), torch.tensor([0, 1, 0, 1]), epsilon=float("nan"))
