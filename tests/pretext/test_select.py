"""Manifest + pretext labels -> HSIC selection (tympan.pretext.select; seed 004, sections III-V)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from tympan.errors import TympanError
from tympan.pretext import hsic
from tympan.pretext import select as S
from tympan.pretext.labels import PretextLabels
from tympan.pretext.select import format_selection, logmel_features, select_from_data, selection_inputs

SR = 16000
CLASSES = {"low": 200.0, "mid": 700.0, "high": 2500.0}
PER_CLASS = 6


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, np.ndarray]]:
    """3 tone classes x 6 clips (random amplitude, jittered pitch, varying length) and a labels
    file with: ``class_fn`` (a function of the class only), ``noise`` (independent random) and
    ``amplitude`` (a property of each clip's audio, so dependent on X inside a class)."""
    root = tmp_path_factory.mktemp("sel")
    rng = np.random.default_rng(0)
    lines, paths, amp, cls = ["path,label,split"], [], [], []
    (root / "audio").mkdir()
    for c, (name, f) in enumerate(CLASSES.items()):
        for k in range(PER_CLASS):
            a = float(rng.uniform(0.05, 0.9))
            n = int(SR * rng.uniform(0.3, 0.6))
            t = np.arange(n) / SR
            wav = a * np.sin(2 * np.pi * f * rng.uniform(0.97, 1.03) * t) + 0.01 * rng.standard_normal(n)
            rel = f"audio/{name}_{k}.wav"
            sf.write(root / rel, wav.astype(np.float32), SR)
            lines.append(f"{rel},{name},{'train' if k < 5 else 'test'}")
            paths.append(str(root / rel))
            amp.append(a)
            cls.append(c)
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    z = {"class_fn": np.array(cls, float) * 3.0 + 1.0, "noise": rng.standard_normal(len(paths)),
         "amplitude": np.log(np.array(amp))}
    names = list(z)
    means = np.stack([z[n] for n in names], 1)
    frames = np.repeat(means, 5, axis=0)  # 5 constant frames per clip
    lab = PretextLabels(paths, names, means, frames, np.arange(0, 5 * len(paths) + 1, 5))
    lab.save(root / "labels.npz")
    return root / "manifest.csv", root / "labels.npz", z


def test_inputs_match_labels_and_manifest(dataset) -> None:
    man, labfile, z = dataset
    X, zz, y, paths = selection_inputs(man, labfile, progress=False)
    assert X.shape == (18, S.DEFAULT_N_MELS * hsic.DEFAULT_LENGTH)
    assert list(y) == [name for name in CLASSES for _ in range(PER_CLASS)]
    np.testing.assert_allclose(zz["amplitude"], z["amplitude"], rtol=1e-6)
    # dataset centring: every mel band has zero mean over clips and downsampled frames
    bands = X.reshape(18, S.DEFAULT_N_MELS, -1)
    assert bands.mean(dim=(0, 2)).abs().max() < 1e-4
    # split and per-class cap (seeded, drawn before decoding)
    X2, _, y2, p2 = selection_inputs(man, labfile, split="train", max_per_class=3, seed=1, progress=False)
    assert len(y2) == 9 and all((y2 == c).sum() == 3 for c in CLASSES)
    assert all(int(Path(p).stem.split("_")[1]) < 5 for p in p2)
    _, _, _, p3 = selection_inputs(man, labfile, split="train", max_per_class=3, seed=1, progress=False)
    assert p3 == p2


def test_batched_logmel_equals_one_clip_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    waves = [rng.standard_normal(int(SR * s)).astype(np.float32) * 0.1 for s in (0.2, 0.5, 0.33)]
    batched = logmel_features(waves, SR, n_mels=40, length=8, centre="none")
    monkeypatch.setattr(S, "_CHUNK_SAMPLES", 1)  # every clip its own batch: no padding at all
    single = logmel_features(waves, SR, n_mels=40, length=8, centre="none")
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-4)
    # raw log-mels are nearly parallel; dataset centring spreads the cosine similarities
    raw = hsic.cosine_kernel(batched.double())
    cen = hsic.cosine_kernel(logmel_features(waves, SR, n_mels=40, length=8).double())
    off = ~torch.eye(3, dtype=torch.bool)
    assert raw[off].min() > 0.9 and cen[off].max() < 0.5


@pytest.mark.parametrize("method", ["sparsemax", "softmax"])
def test_selection_favours_the_class_determined_label(dataset, tmp_path: Path, method: str) -> None:
    man, labfile, _ = dataset
    out = tmp_path / "sel.json"
    sel = select_from_data(man, labfile, method, steps=150, lr=0.1, progress=False, out=out)
    # CI of a function of the class is exactly 0; a clip property is the least CI-independent
    assert sel.ci["class_fn"] == pytest.approx(0.0, abs=1e-12)
    assert sel.ci["class_fn"] < sel.ci["noise"] < sel.ci["amplitude"]
    assert sel.ranking[0] == "class_fn"
    assert sel.weights["class_fn"] > max(sel.weights["noise"], sel.weights["amplitude"])
    if method == "sparsemax":
        assert sel.weights["amplitude"] == 0.0
    doc = json.loads(out.read_text())
    assert doc["settings"]["labels_file"] == str(labfile.resolve())
    assert doc["settings"]["data"] == str(man.resolve())
    assert doc["settings"]["frontend"]["centre"] == "dataset" and doc["weights"] == sel.weights
    table = format_selection(sel)
    lines = table.splitlines()
    assert "CI estimate" in lines[1] and lines[3].split()[:2] == ["1", "class_fn"]
    assert "selected:" in lines[-1] and "class_fn" in lines[-1]


def test_candidates_subset_and_in_memory_labels(dataset) -> None:
    man, labfile, _ = dataset
    sel = select_from_data(man, PretextLabels.load(labfile), "all", candidates=["noise", "amplitude"],
                           progress=False)
    assert set(sel.weights) == {"noise", "amplitude"} and sel.settings["labels_file"] is None


def test_errors(dataset, tmp_path: Path) -> None:
    man, labfile, _ = dataset
    # a manifest file without labels
    other = tmp_path / "other.wav"
    sf.write(other, (0.3 * np.sin(np.arange(8000) / 5)).astype(np.float32), SR)
    text = man.read_text().replace("audio/", str(man.parent) + "/audio/")
    m2 = tmp_path / "m2.csv"
    m2.write_text(text + f"{other},low,train\n")
    with pytest.raises(TympanError, match="run tympan pretext labels"):
        selection_inputs(m2, labfile, progress=False)
    # no label column
    m3 = tmp_path / "m3.csv"
    m3.write_text("path\n" + "\n".join(str(man.parent / "audio" / f"low_{k}.wav") for k in range(3)) + "\n")
    with pytest.raises(TympanError, match="label"):
        selection_inputs(m3, labfile, progress=False)
    # a class with a single clip
    m4 = tmp_path / "m4.csv"
    m4.write_text("path,label\n" + "\n".join(
        f"{man.parent / 'audio' / f'low_{k}.wav'},{'a' if k else 'b'}" for k in range(3)) + "\n")
    with pytest.raises(TympanError, match="class 'b' has 1 clip"):
        selection_inputs(m4, labfile, progress=False)
    with pytest.raises(TympanError, match="no such labels file"):
        selection_inputs(man, tmp_path / "none.npz", progress=False)
