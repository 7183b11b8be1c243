"""``pretrain(..., pretext_weights=...)``: seed 004's weighted workers end to end, for the PASE-like
objective (eq. 11) and attached to SimCLR (eq. 12's L_ssl + sum_i lambda_i l1(Z_i)).

Sized for 2 CPU cores: the tiny corpus, tiny models, batches of 8, three steps.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import yaml

from tympan.data.dataset import CropDataset
from tympan.data.manifest import read_manifest
from tympan.errors import ConfigError, TympanError
from tympan.models.encoder import load_encoder
from tympan.training.pretrain import pretrain

NAMES = ["loudness", "f0", "zcr"]
FAST = {"train.batch_size": 8, "train.num_workers": 0, "train.log_every_n_steps": 1,
        "train.warmup_steps": 1, "audio.clip_seconds": 0.5}
PASE_TINY = {**FAST, "frontend.n_mels": 16, "frontend.n_fft": 256, "frontend.hop_length": 160,
             "model.options": {"channels": [4, 4], "lstm_layers": 1, "lstm_hidden": 8,
                               "mlp_hidden": 8, "out_dim": 8},
             "tasks": [{"name": "pase", "objective": "pase", "head": {"hidden_dim": 8},
                        "params": {"n_mfcc": 8}}]}


def _labels(corpus: Path, out: Path, drop: str | None = None) -> Path:
    """A labels file as ``tympan pretext labels`` writes it: one 10 ms frame per 160 samples."""
    items = [it for it in read_manifest(corpus).items if str(it.path) != drop]
    lengths = [max(1, sf.info(str(it.path)).frames // 160) for it in items]
    rng = np.random.default_rng(0)
    frames = rng.normal(size=(sum(lengths), len(NAMES))).astype(np.float32) * [1.0, 100.0, 0.1]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    np.savez(out, paths=np.array([str(it.path) for it in items]), names=np.array(NAMES),
             clip_means=np.zeros((len(items), len(NAMES)), np.float32),
             frames=frames.astype(np.float32), offsets=offsets, hop_seconds=np.float64(0.01),
             sample_rate=np.int64(16000))
    return out


def _selection(path: Path, labels: Path) -> Path:
    path.write_text(json.dumps({
        "method": "sparsemax", "weights": {"loudness": 0.7, "f0": 0.3, "zcr": 0.0},
        "ranking": ["loudness", "f0", "zcr"], "ci": {"loudness": 0.1, "f0": 0.2, "zcr": 0.3},
        "settings": {"labels_file": str(labels)},
    }))
    return path


def _columns(run: Path) -> list[str]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f).fieldnames or [])


def _last(run: Path, key: str) -> float:
    with open(run / "metrics.csv", newline="") as f:
        values = [r[key] for r in csv.DictReader(f) if r.get(key)]
    return float(values[-1])


def test_crop_dataset_reports_where_each_crop_starts(corpus: Path) -> None:
    items = read_manifest(corpus).select("pretrain").items[:3]
    ds = CropDataset(items, 16000, clip_seconds=0.5)
    for i, item in enumerate(items):
        wav = sf.read(str(item.path), dtype="float32")[0]
        out = ds[i]
        assert out["length"] == len(wav) and 0 <= out["start"] <= len(wav) - 8000
        np.testing.assert_array_equal(out["audio"].numpy(), wav[out["start"]: out["start"] + 8000])
    tiled = CropDataset(items[:1], 16000, clip_seconds=5.0)[0]  # longer than the file
    assert tiled["start"] == 0


def test_pase_with_pretext_weights_then_resume(corpus: Path, tmp_path: Path) -> None:
    labels = _labels(corpus, tmp_path / "labels.npz")
    weights = _selection(tmp_path / "weights.json", labels)
    run = tmp_path / "pase"
    res = pretrain("pase_quick", corpus, run, max_steps=3, progress=False, overrides=PASE_TINY,
                   pretext_weights=weights)
    assert res.steps == 3
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    # the run describes itself: the kept labels (lambda > 0), their weights and the files
    assert cfg["pretext"]["weights"] == {"loudness": 0.7, "f0": 0.3}
    assert cfg["pretext"]["labels"] == str(labels.resolve())
    assert cfg["pretext"]["selection"] == str(weights.resolve())
    assert [t["objective"] for t in cfg["tasks"]] == ["pase"]  # pase has the workers already
    cols = _columns(run)
    assert {"pase/mse_mel", "pase/mse_mfcc", "pase/l1_loudness", "pase/l1_f0"} <= set(cols)
    assert "pase/l1_zcr" not in cols
    # labels are z-scored: f0 (std 100 in the file) has an l1 of the same order as loudness
    assert _last(run, "pase/l1_f0") < 5.0
    enc = load_encoder(run)
    assert enc.recipe.model.arch == "pase" and enc.recipe.pretext.weights == {"loudness": 0.7,
                                                                                "f0": 0.3}
    # --resume rebuilds the (non-persistent) labels table from config.yaml
    res = pretrain("pase_quick", corpus, run, max_steps=5, resume=True, progress=False)
    assert res.steps == 5
    with pytest.raises(TympanError, match="--resume"):
        other = _selection(tmp_path / "other.json", labels)
        other.write_text(other.read_text().replace('"f0": 0.3', '"f0": 0.9'))
        pretrain("pase_quick", corpus, run, max_steps=6, resume=True, progress=False,
                 pretext_weights=other)


def test_simclr_gets_the_weighted_workers_attached(corpus: Path, tmp_path: Path,
                                                    simclr_tiny: dict[str, Any]) -> None:
    labels = _labels(corpus, tmp_path / "labels.npz")
    weights = _selection(tmp_path / "weights.json", tmp_path / "not_used.npz")
    run = tmp_path / "simclr"
    # --pretext-labels overrides the labels file the selection names
    res = pretrain("simclr", corpus, run, max_steps=3, progress=False, overrides=simclr_tiny,
                   pretext_weights=weights, pretext_labels=labels)
    assert res.steps == 3
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert [(t["name"], t["objective"], t["weight"]) for t in cfg["tasks"]] == [
        ("contrastive", "nt_xent", 1.0), ("workers", "pretext_workers", 1.0)]
    assert cfg["pretext"]["labels"] == str(labels.resolve())
    cols = set(_columns(run))
    assert {"contrastive/loss", "workers/loss", "workers/l1_loudness", "workers/l1_f0"} <= cols
    # L = L_ssl + sum_i lambda_i l1(Z_i), logged at the last step
    expect = (_last(run, "contrastive/loss") + 0.7 * _last(run, "workers/l1_loudness")
              + 0.3 * _last(run, "workers/l1_f0"))
    assert _last(run, "loss") == pytest.approx(expect, rel=1e-4)


def test_pretext_errors(corpus: Path, tmp_path: Path, simclr_tiny: dict[str, Any]) -> None:
    pretrain_files = read_manifest(corpus).select("pretrain").items
    missing = str(pretrain_files[3].path)
    labels = _labels(corpus, tmp_path / "partial.npz", drop=missing)
    weights = _selection(tmp_path / "weights.json", labels)
    with pytest.raises(TympanError, match="tympan pretext labels") as err:
        pretrain("simclr", corpus, tmp_path / "a", max_steps=1, progress=False,
                 overrides=simclr_tiny, pretext_weights=weights)
    assert missing in str(err.value)
    assert not (tmp_path / "a").exists()  # nothing written before the labels are checked
    with pytest.raises(TympanError, match="no such labels file"):
        pretrain("simclr", corpus, tmp_path / "b", max_steps=1, progress=False,
                 overrides=simclr_tiny, pretext_weights=weights,
                 pretext_labels=tmp_path / "none.npz")
    with pytest.raises(ConfigError, match="same_track"):
        pretrain("simclr", corpus, tmp_path / "c", max_steps=1, progress=False,
                 overrides={**simclr_tiny, "views.kind": "same_track"}, pretext_weights=weights)
    with pytest.raises(TympanError, match="--pretext-weights"):
        pretrain("simclr", corpus, tmp_path / "d", max_steps=1, progress=False,
                 overrides={**simclr_tiny, "tasks": [
                     {"name": "w", "objective": "pretext_workers"}]})
