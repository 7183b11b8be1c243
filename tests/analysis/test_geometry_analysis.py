"""`analyze_geometry` and the UMAP of the most-confused classes (AudioConFit §3.3-3.4).

umap-learn compiles its numba kernels on the first call (~10 s of CPU), so every test here
shares one module-scoped set of UMAP results and tiny inputs (tens of points, 30 epochs).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import matplotlib.axes
import numpy as np
import pytest

from tympan.analysis.geometry import (
    analyze_geometry,
    confused_classes,
    geometry_report,
    most_confused_classes,
    read_convergence,
    summarize_convergence,
    umap_of_confused,
)
from tympan.errors import TympanError
from tympan.report.plots import plot_convergence, plot_umap

CLASSES = ["rain", "crickets", "vacuum", "saw", "birds", "clapping"]
PER_CLASS = 8
PNG = b"\x89PNG\r\n\x1a\n"


def _clips(seed: int, spread: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """Six well-apart Gaussian classes in 12-D, plus a common offset (non-zero anisotropy)."""
    g = np.random.default_rng(seed)
    centres = g.normal(size=(len(CLASSES), 12)) * spread
    labels = np.repeat(CLASSES, PER_CLASS)
    emb = centres[np.repeat(np.arange(len(CLASSES)), PER_CLASS)] + g.normal(size=(len(labels), 12)) + 1.0
    return emb.astype(np.float32).astype(np.float64), labels


def _predictions(labels: np.ndarray, errors: dict[tuple[str, str], int]) -> np.ndarray:
    """``labels`` with ``n`` clips of each (true -> predicted) pair mislabelled."""
    pred = labels.copy()
    for (true, wrong), n in errors.items():
        pred[np.flatnonzero(labels == true)[:n]] = wrong
    return pred


# rain -> crickets 4, vacuum -> saw 3, crickets -> rain 2, birds -> clapping 1
ERRORS = {("rain", "crickets"): 4, ("vacuum", "saw"): 3, ("crickets", "rain"): 2, ("birds", "clapping"): 1}


def _run_dir(root: Path, name: str, emb: np.ndarray, labels: np.ndarray, pred: np.ndarray | None,
             method: str, curve: list[list[float]] | None = None) -> Path:
    """A fine-tuning run directory as :mod:`tympan.finetune.protocol` writes it."""
    run = root / name
    run.mkdir(parents=True)
    arrays: dict[str, Any] = {"embeddings": emb.astype(np.float32),
                              "paths": np.array([f"clips/{i}.wav" for i in range(len(labels))]),
                              "labels": labels}
    if pred is not None:
        arrays["predictions"] = pred
    np.savez(run / "embeddings_test.npz", **arrays)
    (run / "results.json").write_text(json.dumps({"method": method, "backbone": "random"}))
    if curve is not None:
        with open(run / "convergence.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["method", "seed", "fold", "epoch", "val_accuracy"])
            for seed, accs in enumerate(curve):
                for epoch, acc in enumerate(accs, start=1):
                    w.writerow([method, seed, "", epoch, acc])
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("geometry")
    emb_ft, labels = _clips(0)
    emb_pt, _ = _clips(1, spread=6.0)
    pred_ft = _predictions(labels, ERRORS)
    pred_pt = _predictions(labels, {("saw", "birds"): 2})
    ft = _run_dir(root, "esc_ft", emb_ft, labels, pred_ft, "finetune",
                  [[0.1, 0.2, 0.4, 0.6], [0.1, 0.3, 0.5, 0.6]])
    pt = _run_dir(root, "esc_pt", emb_pt, labels, pred_pt, "pairtune",
                  [[0.7, 0.9, 0.95, 0.96], [0.8, 0.92, 0.94, 0.96]])
    single = analyze_geometry(ft, seed=0, n_neighbors=5)
    both = analyze_geometry(pt, compare=ft, out=root / "both", seed=0, n_neighbors=5)
    return {"root": root, "ft": ft, "pt": pt, "labels": labels, "emb_ft": emb_ft, "emb_pt": emb_pt,
            "pred_ft": pred_ft, "pred_pt": pred_pt, "single": single, "both": both}


def test_umap_of_confused_keeps_only_the_chosen_classes(runs: dict[str, Any], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    emb, labels, pred = runs["emb_ft"], runs["labels"], runs["pred_ft"]
    u = umap_of_confused(emb, labels, pred, k=2, seed=0, n_neighbors=5, n_epochs=30)
    # the two largest off-diagonal cells: rain -> crickets (4), vacuum -> saw (3)
    assert [(p.true, p.predicted, p.count) for p in u.pairs] == [("rain", "crickets", 4), ("vacuum", "saw", 3)]
    assert u.classes == ["rain", "crickets", "vacuum", "saw"]
    assert u.coords.shape == (4 * PER_CLASS, 2) and np.isfinite(u.coords).all()
    assert set(u.labels) == set(u.classes)
    assert np.array_equal(labels[u.index], u.labels)  # index points back at the right rows
    assert u.to_json()["points_per_class"] == {c: PER_CLASS for c in u.classes}
    # deterministic for a seed
    again = umap_of_confused(emb, labels, pred, k=2, seed=0, n_neighbors=5, n_epochs=30)
    assert np.array_equal(u.coords, again.coords)
    # k=3 adds crickets -> rain: no new class
    assert umap_of_confused(emb, labels, pred, k=3, seed=0, n_neighbors=5, n_epochs=30).classes == u.classes

    drawn: list[str] = []
    scatter = matplotlib.axes.Axes.scatter

    def spy(self: Any, *args: Any, **kwargs: Any) -> Any:
        drawn.append(kwargs.get("label"))
        return scatter(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "scatter", spy)
    # a panel holding every clip still draws only the chosen classes
    everything = {"coords": np.random.default_rng(0).normal(size=(len(labels), 2)), "labels": labels}
    png = plot_umap({"FINETUNE": u, "all clips": everything}, tmp_path / "u.png", classes=u.classes)
    assert png.read_bytes()[:8] == PNG
    assert sorted(drawn) == sorted(u.classes * 2)

    with pytest.raises(TympanError, match="no clip is misclassified"):
        umap_of_confused(emb, labels, labels, seed=0)
    with pytest.raises(TympanError, match="at least 4 points"):
        umap_of_confused(emb, labels, classes=["nothing"], seed=0)


def test_analyze_geometry_writes_every_file_and_reports_geometry_report(runs: dict[str, Any]) -> None:
    result, folder = runs["single"], runs["ft"] / "analysis"
    for name in ("geometry.json", "geometry.md", "umap_confused.png", "convergence.png",
                 "convergence_summary.csv"):
        assert (folder / name).is_file(), name
    for name in ("umap_confused.png", "convergence.png"):
        data = (folder / name).read_bytes()
        assert data[:8] == PNG and len(data) > 5000
    record = json.loads((folder / "geometry.json").read_text())
    assert record == json.loads(json.dumps({k: v for k, v in result.items() if k not in ("markdown", "files")}))
    [row] = record["runs"]
    want = geometry_report(runs["emb_ft"], runs["labels"], runs["pred_ft"], k=3, name="finetune").to_json()
    assert {k: row[k] for k in want} == json.loads(json.dumps(want))
    assert row["method"] == "finetune"
    assert row["predictions"]["accuracy"] == pytest.approx(1 - 10 / len(runs["labels"]))
    assert row["predictions"]["source"] == f"the predictions stored in {runs['ft'] / 'embeddings_test.npz'}"
    # UMAP: the union of the 3 most-confused pairs
    pairs = most_confused_classes(runs["labels"], runs["pred_ft"], 3)
    assert record["umap"]["classes"] == confused_classes(pairs) == ["rain", "crickets", "vacuum", "saw"]
    assert record["umap"]["panels"]["finetune"]["n_points"] == 4 * PER_CLASS
    # convergence: the summary of the run's CSV, written as CSV too
    want_conv = summarize_convergence(read_convergence(runs["ft"] / "convergence.csv"))
    assert record["convergence"] == json.loads(json.dumps(want_conv.to_json()))
    with open(folder / "convergence_summary.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["epoch"] for r in table] == ["1", "2", "3", "4"]
    assert float(table[1]["mean_val_accuracy"]) == pytest.approx(0.25)
    # the human table: Table 3's columns, one row, the numbers of the JSON
    md = (folder / "geometry.md").read_text()
    assert "| run | N | D | anisotropy | top-1 ↓ | top-2 ↓ | top-3 ↓ | 50% ↑ | 80% ↑ | 90% ↑ |" in md
    top1 = row["contribution"]["top"]["1"]
    assert f"| finetune | {len(runs['labels'])} | 12 | {row['anisotropy']:.4f} | {top1:.3f} |" in md
    assert "| finetune | rain → crickets | 4 | 50.0% |" in md
    assert "![umap](umap_confused.png)" in md and "![convergence](convergence.png)" in md
    assert result["files"]["umap"] == str(folder / "umap_confused.png")


def test_compare_gives_one_row_and_panel_per_run_with_finetune_choosing(runs: dict[str, Any]) -> None:
    result = runs["both"]
    assert [r["name"] for r in result["runs"]] == ["pairtune", "finetune"]
    pt = geometry_report(runs["emb_pt"], runs["labels"], runs["pred_pt"], k=3, name="pairtune").to_json()
    assert result["runs"][0]["anisotropy"] == pytest.approx(pt["anisotropy"])
    assert result["runs"][0]["confused"] == pt["confused"]
    # the classes come from FINETUNE's confusions (as in the seed), though PairTune came first
    assert result["umap"]["chosen_from"] == "finetune"
    assert result["umap"]["classes"] == ["rain", "crickets", "vacuum", "saw"]
    assert set(result["umap"]["panels"]) == {"pairtune", "finetune"}
    assert all(p["n_points"] == 4 * PER_CLASS for p in result["umap"]["panels"].values())
    # both runs' convergence curves, by method
    conv = result["convergence"]["methods"]
    assert list(conv) == ["pairtune", "finetune"]
    # 95% of the final 0.96 is 0.912: the mean curve has 0.91 at epoch 2, 0.945 at epoch 3
    assert conv["pairtune"]["epoch_to_level"] == 3
    assert conv["pairtune"]["run_epochs_to_level"] == [3, 2]  # run 1: 0.92 >= 0.912
    assert conv["finetune"]["epoch_to_level"] == 4
    md = result["markdown"]
    # pairtune: its Table 3 row, its one confused pair, its convergence row
    assert md.count("| pairtune |") == 3 and "| pairtune | saw → birds | 2 | 25.0% |" in md
    assert "| finetune | 2 | 0.6000 | 0.6000 | 4 |" in md
    assert (runs["root"] / "both" / "umap_confused.png").read_bytes()[:8] == PNG


def test_embeddings_without_predictions_use_cross_validation(runs: dict[str, Any], tmp_path: Path) -> None:
    emb, labels = runs["emb_ft"], runs["labels"]
    f = tmp_path / "emb.npz"
    np.savez(f, embeddings=emb, paths=np.array([str(i) for i in range(len(labels))]), labels=labels)
    with pytest.raises(TympanError, match="give --out"):
        analyze_geometry(embeddings=f)
    with pytest.raises(TympanError, match="not both or neither"):
        analyze_geometry(runs["ft"], embeddings=f, out=tmp_path)
    result = analyze_geometry(embeddings=f, out=tmp_path / "a", seed=0, n_neighbors=5)
    [row] = result["runs"]
    assert "out-of-fold predictions of a logistic regression" in row["predictions"]["source"]
    assert row["predictions"]["accuracy"] >= 0.95  # well-separated classes
    assert any("cross-validated linear probe" in n for n in result["notes"])
    assert "out-of-fold" in (tmp_path / "a" / "geometry.md").read_text()
    assert result["convergence"] is None and not (tmp_path / "a" / "convergence.png").exists()
    assert row["anisotropy"] == pytest.approx(geometry_report(emb).anisotropy)


def test_run_without_predictions_reads_confusion_json(runs: dict[str, Any], tmp_path: Path) -> None:
    emb, labels = runs["emb_ft"], runs["labels"]
    run = _run_dir(tmp_path, "r", emb, labels, None, "finetune")
    cm = np.diag([PER_CLASS] * len(CLASSES))
    cm[2, 2], cm[2, 4] = PER_CLASS - 5, 5  # vacuum -> birds 5: the only confusion
    (run / "confusion.json").write_text(json.dumps({"classes": CLASSES, "matrix": cm.tolist()}))
    result = analyze_geometry(run, seed=0, n_neighbors=5)
    [row] = result["runs"]
    assert row["predictions"]["source"].endswith("confusion.json")
    assert row["confused"] == [{"true": "vacuum", "predicted": "birds", "count": 5, "rate": 5 / PER_CLASS}]
    assert result["umap"]["classes"] == ["vacuum", "birds"]
    assert (run / "analysis" / "umap_confused.png").is_file()


def test_plot_convergence_from_json(tmp_path: Path) -> None:
    summary = {"level": 0.95, "methods": {
        "pairtune": {"epochs": [1, 2], "mean": [0.8, 0.9], "std": [0.05, None], "runs": 2, "epoch_to_level": 2},
        "finetune": {"epochs": [1, 2], "mean": [0.1, 0.3], "std": [None, None], "runs": 1, "epoch_to_level": None},
    }}
    png = plot_convergence(summary, tmp_path / "sub" / "c.png")
    assert png.read_bytes()[:8] == PNG


def test_bad_run_directory_is_named(tmp_path: Path) -> None:
    with pytest.raises(TympanError, match="has no embeddings_test.npz"):
        analyze_geometry(tmp_path)
    with pytest.raises(TympanError, match="no such run directory"):
        analyze_geometry(tmp_path / "absent", out=tmp_path)
    emb, labels = _clips(0)
    emb[3] = 0.0  # a silent clip: its cosine similarity is undefined
    run = _run_dir(tmp_path, "zero", emb, labels, labels, "finetune")
    with pytest.raises(TympanError, match=r"embeddings_test.npz: key 'embeddings': emb: row 3"):
        analyze_geometry(run)
    emb[3] = 1.0
    run = _run_dir(tmp_path, "badcsv", emb, labels, labels, "finetune")
    (run / "convergence.csv").write_text("method,seed,epoch\npairtune,0,1\n")
    with pytest.raises(TympanError, match=r"convergence.csv: missing column"):
        analyze_geometry(run)
    assert not (run / "analysis").exists()  # failed before writing anything
