"""Augmentation prediction: which of the pipeline's ops were applied to each view (MLAP).

MT-SLVR's predictive task (``../shared/seeds/000_e1eab6133071efa6.txt``, "Training Pipeline",
"Main Experiments & Results"): both augmented views go through the encoder with this task's
adapters; an MLP head predicts the multi-hot op labels of the pipeline (both views of a clip went
through the same ops, so they share the labels).
"""

from __future__ import annotations

from typing import Any

import torch

from tympan.augment.pipeline import Views
from tympan.config import Recipe
from tympan.methods.base import PretextTask, TaskOutput
from tympan.models.encoder import Encoder
from tympan.models.heads import mlp
from tympan.objectives.aug_prediction import aug_prediction_loss


class AugPredictionTask(PretextTask):
    """``loss = BCE(head(f(v)), ops applied to v)`` over both views."""

    head_defaults = {"hidden_dim": 512, "num_layers": 2}

    def __init__(
        self, name: str, embed_dim: int, head: dict[str, Any], params: dict[str, Any],
        recipe: Recipe,
    ) -> None:
        super().__init__(name)
        cfg, _ = self.options(head, params)
        self.num_ops = len(recipe.augment.ops)
        self.head = mlp(embed_dim, cfg["hidden_dim"], self.num_ops, cfg["num_layers"])

    def forward(self, encoder: Encoder, views: Views) -> TaskOutput:
        e1, e2 = self.encode_pair(encoder, views)
        logits = self.head(torch.cat([e1, e2], dim=0))
        labels = torch.cat([views.labels, views.labels], dim=0)
        loss = aug_prediction_loss(logits, labels)
        with torch.no_grad():
            acc = ((logits > 0).float() == labels).float().mean()
        return TaskOutput(loss, {"label_acc": acc})
