"""``RUN/metrics.csv`` that survives ``--resume``.

Lightning's CSVLogger starts a new file when a run resumes into the same folder, losing the rows
from before the interruption. This logger keeps them: when a resumed run logs its first row at
step ``s``, the earlier rows with a step ``< s`` are kept and those at ``>= s`` (logged after the
last checkpoint, and about to be logged again) are dropped. Files are rewritten atomically.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers.logger import Logger
from pytorch_lightning.utilities import rank_zero_only


class RunCSVLogger(Logger):
    """Appends one row per logging step to ``path``; columns are the union of metric names."""

    def __init__(self, path: str | Path, flush_every: int = 20) -> None:
        super().__init__()
        self.path = Path(path)
        self.flush_every = flush_every
        self._previous: list[dict[str, Any]] = []
        if self.path.is_file():
            with open(self.path, newline="") as f:
                self._previous = list(csv.DictReader(f))
        self._rows: list[dict[str, Any]] = []
        self._started = False

    @property
    def name(self) -> str:
        return "csv"

    @property
    def version(self) -> int:
        return 0

    @property
    def save_dir(self) -> str:
        return str(self.path.parent)

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """The resolved recipe is saved as config.yaml; nothing to add here."""

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if not self._started:
            self._started = True
            if step is not None:
                self._previous = [r for r in self._previous if _step(r) < step]
        row = {"step": step}
        row.update({k: float(v) for k, v in metrics.items()})
        self._rows.append(row)
        if len(self._rows) % self.flush_every == 0:
            self.save()

    @rank_zero_only
    def save(self) -> None:
        rows = self._previous + self._rows
        if not rows:
            return
        keys = list(dict.fromkeys(k for r in rows for k in r))
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.path)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.save()


def _step(row: dict[str, Any]) -> float:
    try:
        return float(row.get("step") or -1)
    except ValueError:
        return -1.0
