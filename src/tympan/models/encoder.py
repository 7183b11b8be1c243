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

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from tympan.audio.frontend import LogMel
from tympan.config import Recipe, load_recipe
from tympan.errors import ConfigError, TympanError
from tympan.models.resnet import ARCHS

ENCODER_FILE = "encoder.safetensors"
CONFIG_FILE = "config.yaml"


class Encoder(nn.Module):
    """Front end + backbone with per-task adapters + global average pooling."""

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
            recipe.frontend.channels, recipe.model.width, recipe.model.adapter, self.tasks
        )
        #: embedding size of one task
        self.dim: int = self.backbone.out_channels

    @property
    def embedding_dim(self) -> int:
        """Size of ``forward(x, task=None)``: every task's embedding concatenated."""
        return self.dim * len(self.tasks)

    def task_slices(self) -> dict[str, tuple[int, int]]:
        """The ``[start, stop)`` columns of the concatenated embedding that each task owns."""
        return {t: (i * self.dim, (i + 1) * self.dim) for i, t in enumerate(self.tasks)}

    def _check_task(self, task: str) -> None:
        if task not in self.tasks:
            raise TympanError(
                f"unknown task '{task}': this encoder has {', '.join(self.tasks)}"
            )

    def feature_map(self, x: Tensor, task: str) -> Tensor:
        """Backbone output ``[B, C, F', T']`` for waveforms ``[B, T]``."""
        self._check_task(task)
        return self.backbone(self.frontend(x), task)

    def frames(self, x: Tensor, task: str) -> Tensor:
        """Frame features ``[B, T', D]`` (mean over the frequency axis)."""
        return self.feature_map(x, task).mean(dim=2).transpose(1, 2)

    def forward(self, x: Tensor, task: str | None = None) -> Tensor:
        if task is None:
            return torch.cat([self(x, t) for t in self.tasks], dim=1)
        return self.feature_map(x, task).mean(dim=(2, 3))


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
