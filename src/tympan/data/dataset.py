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
from tympan.errors import AudioError
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

    Returns ``{"audio": float32 tensor [num_samples], "index": int, "start": int, "length":
    int}``: ``start`` is the crop's first sample in the file and ``length`` the file's length in
    samples (a file shorter than the crop is tiled from sample 0), so that frame labels of the
    file can be aligned with the crop (the workers of seed 004, :mod:`tympan.methods.workers`).
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
        return self.crop(load_audio(self.items[index].path, self.sample_rate), index)

    def crop(self, wav: np.ndarray, index: int) -> dict[str, torch.Tensor | int]:
        """The item of a decoded clip ``wav`` (mono, ``sample_rate``) as :meth:`__getitem__`
        returns it; also used by :class:`~tympan.data.shards.ShardDataset`. The ``audio``
        tensor may share memory with ``wav``."""
        spare = max(0, len(wav) - self.num_samples)
        if self.random_crop:
            # torch's RNG: seeded per worker by the DataLoader, hence reproducible with --seed
            start = int(torch.randint(0, spare + 1, (1,)).item())
        else:
            start = spare // 2
        crop = fit_length(wav, self.num_samples, start)
        return {
            "audio": torch.from_numpy(np.ascontiguousarray(crop)), "index": index,
            "start": start, "length": len(wav),
        }


class SameTrackPairDataset(Dataset):
    """Two segments of one file per item, drawn anew at every read (multi-view tagging seed,
    ``../shared/seeds/003_302de149e7ba2620.txt``, "Training setup": "For each song, an anchor
    is randomly selected. The corresponding positive is then selected from the same song ... at
    least four seconds away from the anchor but no further than sixteen seconds away ... every
    time we see an audio track, the constructed pairs are generated on the fly").

    The distance between the two segments' starts is uniform in ``[min_gap, max_gap]`` (capped
    by the file's length), the pair's position uniform among those that fit, and which segment
    comes first random. A segment whose RMS is more than ``-silence_db`` dB below the whole
    file's is near-silent: the pair is drawn again, up to ``tries`` times; after that it is
    drawn uniformly among the pairs on a 10 ms grid of starts whose two segments are loud, or,
    where the file has none, among those with one loud segment (a file is never dropped for
    being quiet; rejection alone let a track with a long silent outro give silent segments in a
    few percent of reads). Files must hold ``segment + min_gap`` seconds (:attr:`min_seconds`;
    pretraining checks it).

    Returns ``{"audio": [S], "audio2": [S], "index": int}``, float32.
    """

    def __init__(
        self, items: Sequence[Item], sample_rate: int, segment_seconds: float = 4.0,
        min_gap: float = 4.0, max_gap: float = 16.0, silence_db: float = -30.0, tries: int = 10,
    ) -> None:
        self.items = list(items)
        self.sample_rate = sample_rate
        self.num_samples = max(1, int(round(segment_seconds * sample_rate)))
        self.min_gap = int(round(min_gap * sample_rate))
        self.max_gap = int(round(max_gap * sample_rate))
        self.silence_ratio = 10.0 ** (silence_db / 20.0)
        self.tries = max(1, tries)

    @property
    def min_seconds(self) -> float:
        """The shortest usable file: one segment plus the minimum gap."""
        return (self.num_samples + self.min_gap) / self.sample_rate

    def __len__(self) -> int:
        return len(self.items)

    def starts(self, num_frames: int, rms: np.ndarray | None = None) -> tuple[int, int]:
        """Draw the two segments' start samples in a file of ``num_frames`` samples; ``rms``
        (cumulative squared signal, ``[num_frames + 1]``) enables the silence check."""
        spare = num_frames - self.num_samples
        if spare < self.min_gap:
            raise ValueError(
                f"{num_frames} samples hold no two segments {self.min_gap} samples apart"
            )
        best, best_level = (0, 0), -1.0
        n = self.num_samples
        floor = 0.0 if rms is None else self.silence_ratio**2 * rms[-1] / num_frames
        for _ in range(self.tries):
            gap = int(torch.randint(self.min_gap, min(self.max_gap, spare) + 1, (1,)).item())
            first = int(torch.randint(0, spare - gap + 1, (1,)).item())
            pair = (first, first + gap) if torch.rand(1).item() < 0.5 else (first + gap, first)
            if rms is None:
                return pair
            level = min((rms[a + n] - rms[a]) / n for a in pair)
            if level >= floor:
                return pair
            if level > best_level:
                best, best_level = pair, level
        return self._loud_pair(num_frames, rms, floor) or best

    def _loud_pair(self, num_frames: int, rms: np.ndarray, floor: float) -> tuple[int, int] | None:
        """A pair drawn uniformly from a 10 ms grid of starts: both segments at least ``floor``
        (mean power) if any such pair exists, else one of them; ``None`` if neither exists."""
        n, spare = self.num_samples, num_frames - self.num_samples
        hop = max(1, self.sample_rate // 100)
        grid = np.arange(0, spare + 1, hop)
        loud = (rms[grid + n] - rms[grid]) / n >= floor
        lo, hi = -(-self.min_gap // hop), min(self.max_gap, spare) // hop  # gaps in grid steps
        if not loud.any() or lo > hi:
            return None
        idx = np.arange(len(grid))
        # the later segment of a pair whose earlier one starts at grid[i]: grid[left[i]:right[i]]
        left, right = np.minimum(idx + lo, len(grid)), np.minimum(idx + hi + 1, len(grid))
        cum = np.concatenate(([0], np.cumsum(loud)))
        n_loud = cum[right] - cum[left]
        both = np.where(loud, n_loud, 0)
        count = both if both.any() else np.where(loud, right - left, n_loud)
        total = int(count.sum())
        if total == 0:
            return None
        k = int(torch.randint(0, total, (1,)).item())
        i = int(np.searchsorted(np.cumsum(count), k, side="right"))
        later = np.arange(left[i], right[i])
        if both.any() or not loud[i]:
            later = later[loud[later]]
        j = int(later[int(torch.randint(0, len(later), (1,)).item())])
        a, b = int(grid[i]), int(grid[j])
        return (a, b) if torch.rand(1).item() < 0.5 else (b, a)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        item = self.items[index]
        wav = load_audio(item.path, self.sample_rate)
        if len(wav) < self.num_samples + self.min_gap:
            raise AudioError(
                item.path,
                f"{len(wav) / self.sample_rate:.2f} s is too short for two "
                f"{self.num_samples / self.sample_rate:g} s segments at least "
                f"{self.min_gap / self.sample_rate:g} s apart (views.kind: same_track); "
                f"use longer tracks or lower views.segment_seconds / views.min_gap",
            )
        return self.pair(wav, index)

    def pair(self, wav: np.ndarray, index: int) -> dict[str, torch.Tensor | int]:
        """The item of a decoded clip ``wav`` long enough for a pair (the caller checks
        ``segment + min_gap``), as :meth:`__getitem__` returns it; also used by
        :class:`~tympan.data.shards.ShardDataset`. The tensors may share memory with ``wav``."""
        energy = np.concatenate(([0.0], np.cumsum(wav.astype(np.float64) ** 2)))
        a, b = self.starts(len(wav), energy)
        n = self.num_samples
        return {
            "audio": torch.from_numpy(np.ascontiguousarray(wav[a : a + n])),
            "audio2": torch.from_numpy(np.ascontiguousarray(wav[b : b + n])),
            "index": index,
        }


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
