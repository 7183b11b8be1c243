"""Collapse monitoring: is the representation still spread out?

Non-contrastive objectives (BYOL, DINO-style clustering, Barlow Twins, VICReg; multi-view
tagging seed ``../shared/seeds/003_302de149e7ba2620.txt``, "Discussion") can collapse to a
constant or to a low-dimensional embedding; clustering can also use only a few of its prototypes
(the seed's "uncharted collapse mode"). Every task logs, per step, on its embeddings ``e [B, D]``:

* ``embed_std``: the mean over dimensions of the per-dimension std of the L2-normalised
  embeddings; a well-spread embedding has about ``1 / sqrt(D)``, a collapsed one 0;
* ``effective_rank``: ``exp(H(p))`` with ``p`` the normalised singular values of the centred
  batch (Roy & Vetterli, 2007): between 1 (everything on one line) and ``min(B, D)``;

and clustering adds ``prototype_usage``, the fraction of prototypes that win at least one sample.

:class:`CollapseMonitor` reads those logs, warns once per kind when a run falls below the
thresholds, and keeps the events for the run summary (``pretrain.json`` ``collapse``).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor

log = logging.getLogger("tympan")


@torch.no_grad()
def embedding_stats(e: Tensor) -> dict[str, Tensor]:
    """``embed_std`` and ``effective_rank`` of embeddings ``e [B, D]`` (module docstring)."""
    e = e.detach().float()
    std = F.normalize(e, dim=1).std(dim=0).mean()
    s = torch.linalg.svdvals(e - e.mean(dim=0, keepdim=True))
    p = s / s.sum().clamp_min(1e-12)
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum()
    return {"embed_std": std, "effective_rank": torch.exp(entropy)}


class CollapseMonitor(pl.Callback):
    """Warns when a task's logged ``embed_std`` falls below ``std_ratio / sqrt(D)``, its
    ``effective_rank`` below ``min_rank``, or its ``prototype_usage`` below ``min_usage``.

    The thresholds flag clear failures, not slow drifts: a spread-out embedding has
    ``embed_std ~ 1/sqrt(D)`` and a rank of tens. ``events`` lists the first step of each kind.
    """

    def __init__(self, dims: dict[str, int], std_ratio: float = 0.1, min_rank: float = 2.0,
                 min_usage: float = 0.05) -> None:
        self.dims = dims
        self.std_ratio = std_ratio
        self.min_rank = min_rank
        self.min_usage = min_usage
        self.events: list[dict[str, Any]] = []
        self.last: dict[str, float] = {}
        self._seen: set[tuple[str, str]] = set()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        metrics = trainer.callback_metrics
        for task, dim in self.dims.items():
            checks = {
                "embed_std": self.std_ratio / math.sqrt(max(1, dim)),
                "effective_rank": self.min_rank,
                "prototype_usage": self.min_usage,
            }
            for key, floor in checks.items():
                value = metrics.get(f"{task}/{key}")
                if value is None:
                    continue
                v = float(value)
                self.last[f"{task}/{key}"] = v
                if (math.isfinite(v) and v >= floor) or (task, key) in self._seen:
                    continue
                self._seen.add((task, key))
                event = {"step": int(trainer.global_step), "task": task, "metric": key,
                         "value": v, "threshold": floor}
                self.events.append(event)
                log.warning(
                    "possible collapse of task '%s' at step %d: %s = %.4g (threshold %.4g); "
                    "check the learning rate, the EMA/temperature settings and the views",
                    task, event["step"], key, v, floor,
                )

    def summary(self) -> dict[str, Any]:
        return {"collapsed": bool(self.events), "events": self.events, "last": self.last}
