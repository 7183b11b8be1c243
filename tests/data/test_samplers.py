"""MPerClassSampler: class-balanced batches for supervised contrastive fine-tuning."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from tympan.data.samplers import MPerClassSampler
from tympan.errors import ConfigError

# 7 classes of uneven sizes; class "f" has fewer clips (2) than m = 4
SIZES = {"a": 10, "b": 7, "c": 5, "d": 12, "e": 4, "f": 2, "g": 9}
LABELS = [name for name, size in SIZES.items() for _ in range(size)]


def test_every_batch_has_batch_size_over_m_classes_times_m() -> None:
    sampler = MPerClassSampler(LABELS, m=4, batch_size=12, seed=0, length=240)
    assert len(sampler) == 240
    batches = sampler.batches()
    assert batches.shape == (20, 12)
    for batch in batches:
        counts = Counter(LABELS[i] for i in batch)
        assert len(counts) == 3 and set(counts.values()) == {4}
        for cls in counts:
            picked = [i for i in batch if LABELS[i] == cls]
            if SIZES[cls] >= 4:
                assert len(set(picked)) == 4  # no clip twice in a batch when the class has enough
            else:
                assert len(set(picked)) == SIZES[cls]  # with replacement, all its clips used
    # m clips of a class are adjacent
    assert all(len({LABELS[i] for i in batch[k : k + 4]}) == 1 for batch in batches for k in (0, 4, 8))


def test_iteration_and_dataloader_yield_the_same_batches() -> None:
    sampler = MPerClassSampler(LABELS, m=2, batch_size=8, seed=3)
    assert len(sampler) == len(LABELS) // 8 * 8
    flat = list(iter(sampler))
    assert flat == sampler.batches().ravel().tolist() and all(isinstance(i, int) for i in flat)
    loader = DataLoader(torch.arange(len(LABELS)), batch_size=8, sampler=sampler)
    got = torch.stack(list(loader)).numpy()
    assert np.array_equal(got, sampler.batches())


def test_classes_are_covered_evenly() -> None:
    sampler = MPerClassSampler(LABELS, m=2, batch_size=6, seed=1, length=6 * 70)
    per_class = Counter(LABELS[i] for i in sampler.batches().ravel())
    # 70 batches x 3 classes = 210 class slots over 7 classes: 30 each, i.e. 60 clips each
    assert set(per_class.values()) == {60}
    # and clips of a class in even passes: class "a" (10 clips) gets 60 slots, 6 each
    a_clips = Counter(i for i in sampler.batches().ravel() if LABELS[i] == "a")
    assert set(a_clips.values()) == {6}


def test_deterministic_under_seed_and_new_order_every_epoch() -> None:
    one = MPerClassSampler(LABELS, m=4, batch_size=8, seed=5)
    two = MPerClassSampler(LABELS, m=4, batch_size=8, seed=5)
    assert list(one) == list(two)
    assert list(one) == list(one)  # iterating does not advance the epoch by itself
    first = list(one)
    one.set_epoch(1)
    second = list(one)
    assert first != second
    two.set_epoch(1)
    assert list(two) == second
    one.set_epoch(0)
    assert list(one) == first
    other_seed = MPerClassSampler(LABELS, m=4, batch_size=8, seed=6)
    assert list(other_seed) != first


def test_tensor_and_integer_labels() -> None:
    y = torch.tensor([0, 0, 1, 1, 2, 2, 2, 3])
    sampler = MPerClassSampler(y, m=2, batch_size=4, length=40)
    for batch in sampler.batches():
        assert sorted(Counter(y[batch].tolist()).values()) == [2, 2]
    assert list(sampler.classes) == [0, 1, 2, 3]


def test_errors_name_the_field_and_fix() -> None:
    with pytest.raises(ConfigError, match="batch_size=10 is not a positive multiple of m=4: use e.g. 8 or 12"):
        MPerClassSampler(LABELS, m=4, batch_size=10)
    with pytest.raises(ConfigError, match="7 classes.*needs 8 distinct classes"):
        MPerClassSampler(LABELS, m=2, batch_size=16)
    with pytest.raises(ConfigError, match="m=0"):
        MPerClassSampler(LABELS, m=0, batch_size=8)
    with pytest.raises(ConfigError, match="length=4"):
        MPerClassSampler(LABELS, m=2, batch_size=8, length=4)
    with pytest.raises(ConfigError, match="labels"):
        MPerClassSampler([], m=2, batch_size=4)
    with pytest.raises(ConfigError, match="seed"):
        MPerClassSampler(LABELS, m=2, batch_size=4, seed=-1)
