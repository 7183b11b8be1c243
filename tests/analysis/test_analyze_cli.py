"""`tympan analyze invariance|head-weights` end to end on a tiny MT-SLVR run (CPU-sized)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tympan.cli import main
from tympan.data.corpora import synth_corpus

TINY = [
    "--recipe", "mtslvr_quick", "--set", "model.width=8", "--set", "train.batch_size=8",
    "--set", "train.num_workers=0", "--set", "train.warmup_steps=1",
    "--set", "audio.clip_seconds=0.5", "-q",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("analyze")
    corpus = synth_corpus(root / "corpus", seed=0, scale="tiny", progress=False)
    out = root / "run"
    assert main(["pretrain", "--data", str(corpus), "--out", str(out), "--max-steps", "2", *TINY]) == 0
    return corpus, out


@pytest.mark.slow
def test_invariance_writes_table_json_and_heatmap(run, tmp_path: Path, capsys) -> None:
    corpus, out = run
    js = tmp_path / "inv.json"
    args = ["analyze", "invariance", str(out), "--data", str(corpus), "--num-clips", "12",
            "--ops", "time_shift", "pitch_shift", "--json", str(js), "-q"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "| Head | time_shift | pitch_shift | Avg |" in printed
    assert "| contrastive |" in printed and "| predictive |" in printed
    folder = out / "analysis"
    record = json.loads((folder / "invariance.json").read_text())
    assert record["tasks"] == ["contrastive", "predictive"]
    assert record["ops"] == ["time_shift", "pitch_shift"]
    assert record["num_clips"] == 12
    for task in record["tasks"]:
        row = record["distances"][task]
        assert set(row) == {"time_shift", "pitch_shift", "avg"}
        assert all(v > 0 for v in row.values())
        assert row["avg"] == pytest.approx((row["time_shift"] + row["pitch_shift"]) / 2)
    png = (folder / "invariance.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert json.loads(js.read_text())["distances"] == record["distances"]
    # the same seed gives the same table
    assert main(args) == 0
    again = json.loads((folder / "invariance.json").read_text())
    assert again["distances"] == record["distances"]


@pytest.mark.slow
def test_head_weights_one_row_per_dataset(run, tmp_path: Path, capsys) -> None:
    corpus, out = run
    dest = tmp_path / "hw"
    assert main(["analyze", "head-weights", str(out), "--data", str(corpus), "--data",
                 str(corpus), "--split", "val", "--queries", "3", "--episodes", "20",
                 "--out", str(dest), "-q"]) == 0
    printed = capsys.readouterr().out
    assert "| Dataset | contrastive | predictive |" in printed
    record = json.loads((dest / "head_weights.json").read_text())
    assert list(record["datasets"]) == ["corpus/val", "corpus/val (2)"]
    for res in record["datasets"].values():
        assert set(res["weights"]) == {"contrastive", "predictive"}
        assert all(w > 0 for w in res["weights"].values())
        assert res["episodes"] == 20
    assert (dest / "head_weights.md").is_file()


def test_errors_are_one_line(run, tmp_path: Path, capsys) -> None:
    corpus, out = run
    assert main(["analyze", "invariance", str(out), "--data", str(tmp_path / "none.csv"), "-q"]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["analyze", "head-weights", "random", "--data", str(corpus), "-q"]) == 2
    assert "give --out" in capsys.readouterr().err
    assert main(["analyze", "invariance", str(out), "--data", str(corpus), "--ops", "reverb",
                 "--num-clips", "4", "-q"]) == 2
    assert "unknown augmentation op 'reverb'" in capsys.readouterr().err
    assert main(["analyze", "head-weights", str(out), "--data", str(corpus), "--split", "val",
                 "-q"]) == 2
    assert "lower --shots/--queries" in capsys.readouterr().err
