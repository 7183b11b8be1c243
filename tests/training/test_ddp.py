"""DDP end to end through the CLI: two CPU processes (gloo), launched by Lightning's subprocess
launcher (``tympan pretrain --devices 2 --strategy ddp``, which re-runs the command for rank 1)
and by ``torchrun --nproc_per_node 2``.

What is checked: the run ends with exit code 0; only global rank 0 wrote the run directory (each
step logged once, one INFO line about the effective batch); ``pretrain.json`` records 2 devices,
the effective batch ``2 x batch_size``, the applied (scaled) learning rate, and that the
global-batch losses gathered across 2 processes (``gather_world_size``: what
:func:`tympan.objectives.distributed.world_size` saw during training; NT-Xent then gathers both
ranks' projections, and its loss is finite); a second run into the same folder is refused on
rank 0 without hanging; ``--resume`` continues under DDP. Gradients of the gathered losses equal
those of one process on the global batch: ``tests/objectives/test_ddp_gradients.py``.

Sized for 2 CPU cores: the tiny corpus, a width-8 ResNet, batches of 8, 0.5 s crops, 3 steps,
one thread per process.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tympan.models.encoder import CONFIG_FILE, ENCODER_FILE

STEPS = 3
BATCH = 8
TINY = [
    "--recipe", "simclr", "--set", "model.width=8", "--set", f"train.batch_size={BATCH}",
    "--set", "train.num_workers=0", "--set", "train.log_every_n_steps=1",
    "--set", "train.warmup_steps=1", "--set", "audio.clip_seconds=0.5", "-q",
]
DDP = ["--accelerator", "cpu", "--devices", "2", "--strategy", "ddp"]
BIN = Path(sys.executable).parent
#: the venv's ``torchrun`` (beside this Python), else the one on PATH; None if neither
TORCHRUN = shutil.which("torchrun", path=str(BIN)) or shutil.which("torchrun")


def _run(cmd: list[str], timeout: float = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def _tympan() -> list[str]:
    """The installed ``tympan`` command (what a user runs), else ``python -m tympan.cli``."""
    script = BIN / "tympan"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "tympan.cli"]


def _rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return [r for r in csv.DictReader(f) if r.get("loss")]


def _check_run(run: Path, res: subprocess.CompletedProcess, steps: int, lr: float,
               rule: str) -> dict:
    assert res.returncode == 0, res.stderr[-3000:]
    for name in (CONFIG_FILE, ENCODER_FILE, "pretrain.json", "checkpoints/last.ckpt"):
        assert (run / name).is_file(), name
    # nothing half-written is left behind (atomic writes of encoder and checkpoints)
    assert not list(run.rglob("*.tmp"))
    summary = json.loads((run / "pretrain.json").read_text())
    env = summary["environment"]
    assert summary["steps"] == steps
    assert env["devices"] == 2 and env["nodes"] == 1
    assert env["batch_size"] == BATCH and env["effective_batch_size"] == 2 * BATCH
    assert env["gather_world_size"] == 2  # the contrastive loss gathered across both ranks
    assert env["lr_scaling"] == rule and env["lr"] == pytest.approx(lr)
    rows = _rows(run)
    # rank 0 alone logs: every step exactly once, finite losses of the gathered NT-Xent
    assert [int(float(r["step"])) for r in rows] == list(range(steps))
    assert all(math.isfinite(float(r["contrastive/loss"])) for r in rows)
    # the INFO line comes from rank 0 only
    assert res.stderr.count("INFO tympan: effective batch") == 1
    assert f"effective batch {2 * BATCH} = {BATCH} x 2 processes" in res.stderr
    return summary


@pytest.mark.slow
def test_ddp_subprocess_launcher(corpus: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    base = [*_tympan(), "pretrain", "--data", str(corpus), "--out", str(run), *DDP, *TINY]
    res = _run([*base, "--max-steps", str(STEPS), "--set", "train.lr_scaling=linear"])
    summary = _check_run(run, res, STEPS, 2e-3, "linear")  # 1e-3 x (16 / 8)
    assert "lr 0.001 -> 0.002 (linear scaling" in res.stderr
    assert float(_rows(run)[0]["lr"]) == pytest.approx(2e-3)

    # a second run into the same folder: refused by rank 0 before rank 1 is launched
    started = time.time()
    res = _run([*base, "--max-steps", str(STEPS)], timeout=60)
    assert res.returncode == 2 and "already holds a run" in res.stderr, res.stderr[-2000:]
    assert time.time() - started < 60
    assert json.loads((run / "pretrain.json").read_text()) == summary

    # --resume under DDP: the run's own recipe (lr_scaling linear) and 2 more steps
    res = _run([*_tympan(), "pretrain", "--data", str(corpus), "--out", str(run), "--resume",
                "--max-steps", str(STEPS + 2), *DDP, "-q"])
    _check_run(run, res, STEPS + 2, 2e-3, "linear")


@pytest.mark.slow
@pytest.mark.skipif(TORCHRUN is None, reason="torchrun is not installed")
def test_ddp_torchrun(corpus: Path, tmp_path: Path) -> None:
    """torchrun starts both ranks; Lightning sees TorchElastic's environment and joins it."""
    run = tmp_path / "run"
    res = _run([TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "tympan.cli",
                "pretrain", "--data", str(corpus), "--out", str(run), *DDP, *TINY,
                "--max-steps", str(STEPS), "--set", "train.lr_scaling=sqrt"])
    _check_run(run, res, STEPS, 1e-3 * math.sqrt(2), "sqrt")
