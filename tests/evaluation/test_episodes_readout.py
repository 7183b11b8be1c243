"""Episode sampler, CI formula and the batched readout against scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from tympan.errors import EpisodeError
from tympan.evaluation.fewshot import fit_logistic_batched, readout_accuracy, sample_episodes
from tympan.evaluation.metrics import intervals_overlap, mean_ci95


def _labels(n_classes: int = 8, per_class: int = 12) -> list[str]:
    return [f"c{c}" for c in range(n_classes) for _ in range(per_class)]


def test_episodes_exact_counts_and_disjoint() -> None:
    labels = np.array(_labels())
    eps = sample_episodes(labels, ways=5, shots=2, queries=3, episodes=50, seed=0)
    assert eps.support.shape == (50, 10) and eps.query.shape == (50, 15)
    for e in range(50):
        assert len(set(eps.support[e]) | set(eps.query[e])) == 25  # no clip twice
        support_classes = labels[eps.support[e]].reshape(5, 2)
        query_classes = labels[eps.query[e]].reshape(5, 3)
        assert len({row[0] for row in support_classes}) == 5  # five distinct classes
        for way in range(5):
            assert set(support_classes[way]) == set(query_classes[way]) == {support_classes[way][0]}


def test_episodes_depend_only_on_seed() -> None:
    labels = _labels()
    a = sample_episodes(labels, 5, 1, 5, 20, seed=3)
    b = sample_episodes(list(labels), 5, 1, 5, 20, seed=3)
    c = sample_episodes(labels, 5, 1, 5, 20, seed=4)
    assert np.array_equal(a.support, b.support) and np.array_equal(a.query, b.query)
    assert not np.array_equal(a.support, c.support)


def test_class_disjoint_from_other_splits() -> None:
    # the sampler only sees the split it is given: indices never leave it
    labels = _labels(6, 10)
    eps = sample_episodes(labels, 5, 1, 2, 100, seed=0)
    assert eps.support.max() < len(labels) and eps.query.max() < len(labels)


def test_too_few_clips_names_the_class() -> None:
    labels = _labels(6, 10) + ["rare"] * 3
    with pytest.raises(EpisodeError, match=r"rare \(3\)"):
        sample_episodes(labels, 5, 1, 5, 10)
    with pytest.raises(EpisodeError, match="5-way episodes need 5 classes"):
        sample_episodes(_labels(3, 10), 5, 1, 1, 10)


def test_ci95_formula_by_hand() -> None:
    values = [50.0, 60.0, 70.0, 80.0]
    mean = 65.0
    sd = math.sqrt(((15**2) * 2 + (5**2) * 2) / 3)  # sample std, ddof=1
    m, ci = mean_ci95(values)
    assert m == mean and ci == pytest.approx(1.959964 * sd / 2, rel=1e-6)
    assert math.isnan(mean_ci95([1.0])[1])
    assert intervals_overlap((50, 2), (53, 1.5)) and not intervals_overlap((50, 1), (53, 1.5))


@pytest.mark.parametrize("shots", [1, 5])
def test_batched_readout_matches_sklearn(shots: int) -> None:
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(10, 64))
    y = np.repeat(np.arange(10), 24)
    x = centers[y] * 0.35 + rng.normal(size=(len(y), 64))
    eps = sample_episodes([str(v) for v in y], 5, shots, 10, 200, seed=shots)
    ours = readout_accuracy(x, eps)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    ref = []
    for e in range(200):
        clf = LogisticRegression(C=1.0, max_iter=1000).fit(xn[eps.support[e]], eps.support_labels)
        ref.append((clf.predict(xn[eps.query[e]]) == eps.query_labels).mean())
    assert 0.3 < np.mean(ref) < 0.98  # a non-trivial problem
    assert abs(ours.mean() - np.mean(ref)) * 100 < 1.0


def test_fit_reaches_sklearn_minimiser_and_survives_duplicates() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(10, 16))
    x[5] = x[0]  # duplicate support vector: singular Gram matrix
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 2])
    w, b = fit_logistic_batched(torch.tensor(x)[None], torch.tensor(y)[None], 3, C=1.0)
    assert torch.isfinite(w).all() and torch.isfinite(b).all()
    clf = LogisticRegression(C=1.0, max_iter=5000, tol=1e-10).fit(x, y)
    ours = (torch.tensor(x) @ w[0] + b[0]).numpy()
    theirs = clf.decision_function(x)
    # logits agree up to a per-sample constant (softmax invariance)
    diff = (ours - ours.mean(1, keepdims=True)) - (theirs - theirs.mean(1, keepdims=True))
    assert np.abs(diff).max() < 1e-3
