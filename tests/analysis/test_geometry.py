"""Embedding geometry of the AudioConFit analyses: anisotropy, dimensional contribution, confusions."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from tympan.analysis.geometry import (
    Confusion,
    GeometryReport,
    anisotropy,
    dimensional_contribution,
    geometry_report,
    most_confused_classes,
)
from tympan.errors import ConfigError, TympanError


def _pairwise_mean_cosine(x: np.ndarray) -> float:
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    return float(np.mean([u[i] @ u[j] for i, j in itertools.permutations(range(len(u)), 2)]))


def test_anisotropy_known_sets() -> None:
    v = np.array([0.3, -1.2, 2.0])
    assert anisotropy(np.stack([v, 2 * v, 0.1 * v, v])) == pytest.approx(1.0)
    eye = np.eye(5)
    assert anisotropy(eye) == pytest.approx(0.0, abs=1e-12)  # orthonormal: every cosine 0
    both = np.concatenate([eye, -eye])  # ±orthonormal: the vectors sum to 0, the minimum
    assert anisotropy(both) == pytest.approx(-1 / (10 - 1))
    x = np.random.default_rng(0).normal(size=(30, 8)) + 0.5
    assert anisotropy(x) == pytest.approx(_pairwise_mean_cosine(x), rel=1e-10)
    assert anisotropy(torch.tensor(x)) == pytest.approx(_pairwise_mean_cosine(x), rel=1e-10)


def test_dimensional_contribution_matches_pairwise_sums_and_sums_to_one() -> None:
    x = np.random.default_rng(1).normal(size=(25, 6)) + np.array([1.0, 0.5, 0, 0, -0.3, 0])
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    pairs = list(itertools.permutations(range(25), 2))
    per_dim = np.array([sum(u[i, k] * u[j, k] for i, j in pairs) for k in range(6)])
    want = per_dim / sum(u[i] @ u[j] for i, j in pairs)
    got = dimensional_contribution(x)
    assert got.shares.sum() == pytest.approx(1.0)
    assert np.all(np.diff(got.shares) <= 0)  # decreasing
    assert np.allclose(got.shares, want[got.dims], rtol=1e-10)
    assert np.allclose(np.sort(want)[::-1], got.shares, rtol=1e-10)


def test_identical_rows_give_squared_coordinates_and_counts() -> None:
    # N copies of one unit vector u: share_k = u_k^2. Columns permuted to check `dims`.
    u = np.sqrt(np.array([0.2, 0.4, 0.1, 0.3]))
    got = dimensional_contribution(np.tile(u, (6, 1)))
    assert np.allclose(got.shares, [0.4, 0.3, 0.2, 0.1])
    assert got.dims.tolist() == [1, 3, 0, 2]
    assert got.top == pytest.approx({1: 0.4, 2: 0.7, 3: 0.9})
    # 50%: 0.4 < 0.5 <= 0.7 -> 2 dims; 80%: 0.7 < 0.8 <= 0.9 -> 3; 90%: exactly reached at 3
    assert got.dims_to_reach == {0.5: 2, 0.8: 3, 0.9: 3}
    assert dimensional_contribution(np.tile(u, (6, 1)), top=(4,), levels=(1.0,)).dims_to_reach == {1.0: 4}


def test_dominant_dimension() -> None:
    g = np.random.default_rng(2)
    x = 0.05 * g.normal(size=(40, 16))
    x[:, 3] += 10.0  # one rogue dimension carries every similarity
    got = dimensional_contribution(x)
    assert got.dims[0] == 3
    assert got.top[1] > 0.95
    assert got.dims_to_reach[0.5] == got.dims_to_reach[0.9] == 1


def test_isotropic_set_has_no_shares_and_bad_inputs_are_named() -> None:
    with pytest.raises(TympanError, match="sum to 0"):
        dimensional_contribution(np.eye(4))
    with pytest.raises(TympanError, match="row 1"):
        anisotropy(np.array([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]]))
    with pytest.raises(TympanError, match="N >= 2"):
        anisotropy(np.ones((1, 3)))
    with pytest.raises(TympanError, match="NaN"):
        anisotropy(np.array([[1.0, np.nan], [1.0, 0.0]]))
    with pytest.raises(ConfigError, match="top"):
        dimensional_contribution(np.ones((3, 2)), top=(3,))
    with pytest.raises(ConfigError, match="levels"):
        dimensional_contribution(np.ones((3, 2)), top=(1,), levels=(80,))


def test_most_confused_classes_on_a_hand_confusion_matrix() -> None:
    # confusion matrix (rows true, columns predicted), classes in sorted order a, b, c:
    #        a  b  c
    #   a  [ 5, 3, 0 ]
    #   b  [ 1, 6, 0 ]
    #   c  [ 2, 0, 4 ]
    cells = {("a", "a"): 5, ("a", "b"): 3, ("b", "a"): 1, ("b", "b"): 6, ("c", "a"): 2, ("c", "c"): 4}
    y_true = [t for (t, p), n in cells.items() for _ in range(n)]
    y_pred = [p for (t, p), n in cells.items() for _ in range(n)]
    got = most_confused_classes(y_true, y_pred, k=2)
    assert got == [Confusion("a", "b", 3, 3 / 8), Confusion("c", "a", 2, 2 / 6)]
    assert all(isinstance(c.true, str) for c in got)  # plain Python values, JSON-safe
    # only three error cells exist: asking for 5 returns 3
    assert [(c.true, c.predicted, c.count) for c in most_confused_classes(y_true, y_pred, k=5)] == [
        ("a", "b", 3), ("c", "a", 2), ("b", "a", 1)
    ]
    assert most_confused_classes([0, 1, 1], [0, 1, 1], k=3) == []
    with pytest.raises(TympanError, match="y_pred"):
        most_confused_classes([0, 1], [0], k=1)
    with pytest.raises(ConfigError, match="k=0"):
        most_confused_classes([0, 1], [1, 0], k=0)


def test_geometry_report_to_json() -> None:
    x = np.random.default_rng(3).normal(size=(12, 5)) + 1.0
    y_true = [0, 0, 1, 1, 2, 2, 0, 1, 2, 0, 1, 2]
    y_pred = [0, 1, 1, 1, 2, 0, 0, 1, 2, 1, 1, 2]
    report = geometry_report(x, y_true, y_pred, name="pairtune")
    assert isinstance(report, GeometryReport)
    assert report.anisotropy == pytest.approx(anisotropy(x))
    record = json.loads(json.dumps(report.to_json()))
    assert record["name"] == "pairtune" and record["n"] == 12 and record["dim"] == 5
    assert set(record["contribution"]["top"]) == {"1", "2", "3"}
    assert set(record["contribution"]["dims_to_reach"]) == {"0.5", "0.8", "0.9"}
    assert sum(record["contribution"]["shares"]) == pytest.approx(1.0)
    assert record["confused"][0] == {"true": 0, "predicted": 1, "count": 2, "rate": 0.5}
    # two-dimensional embeddings: top-3 is left out rather than failing
    assert set(geometry_report(np.random.default_rng(4).normal(size=(5, 2)) + 1).contribution.top) == {1, 2}
