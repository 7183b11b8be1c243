"""Figures a person would rather look at than read: training curves, scores with their CIs.

matplotlib with the non-interactive Agg backend, so plotting works on headless machines.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from tympan.report.tables import METRIC_TITLES  # noqa: E402


def _save(fig: Any, out_png: str | Path, **savefig: Any) -> Path:
    """Write ``fig`` to ``out_png`` (folders created) at the report resolution and close it."""
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, **savefig)
    plt.close(fig)
    return out


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
    return _save(fig, out_png)


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
    return _save(fig, out_png)


def plot_invariance_heatmap(table: Any, path: str | Path, *, title: str | None = None) -> Path:
    """Heatmap of an invariance table: rows heads (tasks), columns ops then the average, each
    cell annotated with its mean Mahalanobis distance (MT-SLVR, "Ablation Studies" / "Learnt
    Invariance"; lower = more invariant, drawn lighter).

    ``table`` is a :class:`tympan.analysis.invariance.InvarianceTable` or its ``to_json()`` dict,
    or a plain ``{head: {op: value}}`` mapping.
    """
    if hasattr(table, "to_json"):
        table = table.to_json()
    if isinstance(table, dict) and "distances" in table:
        rows = list(table.get("tasks") or table["distances"])
        cols = list(table.get("ops") or []) + ["avg"]
        data = table["distances"]
    else:
        data = dict(table)
        rows = list(data)
        cols = list(dict.fromkeys(c for r in rows for c in data[r]))
    values = [[float(data[r].get(c, float("nan"))) for c in cols] for r in rows]
    fig, ax = plt.subplots(figsize=(1.6 + 1.0 * len(cols), 1.2 + 0.55 * len(rows)))
    im = ax.imshow(values, cmap="magma_r", aspect="auto")
    finite = [v for row in values for v in row if v == v]
    mid = (min(finite) + max(finite)) / 2 if finite else 0.0
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            text = "-" if v != v else f"{v:.2f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    color="white" if v == v and v > mid else "black")
    ax.set_xticks(range(len(cols)))
    ax.set_xticklabels([("Avg" if c == "avg" else c) for c in cols], rotation=30, ha="right")
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(rows)
    ax.set_title(title or "Mahalanobis distance original → augmented (lower = more invariant)",
                 fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return _save(fig, path)


def plot_limited_data(result: Any, out_png: str | Path) -> Path:
    """Test metric against training fraction (log x, in percent), one line per model, error bars
    the standard deviation over the random training subsets; one panel per metric (ROC-AUC and
    mAP for tagging, accuracy for classification). The seed's "Limited Data Music Tagging"
    figure (``../shared/seeds/003_302de149e7ba2620.txt``, Fig. 2), with the full training set as
    the 100% point.

    ``result`` is one :func:`tympan.evaluation.probes.limited_data` result or a mapping
    ``{model name: result}``.
    """
    results = {"probe": result} if isinstance(result, dict) and "fractions" in result else result
    results = dict(results)
    metrics = list(dict.fromkeys(m for r in results.values() for m in r["metrics"]))
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.5), squeeze=False)
    ticks = sorted({100 * float(f["fraction"]) for r in results.values() for f in r["fractions"]})
    for ax, metric in zip(axes[0], metrics):
        for name, r in results.items():
            pts = sorted(
                (100 * float(f["fraction"]), f["mean"].get(metric), f["std"].get(metric))
                for f in r["fractions"] if f["mean"].get(metric) is not None
            )
            if not pts:
                continue
            xs, ys, es = zip(*pts)
            es = [0.0 if e is None or e != e else e for e in es]
            ax.errorbar(xs, ys, yerr=es, marker="o", markersize=4, capsize=3, linewidth=1.2,
                        label=name)
        ax.set_xscale("log")
        ax.set_xticks(ticks)
        ax.set_xticklabels([f"{t:g}%" for t in ticks])
        ax.minorticks_off()
        ax.set(xlabel="training set used", ylabel=f"test {METRIC_TITLES.get(metric, metric)}",
               title=f"limited data: {METRIC_TITLES.get(metric, metric)}")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return _save(fig, out_png)


def _class_colours(classes: Sequence[Any]) -> dict[str, Any]:
    """One distinct colour per class, the same in every panel (tab10, tab20, then a ring)."""
    n = len(classes)
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20" if n <= 20 else "hsv")
    return {str(c): cmap(i if n <= 20 else i / n) for i, c in enumerate(classes)}


def _field(panel: Any, name: str) -> Any:
    return panel[name] if isinstance(panel, dict) else getattr(panel, name)


def plot_umap(
    panels: Any, out_png: str | Path, *, classes: Sequence[Any] | None = None, title: str | None = None
) -> Path:
    """2-D UMAP scatter coloured by class, one panel per run, one shared legend: AudioConFit's
    Fig. 3, "UMAP visualisation of difficult classes ... selected by error analysis on the
    confusion matrix" (``../shared/seeds/002_5040cf44179b95f4.txt``, §3.4).

    ``panels`` maps a run name to a :class:`tympan.analysis.geometry.ConfusedUmap` or a dict
    with ``coords [M, 2]`` and ``labels [M]`` (a single such value is one unnamed panel). Only
    the points whose label is in ``classes`` (default: every label, in order of appearance) are
    drawn; a class keeps its colour across panels.
    """
    if not isinstance(panels, dict) or "coords" in panels:
        panels = {"": panels}
    if not panels:
        raise ValueError("plot_umap: no panels to draw")
    if classes is None:
        classes = list(dict.fromkeys(str(v) for p in panels.values() for v in _field(p, "labels")))
    colours = _class_colours(classes)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.0), squeeze=False)
    handles: dict[str, Any] = {}
    for ax, (name, panel) in zip(axes[0], panels.items()):
        coords = np.asarray(_field(panel, "coords"), dtype=float)
        labels = np.asarray(_field(panel, "labels")).astype(str)
        shown = 0
        for c in classes:
            mask = labels == str(c)
            if not mask.any():
                continue
            shown += int(mask.sum())
            sc = ax.scatter(coords[mask, 0], coords[mask, 1], s=14, alpha=0.8, color=colours[str(c)],
                            edgecolors="none", label=str(c))
            handles.setdefault(str(c), sc)
        ax.set_title(f"{name} ({shown} clips)" if name else f"{shown} clips", fontsize=9)
        ax.set(xlabel="UMAP 1", ylabel="UMAP 2", xticks=[], yticks=[])
    fig.legend([handles[str(c)] for c in classes if str(c) in handles],
               [str(c) for c in classes if str(c) in handles], loc="center left",
               bbox_to_anchor=(1.0, 0.5), fontsize=8, title="class", markerscale=1.5, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, out_png, bbox_inches="tight")  # "tight" keeps the legend beside the panels


def plot_convergence(summary: Any, out_png: str | Path, *, title: str | None = None) -> Path:
    """Validation accuracy against epoch, one mean line per method with a ±std band over its
    seeds/folds and a dotted mark at the first epoch reaching the summary's level (e.g. 95%) of
    the final accuracy: AudioConFit's Fig. 2, "Convergence curve of validation accuracy scores"
    (``../shared/seeds/002_5040cf44179b95f4.txt``, §3.3).

    ``summary`` is a :class:`tympan.analysis.geometry.ConvergenceSummary` or its ``to_json()``.
    """
    if hasattr(summary, "to_json"):
        summary = summary.to_json()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for i, (method, c) in enumerate(summary["methods"].items()):
        colour = f"C{i % 10}"
        epochs = np.asarray(c["epochs"], dtype=float)
        mean = np.asarray(c["mean"], dtype=float)
        ax.plot(epochs, mean, marker="o", markersize=3, linewidth=1.4, color=colour,
                label=f"{method} ({c['runs']} run{'s' if c['runs'] != 1 else ''})")
        std = np.asarray([np.nan if v is None else v for v in c["std"]], dtype=float)
        if np.isfinite(std).any():
            ax.fill_between(epochs, mean - std, mean + std, where=np.isfinite(std), color=colour,
                            alpha=0.2, linewidth=0)
        if c.get("epoch_to_level") is not None:
            ax.axvline(c["epoch_to_level"], color=colour, linestyle=":", linewidth=1)
    level = summary.get("level")
    ax.set(xlabel="epoch", ylabel="validation accuracy (mean ± std)",
           title=title or "convergence" + (f" (dotted: {100 * level:g}% of final)" if level else ""))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return _save(fig, out_png)
