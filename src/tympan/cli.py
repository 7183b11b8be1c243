"""The ``tympan`` command: a thin layer over :mod:`tympan.api`.

User errors (:class:`~tympan.errors.TympanError`) are printed as one line without a traceback and
exit with status 2. Every command that produces results prints a human table and can write JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from pathlib import Path
from typing import Any

import yaml

from tympan.errors import ConfigError, TympanError
from tympan.runtime import retain_freed_memory


def _parse_set(values: list[str]) -> dict[str, Any]:
    """``--set train.lr=0.01`` pairs -> overrides (values parsed as YAML scalars)."""
    out: dict[str, Any] = {}
    for item in values:
        if "=" not in item:
            raise ConfigError(f"--set {item}: expected KEY=VALUE, e.g. --set train.lr=0.001")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def _write_json(path: str | None, payload: Any) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(payload, indent=2))


def _report_skipped(skipped: list[dict[str, str]]) -> None:
    if skipped:
        print(f"skipped {len(skipped)} unusable file(s):", file=sys.stderr)
        for s in skipped:
            print(f"  {s['path']}: {s['reason']}", file=sys.stderr)


def cmd_corpus(args: argparse.Namespace) -> int:
    if args.corpus_command == "synth-speech":
        from tympan.data.speech import synth_speech_corpus

        manifest = synth_speech_corpus(
            args.out, seed=args.seed, scale=args.scale, speakers=args.speakers,
            utterances=args.utterances, workers=args.workers, progress=not args.quiet,
        )
        print(f"wrote {manifest}")
        return 0
    if args.corpus_command == "synth-music":
        from tympan.data.music import synth_music as make
    else:
        from tympan.data.corpora import synth_corpus as make

    manifest = make(args.out, seed=args.seed, scale=args.scale, progress=not args.quiet)
    print(f"wrote {manifest}")
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    from tympan.api import probe

    res = probe(
        args.model, args.data, out=args.out, task=args.task, kind=args.kind,
        limited=args.limited_data, draws=args.draws, seed=args.seed, recipe=args.recipe,
        skip_bad=args.skip_bad, device=args.device, progress=not args.quiet,
        **({"max_epochs": args.epochs} if args.epochs else {}),
    )
    _report_skipped(res["skipped"])
    print(res["summary"])
    print(res["table"])
    curve = res["limited_data"]
    if curve is not None:
        for row in curve["fractions"]:
            cells = ", ".join(f"{k} {v:.4f}" for k, v in row["mean"].items())
            print(f"  {100 * row['fraction']:g}% of train (n={row['n_train'][0]}): {cells}")
    if res["files"]:
        print("written to " + ", ".join(res["files"].values()))
    _write_json(args.json, {k: v for k, v in res.items() if k != "table"})
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    from tympan.config import load_recipe, packaged_recipes

    if args.name:
        print(yaml.safe_dump(load_recipe(args.name).to_dict(), sort_keys=False), end="")
        return 0
    for name in packaged_recipes():
        print(name)
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from tympan.report.tables import format_parameters
    from tympan.training.pretrain import pretrain

    result = pretrain(
        args.recipe, args.data, args.out, max_steps=args.max_steps, resume=args.resume,
        seed=args.seed, skip_bad=args.skip_bad, split=args.split,
        devices=int(args.devices) if args.devices and args.devices.isdigit() else args.devices,
        accelerator=args.accelerator, strategy=args.strategy, num_nodes=args.num_nodes,
        progress=not args.quiet, overrides=_parse_set(args.set),
        pretext_weights=args.pretext_weights, pretext_labels=args.pretext_labels,
    )
    if result.global_rank != 0:
        return 0  # under DDP only rank 0 reports (it alone wrote the run directory)
    summary = result.to_json()
    _report_skipped(result.skipped)
    print(
        f"pretrained {result.steps} steps on {result.clips} clips in {result.wall_seconds:.0f} s "
        f"-> {result.run}"
    )
    print(format_parameters(result.parameters["encoder_breakdown"]))
    _write_json(args.json, summary)
    return 0


def cmd_fewshot(args: argparse.Namespace) -> int:
    from tympan.api import fewshot, format_table

    res = fewshot(
        args.model, args.data, split=args.split, ways=args.ways, shots=args.shots,
        queries=args.queries, episodes=args.episodes, seed=args.seed, task=args.task,
        recipe=args.recipe, skip_bad=args.skip_bad, device=args.device, progress=not args.quiet,
    )
    _report_skipped(res.skipped)
    print(format_table([res.to_json()]))
    _write_json(args.json, res.to_json())
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from tympan.api import embed

    summary = embed(
        args.model, args.data, args.out, split=args.split, task=args.task, recipe=args.recipe,
        skip_bad=args.skip_bad, device=args.device, seed=args.seed, progress=not args.quiet,
    )
    _report_skipped(summary["skipped"])
    tasks = ", ".join(f"{t} [{a}:{b})" for t, (a, b) in summary["tasks"].items())
    print(f"embedded {summary['clips']} clips -> {summary['out']} (D={summary['dim']}; {tasks})")
    _write_json(args.json, summary)
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from tympan import api

    if args.analysis == "invariance":
        summary = api.analyze_invariance(
            args.run, args.data, out=args.out, split=args.split, ops=args.ops,
            num_clips=args.num_clips, seed=args.seed, recipe=args.recipe, skip_bad=args.skip_bad,
            batch_size=args.batch_size, device=args.device, progress=not args.quiet,
        )
        _report_skipped(summary["skipped"])
        print(f"Mahalanobis distance original -> augmented, {summary['num_clips']} clips "
              f"(lower = more invariant; ± 95% CI)")
    elif args.analysis == "geometry":
        if args.run is None and args.embeddings is None:
            raise TympanError("analyze geometry: give a run directory or --embeddings FILE")
        summary = api.analyze_geometry(
            args.run, embeddings=args.embeddings, out=args.out, compare=args.compare,
            seed=args.seed, k=args.k, folds=args.folds, n_neighbors=args.n_neighbors,
        )
    else:
        summary = api.analyze_head_weights(
            args.run, args.data, out=args.out, split=args.split, ways=args.ways,
            shots=args.shots, queries=args.queries, episodes=args.episodes, seed=args.seed,
            recipe=args.recipe, skip_bad=args.skip_bad, device=args.device,
            progress=not args.quiet,
        )
        for skipped in summary["skipped"].values():
            _report_skipped(skipped)
        print(f"mean |weight| of the {args.ways}-way {args.shots}-shot readout on each head's "
              f"features (± 95% CI over {args.episodes} episodes)")
    print(summary["markdown"])
    print("written to " + ", ".join(summary["files"].values()))
    _write_json(args.json, {k: v for k, v in summary.items() if k != "markdown"})
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    out = args.out or f"runs/reproduce_{args.paper}"
    if args.paper == "multiview":
        from tympan.reproduce.multiview import METHODS, reproduce_multiview

        bad = [m for m in args.methods or [] if m not in METHODS]
        if bad:
            raise TympanError(f"--methods {bad[0]}: unknown; choose from {', '.join(METHODS)}")
        summary = reproduce_multiview(
            out, data=args.data, quick=args.quick,
            methods=tuple(args.methods) if args.methods else None, max_steps=args.max_steps,
            limited=not args.no_limited_data, seed=args.seed, progress=not args.quiet,
        )
    elif args.paper == "pretext":
        from tympan.reproduce.pretext import reproduce_pretext

        summary = reproduce_pretext(
            out, data=args.data, quick=args.quick,
            methods=tuple(args.methods) if args.methods else None, max_steps=args.max_steps,
            seed=args.seed, progress=not args.quiet,
        )
    elif args.paper == "audioconfit":
        from tympan.reproduce.audioconfit import reproduce_audioconfit

        summary = reproduce_audioconfit(
            out, data=args.data, quick=args.quick,
            backbones=tuple(args.backbones) if args.backbones else None,
            pretrain_steps=args.max_steps, seed=args.seed, progress=not args.quiet,
        )
    else:
        from tympan.reproduce.mtslvr import VARIANTS, reproduce_mtslvr

        names = {v.name for v in VARIANTS} | {v.slug for v in VARIANTS}
        bad = [v for v in args.variants or [] if v not in names]
        if bad:
            raise TympanError(
                f"--variants {bad[0]}: unknown; choose from {', '.join(v.slug for v in VARIANTS)}"
            )
        summary = reproduce_mtslvr(
            out, data=args.data, eval_data=args.eval_data, quick=args.quick,
            families=tuple(args.families), variants=tuple(args.variants) if args.variants else None,
            max_steps=args.max_steps, episodes=args.episodes, seed=args.seed,
            progress=not args.quiet,
        )
    print(summary["markdown"])
    print(f"written to {Path(out) / 'results.md'} and results.json")
    return 0


def cmd_pretext(args: argparse.Namespace) -> int:
    """``tympan pretext labels|select|validate|robustness`` (seed 004)."""
    from tympan import api

    names = args.candidates.split(",") if getattr(args, "candidates", None) else None
    if args.pretext_command == "labels":
        from tympan.pretext.labels import extract_labels

        labels = extract_labels(
            args.data, args.out, candidates=names, sample_rate=args.sample_rate,
            workers=args.workers, cache_dir=args.cache_dir, skip_bad=args.skip_bad,
            progress=not args.quiet,
        )
        _report_skipped(labels.skipped)
        print(f"{len(labels.paths)} clips x {len(labels.names)} candidates "
              f"({', '.join(labels.names)}) at {labels.hop_seconds * 1000:g} ms frames: {args.out}")
        return 0
    if args.pretext_command == "select":
        from tympan.pretext.select import format_selection, select_from_data

        sel = select_from_data(
            args.data, args.labels, args.method, candidates=names, split=args.split,
            max_per_class=args.max_per_class or None, p=args.p, steps=args.steps, lr=args.lr,
            sigma=args.sigma, seed=args.seed, skip_bad=args.skip_bad, progress=not args.quiet,
            out=args.out,
        )
        print(f"{args.method} selection (CI = HSIC(X, Z | Y), lower = more useful):")
        print(format_selection(sel))
        print(f"written to {args.out}")
        return 0
    if args.pretext_command == "validate":
        summary = api.pretext_validate(
            args.ci, errors=args.errors, train=args.train, data=args.data, labels=args.labels,
            out=args.out, max_steps=args.max_steps, seed=args.seed, progress=not args.quiet,
        )
        print(summary["markdown"])
        if args.out:
            print(f"written to {args.out}")
        return 0
    summary = api.pretext_robustness(
        args.data, args.labels, args.out, split=args.split, n_classes=args.n_classes,
        per_class=args.per_class, draws=args.draws, seed=args.seed, skip_bad=args.skip_bad,
        progress=not args.quiet,
    )
    print(summary["markdown"])
    print("written to " + ", ".join(summary["files"].values()))
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from tympan.api import finetune

    if args.folds is None:
        folds: Any = None
    elif args.folds in ("all", "none"):
        folds = args.folds == "all"
    else:
        folds = [int(f) for f in args.folds.split(",")]
    seeds: Any = [int(x) for x in args.seeds.split(",")] if "," in args.seeds else int(args.seeds)
    res = finetune(
        args.method, args.backbone, args.data, args.out, seeds=seeds, folds=folds,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        m_per_class=args.m_per_class, temperature=args.temperature,
        projection_dim=args.projection_dim, clip_seconds=args.clip_seconds, recipe=args.recipe,
        device=args.device, skip_bad=args.skip_bad, resume=args.resume,
        progress=not args.quiet,
    )
    print((Path(args.out) / "results.md").read_text())
    _write_json(args.json, res.to_json())
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from tympan.report.html import write_report
    from tympan.report.model_card import write_model_card

    out = Path(args.out) if args.out else None
    page = write_report(args.run, out / "report.html" if out else None)
    card = write_model_card(args.run, out / "MODEL_CARD.md" if out else None)
    print(f"written to {page} and {card}")
    return 0


def cmd_shard(args: argparse.Namespace) -> int:
    from tympan.data.shards import write_shards

    index = write_shards(
        args.data, args.out, shard_size=args.shard_size, shard_bytes=args.shard_bytes,
        sample_rate=args.sample_rate, split=args.split, audio_format=args.format,
        min_seconds=args.min_seconds, shuffle=not args.no_shuffle, seed=args.seed,
        skip_bad=args.skip_bad, overwrite=args.overwrite, workers=args.workers,
        progress=not args.quiet,
    )
    _report_skipped(index.skipped)
    print(f"wrote {index.total} clips in {len(index.shards)} shards -> {index.location}")
    _write_json(args.json, index.to_json())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from tympan.api import demo

    summary = demo(args.out, seed=args.seed, max_steps=args.max_steps, episodes=args.episodes,
                   progress=not args.quiet)
    print()
    print(summary["table"])
    print()
    print(summary["verdict"])
    print(f"written to {Path(args.out) / 'results.md'}")
    return 0


def _frozen_model_args(p: argparse.ArgumentParser) -> None:
    """Options of every command that runs a frozen encoder over a dataset."""
    p.add_argument("--recipe", help="architecture for 'random'/'logmel' (default: simclr)")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable audio and report it")
    p.add_argument("--device", help="cpu or cuda (default: cuda if available)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tympan", description="Self-supervised audio representation learning."
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("corpus", help="generate the embedded synthetic corpus")
    csub = c.add_subparsers(dest="corpus_command", required=True)
    cs = csub.add_parser("synth", help="procedural sound-event corpus (WAV + manifest.csv)")
    cs.add_argument("out", help="output folder")
    cs.add_argument("--seed", type=int, default=0)
    cs.add_argument("--scale", default="full", choices=["full", "tiny"],
                    help="'tiny' is for tests (default: full)")
    cs.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    cs.set_defaults(func=cmd_corpus)
    cm = csub.add_parser("synth-music", help="procedural multi-instrument music corpus, multi-label "
                                             "tags (WAV + manifest.csv)")
    cm.add_argument("out", help="output folder")
    cm.add_argument("--seed", type=int, default=0)
    cm.add_argument("--scale", default="full", choices=["full", "tiny"],
                    help="'full': 144 tracks of 30 s; 'tiny': 18 tracks of 20 s, for tests")
    cm.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    cm.set_defaults(func=cmd_corpus)

    cp = csub.add_parser("synth-speech", help="procedural spoken words by synthetic speakers "
                                              "(word label, speaker column, held-out verify "
                                              "speakers; WAV + manifest.csv)")
    cp.add_argument("out", help="output folder")
    cp.add_argument("--seed", type=int, default=0)
    cp.add_argument("--scale", default="full", choices=["full", "tiny"],
                    help="'full': 40 speakers, 960 clips of 1-2 s; 'tiny': 16 speakers, for tests")
    cp.add_argument("--speakers", type=int, help="override the scale's number of speakers")
    cp.add_argument("--utterances", type=int, help="labelled utterances per speaker")
    cp.add_argument("--workers", type=int, help="processes (default: all cores)")
    cp.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    cp.set_defaults(func=cmd_corpus)

    r = sub.add_parser("recipes", help="list packaged recipes, or print one resolved")
    r.add_argument("name", nargs="?")
    r.set_defaults(func=cmd_recipes)

    t = sub.add_parser("pretrain", help="self-supervised pretraining")
    t.add_argument("--recipe", default="simclr", help="packaged recipe name or YAML path")
    t.add_argument("--data", required=True,
                   help="manifest CSV, class-folder, or WebDataset shards (a folder with "
                        "shards.json, or a URL pattern; see tympan shard)")
    t.add_argument("--out", required=True, help="run directory")
    t.add_argument("--max-steps", type=int)
    t.add_argument("--resume", action="store_true", help="continue from RUN/checkpoints/last.ckpt")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--split", help="manifest split to pretrain on (default: 'pretrain' if present, else all)")
    t.add_argument("--skip-bad", action="store_true", help="skip unreadable audio and report it")
    t.add_argument("--devices", help="number of devices (default: recipe, 'auto')")
    t.add_argument("--accelerator", help="cpu, gpu or auto (default: recipe)")
    t.add_argument("--strategy", help="Lightning strategy, e.g. ddp (default: recipe)")
    t.add_argument("--num-nodes", type=int)
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field, e.g. --set train.lr=3e-4 (repeatable)")
    t.add_argument("--pretext-weights", metavar="WEIGHTS_JSON",
                   help="selection of 'tympan pretext select': its labels with weight > 0 are "
                        "regressed frame by frame by weighted workers, added to the recipe's "
                        "objective (seed 004, eq. 11)")
    t.add_argument("--pretext-labels", metavar="LABELS_NPZ",
                   help="labels of 'tympan pretext labels' (default: the selection's)")
    t.add_argument("--json", help="also write the summary JSON here")
    t.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    t.set_defaults(func=cmd_pretrain)

    f = sub.add_parser("fewshot", help="few-shot classification with a linear readout")
    f.add_argument("--model", required=True, help="run directory, 'random' or 'logmel'")
    f.add_argument("--data", required=True, help="manifest CSV or class-folder")
    f.add_argument("--split", default="test")
    f.add_argument("--ways", type=int, default=5)
    f.add_argument("--shots", type=int, default=1)
    f.add_argument("--queries", type=int, default=15)
    f.add_argument("--episodes", type=int, default=600)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--task", help="use one task's features (default: all tasks concatenated)")
    _frozen_model_args(f)
    f.add_argument("--json", help="write the result JSON here")
    f.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    f.set_defaults(func=cmd_fewshot)

    pr = sub.add_parser(
        "probe", help="linear/MLP probe on frozen embeddings: tagging (ROC-AUC, mAP) or accuracy",
        description="Train a probe on a frozen encoder's track-averaged embeddings of the train "
                    "split, keep the best validation-loss epoch, and score the test split with "
                    "bootstrap mean ± std (50 draws of 50%%, without replacement).",
    )
    pr.add_argument("--model", required=True, help="run directory, 'random' or 'logmel'")
    pr.add_argument("--data", required=True, help="manifest with train/val/test splits")
    pr.add_argument("--task", default="tagging", choices=["tagging", "classification"])
    pr.add_argument("--kind", default="linear", choices=["linear", "mlp"],
                    help="linear (the seed's probe) or one hidden layer of 512")
    pr.add_argument("--limited-data", action="store_true",
                    help="also train on 1/5/10/20%% of train (4 draws each) and plot the curve")
    pr.add_argument("--draws", type=int, default=4, help="subsets per limited-data fraction")
    pr.add_argument("--epochs", type=int, help="probe epochs of 128 steps (default: 25)")
    pr.add_argument("--out", help="folder for probe.json, probe.md and limited_data.png")
    pr.add_argument("--seed", type=int, default=0)
    _frozen_model_args(pr)
    pr.add_argument("--json", help="also write the result JSON here")
    pr.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    pr.set_defaults(func=cmd_probe)

    e = sub.add_parser("embed", help="embed a dataset's clips with a frozen encoder (.npz)")
    e.add_argument("--model", required=True, help="run directory, 'random' or 'logmel'")
    e.add_argument("--data", required=True, help="manifest CSV or class-folder")
    e.add_argument("--out", required=True, help="output .npz or .parquet")
    e.add_argument("--split", help="one split (default: every clip)")
    e.add_argument("--task", help="one task's features (default: all tasks concatenated)")
    _frozen_model_args(e)
    e.add_argument("--seed", type=int, default=0, help="initialisation of 'random'")
    e.add_argument("--json", help="also write the summary JSON here")
    e.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    e.set_defaults(func=cmd_embed)

    a = sub.add_parser("analyze", help="diagnose an encoder (invariance, head weights, geometry)")
    asub = a.add_subparsers(dest="analysis", required=True)
    ai = asub.add_parser(
        "invariance", help="Mahalanobis distance original -> augmented, per op and head",
        description="MT-SLVR's learnt-invariance table: for each augmentation applied alone and "
                    "each head, the mean Mahalanobis distance between the embeddings of the "
                    "original and augmented clips (lower = more invariant). Writes JSON, "
                    "Markdown and a heatmap PNG.",
    )
    ah = asub.add_parser(
        "head-weights", help="few-shot readout weight on each head's features, per dataset",
        description="MT-SLVR's feature-selection analysis: the mean absolute weight of the "
                    "few-shot linear readouts on each head's columns, per dataset.",
    )
    for q in (ai, ah):
        q.add_argument("run", help="run directory, 'random' or 'logmel'")
        q.add_argument("--out", help="output folder (default: RUN/analysis)")
        q.add_argument("--seed", type=int, default=0)
        _frozen_model_args(q)
        q.add_argument("--json", help="also write the summary JSON here")
        q.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
        q.set_defaults(func=cmd_analyze)
    ag = asub.add_parser(
        "geometry", help="anisotropy, dimensional contribution, UMAP of confused classes, "
                         "convergence curves",
        description="AudioConFit's analyses (seed 002): anisotropy (mean pairwise cosine), "
                    "dimensional contribution (top-1/2/3 share; dims reaching 50/80/90%%), a "
                    "UMAP of the most-confused classes and validation-accuracy convergence per "
                    "epoch. Writes JSON, Markdown, PNG and CSV.",
    )
    ag.add_argument("run", nargs="?", help="fine-tuning run directory (embeddings_test.npz, "
                                           "confusion.json, convergence.csv)")
    ag.add_argument("--embeddings", help="an embeddings .npz instead of a run (needs --out)")
    ag.add_argument("--compare", nargs="+", help="more runs or embeddings files: one table row "
                                                 "and UMAP panel each")
    ag.add_argument("--out", help="output folder (default: RUN/analysis)")
    ag.add_argument("--k", type=int, default=3, help="most-confused class pairs in the UMAP")
    ag.add_argument("--folds", type=int, default=5,
                    help="cross-validation folds for predictions when a file has none")
    ag.add_argument("--n-neighbors", type=int, default=15, help="UMAP neighbours")
    ag.add_argument("--seed", type=int, default=0)
    ag.add_argument("--json", help="also write the summary JSON here")
    ag.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    ag.set_defaults(func=cmd_analyze)
    ai.add_argument("--data", required=True, help="manifest CSV or class-folder")
    ai.add_argument("--split", help="default: 'pretrain' if the manifest has it, else all clips")
    ai.add_argument("--ops", nargs="+", help="augmentations to measure (default: the recipe's)")
    ai.add_argument("--num-clips", type=int, default=256)
    ai.add_argument("--batch-size", type=int, default=64)
    ah.add_argument("--data", required=True, action="append", metavar="MANIFEST",
                    help="a few-shot dataset (repeatable: one table row each)")
    ah.add_argument("--split", default="test")
    ah.add_argument("--ways", type=int, default=5)
    ah.add_argument("--shots", type=int, default=1)
    ah.add_argument("--queries", type=int, default=15)
    ah.add_argument("--episodes", type=int, default=600)

    rp = sub.add_parser("reproduce", help="re-run a seed paper's comparison on the embedded corpus")
    rp.add_argument("paper", choices=["mtslvr", "multiview", "pretext", "audioconfit"],
                    help="mtslvr: the seven MT-SLVR variants x {SimCLR, SimSiam}, few-shot; "
                         "multiview: the five multi-view methods, tagging probes; pretext: "
                         "five pretext-task selections, PASE pretraining, speaker/word probes "
                         "and EER; audioconfit: PairTune vs fine-tuning on two backbones")
    rp.add_argument("--out", help="output folder (default: runs/reproduce_PAPER)")
    rp.add_argument("--quick", action="store_true",
                    help="CPU-sized recipes (about half an hour on 2 cores)")
    rp.add_argument("--data", help="pretraining manifest (default: generate the embedded corpus; "
                                   "multiview: the music corpus, also probed)")
    rp.add_argument("--eval-data", action="append", metavar="MANIFEST",
                    help="another few-shot dataset (its 'test' split; repeatable)")
    rp.add_argument("--families", nargs="+", default=["simclr", "simsiam"],
                    choices=["simclr", "simsiam"])
    rp.add_argument("--variants", nargs="+", help="mtslvr: a subset, e.g. cont_only mt_parallel")
    rp.add_argument("--methods", nargs="+",
                    help="multiview: a subset of contrastive byol clustering barlow_twins "
                         "vicreg; pretext: a subset of all mrmr rfe softmax sparsemax")
    rp.add_argument("--backbones", nargs="+", choices=["tympan", "wav2vec2-tiny"],
                    help="audioconfit: a subset of the backbones")
    rp.add_argument("--no-limited-data", action="store_true",
                    help="multiview: skip the 1/5/10/20%% training-set curves")
    rp.add_argument("--max-steps", type=int, help="override every recipe's pretraining steps")
    rp.add_argument("--episodes", type=int, default=600)
    rp.add_argument("--seed", type=int, default=0)
    rp.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    rp.set_defaults(func=cmd_reproduce)

    pt = sub.add_parser(
        "pretext", help="pretext-task labels, selection by conditional independence (HSIC)",
        description="Zaiem & Parcollet's pretext-task selection (seed 004): extract signal-feature "
                    "labels, estimate HSIC(X, Z | Y) per candidate for a labelled downstream task, "
                    "weight a group of candidates, check the estimate against downstream errors.",
    )
    ptsub = pt.add_subparsers(dest="pretext_command", required=True)
    pl = ptsub.add_parser("labels", help="per-frame and clip-mean pretext labels (openSMILE)")
    pl.add_argument("--data", required=True, help="manifest CSV or class-folder")
    pl.add_argument("--out", required=True, help="labels file (.npz)")
    pl.add_argument("--candidates", help="comma-separated subset (default: all registered)")
    pl.add_argument("--sample-rate", type=int, default=16000)
    pl.add_argument("--workers", type=int, help="processes (default: min(cpus, 8))")
    pl.add_argument("--cache-dir", help="per-file cache (default: OUT.cache/)")
    pl.add_argument("--skip-bad", action="store_true", help="skip unusable audio and report it")
    ps = ptsub.add_parser("select", help="rank and weight candidates for a downstream task")
    ps.add_argument("--data", required=True, help="labelled downstream manifest")
    ps.add_argument("--labels", required=True, help="file from 'tympan pretext labels'")
    ps.add_argument("--method", default="sparsemax",
                    choices=["sparsemax", "softmax", "mrmr", "rfe", "all"])
    ps.add_argument("--out", required=True, help="weights JSON (for pretrain --pretext-weights)")
    ps.add_argument("--split", help="downstream split to use (default: every clip)")
    ps.add_argument("--candidates", help="comma-separated subset")
    ps.add_argument("--max-per-class", type=int, default=300, help="0 keeps every clip")
    ps.add_argument("--p", type=int, default=4, help="labels kept by mrmr/rfe")
    ps.add_argument("--steps", type=int, default=300, help="gradient steps of softmax/sparsemax")
    ps.add_argument("--lr", type=float, default=0.05)
    ps.add_argument("--sigma", type=float, help="RBF width (default: median heuristic)")
    ps.add_argument("--skip-bad", action="store_true", help="skip unusable audio and report it")
    pv = ptsub.add_parser(
        "validate", help="rank correlation of the CI estimates with downstream errors",
        description="Spearman rho and Kendall tau between each candidate's CI estimate (from a "
                    "selection JSON) and its downstream error: given as a CSV (candidate,error), "
                    "or measured with --train (one short PASE pretraining per candidate, then a "
                    "linear probe on --data; error = 1 - accuracy).",
    )
    pv.add_argument("--ci", required=True, help="selection JSON from 'tympan pretext select'")
    pv.add_argument("--errors", help="CSV with columns candidate,error")
    pv.add_argument("--train", action="store_true", help="measure the errors by training")
    pv.add_argument("--data", help="--train: manifest with pretrain/train/val/test splits")
    pv.add_argument("--labels", help="--train: labels file (default: the selection's)")
    pv.add_argument("--max-steps", type=int, help="--train: pretraining steps per candidate")
    pv.add_argument("--out", help="validation JSON")
    pb = ptsub.add_parser("robustness", help="CI estimates on growing subsets, as boxplots")
    pb.add_argument("--data", required=True, help="labelled downstream manifest")
    pb.add_argument("--labels", required=True, help="file from 'tympan pretext labels'")
    pb.add_argument("--out", required=True, help="output folder (JSON, Markdown, PNG)")
    pb.add_argument("--split", help="downstream split to use (default: every clip)")
    pb.add_argument("--n-classes", type=int, nargs="+", help="class counts to draw")
    pb.add_argument("--per-class", type=int, nargs="+", help="clips per class to draw")
    pb.add_argument("--draws", type=int, default=10)
    pb.add_argument("--skip-bad", action="store_true", help="skip unusable audio and report it")
    for q in (pl, ps, pv, pb):
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
        q.set_defaults(func=cmd_pretext)

    ft = sub.add_parser(
        "finetune", help="PairTune (AudioConFit) or plain fine-tuning on labelled data",
        description="Adapt a pretrained encoder to a labelled task (seed 002). pairtune: "
                    "supervised contrastive fine-tuning with hard pair mining, then a linear "
                    "classifier on the frozen tuned encoder (grid over lr and batch size on the "
                    "val split); finetune: end-to-end cross-entropy. Mean ± std over seeds, or "
                    "over the folds of a 'fold' column.",
    )
    ft.add_argument("--method", required=True, choices=["pairtune", "finetune"])
    ft.add_argument("--backbone", required=True,
                    help="run directory, 'random' or hf:/path/to/local/model (wav2vec 2.0, "
                         "HuBERT, WavLM)")
    ft.add_argument("--data", required=True, help="manifest with train/val/test splits or folds")
    ft.add_argument("--out", required=True, help="run directory")
    ft.add_argument("--seeds", default="5", help="number of seeds, or a comma list (default: 5)")
    ft.add_argument("--folds", help="'all', 'none' or a comma list of test folds "
                                    "(default: all folds when the manifest has a fold column)")
    ft.add_argument("--epochs", type=int, default=40)
    ft.add_argument("--batch-size", type=int, default=32)
    ft.add_argument("--lr", type=float, default=5e-5, help="Adam learning rate (seed: 5e-5)")
    ft.add_argument("--m-per-class", type=int, help="clips per class in a batch (default: auto)")
    ft.add_argument("--temperature", type=float, default=0.1, help="SupCon temperature")
    ft.add_argument("--projection-dim", type=int, default=256)
    ft.add_argument("--clip-seconds", type=float, default=2.0, help="training crop length")
    ft.add_argument("--recipe", help="architecture of 'random' (default: simclr)")
    ft.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    ft.add_argument("--skip-bad", action="store_true", help="skip unreadable audio and report it")
    ft.add_argument("--resume", action="store_true", help="continue an interrupted run")
    ft.add_argument("--json", help="also write the results JSON here")
    ft.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    ft.set_defaults(func=cmd_finetune)

    rep = sub.add_parser(
        "report", help="self-contained report.html and MODEL_CARD.md of a run",
        description="Gather a run directory (pretrain, finetune, reproduce or demo --out) into "
                    "one offline HTML page (loss curves, collapse monitors, results with CIs, "
                    "analyses) and a model card; missing pieces are listed with the command "
                    "that makes them.",
    )
    rep.add_argument("run", help="run directory")
    rep.add_argument("--out", help="folder for report.html and MODEL_CARD.md (default: RUN)")
    rep.set_defaults(func=cmd_report)

    sh = sub.add_parser(
        "shard", help="decode a manifest once into WebDataset tar shards",
        description="Write shard-NNNNNN.tar files (16-bit FLAC + JSON metadata per clip, "
                    "resampled, shuffled before sharding) and shards.json. Pretrain on them with "
                    "--data DIR (or a URL pattern like https://host/shard-{000000..000031}.tar).",
    )
    sh.add_argument("--data", required=True, help="manifest CSV or class-folder")
    sh.add_argument("--out", required=True, help="folder for shard-NNNNNN.tar and shards.json")
    sh.add_argument("--shard-size", type=int, default=1000, help="most clips per shard")
    sh.add_argument("--shard-bytes", type=int, help="also start a new shard after about this "
                                                    "many bytes")
    sh.add_argument("--sample-rate", type=int, default=16000)
    sh.add_argument("--split", help="write only this split (default: every clip)")
    sh.add_argument("--format", choices=["flac", "npy"], default="flac",
                    help="flac: 16-bit lossless (default); npy: exact float32")
    sh.add_argument("--min-seconds", type=float, default=0.0, help="drop shorter clips")
    sh.add_argument("--seed", type=int, default=0, help="order of the clips across shards")
    sh.add_argument("--no-shuffle", action="store_true", help="keep manifest order")
    sh.add_argument("--skip-bad", action="store_true", help="skip unreadable audio and report it")
    sh.add_argument("--overwrite", action="store_true", help="replace an existing shard set")
    sh.add_argument("--workers", type=int, help="decoding threads")
    sh.add_argument("--json", help="also write the index JSON here")
    sh.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    sh.set_defaults(func=cmd_shard)

    d = sub.add_parser("demo", help="corpus -> SimCLR -> few-shot table (what `make demo` runs)")
    d.add_argument("--out", default="demo")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--max-steps", type=int, help="override the demo recipe's steps")
    d.add_argument("--episodes", type=int, default=600)
    d.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    retain_freed_memory()  # tympan.runtime: no page-fault churn between steps on the CPU
    try:
        return args.func(args)
    except TympanError as exc:
        print(f"tympan: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tympan: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
