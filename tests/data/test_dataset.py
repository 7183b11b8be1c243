"""Cropping, tiling and segmenting clips, and the fixed-length CropDataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from tympan.data.dataset import CropDataset, fit_length, segment
from tympan.data.manifest import Item

SR = 8000


# -- fit_length -----------------------------------------------------------------------------------


def test_fit_length_tiles_short_clips() -> None:
    wav = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    out = fit_length(wav, 8)
    np.testing.assert_array_equal(out, [1, 2, 3, 1, 2, 3, 1, 2])  # looped, never zero-padded
    assert out.dtype == np.float32
    # an exact multiple
    np.testing.assert_array_equal(fit_length(wav, 6), [1, 2, 3, 1, 2, 3])
    # one sample tiles to a constant
    np.testing.assert_array_equal(fit_length(np.array([5.0]), 4), [5, 5, 5, 5])


def test_fit_length_crops_long_clips() -> None:
    wav = np.arange(10, dtype=np.float32)
    np.testing.assert_array_equal(fit_length(wav, 4), [0, 1, 2, 3])  # from the start by default
    np.testing.assert_array_equal(fit_length(wav, 4, start=3), [3, 4, 5, 6])
    np.testing.assert_array_equal(fit_length(wav, 4, start=6), [6, 7, 8, 9])  # last full crop
    np.testing.assert_array_equal(fit_length(wav, 10), wav)  # exact length: unchanged
    for n in (1, 7, 10, 11, 25):
        assert len(fit_length(wav, n)) == n


# -- segment ------------------------------------------------------------------------------------


def test_segment_short_clip_is_tiled_to_one_segment() -> None:
    wav = np.arange(3, dtype=np.float32)
    segs = segment(wav, 7)
    assert segs.shape == (1, 7)
    np.testing.assert_array_equal(segs[0], [0, 1, 2, 0, 1, 2, 0])
    # exactly one segment long: the clip itself
    wav = np.arange(8, dtype=np.float32)
    segs = segment(wav, 8)
    assert segs.shape == (1, 8)
    np.testing.assert_array_equal(segs[0], wav)


def test_segment_exact_multiple() -> None:
    wav = np.arange(12, dtype=np.float32)
    segs = segment(wav, 4)
    assert segs.shape == (3, 4) and segs.dtype == np.float32
    np.testing.assert_array_equal(segs, wav.reshape(3, 4))


def test_segment_long_remainder_adds_end_aligned_segment() -> None:
    # 10 samples, segments of 4: two full segments and a remainder of 2 = half a segment
    wav = np.arange(10, dtype=np.float32)
    segs = segment(wav, 4)
    assert segs.shape == (3, 4)
    np.testing.assert_array_equal(segs[:2], [[0, 1, 2, 3], [4, 5, 6, 7]])
    np.testing.assert_array_equal(segs[2], [6, 7, 8, 9])  # aligned to the clip's end
    # remainder of 3 (> half)
    segs = segment(np.arange(11, dtype=np.float32), 4)
    assert segs.shape == (3, 4)
    np.testing.assert_array_equal(segs[2], [7, 8, 9, 10])


def test_segment_short_remainder_is_dropped() -> None:
    # remainder 1 < half of 4
    segs = segment(np.arange(9, dtype=np.float32), 4)
    assert segs.shape == (2, 4)
    np.testing.assert_array_equal(segs, [[0, 1, 2, 3], [4, 5, 6, 7]])
    # a realistic size: 2.4 s at 16 kHz in 1 s segments -> 0.4 s remainder is dropped
    assert segment(np.ones(38400, np.float32), 16000).shape == (2, 16000)
    # 2.5 s -> 0.5 s remainder is kept
    segs = segment(np.arange(40000, dtype=np.float32), 16000)
    assert segs.shape == (3, 16000)
    assert segs[2, -1] == 39999 and segs[2, 0] == 24000


def _expected_segments(wav: np.ndarray, length: int) -> np.ndarray:
    """The documented rule, written out: ``count`` full segments, plus one segment aligned to
    the end when the remainder is at least half a segment (``remainder >= length / 2``)."""
    n = len(wav)
    if n <= length:
        return np.tile(wav, -(-length // n))[None, :length]
    count, rem = divmod(n, length)
    segs = [wav[i * length : (i + 1) * length] for i in range(count)]
    if rem >= length / 2:
        segs.append(wav[n - length :])
    return np.stack(segs)


@pytest.mark.parametrize("length", [2, 4, 6, 16])
def test_segment_rule_every_clip_length_even_segments(length: int) -> None:
    for n in range(1, 6 * length):
        wav = np.arange(n, dtype=np.float32) + 1
        np.testing.assert_array_equal(segment(wav, length), _expected_segments(wav, length),
                                      err_msg=f"clip of {n} samples")


def test_segment_odd_length_remainder_below_half_is_dropped() -> None:
    # segments of 5 samples: half a segment is 2.5 samples, so a remainder of 2 is dropped and
    # a remainder of 3 is kept (0.5 s segments at 22.05 kHz are 11025 samples: odd lengths occur)
    assert segment(np.arange(12, dtype=np.float32), 5).shape == (2, 5)  # remainder 2 < 2.5
    assert segment(np.arange(13, dtype=np.float32), 5).shape == (3, 5)  # remainder 3 >= 2.5
    # the same at a realistic size: 11025-sample segments, remainder 5512 (< 5512.5)
    assert segment(np.zeros(2 * 11025 + 5512, np.float32), 11025).shape == (2, 11025)
    assert segment(np.zeros(2 * 11025 + 5513, np.float32), 11025).shape == (3, 11025)


def test_segment_length_one_has_no_duplicate_segment() -> None:
    # segments of 1 sample: every sample is one segment, nothing is left over
    segs = segment(np.arange(5, dtype=np.float32), 1)
    assert segs.shape == (5, 1)
    np.testing.assert_array_equal(segs[:, 0], np.arange(5))


# -- CropDataset ----------------------------------------------------------------------------------


def _write(path: Path, samples: np.ndarray, sr: int = SR) -> Item:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, samples.astype(np.float32), sr, subtype="FLOAT")
    return Item(path=path, labels=("x",))


def _ramp(n: int) -> np.ndarray:
    """A signal whose every sample is distinct: position i holds (i + 1) / (n + 1)."""
    return ((np.arange(n) + 1) / (n + 1)).astype(np.float32)


@pytest.fixture
def items(tmp_path: Path) -> list[Item]:
    return [
        _write(tmp_path / "long.wav", _ramp(2 * SR)),  # 2.0 s
        _write(tmp_path / "short.wav", _ramp(SR // 4)),  # 0.25 s
        _write(tmp_path / "odd.wav", _ramp(SR + 3)),  # 1 s + 3 samples (odd spare)
        _write(tmp_path / "exact.wav", _ramp(SR // 2)),  # exactly the crop length
    ]


def test_crop_dataset_length_and_centre_crop(items: list[Item]) -> None:
    ds = CropDataset(items, SR, clip_seconds=0.5, random_crop=False)
    assert len(ds) == 4 and ds.num_samples == SR // 2
    n = SR // 2
    for index, item in enumerate(items):
        out = ds[index]
        assert out["index"] == index
        audio = out["audio"]
        assert isinstance(audio, torch.Tensor) and audio.dtype == torch.float32
        assert audio.shape == (n,)
        full = sf.read(item.path, dtype="float32")[0]
        if len(full) >= n:
            start = (len(full) - n) // 2
            np.testing.assert_array_equal(audio.numpy(), full[start : start + n])
        else:
            np.testing.assert_array_equal(audio.numpy(), np.tile(full, 3)[:n])
    # the long clip: spare 12000 samples, start 6000, so the crop is centred exactly
    long = ds[0]["audio"].numpy()
    assert long[0] == _ramp(2 * SR)[6000] and long[-1] == _ramp(2 * SR)[6000 + n - 1]
    # the crop is the same every time (evaluation must be deterministic)
    assert torch.equal(ds[0]["audio"], ds[0]["audio"])


def test_crop_dataset_random_crop(items: list[Item]) -> None:
    ds = CropDataset(items[:1], SR, clip_seconds=0.25, random_crop=True)
    full = _ramp(2 * SR)
    n = SR // 4
    torch.manual_seed(0)
    starts = []
    for _ in range(30):
        crop = ds[0]["audio"].numpy()
        assert crop.shape == (n,)
        start = int(np.searchsorted(full, crop[0]))
        np.testing.assert_array_equal(crop, full[start : start + n])  # a contiguous window
        starts.append(start)
    assert len(set(starts)) > 5  # random, not fixed
    assert 0 <= min(starts) and max(starts) <= len(full) - n
    # reproducible under torch's seed
    torch.manual_seed(0)
    again = [int(np.searchsorted(full, ds[0]["audio"].numpy()[0])) for _ in range(30)]
    assert again == starts


def test_crop_dataset_resamples_and_rounds_length(tmp_path: Path) -> None:
    item = _write(tmp_path / "hi.wav", 0.5 * np.sin(np.arange(3 * 16000) / 5.0), sr=16000)
    ds = CropDataset([item], SR, clip_seconds=0.3333, random_crop=False)
    assert ds.num_samples == round(0.3333 * SR) == 2666
    out = ds[0]["audio"]
    assert out.shape == (2666,) and torch.isfinite(out).all()
