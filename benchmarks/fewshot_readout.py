"""Batched few-shot readout vs one scikit-learn LogisticRegression per episode.

Both fit the same objective (C * sum CE + ||W||^2 / 2) on the same L2-normalised embeddings and
the same episodes; the script reports wall time of each, the speed ratio measured in the same run,
and the accuracy difference. Synthetic Gaussian-class embeddings stand in for a model's output.

    python benchmarks/fewshot_readout.py [--episodes 600] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from tympan.evaluation.fewshot import readout_accuracy, sample_episodes


def per_episode_sklearn(x: np.ndarray, eps, C: float = 1.0) -> np.ndarray:
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    acc = []
    for e in range(len(eps.support)):
        clf = LogisticRegression(C=C, max_iter=1000).fit(xn[eps.support[e]], eps.support_labels)
        acc.append((clf.predict(xn[eps.query[e]]) == eps.query_labels).mean())
    return np.asarray(acc)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--episodes", type=int, default=600)
    p.add_argument("--json")
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    rows = []
    for dim in (128, 512):
        centers = rng.normal(size=(10, dim))
        labels = np.repeat(np.arange(10), 24)
        x = centers[labels] * 0.3 + rng.normal(size=(len(labels), dim))
        for shots in (1, 5):
            eps = sample_episodes([str(v) for v in labels], 5, shots, 15, args.episodes, seed=shots)
            readout_accuracy(x, sample_episodes([str(v) for v in labels], 5, shots, 15, 8, 99))  # warm-up
            t0 = time.perf_counter()
            ours = readout_accuracy(x, eps)
            t_ours = time.perf_counter() - t0
            t0 = time.perf_counter()
            ref = per_episode_sklearn(x, eps)
            t_ref = time.perf_counter() - t0
            rows.append({
                "dim": dim, "ways": 5, "shots": shots, "episodes": args.episodes,
                "batched_s": round(t_ours, 3), "sklearn_s": round(t_ref, 3),
                "speedup": round(t_ref / t_ours, 1),
                "acc_batched": round(100 * ours.mean(), 2), "acc_sklearn": round(100 * ref.mean(), 2),
            })
    print(f"machine: {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}")
    print("| D | setting | episodes | batched (s) | sklearn per episode (s) | speed-up | acc batched | acc sklearn |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['dim']} | 5-way {r['shots']}-shot | {r['episodes']} | {r['batched_s']} | "
              f"{r['sklearn_s']} | {r['speedup']}x | {r['acc_batched']} | {r['acc_sklearn']} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
