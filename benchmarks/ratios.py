"""The speed ratios of docs/benchmarks.md measured side by side in one process.

Runs, one after the other in this interpreter (same machine state, same torch threads):

* batched vs per-clip two-view augmentation, MT-SLVR's 7 CLAR ops
  (``benchmarks/augment_views.py``, :func:`mtslvr_rows`): tympan's ``ViewPipeline`` making both
  views and the labels against the per-clip librosa/numpy reference, and against one forward +
  backward pass of the demo encoder over the same clips;
* batched vs per-episode few-shot readout (``benchmarks/fewshot_readout.py``): the batched
  Newton solver against one scikit-learn ``LogisticRegression`` per episode, D in {128, 512},
  5-way 1- and 5-shot;
* vectorised vs naive conditional HSIC (``benchmarks/hsic.py``): ``conditional_hsic_table``
  against the per-class, per-candidate NumPy loop.

The three scripts are imported from this folder and their own code does the measuring:
``augment_views.mtslvr_rows`` is called directly; ``fewshot_readout`` and ``hsic`` have no
function that returns their numbers, so their ``main(argv)`` is called with its command-line
flags and ``--json`` pointed at a temporary file, which is read back (their printed tables are
hidden unless ``--verbose``).

Every ratio is reference time / our time, so bigger is better, and each row states the goal it is
held to (``GOALS``) and whether it holds in this run.

    python benchmarks/ratios.py [--small] [--device cpu] [--threads N] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

import torch

from tympan.runtime import retain_freed_memory

HERE = Path(__file__).resolve().parent

#: per benchmark: minimum reference/ours ratio, maximum time of our side (None: no time goal),
#: and where the goal comes from
GOALS: dict[str, tuple[float, float | None, str]] = {
    "augment": (10.0, None, "issue 3: per-clip reference / batched views >= 10"),
    "augment_vs_encoder": (1.0, None,
                           "issue 3: views take less time than encoder fwd+bwd, same clips"),
    "fewshot": (1.0, None, "no numeric target in docs/benchmarks.md: batched must be faster"),
    "hsic": (0.0, 60.0, "issue 5: the whole table for 20 classes x 300 clips x 10 candidates in "
                        "under a minute on the 2-core CPU"),
}

#: the size flags' values without --small (an explicit flag wins over both)
FULL = {"aug_batch": 64, "aug_seconds": 3.0, "repeats": 5, "ref_repeats": 3, "episodes": 600,
        "hsic_classes": 20, "hsic_per_class": 300, "hsic_candidates": 10, "hsic_n_mels": 80,
        "hsic_frames": 20}
SMALL = {"aug_batch": 8, "aug_seconds": 0.5, "repeats": 1, "ref_repeats": 1, "episodes": 20,
         "hsic_classes": 4, "hsic_per_class": 40, "hsic_candidates": 3, "hsic_n_mels": 20,
         "hsic_frames": 5}


def load_script(name: str) -> types.ModuleType:
    """``benchmarks/<name>.py`` as a module (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location(f"tympan_bench_{name}", HERE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def run_main(module: types.ModuleType, argv: list[str], verbose: bool) -> Any:
    """``module.main(argv)`` with ``--json`` to a temporary file; that file's content."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out.json")
        with contextlib.redirect_stdout(sys.stdout if verbose else io.StringIO()):
            module.main([*argv, "--json", out])
        with open(out) as f:
            return json.load(f)


def row(key: str, benchmark: str, size: str, device: str, ours: float, ref: float,
        details: dict[str, Any]) -> dict[str, Any]:
    min_ratio, max_s, source = GOALS[key]
    ratio = ref / ours if ours > 0 else float("inf")
    return {"key": key, "benchmark": benchmark, "size": size, "device": device, "ours_s": ours,
            "reference_s": ref, "ratio": ratio, "goal_min_ratio": min_ratio,
            "goal_max_seconds": max_s, "goal_source": source,
            "holds": ratio >= min_ratio and (max_s is None or ours <= max_s), "details": details}


def goal_text(r: dict[str, Any]) -> str:
    if r["goal_max_seconds"] is not None:
        return f"ours <= {r['goal_max_seconds']:g} s"
    return f">= {r['goal_min_ratio']:g}x"


def augment_rows(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    views = load_script("augment_views")
    ns = types.SimpleNamespace(batch=args.aug_batch, seconds=args.aug_seconds,
                               repeats=args.repeats, ref_repeats=args.ref_repeats)
    m = views.mtslvr_rows(ns, device)
    size = f"{m['batch']} x {m['seconds']:g} s, 7 ops"
    return [
        row("augment", "two-view augmentation: per-clip librosa/numpy vs batched ViewPipeline",
            size, str(device), m["ours_views_s"], m["per_clip_reference_s"], m),
        row("augment_vs_encoder", "two-view augmentation vs demo encoder fwd+bwd, same clips",
            size, str(device), m["ours_views_s"], m["encoder_fwd_bwd_s"], {}),
    ]


def fewshot_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    readout = load_script("fewshot_readout")
    rows = run_main(readout, ["--episodes", str(args.episodes)], args.verbose)
    return [
        row("fewshot", f"few-shot readout: sklearn per episode vs batched, D={r['dim']} "
                       f"{r['ways']}-way {r['shots']}-shot",
            f"{r['episodes']} episodes", "cpu", r["batched_s"], r["sklearn_s"], r)
        for r in rows
    ]


def hsic_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    hsic = load_script("hsic")
    flags = ["--classes", args.hsic_classes, "--per-class", args.hsic_per_class,
             "--candidates", args.hsic_candidates, "--n-mels", args.hsic_n_mels,
             "--frames", args.hsic_frames]
    r = run_main(hsic, [str(v) for v in flags], args.verbose)
    return [row("hsic", "conditional HSIC: per-class/per-candidate loop vs vectorised table",
                f"{r['classes']} x {r['per_class']} clips x {r['candidates']} candidates, "
                f"d={r['features']}", "cpu", r["batched_s"], r["loop_s"], r)]


def machine_line(device: torch.device) -> str:
    m = load_script("recipes").machine_info(device)
    gpu = f"GPU {m['device_name']}" if device.type == "cuda" else "no GPU used"
    load = ", ".join(f"{v:.2f}" for v in m["load_average_at_start"])
    return (f"machine: {m['cpu']}, {m['cpu_cores']} cores, {m['torch_threads']} torch threads, "
            f"{gpu}; torch {m['torch']}; load average at start {load}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", action="store_true",
                   help="tiny sizes for a smoke test (numbers are not meaningful)")
    p.add_argument("--only", nargs="+", choices=["augment", "fewshot", "hsic"],
                   default=["augment", "fewshot", "hsic"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="device of the augmentation benchmark (the other two run on the CPU)")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's own)")
    # size flags: default None, filled from SMALL or FULL below
    p.add_argument("--aug-batch", type=int)
    p.add_argument("--aug-seconds", type=float)
    p.add_argument("--repeats", type=int, help="timed repeats of the fast paths")
    p.add_argument("--ref-repeats", type=int, help="timed repeats of the per-clip reference")
    p.add_argument("--episodes", type=int)
    p.add_argument("--hsic-classes", type=int)
    p.add_argument("--hsic-per-class", type=int)
    p.add_argument("--hsic-candidates", type=int)
    p.add_argument("--hsic-n-mels", type=int)
    p.add_argument("--hsic-frames", type=int)
    p.add_argument("--verbose", action="store_true", help="also print each script's own table")
    p.add_argument("--json")
    args = p.parse_args(argv)
    for key, value in (SMALL if args.small else FULL).items():
        if getattr(args, key) is None:  # an explicit size flag wins over --small
            setattr(args, key, value)
    if args.threads:
        torch.set_num_threads(args.threads)
    retain_freed_memory()  # as the tympan command does (tympan.runtime)
    device = torch.device(args.device)

    machine = machine_line(device)
    rows: list[dict[str, Any]] = []
    # The augmentation benchmark runs last: its librosa/numba reference leaves worker threads
    # spinning for a while after it returns, which slowed the batched readout measured after it
    # by up to 2x on 2 cores (measured). The rows keep the order of the sections.
    if "fewshot" in args.only:
        rows += fewshot_rows(args)
    if "hsic" in args.only:
        rows += hsic_rows(args)
    if "augment" in args.only:
        rows = augment_rows(args, device) + rows

    print(machine)
    print()
    print("| benchmark | size | device | ours (s) | reference (s) | ratio | goal | holds? |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['benchmark']} | {r['size']} | {r['device']} | {r['ours_s']:.4g} | "
              f"{r['reference_s']:.4g} | {r['ratio']:.1f}x | {goal_text(r)} | "
              f"{'yes' if r['holds'] else '**no**'} |")
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k not in ("json", "verbose")}
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "torch_threads": torch.get_num_threads(),
                       "settings": settings, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
