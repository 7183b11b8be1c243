"""Batched conditional-HSIC table vs a per-class, per-candidate Python loop (seed 004, eqs. 1-6).

Both compute HSIC(X, Z | Y) = sum_c n_c trace(K_c H_c L_c H_c) / n_c^2 / M for every candidate on
the same clips, with the same standardised labels and RBF widths. The loop is a straightforward
NumPy implementation: for each class it builds the cosine kernel K_c once, then for each candidate
the RBF kernel L_c and the explicit H_c = I - 11^T/n_c, and takes the trace of the product. The
batched version (tympan.pretext.conditional_hsic_table) centres all classes' kernels at once in a
padded [C, n_max, n_max] tensor and never forms H. Random data of the seed's shapes stand in for
a corpus: 80-band log-mels Gaussian-downsampled to 20 frames (d = 1600) with class-dependent
means, and scalar clip-level pretext labels, some depending on the clips.

    python benchmarks/hsic.py [--classes 20] [--per-class 300] [--candidates 10] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from tympan.pretext import class_hsic, conditional_hsic_table


def loop_reference(X: np.ndarray, labels: dict[str, np.ndarray], y: np.ndarray,
                   sigmas: dict[str, float]) -> dict[str, float]:
    """One class at a time, one candidate at a time, explicit centring matrix."""
    zs = {k: (v - v.mean()) / v.std() for k, v in labels.items()}
    totals = dict.fromkeys(labels, 0.0)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        n = len(idx)
        xc = X[idx] / np.linalg.norm(X[idx], axis=1, keepdims=True)
        K = xc @ xc.T
        H = np.eye(n) - np.ones((n, n)) / n
        for name, z in zs.items():
            zc = z[idx]
            L = np.exp(-((zc[:, None] - zc[None, :]) ** 2) / (2 * sigmas[name] ** 2))
            totals[name] += n * np.trace(K @ H @ L @ H) / n**2
    return {k: v / len(y) for k, v in totals.items()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--classes", type=int, default=20)
    p.add_argument("--per-class", type=int, default=300)
    p.add_argument("--candidates", type=int, default=10)
    p.add_argument("--n-mels", type=int, default=80)
    p.add_argument("--frames", type=int, default=20, help="frames after Gaussian downsampling")
    p.add_argument("--json")
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(args.classes), args.per_class)
    d = args.n_mels * args.frames
    centres = rng.normal(size=(args.classes, d))
    X = -40.0 + 10.0 * centres[y] + 8.0 * rng.normal(size=(len(y), d))  # log-mel-like values in dB
    proj = rng.normal(size=(d, args.candidates)) / np.sqrt(d)
    mix = rng.uniform(0, 1, size=args.candidates)
    class_part = rng.normal(size=(args.classes, args.candidates))[y]
    labels = {f"z{j}": (1 - mix[j]) * class_part[:, j] + mix[j] * (X @ proj[:, j]) / 8.0
              + 0.1 * rng.normal(size=len(y)) for j in range(args.candidates)}

    class_hsic(X[:200], {"w": labels["z0"][:200]}, y[:200] % 2)  # warm-up
    t0 = time.perf_counter()
    ours = conditional_hsic_table(X, labels, y, max_per_class=None)
    t_ours = time.perf_counter() - t0
    sigmas = class_hsic(X, labels, y, max_per_class=None).sigmas  # same widths for the loop
    t0 = time.perf_counter()
    ref = loop_reference(X, labels, y, sigmas)
    t_ref = time.perf_counter() - t0
    diff = max(abs(ours[k] - ref[k]) for k in labels)
    rel = max(abs(ours[k] - ref[k]) / abs(ref[k]) for k in labels)
    row = {
        "classes": args.classes, "per_class": args.per_class, "candidates": args.candidates,
        "features": d, "batched_s": round(t_ours, 3), "loop_s": round(t_ref, 3),
        "speedup": round(t_ref / t_ours, 1), "max_abs_diff": diff, "max_rel_diff": rel,
        "ranking_equal": list(ours) == sorted(ref, key=ref.get),
        "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
    }
    print(f"machine: {row['machine']}, torch threads {row['torch_threads']}")
    print("| classes x clips x candidates | features | batched (s) | loop (s) | speed-up | max abs diff "
          "| max rel diff | same ranking |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {args.classes} x {args.per_class} x {args.candidates} | {d} | {row['batched_s']} | "
          f"{row['loop_s']} | {row['speedup']}x | {diff:.2e} | {rel:.2e} | {row['ranking_equal']} |")
    print("lowest (most useful) first:", ", ".join(f"{k}={v:.3e}" for k, v in list(ours.items())[:3]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(row, f, indent=2)


if __name__ == "__main__":
    main()
