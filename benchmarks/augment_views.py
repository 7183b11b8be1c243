"""Batched two-view augmentation vs the same pipeline applied clip by clip.

Makes both views and the op labels for a batch of clips with the recipe's CLAR pipeline, once on
the whole batch (tympan's path) and once looping over clips (the reference a per-clip
implementation would take), and reports both times and their ratio from the same run.

    python benchmarks/augment_views.py [--batch 64] [--seconds 3] [--device cpu] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from tympan.augment.pipeline import ViewPipeline
from tympan.config import load_recipe


def timeit(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="simclr")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json")
    args = p.parse_args()
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
    print(f"| ops | batch x seconds | device | batched (s) | per clip (s) | speed-up |")
    print(f"|---|---|---|---|---|---|")
    print(f"| {', '.join(pipe.op_names)} | {args.batch} x {args.seconds} | {dev} | "
          f"{row['batched_s']} | {row['per_clip_s']} | {row['speedup']}x |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(row, f, indent=2)


if __name__ == "__main__":
    main()
