"""`tympan reproduce mtslvr|multiview` end to end on the tiny corpora (a few steps, CPU-sized)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tympan.cli import main
from tympan.data.corpora import synth_corpus
from tympan.data.music import synth_music
from tympan.reproduce.mtslvr import reproduce_mtslvr
from tympan.reproduce.multiview import METHODS, method_recipe, reproduce_multiview

TINY_MTSLVR = {"model.width": 8, "train.batch_size": 8, "train.num_workers": 0,
               "train.warmup_steps": 1, "audio.clip_seconds": 0.5}


@pytest.mark.slow
def test_mtslvr_reproduction_table_rerun_and_task_selection(tmp_path: Path, capsys) -> None:
    corpus = synth_corpus(tmp_path / "corpus", seed=0, scale="tiny", progress=False)
    out = tmp_path / "repro"
    kw = dict(data=corpus, quick=True, families=("simclr",),
              variants=("cont_only", "mt_parallel"), max_steps=2, overrides=TINY_MTSLVR,
              episodes=20, queries=3, progress=False)
    summary = reproduce_mtslvr(out, **kw)
    rows = {r["variant"]: r for r in summary["rows"]}
    assert set(rows) == {"Cont Only", "MT-Parallel"}
    assert summary["datasets"] == ["corpus/test", "corpus/val"]
    for r in rows.values():
        for d in summary["datasets"]:
            assert 0.0 <= r["scores"][d]["accuracy"] <= 100.0 and r["scores"][d]["ci95"] > 0
        assert r["avg_rank"] in (1.0, 1.5, 2.0)
    # the adapter variant has task parameters of its own; the baseline has one task
    assert rows["MT-Parallel"]["parameters"]["per_task"]
    assert rows["MT-Parallel"]["parameters"]["total"] > rows["Cont Only"]["parameters"]["total"]
    text = (out / "results.md").read_text()
    assert "| Cont Only |" in text and "| MT-Parallel |" in text and "avg rank" in text
    assert json.loads((out / "results.json").read_text())["rows"][0]["variant"] == "Cont Only"

    # a second run reuses the finished runs: the same numbers, no pretraining
    again = reproduce_mtslvr(out, **kw)
    assert [r["scores"] for r in again["rows"]] == [r["scores"] for r in summary["rows"]]
    assert all(r["pretrain_s"] < 5 for r in again["rows"])

    # fewshot and embed select one head of the two-task model with --task
    run = out / "simclr" / "mt_parallel"
    dims = {}
    for task in (None, "contrastive", "predictive"):
        emb = tmp_path / f"emb_{task}.npz"
        args = ["embed", "--model", str(run), "--data", str(corpus), "--split", "val",
                "--out", str(emb), "-q"] + (["--task", task] if task else [])
        assert main(args) == 0
        dims[task] = np.load(emb)["embeddings"].shape[1]
    assert dims["contrastive"] == dims["predictive"] == dims[None] // 2
    assert main(["fewshot", "--model", str(run), "--data", str(corpus), "--split", "val",
                 "--task", "predictive", "--queries", "3", "--episodes", "10", "-q"]) == 0
    assert "5-way 1-shot" in capsys.readouterr().out


def test_quick_multiview_recipes_share_everything_but_the_task() -> None:
    recipes = {m: method_recipe(m, quick=True) for m in METHODS}
    objectives = {r.tasks[0].objective for r in recipes.values()}
    assert objectives == {"nt_xent", "byol", "dino", "barlow_twins", "vicreg"}
    for r in recipes.values():
        assert (r.model.width, r.model.embed_dim, r.model.pooling) == (16, 256, "attention")
        assert (r.views.kind, r.views.segment_seconds) == ("same_track", 2.0)
        assert r.tasks[0].head["hidden_dim"] == 256 and r.tasks[0].head["out_dim"] == 512
        assert r.train.max_steps == 400
    full = method_recipe("contrastive", quick=False)
    assert (full.model.width, full.model.embed_dim, full.views.segment_seconds) == (32, 1024, 4.0)
    assert (full.views.min_gap, full.views.max_gap, full.train.batch_size) == (4.0, 16.0, 256)


@pytest.mark.slow
def test_multiview_reproduction_table_and_limited_data(tmp_path: Path) -> None:
    music = synth_music(tmp_path / "music", seed=0, scale="tiny", progress=False)
    out = tmp_path / "mv"
    summary = reproduce_multiview(
        out, data=music, quick=True, methods=("contrastive", "clustering"), max_steps=2,
        overrides={"train.batch_size": 4, "train.num_workers": 0}, draws=1, progress=False,
        probe_epochs=2,
    )
    names = [r["method"] for r in summary["rows"]]
    assert names == ["random init", "contrastive", "clustering"]
    for r in summary["rows"]:
        for metric in ("roc_auc", "map"):
            m = r["probe"]["metrics"][metric]
            assert 0.0 <= m["mean"] <= 1.0 and m["std"] >= 0.0
        assert r["probe"]["bootstrap"]["draws"] == 50 and r["probe"]["bootstrap"]["fraction"] == 0.5
    # pretraining read only the train split (12 of the 18 tracks)
    pre = json.loads((out / "contrastive" / "pretrain.json").read_text())
    assert pre["clips"] == 12 and "collapse" in pre
    curves = summary["limited_data"]
    assert set(curves) == set(names)
    assert [f["fraction"] for f in curves["contrastive"]["fractions"]] == [0.01, 0.05, 0.1, 0.2, 1.0]
    text = (out / "results.md").read_text()
    assert "| contrastive |" in text and "Limited data" in text and "The seed's:" in text
    assert (out / "limited_data.png").read_bytes()[:4] == b"\x89PNG"
    assert set(summary["ordering"]["roc_auc"]) == {"contrastive", "clustering"}


def test_cli_rejects_unknown_methods_and_variants(capsys) -> None:
    assert main(["reproduce", "multiview", "--methods", "moco", "-q"]) == 2
    assert "--methods moco" in capsys.readouterr().err
    assert main(["reproduce", "mtslvr", "--variants", "mt_lora", "-q"]) == 2
    assert "--variants mt_lora" in capsys.readouterr().err
