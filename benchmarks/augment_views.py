"""Batched two-view augmentation vs the same pipeline applied clip by clip.

Makes both views and the op labels for a batch of clips with the recipe's CLAR pipeline, once on
the whole batch (tympan's path) and once looping over clips (the reference a per-clip
implementation would take), and reports both times and their ratio from the same run.

It then measures MT-SLVR's full 7-op CLAR pipeline (pitch shift, fade, white noise, mixed noise,
time mask, time shift, time stretch; 1 to 7 ops per clip, seed ranges) on a batch of generated
tones and noise:

(a) tympan: ``ViewPipeline`` making both views and the labels;
(b) a per-clip reference: the same kind of pipeline (same op counts and orders) clip by clip for
    both views, with ``librosa.effects.pitch_shift`` / ``librosa.effects.time_stretch`` and numpy
    for the other ops;
(c) one forward + backward pass of the demo encoder on the same batch, the step the views feed;
(d) the same on both views (2B clips), what a training step runs.

(a), (c) and (d) are called in turn for ``--repeats`` rounds after a warm-up round, as views and
steps alternate in training, and each reports its median; (b) runs last. The process first calls
:func:`tympan.runtime.retain_freed_memory`, as the ``tympan`` command does (``--system-malloc``
leaves malloc alone).

``--per-op`` also splits (a) by op, with both views' passes on one thread (so the parts add up):
the time inside each op's parameter draw (``sample``) and its application (``apply``), summed
over a call; the rest is the pipeline's index bookkeeping.

    python benchmarks/augment_views.py [--batch 64] [--seconds 3] [--device cpu] [--per-op] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from tympan.augment.pipeline import ViewPipeline
from tympan.config import AugmentConfig, load_recipe
from tympan.runtime import retain_freed_memory

MTSLVR_OPS = ["pitch_shift", "fade", "white_noise", "mixed_noise", "time_mask", "time_shift", "time_stretch"]


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timeit(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync()
        best = min(best, time.perf_counter() - t0)
    return best


def median_time(fn, repeats: int) -> float:
    """Median wall time of ``repeats`` calls after one warm-up call."""
    return interleaved_medians([fn], repeats)[0]


def interleaved_medians(fns, repeats: int) -> list[float]:
    """Median wall time of each of ``fns`` over ``repeats`` rounds that call them in turn,
    after one warm-up round."""
    for fn in fns:
        fn()
    _sync()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, spent in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            _sync()
            spent.append(time.perf_counter() - t0)
    return [statistics.median(spent) for spent in times]


def demo_clips(batch: int, num_samples: int, sample_rate: int, seed: int = 0) -> torch.Tensor:
    """A few kinds of generated audio: harmonic tones with vibrato, tones in noise, noise bursts."""
    rng = np.random.default_rng(seed)
    n = np.arange(num_samples) / sample_rate
    clips = np.empty((batch, num_samples), dtype=np.float32)
    for i in range(batch):
        kind = i % 3
        f0 = rng.uniform(100.0, 800.0)
        phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.01 * np.sin(2 * np.pi * 5 * n))) / sample_rate
        harmonics = sum(np.sin(k * phase) / k for k in range(1, 8) if k * f0 < sample_rate / 2)
        noise = rng.standard_normal(num_samples)
        if kind == 0:
            y = harmonics
        elif kind == 1:
            y = harmonics + 0.3 * noise
        else:
            gate = (np.sin(2 * np.pi * rng.uniform(1.0, 4.0) * n) > 0).astype(float)
            y = noise * gate
        clips[i] = 0.3 * y / np.abs(y).max()
    return torch.from_numpy(clips)


# ---------------------------------------------------------------------------------------------
# per-clip reference: librosa for pitch and tempo, numpy for the rest


def _ref_params(pipe: ViewPipeline, name: str) -> dict:
    return next(op for op in pipe.ops if op.name == name).params


def _ref_fade(y, rng, p):
    t = len(y)
    fin = int(rng.uniform(0, p["max_in"]) * t)
    fout = int(rng.uniform(0, p["max_out"]) * t)
    shape = p["shapes"][rng.integers(len(p["shapes"]))]
    pos = np.arange(t, dtype=np.float32)

    def curve(q):
        if shape == "linear":
            return q
        if shape == "log":
            return np.log10(0.1 + 0.9 * q) + 1.0
        return (np.exp2(5.0 * (q - 1.0)) - 2.0**-5) / (1.0 - 2.0**-5)

    g_in = curve(np.clip(pos / max(fin, 1), 0, 1)) if fin > 0 else 1.0
    g_out = curve(np.clip((t - 1 - pos) / max(fout, 1), 0, 1)) if fout > 0 else 1.0
    return y * g_in * g_out


def _ref_add_at_snr(y, noise, snr_db):
    target = np.mean(y**2) / 10 ** (snr_db / 10)
    return y + noise * np.sqrt(target / max(np.mean(noise**2), 1e-12))


def _ref_white(y, rng, p):
    return _ref_add_at_snr(y, rng.standard_normal(len(y)).astype(np.float32), rng.uniform(*p["snr_db"]))


def _ref_mixed(y, rng, p):
    d = rng.uniform(*p["f_decay"])
    spec = np.fft.rfft(rng.standard_normal(len(y)))
    k = np.arange(len(spec), dtype=np.float64)
    gain = np.zeros_like(k)
    gain[1:] = k[1:] ** (-d / 2)
    noise = np.fft.irfft(spec * gain, n=len(y)).astype(np.float32)
    return _ref_add_at_snr(y, noise, rng.uniform(*p["snr_db"]))


def _ref_mask(y, rng, p):
    t = len(y)
    length = int(rng.uniform(0, p["max_ratio"]) * t)
    start = int(rng.integers(0, t - length + 1))
    y = y.copy()
    y[start : start + length] = 0.0
    return y


def _ref_shift(y, rng, p):
    return np.roll(y, int(round(rng.uniform(-p["max_ratio"], p["max_ratio"]) * len(y))))


def _ref_pitch(y, rng, p, sr):
    import librosa

    return librosa.effects.pitch_shift(y, sr=sr, n_steps=rng.uniform(*p["semitones"]))


def _ref_stretch(y, rng, p, sr):
    import librosa

    out = librosa.effects.time_stretch(y, rate=rng.uniform(*p["rate"]))
    return librosa.util.fix_length(out, size=len(y))  # crop a slowed clip, pad a sped-up one


def per_clip_reference(pipe: ViewPipeline, x: np.ndarray, order: np.ndarray, sr: int, seed: int):
    """Both views and the labels, one clip at a time, with the ops in each clip's order."""
    rng = np.random.default_rng(seed)
    fns = {
        "pitch_shift": lambda y, p: _ref_pitch(y, rng, p, sr),
        "fade": lambda y, p: _ref_fade(y, rng, p),
        "white_noise": lambda y, p: _ref_white(y, rng, p),
        "mixed_noise": lambda y, p: _ref_mixed(y, rng, p),
        "time_mask": lambda y, p: _ref_mask(y, rng, p),
        "time_shift": lambda y, p: _ref_shift(y, rng, p),
        "time_stretch": lambda y, p: _ref_stretch(y, rng, p, sr),
    }
    params = [_ref_params(pipe, name) for name in pipe.op_names]
    views = []
    for _ in range(2):
        out = np.empty_like(x)
        for b in range(x.shape[0]):
            y = x[b]
            for j in order[b]:
                if j < 0:
                    break
                y = fns[pipe.op_names[j]](y, params[j])
            out[b] = y
        views.append(out)
    labels = np.zeros((x.shape[0], len(pipe.op_names)), dtype=np.float32)
    for b, row in enumerate(order):
        labels[b, row[row >= 0]] = 1.0
    return views[0], views[1], labels


def mtslvr_rows(args, dev: torch.device) -> dict:
    from tympan.models.encoder import Encoder

    sr = 16000
    t = int(args.seconds * sr)
    x = demo_clips(args.batch, t, sr).to(dev)
    pipe = ViewPipeline(AugmentConfig(ops=MTSLVR_OPS, min_ops=1))  # op defaults = seed ranges
    g = torch.Generator(device=dev).manual_seed(0)

    def ours() -> None:
        pipe(x, g)

    order = pipe.sample_order(args.batch, torch.Generator(device=dev).manual_seed(1), dev)
    x_np, order_np = x.cpu().numpy(), order.cpu().numpy()

    def reference() -> None:
        per_clip_reference(pipe, x_np, order_np, sr, seed=2)

    encoder = Encoder(load_recipe("demo")).to(dev).train()
    x2 = torch.cat([x, x])

    def fwd_bwd() -> None:
        encoder.zero_grad(set_to_none=True)
        encoder(x).sum().backward()

    def fwd_bwd_views() -> None:  # what a training step runs: both views, 2B clips
        encoder.zero_grad(set_to_none=True)
        encoder(x2).sum().backward()

    # (a), (c) and (d) alternate, as views and steps do in training (each leaves the caches and
    # the allocator to the next); the reference runs last, as librosa's numba threads keep
    # spinning for a while after it returns and would slow whatever ran next.
    t_ours, t_enc, t_step = interleaved_medians([ours, fwd_bwd, fwd_bwd_views], args.repeats)
    t_ref = median_time(reference, args.ref_repeats)
    return {
        "ops": MTSLVR_OPS,
        "batch": args.batch,
        "seconds": args.seconds,
        "sample_rate": sr,
        "device": str(dev),
        "torch_threads": torch.get_num_threads(),
        "ours_views_s": round(t_ours, 4),
        "per_clip_reference_s": round(t_ref, 4),
        "encoder_fwd_bwd_s": round(t_enc, 4),
        "encoder_fwd_bwd_both_views_s": round(t_step, 4),
        "reference_over_ours": round(t_ref / t_ours, 1),
        "ours_over_fwd_bwd": round(t_ours / t_enc, 2),
        "ours_over_fwd_bwd_both_views": round(t_ours / t_step, 2),
    }


def per_op_times(batch: int, seconds: float, dev: torch.device, repeats: int) -> dict:
    """Seconds per call of (a) spent in each op's ``sample`` and ``apply`` (``--per-op``), with
    one torch thread: on the CPU the two views' passes then run one after the other (the same
    views as with two threads), so the parts are CPU time and add up to the call."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _per_op_times(batch, seconds, dev, repeats)
    finally:
        torch.set_num_threads(threads)


def _per_op_times(batch: int, seconds: float, dev: torch.device, repeats: int) -> dict:
    sr = 16000
    x = demo_clips(batch, int(seconds * sr), sr).to(dev)
    pipe = ViewPipeline(AugmentConfig(ops=MTSLVR_OPS, min_ops=1))
    spent: dict[str, float] = {}
    for op in pipe.ops:
        for method in ("sample", "apply"):
            inner, key = getattr(op, method), f"{op.name}.{method}"

            def timed(*a, _inner=inner, _key=key, **k):
                _sync()
                t0 = time.perf_counter()
                out = _inner(*a, **k)
                _sync()
                spent[_key] = spent.get(_key, 0.0) + time.perf_counter() - t0
                return out

            setattr(op, method, timed)
    g = torch.Generator(device=dev).manual_seed(0)
    pipe(x, g)  # warm-up
    spent.clear()
    _sync()
    t0 = time.perf_counter()
    for _ in range(repeats):
        pipe(x, g)
    _sync()
    total = (time.perf_counter() - t0) / repeats
    parts = {k: v / repeats for k, v in sorted(spent.items(), key=lambda kv: -kv[1])}
    parts["pipeline bookkeeping (rest)"] = total - sum(parts.values())
    return {"total_s": total, "parts_s": parts}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="simclr")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--ref-repeats", type=int, default=3, help="repeats of the slow per-clip reference")
    p.add_argument("--per-op", action="store_true", help="also split (a) by op")
    p.add_argument("--system-malloc", action="store_true",
                   help="leave glibc malloc as it is (default: tympan.runtime.retain_freed_memory, "
                        "as the tympan command does)")
    p.add_argument("--json")
    args = p.parse_args()
    retained = False if args.system_malloc else retain_freed_memory()
    recipe = load_recipe(args.recipe)
    pipe = ViewPipeline(recipe.augment)
    dev = torch.device(args.device)
    x = torch.randn(args.batch, int(args.seconds * recipe.audio.sample_rate), device=dev)
    g = torch.Generator(device=dev).manual_seed(0)

    def batched() -> None:
        pipe(x, g)

    def per_clip() -> None:
        for i in range(x.shape[0]):
            pipe(x[i : i + 1], g)

    t_b, t_c = timeit(batched, args.repeats), timeit(per_clip, args.repeats)
    row = {"recipe": args.recipe, "ops": list(pipe.op_names), "batch": args.batch,
           "seconds": args.seconds, "device": str(dev), "batched_s": round(t_b, 4),
           "per_clip_s": round(t_c, 4), "speedup": round(t_c / t_b, 1)}
    print("| ops | batch x seconds | device | batched (s) | per clip (s) | speed-up |")
    print("|---|---|---|---|---|---|")
    print(f"| {', '.join(pipe.op_names)} | {args.batch} x {args.seconds} | {dev} | "
          f"{row['batched_s']} | {row['per_clip_s']} | {row['speedup']}x |")

    m = mtslvr_rows(args, dev)
    row["mtslvr"] = m
    m["malloc_retains_freed_memory"] = retained
    shape = (f"{args.batch} x {args.seconds} s @ 16 kHz, {dev}, {m['torch_threads']} torch threads, "
             f"malloc {'retaining freed memory' if retained else 'as the system left it'}")
    print()
    print(f"MT-SLVR 7-op CLAR views ({shape}); medians, (a), (c), (d) in alternation")
    print()
    print("| measurement | time (s) | ratio |")
    print("|---|---|---|")
    print(f"| (a) tympan ViewPipeline, both views + labels, batched | {m['ours_views_s']} | |")
    print(f"| (b) per-clip reference (librosa pitch/stretch, numpy rest), both views | "
          f"{m['per_clip_reference_s']} | (b)/(a) = {m['reference_over_ours']}x |")
    print(f"| (c) demo encoder forward + backward, the {args.batch} clips | "
          f"{m['encoder_fwd_bwd_s']} | (a)/(c) = {m['ours_over_fwd_bwd']} |")
    print(f"| (d) demo encoder forward + backward, both views ({2 * args.batch} clips, one "
          f"training step) | {m['encoder_fwd_bwd_both_views_s']} | "
          f"(a)/(d) = {m['ours_over_fwd_bwd_both_views']} |")
    if args.per_op:
        split = per_op_times(args.batch, args.seconds, dev, args.repeats)
        row["per_op"] = split
        print()
        print(f"(a) by op on one torch thread, mean of {args.repeats} calls: "
              f"{split['total_s']:.4f} s")
        print()
        print("| part | time (s) |")
        print("|---|---|")
        for key, value in split["parts_s"].items():
            print(f"| {key} | {value:.4f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(row, f, indent=2)


if __name__ == "__main__":
    main()
