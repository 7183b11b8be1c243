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

    def attach(self, encoder: Encoder) -> None:
        """Called once with the shared encoder after every task is built, before training (and
        before a checkpoint is loaded): tasks with a teacher copy it here (:class:`EMATeacher`)."""

    def after_step(self, encoder: Encoder, step: int, max_steps: int) -> None:
        """Called after every optimiser step (``step`` counts finished steps): EMA updates."""

    def forward(self, encoder: Encoder, views: Views) -> TaskOutput:  # pragma: no cover
        raise NotImplementedError


class EMATeacher(nn.Module):
    """A frozen copy of a student (the encoder and the task's heads) that follows it by an
    exponential moving average, ``t = m t + (1 - m) s`` after every step (BYOL; DINO).

    ``momentum(step)`` follows BYOL's cosine schedule from ``base`` to ``final`` over the run
    (:func:`tympan.objectives.byol.ema_momentum`). The teacher is never optimised; it lives in
    the task's state, so checkpoints carry it and ``--resume`` continues it exactly.
    """

    def __init__(self, students: dict[str, nn.Module], base: float, final: float = 1.0) -> None:
        super().__init__()
        import copy

        self.copies = nn.ModuleDict({k: copy.deepcopy(m) for k, m in students.items()})
        self.copies.requires_grad_(False)
        self.base, self.final = float(base), float(final)

    def __getitem__(self, key: str) -> nn.Module:
        return self.copies[key]

    @torch.no_grad()
    def update(self, students: dict[str, nn.Module], step: int, max_steps: int) -> float:
        from tympan.objectives.byol import ema_momentum, ema_update_

        m = ema_momentum(step, max_steps, self.base, self.final)
        for key, student in students.items():
            ema_update_(self.copies[key], student, m)
        return m
