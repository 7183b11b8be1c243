"""Tests of the embedded speech corpus (tympan.data.speech), on the "tiny" scale."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from tympan.data import speech
from tympan.data.manifest import read_manifest
from tympan.data.speech import (
    SPEECH_SCALES,
    SPEECH_SPLITS,
    SPEECH_WORDS,
    WORD_PHONES,
    SpeechSpec,
    synth_speech_corpus,
)
from tympan.errors import ConfigError, TympanError
from tympan.evaluation.verification import verification_eer

TINY = SPEECH_SCALES["tiny"]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _sidecar(manifest: Path) -> dict:
    return json.loads((manifest.parent / "speakers.json").read_text(encoding="utf-8"))


def test_vocabulary_and_scales() -> None:
    assert len(SPEECH_WORDS) == len(set(SPEECH_WORDS)) == 10
    assert set(WORD_PHONES) == set(SPEECH_WORDS)
    assert all(set(p) <= set(speech._PHONES) for p in WORD_PHONES.values())
    assert len(set(WORD_PHONES.values())) == 10  # no two words sound the same
    full = SPEECH_SCALES["full"]
    assert (full.n_speakers, full.n_held_out, full.utterances) == (40, 10, 12)
    assert (TINY.n_speakers, TINY.n_held_out) == (16, 4)
    assert full.sample_rate == TINY.sample_rate == 16000


def test_manifest_and_splits(speech_corpus: Path) -> None:
    with open(speech_corpus, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["path", "label", "split", "track", "speaker"]
    for row in rows:
        assert row["path"] == f"audio/{row['split']}/{row['speaker']}/{row['track']}.wav"

    manifest = read_manifest(speech_corpus)  # also checks that every file exists
    assert manifest.splits == list(SPEECH_SPLITS)
    assert manifest.classes == sorted(SPEECH_WORDS)
    # 12 seen speakers: 10 labelled utterances each (2 test, 2 val, 6 train) and 2 pretrain;
    # 4 held-out speakers: all 10 in verify.
    counts = Counter(item.split for item in manifest)
    assert counts == {"train": 72, "val": 24, "test": 24, "pretrain": 24, "verify": 40}
    by_split = {s: {it.speaker for it in manifest if it.split == s} for s in SPEECH_SPLITS}
    assert len(by_split["verify"]) == 4 and all(len(by_split[s]) == 12 for s in SPEECH_SPLITS[:4])
    assert by_split["train"] == by_split["val"] == by_split["test"] == by_split["pretrain"]
    assert not by_split["verify"] & by_split["train"]  # verification speakers are never seen
    verify = Counter(it.speaker for it in manifest if it.split == "verify")
    assert set(verify.values()) == {10}
    # held-out speakers are half male-like (even index), half female-like (odd)
    assert sorted(int(s[3:]) % 2 for s in verify) == [0, 0, 1, 1]
    tracks = [it.track for it in manifest]
    assert len(set(tracks)) == len(tracks) and all(it.path.stem == it.track for it in manifest)
    for split in SPEECH_SPLITS:  # the n-th utterance of a split says word n mod 10
        labels = [it.label for it in manifest if it.split == split]
        assert labels == [SPEECH_WORDS[n % 10] for n in range(len(labels))]
        per_word = Counter(labels)
        assert set(per_word) == set(SPEECH_WORDS), split  # balanced to within one
        assert max(per_word.values()) - min(per_word.values()) <= 1, split
    for spk in by_split["verify"]:  # ten utterances each: every word once
        assert {it.label for it in manifest if it.speaker == spk} == set(SPEECH_WORDS)


def test_audio_files_and_sidecar(speech_corpus: Path) -> None:
    meta = _sidecar(speech_corpus)
    assert meta["seed"] == 0 and meta["scale"] == "tiny" and meta["words"] == list(SPEECH_WORDS)
    voices = {v["speaker"]: v for v in meta["speakers"]}
    utts = {u["utterance"]: u for u in meta["utterances"]}
    manifest = read_manifest(speech_corpus)
    assert set(utts) == {it.track for it in manifest} and len(voices) == 16
    ratios = []
    for it in manifest:
        u, v = utts[it.track], voices[it.speaker]
        assert u["word"] == it.label and u["split"] == it.split and u["speaker"] == it.speaker
        assert v["group"] == ("held_out" if it.split == "verify" else "seen")
        assert [p["phone"] for p in u["phones"]] == list(WORD_PHONES[it.label])
        info = sf.info(str(it.path))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert info.frames == u["samples"] and abs(u["seconds"] * 16000 - u["samples"]) < 2
        assert TINY.min_seconds - 1e-3 <= u["seconds"] <= TINY.max_seconds + 1e-3
        wav, _ = sf.read(str(it.path), dtype="float64")
        assert np.all(np.isfinite(wav))
        peak_db = 20 * np.log10(np.max(np.abs(wav)))
        assert -20.1 <= peak_db <= -0.99  # peak-normalised, never clipping
        # the word is where the phone timings say: louder than the leading silence
        start, end = u["phones"][0]["start_s"], u["phones"][-1]["end_s"]
        assert 0.04 <= start and end <= u["seconds"] - 0.04
        word = wav[int(start * 16000) : int(end * 16000)]
        lead = wav[: int(start * 16000)]
        ratios.append(np.sqrt(np.mean(word**2) / np.mean(lead**2)))
    assert np.median(ratios) > 10.0 and min(ratios) > 2.0
    for v in voices.values():
        female = int(v["speaker"][3:]) % 2 == 1
        assert v["sex"] == ("female" if female else "male")
        assert (165 <= v["f0_hz"] <= 250) if female else (90 <= v["f0_hz"] <= 150)
        assert (v["formant_scale"] > 1.05) == female


def test_pitch_follows_the_speaker() -> None:
    # The voiced source is at the speaker's F0 (an utterance moves it by at most 1 semitone,
    # intonation by a few): YIN on the dry rendering of the vowel finds it.
    for s in (0, 1, 2, 3):
        voice = speech._voice(0, s)
        wav, meta = speech._render_utterance(TINY, 0, s, 8, "stop", dry=True)
        f0 = librosa.yin(wav, fmin=60, fmax=400, sr=16000, frame_length=1024)
        rms = librosa.feature.rms(y=wav, frame_length=1024, hop_length=256)[0]
        voiced = f0[: len(rms)][rms[: len(f0)] > 0.3 * rms.max()]
        semitones = 12 * np.log2(np.median(voiced) / voice["f0_hz"])
        assert abs(semitones) < 3.0, (s, meta["word"], semitones)


def _mfcc_means(paths: list[Path]) -> np.ndarray:
    """Mean MFCC 1-19 over each clip's louder frames (a simple energy voice-activity rule)."""
    out = []
    for path in paths:
        wav, sr = sf.read(str(path), dtype="float64")
        mf = librosa.feature.mfcc(y=wav, sr=sr, n_mfcc=20, n_mels=40)
        energy = mf[0]
        loud = energy > energy.max() - 0.5 * (energy.max() - np.median(energy))
        out.append(mf[1:, loud].mean(axis=1))
    return np.array(out)


def test_words_and_speakers_are_distinguishable_by_simple_features(speech_corpus: Path) -> None:
    manifest = read_manifest(speech_corpus)
    labelled = [it for it in manifest if it.split != "pretrain"]
    x = _mfcc_means([it.path for it in labelled])
    # words: a logistic regression on mean MFCCs, 5-fold, far above chance (10%)
    words = [it.label for it in labelled]
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=3000))
    accuracy = cross_val_score(probe, x, words, cv=5).mean()
    assert accuracy > 0.35, accuracy
    # speakers: cosine EER of centred mean MFCCs on the held-out speakers, far below 50%
    held = np.array([it.split == "verify" for it in labelled])
    emb = x[held] - x[held].mean(axis=0)
    result = verification_eer(emb, [it.speaker for it, h in zip(labelled, held) if h], draws=0)
    assert result.eer < 0.4, result.summary()


def test_deterministic_seeded_and_overrides(tmp_path: Path) -> None:
    # A small corpus rendered by two worker processes and again in this process: same bytes.
    small = {"seed": 3, "scale": "tiny", "utterances": 3, "progress": False}
    a = synth_speech_corpus(tmp_path / "a", speakers=5, workers=2, **small)
    b = synth_speech_corpus(tmp_path / "b", speakers=5, workers=1, **small)
    assert _files(a.parent) == _files(b.parent)
    manifest = read_manifest(a)
    # 5 speakers: 2 held out (at least two), 3 seen with 1 test, 1 val, 1 train, 2 pretrain
    assert Counter(it.split for it in manifest) == {
        "train": 3, "val": 3, "test": 3, "pretrain": 6, "verify": 6
    }
    # Re-running with fewer speakers into the same folder removes the files it no longer lists.
    synth_speech_corpus(tmp_path / "a", speakers=4, workers=1, **small)
    listed = {it.path for it in read_manifest(a)}
    assert {p for p in (tmp_path / "a" / "audio").rglob("*.wav")} == listed
    # Another seed, another corpus; the same seed, the same utterance.
    x = speech._render_utterance(TINY, 0, 2, 1, "yes")
    assert not np.array_equal(x[0], speech._render_utterance(TINY, 1, 2, 1, "yes")[0])
    assert np.array_equal(x[0], speech._render_utterance(TINY, 0, 2, 1, "yes")[0])
    assert x[1]["word"] == "yes" and x[1]["speaker"] == "spk002"


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown speech corpus scale 'huge'.*full, tiny"):
        synth_speech_corpus(tmp_path / "x", scale="huge")
    for seed in (-1, 1.5, True):
        with pytest.raises(ConfigError, match="non-negative integer"):
            synth_speech_corpus(tmp_path / "x", seed=seed, scale="tiny")  # type: ignore[arg-type]
    a_file = tmp_path / "file.txt"
    a_file.write_text("not a folder")
    with pytest.raises(TympanError, match="not a folder"):
        synth_speech_corpus(a_file, scale="tiny")
    with pytest.raises(ConfigError, match="speakers=\\) must be >= 4"):
        synth_speech_corpus(tmp_path / "x", scale="tiny", speakers=3)
    with pytest.raises(ConfigError, match="utterances=\\) must be >= 3"):
        synth_speech_corpus(tmp_path / "x", scale="tiny", utterances=2)
    with pytest.raises(ConfigError, match="workers=0"):
        synth_speech_corpus(tmp_path / "x", scale="tiny", workers=0)
    with pytest.raises(ConfigError, match="min_seconds"):
        SpeechSpec(n_speakers=8, utterances=4, pretrain_utterances=0, min_seconds=2.0,
                   max_seconds=1.0)
    assert not (tmp_path / "x").exists()  # nothing written when the arguments are wrong
