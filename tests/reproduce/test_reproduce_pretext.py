"""`tympan reproduce pretext|audioconfit` end to end on tiny corpora (a few steps, CPU-sized)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tympan.data.manifest import read_manifest
from tympan.reproduce.audioconfit import classification_manifest, reproduce_audioconfit
from tympan.reproduce.pretext import candidate_errors, reproduce_pretext

TINY_PASE = {"train.batch_size": 8, "train.num_workers": 0, "train.warmup_steps": 1}


@pytest.mark.slow
def test_pretext_reproduction_table_and_rerun(speech_corpus: Path, tmp_path: Path) -> None:
    speech = speech_corpus
    out = tmp_path / "repro"
    kw = dict(data=speech, quick=True, methods=("all", "sparsemax"), max_steps=2,
              overrides=TINY_PASE, progress=False, probe_epochs=1)
    summary = reproduce_pretext(out, **kw)
    rows = {r["method"]: r for r in summary["rows"]}
    assert list(rows) == ["random init", "none", "all", "sparsemax"]
    # each selection's weights are those of its JSON, and drive its run's recipe
    for method in ("all", "sparsemax"):
        sel = json.loads((out / "selection" / f"{method}.json").read_text())
        assert rows[method]["weights"] == {k: v for k, v in sel["weights"].items() if v > 0}
        cfg = (out / "runs" / method / "config.yaml").read_text()
        assert all(name in cfg for name in rows[method]["weights"])
    assert len(rows["all"]["weights"]) == 10 and rows["none"]["weights"] == {}
    for r in rows.values():
        assert 0.0 <= r["speaker"]["mean"] <= 1.0 and r["speaker"]["std"] >= 0.0
        assert 0.0 <= r["eer"]["eer"] <= 1.0 and r["eer"]["n_target"] > 0
    text = (out / "results.md").read_text()
    assert "| sparsemax |" in text and "CI estimates" in text
    # the CI table is computed for the speaker task and ranks every candidate
    assert len(summary["ci"]) == 10
    # a second run reuses the runs: the same numbers
    again = reproduce_pretext(out, **kw)
    assert [r["speaker"] for r in again["rows"]] == [r["speaker"] for r in summary["rows"]]

    # the individual-selection experiment behind `pretext validate --train`
    errors = candidate_errors(speech, out / "labels.npz", ["f0", "zcr"], out=out, max_steps=2,
                              overrides=TINY_PASE, progress=False, probe_epochs=1)
    assert set(errors) == {"f0", "zcr"}
    assert all(0.0 <= e["error"] <= 1.0 for e in errors.values())
    assert "f0" in (out / "candidates" / "f0" / "config.yaml").read_text()


def test_classification_manifest_splits_within_classes(corpus: Path, tmp_path: Path) -> None:
    path = classification_manifest(corpus, tmp_path / "cls.csv", seed=0)
    items = read_manifest(path).items
    source = read_manifest(corpus).items
    chosen = {it.path for it in source if it.split in ("val", "test")}
    assert {it.path for it in items} == chosen
    classes = {it.label for it in items}
    for split in ("train", "val", "test"):  # every class in every split
        assert {it.label for it in items if it.split == split} == classes
    for label in classes:  # folds 1..5 spread evenly over each class
        folds = sorted(it.fold for it in items if it.label == label)
        assert set(folds) == {1, 2, 3, 4, 5} and max(folds.count(f) for f in set(folds)) <= 2


@pytest.mark.slow
def test_audioconfit_reproduction_table(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "ac"
    summary = reproduce_audioconfit(
        out, data=corpus, quick=True, backbones=("tympan",), epochs=1, seeds=2,
        pretrain_steps=2, progress=False,
        overrides={"model.width": 8, "train.batch_size": 8, "train.num_workers": 0,
                   "audio.clip_seconds": 0.5},
        finetune_kwargs={"linear_lrs": (1e-3,), "linear_batch_sizes": (16,), "batch_size": 16,
                         "linear_epochs": 5},
    )
    rows = {(r["backbone"], r["method"]): r for r in summary["rows"]}
    assert set(rows) == {("tympan", "finetune"), ("tympan", "pairtune")}
    for r in rows.values():
        assert len(r["accuracies"]) == 2 and r["std"] is not None
    text = (out / "results.md").read_text()
    assert "| tympan |" in text and "anisotropy" in text.lower()
    assert (out / "analysis" / "umap_confused.png").is_file()
    assert (out / "analysis" / "convergence.png").is_file()
    assert isinstance(summary["pairtune_wins"]["tympan"], bool)
