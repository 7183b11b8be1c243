"""Few-shot evaluation: the episode sampler, the batched logistic readout (checked against
per-episode scikit-learn), and ``evaluate_fewshot``'s accuracy and CI."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from tympan.errors import EpisodeError, TympanError
from tympan.evaluation.fewshot import (
    Episodes,
    evaluate_fewshot,
    fit_logistic_batched,
    readout_accuracy,
    sample_episodes,
)
from tympan.evaluation.metrics import mean_ci95

# -- helpers ------------------------------------------------------------------------------------


def _labels(sizes: dict[str, int], shuffle_seed: int | None = 0) -> np.ndarray:
    """One label per clip; classes of the given sizes, interleaved in a shuffled order."""
    labels = np.array([name for name, n in sizes.items() for _ in range(n)])
    if shuffle_seed is not None:
        labels = labels[np.random.default_rng(shuffle_seed).permutation(len(labels))]
    return labels


def _check_episodes(eps: Episodes, labels: np.ndarray, ways: int, shots: int, queries: int,
                    episodes: int) -> None:
    """Every structural promise of an episode set."""
    classes = np.unique(labels)
    assert eps.ways == ways and eps.shots == shots and eps.queries == queries
    assert eps.support.shape == (episodes, ways * shots)
    assert eps.query.shape == (episodes, ways * queries)
    assert eps.classes.shape == (episodes, ways)
    assert np.issubdtype(eps.support.dtype, np.integer)
    assert eps.support.min() >= 0 and eps.query.min() >= 0  # padding (-1) never leaks out
    assert eps.support.max() < len(labels) and eps.query.max() < len(labels)
    assert np.array_equal(eps.support_labels, np.repeat(np.arange(ways), shots))
    assert np.array_equal(eps.query_labels, np.repeat(np.arange(ways), queries))
    for e in range(episodes):
        # exactly `ways` distinct classes, each a valid class index
        assert len(set(eps.classes[e].tolist())) == ways
        # support and query are disjoint, and no clip is drawn twice
        both = np.concatenate([eps.support[e], eps.query[e]])
        assert len(set(both.tolist())) == ways * (shots + queries)
        # every index carries the label of its way; grouped by way
        s = labels[eps.support[e]].reshape(ways, shots)
        q = labels[eps.query[e]].reshape(ways, queries)
        for w in range(ways):
            name = classes[eps.classes[e, w]]
            assert (s[w] == name).all() and (q[w] == name).all()


# -- episode sampler ----------------------------------------------------------------------------


@pytest.mark.parametrize(("ways", "shots", "queries"), [(5, 1, 5), (5, 5, 3), (3, 2, 7), (7, 1, 1)])
def test_episode_structure(ways: int, shots: int, queries: int) -> None:
    # unequal class sizes exercise the padded member table of the vectorised sampler
    sizes = {f"class{c:02d}": 9 + 3 * c for c in range(9)}
    labels = _labels(sizes)
    eps = sample_episodes(labels, ways, shots, queries, 60, seed=11)
    _check_episodes(eps, labels, ways, shots, queries, 60)


def test_exactly_enough_clips_uses_every_clip_of_the_class() -> None:
    # a class with exactly shots+queries clips: every episode that picks it uses all its clips
    labels = _labels({"tight": 4, "a": 10, "b": 10, "c": 10})
    eps = sample_episodes(labels, 2, 1, 3, 80, seed=0)
    _check_episodes(eps, labels, 2, 1, 3, 80)
    tight_idx = set(np.flatnonzero(labels == "tight").tolist())
    tight_class = list(np.unique(labels)).index("tight")
    used = 0
    for e in range(80):
        for w in range(2):
            if eps.classes[e, w] == tight_class:
                clips = set(eps.support[e, w : w + 1].tolist()) | set(
                    eps.query[e, w * 3 : (w + 1) * 3].tolist()
                )
                assert clips == tight_idx
                used += 1
    assert used > 0


def test_episodes_only_use_the_given_split() -> None:
    # a corpus with train and test splits whose classes are disjoint: the sampler sees only the
    # test split's labels, so its episodes (mapped back to corpus rows) are test classes only
    train = [f"train_{c}" for c in range(6) for _ in range(10)]
    test = [f"test_{c}" for c in range(6) for _ in range(10)]
    corpus_labels = np.array(train + test)
    split = np.array(["train"] * len(train) + ["test"] * len(test))
    test_rows = np.flatnonzero(split == "test")
    eps = sample_episodes(corpus_labels[test_rows], 5, 2, 3, 200, seed=0)
    used_rows = test_rows[np.concatenate([eps.support.ravel(), eps.query.ravel()])]
    used_labels = set(corpus_labels[used_rows].tolist())
    assert used_labels <= set(test)
    assert used_labels == set(test)  # and over 200 episodes every test class shows up
    assert not used_labels & set(train)


def test_draws_are_roughly_uniform() -> None:
    # classes per episode and clips per class are uniform draws (catches a biased ranking or a
    # padding slot that steals probability from real clips)
    sizes = {"a": 6, "b": 12, "c": 6, "d": 20}
    labels = _labels(sizes, shuffle_seed=3)
    n = 4000
    eps = sample_episodes(labels, 2, 1, 1, n, seed=5)
    class_freq = np.bincount(eps.classes.ravel(), minlength=4) / (2 * n)
    assert np.allclose(class_freq, 0.25, atol=0.03)
    # within class "d" (20 clips), each clip is a support clip about equally often
    d = list(np.unique(labels)).index("d")
    picks = eps.support.reshape(n, 2)[eps.classes == d]
    freq = np.bincount(picks, minlength=len(labels))[labels == "d"] / len(picks)
    assert freq.min() > 0.5 / 20 and freq.max() < 1.5 / 20


def test_deterministic_per_seed() -> None:
    labels = _labels({f"c{c}": 12 for c in range(8)})
    a = sample_episodes(labels, 5, 2, 4, 30, seed=7)
    b = sample_episodes(labels, 5, 2, 4, 30, seed=7)
    for name in ("support", "query", "classes"):
        assert np.array_equal(getattr(a, name), getattr(b, name))
    c = sample_episodes(labels, 5, 2, 4, 30, seed=8)
    assert not np.array_equal(a.support, c.support)
    assert not np.array_equal(a.classes, c.classes)


def test_independent_of_global_rng_and_container_type() -> None:
    labels = _labels({f"c{c}": 9 for c in range(7)})
    np.random.seed(0)
    torch.manual_seed(0)
    ref = sample_episodes(labels, 4, 1, 3, 25, seed=2)
    # disturb every global generator; pass the labels as a list and as a tuple
    np.random.seed(12345)
    np.random.random(1000)
    torch.manual_seed(999)
    import random

    random.seed(42)
    for given in (list(labels), tuple(labels.tolist()), labels.astype(object)):
        other = sample_episodes(given, 4, 1, 3, 25, seed=2)
        assert np.array_equal(ref.support, other.support)
        assert np.array_equal(ref.query, other.query)
        assert np.array_equal(ref.classes, other.classes)


def test_too_few_clips_names_class_and_count() -> None:
    labels = _labels({"dog": 10, "cat": 10, "owl": 3, "bee": 10, "cow": 10, "emu": 10})
    with pytest.raises(EpisodeError) as info:
        sample_episodes(labels, 5, 1, 5, 10)
    msg = str(info.value)
    assert "owl (3)" in msg
    assert "dog" not in msg and "cat" not in msg  # only the offending class is named
    assert isinstance(info.value, TympanError)
    # two small classes: both named, with their counts
    labels = _labels({"dog": 10, "cat": 2, "owl": 5, "bee": 10, "cow": 10, "emu": 10})
    with pytest.raises(EpisodeError) as info:
        sample_episodes(labels, 3, 2, 4, 10)
    assert "cat (2)" in str(info.value) and "owl (5)" in str(info.value)
    # exactly shots + queries clips is enough
    sample_episodes(_labels({"a": 6, "b": 6, "c": 6}), 3, 2, 4, 5)


def test_too_many_ways_raises() -> None:
    labels = _labels({f"c{c}": 20 for c in range(4)})
    with pytest.raises(EpisodeError, match="4"):
        sample_episodes(labels, 5, 1, 1, 10)
    sample_episodes(labels, 4, 1, 1, 10)  # ways == number of classes is fine


@pytest.mark.parametrize("bad", [dict(ways=0), dict(shots=0), dict(queries=0), dict(episodes=0)])
def test_nonpositive_sizes_raise(bad: dict[str, int]) -> None:
    kwargs = dict(ways=2, shots=1, queries=1, episodes=3) | bad
    with pytest.raises(EpisodeError):
        sample_episodes(_labels({"a": 5, "b": 5}), **kwargs)


# -- batched readout vs scikit-learn ------------------------------------------------------------


def _gaussian_classes(scale: float = 0.45, n_classes: int = 10, per_class: int = 24, dim: int = 64,
                      seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_classes, dim))
    y = np.repeat(np.arange(n_classes), per_class)
    x = centers[y] * scale + rng.normal(size=(len(y), dim))
    return x, np.array([f"class{v}" for v in y])


def _l2(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("shots", [1, 5])
def test_readout_accuracy_matches_sklearn(shots: int) -> None:
    x, labels = _gaussian_classes()
    eps = sample_episodes(labels, 5, shots, 15, 200, seed=100 + shots)
    ours = readout_accuracy(x, eps)
    assert ours.shape == (200,) and ours.dtype == np.float64
    xn = _l2(x)
    ref = np.empty(200)
    for e in range(200):
        clf = LogisticRegression(C=1.0, max_iter=1000).fit(xn[eps.support[e]], eps.support_labels)
        ref[e] = (clf.predict(xn[eps.query[e]]) == eps.query_labels).mean()
    assert 0.55 < ref.mean() < 0.95  # a problem neither trivial nor hopeless
    # the acceptance criterion: mean accuracy within 1 point of scikit-learn
    assert abs(ours.mean() - ref.mean()) * 100 < 1.0
    # and per episode they agree almost everywhere (a tie-break or solver tolerance at most)
    assert (np.abs(ours - ref) > 1e-9).mean() < 0.1
    assert np.abs(ours - ref).max() <= 2 / (5 * 15) + 1e-12


@pytest.mark.parametrize("shots", [1, 5])
def test_fitted_parameters_match_sklearn(shots: int) -> None:
    x, labels = _gaussian_classes()
    eps = sample_episodes(labels, 5, shots, 3, 3, seed=7)
    xn = _l2(x)
    xs = torch.as_tensor(xn[eps.support])  # [E, S, D]
    ys = torch.as_tensor(eps.support_labels).expand(3, -1)
    w, b = fit_logistic_batched(xs, ys, 5, C=1.0)
    assert w.shape == (3, 64, 5) and b.shape == (3, 5)
    for e in range(3):
        clf = LogisticRegression(C=1.0, max_iter=10000, tol=1e-10).fit(
            xn[eps.support[e]], eps.support_labels
        )
        np.testing.assert_allclose(w[e].numpy().T, clf.coef_, atol=1e-5)
        # intercepts are defined up to a common shift: compare centred
        ours_b = b[e].numpy() - b[e].numpy().mean()
        theirs_b = clf.intercept_ - clf.intercept_.mean()
        np.testing.assert_allclose(ours_b, theirs_b, atol=1e-5)
        # and so are the logits of the query clips (up to a per-row constant)
        xq = xn[eps.query[e]]
        ours_z = xq @ w[e].numpy() + b[e].numpy()
        theirs_z = clf.decision_function(xq)
        diff = (ours_z - ours_z.mean(1, keepdims=True)) - (theirs_z - theirs_z.mean(1, keepdims=True))
        assert np.abs(diff).max() < 1e-5


def test_readout_l2_normalises() -> None:
    # rescaling clips must not change anything: the readout normalises each embedding
    x, labels = _gaussian_classes()
    eps = sample_episodes(labels, 5, 2, 5, 40, seed=1)
    scales = np.random.default_rng(0).uniform(0.01, 100.0, size=(len(x), 1))
    assert np.array_equal(readout_accuracy(x, eps), readout_accuracy(x * scales, eps))


def test_readout_float32_input_and_perfect_separation() -> None:
    # well separated classes: every query right; float32 embeddings accepted
    rng = np.random.default_rng(0)
    centers = np.eye(6, 32) * 10
    y = np.repeat(np.arange(6), 10)
    x = (centers[y] + 0.1 * rng.normal(size=(60, 32))).astype(np.float32)
    eps = sample_episodes(y.astype(str), 5, 1, 4, 20, seed=0)
    assert np.array_equal(readout_accuracy(x, eps), np.ones(20))


# -- the solver ---------------------------------------------------------------------------------


def _primal(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor, y: torch.Tensor, C: float):
    z = x @ w + b.unsqueeze(1)  # [E, S, K]
    ce = torch.logsumexp(z, -1) - z.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    return C * ce.sum(-1) + 0.5 * w.square().sum((1, 2))  # [E]


def _primal_grad(w, b, x, y, C):
    w = w.clone().requires_grad_(True)
    b = b.clone().requires_grad_(True)
    _primal(w, b, x, y, C).sum().backward()
    return w.grad, b.grad


@pytest.mark.parametrize(("dim", "C"), [(64, 1.0), (3, 1.0), (20, 10.0), (20, 0.1)])
def test_fit_reaches_stationary_point(dim: int, C: float) -> None:
    # dim=3 < 20 support clips: a rank-deficient Gram matrix
    rng = np.random.default_rng(dim)
    e, ways, shots = 12, 4, 5
    x = torch.as_tensor(rng.normal(size=(e, ways * shots, dim)))
    x = x / x.norm(dim=-1, keepdim=True)
    y = torch.as_tensor(np.repeat(np.arange(ways), shots)).expand(e, -1)
    w, b = fit_logistic_batched(x, y, ways, C=C)
    assert w.dtype == torch.float64 and torch.isfinite(w).all() and torch.isfinite(b).all()
    gw, gb = _primal_grad(w, b, x, y, C)
    assert gw.abs().max() < 1e-6 * max(1.0, C)
    assert gb.abs().max() < 1e-6 * max(1.0, C)
    # and the objective cannot be lowered by scikit-learn's (tightly converged) minimiser
    f = _primal(w, b, x, y, C)
    for i in range(3):
        clf = LogisticRegression(C=C, max_iter=10000, tol=1e-12).fit(x[i].numpy(), y[i].numpy())
        f_sk = _primal(torch.as_tensor(clf.coef_.T)[None], torch.as_tensor(clf.intercept_)[None],
                       x[i : i + 1], y[i : i + 1], C)
        assert f[i] <= f_sk[0] + 1e-8


def test_episodes_are_independent_of_the_batch() -> None:
    # one episode solved alone, in a batch, or in a batch split into chunks: same solution
    rng = np.random.default_rng(4)
    x = torch.as_tensor(rng.normal(size=(7, 10, 16)))
    y = torch.as_tensor(np.repeat(np.arange(5), 2)).expand(7, -1)
    w, b = fit_logistic_batched(x, y, 5)
    w2, b2 = fit_logistic_batched(x, y, 5, chunk=3)
    # (the stopping test is per batch, so agreement is to the solver's tolerance)
    torch.testing.assert_close(w, w2, atol=1e-6, rtol=0)
    torch.testing.assert_close(b - b.mean(1, keepdim=True), b2 - b2.mean(1, keepdim=True),
                               atol=1e-6, rtol=0)
    for i in (0, 6):
        wi, bi = fit_logistic_batched(x[i : i + 1], y[i : i + 1], 5)
        torch.testing.assert_close(wi[0], w[i], atol=1e-6, rtol=0)


def test_duplicate_support_vectors_no_nan() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 10, 16))
    x[0, 5] = x[0, 0]  # a duplicate within a class (rows 0 and 5 are both class 0)
    x[1, 1] = x[1, 0]  # the same clip in two classes
    x[2, :] = x[2, 0]  # every support clip identical: Gram of rank 1
    x = torch.as_tensor(x)
    y = torch.as_tensor(np.array([0, 1, 2, 3, 4, 0, 1, 2, 3, 4])).expand(3, -1)
    w, b = fit_logistic_batched(x, y, 5)
    assert torch.isfinite(w).all() and torch.isfinite(b).all()
    gw, gb = _primal_grad(w, b, x, y, 1.0)
    assert gw.abs().max() < 1e-6 and gb.abs().max() < 1e-6
    # all clips identical and classes balanced: nothing to learn, W = 0 and uniform logits
    assert w[2].abs().max() < 1e-6
    assert (b[2] - b[2].mean()).abs().max() < 1e-6


# -- evaluate_fewshot ---------------------------------------------------------------------------


def test_evaluate_fewshot_percent_and_ci() -> None:
    x, labels = _gaussian_classes()
    mean, ci, acc = evaluate_fewshot(x, list(labels), ways=5, shots=1, queries=5, episodes=50,
                                     seed=3)
    eps = sample_episodes(labels, 5, 1, 5, 50, seed=3)
    np.testing.assert_array_equal(acc, readout_accuracy(x, eps))  # same episodes, same readout
    assert acc.shape == (50,) and 0.0 <= acc.min() and acc.max() <= 1.0
    assert mean == pytest.approx(acc.mean() * 100, abs=1e-9)  # percent, not a fraction
    assert 10.0 < mean <= 100.0
    sd = acc.std(ddof=1) * 100
    assert ci == pytest.approx(1.959964 * sd / math.sqrt(50), rel=1e-5)
    assert (mean, ci) == pytest.approx(mean_ci95(acc * 100))
    # another seed: other episodes
    _, _, acc2 = evaluate_fewshot(x, labels, ways=5, shots=1, queries=5, episodes=50, seed=4)
    assert not np.array_equal(acc, acc2)


def test_evaluate_fewshot_single_episode_and_errors() -> None:
    x, labels = _gaussian_classes()
    mean, ci, acc = evaluate_fewshot(x, labels, ways=5, shots=1, queries=5, episodes=1)
    assert mean == pytest.approx(acc[0] * 100) and math.isnan(ci)
    with pytest.raises(EpisodeError):
        evaluate_fewshot(x, labels, ways=11, shots=1, queries=5, episodes=5)
