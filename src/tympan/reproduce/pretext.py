"""``tympan reproduce pretext``: select pretext tasks five ways, pretrain with each, compare.

Zaiem & Parcollet, "Pretext-task selection by conditional independence"
(``../shared/seeds/004_f3e19d7efff003e6.txt``, sections V-VII): signal-feature pretext labels are
weighted for a known downstream task before any pretraining, by the conditional-independence
(HSIC) estimate with softmax or sparsemax weights, against the baselines All (equal weights),
MRMR and RFE (four labels each); a PASE-like encoder is pretrained with each weighting (mel and
MFCC reconstruction plus the weighted label workers, eq. 11) and frozen for the downstream tasks.
The seed's speaker task is VoxCeleb; it reports sparsemax/softmax ahead of the baselines.

Here, on the embedded speech corpus (:func:`tympan.data.speech.synth_speech_corpus`):

1. pretext labels of every clip (:func:`tympan.pretext.labels.extract_labels`, openSMILE);
2. the downstream task that drives the selection is **speaker identification** over the seen
   speakers' ``train`` split (label = speaker); each method writes ``selection/<method>.json``;
3. one PASE-like encoder per selection (``pase_quick`` with ``--quick``), pretrained on the
   ``pretrain`` split with the same seed, plus two references through the same path: the same
   encoder with mel and MFCC workers only (``none``) and the untrained encoder (``random init``);
4. every frozen encoder is scored by frame statistics pooling (mean and std of
   ``Encoder.frames``): a linear speaker-identification probe and a linear word probe (accuracy,
   bootstrap mean ± std over 50 draws of 50% of the test clips), and the speaker-verification
   EER with cosine scoring on the **held-out** speakers (``verify`` split, embeddings centred
   by the mean of the seen speakers' training clips; 95% interval over half-samples of
   speakers).

:func:`candidate_errors` is the seed's individual-selection experiment (section IV): one
pretraining per candidate (its label alone, weight 1), scored by the speaker probe, so that
``tympan pretext validate --train`` can correlate each candidate's CI estimate with its error.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from tympan.data.corpora import ensure_corpus
from tympan.data.manifest import read_manifest, write_manifest
from tympan.data.scan import scan_items
from tympan.data.speech import synth_speech_corpus
from tympan.errors import TympanError
from tympan.evaluation.downstream import ProbeBench
from tympan.evaluation.features import embed_frames, frame_stats, resolve_model
from tympan.evaluation.verification import verification_eer
from tympan.pretext.hsic import PretextSelection
from tympan.pretext.labels import extract_labels
from tympan.pretext.select import select_from_data
from tympan.reproduce import recipe_with_steps, write_results
from tympan.training.pretrain import pretrain_or_reuse

log = logging.getLogger("tympan")

#: selection methods, in the seed's order of presentation (baselines first)
METHODS = ("all", "mrmr", "rfe", "softmax", "sparsemax")

#: ``--quick``: the CPU-sized PASE recipe, steps and probe/selection settings
QUICK: dict[str, Any] = {"recipe": "pase_quick", "max_steps": 800, "selection_steps": 300}
FULL: dict[str, Any] = {"recipe": "pase", "max_steps": None, "selection_steps": 300}

#: statistics pooling of the frame-level representation for every downstream score
STATS = "mean+std"


def _speaker_manifest(data: Path, out: Path) -> Path:
    """The seen speakers' train/val/test clips relabelled by speaker (the selection's and the
    speaker probe's downstream task)."""
    manifest = read_manifest(data)
    items = [it for it in manifest.items if it.split in ("train", "val", "test")]
    missing = [it for it in items if not it.speaker]
    if not items or missing:
        raise TympanError(
            f"{data}: the pretext reproduction needs a 'speaker' column and train/val/test "
            f"splits (as written by tympan corpus synth-speech)"
        )
    relabelled = [dataclasses.replace(it, labels=(it.speaker,)) for it in items]
    path = out / "speaker_id.csv"
    write_manifest(relabelled, path)
    return path


class _Scorer:
    """Every downstream score of one frozen encoder, on clips decoded once for all models."""

    def __init__(self, data: Path, speaker_data: Path, progress: bool) -> None:
        self.speaker = ProbeBench(speaker_data, "classification", progress=progress)
        self.word = ProbeBench(data, "classification", progress=progress)
        verify = read_manifest(data).select("verify")
        if not verify.items:
            raise TympanError(f"{data}: no 'verify' split (held-out speakers) for the EER")
        self.verify_items = verify.items
        self._verify: dict[int, Any] = {}
        self.progress = progress

    def _verify_clips(self, sample_rate: int) -> Any:
        if sample_rate not in self._verify:
            self._verify[sample_rate] = scan_items(
                self.verify_items, sample_rate, keep_audio=True, progress=self.progress,
                desc="loading verify clips",
            )
        return self._verify[sample_rate]

    def score(self, encoder: Any, seed: int, probe_epochs: int | None) -> dict[str, Any]:
        extra = {"max_epochs": probe_epochs} if probe_epochs else {}
        out: dict[str, Any] = {}
        centre = None
        for name, bench in (("speaker", self.speaker), ("word", self.word)):
            splits = bench.embed(encoder, stats=STATS)
            if name == "speaker":  # mean normalisation for the EER, from the seen speakers
                centre = splits["train"][0].mean(axis=0)
            res = bench.run(splits, seed=seed, **extra)
            out[name] = res["probe"]["metrics"]["accuracy"]
        rep = self._verify_clips(encoder.sample_rate)
        seconds = encoder.recipe.fewshot.segment_seconds
        emb = frame_stats(embed_frames(encoder, rep.audio, seconds, progress=self.progress),
                          STATS)
        eer = verification_eer(emb, [it.speaker for it in rep.items], seed=seed, centre=centre)
        out["eer"] = eer.to_json()
        return out


def reproduce_pretext(
    out: str | Path,
    *,
    data: str | Path | None = None,
    quick: bool = False,
    methods: tuple[str, ...] | None = None,
    max_steps: int | None = None,
    overrides: dict[str, Any] | None = None,
    seed: int = 0,
    progress: bool = True,
    probe_epochs: int | None = None,
) -> dict[str, Any]:
    """Run the comparison (module docstring) into ``out``: ``labels.npz``, ``selection/*.json``,
    one run directory per method, ``results.md`` and ``results.json``. Finished runs are reused
    and interrupted ones resumed, so the command can be stopped and started again."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    settings = QUICK if quick else FULL
    chosen = list(methods or METHODS)
    bad = [m for m in chosen if m not in METHODS]
    if bad:
        raise TympanError(f"pretext methods: unknown '{bad[0]}'; choose from {', '.join(METHODS)}")
    if data is None:
        data = ensure_corpus(out / "speech", synth_speech_corpus, seed=seed, progress=progress)
    data = Path(data)
    speaker_data = _speaker_manifest(data, out)

    t0 = time.time()
    labels_file = out / "labels.npz"
    labels = extract_labels(data, labels_file, progress=progress)
    labels_s = time.time() - t0

    selections: dict[str, PretextSelection] = {}
    sel_dir = out / "selection"
    sel_dir.mkdir(exist_ok=True)
    for method in chosen:
        selections[method] = select_from_data(
            speaker_data, labels, method, split="train", steps=settings["selection_steps"],
            seed=seed, progress=progress, out=sel_dir / f"{method}.json",
        )
        log.info("%s selection: %s", method, selections[method].weights)

    recipe = recipe_with_steps(settings["recipe"], max_steps or settings["max_steps"], overrides)
    scorer = _Scorer(data, speaker_data, progress)
    models: list[tuple[str, str, str | None]] = [("random init", "random", None),
                                                 ("none", str(out / "runs" / "none"), None)]
    models += [(m, str(out / "runs" / m), str(sel_dir / f"{m}.json")) for m in chosen]
    rows: list[dict[str, Any]] = []
    for name, spec, weights in models:
        t0 = time.time()
        if spec != "random":
            pretrain_or_reuse(recipe, data, spec, label=name, seed=seed, split="pretrain",
                              progress=progress, pretext_weights=weights,
                              pretext_labels=labels_file if weights else None)
        train_s = time.time() - t0
        encoder = resolve_model(spec, recipe, seed=seed)
        t0 = time.time()
        scores = scorer.score(encoder, seed, probe_epochs)
        sel = selections.get(name)
        rows.append({
            "method": name, "run": spec, "recipe": recipe.name,
            "weights": {k: v for k, v in sel.weights.items() if v > 0} if sel else {},
            **scores, "pretrain_s": round(train_s, 1), "score_s": round(time.time() - t0, 1),
        })
        log.info("%s: speaker %.3f, word %.3f, EER %.3f", name, scores["speaker"]["mean"],
                 scores["word"]["mean"], scores["eer"]["eer"])

    summary = {
        "seed": seed, "quick": quick, "data": str(data), "recipe": recipe.name,
        "steps": recipe.train.max_steps, "stats": STATS, "labels": str(labels_file),
        "labels_seconds": round(labels_s, 1),
        "ci": next(iter(selections.values())).ci if selections else {},
        "selections": {m: s.to_dict() for m, s in selections.items()},
        "rows": rows, "wall_seconds": round(time.time() - started, 1),
    }
    summary["ordering"] = _ordering(rows)
    return write_results(out, summary, format_results(summary))


def _ordering(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Our ranking of the selection methods by speaker accuracy and by EER."""
    chosen = [r for r in rows if r["method"] in METHODS]
    by_acc = [r["method"] for r in sorted(chosen, key=lambda r: -r["speaker"]["mean"])]
    by_eer = [r["method"] for r in sorted(chosen, key=lambda r: r["eer"]["eer"])]
    ours = {"softmax", "sparsemax"}
    return {
        "speaker_accuracy": by_acc, "eer": by_eer,
        "ci_method_first": {"speaker_accuracy": bool(by_acc) and by_acc[0] in ours,
                            "eer": bool(by_eer) and by_eer[0] in ours},
    }


def _pm(m: dict[str, float]) -> str:
    return f"{100 * m['mean']:.1f} ± {100 * m['std']:.1f}"


def _eer(e: dict[str, Any]) -> str:
    low, high = e.get("ci_low"), e.get("ci_high")
    if low is None or high is None or not np.isfinite([low, high]).all():
        return f"{100 * e['eer']:.1f}"
    return f"{100 * e['eer']:.1f} [{100 * low:.1f}, {100 * high:.1f}]"


def format_results(summary: dict[str, Any]) -> str:
    """The downstream table, the selections and the comparison with the seed."""
    lines = [
        "# Pretext-task selection reproduction on the embedded speech corpus",
        "",
        f"PASE-like encoder (`{summary['recipe']}`, {summary['steps']} steps, seed "
        f"{summary['seed']}) pretrained with each selection's weighted label workers (plus mel "
        f"and MFCC reconstruction); frozen, {summary['stats']} statistics of its frames. "
        f"Speaker and word: linear-probe test accuracy (%), bootstrap mean ± std over 50 draws "
        f"of 50% of the test clips. EER: speaker verification on held-out speakers, cosine "
        f"scoring (%, 95% interval over half-samples of speakers). Selection target: speaker "
        f"identification on the train split.",
        "",
        "| method | labels (weight) | speaker acc | word acc | EER (lower is better) |",
        "|---|---|---|---|---|",
    ]
    for r in summary["rows"]:
        w = ", ".join(f"{k} {v:.2f}" for k, v in sorted(r["weights"].items(), key=lambda kv: -kv[1]))
        if not w:
            w = "mel + MFCC only" if r["method"] == "none" else "untrained"
        lines.append(f"| {r['method']} | {w} | {_pm(r['speaker'])} | {_pm(r['word'])} | "
                     f"{_eer(r['eer'])} |")
    ci = summary.get("ci") or {}
    if ci:
        lines += ["", "## CI estimates (HSIC(X, Z | Y), speaker task; lower = more useful)", "",
                  "| candidate | CI |", "|---|---|"]
        lines += [f"| {k} | {v:.3e} |" for k, v in sorted(ci.items(), key=lambda kv: kv[1])]
    order = summary.get("ordering") or {}
    if order.get("speaker_accuracy"):
        lines += [
            "",
            f"Ranking by speaker accuracy: {' > '.join(order['speaker_accuracy'])}; by EER: "
            f"{' > '.join(order['eer'])}. The seed finds the CI-based weightings (softmax, "
            f"sparsemax) ahead of All, MRMR and RFE. A CI method first here: speaker accuracy "
            f"{'yes' if order['ci_method_first']['speaker_accuracy'] else 'no'}, EER "
            f"{'yes' if order['ci_method_first']['eer'] else 'no'}.",
        ]
    lines += ["", f"Labels: {summary['labels_seconds']:.0f} s. Wall time: "
              f"{summary['wall_seconds']:.0f} s."]
    return "\n".join(lines) + "\n"


def candidate_errors(
    data: str | Path,
    labels: str | Path,
    candidates: list[str],
    *,
    out: str | Path,
    quick: bool = True,
    max_steps: int | None = None,
    overrides: dict[str, Any] | None = None,
    seed: int = 0,
    progress: bool = True,
    probe_epochs: int | None = None,
) -> dict[str, dict[str, Any]]:
    """The seed's individual-selection experiment (section IV): for each candidate, pretrain the
    PASE-like encoder with that label alone (weight 1) on ``data``'s ``pretrain`` split and
    probe speaker identification; ``error = 1 - accuracy``. Returns ``{candidate: {"error",
    "accuracy", "run"}}``; runs land in ``out/candidates/<name>`` and are reused."""
    out = Path(out)
    data = Path(data)
    speaker_data = _speaker_manifest(data, out)
    settings = QUICK if quick else FULL
    recipe = recipe_with_steps(settings["recipe"], max_steps or settings["max_steps"], overrides)
    bench = ProbeBench(speaker_data, "classification", progress=progress)
    results: dict[str, dict[str, Any]] = {}
    for name in candidates:
        run = out / "candidates" / name
        weights = out / "candidates" / f"{name}.json"
        weights.parent.mkdir(parents=True, exist_ok=True)
        if not weights.is_file():
            weights.write_text(json.dumps({
                "method": "single", "weights": {name: 1.0},
                "settings": {"labels_file": str(Path(labels).resolve())},
            }))
        pretrain_or_reuse(recipe, data, run, label=name, seed=seed, split="pretrain",
                          progress=progress, pretext_weights=weights)
        encoder = resolve_model(str(run), recipe, seed=seed)
        res = bench.run(bench.embed(encoder, stats=STATS), seed=seed,
                        **({"max_epochs": probe_epochs} if probe_epochs else {}))
        acc = res["probe"]["metrics"]["accuracy"]
        results[name] = {"error": 1.0 - acc["mean"], "accuracy": acc, "run": str(run)}
    return results


__all__ = ["METHODS", "candidate_errors", "format_results", "reproduce_pretext"]
