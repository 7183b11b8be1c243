"""`tympan probe` end to end on the tiny music corpus: tagging, classification, limited data."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tympan.cli import main
from tympan.data.music import synth_music


@pytest.fixture(scope="module")
def music(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth_music(tmp_path_factory.mktemp("music"), seed=0, scale="tiny", progress=False)


@pytest.mark.slow
def test_tagging_probe_with_limited_data(music: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "probe"
    assert main(["probe", "--model", "random", "--recipe", "multiview", "--data", str(music),
                 "--epochs", "2", "--limited-data", "--draws", "2", "--out", str(out),
                 "--json", str(tmp_path / "p.json"), "-q"]) == 0
    printed = capsys.readouterr().out
    assert "| model | ROC-AUC | mAP |" in printed and "% of train" in printed
    record = json.loads((out / "probe.json").read_text())
    probe = record["probe"]
    assert set(probe["metrics"]) == {"roc_auc", "map"}
    assert probe["bootstrap"]["draws"] == 50 and probe["bootstrap"]["replacement"] is False
    assert probe["n_train"] == 12 and probe["n_test"] == 3 and probe["embedding_dim"] == 1024
    fractions = [f["fraction"] for f in record["limited_data"]["fractions"]]
    assert fractions == [0.01, 0.05, 0.1, 0.2, 1.0]
    assert (out / "limited_data.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "p.json").read_text())["task"] == "tagging"


@pytest.mark.slow
def test_classification_probe_reports_accuracy(music: Path, tmp_path: Path, capsys) -> None:
    # one label per track: its tempo tag
    rows = list(csv.DictReader(open(music, newline="")))
    manifest = tmp_path / "tempo.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split"])
        for r in rows:
            tempo = next(t for t in r["label"].split(";") if t in ("slow", "medium", "fast"))
            w.writerow([str(music.parent / r["path"]), tempo, r["split"]])
    assert main(["probe", "--model", "logmel", "--data", str(manifest), "--task",
                 "classification", "--kind", "mlp", "--epochs", "2", "-q"]) == 0
    printed = capsys.readouterr().out
    assert "| model | accuracy |" in printed and "mlp probe (classification" in printed


def test_probe_errors(music: Path, tmp_path: Path, capsys) -> None:
    # a manifest without the three splits
    rows = list(csv.DictReader(open(music, newline="")))
    bad = tmp_path / "nosplit.csv"
    with open(bad, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        for r in rows:
            w.writerow([str(music.parent / r["path"]), r["label"]])
    assert main(["probe", "--model", "logmel", "--data", str(bad), "-q"]) == 2
    assert "needs splits train, val and test" in capsys.readouterr().err
    # classification on multi-label data names the file
    assert main(["probe", "--model", "logmel", "--data", str(music), "--task",
                 "classification", "-q"]) == 2
    assert "labels" in capsys.readouterr().err
