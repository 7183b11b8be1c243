"""Plain-text and Markdown tables that commands print beside their JSON."""

from __future__ import annotations

from typing import Any


def format_parameters(counts: dict[str, Any]) -> str:
    """One line on the encoder's size: shared, per task, and against one network per task
    (the parameter efficiency MT-SLVR reports, seed 001 "Key Results")."""
    per_task = counts.get("per_task") or {}
    parts = [f"encoder parameters: {counts['total']:,} total, {counts['shared']:,} shared"]
    if per_task:
        parts.append("per task " + ", ".join(f"{t} {n:,}" for t, n in per_task.items()))
    n_tasks = round(counts["separate_networks"] / counts["single_network"])
    if n_tasks > 1:
        parts.append(
            f"{100 * counts['ratio_to_separate']:.1f}% of {n_tasks} separate networks "
            f"({counts['separate_networks']:,}); +{100 * counts['extra_over_single']:.1f}% over one"
        )
    return "; ".join(parts)


#: metric key -> column title in probe tables
METRIC_TITLES = {"roc_auc": "ROC-AUC", "map": "mAP", "accuracy": "accuracy"}


def format_probe_table(results: dict[str, dict[str, Any]], digits: int = 4) -> str:
    """Markdown table: one row per model, one column per metric, ``bootstrap mean ± std``
    (multi-view tagging seed 003, "3.2": 50 draws of 50% of the test set).

    ``results`` maps a model name to a :class:`~tympan.evaluation.probes.ProbeResult` JSON.
    """
    metrics = list(dict.fromkeys(m for r in results.values() for m in r["metrics"]))
    head = "| model | " + " | ".join(METRIC_TITLES.get(m, m) for m in metrics) + " |"
    lines = [head, "|---|" + "---|" * len(metrics)]
    for name, r in results.items():
        cells = []
        for m in metrics:
            v = r["metrics"].get(m)
            cells.append(f"{v['mean']:.{digits}f} ± {v['std']:.{digits}f}" if v else "")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
