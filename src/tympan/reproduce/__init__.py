"""One-command reproductions of the seeds' comparisons on the embedded corpus."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_results(out: Path, summary: dict[str, Any], text: str) -> dict[str, Any]:
    """Write a reproduction's ``results.md`` (``text``) and ``results.json`` (``summary``) into
    ``out``; return ``summary`` with the markdown added under ``"markdown"``."""
    (out / "results.md").write_text(text)
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    summary["markdown"] = text
    return summary
