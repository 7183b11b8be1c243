"""Datasets: decode, mono, resample, crop. Nothing else happens in the loader workers.

Everything after the DataLoader (augmentation, front end, model) is batched tensor code on the
device (ARCHITECTURE.md, "One path for the data").
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from tympan.audio.io import load_audio
from tympan.data.manifest import Item


def fit_length(wav: np.ndarray, num_samples: int, start: int = 0) -> np.ndarray:
    """Cut ``num_samples`` from ``start``; a clip shorter than that is tiled (looped) first.

    Tiling rather than zero-padding keeps the crop free of artificial silence, which a
    contrastive model could otherwise use to match views.
    """
    if len(wav) < num_samples:
        reps = -(-num_samples // len(wav))
        return np.tile(wav, reps)[:num_samples]
    return wav[start : start + num_samples]


class CropDataset(Dataset):
    """One fixed-length crop per item: random each time (training) or the centre (evaluation).

    Returns ``{"audio": float32 tensor [num_samples], "index": int}``.
    """

    def __init__(
        self, items: Sequence[Item], sample_rate: int, clip_seconds: float, random_crop: bool = True
    ) -> None:
        self.items = list(items)
        self.sample_rate = sample_rate
        self.num_samples = max(1, int(round(clip_seconds * sample_rate)))
        self.random_crop = random_crop

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        wav = load_audio(self.items[index].path, self.sample_rate)
        spare = max(0, len(wav) - self.num_samples)
        if self.random_crop:
            # torch's RNG: seeded per worker by the DataLoader, hence reproducible with --seed
            start = int(torch.randint(0, spare + 1, (1,)).item())
        else:
            start = spare // 2
        crop = fit_length(wav, self.num_samples, start)
        return {"audio": torch.from_numpy(np.ascontiguousarray(crop)), "index": index}


def segment(wav: np.ndarray, num_samples: int) -> np.ndarray:
    """Cut a clip into non-overlapping segments ``[S, num_samples]`` (MetaAudio's treatment of
    variable-length clips: each segment is embedded and the embeddings are averaged).

    A clip shorter than one segment is tiled to one segment; a remainder of at least half a
    segment becomes one more segment aligned to the clip's end; a shorter remainder is dropped.
    """
    n = len(wav)
    if n <= num_samples:
        return fit_length(wav, num_samples)[None, :]
    count = n // num_samples
    segs = wav[: count * num_samples].reshape(count, num_samples)
    remainder = n - count * num_samples
    if remainder > 0 and 2 * remainder >= num_samples:
        segs = np.concatenate([segs, wav[None, n - num_samples :]])
    return segs
