"""Tests for tympan.audio.io: decoding, mono mixing, resampling and every refusal."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tympan.audio.io import (
    AUDIO_EXTENSIONS,
    SILENCE_PEAK,
    audio_duration,
    is_audio_file,
    load_audio,
)
from tympan.errors import AudioError, TympanError


def tone(
    seconds: float, sr: int, freq: float = 1000.0, amp: float = 0.5, channels: int = 1
) -> np.ndarray:
    """A sine tone, [frames] or [frames, channels]."""
    t = np.arange(int(round(seconds * sr))) / sr
    x = (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return x if channels == 1 else np.stack([x] * channels, axis=1)


def write(path: Path, data: np.ndarray, sr: int, subtype: str | None = None) -> Path:
    sf.write(path, data, sr, subtype=subtype)
    return path


def peak_hz(x: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / sr)[np.argmax(spectrum)])


def test_mono_file_at_target_rate_is_returned_unchanged(tmp_path: Path) -> None:
    x = tone(0.5, 16000)
    wav = load_audio(write(tmp_path / "a.wav", x, 16000, "FLOAT"), 16000)
    assert wav.dtype == np.float32 and wav.ndim == 1 and wav.flags.c_contiguous
    np.testing.assert_array_equal(wav, x)


def test_stereo_44k_is_mixed_to_mono_and_resampled_to_16k(tmp_path: Path) -> None:
    sr_in, sr_out = 44100, 16000
    left = tone(1.0, sr_in, 1000.0, amp=0.6)
    right = tone(1.0, sr_in, 1000.0, amp=0.2)
    path = write(tmp_path / "stereo.wav", np.stack([left, right], axis=1), sr_in)
    wav = load_audio(path, sr_out)
    assert wav.dtype == np.float32 and wav.ndim == 1
    assert abs(len(wav) - sr_out) <= 1  # 1 s in, 1 s out
    assert peak_hz(wav, sr_out) == pytest.approx(1000.0, abs=2.0)
    # mean of the channels: amplitude (0.6 + 0.2) / 2, within 16-bit and resampler error
    mid = wav[2000:-2000]
    assert np.max(np.abs(mid)) == pytest.approx(0.4, abs=0.01)


def test_flac_and_ogg_decode(tmp_path: Path) -> None:
    for name in ("a.flac", "a.ogg"):
        wav = load_audio(write(tmp_path / name, tone(0.3, 22050), 22050), 16000)
        assert abs(len(wav) - 4800) <= 1
        assert peak_hz(wav, 16000) == pytest.approx(1000.0, abs=5.0)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(AudioError) as info:
        load_audio(tmp_path / "nope.wav", 16000)
    assert "nope.wav" in str(info.value) and "file not found" in str(info.value)
    assert info.value.path.endswith("nope.wav")
    assert isinstance(info.value, TympanError)


def test_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "dir.wav").mkdir()
    with pytest.raises(AudioError, match=r"dir\.wav: is a folder"):
        load_audio(tmp_path / "dir.wav", 16000)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads everything")
def test_unreadable_file(tmp_path: Path) -> None:
    path = write(tmp_path / "locked.wav", tone(0.2, 16000), 16000)
    path.chmod(0)
    try:
        with pytest.raises(AudioError, match=r"locked\.wav: cannot be read \(permission denied\)"):
            load_audio(path, 16000)
    finally:
        path.chmod(0o644)


def test_permission_error_is_reported_without_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # runs as root too (where chmod cannot make a file unreadable): the module's open() fails
    import tympan.audio.io as audio_io

    path = write(tmp_path / "locked.wav", tone(0.2, 16000), 16000)

    def deny(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(audio_io, "open", deny, raising=False)
    with pytest.raises(AudioError, match=r"locked\.wav: cannot be read \(permission denied\)"):
        load_audio(path, 16000)


def test_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.wav"
    path.write_bytes(np.random.default_rng(0).bytes(2048))
    with pytest.raises(AudioError) as info:
        load_audio(path, 16000)
    message = str(info.value)
    assert "corrupt.wav" in message and "cannot be decoded" in message
    assert "re-encode it as WAV, FLAC or OGG" in message
    # libsndfile's own words, without the "Error opening '<path>'" preamble
    assert "Error opening" not in message


def test_empty_file(tmp_path: Path) -> None:
    path = write(tmp_path / "empty.wav", np.zeros((0, 1), dtype=np.float32), 16000)
    with pytest.raises(AudioError, match=r"empty\.wav: contains no audio \(0 frames\)"):
        load_audio(path, 16000)


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "zero.wav"
    path.write_bytes(b"")
    with pytest.raises(AudioError, match=r"zero\.wav: cannot be decoded"):
        load_audio(path, 16000)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_samples(tmp_path: Path, bad: float) -> None:
    x = tone(0.2, 16000)
    x[100] = bad
    path = write(tmp_path / "nan.wav", x, 16000, "FLOAT")
    with pytest.raises(AudioError, match=r"nan\.wav: contains 1 NaN or infinite sample"):
        load_audio(path, 16000)


def test_silent_file(tmp_path: Path) -> None:
    path = write(tmp_path / "silent.wav", np.zeros(16000, dtype=np.float32), 16000)
    with pytest.raises(AudioError, match=r"silent\.wav: is silent"):
        load_audio(path, 16000)


def test_quiet_but_not_silent_file_loads(tmp_path: Path) -> None:
    path = write(tmp_path / "quiet.wav", tone(0.2, 16000, amp=10 * SILENCE_PEAK), 16000, "FLOAT")
    assert len(load_audio(path, 16000)) == 3200


def test_channels_that_cancel_are_silent(tmp_path: Path) -> None:
    x = tone(0.2, 16000)
    path = write(tmp_path / "phase.wav", np.stack([x, -x], axis=1), 16000, "FLOAT")
    with pytest.raises(AudioError, match="is silent"):
        load_audio(path, 16000)


def test_min_seconds(tmp_path: Path) -> None:
    path = write(tmp_path / "short.wav", tone(0.2, 44100), 44100)
    with pytest.raises(AudioError) as info:
        load_audio(path, 16000, min_seconds=0.5)
    message = str(info.value)
    assert "short.wav" in message
    assert "is 0.20 s long, shorter than the 0.50 s needed" in message
    assert len(load_audio(path, 16000, min_seconds=0.2)) == 3200  # exactly long enough


def test_too_few_samples_to_resample(tmp_path: Path) -> None:
    path = write(tmp_path / "one.wav", np.full(1, 0.5, dtype=np.float32), 44100, "FLOAT")
    with pytest.raises(AudioError, match=r"one\.wav: is too short to resample"):
        load_audio(path, 16000)


def test_bad_sample_rate_argument(tmp_path: Path) -> None:
    path = write(tmp_path / "a.wav", tone(0.1, 16000), 16000)
    with pytest.raises(ValueError, match="sample_rate"):
        load_audio(path, 0)


def test_audio_duration(tmp_path: Path) -> None:
    path = write(tmp_path / "a.wav", tone(0.75, 8000, channels=2), 8000)
    assert audio_duration(path) == pytest.approx(0.75)
    assert audio_duration(str(path)) == pytest.approx(0.75)
    with pytest.raises(AudioError, match=r"gone\.wav: file not found"):
        audio_duration(tmp_path / "gone.wav")
    (tmp_path / "bad.flac").write_bytes(b"not audio at all" * 10)
    with pytest.raises(AudioError, match=r"bad\.flac: cannot be decoded"):
        audio_duration(tmp_path / "bad.flac")


def test_is_audio_file() -> None:
    assert AUDIO_EXTENSIONS == (".wav", ".flac", ".ogg", ".mp3")
    assert is_audio_file("a/b.WAV") and is_audio_file(Path("x.flac"))
    assert not is_audio_file("notes.txt")
    assert not is_audio_file("dog/._001.wav")  # macOS resource fork, not audio
