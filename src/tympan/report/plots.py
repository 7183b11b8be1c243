"""Figures a person would rather look at than read: training curves, scores with their CIs.

matplotlib with the non-interactive Agg backend, so plotting works on headless machines.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_training_curves(metrics_csv: str | Path, out_png: str | Path) -> Path | None:
    """Loss (and every ``*/loss``) against step from ``metrics.csv``; ``None`` if it is empty."""
    with open(metrics_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    keys = [k for k in (rows[0] if rows else {}) if k == "loss" or k.endswith("/loss")]
    keys += [k for k in (rows[0] if rows else {}) if k.endswith(("/pos_cos", "/embed_std"))]
    if not keys:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for key in keys:
        pts = [(float(r["step"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]
        if not pts:
            continue
        ax = axes[0] if key.endswith("loss") else axes[1]
        ax.plot(*zip(*pts), label=key, linewidth=1)
    axes[0].set(xlabel="step", ylabel="loss", title="training loss")
    axes[1].set(xlabel="step", title="positive-pair cosine / embedding std")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out_png)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_fewshot(results: Sequence[dict[str, Any]], out_png: str | Path) -> Path:
    """Grouped bars of few-shot accuracy with 95% CI error bars, one group per setting."""
    settings = sorted({(r["ways"], r["shots"]) for r in results})
    models = list(dict.fromkeys(r["model"] for r in results))
    width = 0.8 / max(1, len(models))
    fig, ax = plt.subplots(figsize=(1.8 + 2.2 * len(settings), 3.5))
    for i, m in enumerate(models):
        xs, ys, es = [], [], []
        for j, (w, s) in enumerate(settings):
            r = next((r for r in results if r["model"] == m and (r["ways"], r["shots"]) == (w, s)), None)
            if r:
                xs.append(j + i * width)
                ys.append(r["accuracy"])
                es.append(r["ci95"])
        ax.bar(xs, ys, width, yerr=es, capsize=3, label=m)
    ax.set_xticks([j + width * (len(models) - 1) / 2 for j in range(len(settings))])
    ax.set_xticklabels([f"{w}-way {s}-shot" for w, s in settings])
    ax.set(ylabel="accuracy (%) ± 95% CI", ylim=(0, 100), title="few-shot accuracy")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    out = Path(out_png)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
