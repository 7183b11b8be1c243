"""Embedding geometry of the AudioConFit analyses (seed 002 §3.3-3.4): anisotropy, dimensional
contribution, confusions, and the inputs of `analyze geometry` (files, predictions, convergence)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tympan.analysis.geometry import (
    Confusion,
    ConvergenceRow,
    GeometryReport,
    anisotropy,
    confused_classes,
    confused_from_matrix,
    cross_validated_predictions,
    dimensional_contribution,
    geometry_report,
    load_confusion_file,
    load_embeddings_file,
    most_confused_classes,
    read_convergence,
    summarize_convergence,
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


# --- inputs of `tympan analyze geometry`: confusion matrices, embeddings files, predictions ---


def test_confused_from_matrix_picks_the_largest_off_diagonal_cells() -> None:
    classes = ["rain", "crickets", "vacuum", "saw"]
    cm = np.array([
        [9, 4, 0, 1],   # rain -> crickets 4
        [0, 7, 6, 0],   # crickets -> vacuum 6 (largest)
        [2, 0, 8, 0],   # vacuum -> rain 2
        [0, 0, 4, 3],   # saw -> vacuum 4 (ties rain -> crickets: row order decides)
    ])
    got = confused_from_matrix(classes, cm, k=3)
    assert [(c.true, c.predicted, c.count) for c in got] == [
        ("crickets", "vacuum", 6), ("rain", "crickets", 4), ("saw", "vacuum", 4)]
    assert got[0].rate == pytest.approx(6 / 13)
    assert confused_classes(got) == ["crickets", "vacuum", "rain", "saw"]
    # the same cells as from per-clip labels
    y_true = [classes[i] for i in range(4) for j in range(4) for _ in range(cm[i, j])]
    y_pred = [classes[j] for i in range(4) for j in range(4) for _ in range(cm[i, j])]
    assert most_confused_classes(y_true, y_pred, k=3, labels=classes) == got
    with pytest.raises(TympanError, match="square"):
        confused_from_matrix(classes, cm[:3], k=1)


def _save(path: Path, **arrays: object) -> Path:
    np.savez(path, **arrays)
    return path


def test_load_embeddings_file_and_its_errors(tmp_path: Path) -> None:
    emb = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    paths = np.array([f"clip{i}.wav" for i in range(5)])
    ok = _save(tmp_path / "ok.npz", embeddings=emb, paths=paths, labels=np.array([0, 1, 0, 1, 2]))
    got = load_embeddings_file(ok)
    assert got.embeddings.dtype == np.float64 and np.array_equal(got.embeddings, emb.astype(np.float64))
    assert got.labels.tolist() == ["0", "1", "0", "1", "2"] and got.predictions is None
    assert got.single_label and got.source == ok
    with_pred = _save(tmp_path / "p.npz", embeddings=emb, paths=paths, labels=np.array(list("aabbc")),
                      predictions=np.array(list("abbbc")))
    assert load_embeddings_file(with_pred).predictions.tolist() == list("abbbc")
    multi = _save(tmp_path / "m.npz", embeddings=emb, paths=paths, labels=np.array(["a;b", "a", "b", "a", "b"]))
    assert not load_embeddings_file(multi).single_label

    cases = {
        "missing key.*labels": dict(embeddings=emb, paths=paths),
        "'labels' has shape \\(4,\\) but 'embeddings' has 5 rows": dict(embeddings=emb, paths=paths,
                                                                       labels=np.arange(4)),
        "'predictions' has shape": dict(embeddings=emb, paths=paths, labels=np.arange(5),
                                        predictions=np.arange(6)),
        "NaN or inf in row 2": dict(embeddings=np.where(np.arange(5)[:, None] == 2, np.nan, emb),
                                    paths=paths, labels=np.arange(5)),
        "N >= 2": dict(embeddings=emb[:1], paths=paths[:1], labels=np.arange(1)),
        "object array": dict(embeddings=emb, paths=paths, labels=np.array(["a", 1, None, 2, 3], dtype=object)),
    }
    for i, (message, arrays) in enumerate(cases.items()):
        path = _save(tmp_path / f"bad{i}.npz", **arrays)
        with pytest.raises(TympanError, match=message) as err:
            load_embeddings_file(path)
        assert str(path) in str(err.value)  # every message names the file
    with pytest.raises(TympanError, match="no such embeddings file"):
        load_embeddings_file(tmp_path / "absent.npz")
    np.save(tmp_path / "single.npy", emb)
    with pytest.raises(TympanError, match="single array"):
        load_embeddings_file(tmp_path / "single.npy")
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(TympanError, match="not a readable"):
        load_embeddings_file(tmp_path / "text.npz")


def test_load_confusion_file(tmp_path: Path) -> None:
    good = tmp_path / "confusion.json"
    good.write_text(json.dumps({"classes": ["a", "b"], "matrix": [[3, 1], [0, 2]], "run": "seed0"}))
    classes, cm = load_confusion_file(good)
    assert classes == ["a", "b"] and cm.tolist() == [[3, 1], [0, 2]]
    for i, (data, message) in enumerate([
        ({"classes": ["a"]}, "expected"),
        ({"classes": ["a", "b"], "matrix": [[1, 2, 3], [4, 5, 6]]}, "shape \\(2, 3\\)"),
        ({"classes": ["a", "b"], "matrix": [[1, -2], [0, 1]]}, "non-negative whole counts"),
    ]):
        bad = tmp_path / f"bad{i}.json"
        bad.write_text(json.dumps(data))
        with pytest.raises(TympanError, match=message):
            load_confusion_file(bad)


def test_cross_validated_predictions_are_out_of_fold() -> None:
    from sklearn.linear_model import LogisticRegression

    g = np.random.default_rng(0)
    y = np.repeat(["a", "b", "c"], 30)
    # separable: three well-apart clusters -> (nearly) every clip right
    sep = np.eye(3)[np.repeat(np.arange(3), 30)] * 8 + g.normal(size=(90, 3))
    sep = np.concatenate([sep, g.normal(size=(90, 5))], axis=1)
    assert np.mean(cross_validated_predictions(sep, y, seed=0) == y) >= 0.97
    # noise with more dimensions than clips: a model fitted on all clips memorises them, but
    # out-of-fold predictions of labels unrelated to the embeddings stay near chance (1/3)
    noise = g.normal(size=(90, 120))
    shuffled = g.permutation(y)
    in_sample = LogisticRegression(max_iter=2000).fit(noise, shuffled).predict(noise)
    assert np.mean(in_sample == shuffled) == 1.0
    oof = cross_validated_predictions(noise, shuffled, seed=0)
    assert np.mean(oof == shuffled) < 0.55
    assert set(oof) <= {"a", "b", "c"}
    # the same seed gives the same predictions
    assert np.array_equal(oof, cross_validated_predictions(noise, shuffled, seed=0))
    with pytest.raises(TympanError, match="single clip"):
        cross_validated_predictions(sep[:61], y[:61])
    with pytest.raises(TympanError, match="only one class"):
        cross_validated_predictions(sep[:30], y[:30])


CONVERGENCE_CSV = """method,seed,fold,epoch,val_accuracy
pairtune,0,,1,0.60
pairtune,0,,2,0.90
pairtune,0,,3,0.95
pairtune,1,,1,0.70
pairtune,1,,2,0.80
pairtune,1,,3,1.00
finetune,0,1,1,0.10
finetune,0,1,2,0.20
finetune,0,1,3,0.40
finetune,0,2,1,0.30
finetune,0,2,2,0.50
"""


def test_convergence_summary_by_hand(tmp_path: Path) -> None:
    path = tmp_path / "convergence.csv"
    path.write_text(CONVERGENCE_CSV)
    rows = read_convergence(path)
    assert rows[0] == ConvergenceRow("pairtune", 0, None, 1, 0.60)
    assert rows[6] == ConvergenceRow("finetune", 0, 1, 1, 0.10)
    s = summarize_convergence(rows, level=0.95)
    assert list(s.methods) == ["pairtune", "finetune"]
    pt, ft = s.methods["pairtune"], s.methods["finetune"]
    assert pt.epochs == [1, 2, 3] and pt.n == [2, 2, 2] and pt.runs == 2
    assert pt.mean == pytest.approx([0.65, 0.85, 0.975])
    assert pt.std == pytest.approx([np.std([0.6, 0.7], ddof=1), np.std([0.9, 0.8], ddof=1),
                                    np.std([0.95, 1.0], ddof=1)])
    # final = mean of each run's last epoch = 0.975; 95% of it = 0.92625: mean curve reaches it at
    # epoch 3; run 0 (final 0.95 -> 0.9025) at epoch 3 (0.90 falls short), run 1 (1.0) at 3
    assert pt.final == pytest.approx(0.975) and pt.best == pytest.approx(0.975)
    assert pt.epoch_to_level == 3 and pt.run_epochs_to_level == [3, 3]
    # finetune: fold 2 stopped after epoch 2, so epoch 3 has one run and no std
    assert ft.epochs == [1, 2, 3] and ft.n == [2, 2, 1]
    assert ft.mean == pytest.approx([0.2, 0.35, 0.4]) and ft.std[2] is None
    assert ft.final == pytest.approx((0.40 + 0.50) / 2)  # each run's own last epoch
    # 0.95 * 0.45 = 0.4275: the mean curve never gets there; the runs do at their last epochs
    assert ft.epoch_to_level is None and ft.run_epochs_to_level == [3, 2]
    assert ft.best == pytest.approx(0.4)
    lower = summarize_convergence(rows, level=0.5).methods["finetune"]
    assert lower.epoch_to_level == 2  # 0.35 >= 0.225 > 0.2
    record = json.loads(json.dumps(s.to_json()))
    assert record["methods"]["finetune"]["run_epochs_to_level_mean"] == pytest.approx(2.5)
    assert record["methods"]["pairtune"]["run_epochs_to_level_std"] == pytest.approx(0.0)
    out = s.write_csv(tmp_path / "summary.csv")
    lines = out.read_text().splitlines()
    assert lines[0] == "method,epoch,runs,mean_val_accuracy,std_val_accuracy"
    assert lines[1] == f"pairtune,1,2,0.650000,{np.std([0.6, 0.7], ddof=1):.6f}"
    assert lines[-1] == "finetune,3,1,0.400000,"
    with pytest.raises(ConfigError, match="level"):
        summarize_convergence(rows, level=95)


def test_read_convergence_errors(tmp_path: Path) -> None:
    for i, (text, message) in enumerate([
        ("method,seed,epoch\npairtune,0,1\n", "missing column.*fold.*val_accuracy"),
        ("method,seed,fold,epoch,val_accuracy\npairtune,0,,1,high\n", "line 2: 'val_accuracy'"),
        ("method,seed,fold,epoch,val_accuracy\npairtune,0,,one,0.5\n", "line 2: 'seed', 'fold' and 'epoch'"),
        ("method,seed,fold,epoch,val_accuracy\npairtune,0,,1,0.5\npairtune,0,,1,0.6\n", "line 3: repeats"),
        ("method,seed,fold,epoch,val_accuracy\n", "has no rows"),
        ("method,seed,fold,epoch,val_accuracy\npairtune,0,,1,nan\n", "finite"),
    ]):
        path = tmp_path / f"c{i}.csv"
        path.write_text(text)
        with pytest.raises(TympanError, match=message) as err:
            read_convergence(path)
        assert str(path) in str(err.value)
