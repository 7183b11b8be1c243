"""The Lightning module shared by every pretraining method.

It owns the encoder, the tasks (heads + objectives) and the view pipeline, and does per step:
waveforms -> two views + op labels (on the device) -> each task's loss -> weighted sum. Which
objectives run is entirely the recipe's ``tasks`` list; nothing here is method-specific.

Schedule: linear warm-up then cosine decay to zero, stepped every optimiser step with the horizon
``max_steps`` (one of the public-code defects listed in the seeds README is a per-batch step with
an epoch horizon; here both are in steps).
"""

from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from tympan.augment.pipeline import ViewPipeline
from tympan.config import Recipe
from tympan.methods.registry import build_task
from tympan.methods.workers import FrameLabels
from tympan.models.encoder import Encoder


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """Learning-rate factor: ``step/warmup`` during warm-up, then half a cosine down to 0."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class PretrainModule(pl.LightningModule):
    """Encoder + tasks + views; ``training_step`` returns the weighted sum of task losses."""

    def __init__(
        self, recipe: Recipe, seed: int = 0, frame_labels: FrameLabels | None = None
    ) -> None:
        """``frame_labels``: the pretext-task labels of the training items (rows in dataset
        order) for worker tasks (``pretext_workers``, ``pase``; seed 004)."""
        super().__init__()
        self.recipe = recipe
        self.seed = seed
        self.encoder = Encoder(recipe)
        self.tasks = nn.ModuleDict(
            {t.name: build_task(t, self.encoder.dim, recipe) for t in recipe.tasks}
        )
        for task in self.tasks.values():
            task.attach(self.encoder)  # teachers copy the encoder before any weights are loaded
            if hasattr(task, "use_labels"):
                task.use_labels(frame_labels)
        # tasks that fill the shared backbone pass run first (workers: frames of both views,
        # whose pooled output two-view objectives reuse); the weighted sum does not depend on it
        self.task_order = sorted(
            self.tasks, key=lambda n: not getattr(self.tasks[n], "runs_first", False)
        )
        self.weights = {t.name: t.weight for t in recipe.tasks}
        self.views = ViewPipeline(recipe.augment)
        self._generator: torch.Generator | None = None
        self._generator_state: torch.Tensor | None = None

    # -- randomness of the views: its own generator on the device, saved in checkpoints so a
    #    resumed run draws the same augmentations as an uninterrupted one
    @property
    def generator(self) -> torch.Generator:
        if self._generator is None or self._generator.device != self.device:
            g = torch.Generator(device=self.device)
            g.manual_seed(self.seed * 1_000_003 + self.global_rank)
            if self._generator_state is not None:
                g.set_state(self._generator_state)
            self._generator = g
        return self._generator

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["view_generator_state"] = self.generator.get_state().cpu()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("view_generator_state")
        if state is not None:
            self._generator_state = state
            self._generator = None

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        wav = batch["audio"]
        if "audio2" in batch:  # two segments of one track (views.kind: same_track)
            views = self.views.pair(wav, batch["audio2"], self.generator)
        else:
            views = self.views(wav, self.generator)
        # where the crops came from, for targets computed from the clean audio (workers)
        views.clean, views.index = wav, batch.get("index")
        views.start, views.length = batch.get("start"), batch.get("length")
        total = wav.new_zeros(())
        logs: dict[str, torch.Tensor] = {}
        for name in self.task_order:
            task = self.tasks[name]
            out = task(self.encoder, views)
            total = total + self.weights[name] * out.loss
            logs[f"{name}/loss"] = out.loss.detach()
            for key, value in out.logs.items():
                logs[f"{name}/{key}"] = value.detach()
        logs["loss"] = total.detach()
        logs["lr"] = torch.tensor(self.optimizers().param_groups[0]["lr"])
        self.log_dict(logs, prog_bar=False, on_step=True, batch_size=wav.shape[0], sync_dist=False)
        self.log("train_loss", total.detach(), prog_bar=True, on_step=True, batch_size=wav.shape[0])
        return total

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # after the optimiser step: EMA teachers follow their students
        for task in self.tasks.values():
            task.after_step(self.encoder, self.global_step, self.recipe.train.max_steps)

    def configure_optimizers(self) -> Any:
        t = self.recipe.train
        trainable = [p for p in self.parameters() if p.requires_grad]  # not the EMA teachers
        opt = torch.optim.Adam(trainable, lr=t.lr, weight_decay=t.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: warmup_cosine(step, t.warmup_steps, t.max_steps)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
