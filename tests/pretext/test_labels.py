"""Pretext-task label extraction (tympan.pretext.labels; seed 004, Table I and section VIII-B)."""

from __future__ import annotations

import os
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf
import torch

from tympan.errors import AudioError, ConfigError, TympanError
from tympan.pretext import labels as L
from tympan.pretext.labels import (
    CANDIDATES,
    DEFAULT_CANDIDATES,
    PretextLabels,
    extract_labels,
    register_candidate,
    unregister_candidate,
)

SR = 16000


def tone(freq: float, amp: float = 0.3, seconds: float = 0.5) -> np.ndarray:
    t = np.arange(int(SR * seconds)) / SR
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def noise(amp: float = 0.3, seconds: float = 0.5, seed: int = 0) -> np.ndarray:
    return (amp * np.random.default_rng(seed).standard_normal(int(SR * seconds))).clip(-1, 1).astype(np.float32)


def write_set(root: Path, clips: dict[str, np.ndarray]) -> Path:
    """WAV files + manifest.csv (path,label); returns the manifest."""
    (root / "audio").mkdir(parents=True, exist_ok=True)
    lines = ["path,label"]
    for name, wav in clips.items():
        sf.write(root / "audio" / f"{name}.wav", wav, SR)
        lines.append(f"audio/{name}.wav,{name}")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root / "manifest.csv"


@pytest.fixture(scope="module")
def signals(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, PretextLabels]:
    root = tmp_path_factory.mktemp("sig")
    man = write_set(root, {
        "low": tone(220), "loud": tone(220, amp=0.9), "high": tone(2000), "noise": noise(),
    })
    labels = extract_labels(man, root / "labels.npz", workers=1, progress=False)
    return root, labels


@pytest.fixture
def rms_candidate():
    calls: list[int] = []

    def rms(wav: np.ndarray, sr: int) -> np.ndarray:
        calls.append(1)
        return librosa.feature.rms(y=wav, frame_length=400, hop_length=sr // 100)

    register_candidate("rms_test", rms, "librosa RMS energy")
    yield calls
    unregister_candidate("rms_test")


def row(labels: PretextLabels, name: str) -> int:
    return int(labels.index_of([next(p for p in labels.paths if Path(p).stem == name)])[0])


def test_registry_is_the_seed_list() -> None:
    assert DEFAULT_CANDIDATES == ("loudness", "f0", "voicing", "alpha_ratio", "zcr", "audspec_l1", "log_hnr",
                                 "spectral_centroid", "spectral_kurtosis", "hammarberg")
    assert CANDIDATES["audspec_l1"].column == "audspecRasta_lengthL1norm_sma"
    with pytest.raises(ConfigError, match="already registered"):
        register_candidate("f0", lambda w, s: w, "dup")
    with pytest.raises(ConfigError, match="snake case"):
        register_candidate("Bad Name", lambda w, s: w)


def test_signal_properties(signals: tuple[Path, PretextLabels]) -> None:
    _, lab = signals
    m = lab.clip_means_dict()
    low, loud, high, nz = (row(lab, k) for k in ("low", "loud", "high", "noise"))
    # 220 Hz tone: F0 near 220 Hz in voiced frames, voicing high.
    f0 = lab.frames_of(low)[:, lab.names.index("f0")]
    voiced = f0 > 0
    assert voiced.mean() > 0.8 and abs(np.median(f0[voiced]) - 220) < 5
    assert m["voicing"][low] > 0.7
    # White noise: voicing low, ZCR far above the low tone's.
    assert m["voicing"][nz] < m["voicing"][low] - 0.2
    assert m["zcr"][nz] > 10 * m["zcr"][low]
    # A louder copy is louder; a high tone has a higher centroid than a low one.
    assert m["loudness"][loud] > 1.5 * m["loudness"][low]
    assert m["spectral_centroid"][high] > 5 * m["spectral_centroid"][low]
    # Layout: 10 ms frames, T = n // hop, clip means finite, offsets consistent.
    assert lab.hop_seconds == 0.01 and list(lab.lengths) == [50] * 4
    assert np.isfinite(lab.clip_means).all() and lab.offsets[-1] == len(lab.frames)
    assert lab.names == list(DEFAULT_CANDIDATES)


def test_file_round_trip_and_access(signals: tuple[Path, PretextLabels]) -> None:
    root, lab = signals
    back = PretextLabels.load(root / "labels.npz")
    assert back.paths == lab.paths and back.names == lab.names
    np.testing.assert_array_equal(back.frames, lab.frames)
    np.testing.assert_array_equal(back.offsets, lab.offsets)
    padded, lengths = back.padded(["f0", "zcr"])
    assert padded.shape == (4, 50, 2) and lengths.tolist() == [50] * 4
    torch.testing.assert_close(padded[2], torch.as_tensor(back.frames_of(2)[:, [1, 4]]))
    sub = back.select(["zcr"])
    assert sub.names == ["zcr"] and sub.clip_means.shape == (4, 1)
    with pytest.raises(TympanError, match="run tympan pretext labels"):
        back.index_of([root / "audio" / "absent.wav"])
    with pytest.raises(TympanError, match="no candidate 'nope'"):
        back.select(["nope"])


def test_padded_varying_lengths() -> None:
    frames = np.arange(10, dtype=np.float32).reshape(5, 2)
    lab = PretextLabels(["a", "b"], ["x", "y"], np.zeros((2, 2)), frames, np.array([0, 2, 5]))
    pad, lengths = lab.padded()
    assert lengths.tolist() == [2, 3]
    assert pad[0, 2].tolist() == [0, 0] and pad[1, :, 0].tolist() == [4, 6, 8]


def test_cache_hit_and_invalidation(tmp_path: Path, rms_candidate: list[int]) -> None:
    man = write_set(tmp_path, {"a": tone(220), "b": tone(440)})
    out = tmp_path / "lab.npz"
    first = extract_labels(man, out, candidates=["rms_test"], workers=1, progress=False)
    assert len(rms_candidate) == 2 and (tmp_path / "lab.npz.cache").is_dir()
    again = extract_labels(man, out, candidates=["rms_test"], workers=1, progress=False)
    assert len(rms_candidate) == 2  # both files served from the cache
    np.testing.assert_array_equal(first.frames, again.frames)
    # Rewrite one file louder (new size/mtime): only that one is re-extracted, with new values.
    wav_b = tmp_path / "audio" / "b.wav"
    sf.write(wav_b, tone(440, amp=0.9), SR)
    st = os.stat(wav_b)
    os.utime(wav_b, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    third = extract_labels(man, out, candidates=["rms_test"], workers=1, progress=False)
    assert len(rms_candidate) == 3
    assert third.clip_means[1, 0] > 2.5 * first.clip_means[1, 0]
    assert third.clip_means[0, 0] == first.clip_means[0, 0]


def test_user_candidate_in_file_without_opensmile(tmp_path: Path, rms_candidate: list[int],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    man = write_set(tmp_path, {"quiet": tone(300, amp=0.1), "loud": tone(300, amp=0.8)})
    monkeypatch.setitem(__import__("sys").modules, "opensmile", None)  # import opensmile fails
    with pytest.raises(TympanError, match=r"pip install 'tympan\[pretext\]'"):
        extract_labels(man, tmp_path / "x.npz", candidates=["f0"], workers=1, progress=False)
    lab = extract_labels(man, tmp_path / "x.npz", candidates=["rms_test"], workers=1, progress=False)
    back = PretextLabels.load(tmp_path / "x.npz")
    assert back.names == ["rms_test"]
    quiet, loud = lab.index_of([tmp_path / "audio" / "quiet.wav", tmp_path / "audio" / "loud.wav"])
    assert back.clip_means[loud, 0] / back.clip_means[quiet, 0] == pytest.approx(8, rel=0.05)
    # librosa's centred frames (n // hop + 1) are trimmed to the clip's 10 ms frame count
    assert back.lengths.tolist() == [50, 50]


def test_nonfinite_replaced_and_counted(tmp_path: Path) -> None:
    def holes(wav: np.ndarray, sr: int) -> np.ndarray:
        v = np.full(len(wav) // (sr // 100), 2.0)
        v[:5] = np.nan
        return v

    register_candidate("holes_test", holes)
    try:
        man = write_set(tmp_path, {"a": tone(220)})
        lab = extract_labels(man, tmp_path / "h.npz", candidates=["holes_test"], workers=1, progress=False)
    finally:
        unregister_candidate("holes_test")
    assert lab.nonfinite.tolist() == [[5]] and lab.clip_means[0, 0] == 2.0
    assert np.isfinite(lab.frames).all()


def test_parallel_equals_serial(tmp_path: Path) -> None:
    clips = {f"c{i}": tone(150 + 100 * i, amp=0.2 + 0.1 * i, seconds=0.3) for i in range(4)}
    man = write_set(tmp_path, clips)
    names = ["f0", "loudness", "zcr"]
    serial = extract_labels(man, tmp_path / "s.npz", candidates=names, workers=1, progress=False)
    par = extract_labels(man, tmp_path / "p.npz", candidates=names, workers=2, progress=False)
    assert par.paths == serial.paths
    np.testing.assert_array_equal(par.frames, serial.frames)
    np.testing.assert_array_equal(par.clip_means, serial.clip_means)
    assert len(list((tmp_path / "p.npz.cache").rglob("*.npz"))) == 4  # the workers wrote the cache


def test_corrupt_file_named_or_skipped(tmp_path: Path) -> None:
    man = write_set(tmp_path, {"good": tone(220), "bad": tone(330)})
    bad = tmp_path / "audio" / "bad.wav"
    bad.write_bytes(b"RIFF not really a wave file")
    with pytest.raises(AudioError, match=r"bad\.wav.*--skip-bad"):
        extract_labels(man, tmp_path / "l.npz", candidates=["zcr"], workers=1, progress=False)
    lab = extract_labels(man, tmp_path / "l.npz", candidates=["zcr"], workers=2, skip_bad=True, progress=False)
    assert [Path(p).name for p in lab.paths] == ["good.wav"]
    assert len(lab.skipped) == 1 and lab.skipped[0]["path"].endswith("bad.wav")
    assert PretextLabels.load(tmp_path / "l.npz").skipped == lab.skipped


def test_argument_errors(tmp_path: Path) -> None:
    man = write_set(tmp_path, {"a": tone(220)})
    with pytest.raises(ConfigError, match="unknown candidate 'pitchh'"):
        extract_labels(man, tmp_path / "l.npz", candidates=["pitchh"], progress=False)
    with pytest.raises(TympanError, match="no such labels file"):
        PretextLabels.load(tmp_path / "missing.npz")
    short = write_set(tmp_path / "short", {"s": tone(220, seconds=0.05)})
    with pytest.raises(AudioError, match="shorter than"):
        extract_labels(short, tmp_path / "s.npz", candidates=["zcr"], workers=1, progress=False)
    assert L.MIN_SECONDS == 0.1
