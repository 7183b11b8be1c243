"""How stable the CI estimates are on smaller downstream sets (seed 004, section IX, Figs. 3-4).

Zaiem & Parcollet, "Pretext-task selection by conditional independence"
(``../shared/seeds/004_f3e19d7efff003e6.txt``), section IX ("Computational efficiency"):
"we consider subsets of VoxCeleb1 using a growing number of considered speakers ..., and
subsets of Medley-solos-DB using an increasing number of samples per considered instrument
class. For each of these considered numbers, we run 10 experiments with sampled speakers and
music excerpts. We get the CI estimation for every subset and plot the boxplot of the obtained
values" (Fig. 3). :func:`robustness_study` does both:

* axis ``"n_classes"``: ``size`` downstream classes drawn at random (without replacement), with
  every clip of those classes;
* axis ``"per_class"``: ``size`` clips drawn from every class (all of a class's clips when it has
  fewer; the record's ``n_clips`` says how many were used).

Each draw's estimates come from one :func:`tympan.pretext.hsic.class_hsic` call (every
candidate and class batched), with the RBF width re-estimated on the draw, exactly as a user
with only that subset would compute it. Each draw's ranking is also compared with the ranking
on all the data by Kendall's tau (the seed's "the ranking of the pretext tasks is not altered
even when we take only 200 speakers"). :func:`plot_robustness` draws the boxplots.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import kendalltau

from tympan.errors import ConfigError, TympanError
from tympan.pretext.hsic import ArrayLike, SigmaSpec, class_hsic

__all__ = [
    "AXES",
    "format_robustness",
    "plot_robustness",
    "robustness_study",
    "robustness_to_json",
    "summarise_robustness",
]

AXES = ("n_classes", "per_class")
_GRID = (2, 5, 10, 20, 50, 100, 200, 500, 1000, 1500, 2000, 5000)


def _grid(top: int) -> list[int]:
    """Default sizes: 2, 5, 10, 20, 50, ... below ``top``, then ``top`` itself."""
    return [g for g in _GRID if g < top] + [top]


def _sizes(sizes: Sequence[int] | None, top: int, axis: str) -> list[int]:
    if sizes is None:
        return _grid(top)
    out = []
    for s in sizes:
        if isinstance(s, bool) or int(s) != s or s < 2:
            raise ConfigError(f"robustness_study: {axis} sizes must be integers >= 2, got {s!r}")
        if s > top:
            raise ConfigError(f"robustness_study: {axis} size {s} exceeds the {top} available "
                              f"({'classes' if axis == 'n_classes' else 'clips in the largest class'})")
        out.append(int(s))
    return sorted(set(out))


def _ci(X: Any, z: Mapping[str, np.ndarray], y: np.ndarray, idx: np.ndarray, sigma: SigmaSpec,
        seed: int) -> dict[str, float]:
    sub = {k: v[idx] for k, v in z.items()}
    return class_hsic(X[idx], sub, y[idx], sigma=sigma, max_per_class=None, seed=seed).aggregate()


def _tau(a: Mapping[str, float], b: Mapping[str, float]) -> float:
    names = list(b)
    if len(names) < 2:
        return math.nan
    t = kendalltau([a[n] for n in names], [b[n] for n in names]).statistic
    return float(t) if t is not None and np.isfinite(t) else math.nan


def robustness_study(
    X: ArrayLike,
    labels: Mapping[str, ArrayLike],
    y: Sequence[Any] | np.ndarray,
    *,
    n_classes: Sequence[int] | None = None,
    per_class: Sequence[int] | None = None,
    axes: Sequence[str] = AXES,
    draws: int = 10,
    sigma: SigmaSpec = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """CI estimates on growing random subsets (seed section IX, Fig. 3).

    Args:
        X: ``[n, d]`` clip features (e.g. :func:`tympan.pretext.select.selection_inputs`'s X).
        labels: ``{name: z [n]}`` clip-level pretext labels.
        y: ``[n]`` downstream classes (at least 2 clips each).
        n_classes: numbers of classes to draw (default 2, 5, 10, 20, ... up to all classes).
        per_class: clips per class to draw (default 2, 5, 10, ... up to the largest class).
        axes: which of ``"n_classes"``, ``"per_class"`` to run.
        draws: random subsets per size (the seed: 10). A size that takes all the data is
            computed once (every draw would be identical).
        sigma: RBF width (default: median heuristic on each draw).
        seed: seeds every draw (draw ``d`` of size ``s`` on axis ``a`` is reproducible).

    Returns:
        records ``{"axis", "size", "draw", "candidate", "ci", "n_clips", "n_classes",
        "kendall_tau"}``, where ``kendall_tau`` is the draw's Kendall tau between its CI values
        and those on all the data (the same for every candidate of a draw), plus, per candidate,
        one record with ``axis="full"`` holding the estimate on all the data.
    """
    bad = [a for a in axes if a not in AXES]
    if bad or not axes:
        raise ConfigError(f"robustness_study: axes must be among {AXES}, got {list(axes)!r}")
    if isinstance(draws, bool) or int(draws) != draws or draws < 1:
        raise ConfigError(f"robustness_study: draws must be a positive integer, got {draws!r}")
    y_arr = np.asarray(y)
    if y_arr.ndim != 1:
        raise TympanError(f"robustness_study: y has shape {y_arr.shape}; pass one class per clip")
    n = len(y_arr)
    if not isinstance(labels, Mapping) or not labels:
        raise TympanError("robustness_study: labels must be a non-empty {name: values [n]} dict")
    z = {str(k): np.asarray(v, dtype=np.float64) for k, v in labels.items()}
    Xa = X if isinstance(X, torch.Tensor) else np.asarray(X)  # indexed by row below
    if len(Xa) != n:
        raise TympanError(f"robustness_study: X has {len(Xa)} clips but y has {n} labels")
    classes, inv, counts = np.unique(y_arr, return_inverse=True, return_counts=True)
    members = [np.flatnonzero(inv == c) for c in range(len(classes))]

    full = _ci(Xa, z, y_arr, np.arange(n), sigma, seed)  # also validates the inputs
    records: list[dict[str, Any]] = [
        {"axis": "full", "size": None, "draw": 0, "candidate": k, "ci": v, "n_clips": n,
         "n_classes": len(classes), "kendall_tau": 1.0} for k, v in full.items()
    ]
    for a_i, axis in enumerate(axes):
        top = len(classes) if axis == "n_classes" else int(counts.max())
        for size in _sizes(n_classes if axis == "n_classes" else per_class, top, axis):
            takes_all = size == top if axis == "n_classes" else size >= int(counts.max())
            for d in range(1 if takes_all else int(draws)):  # draws, not clips
                rng = np.random.default_rng([int(seed), a_i, size, d])
                if axis == "n_classes":
                    chosen = np.sort(rng.choice(len(classes), size, replace=False))
                    idx = np.concatenate([members[c] for c in chosen])
                else:
                    idx = np.concatenate([m if len(m) <= size else rng.choice(m, size, replace=False)
                                          for m in members])
                idx = np.sort(idx)
                ci = _ci(Xa, z, y_arr, idx, sigma, seed)
                tau = _tau(ci, full)
                n_cls = int(len(np.unique(y_arr[idx])))
                records += [{"axis": axis, "size": size, "draw": d, "candidate": k, "ci": v,
                             "n_clips": int(len(idx)), "n_classes": n_cls, "kendall_tau": tau}
                            for k, v in ci.items()]
    return records


def summarise_robustness(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per (axis, size, candidate): draws, mean, std (ddof 1, 0 for one draw), min, max of the CI
    estimate and the mean Kendall tau of the draws with the full-data ranking."""
    groups: dict[tuple[str, Any, str], list[Mapping[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["axis"], r["size"], r["candidate"]), []).append(r)
    out = []
    for (axis, size, cand), rs in groups.items():
        v = np.array([r["ci"] for r in rs], dtype=np.float64)
        taus = np.array([r["kendall_tau"] for r in rs], dtype=np.float64)
        out.append({"axis": axis, "size": size, "candidate": cand, "draws": len(rs), "mean": float(v.mean()),
                    "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "min": float(v.min()),
                    "max": float(v.max()),
                    "kendall_tau_mean": float(np.nanmean(taus)) if np.isfinite(taus).any() else math.nan})
    return out


def format_robustness(records: Sequence[Mapping[str, Any]]) -> str:
    """Human table: per axis and size, each candidate's mean +- std over draws and the mean tau."""
    summ = summarise_robustness(records)
    lines = ["CI estimate robustness (seed 004, section IX): mean +- std over draws; "
             "tau = Kendall tau of a draw's ranking with the full-data ranking"]
    cands = list(dict.fromkeys(s["candidate"] for s in summ))
    width = max(len(c) for c in cands)
    for axis in ["full", *AXES]:
        rows = [s for s in summ if s["axis"] == axis]
        if not rows:
            continue
        for size in sorted({s["size"] for s in rows}, key=lambda v: -1 if v is None else v):
            part = [s for s in rows if s["size"] == size]
            head = "all data" if axis == "full" else f"{axis} = {size}"
            lines.append(f"{head}  (draws: {part[0]['draws']}, tau: {part[0]['kendall_tau_mean']:.2f})")
            lines += [f"  {s['candidate']:<{width}}  {s['mean']:.3e} +- {s['std']:.1e}" for s in part]
    return "\n".join(lines)


def robustness_to_json(records: Sequence[Mapping[str, Any]], path: str | Path | None = None,
                       indent: int = 2) -> str:
    """``{"records": [...], "summary": [...]}`` as JSON text (NaN written as null); also written
    to ``path`` when given (atomically)."""

    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, np.generic):
            return clean(v.item())
        return v

    doc = {"records": [{k: clean(v) for k, v in r.items()} for r in records],
           "summary": [{k: clean(v) for k, v in s.items()} for s in summarise_robustness(records)]}
    text = json.dumps(doc, indent=indent)
    if path is not None:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.tmp{os.getpid()}")
        tmp.write_text(text + "\n")
        os.replace(tmp, p)
    return text


def plot_robustness(records: Sequence[Mapping[str, Any]], out_png: str | Path, *,
                    log_scale: bool | None = None) -> Path:
    """Boxplots of the CI estimates (seed Fig. 3): one panel per axis; within a panel, one group
    per subset size with one box per candidate (coloured, legend on the right), and the
    full-data value as a dashed line per candidate. ``log_scale`` (default: when every value
    is positive and they span more than a factor 20) puts the CI axis on a log scale."""
    import matplotlib

    matplotlib.use("Agg")  # headless, as tympan.report.plots
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    axes = [a for a in AXES if any(r["axis"] == a for r in records)]
    if not axes:
        raise TympanError("plot_robustness: no subset records; run robustness_study with at least one axis")
    cands = list(dict.fromkeys(r["candidate"] for r in records))
    vals = np.array([r["ci"] for r in records], dtype=np.float64)
    if log_scale is None:
        pos = vals[np.isfinite(vals)]
        log_scale = bool(pos.size and (pos > 0).all() and pos.max() / pos.min() > 20)
    colours = plt.get_cmap("tab10" if len(cands) <= 10 else "tab20")
    full = {r["candidate"]: r["ci"] for r in records if r["axis"] == "full"}
    n_sizes = max(len({r["size"] for r in records if r["axis"] == a}) for a in axes)
    panel_w = max(5.0, 1.5 + 0.18 * len(cands) * n_sizes)
    fig, panels = plt.subplots(1, len(axes), figsize=(panel_w * len(axes) + 1.8, 4.8), squeeze=False)
    for ax, axis in zip(panels[0], axes):
        sizes = sorted({r["size"] for r in records if r["axis"] == axis})
        width = 0.8 / len(cands)
        for j, cand in enumerate(cands):
            data = [[r["ci"] for r in records if r["axis"] == axis and r["size"] == s and r["candidate"] == cand]
                    for s in sizes]
            pos = np.arange(len(sizes)) + (j - (len(cands) - 1) / 2) * width
            bp = ax.boxplot(data, positions=pos, widths=width * 0.85, patch_artist=True, manage_ticks=False,
                            showfliers=True, flierprops={"markersize": 2})
            for box in bp["boxes"]:
                box.set_facecolor(colours(j % colours.N))
                box.set_alpha(0.8)
            for med in bp["medians"]:
                med.set_color("black")
            if cand in full:
                ax.axhline(full[cand], color=colours(j % colours.N), ls="--", lw=0.8, alpha=0.7)
        ax.set_xticks(np.arange(len(sizes)))
        ax.set_xticklabels([str(s) for s in sizes])
        ax.set_xlabel("classes drawn" if axis == "n_classes" else "clips per class")
        ax.set_ylabel("CI estimate HSIC(X, Z | Y)  (lower = more useful)")
        ax.set_title("growing number of classes" if axis == "n_classes" else "growing clips per class")
        if log_scale:
            ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)
    handles = [Patch(color=colours(j % colours.N), label=c) for j, c in enumerate(cands)]
    fig.legend(handles=handles, loc="center right", title="candidate", fontsize=8)
    legend_w = 0.4 + 0.07 * max(len(c) for c in cands)  # inches kept free on the right
    fig.tight_layout(rect=(0, 0, 1 - legend_w / fig.get_figwidth(), 1))
    p = Path(out_png)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=120)
    plt.close(fig)
    return p
