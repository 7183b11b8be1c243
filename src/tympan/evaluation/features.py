"""Frozen feature extractors and clip embeddings for evaluation.

A model is named by a string: a run directory (its trained encoder), ``random`` (the recipe's
architecture with untrained weights: the floor a pretrained encoder must clear) or ``logmel``
(time-pooled log-mel statistics: the no-learning baseline). All three go through the same
segmenting, batching and readout code, so the comparison is like for like.

Frame-level representations (:func:`embed_frames`, ``Encoder.frames``) serve the speech tasks
of the pretext-task selection study (``../shared/seeds/004_f3e19d7efff003e6.txt``, section V:
speech recognition, speaker verification, emotion recognition), whose downstream models read a
sequence of frames rather than one clip vector. :func:`frame_stats` pools them per clip (mean,
or mean and standard deviation: the statistics pooling of x-vector speaker embeddings) into
``[N, D]`` arrays for :mod:`tympan.evaluation.probes` and
:mod:`tympan.evaluation.verification`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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

    def frames(self, x: Tensor, task: str | None = None) -> Tensor:
        """The log-mel frames ``[B, frames, n_mels]`` (first channel), whose time statistics
        :meth:`forward` returns."""
        return self.frontend(x)[:, 0].transpose(1, 2)


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


def _run_segments(
    model: nn.Module, audio: Sequence[np.ndarray], segment_seconds: float,
    fn: Callable[[Tensor], Tensor], *, task: str | None, batch_size: int,
    device: str | torch.device | None, progress: bool, desc: str,
) -> tuple[list[np.ndarray], list[Tensor], int]:
    """Cut every clip into segments (:func:`segment`) and run ``fn`` on all of them in batches
    on the device: ``(each clip's segments, fn's outputs per batch on the CPU, the segment
    length in samples)``."""
    if task is not None and task not in model.tasks:
        raise TympanError(f"--task {task}: this model has {', '.join(model.tasks)}")
    dev = pick_device(device)
    model.to(dev).eval()
    seg_len = max(1, int(round(segment_seconds * model.sample_rate)))
    segments = [segment(a, seg_len) for a in audio]
    flat = np.concatenate(segments) if segments else np.zeros((0, seg_len), np.float32)
    chunks = []
    for start in tqdm(range(0, len(flat), batch_size), desc=desc, disable=not progress,
                      leave=False):
        x = torch.from_numpy(flat[start : start + batch_size]).to(dev)
        chunks.append(fn(x).float().cpu())
    return segments, chunks, seg_len


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
    segments, chunks, _ = _run_segments(model, audio, segment_seconds,
                                        lambda x: model(x, task), task=task,
                                        batch_size=batch_size, device=device,
                                        progress=progress, desc="embedding")
    owner = torch.from_numpy(np.repeat(np.arange(len(segments)), [len(s) for s in segments]))
    emb = torch.cat(chunks) if chunks else torch.zeros(0, 1)
    # mean of each clip's segments, for all clips at once
    sums = torch.zeros(len(segments), emb.shape[1]).index_add_(0, owner, emb)
    counts = torch.bincount(owner, minlength=len(segments)).clamp_min(1).unsqueeze(1)
    return (sums / counts).numpy()


FRAME_STATS = ("mean", "mean+std")


def _frames(model: nn.Module, x: Tensor, task: str | None) -> Tensor:
    """Frame features ``[B, T', D]`` of one batch; ``task=None`` follows ``forward(x, None)``:
    every task's frames concatenated along D in ``model.tasks`` order."""
    if not hasattr(model, "frames"):
        raise TympanError(
            f"{type(model).__name__} has no frame-level representation (no frames() method); "
            "use a tympan run directory, 'random' or 'logmel', or clip embeddings instead"
        )
    if task is not None:
        return model.frames(x, task)
    if isinstance(model, Encoder):
        if not model.task_specific:
            # one backbone pass serves every task; the pooled output's C channels are either
            # the shared embedding or the task shares side by side (split head), as forward()
            return model.pool.frames(model.full_feature_map(x, model.tasks[0]))
        return torch.cat([model.frames(x, t) for t in model.tasks], dim=2)
    tasks = tuple(getattr(model, "tasks", ()))
    if len(tasks) == 1:
        return model.frames(x, tasks[0])
    return torch.cat([model.frames(x, t) for t in tasks], dim=2)


@torch.no_grad()
def embed_frames(
    model: nn.Module,
    audio: Sequence[np.ndarray],
    segment_seconds: float,
    *,
    task: str | None = None,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> list[np.ndarray]:
    """Frame-level representations of variable-length clips: a list of float32 ``[T'_i, D]``.

    Clips are cut into segments as by :func:`embed_clips` (same segmenting, batching and
    devices); every segment gives ``T'`` frames (``Encoder.frames``: the frequency average of
    the feature map, or the per-frame values under attention pooling; for ``logmel``, the
    log-mel frames), and a clip's frames are its segments' frames in time order. Segments that
    repeat audio do not repeat frames: of the last segment, which :func:`segment` aligns to the
    clip's end and so overlaps the one before, only the frames past the overlap are kept, and a
    clip shorter than one segment (tiled) keeps the frames of its own length (at least one;
    rounded up). ``task=None`` concatenates every task's frames along D in ``model.tasks``
    order, like ``forward(x, None)``; ``D`` is then ``embedding_dim``.

    Mean pooling of a mean-pooling encoder's frames over a clip of exactly one segment gives
    that clip's :func:`embed_clips` embedding; under attention pooling the embedding is a
    learnt weighted mean of the frames instead.
    """
    segments, chunks, seg_len = _run_segments(model, audio, segment_seconds,
                                              lambda x: _frames(model, x, task), task=task,
                                              batch_size=batch_size, device=device,
                                              progress=progress, desc="frames")
    lengths = np.array([len(a) for a in audio], dtype=np.int64)
    counts = np.array([len(s) for s in segments], dtype=np.int64)
    if not chunks:
        return []
    frames = torch.cat(chunks).numpy()  # [S, T', D]
    n_seg, t_seg, dim = frames.shape
    # Frames to keep of each segment (vectorised over all segments): all, except for the
    # end-aligned extra segment (the overlap dropped) and a tiled short clip (its own length).
    keep = np.full(n_seg, t_seg, dtype=np.int64)
    last = np.cumsum(counts) - 1  # index of each clip's last segment
    regular = lengths // seg_len  # whole segments; segment() adds one more if counts exceed it
    extra = counts > regular
    short = lengths < seg_len
    remainder = np.where(short, lengths, lengths - regular * seg_len)
    own = np.maximum(1, np.ceil(remainder * t_seg / seg_len - 1e-9).astype(np.int64))
    keep[last[extra | short]] = np.minimum(own, t_seg)[extra | short]
    # kept frames are the *last* `keep` of an end-aligned segment, the *first* of a tiled one
    first = np.zeros(n_seg, dtype=np.int64)
    end_aligned = extra & ~short
    first[last[end_aligned]] = t_seg - keep[last[end_aligned]]
    pos = np.arange(t_seg)[None, :]
    mask = (pos >= first[:, None]) & (pos < (first + keep)[:, None])
    kept = frames[mask]  # [sum(keep), D], segment-major: each clip's frames in time order
    per_clip = np.add.reduceat(keep, np.concatenate([[0], np.cumsum(counts)[:-1]]))
    return list(np.split(kept.reshape(-1, dim), np.cumsum(per_clip)[:-1]))


def frame_stats(frames: Sequence[np.ndarray], kind: str = "mean") -> np.ndarray:
    """Pool each clip's frames ``[T'_i, D]`` over time: ``[N, D]`` (``kind="mean"``) or
    ``[N, 2D]`` (``"mean+std"``: the mean then the standard deviation, ``ddof=0``, the
    statistics pooling of x-vector speaker embeddings; a one-frame clip has std 0).

    Computed for all clips at once (``np.add.reduceat`` over the concatenated frames)."""
    if kind not in FRAME_STATS:
        raise TympanError(f"frame statistics '{kind}': choose one of {', '.join(FRAME_STATS)}")
    if len(frames) == 0:
        raise TympanError("frame statistics: no clips given")
    arrays = [np.asarray(f, dtype=np.float64) for f in frames]
    dims = {a.shape[1] if a.ndim == 2 else None for a in arrays}
    if None in dims or len(dims) != 1:
        raise TympanError(
            "frame statistics: every clip's frames must be a 2-D array [frames, D] with the same "
            f"D; got shapes {sorted({a.shape for a in arrays})[:4]}"
        )
    lengths = np.array([len(a) for a in arrays], dtype=np.int64)
    if np.any(lengths == 0):
        raise TympanError(
            f"frame statistics: clip {int(np.flatnonzero(lengths == 0)[0])} has no frames"
        )
    flat = np.concatenate(arrays)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    mean = np.add.reduceat(flat, starts, axis=0) / lengths[:, None]
    if kind == "mean":
        return mean.astype(np.float32)
    centred = flat - np.repeat(mean, lengths, axis=0)
    std = np.sqrt(np.add.reduceat(centred**2, starts, axis=0) / lengths[:, None])
    return np.concatenate([mean, std], axis=1).astype(np.float32)
