"""What every pretraining task provides to the training loop.

A method is a list of tasks (ARCHITECTURE.md, "One path for the data"). Each task is an
``nn.Module`` that owns its heads, reads the views it needs, runs the shared encoder with its own
task name (so its adapters are used), and returns its loss and a few numbers worth logging. The
training module adds the weighted losses; it knows nothing about any particular objective.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from torch import Tensor, nn

from tympan.augment.pipeline import Views
from tympan.config import merge_options
from tympan.models.encoder import Encoder


@dataclass
class TaskOutput:
    """A task's loss and scalar diagnostics (logged as ``<task>/<key>``)."""

    loss: Tensor
    logs: dict[str, Tensor] = field(default_factory=dict)


class PretextTask(nn.Module):
    """Base of every task: ``forward(encoder, views) -> TaskOutput``.

    Subclasses set ``head_defaults`` and ``param_defaults``; recipe values are overlaid on them
    by :meth:`options`, which rejects unknown keys with their recipe path.
    """

    head_defaults: dict[str, Any] = {}
    param_defaults: dict[str, Any] = {}

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def options(
        self, head: dict[str, Any], params: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(head options, objective params)`` with defaults filled in."""
        return (
            merge_options(self.head_defaults, head, f"tasks[{self.name}].head"),
            merge_options(self.param_defaults, params, f"tasks[{self.name}].params"),
        )

    def encode_pair(self, encoder: Encoder, views: Views) -> tuple[Tensor, Tensor]:
        """Both views through the encoder with this task's adapters, as one batch of ``2B``.

        One forward pass instead of two keeps the device busy; BatchNorm then sees both views,
        as in SimCLR's implementation. Tasks whose backbone path is the same (no adapters of
        their own, e.g. MT-Simple and MT-Split) share one pass per step through ``views.cache``.
        """
        b = views.view1.shape[0]
        key = (id(encoder), encoder.path_key(self.name))
        if key not in views.cache:
            views.cache[key] = encoder.pooled(torch.cat([views.view1, views.view2]), self.name)
        emb = encoder.select(views.cache[key], self.name)
        return emb[:b], emb[b:]

    def forward(self, encoder: Encoder, views: Views) -> TaskOutput:  # pragma: no cover
        raise NotImplementedError
