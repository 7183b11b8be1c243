"""Tests for tympan.data.scan: fail fast in manifest order, or skip bad files and say why."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tympan.data.manifest import Item
from tympan.data.scan import ScanReport, scan_items
from tympan.errors import AudioError


def good(path: Path, seconds: float = 0.25, sr: int = 16000, freq: float = 440.0) -> Item:
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), sr)
    return Item(path, ("tone",))


def corrupt(path: Path) -> Item:
    path.write_bytes(np.random.default_rng(1).bytes(1024))
    return Item(path, ("junk",))


def silent(path: Path) -> Item:
    sf.write(path, np.zeros(4000, dtype=np.float32), 16000)
    return Item(path, ("quiet",))


@pytest.fixture
def mixed(tmp_path: Path) -> list[Item]:
    """good, corrupt, good, missing, silent, good: bad ones at indices 1, 3, 4."""
    return [
        good(tmp_path / "g0.wav"),
        corrupt(tmp_path / "bad1.wav"),
        good(tmp_path / "g2.wav", freq=880.0),
        Item(tmp_path / "missing3.wav", ("x",)),
        silent(tmp_path / "silent4.wav"),
        good(tmp_path / "g5.wav", seconds=0.5, sr=8000),
    ]


def test_all_good(tmp_path: Path) -> None:
    items = [good(tmp_path / f"{i}.wav") for i in range(5)]
    report = scan_items(items, 16000, progress=False)
    assert isinstance(report, ScanReport)
    assert report.items == items and report.skipped == [] and report.audio is None
    assert report.to_json() == {"n_ok": 5, "n_skipped": 0, "skipped": []}


@pytest.mark.parametrize("num_workers", [1, 2, 4])
def test_first_bad_file_in_manifest_order_raises(mixed: list[Item], num_workers: int) -> None:
    with pytest.raises(AudioError) as info:
        scan_items(mixed, 16000, num_workers=num_workers, progress=False)
    message = str(info.value)
    assert info.value.path == str(mixed[1].path)
    assert message.startswith(str(mixed[1].path)) and "cannot be decoded" in message
    assert message.endswith("(use --skip-bad to skip unreadable files and continue)")


def test_first_bad_file_even_if_a_later_one_fails_first(tmp_path: Path) -> None:
    # the missing file (index 3) fails instantly, long before the long good files are decoded;
    # the error must still be the first bad one in manifest order (index 2)
    items = [good(tmp_path / f"long{i}.wav", seconds=3.0) for i in range(2)]
    items += [silent(tmp_path / "silent.wav"), Item(tmp_path / "missing.wav", ("x",))]
    with pytest.raises(AudioError, match=r"silent\.wav: is silent"):
        scan_items(items, 16000, num_workers=4, progress=False)


def test_skip_bad(mixed: list[Item], caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="tympan"):
        report = scan_items(mixed, 16000, skip_bad=True, progress=False)
    assert report.items == [mixed[0], mixed[2], mixed[5]]
    assert [s["path"] for s in report.skipped] == [str(mixed[i].path) for i in (1, 3, 4)]
    reasons = [s["reason"] for s in report.skipped]
    assert "cannot be decoded" in reasons[0]
    assert "file not found" in reasons[1]
    assert "is silent" in reasons[2]
    assert all("--skip-bad" not in r for r in reasons)
    summary = report.to_json()
    assert summary["n_ok"] == 3 and summary["n_skipped"] == 3
    assert summary["skipped"] == report.skipped
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "skipped 3 of 6" in warnings[0].getMessage()


def test_keep_audio_is_aligned_with_items(mixed: list[Item]) -> None:
    report = scan_items(mixed, 16000, skip_bad=True, keep_audio=True, progress=False)
    assert report.audio is not None and len(report.audio) == len(report.items) == 3
    lengths = [len(a) for a in report.audio]
    assert lengths == [4000, 4000, 8000]  # the 8 kHz file is resampled to 16 kHz
    assert all(a.dtype == np.float32 and a.ndim == 1 for a in report.audio)
    # g0 is 440 Hz and g2 880 Hz: the arrays follow the items, not the completion order
    peaks = [np.argmax(np.abs(np.fft.rfft(a))) * 16000 / len(a) for a in report.audio[:2]]
    assert peaks == pytest.approx([440.0, 880.0], abs=8.0)


def test_min_seconds_skips_short_files(tmp_path: Path) -> None:
    items = [good(tmp_path / "short.wav", seconds=0.2), good(tmp_path / "long.wav", seconds=0.6)]
    report = scan_items(items, 16000, skip_bad=True, min_seconds=0.5, progress=False)
    assert report.items == [items[1]]
    assert "shorter than the 0.50 s needed" in report.skipped[0]["reason"]


def test_empty_input_and_progress_bar(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert scan_items([], 16000, progress=False).to_json()["n_ok"] == 0
    scan_items([good(tmp_path / "a.wav")], 16000, progress=True, desc="checking test audio")
    assert "checking test audio" in capsys.readouterr().err
