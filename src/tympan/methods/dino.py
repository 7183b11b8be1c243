"""DINO-style clustering: a student matches an EMA teacher's sharpened, centred prototype
assignment of the other view.

The "clustering" method of the multi-view tagging seed
(``../shared/seeds/003_302de149e7ba2620.txt``, "Pretext tasks"; "Discussion": "the EMA momentum
for teacher and centering updates, temperature settings for the sharpening and centering process
to avoid collapse"). Student: the shared encoder, the seed's shared head, then ``prototypes``
logits from a weight-normalised linear layer on the L2-normalised projection (DINO's last layer).
Teacher: an :class:`~tympan.methods.base.EMATeacher` copy of all three (momentum 0.996 -> 1,
cosine). Teacher temperature warms up linearly 0.02 -> 0.04 over ``teacher_temp_warmup_steps``
(default: the first 30% of the run), student temperature 0.1, centre momentum 0.9
(:mod:`tympan.objectives.dino`). Logged: ``prototype_usage``, the fraction of prototypes that win
at least one sample of the global batch, out of the ``min(K, N)`` that ``N`` samples could win
(the seed observed runs that use only a subset).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tympan.augment.pipeline import Views
from tympan.config import Recipe
from tympan.errors import ConfigError
from tympan.methods.base import EMATeacher, PretextTask, TaskOutput
from tympan.methods.byol import check_momentum
from tympan.methods.multiview import SEED_HEAD
from tympan.models.encoder import Encoder
from tympan.models.heads import projector
from tympan.objectives.dino import (
    dino_loss, prototype_usage, teacher_probs, teacher_temperature, update_center,
)
from tympan.objectives.distributed import gather
from tympan.training.collapse import embedding_stats


class PrototypeHead(nn.Module):
    """Projector, L2 normalisation, then a weight-normalised linear layer to ``K`` logits."""

    def __init__(self, embed_dim: int, head: dict[str, Any], prototypes: int) -> None:
        super().__init__()
        self.projector = projector(embed_dim, head)
        self.prototypes = nn.utils.parametrizations.weight_norm(
            nn.Linear(head["out_dim"], prototypes, bias=False)
        )

    def forward(self, e: Tensor) -> Tensor:
        return self.prototypes(F.normalize(self.projector(e), dim=1))


class DINOTask(PretextTask):
    """DINO-style clustering with an EMA teacher, centring and sharpening (module docstring)."""

    head_defaults = {**SEED_HEAD, "prototypes": 512}
    param_defaults = {
        "momentum": 0.996, "final_momentum": 1.0, "student_temp": 0.1,
        "teacher_temp": 0.04, "warmup_teacher_temp": 0.02, "teacher_temp_warmup_steps": None,
        "center_momentum": 0.9,
    }

    def __init__(
        self, name: str, embed_dim: int, head: dict[str, Any], params: dict[str, Any],
        recipe: Recipe,
    ) -> None:
        super().__init__(name)
        cfg, p = self.options(head, params)
        check_momentum(name, p)
        k = cfg["prototypes"]
        if not isinstance(k, int) or k < 2:
            raise ConfigError(f"recipe field 'tasks[{name}].head.prototypes' must be an integer >= 2")
        for key in ("student_temp", "teacher_temp", "warmup_teacher_temp"):
            if not p[key] > 0:
                raise ConfigError(f"recipe field 'tasks[{name}].params.{key}' must be > 0")
        if not 0.0 <= p["center_momentum"] < 1.0:
            raise ConfigError(f"recipe field 'tasks[{name}].params.center_momentum' must be in [0, 1)")
        self.params = p
        self.warmup_steps = (
            int(p["teacher_temp_warmup_steps"]) if p["teacher_temp_warmup_steps"] is not None
            else int(0.3 * recipe.train.max_steps)
        )
        self.head = PrototypeHead(embed_dim, {k2: cfg[k2] for k2 in SEED_HEAD}, k)
        self.teacher: EMATeacher | None = None
        self.register_buffer("center", torch.zeros(1, k))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def attach(self, encoder: Encoder) -> None:
        self.teacher = EMATeacher({"encoder": encoder, "head": self.head},
                                  self.params["momentum"], self.params["final_momentum"])

    def after_step(self, encoder: Encoder, step: int, max_steps: int) -> None:
        self.teacher.update({"encoder": encoder, "head": self.head}, step, max_steps)
        self.step.fill_(step)

    def forward(self, encoder: Encoder, views: Views) -> TaskOutput:
        if self.teacher is None:
            raise RuntimeError("DINOTask.attach(encoder) must be called before training")
        p = self.params
        b = views.view1.shape[0]
        e1, e2 = self.encode_pair(encoder, views)
        s = self.head(torch.cat([e1, e2]))
        t_temp = teacher_temperature(int(self.step), self.warmup_steps,
                                     p["warmup_teacher_temp"], p["teacher_temp"])
        with torch.no_grad():
            t_enc = self.teacher["encoder"]
            t_emb = t_enc.select(t_enc.pooled(torch.cat([views.view1, views.view2]), self.name),
                                 self.name)
            t = self.teacher["head"](t_emb).float()
        loss = dino_loss(s[:b], s[b:], t[:b], t[b:], self.center, p["student_temp"], t_temp)
        with torch.no_grad():
            t_all = gather(t)
            usage = prototype_usage(teacher_probs(t_all, self.center, t_temp))
            k = t_all.shape[1]
            # a batch of N rows can win at most min(K, N) prototypes: report usage out of that,
            # so the collapse threshold does not depend on the batch size
            used = usage.used_fraction * (k / min(k, t_all.shape[0]))
            self.center.copy_(update_center(self.center, t_all, p["center_momentum"]))
        return TaskOutput(loss, {
            "prototype_usage": used, "assignment_entropy": usage.entropy,
            "teacher_temp": torch.tensor(t_temp), **embedding_stats(e1),
        })
