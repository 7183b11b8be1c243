"""Tests of the embedded synthetic corpus (tympan.data.corpora), on the "tiny" scale."""

from __future__ import annotations

import csv
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tympan.data import corpora
from tympan.data.corpora import CORPUS_SCALES, CorpusSpec, synth_corpus
from tympan.errors import TympanError

TINY = CORPUS_SCALES["tiny"]


def _rows(manifest: Path) -> list[dict[str, str]]:
    with open(manifest, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _family(label: str) -> str:
    return label.split("_")[0]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny corpus, seed 0; returns its manifest."""
    out = tmp_path_factory.mktemp("tiny") / "corpus"
    return synth_corpus(out, seed=0, scale="tiny", progress=False)


def test_scales() -> None:
    full = CORPUS_SCALES["full"]
    assert full.n_classes == 40 and (full.min_seconds, full.max_seconds) == (1.0, 5.0)
    assert (full.clips_per_class, full.pretrain_clips_per_class) == (24, 40)
    assert TINY.n_classes >= 30 and TINY.sample_rate == full.sample_rate == 16000
    labels = [label for _, _, classes in corpora._FAMILIES for label, _ in classes]
    assert len(labels) == len(set(labels)) == 40
    # The family is the label's prefix: the test of separability below relies on it.
    assert all(_family(label) == family for family, _, cls in corpora._FAMILIES for label, _ in cls)


def test_manifest_counts_and_splits(tiny: Path) -> None:
    rows = _rows(tiny)
    assert list(rows[0]) == ["path", "label", "split", "track"]
    by_split: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        by_split[row["split"]].add(row["label"])
    assert set(by_split) == {"train", "val", "test", "pretrain"}
    train, val, test = by_split["train"], by_split["val"], by_split["test"]
    assert len(train | val | test) == TINY.n_classes >= 30
    assert not (train & val) and not (train & test) and not (val & test)
    assert by_split["pretrain"] == train  # val/test classes never reach pretraining
    assert len(test) >= 5 and len(val) >= 5  # 5-way episodes fit
    # Stratified by family: 3 train / 1 val / 1 test class in each.
    for split, count in (("train", 3), ("val", 1), ("test", 1)):
        assert set(Counter(_family(label) for label in by_split[split]).values()) == {count}
    counts = Counter((row["split"], row["label"]) for row in rows)
    for (split, _), count in counts.items():
        expected = TINY.pretrain_clips_per_class if split == "pretrain" else TINY.clips_per_class
        assert count == expected
    tracks = [row["track"] for row in rows]
    assert len(set(tracks)) == len(tracks)
    for row in rows:
        path = Path(row["path"])
        assert not path.is_absolute() and path.stem == row["track"]
        assert path.parts[:3] == ("audio", row["split"], row["label"])


def test_audio_files(tiny: Path) -> None:
    rows = _rows(tiny)
    files = {p.relative_to(tiny.parent).as_posix() for p in tiny.parent.rglob("*.wav")}
    assert files == {row["path"] for row in rows}
    for row in rows:
        info = sf.info(tiny.parent / row["path"])
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert TINY.min_seconds - 1e-3 <= info.duration <= TINY.max_seconds + 1e-3
        wav, _ = sf.read(tiny.parent / row["path"])
        assert np.isfinite(wav).all()
        assert 1e-3 < np.abs(wav).max() < 32767 / 32768, row["path"]  # audible, never clipped


def test_every_class_renders() -> None:
    """All 40 classes of the full scale (tiny only uses 30) give clean clips in range."""
    spec = CorpusSpec(8, 5, 1, 0, min_seconds=1.0, max_seconds=5.0)
    for class_id in range(spec.n_classes):
        wav = corpora._render_clip(spec, 0, class_id, 0)
        assert np.isfinite(wav).all()
        assert 16000 <= len(wav) <= 5 * 16000
        peak = np.abs(wav).max()
        assert 10 ** (-20.5 / 20) < peak < 10 ** (-0.9 / 20), class_id


def test_deterministic_and_seeded(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "corpus"
    other = synth_corpus(out, seed=1, scale="tiny", progress=False)
    assert other.read_bytes() != tiny.read_bytes()  # the split assignment depends on the seed
    shared = next(r["path"] for r in _rows(other) if (tiny.parent / r["path"]).exists())
    assert (out / shared).read_bytes() != (tiny.parent / shared).read_bytes()
    # Re-run seed 0 into the same folder, through the worker pool: byte-identical to the
    # serial run, and no file of the seed-1 corpus is left behind.
    monkeypatch.setattr(corpora, "_n_workers", lambda n, min_items=0: 2)
    again = synth_corpus(out, seed=0, scale="tiny", progress=True)
    assert again == out / "manifest.csv"
    assert _files(out) == _files(tiny.parent)


def test_classes_separable_but_not_trivial(tiny: Path) -> None:
    """Clips of a class are closer to each other than to the other classes of their family,
    in simple spectro-temporal statistics, but nuisances keep them far from identical."""
    rows = [row for row in _rows(tiny) if row["split"] != "pretrain"]
    feats = [_features(sf.read(tiny.parent / row["path"])[0]) for row in rows]
    blocks = []
    for b in range(len(feats[0])):
        x = np.stack([f[b] for f in feats])
        x = (x - x.mean(0)) / (x.std(0) + 1e-9)
        blocks.append(x / np.sqrt(x.shape[1]))  # each block weighs the same
    x = np.concatenate(blocks, axis=1)
    dist = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    labels = np.array([row["label"] for row in rows])
    families = np.array([_family(label) for label in labels])
    for family in sorted(set(families)):
        idx = np.flatnonzero(families == family)
        d = dist[np.ix_(idx, idx)]
        same = labels[idx][:, None] == labels[idx][None, :]
        intra = d[same & ~np.eye(len(idx), dtype=bool)].mean()
        inter = d[~same].mean()
        assert 0.2 < intra / inter < 0.92, (family, intra / inter)


def _features(wav: np.ndarray) -> tuple[np.ndarray, ...]:
    """(mean log band spectrum, modulation spectrum, up/down glide statistic) of one clip."""
    n_fft, hop, sr = 512, 128, 16000
    frames = np.lib.stride_tricks.sliding_window_view(wav, n_fft)[::hop] * np.hanning(n_fft)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    freqs = np.fft.rfftfreq(n_fft, 1 / sr)
    edges = np.geomspace(100, 8000, 25)
    bands = np.stack(
        [power[:, (freqs >= lo) & (freqs < hi)].sum(1) for lo, hi in zip(edges[:-1], edges[1:])],
        axis=1,
    )
    logs = np.log(bands + 1e-10)  # [frames, bands]
    spectrum = logs.mean(0)
    spectrum = np.maximum(spectrum - spectrum.max(), -3.0)  # ignore the noise floor's level
    z = logs - logs.mean(0)
    mod = np.abs(np.fft.rfft(z * np.hanning(len(z))[:, None], n=256, axis=0))[1:67].mean(1)
    modulation = np.log(mod / mod.sum() + 1e-6)  # 0.5-32 Hz
    glide = np.array(
        [np.mean(z[1:, k:] * z[:-1, :-k]) - np.mean(z[1:, :-k] * z[:-1, k:]) for k in (1, 2)]
    ) / (np.mean(z**2) + 1e-10)
    return spectrum, modulation, glide


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(TympanError, match="unknown corpus scale 'huge'"):
        synth_corpus(tmp_path / "x", scale="huge")
    a_file = tmp_path / "file.txt"
    a_file.write_text("not a folder")
    with pytest.raises(TympanError, match="not a folder"):
        synth_corpus(a_file, scale="tiny")
    with pytest.raises(TympanError, match="non-negative"):
        synth_corpus(tmp_path / "y", seed=-1, scale="tiny")
    with pytest.raises(TympanError, match="classes_per_family"):
        CorpusSpec(6, 2, 6, 2, 1.0, 1.5)
    with pytest.raises(TympanError, match="min_seconds"):
        CorpusSpec(6, 5, 6, 2, 2.0, 1.5)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
