"""SimSiam: projector + predictor, stop-gradient, symmetrised negative cosine.

MT-SLVR's second contrastive objective (``../shared/seeds/000_e1eab6133071efa6.txt``, "Main
Experiments & Results"). Heads as in SimSiam (Chen & He, 2021): a 3-layer projector whose output
layer is batch-normalised too, and a 2-layer bottleneck predictor; sizes come from the recipe.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from tympan.augment.pipeline import Views
from tympan.config import Recipe
from tympan.methods.base import PretextTask, TaskOutput
from tympan.models.encoder import Encoder
from tympan.models.heads import mlp
from tympan.objectives.simsiam import simsiam_loss


class SimSiamTask(PretextTask):
    """``loss = D(h(z1), z2)/2 + D(h(z2), z1)/2`` with ``z = g(f(v))`` and stop-gradient on z."""

    head_defaults = {"hidden_dim": 2048, "out_dim": 2048, "num_layers": 3, "pred_hidden_dim": 512}

    def __init__(
        self, name: str, embed_dim: int, head: dict[str, Any], params: dict[str, Any],
        recipe: Recipe,
    ) -> None:
        super().__init__(name)
        cfg, _ = self.options(head, params)
        self.projector = mlp(
            embed_dim, cfg["hidden_dim"], cfg["out_dim"], cfg["num_layers"], out_batch_norm=True
        )
        self.predictor = mlp(cfg["out_dim"], cfg["pred_hidden_dim"], cfg["out_dim"], 2)

    def forward(self, encoder: Encoder, views: Views) -> TaskOutput:
        e1, e2 = self.encode_pair(encoder, views)
        z1, z2 = self.projector(e1), self.projector(e2)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        loss = simsiam_loss(p1, p2, z1, z2)
        with torch.no_grad():
            # collapse shows as a per-dimension std of normalised z near 0 (SimSiam, Sec. 4.1)
            z_std = F.normalize(z1.float(), dim=1).std(dim=0).mean()
        return TaskOutput(loss, {"z_std": z_std})
