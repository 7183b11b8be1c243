"""``tympan reproduce audioconfit``: PairTune against plain fine-tuning, two backbones.

AudioConFit (``../shared/seeds/002_5040cf44179b95f4.txt``, sections 3.1-3.4): a pretrained audio
encoder is adapted to a labelled task either end to end with cross-entropy (FINETUNE) or by
supervised contrastive pairs with hard pair mining followed by a linear classifier on the frozen
tuned encoder (PAIRTUNE); the seed reports PAIRTUNE ahead of FINETUNE on ESC-50 and the other
sound-classification sets for every backbone, with more isotropic representations (higher
anisotropy values of the mean pairwise cosine are *lower* isotropy; see section 3.4) and
faster convergence.

Here, on the embedded corpus (:func:`tympan.data.corpora.synth_corpus`), the labelled clips of
the corpus's ``val`` and ``test`` classes (never heard in pretraining) are split within each class
into train/val/test (60/20/20, seeded) and into five folds (ESC-50-style), and both methods run
through :func:`tympan.finetune.finetune` with two backbones:

* ``tympan``: the SimCLR ``demo`` recipe pretrained on the corpus's ``pretrain`` pool;
* ``wav2vec2-tiny``: a *randomly initialised* tiny wav2vec 2.0 configuration saved to a local
  folder (:func:`tympan.models.hf.write_random_hf_model`): nothing can be downloaded here, so it
  exercises the Hugging Face path, not a pretrained model's quality.

``--quick`` uses five seeds over the split column, fewer epochs and a shorter pretraining
(:data:`QUICK`); the full setting uses the five folds and the seed's 40 epochs. The geometry
analyses (anisotropy, dimensional contribution, UMAP of the most-confused classes, convergence
curves) of the ``tympan`` backbone's two runs land in ``analysis/``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from tympan.analysis.geometry import analyze_geometry
from tympan.data.corpora import ensure_corpus, synth_corpus
from tympan.data.manifest import Item, read_manifest, write_manifest
from tympan.errors import TympanError
from tympan.finetune import finetune
from tympan.models.hf import write_random_hf_model
from tympan.reproduce import recipe_with_steps, write_results
from tympan.training.pretrain import pretrain_or_reuse

log = logging.getLogger("tympan")

METHODS = ("finetune", "pairtune")
BACKBONES = ("tympan", "wav2vec2-tiny")

#: CPU-sized settings of ``--quick`` (and of the full run)
QUICK: dict[str, Any] = {"pretrain_steps": 500, "epochs": 12, "seeds": 5, "folds": False,
                         "linear_epochs": 60, "clip_seconds": 1.5}
FULL: dict[str, Any] = {"pretrain_steps": None, "epochs": 40, "seeds": 5, "folds": True,
                        "linear_epochs": 100, "clip_seconds": 2.0}


def classification_manifest(
    data: str | Path, out: str | Path, *, splits: tuple[str, ...] = ("val", "test"),
    folds: int = 5, seed: int = 0,
) -> Path:
    """A sound-classification manifest from the embedded corpus's labelled ``splits`` (classes
    unseen in pretraining): within each class, a seeded 60/20/20 train/val/test ``split`` and
    ``folds`` folds of (nearly) equal size, as ESC-50's five folds."""
    manifest = read_manifest(data)
    items = [it for it in manifest.items if it.split in splits]
    if not items:
        raise TympanError(f"{data}: no clips in split(s) {', '.join(splits)}")
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[Item]] = {}
    for it in items:
        by_class.setdefault(it.label, []).append(it)
    rows: list[Item] = []
    for label in sorted(by_class):
        group = by_class[label]
        if len(group) < max(5, folds):
            raise TympanError(f"{data}: class {label} has {len(group)} clips; need >= {max(5, folds)}")
        order = rng.permutation(len(group))
        n = len(group)
        n_test, n_val = max(1, round(0.2 * n)), max(1, round(0.2 * n))
        for rank, k in enumerate(order):
            split = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
            it = group[k]
            rows.append(Item(it.path, it.labels, split, it.track, rank % folds + 1))
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_manifest(rows, path)
    return path


def reproduce_audioconfit(
    out: str | Path,
    *,
    data: str | Path | None = None,
    quick: bool = False,
    backbones: tuple[str, ...] | None = None,
    epochs: int | None = None,
    seeds: int | None = None,
    pretrain_steps: int | None = None,
    overrides: dict[str, Any] | None = None,
    seed: int = 0,
    progress: bool = True,
    finetune_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run both methods on every backbone (module docstring) into ``out`` and write
    ``results.md``/``results.json`` and ``analysis/``. Finished runs are reused, interrupted
    ones resumed. ``finetune_kwargs`` go to every :func:`~tympan.finetune.finetune` call (tests
    use them to shrink the grid)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    settings = dict(QUICK if quick else FULL)
    if epochs:
        settings["epochs"] = epochs
    if seeds:
        settings["seeds"] = seeds
    if pretrain_steps:
        settings["pretrain_steps"] = pretrain_steps
    chosen = list(backbones or BACKBONES)
    bad = [b for b in chosen if b not in BACKBONES]
    if bad:
        raise TympanError(f"backbones: unknown '{bad[0]}'; choose from {', '.join(BACKBONES)}")
    if data is None:
        data = ensure_corpus(out / "corpus", synth_corpus, seed=seed, progress=progress)
    labelled = classification_manifest(data, out / "classification.csv", seed=seed)

    specs: dict[str, str] = {}
    pretrain_s = 0.0
    if "tympan" in chosen:
        t0 = time.time()
        recipe = recipe_with_steps("demo", settings["pretrain_steps"], overrides)
        pretrain_or_reuse(recipe, data, out / "pretrained", label="tympan backbone", seed=seed,
                          split="pretrain", progress=progress)
        specs["tympan"] = str(out / "pretrained")
        pretrain_s = time.time() - t0
    if "wav2vec2-tiny" in chosen:
        folder = out / "wav2vec2_tiny"
        if not (folder / "config.json").is_file():
            write_random_hf_model("wav2vec2", folder, seed=seed)
        specs["wav2vec2-tiny"] = f"hf:{folder}"

    kwargs = {
        "seeds": list(range(seed, seed + settings["seeds"])), "folds": settings["folds"],
        "epochs": settings["epochs"], "linear_epochs": settings["linear_epochs"],
        "clip_seconds": settings["clip_seconds"], "progress": progress,
        **(finetune_kwargs or {}),
    }
    rows: list[dict[str, Any]] = []
    for backbone, spec in specs.items():
        for method in METHODS:
            run = out / "runs" / f"{backbone}_{method}"
            t0 = time.time()
            if (run / "results.json").is_file():
                res_json = json.loads((run / "results.json").read_text())
            else:
                res = finetune(method, spec, labelled, run,
                               resume=(run / "checkpoints").is_dir(), **kwargs)
                res_json = res.to_json()
            rows.append({
                "backbone": backbone, "method": method, "run": str(run),
                "mean": res_json["test_accuracy"]["mean"],
                "std": res_json["test_accuracy"]["std"],
                "protocol": res_json["protocol"],
                "accuracies": res_json["test_accuracy"]["values"],
                "seconds": round(time.time() - t0, 1),
            })
            log.info("%s %s: %.3f ± %s", backbone, method, rows[-1]["mean"], rows[-1]["std"])

    geometry: dict[str, Any] = {}
    first = next(iter(specs), None)
    if first is not None:
        pt, ft = out / "runs" / f"{first}_pairtune", out / "runs" / f"{first}_finetune"
        record = analyze_geometry(pt, compare=[str(ft)], out=out / "analysis", seed=seed)
        geometry = {"backbone": first, "markdown": record["markdown"],
                    "files": record["files"]}

    summary = {
        "seed": seed, "quick": quick, "data": str(data), "classification": str(labelled),
        "settings": settings, "rows": rows, "geometry": geometry,
        "pretrain_seconds": round(pretrain_s, 1),
        "wall_seconds": round(time.time() - started, 1),
    }
    summary["pairtune_wins"] = {
        b: _wins(rows, b) for b in specs
    }
    return write_results(out, summary, format_results(summary))


def _wins(rows: list[dict[str, Any]], backbone: str) -> bool | None:
    got = {r["method"]: r["mean"] for r in rows if r["backbone"] == backbone}
    if set(got) != set(METHODS):
        return None
    return bool(got["pairtune"] > got["finetune"])


def format_results(summary: dict[str, Any]) -> str:
    """The seed-style table (test accuracy, mean ± std over seeds or folds), the geometry and
    the comparison with the seed."""
    s = summary["settings"]
    proto = "five folds" if s["folds"] else f"{s['seeds']} seeds"
    lines = [
        "# AudioConFit reproduction on the embedded corpus",
        "",
        f"Test accuracy (%), mean ± std over {proto}; {s['epochs']} epochs of Adam at 5e-5; "
        f"classes unseen in pretraining (the corpus's val and test classes). "
        f"{'Quick (CPU-sized) settings.' if summary['quick'] else 'Full settings.'}",
        "",
        "| backbone | FINETUNE | PAIRTUNE |",
        "|---|---|---|",
    ]
    by = {(r["backbone"], r["method"]): r for r in summary["rows"]}
    for b in dict.fromkeys(r["backbone"] for r in summary["rows"]):
        cells = []
        for m in METHODS:
            r = by.get((b, m))
            if r is None:
                cells.append("-")
                continue
            std = "" if r["std"] is None else f" ± {100 * r['std']:.1f}"
            cells.append(f"{100 * r['mean']:.1f}{std}")
        lines.append(f"| {b} | " + " | ".join(cells) + " |")
    geo = summary.get("geometry") or {}
    if geo:
        lines += ["", f"## Geometry of the {geo['backbone']} backbone's test embeddings", "",
                  geo["markdown"].strip(), ""]
        files = geo.get("files", {})
        for key, title in (("umap", "UMAP of the most-confused classes"),
                           ("convergence_png", "validation accuracy per epoch")):
            if key in files:
                lines.append(f"![{title}](analysis/{Path(files[key]).name})")
    wins = summary.get("pairtune_wins") or {}
    verdict = ", ".join(f"{b}: {'yes' if w else 'no' if w is not None else 'n/a'}"
                        for b, w in wins.items())
    lines += [
        "",
        f"PAIRTUNE ahead of FINETUNE (mean): {verdict}. The seed reports PAIRTUNE ahead for every "
        f"backbone. The wav2vec 2.0 backbone here is a random tiny configuration (no download "
        f"is possible), so its row tests the code path, not the seed's claim.",
        "",
        f"Backbone pretraining: {summary['pretrain_seconds']:.0f} s. Wall time: "
        f"{summary['wall_seconds']:.0f} s.",
    ]
    return "\n".join(lines) + "\n"
