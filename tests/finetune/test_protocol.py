"""The fine-tuning protocol (``../shared/seeds/002_5040cf44179b95f4.txt``, §3.3 Table 2: mean ±
std over 5 seeds, or over 5 cross-validation folds): planning the runs, the files written,
resuming, and the three kinds of backbone end to end at tiny sizes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from tympan.analysis.geometry import anisotropy
from tympan.config import load_recipe
from tympan.data.manifest import read_manifest
from tympan.errors import ManifestError, TympanError
from tympan.models.hf import write_random_hf_model
from tympan.finetune import finetune, plan_runs
from tympan.models.encoder import load_encoder

SR = 16000
FREQS = {"low": 400.0, "mid": 1000.0, "high": 2500.0}
TINY = {"model.width": 4, "frontend.n_mels": 16, "frontend.n_fft": 256, "frontend.hop_length": 128}
FAST = dict(epochs=2, batch_size=6, lr=3e-3, clip_seconds=0.25, projection_dim=8, linear_lrs=(1e-2, 1e-1),
            linear_batch_sizes=(4, 8), linear_epochs=5, eval_batch_size=32, progress=False,
            num_workers=1)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_corpus(root: Path, columns: str, per_class: int = 12, n_folds: int = 4) -> Path:
    """Noisy tones of three pitches; ``columns`` "split" (6/3/3 per class) or "fold"."""
    rng = np.random.default_rng(0)
    t = np.arange(int(0.4 * SR)) / SR
    rows = []
    for label, f in FREQS.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            f0 = f * (1 + 0.03 * rng.standard_normal())
            wav = 0.4 * np.sin(2 * np.pi * f0 * t) + 0.1 * rng.standard_normal(len(t))
            sf.write(root / label / f"{i}.wav", wav.astype(np.float32), SR)
            extra = ("train" if i < 6 else "val" if i < 9 else "test") if columns == "split" else str(i % n_folds + 1)
            rows.append([f"{label}/{i}.wav", label, extra])
    manifest = root / "manifest.csv"
    with open(manifest, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", columns])
        w.writerows(rows)
    return manifest


@pytest.fixture(scope="module")
def split_data(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("split"), "split")


@pytest.fixture(scope="module")
def fold_data(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("fold"), "fold")


def test_folds_train_on_the_other_folds(fold_data: Path) -> None:
    manifest = read_manifest(fold_data)
    protocol, runs, how = plan_runs(manifest, seeds=3)
    assert protocol == "folds" and "next fold" in how
    assert [r.fold for r in runs] == [1, 2, 3, 4] and [r.val_fold for r in runs] == [2, 3, 4, 1]
    for r in runs:
        test_paths = {it.path for it in r.test}
        assert test_paths and all(it.fold == r.fold for it in r.test)
        assert not test_paths & {it.path for it in r.train + r.val}  # no test-fold path in training
        assert {it.fold for it in r.train} == set(r.train_folds) == {1, 2, 3, 4} - {r.fold, r.val_fold}
        assert len(r.train) + len(r.val) + len(r.test) == len(manifest)
        assert r.seed == 0
    _, chosen, _ = plan_runs(manifest, folds=[3])
    assert [r.name for r in chosen] == ["fold3"]


def test_seeds_use_the_split_column(split_data: Path, tmp_path: Path) -> None:
    manifest = read_manifest(split_data)
    protocol, runs, _ = plan_runs(manifest, seeds=3)
    assert protocol == "seeds" and [r.seed for r in runs] == [0, 1, 2]
    assert all(len(r.train) == 18 and len(r.val) == 9 and len(r.test) == 9 for r in runs)
    assert [r.seed for r in plan_runs(manifest, seeds=[7, 9])[1]] == [7, 9]
    no_split = manifest.subset(it.__class__(it.path, it.labels) for it in manifest)
    with pytest.raises(ManifestError, match="no 'split' column"):
        plan_runs(no_split)
    with pytest.raises(ManifestError, match="'fold'"):
        plan_runs(manifest, folds=True)
    no_val = manifest.subset(it for it in manifest if it.split != "val")
    with pytest.raises(ManifestError, match="no 'val' rows"):
        plan_runs(no_val)


def test_pairtune_end_to_end_writes_everything(split_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = finetune("pairtune", "random", split_data, out, seeds=2, recipe=load_recipe("demo", TINY), **FAST)
    for name in ("results.json", "convergence.csv", "embeddings_test.npz", "confusion.json", "results.md",
                 "config.yaml", "encoder.safetensors"):
        assert (out / name).is_file(), name
    data = json.loads((out / "results.json").read_text())
    accs = [r["test_accuracy"] for r in data["runs"]]
    assert [r["seed"] for r in data["runs"]] == [0, 1]
    assert data["test_accuracy"]["mean"] == pytest.approx(np.mean(accs)) == pytest.approx(res.mean)
    assert data["test_accuracy"]["std"] == pytest.approx(np.std(accs, ddof=1))
    assert data["protocol"] == "seeds" and data["classes"] == ["high", "low", "mid"]
    p = data["parameters"]
    assert p["encoder_before"] == p["encoder_after"] and p["state_dict_matches_original"]
    assert p["stage1_head_kept"] is False and p["inference_total"] == p["encoder_after"] + p["classifier"]
    for run in data["runs"]:
        assert len(run["history"]) == 2 and run["linear"]["lr"] in (1e-2, 1e-1)
        assert run["m_per_class"] == 3 and run["history"][0]["train_loss"] > 0  # 2 classes x 3 clips
        assert run["linear"]["batch_size"] in (4, 8) and len(run["linear"]["grid"]) == 4
        assert run["linear"]["val_accuracy"] == max(g["val_accuracy"] for g in run["linear"]["grid"])
    with open(out / "convergence.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["method", "seed", "fold", "epoch", "val_accuracy"]
    assert len(rows) == 4 and {r["method"] for r in rows} == {"pairtune"} and rows[0]["fold"] == ""
    npz = np.load(out / "embeddings_test.npz")
    assert npz["embeddings"].shape == (9, 32) and len(npz["paths"]) == len(npz["labels"]) == 9
    assert set(npz["predictions"]) <= set(FREQS) and set(npz["labels"]) == set(FREQS)
    assert np.mean(npz["predictions"] == npz["labels"]) == pytest.approx(accs[0])
    assert -1.0 <= anisotropy(npz["embeddings"]) <= 1.0  # usable by the geometry analyses
    conf = json.loads((out / "confusion.json").read_text())
    assert np.asarray(conf["matrix"]).shape == (3, 3) and np.asarray(conf["matrix"]).sum() == 9
    # the tuned encoder is a loadable run directory with the original's parameters
    tuned = load_encoder(out)
    assert sum(q.numel() for q in tuned.parameters()) == data["parameters"]["encoder_after"]
    assert "± " in (out / "results.md").read_text()
    assert not (out / "checkpoints").exists()

    # a second call refuses to overwrite; resume finds every run done and gives the same table
    with pytest.raises(TympanError, match="resume"):
        finetune("pairtune", "random", split_data, out, seeds=2, recipe=load_recipe("demo", TINY), **FAST)
    again = finetune("pairtune", "random", split_data, out, seeds=2, recipe=load_recipe("demo", TINY),
                     resume=True, **FAST)
    assert again.accuracies == res.accuracies
    fresh = tmp_path / "interrupted"
    (fresh / "checkpoints").mkdir(parents=True)
    (fresh / "checkpoints" / "seed0.pt").write_bytes(b"")
    with pytest.raises(TympanError, match="1 interrupted"):
        finetune("pairtune", "random", split_data, fresh, seeds=2, recipe=load_recipe("demo", TINY), **FAST)
    with pytest.raises(TympanError, match="other settings"):
        finetune("pairtune", "random", split_data, out, seeds=2, recipe=load_recipe("demo", TINY),
                 resume=True, **{**FAST, "lr": 1e-3})


def test_finetune_over_folds(fold_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = finetune("finetune", "random", fold_data, out, folds=[1, 2], recipe=load_recipe("demo", TINY),
                   **{**FAST, "epochs": 1})
    assert res.protocol == "folds" and [r.fold for r in res.runs] == [1, 2]
    assert [r.train_folds for r in res.runs] == [[3, 4], [1, 4]]
    data = json.loads((out / "results.json").read_text())
    assert data["parameters"]["stage1_head_kept"] is True and data["runs"][0]["linear"] is None
    assert data["test_accuracy"]["std"] == pytest.approx(np.std(res.accuracies, ddof=1))
    with open(out / "convergence.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["method"], r["fold"], r["epoch"]) for r in rows] == [("finetune", "1", "1"), ("finetune", "2", "1")]


def test_hf_backbone_end_to_end(split_data: Path, tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    write_random_hf_model("wav2vec2", tmp_path / "w2v", config=dict(
        hidden_size=16, num_hidden_layers=1, intermediate_size=32, conv_dim=(16, 16, 16, 16)))
    out = tmp_path / "run"
    res = finetune("pairtune", f"hf:{tmp_path / 'w2v'}", split_data, out, seeds=1, **{**FAST, "epochs": 1})
    assert res.std is None and len(res.runs) == 1
    assert any((out / "hf_model").glob("*.safetensors"))
    assert np.load(out / "embeddings_test.npz")["embeddings"].shape == (9, 16)
    with pytest.raises(TympanError, match="no such folder"):
        finetune("pairtune", f"hf:{tmp_path / 'nope'}", split_data, tmp_path / "x", seeds=1, **FAST)
