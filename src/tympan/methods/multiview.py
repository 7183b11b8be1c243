"""Barlow Twins and VICReg: a shared projector on both views and a loss on the global batch.

Two of the five methods of the multi-view tagging seed
(``../shared/seeds/003_302de149e7ba2620.txt``, "Pretext tasks"), on the seed's shared head (two
blocks of linear, BatchNorm, ReLU; 1024 then 2048 units; :data:`SEED_HEAD`). Both losses use
batch statistics, so the projections are gathered across processes first
(:func:`tympan.objectives.distributed.gather`).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from tympan.augment.pipeline import Views
from tympan.config import Recipe
from tympan.errors import ConfigError
from tympan.methods.base import PretextTask, TaskOutput
from tympan.models.encoder import Encoder
from tympan.models.heads import PROJECTOR_DEFAULTS, projector
from tympan.objectives.barlow_twins import barlow_twins_loss
from tympan.objectives.distributed import gather
from tympan.objectives.vicreg import vicreg_terms
from tympan.training.collapse import embedding_stats

#: the seed's head shared by every method: 1024 -> 1024 -> 2048, each block linear, BN, ReLU
SEED_HEAD = {**PROJECTOR_DEFAULTS, "hidden_dim": 1024, "out_dim": 2048, "num_layers": 2,
             "out_batch_norm": True, "out_relu": True}


class ProjectedPairTask(PretextTask):
    """``loss = objective(gather(g(f(v1))), gather(g(f(v2))))``; subclasses set the objective."""

    head_defaults = SEED_HEAD

    def __init__(
        self, name: str, embed_dim: int, head: dict[str, Any], params: dict[str, Any],
        recipe: Recipe,
    ) -> None:
        super().__init__(name)
        cfg, self.params = self.options(head, params)
        self.check(self.params)
        self.projector = projector(embed_dim, cfg)

    def check(self, params: dict[str, Any]) -> None:
        """Reject out-of-range objective parameters (``tasks[name].params.<key>``)."""

    def objective(self, z1: Tensor, z2: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError

    def forward(self, encoder: Encoder, views: Views) -> TaskOutput:
        e1, e2 = self.encode_pair(encoder, views)
        loss, logs = self.objective(gather(self.projector(e1)), gather(self.projector(e2)))
        return TaskOutput(loss, {**logs, **embedding_stats(e1)})

    def _positive(self, *keys: str, allow_zero: bool = True) -> None:
        for key in keys:
            v = self.params[key]
            if not isinstance(v, (int, float)) or v < 0 or (v == 0 and not allow_zero):
                raise ConfigError(
                    f"recipe field 'tasks[{self.name}].params.{key}' must be a number "
                    f"{'>= 0' if allow_zero else '> 0'}, got {v!r}"
                )


class BarlowTwinsTask(ProjectedPairTask):
    """Barlow Twins (Zbontar et al., 2021): the cross-correlation of the standardised projections
    towards the identity; ``lambda_offdiag`` weighs the off-diagonal (redundancy) term."""

    param_defaults = {"lambda_offdiag": 5e-3}

    def check(self, params: dict[str, Any]) -> None:
        self._positive("lambda_offdiag")

    def objective(self, z1: Tensor, z2: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        return barlow_twins_loss(z1, z2, float(self.params["lambda_offdiag"])), {}


class VICRegTask(ProjectedPairTask):
    """VICReg (Bardes et al., 2022): invariance, variance and covariance terms weighted
    ``sim_coeff / std_coeff / cov_coeff`` (25/25/1 by default as in VICReg; the seed's public
    code used 1/1/1, recipe ``vicreg_seed``)."""

    param_defaults = {"sim_coeff": 25.0, "std_coeff": 25.0, "cov_coeff": 1.0, "gamma": 1.0}

    def check(self, params: dict[str, Any]) -> None:
        self._positive("sim_coeff", "std_coeff", "cov_coeff")
        self._positive("gamma", allow_zero=False)

    def objective(self, z1: Tensor, z2: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        p = self.params
        inv, var, cov = vicreg_terms(z1, z2, gamma=float(p["gamma"]))
        loss = p["sim_coeff"] * inv + p["std_coeff"] * var + p["cov_coeff"] * cov
        return loss, {"invariance": inv.detach(), "variance": var.detach(),
                      "covariance": cov.detach()}


