"""``tympan.report.model_card``: MODEL_CARD.md of hand-made run directories."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tympan.config import load_recipe, save_recipe
from tympan.errors import TympanError
from tympan.report.model_card import write_model_card

EVIL = "<script>alert(1)</script>"


def make_run(root: Path, data: str | None = None, collapsed: bool = False) -> Path:
    """A small pretraining run: recipe (width 8, one task), pretrain.json, a few-shot result,
    a probe and a fine-tuning-free analysis folder."""
    root.mkdir(parents=True)
    save_recipe(load_recipe("demo", {"model.width": 8}), root / "config.yaml")
    (root / "encoder.safetensors").write_bytes(b"")
    summary = {
        "run": str(root), "steps": 40, "clips": 36, "skipped": [], "n_skipped": 0,
        "wall_seconds": 3.0,
        "parameters": {"encoder": 175928, "heads": 99456, "teachers": 0, "encoder_breakdown": {
            "total": 175928, "shared": 175928, "per_task": {}, "single_network": 175928,
            "separate_networks": 175928, "ratio_to_separate": 1.0, "extra_over_single": 0.0}},
        "collapse": {"collapsed": collapsed, "last": {"contrastive/embed_std": 0.05},
                     "events": [{"step": 7, "task": "contrastive", "metric": "embed_std",
                                 "value": 0.001, "threshold": 0.0125}] if collapsed else []},
    }
    if data is not None:
        summary.update(data=data, seed=3)
    (root / "pretrain.json").write_text(json.dumps(summary))
    (root / "fewshot.json").write_text(json.dumps({
        "model": EVIL, "accuracy": 47.5, "ci95": 2.25, "ways": 5, "shots": 1, "queries": 15,
        "episodes": 100, "skipped": [], "split": "test"}))
    (root / "probe").mkdir()
    (root / "probe" / "probe.json").write_text(json.dumps({
        "model": str(root), "data": "music/manifest.csv", "task": "tagging", "kind": "linear",
        "probe": {"task": "tagging", "kind": "linear",
                  "metrics": {"roc_auc": {"mean": 0.7125, "std": 0.0406},
                              "map": {"mean": 0.3333, "std": 0.05}},
                  "full_test": {"roc_auc": 0.7, "map": 0.3}}}))
    return root


def test_model_card_has_parameters_results_and_safe_loading(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", collapsed=True)
    out = write_model_card(run)
    assert out == run / "MODEL_CARD.md"
    card = out.read_text(encoding="utf-8")
    for heading in ("## Model details", "## Training data", "## Training procedure",
                    "## Evaluation results", "## Intended use", "## Limitations",
                    "## How to load it safely"):
        assert heading in card
    assert "175,928" in card  # the encoder's parameter count
    assert "99,456" in card  # training-only heads
    assert "47.50 ± 2.25" in card  # few-shot accuracy ± 95% CI
    assert "0.7125 ± 0.0406" in card and "[0.6329, 0.7921]" in card  # probe, ≈95% interval
    assert "| contrastive | nt_xent | 1 | SimCLR" in card and "seed 000" in card
    assert "batch 64, learning rate 0.001" in card and "1000 steps" in card
    assert "Short training: 40 steps" in card and "CPU-sized encoder: width 8" in card
    assert "possible collapse" in card and "embed_std = 0.0010 at step 7" in card
    assert "fewer than 600 episodes (100)" in card
    assert "hear.load_model(" in card and "encoder.safetensors" in card and "pickles" in card
    assert "not recorded" in card  # the manifest is not in this pretrain.json
    # text from the run cannot become markup in a Markdown viewer
    assert "<script>" not in card and "&lt;script&gt;alert(1)&lt;/script&gt;" in card


def test_model_card_names_synthetic_training_data(tmp_path: Path) -> None:
    corpus = tmp_path / "somewhere"
    corpus.mkdir()
    manifest = corpus / "manifest.csv"
    manifest.write_text("path,label,split\na.wav,tone_pure,pretrain\nb.wav,vowel_a,pretrain\n")
    run = make_run(tmp_path / "run", data=str(manifest))
    card = write_model_card(run, tmp_path / "cards" / "card.md").read_text(encoding="utf-8")
    assert f"`{manifest}`" in card
    assert "**Trained on synthetic audio**" in card
    assert "**Seed:** 3." in card
    assert "Short training" in card

    real = tmp_path / "real.csv"
    real.write_text("path,label,split\na.wav,dog_bark,pretrain\n")
    run2 = make_run(tmp_path / "run2", data=str(real))
    card2 = write_model_card(run2).read_text(encoding="utf-8")
    assert "synthetic audio" not in card2


def test_model_card_of_a_non_run_is_a_tympan_error(tmp_path: Path) -> None:
    (tmp_path / "readme.md").write_text("not a run")
    with pytest.raises(TympanError, match="not a tympan run directory"):
        write_model_card(tmp_path)
