"""The task-aware encoder: waveforms -> log-mel -> backbone (+ task adapters) -> pooled embedding.

Contract (ARCHITECTURE.md, "Contracts between the parts"):

* ``Encoder(x, task=None) -> Tensor[B, D]`` for waveforms ``x [B, T]`` at the recipe's rate;
  ``task=None`` concatenates every task's embedding in the fixed order of ``Encoder.tasks``.
* ``Encoder.frames(x, task) -> Tensor[B, T', D]``: frequency-pooled frame features.
* ``Encoder.tasks``: the task names whose adapters the encoder holds.

The front end lives inside the encoder so that a saved encoder maps raw audio to embeddings on
its own; its filterbank is rebuilt from the recipe and never stored with the weights.
Weights are saved with safetensors, which cannot carry code, so loading a run is safe.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from tympan.audio.frontend import LogMel
from tympan.config import Recipe, load_recipe
from tympan.errors import ConfigError, TympanError
from tympan.models.adapters import has_task_parameters, task_parameter_counts
from tympan.models.pooling import build_pooling
from tympan.models.resnet import ARCHS

ENCODER_FILE = "encoder.safetensors"
CONFIG_FILE = "config.yaml"


class Encoder(nn.Module):
    """Front end + backbone with per-task adapters + pooling (``model.pooling``: global average,
    or attention over time to ``model.embed_dim`` as in the multi-view tagging seed 003).

    MT-SLVR's variants (seed 000, "Model Variants") are two recipe fields:
    ``model.adapter`` (:mod:`tympan.models.adapters`) and ``model.split_head``. With the split head
    the pooled output's ``C`` channels are divided into ``len(tasks)`` equal shares and each task's
    embedding is its own share (the seed splits a 1000-unit final layer into two heads of 500; our
    final layer is the last convolution stage, whose output the pooling reads). Without adapters
    the backbone computes the same thing for every task, so it runs once and, without the split,
    every task owns the whole embedding (``task_slices`` then overlap).
    """

    def __init__(self, recipe: Recipe) -> None:
        super().__init__()
        if recipe.model.arch not in ARCHS:
            raise ConfigError(
                f"unknown backbone '{recipe.model.arch}' in recipe field 'model.arch' "
                f"(known: {', '.join(sorted(ARCHS))})"
            )
        self.recipe = recipe
        self.sample_rate = recipe.audio.sample_rate
        self.frontend = LogMel(recipe.frontend, recipe.audio.sample_rate)
        self.tasks: tuple[str, ...] = recipe.task_names
        self.backbone = ARCHS[recipe.model.arch](
            recipe.frontend.channels, recipe.model.width, recipe.model.adapter, self.tasks,
            options=recipe.model.options, n_mels=recipe.frontend.n_mels,
        )
        n = len(self.tasks)
        #: whether each task runs the backbone with parameters of its own
        self.task_specific = has_task_parameters(recipe.model.adapter) and n > 1
        self.split = recipe.model.split_head and n > 1
        self.pool = build_pooling(
            recipe.model.pooling, self.backbone.out_channels, recipe.model.embed_dim
        )
        channels = self.pool.out_dim
        if self.split and channels % n:
            raise ConfigError(
                f"recipe field 'model.split_head': the final layer's {channels} channels do not "
                f"divide into {n} equal task shares; change 'model.width' or 'model.embed_dim'"
            )
        #: embedding size of one task
        self.dim: int = channels // n if self.split else channels

    @property
    def embedding_dim(self) -> int:
        """Size of ``forward(x, task=None)``: every task's embedding concatenated."""
        return self.dim * len(self.tasks) if (self.split or self.task_specific) else self.dim

    def task_slices(self) -> dict[str, tuple[int, int]]:
        """The ``[start, stop)`` columns of the concatenated embedding that each task owns."""
        if not (self.split or self.task_specific):
            return {t: (0, self.dim) for t in self.tasks}
        return {t: (i * self.dim, (i + 1) * self.dim) for i, t in enumerate(self.tasks)}

    def _check_task(self, task: str) -> None:
        if task not in self.tasks:
            raise TympanError(
                f"unknown task '{task}': this encoder has {', '.join(self.tasks)}"
            )

    def path_key(self, task: str) -> str:
        """Tasks with the same key compute the same backbone output (no adapters of their own)."""
        self._check_task(task)
        return task if self.task_specific else self.tasks[0]

    def _share(self, task: str) -> slice:
        if not self.split:
            return slice(None)
        i = self.tasks.index(task)
        return slice(i * self.dim, (i + 1) * self.dim)

    def full_feature_map(self, x: Tensor, task: str) -> Tensor:
        """Backbone output ``[B, C, F', T']`` with ``task``'s adapters, before the head split."""
        return self.backbone(self.frontend(x), self.path_key(task))

    def feature_map(self, x: Tensor, task: str) -> Tensor:
        """``task``'s share of the backbone output ``[B, D, F', T']`` for waveforms ``[B, T]``."""
        return self.full_feature_map(x, task)[:, self._share(task)]

    def pooled(self, x: Tensor, task: str) -> Tensor:
        """Pooled backbone output ``[B, C]`` before the head split (see :meth:`select`)."""
        return self.pool(self.full_feature_map(x, task))

    def select(self, pooled: Tensor, task: str) -> Tensor:
        """``task``'s embedding from :meth:`pooled` output of the same path."""
        return pooled[:, self._share(task)]

    def frames(self, x: Tensor, task: str) -> Tensor:
        """Frame features ``[B, T', D]``: the frequency average of the feature map (mean
        pooling) or the per-frame values that attention pooling averages."""
        return self.pool.frames(self.full_feature_map(x, task))[..., self._share(task)]

    def frames_and_pooled(self, x: Tensor, task: str) -> tuple[Tensor, Tensor]:
        """One backbone pass giving both :meth:`frames` ``[B, T', D]`` and :meth:`pooled`
        ``[B, C]`` (frame-level workers and a pooled objective can then share the pass)."""
        fmap = self.full_feature_map(x, task)
        return self.pool.frames(fmap)[..., self._share(task)], self.pool(fmap)

    def forward(self, x: Tensor, task: str | None = None) -> Tensor:
        if task is not None:
            return self.select(self.pooled(x, task), task)
        if not self.task_specific:  # one backbone pass serves every task
            return self.pooled(x, self.tasks[0])
        return torch.cat([self(x, t) for t in self.tasks], dim=1)

    def parameter_counts(self) -> dict[str, Any]:
        """Shared and per-task parameter counts, and the cost relative to separate networks.

        ``single_network`` is a plain single-task network of this architecture (no adapters);
        ``separate_networks`` is ``len(tasks)`` of them, the alternative to sharing;
        ``ratio_to_separate = total / separate_networks`` and ``extra_over_single`` is the
        fraction of one network that the task-specific parameters add.
        """
        per_task = task_parameter_counts(self.backbone, self.tasks)
        total = sum(p.numel() for p in self.parameters())
        plain = ARCHS[self.recipe.model.arch](
            self.recipe.frontend.channels, self.recipe.model.width, "none", ("single",),
            options=self.recipe.model.options, n_mels=self.recipe.frontend.n_mels,
        )
        # one plain network is the backbone without adapters plus the (task-agnostic) pooling
        single = sum(p.numel() for p in plain.parameters()) + sum(
            p.numel() for p in self.pool.parameters()
        )
        separate = single * len(self.tasks)
        return {
            "total": total,
            "shared": total - sum(per_task.values()),
            "per_task": per_task,
            "single_network": single,
            "separate_networks": separate,
            "ratio_to_separate": round(total / separate, 4),
            "extra_over_single": round(total / single - 1.0, 4),
        }


def save_encoder(encoder: Encoder, path: str | Path) -> None:
    """Write the encoder's weights (tensors only) to ``path`` with safetensors, atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    state = {k: v.detach().contiguous().cpu() for k, v in encoder.state_dict().items()}
    save_file(state, str(tmp), metadata={"tasks": ",".join(encoder.tasks)})
    tmp.replace(path)


def load_encoder(run: str | Path, map_location: str | torch.device = "cpu") -> Encoder:
    """Build the encoder of run directory ``run`` from its ``config.yaml`` and load its weights.

    Only safetensors weights are read: nothing is unpickled.
    """
    run = Path(run)
    cfg, weights = run / CONFIG_FILE, run / ENCODER_FILE
    for f in (cfg, weights):
        if not f.is_file():
            raise TympanError(
                f"{run} is not a tympan run directory: {f.name} is missing "
                f"(train one with 'tympan pretrain', or pass 'random'/'logmel' as the model)"
            )
    encoder = Encoder(load_recipe(cfg))
    try:
        state = load_file(str(weights), device=str(map_location))
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise TympanError(f"{weights}: cannot be read as safetensors ({exc})") from None
    try:
        missing, unexpected = encoder.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatch: the weights belong to another architecture
        first = str(exc).split("\n\t")[1] if "\n\t" in str(exc) else str(exc)
        raise TympanError(
            f"{weights} does not match the architecture in {cfg} ({first.strip()}); "
            f"was config.yaml edited or copied from another run?"
        ) from None
    if missing or unexpected:
        raise TympanError(
            f"{weights} does not match {cfg}: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    return encoder.eval()
