"""Objective names used in recipes (``tasks[].objective``) -> task builders."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tympan.config import Recipe, TaskConfig
from tympan.errors import ConfigError
from tympan.methods.aug_prediction import AugPredictionTask
from tympan.methods.base import PretextTask
from tympan.methods.byol import BYOLTask
from tympan.methods.dino import DINOTask
from tympan.methods.multiview import BarlowTwinsTask, VICRegTask
from tympan.methods.simclr import SimCLRTask
from tympan.methods.simsiam import SimSiamTask
from tympan.methods.workers import PASETask, PretextWorkersTask

TaskBuilder = Callable[[str, int, dict[str, Any], dict[str, Any], Recipe], PretextTask]

#: objective name -> builder(task name, embedding dim, head options, objective params, recipe)
TASKS: dict[str, TaskBuilder] = {
    "nt_xent": SimCLRTask,
    "simsiam": SimSiamTask,
    "aug_prediction": AugPredictionTask,
    "byol": BYOLTask,
    "dino": DINOTask,
    "barlow_twins": BarlowTwinsTask,
    "vicreg": VICRegTask,
    "pretext_workers": PretextWorkersTask,
    "pase": PASETask,
}


def build_task(cfg: TaskConfig, embed_dim: int, recipe: Recipe) -> PretextTask:
    if cfg.objective not in TASKS:
        raise ConfigError(
            f"unknown objective '{cfg.objective}' in recipe field 'tasks[{cfg.name}].objective' "
            f"(known: {', '.join(sorted(TASKS))})"
        )
    return TASKS[cfg.objective](cfg.name, embed_dim, cfg.head, cfg.params, recipe)
