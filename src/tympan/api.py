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
from tympan.data.corpora import ensure_corpus, synth_corpus
from tympan.data.music import synth_music
from tympan.errors import TympanError
from tympan.evaluation.features import resolve_model
from tympan.evaluation.fewshot import FewShotBench, FewShotResult
from tympan.evaluation.metrics import intervals_overlap
from tympan.finetune import finetune  # noqa: F401  (part of the Python API)
from tympan.models.encoder import load_encoder
from tympan.report.plots import plot_fewshot
from tympan.training.pretrain import PretrainResult, pretrain, pretrain_or_reuse

__all__ = [
    "analyze_head_weights", "analyze_invariance", "demo", "probe", "synth_music", "embed", "fewshot", "load_encoder",
    "load_recipe", "packaged_recipes", "pretrain", "synth_corpus", "FewShotResult",
    "PretrainResult",
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
    """Embed every clip of ``data`` (one split, or all) and write an ``.npz`` or ``.parquet`` file.

    The file holds ``embeddings [N, D]``, ``paths``, ``labels`` (multi-label joined by ``;``),
    ``tasks`` and ``task_slices [len(tasks), 2]``: the columns each task owns (ARCHITECTURE,
    "Contracts"). Variable-length clips are cut into segments whose embeddings are averaged.
    Returns a summary (also what ``tympan embed --json`` writes).
    """
    import numpy as np

    from tympan.data.manifest import read_manifest
    from tympan.data.scan import scan_items
    from tympan.evaluation.features import embed_clips

    out = Path(out)
    if out.suffix not in (".npz", ".parquet"):
        raise TympanError(f"--out {out}: give a .npz or .parquet file name")
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
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [str(it.path) for it in report.items]
    labels = [";".join(it.labels) for it in report.items]
    if out.suffix == ".parquet":
        _write_embeddings_parquet(out, emb.astype(np.float32), paths, labels, slices)
    else:
        tmp = out.with_name(out.name + ".tmp.npz")
        np.savez(
            tmp,
            embeddings=emb.astype(np.float32),
            paths=np.array(paths),
            labels=np.array(labels),
            tasks=np.array(list(slices)),
            task_slices=np.array(list(slices.values()), dtype=np.int64).reshape(-1, 2),
        )
        tmp.replace(out)
    return {
        "model": str(model), "out": str(out), "clips": len(report.items),
        "dim": int(emb.shape[1]), "tasks": {t: list(v) for t, v in slices.items()},
        "skipped": report.skipped, "split": split,
    }


def _write_embeddings_parquet(
    out: Path, emb: Any, paths: list[str], labels: list[str], slices: dict[str, tuple[int, int]]
) -> None:
    """The embeddings contract as a Parquet table: columns ``path``, ``label`` and
    ``embedding`` (a fixed-size list of float32); the task slices in the schema metadata
    (``tympan.task_slices``, JSON). Written atomically."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise TympanError(
            f"--out {out}: writing Parquet needs pyarrow (pip install 'tympan[scale]'), or "
            f"use a .npz file"
        ) from None
    dim = int(emb.shape[1])
    column = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), dim)
    table = pa.table({"path": paths, "label": labels, "embedding": column})
    table = table.replace_schema_metadata(
        {"tympan.task_slices": json.dumps({t: list(v) for t, v in slices.items()})}
    )
    tmp = out.with_name(out.name + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(out)


def probe(
    model: str | Path,
    data: str | Path,
    *,
    out: str | Path | None = None,
    task: str = "tagging",
    kind: str = "linear",
    limited: bool = False,
    draws: int = 4,
    seed: int = 0,
    recipe: str | Path | None = None,
    skip_bad: bool = False,
    device: str | None = None,
    progress: bool = True,
    **probe_params: Any,
) -> dict[str, Any]:
    """Train a linear or MLP probe on ``model``'s frozen, track-averaged embeddings of ``data``
    (train/val/test splits) and score it: macro ROC-AUC and mAP for ``task="tagging"``, accuracy
    for ``"classification"``, each the bootstrap mean ± std (multi-view tagging seed 003, "3.2").
    ``limited`` adds the seed's limited-data curve (1/5/10/20% of train, ``draws`` subsets each)
    and its plot. Writes ``probe.json``, ``probe.md`` (and ``limited_data.png``) into ``out``.
    """
    from tympan.evaluation.downstream import ProbeBench
    from tympan.report.plots import plot_limited_data
    from tympan.report.tables import format_probe_table

    bench = ProbeBench(data, task, skip_bad=skip_bad, progress=progress)
    encoder = resolve_model(model, recipe, seed=seed)
    res = bench.run(bench.embed(encoder, device=device), kind=kind, limited=limited,
                    draws=draws, seed=seed, device=device, **probe_params)
    name = Path(str(model)).name or str(model)
    table = format_probe_table({name: res["probe"]})
    record = {"model": str(model), "data": str(data), "task": task, "kind": kind, **res,
              "skipped": bench.skipped}
    files = {}
    if out is not None:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        text = (f"# {kind} probe of {model} on {data} ({task})\n\n"
                f"Bootstrap mean ± std over {res['probe']['bootstrap']['draws']} draws of "
                f"{res['probe']['bootstrap']['fraction']:.0%} of the test set, without "
                f"replacement.\n\n{table}\n")
        if res["limited_data"] is not None:
            files["png"] = str(plot_limited_data({name: res["limited_data"]},
                                                 folder / "limited_data.png"))
            text += "\n![limited data](limited_data.png)\n"
        (folder / "probe.json").write_text(json.dumps(record, indent=2))
        (folder / "probe.md").write_text(text)
        files.update(json=str(folder / "probe.json"), md=str(folder / "probe.md"))
    return {**record, "table": table, "files": files}


def _analysis_dir(model: str | Path, out: str | Path | None) -> Path:
    """``out``, else ``RUN/analysis`` for a run directory (baselines have no folder of their own)."""
    if out is not None:
        return Path(out)
    if Path(model).is_dir():
        return Path(model) / "analysis"
    raise TympanError(f"--model {model} is not a run directory: give --out for its analysis files")


def analyze_invariance(
    model: str | Path,
    data: str | Path,
    *,
    out: str | Path | None = None,
    split: str | None = None,
    ops: list[str] | None = None,
    num_clips: int = 256,
    seed: int = 0,
    recipe: str | Path | None = None,
    skip_bad: bool = False,
    batch_size: int = 64,
    device: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """MT-SLVR's learnt-invariance table of ``model`` on ``data`` (seed 000, "Ablation Studies" /
    "Learnt Invariance"): the mean Mahalanobis distance between the embeddings of original and
    augmented clips, per augmentation and per head (:mod:`tympan.analysis.invariance`).

    Writes ``invariance.json``, ``invariance.md`` and the heatmap ``invariance.png`` into ``out``
    (default ``RUN/analysis``) and returns the JSON record with ``markdown`` and file paths.
    """
    from tympan.analysis.invariance import format_invariance, invariance_report, load_clips
    from tympan.report.plots import plot_invariance_heatmap

    folder = _analysis_dir(model, out)
    encoder = resolve_model(model, recipe, seed=seed)
    clips = load_clips(data, split, encoder.sample_rate, num_clips, seed, skip_bad,
                       progress=progress)
    table = invariance_report(encoder, clips.audio, ops=ops, num_clips=num_clips, seed=seed,
                              batch_size=batch_size, device=device, progress=progress)
    text = format_invariance(table, show_ci=True)
    folder.mkdir(parents=True, exist_ok=True)
    record = {"model": str(model), "data": str(data), "split": split, **table.to_json(),
              "skipped": clips.skipped}
    (folder / "invariance.json").write_text(json.dumps(record, indent=2))
    (folder / "invariance.md").write_text(
        f"# Learnt invariance of {model}\n\nMean Mahalanobis distance between the embeddings of "
        f"{table.num_clips} original and augmented clips of {data} (± 95% CI over clips; lower = "
        f"more invariant), each op applied alone.\n\n{text}\n\n![heatmap](invariance.png)\n"
    )
    png = plot_invariance_heatmap(table, folder / "invariance.png",
                                  title=f"{Path(str(model)).name}: Mahalanobis distance "
                                        "(lower = more invariant)")
    return {**record, "markdown": text, "files": {
        "json": str(folder / "invariance.json"), "md": str(folder / "invariance.md"),
        "png": str(png)}}


def analyze_head_weights(
    model: str | Path,
    data: list[str | Path],
    *,
    out: str | Path | None = None,
    split: str | None = "test",
    ways: int = 5,
    shots: int = 1,
    queries: int = 15,
    episodes: int = 600,
    seed: int = 0,
    recipe: str | Path | None = None,
    skip_bad: bool = False,
    device: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Mean absolute weight that the few-shot linear readout puts on each head's features, per
    dataset (seed 000, "Ablation Studies" / "Feature Selection"; :mod:`tympan.analysis.head_weights`).

    The episodes and readouts are those of ``tympan fewshot`` with the same settings. Writes
    ``head_weights.json`` and ``head_weights.md`` into ``out`` (default ``RUN/analysis``).
    """
    from tympan.analysis.head_weights import format_head_weights, head_weights

    if not data:
        raise TympanError("--data: give at least one manifest or class folder")
    folder = _analysis_dir(model, out)
    encoder = resolve_model(model, recipe, seed=seed)
    slices = encoder.task_slices()
    results, skipped = {}, {}
    for d in data:
        bench = FewShotBench(d, split, skip_bad=skip_bad, progress=progress)
        emb = bench.embed(encoder, device=device)
        report = bench.clips(encoder.sample_rate)
        name = _dataset_name(d, split, results)
        results[name] = head_weights(
            emb, [it.label for it in report.items], slices, ways=ways, shots=shots,
            queries=queries, episodes=episodes, seed=seed, C=encoder.recipe.fewshot.C,
            max_iter=encoder.recipe.fewshot.readout_max_iter,
        )
        skipped[name] = report.skipped
    text = format_head_weights(results, show_ci=True)
    record = {"model": str(model), "split": split,
              "datasets": {k: v.to_json() for k, v in results.items()}, "skipped": skipped}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "head_weights.json").write_text(json.dumps(record, indent=2))
    (folder / "head_weights.md").write_text(
        f"# Few-shot readout weight per head of {model}\n\nMean |weight| per column of each "
        f"head's features in the {ways}-way {shots}-shot linear readouts ({episodes} episodes, "
        f"± 95% CI over episodes); a larger value means the classifier leans on that head.\n\n"
        f"{text}\n"
    )
    return {**record, "markdown": text, "files": {
        "json": str(folder / "head_weights.json"), "md": str(folder / "head_weights.md")}}


def _dataset_name(data: str | Path, split: str | None, taken: dict[str, Any]) -> str:
    """A short unique row name: the manifest's folder (and split)."""
    p = Path(data)
    base = (p.parent.name if p.suffix == ".csv" else p.name) or str(data)
    name = f"{base}/{split}" if split else base
    i = 2
    while name in taken:
        name, i = f"{base}/{split or 'all'} ({i})", i + 1
    return name


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
    manifest = ensure_corpus(out / "corpus", seed=seed, progress=progress)
    corpus_s = time.time() - started

    run = out / "simclr"
    t0 = time.time()
    pretrain_or_reuse(recipe, manifest, run, label=f"SimCLR ({recipe})", max_steps=max_steps,
                      seed=seed, progress=progress)
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


def pretext_validate(
    ci: str | Path,
    *,
    errors: str | Path | None = None,
    train: bool = False,
    data: str | Path | None = None,
    labels: str | Path | None = None,
    out: str | Path | None = None,
    max_steps: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """The seed's individual-selection check (seed 004, section IV): Spearman and Kendall rank
    correlation between each candidate's CI estimate (the ``ci`` table of a selection JSON) and
    its downstream error, read from ``errors`` (CSV ``candidate,error``) or measured with
    ``train`` (:func:`tympan.reproduce.pretext.candidate_errors`: one short pretraining per
    candidate on ``data``'s pretrain split, then a probe; error = 1 - accuracy)."""
    from tympan.pretext.validate import format_validation, read_errors_csv, validate_estimates

    record = _read_selection(ci)
    if (errors is None) == (not train):
        raise TympanError("pretext validate: give either --errors CSV or --train (not both)")
    measured: dict[str, Any] | None = None
    if train:
        from tympan.reproduce.pretext import candidate_errors

        if data is None:
            raise TympanError("pretext validate --train needs --data (a manifest with a "
                              "'pretrain' split and a labelled train/val/test split)")
        labels = labels or record.get("settings", {}).get("labels_file")
        if not labels:
            raise TympanError(f"{ci} records no labels file: give --labels")
        measured = candidate_errors(data, labels, sorted(record["ci"]), out=Path(out).parent
                                    if out else Path("runs/pretext_validate"),
                                    max_steps=max_steps, seed=seed, progress=progress)
        errs = {name: r["error"] for name, r in measured.items()}
    else:
        errs = read_errors_csv(errors)  # type: ignore[arg-type]
    result = validate_estimates(record["ci"], errs)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        result.to_json(out)
    return {**result.to_dict(), "markdown": format_validation(result), "trained": measured}


def _read_selection(path: str | Path) -> dict[str, Any]:
    """A selection JSON of ``tympan pretext select`` (keys ``weights``, ``ci``, ``settings``)."""
    p = Path(path)
    if not p.is_file():
        raise TympanError(f"{p}: no such selection file; write one with 'tympan pretext select'")
    try:
        record = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise TympanError(f"{p}: not JSON ({exc})") from None
    if not isinstance(record, dict) or not isinstance(record.get("ci"), dict):
        raise TympanError(f"{p}: not a selection of 'tympan pretext select' (no 'ci' table)")
    return record


def pretext_robustness(
    data: str | Path,
    labels: str | Path,
    out: str | Path,
    *,
    split: str | None = None,
    n_classes: list[int] | None = None,
    per_class: list[int] | None = None,
    draws: int = 10,
    seed: int = 0,
    skip_bad: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """CI estimates on growing random subsets of classes and of clips per class, ``draws`` each
    (seed 004, section IX, Fig. 3): ``robustness.json``, ``robustness.md`` and the boxplots
    ``robustness.png`` in ``out``."""
    from tympan.pretext.robustness import (
        format_robustness,
        plot_robustness,
        robustness_study,
        robustness_to_json,
    )
    from tympan.pretext.select import selection_inputs

    X, z, y, _ = selection_inputs(data, labels, split=split, max_per_class=None, seed=seed,
                                  skip_bad=skip_bad, progress=progress)
    records = robustness_study(X, z, y, n_classes=n_classes, per_class=per_class, draws=draws,
                               seed=seed)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    files = {"json": str(folder / "robustness.json"), "md": str(folder / "robustness.md"),
             "png": str(folder / "robustness.png")}
    robustness_to_json(records, files["json"])
    text = format_robustness(records)
    Path(files["md"]).write_text(
        f"# Robustness of the CI estimates on {data}\n\nHSIC(X, Z | Y) of each candidate on "
        f"random subsets ({draws} draws per size).\n\n{text}\n\n![boxplots](robustness.png)\n"
    )
    plot_robustness(records, files["png"])
    return {"records": len(records), "markdown": text, "files": files}


def analyze_geometry(
    run: str | Path | None = None,
    *,
    embeddings: str | Path | None = None,
    out: str | Path | None = None,
    compare: list[str] | None = None,
    seed: int = 0,
    k: int = 3,
    folds: int = 5,
    n_neighbors: int = 15,
) -> dict[str, Any]:
    """AudioConFit's geometry analyses (seed 002, section 3.4): anisotropy, dimensional
    contribution, UMAP of the most-confused classes and convergence curves of a fine-tuning run
    (or an embeddings file); see :func:`tympan.analysis.geometry.analyze_geometry`."""
    from tympan.analysis.geometry import analyze_geometry as _analyze

    return _analyze(run, embeddings=embeddings, out=out, compare=compare, seed=seed, k=k,
                    folds=folds, n_neighbors=n_neighbors)
