"""The Lightning module shared by every pretraining method.

It owns the encoder, the tasks (heads + objectives) and the view pipeline, and does per step:
waveforms -> two views + op labels (on the device) -> each task's loss -> weighted sum. Which
objectives run is entirely the recipe's ``tasks`` list; nothing here is method-specific.

Schedule: linear warm-up then cosine decay to zero, stepped every optimiser step with the horizon
``max_steps`` (one of the public-code defects listed in the seeds README is a per-batch step with
an epoch horizon; here both are in steps).

Scale (``docs/scale.md``): ``train.batch_size`` is per process, so the effective batch is
``batch_size x trainer.world_size`` and the learning rate applied is ``train.lr`` scaled by
``train.lr_scaling`` against ``train.base_batch_size`` (:func:`scaled_lr`). On the GPU path the
convolution weights may go to ``channels_last`` and the backbones through ``torch.compile``
(``train.channels_last``, ``train.compile``); both are applied in :meth:`PretrainModule.setup`,
once the device is known and before DDP wraps the module.
"""

from __future__ import annotations

import logging
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
from tympan.objectives import distributed

log = logging.getLogger("tympan")


def effective_batch(per_device_batch: int, world_size: int) -> int:
    """The global batch of one optimiser step: every process steps ``per_device_batch`` clips."""
    return per_device_batch * max(1, world_size)


def scaled_lr(
    lr: float, per_device_batch: int, world_size: int, base_batch_size: int | None = None,
    rule: str = "none",
) -> float:
    """The learning rate applied for a global batch of ``per_device_batch x world_size``.

    ``lr`` was tuned for a global batch of ``base_batch_size`` (``None``: ``per_device_batch``,
    one process). With ``k = effective / base``: ``rule="linear"`` gives ``lr * k`` (Goyal et
    al., 2017, "Accurate, Large Minibatch SGD"), ``"sqrt"`` gives ``lr * sqrt(k)`` (the usual
    rule for Adam-type optimisers), ``"none"`` gives ``lr``.
    """
    base = per_device_batch if base_batch_size is None else base_batch_size
    k = effective_batch(per_device_batch, world_size) / base
    if rule == "none":
        return lr
    if rule == "linear":
        return lr * k
    if rule == "sqrt":
        return lr * math.sqrt(k)
    raise ValueError(f"unknown learning-rate scaling rule {rule!r} (none, linear or sqrt)")


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
        #: what :meth:`setup` and :meth:`configure_optimizers` chose (``pretrain.json`` records it)
        self.channels_last = False
        self.compiled = False
        self.effective_batch_size = recipe.train.batch_size
        self.applied_lr = recipe.train.lr
        self.gather_world_size = 1

    # -- the GPU path: memory format and compilation, once the device is known and before the
    #    strategy moves the module and wraps it in DDP (so DDP's gradient buckets see the final
    #    parameter layout); both keep every state_dict key as it is
    def setup(self, stage: str) -> None:
        t = self.recipe.train
        device = self.trainer.strategy.root_device
        want = t.channels_last if isinstance(t.channels_last, bool) else device.type == "cuda"
        if want and not self.channels_last:
            # 4-D weights only (conv kernels, encoder and EMA teachers). The log-mel input stays
            # contiguous: a convolution with channels_last weights returns channels_last output
            # for either input layout, so the rest of the network follows the weights.
            self.to(memory_format=torch.channels_last)
            self.channels_last = True
        if t.compile and not self.compiled:
            # nn.Module.compile is in place: the module keeps its parameters and their names
            # (no ``_orig_mod.`` prefix in checkpoints or encoder.safetensors)
            for module in self.modules():
                if isinstance(module, Encoder):
                    module.backbone.compile(mode=t.compile_mode)
            self.compiled = True

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
        total, logs = self.compute_loss(batch)
        logs["lr"] = torch.tensor(self.optimizers().param_groups[0]["lr"])
        batch_size = batch["audio"].shape[0]
        self.log_dict(logs, prog_bar=False, on_step=True, batch_size=batch_size, sync_dist=False)
        self.log("train_loss", total.detach(), prog_bar=True, on_step=True, batch_size=batch_size)
        return total

    def compute_loss(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The weighted sum of the task losses of one batch and what to log about it. The views
        are drawn with ``generator`` (default: the module's own, saved in checkpoints)."""
        wav = batch["audio"]
        generator = self.generator if generator is None else generator
        if "audio2" in batch:  # two segments of one track (views.kind: same_track)
            views = self.views.pair(wav, batch["audio2"], generator)
        else:
            views = self.views(wav, generator)
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
        return total, logs

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # after the optimiser step: EMA teachers follow their students
        for task in self.tasks.values():
            task.after_step(self.encoder, self.global_step, self.recipe.train.max_steps)

    def on_train_start(self) -> None:
        # the processes that the global-batch losses gather across (objectives.distributed):
        # 1 without an initialised process group; under DDP the trainer's world size
        self.gather_world_size = distributed.world_size()
        # A resumed run restores the optimiser's learning rate as it was at the checkpoint.
        # Recompute it from this run's schedule: when the run resumes with another max_steps
        # (the schedule's horizon) or, with lr_scaling, on another number of processes, the
        # first resumed step already follows the new schedule; otherwise nothing changes.
        sched = self.lr_schedulers()
        if sched is None or isinstance(sched, list):
            return
        old = sched.base_lrs[0]
        if not math.isclose(old, self.applied_lr, rel_tol=1e-9):
            log.warning("resumed with learning rate %.4g instead of %.4g (the effective batch "
                        "changed and train.lr_scaling=%s)", self.applied_lr, old,
                        self.recipe.train.lr_scaling)
        sched.base_lrs = [self.applied_lr for _ in sched.base_lrs]
        factor = sched.lr_lambdas[0](sched.last_epoch)
        for group in sched.optimizer.param_groups:
            group["initial_lr"] = self.applied_lr
            group["lr"] = self.applied_lr * factor

    def configure_optimizers(self) -> Any:
        t = self.recipe.train
        world = self.trainer.world_size if self._trainer is not None else 1
        self.effective_batch_size = effective_batch(t.batch_size, world)
        self.applied_lr = scaled_lr(t.lr, t.batch_size, world, t.base_batch_size, t.lr_scaling)
        if self._trainer is None or self.trainer.is_global_zero:
            rule = "no scaling" if t.lr_scaling == "none" else f"{t.lr_scaling} scaling"
            base = "" if t.lr_scaling == "none" else \
                f" from base batch {t.base_batch_size or t.batch_size}"
            log.info("effective batch %d = %d x %d process%s; lr %.4g -> %.4g (%s%s)",
                     self.effective_batch_size, t.batch_size, world, "" if world == 1 else "es",
                     t.lr, self.applied_lr, rule, base)
        trainable = [p for p in self.parameters() if p.requires_grad]  # not the EMA teachers
        opt = torch.optim.Adam(trainable, lr=self.applied_lr, weight_decay=t.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: warmup_cosine(step, t.warmup_steps, t.max_steps)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
