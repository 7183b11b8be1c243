"""The Python API. The ``tympan`` command is a thin layer over these functions.

Quick tour::

    from tympan import api
    manifest = api.synth_corpus("corpus", seed=0)                  # embedded corpus
    run = api.pretrain("simclr", manifest, "runs/simclr", max_steps=500)
    res = api.fewshot("runs/simclr", manifest, ways=5, shots=1)     # accuracy ± 95% CI
    print(res.accuracy, res.ci95)
    enc = api.load_encoder("runs/simclr")                           # waveforms [B, T] -> [B, D]
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from tympan.config import load_recipe, packaged_recipes
from tympan.data.corpora import synth_corpus
from tympan.evaluation.features import resolve_model
from tympan.evaluation.fewshot import FewShotBench, FewShotResult
from tympan.evaluation.metrics import intervals_overlap
from tympan.models.encoder import ENCODER_FILE, load_encoder
from tympan.report.plots import plot_fewshot
from tympan.training.pretrain import LAST_CKPT, PretrainResult, pretrain

__all__ = [
    "demo", "embed", "fewshot", "load_encoder", "load_recipe", "packaged_recipes", "pretrain",
    "synth_corpus", "FewShotResult", "PretrainResult",
]

log = logging.getLogger("tympan")


def fewshot(
    model: str | Path,
    data: str | Path,
    *,
    split: str | None = "test",
    ways: int = 5,
    shots: int = 1,
    queries: int = 15,
    episodes: int = 600,
    seed: int = 0,
    task: str | None = None,
    recipe: str | Path | None = None,
    skip_bad: bool = False,
    device: str | None = None,
    progress: bool = True,
) -> FewShotResult:
    """Few-shot accuracy ± 95% CI of ``model`` (a run directory, ``random`` or ``logmel``)."""
    bench = FewShotBench(data, split, skip_bad=skip_bad, progress=progress)
    encoder = resolve_model(model, recipe, seed=seed)
    emb = bench.embed(encoder, task=task, device=device)
    return bench.run(
        str(model), emb, sample_rate=encoder.sample_rate, ways=ways, shots=shots,
        queries=queries, episodes=episodes, seed=seed, C=encoder.recipe.fewshot.C,
        max_iter=encoder.recipe.fewshot.readout_max_iter, task=task,
    )


def embed(
    model: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    split: str | None = None,
    task: str | None = None,
    segment_seconds: float | None = None,
    recipe: str | Path | None = None,
    skip_bad: bool = False,
    batch_size: int = 64,
    device: str | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Embed every clip of ``data`` (one split, or all) and write an ``.npz`` file.

    The file holds ``embeddings [N, D]``, ``paths``, ``labels`` (multi-label joined by ``;``),
    ``tasks`` and ``task_slices [len(tasks), 2]``: the columns each task owns (ARCHITECTURE,
    "Contracts"). Variable-length clips are cut into segments whose embeddings are averaged.
    Returns a summary (also what ``tympan embed --json`` writes).
    """
    import numpy as np

    from tympan.data.manifest import read_manifest
    from tympan.data.scan import scan_items
    from tympan.evaluation.features import embed_clips

    manifest = read_manifest(data, check_files=not skip_bad)
    if split:
        manifest = manifest.select(split)
    encoder = resolve_model(model, recipe, seed=seed)
    report = scan_items(
        manifest.items, encoder.sample_rate, skip_bad=skip_bad, keep_audio=True,
        progress=progress, desc="loading clips",
    )
    seconds = segment_seconds or encoder.recipe.fewshot.segment_seconds
    emb = embed_clips(encoder, report.audio, seconds, task=task, batch_size=batch_size,
                      device=device, progress=progress)
    if task is None:
        slices = encoder.task_slices()
    else:
        slices = {task: (0, emb.shape[1])}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.npz")
    np.savez(
        tmp,
        embeddings=emb.astype(np.float32),
        paths=np.array([str(it.path) for it in report.items]),
        labels=np.array([";".join(it.labels) for it in report.items]),
        tasks=np.array(list(slices)),
        task_slices=np.array(list(slices.values()), dtype=np.int64).reshape(-1, 2),
    )
    tmp.replace(out)
    return {
        "model": str(model), "out": str(out), "clips": len(report.items),
        "dim": int(emb.shape[1]), "tasks": {t: list(v) for t, v in slices.items()},
        "skipped": report.skipped, "split": split,
    }


def format_table(results: list[dict[str, Any]]) -> str:
    """Markdown table: one row per model, one column per (ways, shots) setting."""
    settings = sorted({(r["ways"], r["shots"]) for r in results})
    models = list(dict.fromkeys(r["model"] for r in results))
    head = "| model | " + " | ".join(f"{w}-way {s}-shot" for w, s in settings) + " |"
    rule = "|---|" + "---|" * len(settings)
    rows = []
    for m in models:
        cells = []
        for w, s in settings:
            r = next((r for r in results if r["model"] == m and (r["ways"], r["shots"]) == (w, s)), None)
            cells.append(f"{r['accuracy']:.2f} ± {r['ci95']:.2f}" if r else "")
        rows.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join([head, rule, *rows])


def demo(
    out: str | Path = "demo",
    *,
    seed: int = 0,
    recipe: str = "demo",
    max_steps: int | None = None,
    episodes: int = 600,
    queries: int = 15,
    progress: bool = True,
) -> dict[str, Any]:
    """The README's ``make demo``: corpus -> SimCLR pretraining -> few-shot table.

    Re-running reuses what exists: the corpus if its manifest is there, the run if its encoder is
    there, and an interrupted run resumes from its last checkpoint.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    manifest = out / "corpus" / "manifest.csv"
    if not manifest.is_file():
        log.info("generating the embedded corpus in %s", manifest.parent)
        synth_corpus(manifest.parent, seed=seed, progress=progress)
    corpus_s = time.time() - started

    run = out / "simclr"
    t0 = time.time()
    if not (run / ENCODER_FILE).is_file():
        resume = (run / "checkpoints" / LAST_CKPT).is_file()
        log.info("pretraining SimCLR (%s) in %s%s", recipe, run, " (resuming)" if resume else "")
        pretrain(recipe, manifest, run, max_steps=max_steps, resume=resume, seed=seed,
                 progress=progress)
    pretrain_s = time.time() - t0

    t0 = time.time()
    bench = FewShotBench(manifest, "test", progress=progress)
    settings = [(5, 1), (5, 5)]
    results: list[dict[str, Any]] = []
    for name, spec in (("logmel", "logmel"), ("random", "random"), ("simclr", str(run))):
        encoder = resolve_model(spec, recipe, seed=seed)
        emb = bench.embed(encoder)
        for ways, shots in settings:
            res = bench.run(
                name, emb, sample_rate=encoder.sample_rate, ways=ways, shots=shots,
                queries=queries, episodes=episodes, seed=seed, C=encoder.recipe.fewshot.C,
                max_iter=encoder.recipe.fewshot.readout_max_iter,
            )
            results.append(res.to_json())
    eval_s = time.time() - t0

    one_shot = {r["model"]: (r["accuracy"], r["ci95"]) for r in results if r["shots"] == 1}
    beats = (one_shot["simclr"][0] > one_shot["random"][0]
             and not intervals_overlap(one_shot["simclr"], one_shot["random"]))
    verdict = (
        "SimCLR beats the random-init encoder on 5-way 1-shot with non-overlapping 95% CIs."
        if beats else
        "SimCLR does NOT beat the random-init encoder on 5-way 1-shot with non-overlapping 95% CIs."
    )
    if one_shot["logmel"][0] > one_shot["simclr"][0]:
        verdict += " The log-mel baseline scores higher than SimCLR here."
    table = format_table(results)
    plot_fewshot(results, out / "results.png")
    timings = {"corpus_s": round(corpus_s, 1), "pretrain_s": round(pretrain_s, 1),
               "eval_s": round(eval_s, 1)}
    text = (
        "# tympan demo: SimCLR on the embedded corpus\n\n"
        f"Few-shot accuracy (%) on the test classes, mean ± 95% CI over {episodes} episodes, "
        f"{queries} queries per class, seed {seed}; the same episodes for every model. "
        "`logmel`: time-pooled log-mel statistics; `random`: the same ResNet untrained; "
        f"`simclr`: pretrained with recipe `{recipe}` on the unlabeled pretrain pool.\n\n"
        f"{table}\n\n{verdict}\n\n![few-shot accuracy](results.png)\n\n"
        f"Wall time: corpus {timings['corpus_s']} s, pretraining {timings['pretrain_s']} s, "
        f"evaluation {timings['eval_s']} s.\n"
    )
    (out / "results.md").write_text(text)
    summary = {"results": results, "simclr_beats_random_1shot": beats, "timings": timings}
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    return {**summary, "table": table, "verdict": verdict, "markdown": text}
