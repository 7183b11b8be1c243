"""Training throughput of every shipped recipe: clips/s, step time, peak memory, FLOPs and MFU.

For each recipe (every YAML in ``tympan/recipes``, or ``--recipes a b``) this builds
``PretrainModule(recipe)`` on the device and runs the real training step on a fixed synthetic
batch held on the device: the views (augmentation pipeline, or the two given segments of
``views.kind: same_track``) drawn anew every step on the device, every task's loss, backward, the
Adam step and the learning-rate schedule step, then the tasks' ``after_step`` (EMA teachers).
``training_step`` is called directly with the optimiser that ``configure_optimizers`` builds
(Lightning's logging and ``optimizers()`` are replaced by stubs), so the step time measures the
step and nothing else: **data loading is excluded** (the batch never leaves the device), and so
are Lightning's loop, logging, checkpointing and collapse-monitor callbacks.

Precision is what ``tympan pretrain`` uses (:func:`tympan.training.pretrain.resolve_precision`):
bf16 autocast on CUDA, fp32 on the CPU. Each worker applies
:func:`tympan.runtime.retain_freed_memory`, as the ``tympan`` command does.

Measured per recipe, each in its own subprocess (so one recipe's memory or failure does not
leak into the next):

* step time: median of ``--steps`` timed steps after one untimed step that counts the FLOPs and
  ``--warmup`` untimed plain steps; CUDA is synchronised around every timed step;
* clips/s = batch / median step time (for ``same_track`` recipes a "clip" is a pair of segments);
* peak memory: CUDA ``torch.cuda.max_memory_allocated`` (tensors only); CPU the process's peak
  RSS (``ru_maxrss``, interpreter and libraries included, nothing subtracted);
* FLOPs per step (forward + backward) counted by ``torch.utils.flop_counter.FlopCounterMode``,
  which counts matmuls, convolutions and attention, plus the matmul FLOPs of recurrent layers
  (the PASE recipes' BiLSTM) computed from their shapes, since the counter has no formula for
  RNN kernels. FFTs (STFT front end, phase-vocoder ops) and elementwise ops are not counted, so
  FLOPs and MFU are lower bounds;
* achieved FLOP/s = FLOPs per step / median step time, and model FLOPs utilisation (MFU) =
  achieved / the matmul rate measured in the same run (before and after the recipes, the higher
  kept): a bf16 4096 x 4096 matmul on CUDA, an fp32 2048 x 2048 matmul on the CPU.

Defaults: on CUDA batch 256, 20 timed steps after 3 warm-up steps; on the CPU each recipe's own
``train.batch_size``, 3 timed steps after 1 warm-up step, so that all 14 recipes finish in about
7 minutes on an idle 2-core machine (``pase``, 20 s a step, is a quarter of it). On a machine
shared with another CPU job, ``--threads 1`` keeps one starved thread from stalling every op (a
2-thread run can be 5x slower than a 1-thread one there); rows whose timed steps differ by more
than 30% are flagged "noisy".

    python benchmarks/recipes.py [--device auto|cpu|cuda] [--batch N] [--steps N] [--warmup N]
                                 [--recipes simclr demo ...] [--pretext-labels K] [--threads N]
                                 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from typing import Any

import torch

from tympan.runtime import retain_freed_memory

RESULT_PREFIX = "RESULT "
#: a row whose slowest timed step exceeds its fastest by this factor is flagged as noisy
NOISY = 1.3


# -- the machine and its matmul rate ----------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to torch")
    return torch.device(name)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "device": device.type,
        "cpu": cpu_name(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
    }
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
        total = torch.cuda.get_device_properties(device).total_memory
        info["gpu_memory_gib"] = round(total / 2**30, 1)
    else:
        info["device_name"] = info["cpu"]
    return info


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(device: torch.device) -> dict[str, Any]:
    """FLOP/s of one square matmul: bf16 4096 on CUDA, fp32 2048 on the CPU (median of repeats)."""
    if device.type == "cuda":
        n, dtype, repeats, inner = 4096, torch.bfloat16, 10, 10
    else:
        n, dtype, repeats, inner = 2048, torch.float32, 5, 1
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    for _ in range(2):
        a @ b
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            a @ b
        sync(device)
        times.append((time.perf_counter() - t0) / inner)
    t = statistics.median(times)
    return {"n": n, "dtype": str(dtype).replace("torch.", ""), "seconds": t,
            "flops_per_s": 2.0 * n**3 / t}


# -- one recipe (runs in a subprocess) -----------------------------------------------------------


def synthetic_audio(batch: int, num_samples: int, sample_rate: int, seed: int) -> torch.Tensor:
    """Harmonic tones with random pitch plus a little noise, peak 0.3: ``[batch, num_samples]``."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(num_samples, dtype=torch.float64) / sample_rate
    f0 = 100.0 + 700.0 * torch.rand(batch, 1, generator=g, dtype=torch.float64)
    phase = 2 * torch.pi * f0 * t
    y = sum(torch.sin(k * phase) / k for k in range(1, 6))
    y = y + 0.1 * torch.randn(batch, num_samples, generator=g, dtype=torch.float64)
    y = 0.3 * y / y.abs().amax(dim=1, keepdim=True)
    return y.float()


def synthetic_batch(recipe: Any, batch: int, device: torch.device, seed: int = 0) -> dict:
    """What the recipe's DataLoader would yield, already on the device.

    ``views.kind: augment``: ``audio [B, clip_seconds * sr]`` and the crop's ``index``,
    ``start`` (0) and file ``length`` (the crop's) that worker tasks read.
    ``views.kind: same_track``: ``audio``, ``audio2`` (two ``segment_seconds`` segments) and
    ``index``.
    """
    sr = recipe.audio.sample_rate
    if recipe.views.kind == "same_track":
        n = max(1, int(round(recipe.views.segment_seconds * sr)))
        return {"audio": synthetic_audio(batch, n, sr, seed).to(device),
                "audio2": synthetic_audio(batch, n, sr, seed + 1).to(device),
                "index": torch.arange(batch, device=device)}
    n = max(1, int(round(recipe.audio.clip_seconds * sr)))
    return {"audio": synthetic_audio(batch, n, sr, seed).to(device),
            "index": torch.arange(batch, device=device),
            "start": torch.zeros(batch, dtype=torch.long, device=device),
            "length": torch.full((batch,), n, dtype=torch.long, device=device)}


def needs_frame_labels(recipe: Any) -> bool:
    from tympan.methods.workers import LABEL_OBJECTIVES

    return any(t.objective in LABEL_OBJECTIVES for t in recipe.tasks)


def synthetic_frame_labels(names: list[str], batch: int, num_samples: int, sample_rate: int,
                           seed: int = 0):
    """A ``FrameLabels`` table of standard-normal labels at a 10 ms hop for ``batch`` items of
    ``num_samples`` samples (the batch's ``index`` is ``arange(batch)``)."""
    import numpy as np

    from tympan.methods.workers import FrameLabels

    hop = 0.01
    frames_per_item = max(1, -(-num_samples // int(round(hop * sample_rate))))
    g = torch.Generator().manual_seed(seed)
    frames = torch.randn(batch * frames_per_item, len(names), generator=g)
    return FrameLabels(
        names=tuple(names), frames=frames,
        offsets=torch.arange(batch, dtype=torch.long) * frames_per_item,
        lengths=torch.full((batch,), frames_per_item, dtype=torch.long),
        hop_seconds=hop, mean=np.zeros(len(names)), std=np.ones(len(names)),
    )


def count_rnn_flops(model: torch.nn.Module) -> tuple[dict[str, int], list]:
    """Forward hooks adding the matmul FLOPs of every ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` call
    to ``totals["rnn"]``, x3 for forward + backward (backward costs twice the forward's matmuls).

    ``FlopCounterMode`` does not see recurrent layers (the CPU and cuDNN RNN kernels are single
    ops it has no formula for), so their FLOPs are counted here from the shapes:
    ``2 * gates * H * (I + H)`` per time step, batch item, direction and layer.
    """
    totals = {"rnn": 0}
    gates = {torch.nn.LSTM: 4, torch.nn.GRU: 3, torch.nn.RNN: 1}

    def hook(mod: torch.nn.RNNBase, inputs: tuple, _output: Any) -> None:
        x = inputs[0]
        if isinstance(x, torch.nn.utils.rnn.PackedSequence):
            bt = int(x.batch_sizes.sum())
        else:
            bt = x.shape[0] * x.shape[1] if x.dim() == 3 else x.shape[0]
        dirs = 2 if mod.bidirectional else 1
        h = mod.hidden_size
        k = gates[type(mod)]
        per_item = 0
        for layer in range(mod.num_layers):
            i = mod.input_size if layer == 0 else h * dirs
            per_item += dirs * 2 * k * h * (i + h)
        totals["rnn"] += 3 * bt * per_item if torch.is_grad_enabled() else bt * per_item

    handles = [m.register_forward_hook(hook) for m in model.modules() if type(m) in gates]
    return totals, handles


def standalone(module: Any) -> tuple[torch.optim.Optimizer, Any]:
    """The module's own optimiser and per-step scheduler, with the two Trainer services that
    ``training_step`` calls (``optimizers()`` for the logged lr, ``log``/``log_dict``) stubbed."""
    conf = module.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    module.optimizers = lambda *a, **k: opt
    module.log = lambda *a, **k: None
    module.log_dict = lambda *a, **k: None
    return opt, sched


def autocast_for(precision: str, device: torch.device):
    if precision in ("32-true", "32", "64-true"):
        return nullcontext
    if precision == "bf16-mixed":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "16-mixed":  # no GradScaler here: timing only
        return lambda: torch.autocast(device.type, dtype=torch.float16)
    raise SystemExit(f"precision {precision!r} is not supported by this benchmark")


def measure_recipe(name: str, device: torch.device, batch: int | None, steps: int, warmup: int,
                   pretext_labels: int, seed: int = 0) -> dict[str, Any]:
    from torch.utils.flop_counter import FlopCounterMode

    from tympan.config import load_recipe
    from tympan.training.module import PretrainModule
    from tympan.training.pretrain import resolve_precision

    recipe = load_recipe(name)
    labels, notes = None, []
    frame_labels = needs_frame_labels(recipe)  # the pretext.weights override keeps the tasks
    if frame_labels:
        if pretext_labels > 0:
            names = [f"synthetic_{i}" for i in range(pretext_labels)]
            recipe = load_recipe(name, {"pretext.weights": {n: 1.0 for n in names}})
            notes.append(f"{pretext_labels} synthetic pretext-label workers")
        elif not recipe.pretext.weights:
            notes.append("mel + MFCC workers only (no pretext.weights)")
    b = batch or recipe.train.batch_size
    batch_data = synthetic_batch(recipe, b, device, seed)
    if frame_labels and recipe.pretext.weights:
        num_samples = batch_data["audio"].shape[1]
        labels = synthetic_frame_labels(list(recipe.pretext.weights), b, num_samples,
                                        recipe.audio.sample_rate, seed)
    torch.manual_seed(seed)
    module = PretrainModule(recipe, seed=seed, frame_labels=labels).to(device).train()
    opt, sched = standalone(module)
    precision = resolve_precision(recipe, device.type)
    autocast = autocast_for(precision, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step(i: int) -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = module.training_step(batch_data, i)
        loss.backward()
        opt.step()
        sched.step()
        module.on_train_batch_end(None, batch_data, i)
        return loss

    # one step under the FLOP counter, then the warm-up: a step under the counter's dispatch
    # mode does not warm the kernels' caches as a plain step does (the next step is ~5x slower)
    rnn, handles = count_rnn_flops(module)
    with FlopCounterMode(display=False) as counter:
        step(0)
    sync(device)
    for h in handles:
        h.remove()
    flops = counter.get_total_flops() + rnn["rnn"]
    for i in range(warmup):
        step(1 + i)
    sync(device)  # this and the sync after each timed step start every timed step idle
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        loss = step(1 + warmup + i)
        sync(device)
        times.append(time.perf_counter() - t0)
    if device.type == "cuda":
        peak, peak_kind = torch.cuda.max_memory_allocated(device), "cuda_max_memory_allocated"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        peak_kind = "process_peak_rss"
    t = statistics.median(times)
    seconds = batch_data["audio"].shape[1] / recipe.audio.sample_rate
    return {
        "recipe": name, "method": recipe.method, "views": recipe.views.kind,
        "batch": b, "clip_seconds": seconds, "sample_rate": recipe.audio.sample_rate,
        "precision": precision,
        "params": sum(p.numel() for p in module.parameters() if p.requires_grad),
        "steps": steps, "warmup": warmup,
        "step_s": t, "step_s_all": times, "clips_per_s": b / t,
        "peak_mem_bytes": int(peak), "peak_mem_kind": peak_kind,
        "flops_per_step": int(flops), "rnn_flops_per_step": int(rnn["rnn"]),
        "achieved_flops_per_s": flops / t,
        "final_loss": float(loss.detach()),  # steps >= 1 (main enforces it)
        "notes": "; ".join(notes),
    }


# -- the driver ---------------------------------------------------------------------------------


def run_worker(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """``measure_recipe(name)`` in a fresh interpreter; an ``error`` row if it fails."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, "--device", args.device,
           "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--pretext-labels", str(args.pretext_labels)]
    if args.batch:
        cmd += ["--batch", str(args.batch)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"recipe": name, "error": f"timed out after {args.timeout} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    tail = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    return {"recipe": name, "error": tail[-1] if tail else f"exit status {proc.returncode}"}


def fmt_bytes(n: int) -> str:
    return f"{n / 2**30:.2f}"


def print_table(report: dict[str, Any]) -> None:
    m, mm = report["machine"], report["matmul"]
    cuda = m["device"] == "cuda"
    unit, scale = ("TFLOP/s", 1e12) if cuda else ("GFLOP/s", 1e9)
    if cuda:
        where = f"{m['device_name']} (CUDA, {m['gpu_memory_gib']} GiB), bf16 autocast"
    else:
        where = (f"CPU only, no GPU used: {m['device_name']}, {m['cpu_cores']} cores, "
                 f"{m['torch_threads']} torch threads, fp32")
    load = "; load average (1, 5, 15 min) at start {}, at end {}".format(
        ", ".join(map(str, m["load_average_at_start"])),
        ", ".join(map(str, m.get("load_average_at_end", []))))
    print(f"device: {where}; torch {m['torch']}{load}")
    print(f"matmul reference: {mm['dtype']} {mm['n']} x {mm['n']} = "
          f"{mm['flops_per_s'] / scale:.3g} {unit} (best of before/after the recipes); "
          f"step time: median of {report['settings']['steps']} steps after 1 FLOP-counting + "
          f"{report['settings']['warmup']} warm-up steps; data loading excluded")
    mem = "peak GPU mem (GiB, allocated)" if cuda else "peak RSS (GiB, process)"
    print()
    print(f"| recipe | batch x seconds | params (M) | step (s) | clips/s | {mem} | GFLOP/step "
          f"| achieved ({unit}) | MFU | notes |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in report["recipes"]:
        if "error" in r:
            print(f"| {r['recipe']} | | | | | | | | | failed: {r['error']} |")
            continue
        pair = " (pairs)" if r["views"] == "same_track" else ""
        lo, hi = min(r["step_s_all"]), max(r["step_s_all"])
        notes = [r["notes"]] if r["notes"] else []
        if hi > NOISY * lo:  # another process competed for the device: say so next to the number
            notes.append(f"noisy: steps {lo:.3g} to {hi:.3g} s")
        print(f"| {r['recipe']} | {r['batch']} x {r['clip_seconds']:g}{pair} | "
              f"{r['params'] / 1e6:.2f} | {r['step_s']:.3g} | {r['clips_per_s']:.1f} | "
              f"{fmt_bytes(r['peak_mem_bytes'])} | {r['flops_per_step'] / 1e9:.1f} | "
              f"{r['achieved_flops_per_s'] / scale:.3g} | {100 * r['mfu']:.1f}% | "
              f"{'; '.join(notes)} |")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--batch", type=int, default=None,
                   help="clips per step (default: 256 on CUDA, the recipe's train.batch_size on "
                        "CPU)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default: 20 CUDA, 3 CPU)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed steps before them, after the one that counts FLOPs "
                        "(default: 3 CUDA, 1 CPU)")
    p.add_argument("--recipes", nargs="+",
                   help="recipe names or paths (default: every shipped one)")
    p.add_argument("--pretext-labels", type=int, default=0,
                   help="give recipes with worker tasks (pase, pase_quick) this many synthetic "
                        "pretext labels to regress (default 0: the recipe as shipped, mel + MFCC "
                        "workers only)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads in each recipe's process (default: torch's own)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per recipe")
    p.add_argument("--json", help="write the machine, settings and every row here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    args.device = device.type
    cuda = device.type == "cuda"
    if args.batch is None and cuda:
        args.batch = 256
    if args.steps is None:
        args.steps = 20 if cuda else 3
    if args.warmup is None:
        args.warmup = 3 if cuda else 1
    if args.steps < 1 or args.warmup < 0 or (args.batch is not None and args.batch < 2):
        p.error("--steps must be >= 1, --warmup >= 0 and --batch >= 2")

    if args.worker:
        retain_freed_memory()  # the allocator setting of the tympan command (tympan.runtime)
        row = measure_recipe(args.worker, device, args.batch, args.steps, args.warmup,
                             args.pretext_labels)
        print(RESULT_PREFIX + json.dumps(row), flush=True)
        return

    from tympan.config import packaged_recipes

    names = args.recipes or packaged_recipes()
    machine = machine_info(device)
    before = matmul_rate(device)
    rows = []
    for i, name in enumerate(names, 1):
        t0 = time.perf_counter()
        row = run_worker(name, args)
        status = row.get("error") or f"{row['step_s']:.3g} s/step"
        print(f"[{i}/{len(names)}] {name}: {status} ({time.perf_counter() - t0:.0f} s)",
              file=sys.stderr, flush=True)
        rows.append(row)
    after = matmul_rate(device)
    machine["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    best = max(before, after, key=lambda r: r["flops_per_s"])
    for row in rows:
        if "error" not in row:
            row["mfu"] = row["achieved_flops_per_s"] / best["flops_per_s"]
    report = {
        "machine": machine,
        "matmul": {**best, "before_flops_per_s": before["flops_per_s"],
                   "after_flops_per_s": after["flops_per_s"]},
        "settings": {"device": device.type, "batch": args.batch or "recipe", "steps": args.steps,
                     "warmup": args.warmup, "pretext_labels": args.pretext_labels,
                     "data_loading": "excluded (fixed synthetic batch on the device)"},
        "recipes": rows,
    }
    print_table(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    if any("error" in r for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
