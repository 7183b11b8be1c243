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
