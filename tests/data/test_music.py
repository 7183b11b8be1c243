"""Tests of the embedded music corpus (tympan.data.music), on the "tiny" scale."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tympan.data import music
from tympan.data.manifest import LABEL_SEPARATOR, read_manifest
from tympan.data.music import (
    BRIGHT_CENTROID_HZ,
    MUSIC_INSTRUMENTS,
    MUSIC_SCALES,
    MUSIC_TAGS,
    MusicSpec,
    synth_music,
    tempo_tag,
)
from tympan.errors import ConfigError, TympanError

TINY = MUSIC_SCALES["tiny"]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _sidecar(manifest: Path) -> dict:
    return json.loads((manifest.parent / "tracks.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny corpus, seed 0 (rendered in parallel where the machine allows); its manifest."""
    out = tmp_path_factory.mktemp("music") / "corpus"
    return synth_music(out, seed=0, scale="tiny", progress=False)


def test_vocabulary_and_scales() -> None:
    assert len(MUSIC_TAGS) == len(set(MUSIC_TAGS)) == 17
    assert len(MUSIC_INSTRUMENTS) >= 10
    assert MUSIC_TAGS[: len(MUSIC_INSTRUMENTS)] == MUSIC_INSTRUMENTS
    assert set(MUSIC_TAGS) - set(MUSIC_INSTRUMENTS) == {"slow", "medium", "fast", "dark", "bright"}
    assert all(LABEL_SEPARATOR not in tag and tag == tag.strip() for tag in MUSIC_TAGS)
    assert set(music._SYNTHS) == set(music._ROLES) == set(MUSIC_INSTRUMENTS)
    full = MUSIC_SCALES["full"]
    assert full.seconds == 30.0 and 120 <= full.n_tracks <= 160
    # Same-track pairs: a 4 s anchor, a positive up to 16 s away, 4 s long.
    assert TINY.seconds >= 20.0 and full.seconds >= 24.0
    assert full.sample_rate == TINY.sample_rate == 16000
    assert [tempo_tag(b) for b in (60, 89.9, 90, 130, 130.1, 170)] == [
        "slow", "slow", "medium", "medium", "fast", "fast"
    ]


def test_every_instrument_renders() -> None:
    rng = np.random.default_rng(0)
    for name, factory in music._SYNTHS.items():
        note = factory(rng, 16000, 440.0)
        pitches = [0, 1, 2, 3] if name == "drums" else [music._LOW_NOTE[name] + j for j in (0, 19)]
        for pitch in pitches:
            wave = note(pitch, 0.4)
            assert wave.ndim == 1 and len(wave) >= int(0.1 * 16000), name
            assert np.all(np.isfinite(wave)), name
            assert 0.02 < np.sqrt(np.mean(wave**2)) and np.max(np.abs(wave)) < 4.0, name


def test_manifest(tiny: Path) -> None:
    with open(tiny, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["path", "label", "split", "track"]
    assert len(rows) == TINY.n_tracks
    for row in rows:
        assert row["path"] == f"audio/{row['split']}/{row['track']}.wav"

    manifest = read_manifest(tiny)  # also checks that every file exists
    assert manifest.is_multilabel
    assert manifest.splits == ["train", "val", "test"]
    counts = Counter(item.split for item in manifest)
    assert counts == {"train": 12, "val": 3, "test": 3}
    tracks = [item.track for item in manifest]
    assert len(set(tracks)) == len(tracks) == TINY.n_tracks
    assert sorted(tracks) == [f"track_{i:04d}" for i in range(TINY.n_tracks)]
    for item in manifest:
        assert item.track == item.path.stem
        labels = item.labels
        # In vocabulary order; 2-4 instruments, exactly one tempo and one brightness tag.
        assert list(labels) == sorted(labels, key=MUSIC_TAGS.index)
        instruments = [t for t in labels if t in MUSIC_INSTRUMENTS]
        assert 2 <= len(instruments) <= 4 and 4 <= len(labels) <= 6
        assert sum(t in ("slow", "medium", "fast") for t in labels) == 1
        assert sum(t in ("dark", "bright") for t in labels) == 1
    # The tiny corpus already has every instrument (one rotates with the track index).
    used = {t for item in manifest for t in item.labels}
    assert len(used & set(MUSIC_INSTRUMENTS)) == len(MUSIC_INSTRUMENTS) >= 10
    assert {"dark", "bright"} <= used and len(used & {"slow", "medium", "fast"}) >= 2


def test_audio_files(tiny: Path) -> None:
    for item in read_manifest(tiny):
        info = sf.info(str(item.path))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert info.frames == int(TINY.seconds * 16000) >= 20 * 16000
        wav, _ = sf.read(str(item.path), dtype="float64")
        assert np.all(np.isfinite(wav))
        peak_db = 20 * np.log10(np.max(np.abs(wav)))
        assert -20.1 <= peak_db <= -0.99  # peak-normalised, never clipping
        # Music fills the track: no long silence at either end or in between.
        frames = wav[: len(wav) // 8000 * 8000].reshape(-1, 8000)  # half-second frames
        rms = np.sqrt(np.mean(frames**2, axis=1))
        assert np.all(rms > 1e-3 * rms.max())


def _onset_envelope(wav: np.ndarray, sr: int, hop: int = 160) -> tuple[np.ndarray, float]:
    """Spectral flux (positive log-magnitude differences) at 100 frames per second."""
    frames = np.lib.stride_tricks.sliding_window_view(wav, 512)[::hop] * np.hanning(512)
    mag = np.log1p(100.0 * np.abs(np.fft.rfft(frames, axis=1)) / np.max(np.abs(wav)))
    flux = np.maximum(np.diff(mag, axis=0), 0.0).sum(axis=1)
    return flux - flux.mean(), sr / hop


def test_sidecar_and_tags_match_the_audio(tiny: Path) -> None:
    meta = _sidecar(tiny)
    assert meta["tags"] == list(MUSIC_TAGS) and meta["seed"] == 0 and meta["scale"] == "tiny"
    assert meta["bright_centroid_hz"] == BRIGHT_CENTROID_HZ
    by_track = {t["track"]: t for t in meta["tracks"]}
    manifest = read_manifest(tiny)
    assert set(by_track) == {item.track for item in manifest}
    n_rhythmic = 0
    for item in manifest:
        track = by_track[item.track]
        assert tuple(track["tags"]) == item.labels and track["split"] == item.split
        assert track["path"] == f"audio/{item.split}/{item.track}.wav"
        assert [t for t in item.labels if t in MUSIC_INSTRUMENTS] == track["instruments"]
        # Tempo: the tag follows the stored BPM, which sits clear of the boundaries...
        assert tempo_tag(track["bpm"]) == track["tempo"] in item.labels
        assert not 85.0 < track["bpm"] < 95.0 and not 125.0 < track["bpm"] < 135.0
        # ... and the audio pulses at that BPM: the onset autocorrelation at one beat is in
        # the top fifth of all lags from 0.25 to 2 s (pads-only tracks change only per chord).
        wav, sr = sf.read(str(item.path), dtype="float64")
        env, fps = _onset_envelope(wav, sr)
        ac = np.correlate(env, env, "full")[len(env) - 1 :]
        lags = np.arange(len(ac)) / fps
        beat = 60.0 / track["bpm"]
        window = (lags >= 0.25) & (lags <= 2.0)
        rank = np.mean(ac[window] < np.interp(beat, lags, ac))
        if set(track["instruments"]) - {"synth_pad", "strings"}:
            n_rhythmic += 1
            assert rank >= 0.8, (item.track, track["bpm"], rank)
        # Brightness: the tag follows the stored centroid, which the file reproduces.
        assert (track["centroid_hz"] >= BRIGHT_CENTROID_HZ) == ("bright" in item.labels)
        assert track["brightness"] in item.labels
        centroid = music._spectral_centroid(wav, sr)
        assert centroid == pytest.approx(track["centroid_hz"], rel=0.02)
        # Sections of 5-10 s: two 4 s segments 4-16 s apart usually fall in different ones.
        assert 5.0 <= track["section_seconds"] <= 11.0
        assert len(track["progressions"]) >= TINY.seconds / track["section_seconds"]
    assert n_rhythmic >= TINY.n_tracks // 2


def test_brightness_tags_follow_the_tone_filter(tiny: Path) -> None:
    tracks = _sidecar(tiny)["tracks"]
    dark = [t["centroid_hz"] for t in tracks if t["tone_filter"] == "low-pass"]
    bright = [t["centroid_hz"] for t in tracks if t["tone_filter"] == "presence"]
    assert dark and bright and np.median(dark) < BRIGHT_CENTROID_HZ < np.median(bright)


def test_deterministic_and_seeded(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Rendered serially this time: the result must not depend on order or on worker processes.
    monkeypatch.setattr(music, "_PARALLEL_MIN_TRACKS", 10**9)
    again = synth_music(tmp_path / "again", seed=0, scale="tiny", progress=False)
    assert _files(again.parent) == _files(tiny.parent)
    # Re-running into the same folder gives the same corpus again.
    synth_music(tmp_path / "again", seed=0, scale="tiny", progress=False)
    assert _files(again.parent) == _files(tiny.parent)
    # Another seed gives other music (one track is enough to tell, and cheaper).
    a, meta_a = music._render_track(TINY, 0, 0)
    b, meta_b = music._render_track(TINY, 1, 0)
    assert not np.array_equal(a, b) and meta_a != meta_b
    assert np.array_equal(a, music._render_track(TINY, 0, 0)[0])


def test_stratified_splits() -> None:
    # Tags distributed like a full-scale corpus: every tag lands in every split, sizes exact.
    rng = np.random.default_rng(0)
    tags = []
    for i in range(144):
        chosen = {MUSIC_INSTRUMENTS[i % 12], *rng.choice(MUSIC_INSTRUMENTS, 2, replace=False)}
        tempo = ("slow", "medium", "fast")[int(rng.integers(3))]
        bright = ("dark", "bright")[int(rng.integers(2))]
        tags.append([t for t in MUSIC_INSTRUMENTS if t in chosen] + [tempo, bright])
    splits = music._assign_splits(tags, seed=3)
    assert Counter(splits) == {"train": 100, "val": 22, "test": 22}
    for split in ("train", "val", "test"):
        present = {t for row, s in zip(tags, splits) if s == split for t in row}
        assert present == set(MUSIC_TAGS), split
    assert splits == music._assign_splits(tags, seed=3)
    assert splits != music._assign_splits(tags, seed=4)


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown music corpus scale 'huge'.*full, tiny"):
        synth_music(tmp_path / "x", scale="huge")
    for seed in (-1, 1.5, True):
        with pytest.raises(ConfigError, match="non-negative integer"):
            synth_music(tmp_path / "x", seed=seed, scale="tiny")  # type: ignore[arg-type]
    a_file = tmp_path / "file.txt"
    a_file.write_text("not a folder")
    with pytest.raises(TympanError, match="not a folder"):
        synth_music(a_file, scale="tiny")
    with pytest.raises(ConfigError, match="seconds must be >= 20"):
        MusicSpec(n_tracks=10, seconds=10.0)
    with pytest.raises(ConfigError, match="n_tracks must be >= 3"):
        MusicSpec(n_tracks=2, seconds=30.0)
    with pytest.raises(ConfigError, match="sample_rate"):
        MusicSpec(n_tracks=10, seconds=30.0, sample_rate=8000)
    assert not (tmp_path / "x").exists()  # nothing written when the arguments are wrong
