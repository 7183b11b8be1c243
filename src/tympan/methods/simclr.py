"""SimCLR: projector MLP + NT-Xent on two augmented views.

SimCLR (Chen et al., 2020) is MT-SLVR's first contrastive objective
(``../shared/seeds/000_e1eab6133071efa6.txt``, "Main Experiments & Results"); the views come
from the CLAR pipeline (:mod:`tympan.augment.pipeline`).
"""

from __future__ import annotations

from typing import Any

import torch

from tympan.augment.pipeline import Views
from tympan.config import Recipe
from tympan.errors import ConfigError
from tympan.methods.base import PretextTask, TaskOutput
from tympan.models.encoder import Encoder
from tympan.models.heads import PROJECTOR_DEFAULTS, projector
from tympan.objectives.distributed import gather
from tympan.objectives.nt_xent import nt_xent
from tympan.training.collapse import embedding_stats


class SimCLRTask(PretextTask):
    """``loss = nt_xent(g(f(v1)), g(f(v2)), temperature)`` over the global batch."""

    head_defaults = PROJECTOR_DEFAULTS
    param_defaults = {"temperature": 0.1}

    def __init__(
        self, name: str, embed_dim: int, head: dict[str, Any], params: dict[str, Any],
        recipe: Recipe,
    ) -> None:
        super().__init__(name)
        cfg, opts = self.options(head, params)
        if opts["temperature"] <= 0:
            raise ConfigError(f"recipe field 'tasks[{name}].params.temperature' must be > 0")
        self.temperature = float(opts["temperature"])
        self.projector = projector(embed_dim, cfg)

    def forward(self, encoder: Encoder, views: Views) -> TaskOutput:
        e1, e2 = self.encode_pair(encoder, views)
        z1, z2 = self.projector(e1), self.projector(e2)
        loss = nt_xent(gather(z1), gather(z2), self.temperature)
        with torch.no_grad():
            pos = torch.nn.functional.cosine_similarity(z1, z2).mean()
        return TaskOutput(loss, {"pos_cos": pos, **embedding_stats(e1)})

