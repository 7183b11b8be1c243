"""One-command reproductions of the seeds' comparisons on the embedded corpus."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tympan.config import Recipe, load_recipe


def recipe_with_steps(
    name: str | Path | dict[str, Any], max_steps: int | None,
    overrides: dict[str, Any] | None,
) -> Recipe:
    """Load recipe ``name`` (packaged name, path or dict) with ``overrides`` (dotted keys, as
    ``--set``), and ``train.max_steps`` set to ``max_steps`` when it is given (non-zero)."""
    extra = dict(overrides or {})
    if max_steps:
        extra["train.max_steps"] = max_steps
    return load_recipe(name, extra or None)


def write_results(out: Path, summary: dict[str, Any], text: str) -> dict[str, Any]:
    """Write a reproduction's ``results.md`` (``text``) and ``results.json`` (``summary``) into
    ``out``; return ``summary`` with the markdown added under ``"markdown"``."""
    (out / "results.md").write_text(text)
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    summary["markdown"] = text
    return summary
