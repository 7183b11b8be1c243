"""Probes on frozen embeddings: training with best-val-loss checkpoints, macro metrics with
degenerate classes left out, the seed's bootstrap (50% without replacement) and limited data."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from tympan.errors import ConfigError, TympanError
from tympan.evaluation.probes import (
    Probe,
    ProbeError,
    average_by_track,
    bootstrap,
    bootstrap_indices,
    bootstrap_metrics,
    classification_metrics,
    first_by_track,
    label_vocabulary,
    limited_data,
    limited_data_subset,
    multi_hot,
    run_probe,
    tagging_metrics,
)
from tympan.report.plots import plot_limited_data

# small and quick: one pass per epoch, small batches
FAST = {"max_epochs": 8, "steps_per_epoch": None, "batch_size": 64, "lr": 1e-2}

TAGS = np.array([[1, 0, 0, 1], [0, 1, 0, 1], [0, 0, 1, 0], [1, 1, 0, 0], [0, 0, 1, 1]])


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # tiny matmuls: thread hand-offs cost more than they save on a shared 2-core machine
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def clusters(n: int, seed: int, classes: int = 5, dim: int = 16, sep: float = 3.0):
    """Gaussian clusters around fixed centres: embeddings [n, dim] and class indices [n]."""
    centres = np.random.default_rng(1234).normal(size=(classes, dim)) * sep / math.sqrt(2)
    r = np.random.default_rng(seed)
    y = r.integers(0, classes, n)
    return (centres[y] + r.normal(size=(n, dim))).astype(np.float32), y


@pytest.fixture(scope="module")
def splits():
    return clusters(300, 1), clusters(100, 2), clusters(200, 3)


# -- labels and tracks ------------------------------------------------------------------------


def test_multi_hot_by_hand() -> None:
    labels = [("rock", "guitar"), ("jazz",), "piano", ()]
    classes = label_vocabulary([("rock", "guitar"), ("jazz",), ("piano",)])
    assert classes == ["guitar", "jazz", "piano", "rock"]
    y = multi_hot(labels, classes)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(
        y, [[1, 0, 0, 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    )
    # the vocabulary fixes the column order, whatever order it is given in
    np.testing.assert_array_equal(multi_hot([("rock",)], ["rock", "jazz"]), [[1, 0]])


def test_multi_hot_unknown_label() -> None:
    with pytest.raises(ProbeError, match="'metal'.*vocabulary"):
        multi_hot([("rock",), ("metal",)], ["rock", "jazz"])
    y = multi_hot([("rock", "metal"), ("metal",)], ["rock", "jazz"], unknown="ignore")
    np.testing.assert_array_equal(y, [[1, 0], [0, 0]])


def test_average_by_track_by_hand() -> None:
    emb = np.array([[1.0, 2.0], [10.0, 0.0], [3.0, 4.0], [7.0, 7.0], [20.0, 2.0]])
    tracks = ["b", "a", "b", "c", "a"]
    means, order = average_by_track(emb, tracks)
    assert order == ["b", "a", "c"]  # order of first appearance
    # b: (1,2),(3,4) -> (2,3); a: (10,0),(20,2) -> (15,1); c: (7,7)
    np.testing.assert_allclose(means, [[2.0, 3.0], [15.0, 1.0], [7.0, 7.0]])
    targets = np.array([[1, 0], [0, 1], [1, 0], [1, 1], [0, 1]])
    np.testing.assert_array_equal(first_by_track(targets, tracks), [[1, 0], [0, 1], [1, 1]])
    with pytest.raises(ProbeError, match="track 'a'"):
        first_by_track(np.array([0, 1, 0, 2, 3]), tracks)


def test_average_by_track_errors() -> None:
    with pytest.raises(ProbeError, match="track_ids has 2 entries but there are 3"):
        average_by_track(np.zeros((3, 2)), ["a", "b"])
    with pytest.raises(ProbeError, match=r"track_ids\[1\] is None"):
        average_by_track(np.zeros((2, 2)), ["a", None])


# -- metrics ----------------------------------------------------------------------------------


def test_tagging_metrics_match_sklearn_and_exclude_degenerate_classes() -> None:
    y = np.array([[1, 0, 1, 0], [0, 1, 1, 0], [1, 1, 1, 0], [0, 0, 1, 0]])
    s = np.array([[0.9, 0.2, 0.5, 0.1], [0.4, 0.8, 0.3, 0.2], [0.6, 0.3, 0.9, 0.3],
                  [0.1, 0.1, 0.2, 0.4]])
    m = tagging_metrics(y, s, class_names=["a", "b", "c", "d"])
    # class c has no negative, class d no positive: only a and b are scored
    assert (m["n_classes"], m["n_evaluated"], m["n_excluded"]) == (4, 2, 2)
    assert m["excluded"] == ["c", "d"]
    # by hand: class a, positives {0.9, 0.6} above negatives {0.4, 0.1}: AUC 1, AP 1;
    # class b, positives {0.8, 0.3}, negatives {0.2, 0.1}: AUC 1, AP 1 -> use a harder case below
    assert m["roc_auc"] == pytest.approx(1.0)
    assert m["map"] == pytest.approx(1.0)
    s[2, 1] = 0.15  # class b: positive 0.15 now below negative 0.2 -> 3 of 4 pairs ordered
    m = tagging_metrics(y, s)
    assert m["excluded"] == [2, 3]
    assert m["roc_auc"] == pytest.approx((1.0 + 0.75) / 2)
    # class b ranking: 0.8 (+), 0.2 (-), 0.15 (+), 0.1 (-): AP = (1/1 + 2/3) / 2
    assert m["map"] == pytest.approx((1.0 + (1 + 2 / 3) / 2) / 2)
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y[:, :2], s[:, :2], average="macro"))
    assert m["map"] == pytest.approx(average_precision_score(y[:, :2], s[:, :2], average="macro"))


def test_tagging_metrics_all_degenerate_is_reported_not_silent() -> None:
    m = tagging_metrics(np.ones((3, 2)), np.random.default_rng(0).random((3, 2)))
    assert math.isnan(m["roc_auc"]) and math.isnan(m["map"])
    assert m["n_excluded"] == 2 and m["n_evaluated"] == 0


def test_classification_metrics() -> None:
    y = np.array([0, 1, 2, 1])
    scores = np.array([[0.9, 0.1, 0], [0.2, 0.7, 0.1], [0.5, 0.2, 0.3], [0, 1, 0]])
    assert classification_metrics(y, scores)["accuracy"] == 0.75
    assert classification_metrics(y, np.array([0, 1, 2, 2]))["accuracy"] == 0.75


# -- bootstrap --------------------------------------------------------------------------------


def test_bootstrap_indices_without_replacement() -> None:
    idx = bootstrap_indices(11, draws=50, fraction=0.5, seed=3)
    assert idx.shape == (50, 6)  # round(5.5) = 6 (banker's rounding: round(0.5 * 11))
    assert idx.min() >= 0 and idx.max() < 11
    assert all(len(set(row)) == len(row) for row in idx.tolist())  # no repeats within a draw
    assert len({tuple(sorted(r)) for r in idx.tolist()}) > 40  # the draws differ
    np.testing.assert_array_equal(idx, bootstrap_indices(11, 50, 0.5, seed=3))
    assert bootstrap_indices(10, 50, 0.5).shape == (50, 5)


def test_bootstrap_mean_std_by_hand() -> None:
    y = np.arange(10.0)  # the "score" of a subset is the mean of the row ids it holds
    seen = []

    def score(t: np.ndarray, s: np.ndarray) -> float:
        seen.append(t.copy())
        np.testing.assert_array_equal(t, s)  # rows of y_true and y_score stay aligned
        return float(t.mean())

    est = bootstrap(score, y, y.copy(), draws=50, fraction=0.5, seed=7)
    assert len(seen) == 50 and all(v.size == 5 and np.unique(v).size == 5 for v in seen)
    values = np.array([v.mean() for v in seen])
    idx = bootstrap_indices(10, 50, 0.5, seed=7)
    np.testing.assert_allclose(values, y[idx].mean(axis=1))
    assert est.mean == pytest.approx(values.mean())
    assert est.std == pytest.approx(np.sqrt(((values - values.mean()) ** 2).mean()))  # ddof=0
    assert est.size == 5 and est.n_nan == 0
    # the full set every draw: no spread
    full = bootstrap(lambda t, s: float(t.sum()), y, y, draws=5, fraction=1.0)
    assert (full.mean, full.std) == (45.0, 0.0)


def test_bootstrap_tiny_hand_case() -> None:
    # y = [0, 0, 1, 1], half the set: the subset mean is 0 (1 of 6 pairs), 1/2 (4 of 6), 1 (1/6)
    y = np.array([0.0, 0.0, 1.0, 1.0])
    est = bootstrap(lambda t, s: float(t.mean()), y, y, draws=4000, fraction=0.5, seed=0)
    assert est.mean == pytest.approx(0.5, abs=0.02)
    # population variance of that distribution: (1/6)(1/4) * 2 = 1/12
    assert est.std == pytest.approx(math.sqrt(1 / 12), abs=0.02)


def test_bootstrap_counts_undefined_draws() -> None:
    y = np.array([[1], [1], [1], [0]])
    s = np.array([[0.9], [0.8], [0.7], [0.1]])
    out = bootstrap_metrics(lambda t, z: tagging_metrics(t, z), y, s, draws=30, fraction=0.5)
    # a draw without the negative has no ROC-AUC: counted, and left out of mean/std
    assert 0 < out["roc_auc"].n_nan < 30
    assert out["roc_auc"].mean == pytest.approx(1.0)
    assert out["n_excluded"].mean == pytest.approx(out["roc_auc"].n_nan / 30)


# -- the probe --------------------------------------------------------------------------------


def test_linear_probe_separable_tagging(splits) -> None:
    (xtr, ytr), (xv, yv), (xte, yte) = splits
    r = run_probe((xtr, TAGS[ytr]), (xv, TAGS[yv]), (xte, TAGS[yte]), task="tagging", **FAST)
    assert r.metrics["roc_auc"]["mean"] > 0.97
    assert r.metrics["map"]["mean"] > 0.93
    assert r.full_test["roc_auc"] > 0.97
    assert r.metrics["roc_auc"]["std"] < 0.02
    assert r.excluded_classes == []
    assert r.bootstrap["size"] == 100 and r.bootstrap["draws"] == 50
    assert (r.n_train, r.n_val, r.n_test, r.n_classes, r.embedding_dim) == (300, 100, 200, 4, 16)
    js = json.loads(json.dumps(r.to_json()))
    assert js["best_val_loss"] == pytest.approx(min(js["history"]["val_loss"]))
    assert "roc_auc" in r.summary()


def test_probe_classification_accuracy(splits) -> None:
    (xtr, ytr), (xv, yv), (xte, yte) = splits
    for kind in ("linear", "mlp"):
        r = run_probe((xtr, ytr), (xv, yv), (xte, yte), task="classification", kind=kind,
                      hidden_dim=32, **FAST)
        assert r.metrics["accuracy"]["mean"] > 0.95
        assert r.n_classes == 5


def test_probe_random_labels_is_chance() -> None:
    r = np.random.default_rng(5)
    x = r.normal(size=(600, 16)).astype(np.float32)
    y = (r.random((600, 6)) < 0.4).astype(np.float32)
    res = run_probe((x[:300], y[:300]), (x[300:400], y[300:400]), (x[400:], y[400:]), **FAST)
    assert res.full_test["roc_auc"] == pytest.approx(0.5, abs=0.08)


def test_best_validation_checkpoint_is_kept() -> None:
    # few noisy training examples, wide MLP, large lr: the validation loss soon rises
    r = np.random.default_rng(0)
    x, y = clusters(240, 4, classes=3, dim=32, sep=1.0)
    tags = np.eye(3)[y]
    probe = Probe(kind="mlp", hidden_dim=128, lr=3e-2, max_epochs=40, batch_size=16,
                  steps_per_epoch=2, patience=4, seed=1)
    probe.fit(x[:30] + r.normal(size=(30, 32)).astype(np.float32), tags[:30], x[40:], tags[40:])
    val = probe.history_["val_loss"]
    assert probe.best_epoch_ < probe.epochs_run_  # it did overfit after the best epoch
    assert probe.epochs_run_ == probe.best_epoch_ + 4 < 40  # stopped by patience
    assert probe.best_val_loss_ == min(val)
    assert probe.best_epoch_ == int(np.argmin(val)) + 1
    # the returned weights are the best epoch's: their validation loss is the recorded minimum
    assert probe.loss(x[40:], tags[40:]) == pytest.approx(min(val), rel=1e-5)
    assert probe.loss(x[40:], tags[40:]) < val[-1]
    # without patience every epoch runs, the best is still restored
    full = Probe(kind="mlp", hidden_dim=128, lr=3e-2, max_epochs=12, batch_size=16,
                 steps_per_epoch=2, seed=1).fit(x[:30], tags[:30], x[40:], tags[40:])
    assert full.epochs_run_ == 12
    assert full.loss(x[40:], tags[40:]) == pytest.approx(min(full.history_["val_loss"]), rel=1e-5)


def test_probe_is_deterministic(splits) -> None:
    (xtr, ytr), (xv, yv), (xte, _) = splits
    state = torch.random.get_rng_state()
    a = Probe(kind="mlp", hidden_dim=16, seed=3, **FAST).fit(xtr, TAGS[ytr], xv, TAGS[yv])
    b = Probe(kind="mlp", hidden_dim=16, seed=3, **FAST).fit(xtr, TAGS[ytr], xv, TAGS[yv])
    c = Probe(kind="mlp", hidden_dim=16, seed=4, **FAST).fit(xtr, TAGS[ytr], xv, TAGS[yv])
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is untouched
    np.testing.assert_array_equal(a.decision_function(xte), b.decision_function(xte))
    assert a.history_ == b.history_
    assert not np.array_equal(a.decision_function(xte), c.decision_function(xte))


def test_probe_sklearn_api(splits) -> None:
    (xtr, ytr), (xv, yv), (xte, yte) = splits
    p = Probe(task="classification", **FAST).fit(xtr, ytr, xv, yv)
    proba = p.predict_proba(xte)
    assert proba.shape == (200, 5)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(p.predict(xte), proba.argmax(axis=1))
    assert p.score(xte, yte) == classification_metrics(yte, proba)["accuracy"]
    t = Probe(task="tagging", **FAST).fit(xtr, TAGS[ytr])  # no validation: last epoch kept
    assert t.best_epoch_ == t.epochs_run_ == FAST["max_epochs"] and math.isnan(t.best_val_loss_)
    assert t.predict(xte).shape == (200, 4) and set(np.unique(t.predict(xte))) <= {0, 1}
    assert t.score(xte, TAGS[yte]) == tagging_metrics(TAGS[yte], t.predict_proba(xte))["roc_auc"]
    assert t.get_params()["lr"] == FAST["lr"] and "Probe(" in repr(t)
    # standardisation uses the training statistics only
    np.testing.assert_allclose(t.mean_.numpy(), xtr.mean(axis=0), rtol=1e-4, atol=1e-5)


# -- limited data -----------------------------------------------------------------------------


def test_limited_data_subsets() -> None:
    y = np.repeat(np.arange(10), 30)  # 300 examples, 10 classes
    s = limited_data_subset(y, 0.01, "classification", seed=[0, 0, 0])
    assert s.size == 10 and np.unique(y[s]).size == 10  # 3 rounded up to one per class
    s = limited_data_subset(y, 0.2, "classification", seed=1)
    assert s.size == 60 and np.unique(s).size == 60 and np.unique(y[s]).size == 10
    np.testing.assert_array_equal(s, limited_data_subset(y, 0.2, "classification", seed=1))
    assert not np.array_equal(s, limited_data_subset(y, 0.2, "classification", seed=2))
    tags = TAGS[y % 5]
    assert limited_data_subset(tags, 0.001, "tagging").size == 2  # never fewer than 2
    assert limited_data_subset(tags, 0.05, "tagging").size == 15


def test_limited_data_structure(splits) -> None:
    (xtr, ytr), (xv, yv), (xte, yte) = splits
    fast = {**FAST, "max_epochs": 3}
    res = limited_data((xtr, TAGS[ytr]), (xv, TAGS[yv]), (xte, TAGS[yte]), **fast)
    res = json.loads(json.dumps(res))  # JSON-able
    assert res["metrics"] == ["roc_auc", "map"] and res["n_train_full"] == 300
    assert [f["fraction"] for f in res["fractions"]] == [0.01, 0.05, 0.1, 0.2, 1.0]
    assert [f["n_train"] for f in res["fractions"]] == [[3] * 4, [15] * 4, [30] * 4, [60] * 4,
                                                        [300]]
    for f in res["fractions"][:4]:
        assert len(f["runs"]) == 4
        vals = [r["metrics"]["roc_auc"] for r in f["runs"]]
        assert f["mean"]["roc_auc"] == pytest.approx(np.mean(vals))
        assert f["std"]["roc_auc"] == pytest.approx(np.std(vals, ddof=1))
    assert res["fractions"][-1]["std"] == {"roc_auc": None, "map": None}
    assert res["fractions"][-1]["mean"]["roc_auc"] > 0.95

    cls = limited_data((xtr, ytr), (xv, yv), (xte, yte), task="classification",
                       fractions=(0.01, 0.1), draws=2, include_full=False, **fast)
    assert [f["fraction"] for f in cls["fractions"]] == [0.01, 0.1]
    assert cls["fractions"][0]["n_train"] == [5, 5]  # round(3) < 5 classes: one per class
    assert all(r["classes_in_subset"] == 5 for f in cls["fractions"] for r in f["runs"])
    assert set(cls["fractions"][1]["mean"]) == {"accuracy"}


def test_plot_limited_data_writes_png(tmp_path) -> None:
    def fake(task: str, shift: float) -> dict:
        names = ["roc_auc", "map"] if task == "tagging" else ["accuracy"]
        fr = []
        for f in (0.01, 0.05, 0.1, 0.2, 1.0):
            fr.append({"fraction": f, "n_train": [1],
                       "mean": {k: 0.6 + shift + 0.3 * f for k in names},
                       "std": {k: (None if f == 1.0 else 0.02) for k in names}, "runs": []})
        return {"task": task, "metrics": names, "fractions": fr}

    out = plot_limited_data({"simclr": fake("tagging", 0.0), "byol": fake("tagging", -0.05)},
                            tmp_path / "figs" / "limited.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    single = plot_limited_data(fake("classification", 0.0), tmp_path / "acc.png")
    assert single.stat().st_size > 1000


# -- errors -----------------------------------------------------------------------------------


def _tag_splits():
    x, y = clusters(60, 0, classes=5, dim=4)
    t = TAGS[y].astype(np.float32)
    return (x[:30], t[:30]), (x[30:45], t[30:45]), (x[45:], t[45:])


@pytest.mark.parametrize(
    "mutate, kwargs, error, match",
    [
        (lambda s: ((s[0][0][:0], s[0][1][:0]), s[1], s[2]), {}, ProbeError,
         "train split is empty"),
        (lambda s: (s[0], (s[1][0][:, :3], s[1][1]), s[2]), {}, ProbeError,
         "validation embeddings have 3 dimensions but train has 4"),
        (lambda s: (s[0], s[1], (s[2][0], s[2][1][:, :3])), {}, ProbeError,
         "test targets have 3 tags but train has 4"),
        (lambda s: ((np.where(np.arange(30)[:, None] == 7, np.nan, s[0][0]), s[0][1]), s[1], s[2]),
         {}, ProbeError, r"train embeddings contain NaN or inf in 1 row\(s\) \(first: row 7\)"),
        (lambda s: ((s[0][0], s[0][1] * np.array([1, 1, 0, 1])), s[1], s[2]), {}, ProbeError,
         r"1 tag\(s\) never occur in the training split: #2"),
        (lambda s: ((s[0][0], s[0][1][:20]), s[1], s[2]), {}, ProbeError,
         "train targets have 20 rows but train embeddings have 30"),
        (lambda s: s, {"kind": "svm"}, ConfigError,
         "kind='svm' is not known; use one of linear, mlp"),
        (lambda s: s, {"task": "regression"}, ConfigError, "task='regression' is not known"),
        (lambda s: s, {"learning_rate": 0.1}, ConfigError, "unknown probe setting.*learning_rate"),
        (lambda s: s, {"lr": -1.0}, ConfigError, "lr=-1.0"),
        (lambda s: s, {"task": "classification"}, ProbeError, "class indices \\[N\\]"),
    ],
)
def test_errors(mutate, kwargs, error, match) -> None:
    train, val, test = mutate(_tag_splits())
    with pytest.raises(error, match=match) as info:
        run_probe(train, val, test, **{"max_epochs": 1, **kwargs})
    assert isinstance(info.value, TympanError)


def test_errors_classification_and_names() -> None:
    x = np.zeros((6, 3), dtype=np.float32) + np.arange(6)[:, None]
    one = np.zeros(6, dtype=np.int64)
    with pytest.raises(ProbeError, match="1 class\\(es\\); classification needs at least 2"):
        run_probe((x, one), (x, one), (x, one), task="classification")
    two = np.array([0, 1, 0, 1, 0, 1])
    with pytest.raises(ProbeError, match="never occur in the training split: jazz"):
        run_probe((x, two), (x, two), (x, two + 1), task="classification",
                  class_names=["rock", "pop", "jazz"])
    tags = np.array([[1, 0], [0, 0], [1, 0], [0, 0], [1, 0], [0, 0]])
    with pytest.raises(ProbeError, match="never occur in the training split: piano"):
        run_probe((x, tags), (x, tags), (x, tags), class_names=["guitar", "piano"])
    with pytest.raises(ConfigError, match="kind='svm'"):
        Probe(kind="svm")
    with pytest.raises(ConfigError, match="fraction=1.5"):
        bootstrap_indices(10, fraction=1.5)
    p = Probe(max_epochs=1, steps_per_epoch=None).fit(x, np.array([[1, 0]] * 3 + [[0, 1]] * 3))
    with pytest.raises(ProbeError, match="X has 2 dimensions but the probe was fitted on 3"):
        p.predict(x[:, :2])
