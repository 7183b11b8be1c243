"""What every pretraining task provides to the training loop.

A method is a list of tasks (ARCHITECTURE.md, "One path for the data"). Each task is an
``nn.Module`` that owns its heads, reads the views it needs, runs the shared encoder with its own
task name (so its adapters are used), and returns its loss and a few numbers worth logging. The
training module adds the weighted losses; it knows nothing about any particular objective.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

from tympan.augment.pipeline import Views
from tympan.models.encoder import Encoder


@dataclass
class TaskOutput:
    """A task's loss and scalar diagnostics (logged as ``<task>/<key>``)."""

    loss: Tensor
    logs: dict[str, Tensor] = field(default_factory=dict)


class PretextTask(nn.Module):
    """Base of every task: ``forward(encoder, views) -> TaskOutput``."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def encode_pair(self, encoder: Encoder, views: Views) -> tuple[Tensor, Tensor]:
        """Both views through the encoder with this task's adapters, as one batch of ``2B``.

        One forward pass instead of two keeps the device busy; BatchNorm then sees both views,
        as in SimCLR's implementation.
        """
        import torch

        b = views.view1.shape[0]
        emb = encoder(torch.cat([views.view1, views.view2], dim=0), self.name)
        return emb[:b], emb[b:]

    def forward(self, encoder: Encoder, views: Views) -> TaskOutput:  # pragma: no cover
        raise NotImplementedError
