"""Frozen feature extractors and clip embeddings for evaluation.

A model is named by a string: a run directory (its trained encoder), ``random`` (the recipe's
architecture with untrained weights: the floor a pretrained encoder must clear) or ``logmel``
(time-pooled log-mel statistics: the no-learning baseline). All three go through the same
segmenting, batching and readout code, so the comparison is like for like.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from tympan.audio.frontend import LogMel
from tympan.config import Recipe, load_recipe
from tympan.data.dataset import segment
from tympan.errors import TympanError
from tympan.models.encoder import Encoder, load_encoder

BASELINES = ("random", "logmel")


class LogMelStats(nn.Module):
    """Baseline features: per-band mean and std over time of the log-mel, ``2 * n_mels`` dims."""

    def __init__(self, recipe: Recipe) -> None:
        super().__init__()
        self.recipe = recipe
        self.sample_rate = recipe.audio.sample_rate
        self.frontend = LogMel(recipe.frontend, recipe.audio.sample_rate)
        self.tasks = ("logmel",)
        self.embedding_dim = 2 * recipe.frontend.n_mels

    def task_slices(self) -> dict[str, tuple[int, int]]:
        return {"logmel": (0, self.embedding_dim)}

    def forward(self, x: Tensor, task: str | None = None) -> Tensor:
        mel = self.frontend(x)[:, 0]  # [B, n_mels, frames]
        return torch.cat([mel.mean(dim=2), mel.std(dim=2)], dim=1)


def resolve_model(
    spec: str | Path, recipe: str | Path | Recipe | None = None, seed: int = 0
) -> nn.Module:
    """Build the feature extractor named by ``spec`` (see module docstring).

    ``recipe`` sets the architecture and front end of ``random`` and ``logmel`` (default: the
    packaged ``simclr`` recipe); a run directory brings its own.
    """
    if str(spec) in BASELINES:
        cfg = recipe if isinstance(recipe, Recipe) else load_recipe(recipe or "simclr")
        if str(spec) == "logmel":
            return LogMelStats(cfg).eval()
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return Encoder(cfg).eval()
    path = Path(spec)
    if not path.is_dir():
        raise TympanError(
            f"--model {spec}: not a run directory; give a folder written by 'tympan pretrain' "
            f"or one of {', '.join(BASELINES)}"
        )
    return load_encoder(path)


def pick_device(device: str | torch.device | None = None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@torch.no_grad()
def embed_clips(
    model: nn.Module,
    audio: Sequence[np.ndarray],
    segment_seconds: float,
    *,
    task: str | None = None,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Embed variable-length clips: cut each into segments, embed every segment in batches,
    average a clip's segment embeddings. Returns ``[N, D]`` float32.

    ``task`` selects one task's embedding; ``None`` concatenates every task's (the Encoder
    contract).
    """
    if task is not None and task not in model.tasks:
        raise TympanError(f"--task {task}: this model has {', '.join(model.tasks)}")
    dev = pick_device(device)
    model = model.to(dev).eval()
    seg_len = max(1, int(round(segment_seconds * model.sample_rate)))
    segments = [segment(a, seg_len) for a in audio]
    owner = torch.from_numpy(np.repeat(np.arange(len(segments)), [len(s) for s in segments]))
    flat = np.concatenate(segments) if segments else np.zeros((0, seg_len), np.float32)
    chunks = []
    for start in tqdm(range(0, len(flat), batch_size), desc="embedding", disable=not progress,
                      leave=False):
        x = torch.from_numpy(flat[start : start + batch_size]).to(dev)
        chunks.append(model(x, task).float().cpu())
    emb = torch.cat(chunks) if chunks else torch.zeros(0, 1)
    # mean of each clip's segments, for all clips at once
    sums = torch.zeros(len(segments), emb.shape[1]).index_add_(0, owner, emb)
    counts = torch.bincount(owner, minlength=len(segments)).clamp_min(1).unsqueeze(1)
    return (sums / counts).numpy()
