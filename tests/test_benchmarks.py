"""Smoke tests of the benchmark scripts: they run end to end at tiny sizes and write the JSON
that docs/benchmarks.md is built from. Timings at these sizes mean nothing; only the shape of
the output and the sign of the numbers are checked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"

pytestmark = pytest.mark.slow

ROW_NUMBERS = ("step_s", "clips_per_s", "peak_mem_bytes", "flops_per_step",
               "achieved_flops_per_s", "mfu", "params")


def _run(script: str, *args: str, out: Path) -> tuple[dict, str]:
    proc = subprocess.run([sys.executable, str(BENCH / script), *args, "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(out.read_text()), proc.stdout


@pytest.mark.parametrize("recipe, extra", [
    ("demo", []),
    ("pase_quick", ["--pretext-labels", "2"]),  # worker task regressing synthetic frame labels
    ("mv_byol", []),                            # same_track pairs and an EMA teacher
])
def test_recipes_benchmark_cpu(tmp_path: Path, recipe: str, extra: list[str]) -> None:
    report, stdout = _run("recipes.py", "--device", "cpu", "--recipes", recipe, "--batch", "2",
                          "--steps", "1", "--warmup", "0", *extra, out=tmp_path / "r.json")
    assert report["machine"]["device"] == "cpu"
    assert report["matmul"]["dtype"] == "float32" and report["matmul"]["flops_per_s"] > 0
    (row,) = report["recipes"]
    assert "error" not in row, row
    assert row["recipe"] == recipe and row["batch"] == 2
    assert row["peak_mem_kind"] == "process_peak_rss"
    for key in ROW_NUMBERS:
        assert row[key] > 0, key
    assert row["final_loss"] == row["final_loss"]  # not NaN
    if recipe == "pase_quick":
        assert row["rnn_flops_per_step"] > 0 and "synthetic" in row["notes"]
    assert "no GPU used" in stdout and f"| {recipe} |" in stdout


def test_recipes_benchmark_reports_a_failing_recipe(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(BENCH / "recipes.py"), "--device", "cpu",
                           "--recipes", "no_such_recipe", "--steps", "1", "--warmup", "0",
                           "--json", str(tmp_path / "r.json")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    (row,) = json.loads((tmp_path / "r.json").read_text())["recipes"]
    assert "unknown recipe" in row["error"]


def test_ratios_benchmark_small(tmp_path: Path) -> None:
    report, stdout = _run("ratios.py", "--small", "--device", "cpu", out=tmp_path / "ratios.json")
    keys = [r["key"] for r in report["rows"]]
    assert keys == ["augment", "augment_vs_encoder"] + ["fewshot"] * 4 + ["hsic"]
    for r in report["rows"]:
        assert r["ours_s"] > 0 and r["reference_s"] > 0 and r["ratio"] > 0
        assert isinstance(r["holds"], bool) and (r["goal_min_ratio"] > 0 or r["goal_max_seconds"] > 0)
    assert "machine:" in stdout and "| benchmark |" in stdout
