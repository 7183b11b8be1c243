"""HSIC, conditional HSIC and pretext-task weighting against naive references (seed 004, eqs. 1-10)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tympan.errors import ConfigError, TympanError
from tympan.pretext import (
    ClassHSIC,
    all_weights,
    centering,
    class_hsic,
    conditional_hsic,
    conditional_hsic_table,
    cosine_kernel,
    downsample_logmel,
    mrmr_weights,
    rbf_kernel,
    rfe_weights,
    select_pretext_tasks,
    select_weights,
    weighted_conditional_hsic,
)
from tympan.pretext.hsic import hsic, median_heuristic

# ---------------------------------------------------------------- naive references


def naive_hsic(K: np.ndarray, L: np.ndarray) -> float:
    """trace(K H L H) / n^2 with the explicit H = I - 11^T / n (seed eq. 5)."""
    n = K.shape[0]
    H = np.eye(n) - np.ones((n, n)) / n
    return float(np.trace(K @ H @ L @ H)) / n**2


def defective_hsic(K: np.ndarray, L: np.ndarray) -> float:
    """The public code's defect: H = I - 1/n^2 (elementwise), not I - 11^T/n."""
    n = K.shape[0]
    H = np.eye(n) - 1.0 / n**2
    return float(np.trace(K @ H @ L @ H)) / n**2


def naive_cos(X: np.ndarray) -> np.ndarray:
    n = len(X)
    K = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            K[i, j] = X[i] @ X[j] / (np.linalg.norm(X[i]) * np.linalg.norm(X[j]))
    return K


def naive_rbf(z: np.ndarray, sigma: float) -> np.ndarray:
    z = z.reshape(len(z), -1)
    d = ((z[:, None, :] - z[None, :, :]) ** 2).sum(-1)
    return np.exp(-d / (2 * sigma**2))


def standardised(z: np.ndarray) -> np.ndarray:
    z = z.reshape(len(z), -1)
    return (z - z.mean(0)) / z.std(0) / np.sqrt(z.shape[1])


def reference_conditional(X: np.ndarray, z: np.ndarray, y: np.ndarray, sigma: float) -> tuple[float, dict]:
    """One class at a time: HSIC_c on the class's clips, then sum_c n_c HSIC_c / M (eq. 6)."""
    zs = standardised(z)
    per, total = {}, 0.0
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        per[c] = naive_hsic(naive_cos(X[idx]), naive_rbf(zs[idx], sigma))
        total += len(idx) * per[c]
    return total / len(y), per


def make_data(seed: int = 0, sizes=(7, 15, 30, 4), d: int = 12):
    rng = np.random.default_rng(seed)
    y = np.concatenate([np.full(s, c) for c, s in enumerate(sizes)])
    rng.shuffle(y)
    centres = rng.normal(size=(len(sizes), d)) * 2
    X = centres[y] + rng.normal(size=(len(y), d)) + 3.0
    return X, y, centres, rng


def synthetic_selection(seed: int = 0, classes: int = 6, per: int = 25, d: int = 16):
    """A class-level label (useful by the seed's criterion) and two within-class projections of X."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(classes), per)
    centres = rng.normal(size=(classes, d)) * 2
    noise = rng.normal(size=(len(y), d))
    X = centres[y] + noise + 3.0
    labels = {
        "class_level": rng.normal(size=classes)[y] + 0.05 * rng.normal(size=len(y)),
        "within_a": noise @ rng.normal(size=d),
        "within_b": noise[:, 0] + 0.1 * noise[:, 1],
    }
    return X, y, labels


# ---------------------------------------------------------------- HSIC


def test_hsic_matches_naive_trace_and_differs_from_defective_centring():
    rng = np.random.default_rng(1)
    n = 23
    A, B = rng.normal(size=(n, 4)), rng.normal(size=(n, 3))
    K, L = naive_cos(A + 1.0), naive_rbf(B[:, 0] + 0.3 * A[:, 0], 0.8)
    ours = float(hsic(K, L))
    assert ours == pytest.approx(naive_hsic(K, L), rel=1e-12, abs=1e-15)
    assert abs(ours - defective_hsic(K, L)) > 1e-3 * abs(ours)
    # batched form and the explicit H agree too
    H = centering(n).numpy()
    assert np.allclose(H @ H, H) and np.allclose(H.sum(1), 0)
    batch = hsic(torch.as_tensor(np.stack([K, L])), torch.as_tensor(np.stack([L, K])))
    assert np.allclose(batch.numpy(), [naive_hsic(K, L), naive_hsic(L, K)], rtol=1e-12)


def test_kernels_match_equations():
    rng = np.random.default_rng(2)
    X, z = rng.normal(size=(9, 5)), rng.normal(size=(9, 2))
    assert np.allclose(cosine_kernel(X).numpy(), naive_cos(X))
    assert np.allclose(rbf_kernel(z, 0.7).numpy(), naive_rbf(z, 0.7))
    d = np.sqrt(((z[:, None] - z[None]) ** 2).sum(-1))[np.triu_indices(9, 1)]
    assert median_heuristic(z) == pytest.approx(np.median(d))
    assert np.allclose(rbf_kernel(z).numpy(), naive_rbf(z, np.median(d)))


def test_hsic_near_zero_when_independent_and_positive_when_dependent():
    rng = np.random.default_rng(3)
    n = 800
    x = rng.normal(size=(n, 3)) + 0.5
    K = cosine_kernel(x)
    indep = float(hsic(K, rbf_kernel(rng.normal(size=n))))
    dep = float(hsic(K, rbf_kernel(x[:, 0] + 0.1 * rng.normal(size=n))))
    assert 0 <= indep < 0.02 * dep
    # null distribution by permutation: the independent value is typical, the dependent one is not
    perm = [float(hsic(K, rbf_kernel(x[rng.permutation(n), 0]))) for _ in range(20)]
    assert dep > 10 * max(perm)
    assert indep < 3 * np.mean(perm)


# ---------------------------------------------------------------- conditional HSIC


@pytest.mark.parametrize("sigma", [0.9, None])
def test_conditional_hsic_equals_per_class_reference_loop(sigma):
    X, y, _, rng = make_data()
    labels = {"scalar": X[:, 0] * 0.3 + rng.normal(size=len(y)), "pair": rng.normal(size=(len(y), 2))}
    labels["pair"][:, 1] += X[:, 2]
    ch = class_hsic(X, labels, y, sigma=sigma)
    table = conditional_hsic_table(X, labels, y, sigma=sigma)
    for j, name in enumerate(ch.names):
        ref, per = reference_conditional(X, labels[name], y, ch.sigmas[name])
        assert table[name] == pytest.approx(ref, rel=1e-10)
        assert np.allclose(ch.values[j], [per[c] for c in ch.classes], rtol=1e-10, atol=1e-15)
        assert conditional_hsic(X, labels[name], y, sigma=sigma) == pytest.approx(ref, rel=1e-10)
    assert list(table.values()) == sorted(table.values())  # ascending: most useful first


def test_padding_and_clip_order_do_not_change_values():
    X, y, _, rng = make_data(sizes=(6, 40))
    z = X[:, 1] + rng.normal(size=len(y))
    small = np.flatnonzero(y == 0)
    padded = class_hsic(X, {"z": z}, y, sigma=1.0)  # class 0 padded from 6 to 40 clips
    # the same class computed on its own 6 x 6 matrices (labels standardised over all clips, as
    # the library does) gives the same value: the zero padding and masks add nothing
    alone = naive_hsic(naive_cos(X[small]), naive_rbf(standardised(z)[small], 1.0))
    assert padded.values[0, 0] == pytest.approx(alone, rel=1e-12)
    no_pad = class_hsic(X[small], {"z": z[small]}, y[small], sigma=1.0)  # a single class, no padding
    ref_alone = naive_hsic(naive_cos(X[small]), naive_rbf(standardised(z[small]), 1.0))
    assert no_pad.values[0, 0] == pytest.approx(ref_alone, rel=1e-12)
    perm = rng.permutation(len(y))
    shuffled = class_hsic(X[perm], {"z": z[perm]}, y[perm], sigma=1.0)
    assert np.allclose(shuffled.values, padded.values, rtol=1e-12)


def test_max_per_class_cap_is_seeded():
    X, y, _, rng = make_data(sizes=(30, 50, 12))
    labels = {"z": X[:, 0] + rng.normal(size=len(y))}
    a = class_hsic(X, labels, y, sigma=1.0, max_per_class=10, seed=4)
    b = class_hsic(X, labels, y, sigma=1.0, max_per_class=10, seed=4)
    c = class_hsic(X, labels, y, sigma=1.0, max_per_class=10, seed=5)
    assert list(a.sizes) == [10, 10, 10]
    assert np.array_equal(a.values, b.values)
    assert not np.allclose(a.values, c.values)
    full = class_hsic(X, labels, y, sigma=1.0, max_per_class=None)
    assert np.allclose(class_hsic(X, labels, y, sigma=1.0, max_per_class=50).values, full.values)
    assert isinstance(a, ClassHSIC) and a.aggregate()["z"] == pytest.approx(a.values[0].mean())


def test_direction_class_level_label_ranks_before_within_class_label():
    X, y, labels = synthetic_selection()
    labels["class_only"] = (y.astype(float) - 2.5) ** 2  # a function of the class alone
    table = conditional_hsic_table(X, labels, y)
    # a function of the class alone is constant inside every class: L_c = 1, HSIC exactly 0
    assert table["class_only"] < 1e-12
    assert table["class_level"] < 0.1 * min(table["within_a"], table["within_b"])
    order = list(table)
    assert order[:2] == ["class_only", "class_level"] or order[:2] == ["class_level", "class_only"]
    assert set(order[2:]) == {"within_a", "within_b"}
    sel = select_pretext_tasks(X, labels, y, "all")
    assert sel.ranking[:2] == order[:2]


# ---------------------------------------------------------------- weighting and baselines


def test_select_weights_softmax_and_sparsemax():
    X, y, labels = synthetic_selection()
    w_soft, curve_soft = select_weights(X, labels, y, "softmax", steps=150, lr=0.1)
    w_sparse, curve_sparse = select_weights(X, labels, y, "sparsemax", steps=150, lr=0.1)
    for w in (w_soft, w_sparse):
        assert sum(w.values()) == pytest.approx(1.0, abs=1e-12)
        assert all(v >= 0 for v in w.values())
        assert max(w, key=w.get) == "class_level"
    assert w_soft["class_level"] > 0.8 and all(v > 0 for v in w_soft.values())
    assert w_sparse["within_a"] == 0.0 and w_sparse["within_b"] == 0.0
    assert curve_soft[-1] < 0.2 * curve_soft[0] and curve_sparse[-1] < 0.2 * curve_sparse[0]
    assert len(curve_soft) == 151


def test_weighted_hsic_at_a_vertex_equals_the_single_label_estimate():
    X, y, labels = synthetic_selection()
    one_hot = {"within_a": 1.0}
    v = weighted_conditional_hsic(X, labels, y, one_hot, sigma=0.8)
    assert v == pytest.approx(conditional_hsic(X, labels["within_a"], y, sigma=0.8), rel=1e-10)


def test_baselines_keep_four_with_equal_weights():
    X, y, labels = synthetic_selection()
    rng = np.random.default_rng(7)
    labels = dict(labels, noise=rng.normal(size=len(y)), mix=labels["within_a"] + labels["class_level"],
                  other=X[:, 3] ** 2)
    for w in (mrmr_weights(X, labels, y, p=4), mrmr_weights(X, labels, y, p=4, normalise=False),
              rfe_weights(labels, y, k=4)):
        assert set(w) == set(labels)
        assert sorted(w.values()) == [0.0, 0.0, 0.25, 0.25, 0.25, 0.25]
    assert all_weights(list(labels)) == {k: 1 / 6 for k in labels}
    assert mrmr_weights(X, labels, y, p=4)["class_level"] == 0.25  # the most relevant label is kept


def test_selection_record_to_json():
    X, y, labels = synthetic_selection()
    sel = select_pretext_tasks(X, labels, y, "sparsemax", steps=60, lr=0.1)
    d = json.loads(sel.to_json())
    assert d["method"] == "sparsemax" and set(d["weights"]) == set(labels)
    assert d["ranking"][0] == "class_level" and list(d["ci"])[0] == "class_level"
    assert d["settings"]["max_per_class"] == 300 and len(d["curve"]) == 61
    assert sel.selected()[0] == "class_level"


# ---------------------------------------------------------------- Gaussian downsampling


def test_downsample_logmel_batched_variable_lengths():
    rng = np.random.default_rng(8)
    clips = [rng.normal(size=(5, t)) for t in (3, 40, 97)]
    out = downsample_logmel(clips, length=10)
    assert out.shape == (3, 50) and out.dtype == torch.float64
    one_by_one = torch.cat([downsample_logmel(c[None], length=10) for c in clips])
    assert torch.allclose(out, one_by_one, atol=1e-12)  # padding never leaks in
    padded = np.zeros((3, 5, 97))
    for i, c in enumerate(clips):
        padded[i, :, : c.shape[1]] = c
    assert torch.allclose(downsample_logmel(padded, 10, lengths=[3, 40, 97]), out, atol=1e-12)
    # a constant spectrogram stays constant; a linear ramp keeps its trend and range
    assert torch.allclose(downsample_logmel(np.full((1, 2, 50), 4.0), 8), torch.full((1, 16), 4.0, dtype=torch.float64))
    ramp = downsample_logmel(np.arange(100.0)[None, None, :], 10, flatten=False)[0, 0]
    assert bool((ramp.diff() > 0).all()) and 0 <= ramp[0] < 10 and 89 < ramp[-1] <= 99


# ---------------------------------------------------------------- errors


def test_user_errors_name_the_problem():
    X, y, labels = synthetic_selection()
    y1 = y.copy()
    y1[0] = 99
    with pytest.raises(TympanError, match="class 99 has 1 clip"):
        conditional_hsic(X, labels["within_a"], y1)
    bad = labels["within_a"].copy()
    bad[3] = np.nan
    with pytest.raises(TympanError, match="'f0'.*clip 3 is NaN"):
        conditional_hsic_table(X, {"f0": bad}, y)
    with pytest.raises(TympanError, match=r"'short' has shape \(10,\); expected \[150\]"):
        select_weights(X, {"short": np.zeros(10)}, y)
    with pytest.raises(TympanError, match="y has 149 labels but X has 150 clips"):
        conditional_hsic(X, labels["within_a"], y[:-1])
    Xn = X.copy()
    Xn[5, 2] = np.inf
    with pytest.raises(TympanError, match="clip 5 contains NaN or inf"):
        conditional_hsic(Xn, labels["within_a"], y)
    with pytest.raises(TympanError, match="'flat' is constant"):
        conditional_hsic_table(X, {"flat": np.ones(len(y))}, y)
    with pytest.raises(ConfigError, match="method must be"):
        select_weights(X, labels, y, "lasso")
    with pytest.raises(ConfigError, match="sigma"):
        conditional_hsic(X, labels["within_a"], y, sigma=-1.0)
    with pytest.raises(TympanError, match="clip 1 contains NaN"):
        downsample_logmel([np.zeros((4, 5)), np.full((4, 6), np.nan)])
