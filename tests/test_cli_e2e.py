"""End-to-end: corpus -> pretrain -> resume (also after kill -9) -> fewshot, through the CLI.

Sized for a 2-core CPU: the tiny corpus, a width-8 ResNet, batches of 8, a handful of steps.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tympan.cli import main
from tympan.training.module import warmup_cosine

FAST = [
    "--recipe", "demo", "--set", "model.width=8", "--set", "train.batch_size=8",
    "--set", "train.num_workers=0", "--set", "train.log_every_n_steps=1",
    "--set", "train.warmup_steps=2", "--set", "audio.clip_seconds=0.5", "-q",
]


def _steps(run: Path) -> list[int]:
    with open(run / "metrics.csv", newline="") as f:
        return [int(float(r["step"])) for r in csv.DictReader(f)]


def _cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tympan.cli", *args], capture_output=True, text=True,
        timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


@pytest.mark.slow
def test_pretrain_resume_fewshot(corpus: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    assert main(["pretrain", "--data", str(corpus), "--out", str(run), "--max-steps", "3", *FAST]) == 0
    for name in ("config.yaml", "encoder.safetensors", "metrics.csv", "checkpoints/last.ckpt"):
        assert (run / name).is_file(), name
    assert _steps(run) == [0, 1, 2]

    # a second pretrain into the same folder without --resume is refused
    assert main(["pretrain", "--data", str(corpus), "--out", str(run), "--max-steps", "3", *FAST]) == 2
    assert "--resume" in capsys.readouterr().err

    assert main(["pretrain", "--data", str(corpus), "--out", str(run), "--max-steps", "5",
                 "--resume", "-q"]) == 0
    assert _steps(run) == [0, 1, 2, 3, 4]
    summary = json.loads((run / "pretrain.json").read_text())
    assert summary["steps"] == 5 and summary["n_skipped"] == 0

    out = tmp_path / "fs.json"
    assert main(["fewshot", "--model", str(run), "--data", str(corpus), "--ways", "5",
                 "--shots", "1", "--queries", "3", "--episodes", "20", "--json", str(out), "-q"]) == 0
    res = json.loads(out.read_text())
    assert set(res) >= {"model", "accuracy", "ci95", "ways", "shots", "queries", "episodes", "skipped"}
    assert (res["ways"], res["shots"], res["queries"], res["episodes"]) == (5, 1, 3, 20)
    assert 0.0 <= res["accuracy"] <= 100.0 and res["ci95"] > 0
    assert "5-way 1-shot" in capsys.readouterr().out


@pytest.mark.slow
def test_resume_after_kill_9(corpus: Path, tmp_path: Path) -> None:
    """A run killed with SIGKILL resumes from its last atomic checkpoint: the step count,
    optimiser and scheduler continue (the logged lr follows the uninterrupted schedule)."""
    run = tmp_path / "run"
    total = 200
    args = ["pretrain", "--data", str(corpus), "--out", str(run), "--max-steps", str(total),
            *FAST, "--set", "train.checkpoint_every_n_steps=2"]
    proc = subprocess.Popen([sys.executable, "-m", "tympan.cli", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = run / "checkpoints" / "last.ckpt"
    deadline = time.time() + 180
    try:
        while time.time() < deadline and proc.poll() is None:
            if ckpt.is_file() and torch.load(ckpt, weights_only=True)["global_step"] >= 4:
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    state = torch.load(ckpt, weights_only=True)  # the checkpoint is whole, and loads safely
    killed_at = state["global_step"]
    assert killed_at >= 4 and state["optimizer_states"] and state["lr_schedulers"]

    target = total
    res = _cli("pretrain", "--data", str(corpus), "--out", str(run), "--resume", "-q")
    assert res.returncode == 0, res.stderr
    assert json.loads((run / "pretrain.json").read_text())["steps"] == target
    steps = _steps(run)
    assert steps == sorted(set(steps)) and steps[-1] == target - 1  # no gaps re-logged twice
    with open(run / "metrics.csv", newline="") as f:
        rows = {int(float(r["step"])): float(r["lr"]) for r in csv.DictReader(f) if r.get("lr")}
    lr0 = 1e-3
    for step in range(killed_at, target):
        # the schedule's horizon stays the original one: lambda(step) of the resumed scheduler
        expected = lr0 * warmup_cosine(step, 2, total)
        assert rows[step] == pytest.approx(expected, rel=1e-4), step




def _corpus_with_bad_file(corpus: Path, tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "bad"
    shutil.copytree(corpus.parent, root)
    manifest = root / "manifest.csv"
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    victim = next(r for r in rows if r["split"] == "test")
    (root / victim["path"]).write_bytes(b"RIFF\x00\x00garbage" * 10)
    return manifest, root / victim["path"]


def test_bad_audio_stops_with_its_name_or_is_skipped(corpus: Path, tmp_path: Path, capsys) -> None:
    manifest, bad = _corpus_with_bad_file(corpus, tmp_path)
    common = ["fewshot", "--model", "logmel", "--data", str(manifest), "--queries", "1",
              "--episodes", "5", "-q"]
    assert main(common) == 2
    err = capsys.readouterr().err
    assert bad.name in err and "--skip-bad" in err and "Traceback" not in err

    out = tmp_path / "fs.json"
    assert main([*common, "--skip-bad", "--json", str(out)]) == 0
    skipped = json.loads(out.read_text())["skipped"]
    assert len(skipped) == 1 and skipped[0]["path"].endswith(bad.name) and skipped[0]["reason"]
    assert "skipped 1" in capsys.readouterr().err


def test_clear_errors(corpus: Path, tmp_path: Path, capsys) -> None:
    # a split too small for the episodes: names the classes and the fix
    assert main(["fewshot", "--model", "logmel", "--data", str(corpus), "--shots", "5",
                 "--queries", "5", "--episodes", "5", "-q"]) == 2
    err = capsys.readouterr().err
    assert "need 10 clips per class" in err and "lower --shots" in err

    assert main(["fewshot", "--model", "logmel", "--data", str(tmp_path / "nope.csv")]) == 2
    assert "nope.csv" in capsys.readouterr().err

    assert main(["pretrain", "--data", str(corpus), "--out", str(tmp_path / "r"),
                 "--set", "train.max_stepz=3", "-q"]) == 2
    assert "train.max_stepz" in capsys.readouterr().err

    assert main(["fewshot", "--model", str(tmp_path), "--data", str(corpus), "-q"]) == 2
    assert "config.yaml" in capsys.readouterr().err


@pytest.mark.slow
def test_same_seed_same_weights(corpus: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    def run(name: str, seed: int) -> dict[str, torch.Tensor]:
        out = tmp_path / name
        assert main(["pretrain", "--data", str(corpus), "--out", str(out), "--max-steps", "3",
                     "--seed", str(seed), *FAST]) == 0
        return load_file(str(out / "encoder.safetensors"))

    a, b, c = run("a", 1), run("b", 1), run("c", 2)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
