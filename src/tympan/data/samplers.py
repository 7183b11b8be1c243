"""Samplers of dataset indices.

:class:`MPerClassSampler` builds batches of ``batch_size // m`` classes with ``m`` clips each, so
that every anchor of a supervised contrastive batch has ``m - 1`` positives and the hard pair
miner has something to mine (PairTune, ``../shared/seeds/002_5040cf44179b95f4.txt``, §2.1: pairs
"within the same class" and "from distinct classes" of each anchor; with uniform batches over
hundreds of classes, TIMIT's 630 speakers say, most anchors would have no positive at all).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

from tympan.errors import ConfigError

__all__ = ["MPerClassSampler"]


class _Cycle:
    """Draws items in shuffled passes: every item once per pass, never twice in one draw.

    A draw that straddles two passes takes the old pass's leftovers and fills up with items of
    the new pass that are not among them; the new pass keeps the leftovers for later, so over
    many draws every item is used equally often (±1).
    """

    def __init__(self, items: np.ndarray, rng: np.random.Generator) -> None:
        self.items = items
        self.rng = rng
        self.pool = rng.permutation(items)
        self.pos = 0

    def take(self, k: int) -> np.ndarray:
        size = len(self.items)
        if k > size:
            # too few items: with replacement, each item floor(k/size) or ceil(k/size) times
            reps = -(-k // size)
            return np.concatenate([self.rng.permutation(self.items) for _ in range(reps)])[:k]
        if len(self.pool) - self.pos >= k:
            out = self.pool[self.pos : self.pos + k]
            self.pos += k
            return out
        rest = self.pool[self.pos :]
        new = self.rng.permutation(self.items)
        fresh = np.flatnonzero(~np.isin(new, rest))[: k - len(rest)]
        out = np.concatenate([rest, new[fresh]])
        self.pool = np.delete(new, fresh)
        self.pos = 0
        return out


class MPerClassSampler(Sampler[int]):
    """Indices in batches of ``batch_size // m`` distinct classes × ``m`` clips.

    Use it with ``DataLoader(dataset, batch_size=batch_size, sampler=sampler)`` (no
    ``shuffle``): each consecutive run of ``batch_size`` indices is one batch, its ``m`` clips of
    a class adjacent.

    * ``labels``: one label per dataset item (ints, strings, a tensor or an array).
    * Classes are drawn in shuffled passes over all classes (every class once per pass), clips of
      a class in shuffled passes over its clips, so coverage is even and no clip repeats within a
      batch. A class with fewer than ``m`` clips is sampled **with replacement**: each of its
      ``n`` clips appears ``floor(m/n)`` or ``ceil(m/n)`` times in the batch (identical rows are
      then positives of each other; give them different augmented views).
    * ``length``: indices per epoch, rounded down to whole batches; by default ``len(labels)``
      rounded down (at least one batch).
    * The order is a function of ``(seed, epoch)`` only: deterministic under ``seed``, new every
      epoch once :meth:`set_epoch` is called (Lightning calls it on the sampler each epoch; call
      it yourself in a hand-written loop). Under DDP give each rank its own ``seed``.
    """

    def __init__(
        self,
        labels: Sequence[Any] | np.ndarray | torch.Tensor,
        m: int,
        batch_size: int,
        seed: int = 0,
        length: int | None = None,
    ) -> None:
        if isinstance(labels, torch.Tensor):
            labels = labels.detach().cpu().numpy()
        labels_arr = np.asarray(labels)
        if labels_arr.ndim != 1 or len(labels_arr) == 0:
            raise ConfigError(
                f"labels: expected one label per item (a non-empty 1-D sequence), got shape {labels_arr.shape}"
            )
        if not isinstance(m, (int, np.integer)) or m < 1:
            raise ConfigError(f"m={m!r}: use a positive number of clips per class (e.g. 4)")
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1 or batch_size % m != 0:
            lower, upper = max(m, batch_size // m * m), (batch_size // m + 1) * m
            raise ConfigError(
                f"batch_size={batch_size!r} is not a positive multiple of m={m}: use e.g. {lower} or {upper}"
            )
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ConfigError(f"seed={seed!r}: use a non-negative integer")
        self.classes, inverse = np.unique(labels_arr, return_inverse=True)
        self.m = int(m)
        self.batch_size = int(batch_size)
        self.classes_per_batch = self.batch_size // self.m
        if len(self.classes) < self.classes_per_batch:
            raise ConfigError(
                f"labels: {len(self.classes)} classes, but batch_size={batch_size} with m={m} needs "
                f"{self.classes_per_batch} distinct classes per batch; lower batch_size or raise m"
            )
        n_items = len(labels_arr) if length is None else length
        if not isinstance(n_items, (int, np.integer)) or (length is not None and n_items < batch_size):
            raise ConfigError(f"length={length!r}: use at least batch_size={batch_size} indices per epoch, or None")
        self.num_batches = max(1, int(n_items) // self.batch_size)
        # members of each class, grouped with one stable sort instead of a scan per class
        order = np.argsort(inverse, kind="stable")
        counts = np.bincount(inverse, minlength=len(self.classes))
        self.members: list[np.ndarray] = np.split(order, np.cumsum(counts)[:-1])
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next ``iter()`` yields."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_batches * self.batch_size

    def batches(self, epoch: int | None = None) -> np.ndarray:
        """The epoch's indices as ``[num_batches, batch_size]`` (default: the current epoch)."""
        epoch = self.epoch if epoch is None else int(epoch)
        rng = np.random.default_rng([self.seed, epoch])
        class_cycle = _Cycle(np.arange(len(self.classes)), rng)
        member_cycles = [_Cycle(members, rng) for members in self.members]
        out = np.empty((self.num_batches, self.batch_size), dtype=np.int64)
        for b in range(self.num_batches):
            chosen = class_cycle.take(self.classes_per_batch)
            out[b] = np.concatenate([member_cycles[c].take(self.m) for c in chosen])
        return out

    def __iter__(self) -> Iterator[int]:
        return iter(self.batches().ravel().tolist())
