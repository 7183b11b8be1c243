"""``tympan reproduce multiview``: the five multi-view methods on one backbone, one data path.

The multi-view tagging seed (``../shared/seeds/003_302de149e7ba2620.txt``, "2. Pretext tasks",
"3. Evaluation", Figure 1 and 2) pretrains one ResNet with attention pooling on same-track segment
pairs with contrastive learning, BYOL, DINO-style clustering, Barlow Twins and VICReg, then
probes the frozen, track-averaged embeddings on tagging tasks (macro ROC-AUC and mAP, bootstrap
mean ± std) with all of the training set and with 1/5/10/20% of it. The seed finds contrastive
learning first on every task, by a narrow margin, with clustering second.

Here every method is its packaged recipe (``multiview``, ``mv_byol``, ``mv_dino``,
``mv_barlow_twins``, ``mv_vicreg``) trained with the same seed on the same tracks of the embedded
music corpus (:func:`tympan.data.music.synth_music`), and scored by one
:class:`~tympan.evaluation.downstream.ProbeBench` (same tracks, probe settings, bootstrap draws
and limited-data subsets for every model). The untrained encoder of the same architecture is a
baseline through the same path. ``--quick`` shrinks the backbone, segments, head and schedule
(:data:`QUICK`) so that the whole comparison fits in half an hour on two CPU cores.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from tympan.config import Recipe, load_recipe
from tympan.data.corpora import ensure_corpus
from tympan.data.music import synth_music
from tympan.evaluation.downstream import ProbeBench
from tympan.evaluation.features import resolve_model
from tympan.report.plots import plot_limited_data
from tympan.report.tables import format_probe_table
from tympan.reproduce import recipe_with_steps, write_results
from tympan.training.pretrain import pretrain_or_reuse

log = logging.getLogger("tympan")

#: method name (as in the seed) -> packaged recipe
METHODS: dict[str, str] = {
    "contrastive": "multiview",
    "byol": "mv_byol",
    "clustering": "mv_dino",
    "barlow_twins": "mv_barlow_twins",
    "vicreg": "mv_vicreg",
}

#: the seed's ordering of the methods (Figure 1: contrastive first, clustering second)
SEED_ORDER = ("contrastive", "clustering", "barlow_twins", "vicreg", "byol")

#: CPU-sized changes for ``--quick`` (every method gets the same ones)
QUICK: dict[str, Any] = {
    "model.width": 16,
    "model.embed_dim": 256,
    "views.segment_seconds": 2.0,
    "views.min_gap": 2.0,
    "views.max_gap": 8.0,
    "fewshot.segment_seconds": 2.0,
    "train.batch_size": 32,
    "train.max_steps": 400,
    "train.warmup_steps": 40,
    "train.num_workers": 1,
    "train.checkpoint_every_n_steps": 100,
}
#: ``--quick`` head sizes (the seed's 1024 -> 2048 head scaled to the 256-d embedding)
QUICK_HEAD = {"hidden_dim": 256, "out_dim": 512, "pred_hidden_dim": 256}


def method_recipe(
    method: str, quick: bool, max_steps: int | None = None,
    overrides: dict[str, Any] | None = None,
) -> Recipe:
    """The resolved recipe of ``method``, CPU-sized with ``quick``, then ``overrides``
    (dotted keys, as ``--set``)."""
    name = METHODS[method]
    if not quick:
        return recipe_with_steps(name, max_steps, overrides)
    base = load_recipe(name, QUICK).to_dict()
    for task in base["tasks"]:
        task["head"].update({k: v for k, v in QUICK_HEAD.items() if k in task["head"]})
    base["name"] = f"{name}_quick"
    return recipe_with_steps(base, max_steps, overrides)


def reproduce_multiview(
    out: str | Path,
    *,
    data: str | Path | None = None,
    quick: bool = False,
    methods: tuple[str, ...] | None = None,
    max_steps: int | None = None,
    overrides: dict[str, Any] | None = None,
    limited: bool = True,
    draws: int = 4,
    seed: int = 0,
    progress: bool = True,
    probe_epochs: int | None = None,
) -> dict[str, Any]:
    """Pretrain every method, probe each (and the untrained baseline), write ``results.md``,
    ``results.json`` and ``limited_data.png``. Finished runs are reused and interrupted ones
    resumed, so the command can be stopped and started again. Pretraining reads the ``train``
    split only (labels unused), so the probes' test tracks are never seen in pretraining.
    ``probe_epochs`` overrides the probe's 25 epochs of 128 steps (tests use fewer)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    if data is None:
        data = ensure_corpus(out / "music", synth_music, seed=seed, progress=progress)
    chosen = list(methods or METHODS)
    bench = ProbeBench(data, "tagging", progress=progress)

    rows: list[dict[str, Any]] = []
    curves: dict[str, Any] = {}
    recipes = {m: method_recipe(m, quick, max_steps, overrides) for m in chosen}
    models = [("random init", "random", recipes[chosen[0]])] + [
        (m, str(out / m), recipes[m]) for m in chosen
    ]
    for name, spec, recipe in models:
        t0 = time.time()
        pre: dict[str, Any] = {}
        if spec != "random":
            run = Path(spec)
            pretrain_or_reuse(recipe, data, run, label=name, seed=seed, split="train",
                              progress=progress)
            pre = json.loads((run / "pretrain.json").read_text())
        train_s = time.time() - t0
        encoder = resolve_model(spec, recipe, seed=seed)
        t0 = time.time()
        res = bench.run(bench.embed(encoder), limited=limited, draws=draws, seed=seed,
                        **({"max_epochs": probe_epochs} if probe_epochs else {}))
        rows.append({
            "method": name, "run": spec, "recipe": recipe.name, "probe": res["probe"],
            "pretrain_s": round(train_s, 1), "probe_s": round(time.time() - t0, 1),
            "collapse": pre.get("collapse", {}),
        })
        if res["limited_data"] is not None:
            curves[name] = res["limited_data"]
        log.info("%s: %s", name, res["summary"])

    if curves:
        plot_limited_data(curves, out / "limited_data.png")
    summary = {
        "seed": seed, "quick": quick, "data": str(data), "rows": rows,
        "limited_data": curves, "ordering": _ordering(rows),
        "wall_seconds": round(time.time() - started, 1),
    }
    return write_results(out, summary, format_results(summary))


def _ordering(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Our ranking of the pretrained methods by ROC-AUC and mAP, against the seed's order."""
    trained = [r for r in rows if r["method"] in METHODS]
    out: dict[str, Any] = {"seed_order": [m for m in SEED_ORDER if m in METHODS]}
    for metric in ("roc_auc", "map"):
        ranked = sorted(trained, key=lambda r: -r["probe"]["metrics"][metric]["mean"])
        out[metric] = [r["method"] for r in ranked]
    if trained:
        out["contrastive_first"] = {m: out[m][0] == "contrastive" for m in ("roc_auc", "map")}
        best = max(trained, key=lambda r: r["probe"]["metrics"]["roc_auc"]["mean"])
        rnd = next((r for r in rows if r["method"] == "random init"), None)
        if rnd is not None:
            out["best_beats_random_roc_auc"] = bool(
                best["probe"]["metrics"]["roc_auc"]["mean"]
                - best["probe"]["metrics"]["roc_auc"]["std"]
                > rnd["probe"]["metrics"]["roc_auc"]["mean"]
                + rnd["probe"]["metrics"]["roc_auc"]["std"]
            )
    return out


def format_results(summary: dict[str, Any]) -> str:
    """The tagging table, the limited-data table, collapse warnings and the seed comparison."""
    rows = summary["rows"]
    table = format_probe_table({r["method"]: r["probe"] for r in rows})
    boot = rows[0]["probe"]["bootstrap"] if rows else {"draws": 50, "fraction": 0.5}
    lines = [
        "# Multi-view SSL reproduction on the embedded music corpus",
        "",
        f"Linear probe on frozen, track-averaged embeddings, best validation-loss epoch; test "
        f"macro ROC-AUC and mAP, bootstrap mean ± std over {boot['draws']} draws of "
        f"{boot['fraction']:.0%} of the test tracks without replacement (seed {summary['seed']}). "
        f"{'Quick (CPU-sized) recipes.' if summary['quick'] else 'Full recipes.'}",
        "",
        table,
        "",
    ]
    curves = summary.get("limited_data") or {}
    if curves:
        fracs = [f["fraction"] for f in next(iter(curves.values()))["fractions"]]
        lines += ["## Limited data (ROC-AUC, mean ± std over training subsets)", "",
                  "| model | " + " | ".join(f"{100 * f:g}%" for f in fracs) + " |",
                  "|---|" + "---|" * len(fracs)]
        for name, curve in curves.items():
            cells = []
            for f in curve["fractions"]:
                m, s = f["mean"]["roc_auc"], (f["std"] or {}).get("roc_auc")
                cells.append(f"{m:.3f}" + (f" ± {s:.3f}" if s is not None and np.isfinite(s) else ""))
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines += ["", "![limited data](limited_data.png)", ""]
    collapsed = [r for r in rows if r.get("collapse", {}).get("collapsed")]
    for r in collapsed:
        ev = r["collapse"]["events"][0]
        lines.append(f"Collapse warning, {r['method']}: {ev['metric']} = {ev['value']:.4g} at step "
                     f"{ev['step']} (threshold {ev['threshold']:.4g}).")
    order = summary["ordering"]
    if order.get("roc_auc"):
        lines += [
            "",
            f"Ranking by ROC-AUC: {' > '.join(order['roc_auc'])}; by mAP: "
            f"{' > '.join(order['map'])}. The seed's: {' > '.join(order['seed_order'])} "
            f"(contrastive first on every task). Contrastive first here: ROC-AUC "
            f"{'yes' if order['contrastive_first']['roc_auc'] else 'no'}, mAP "
            f"{'yes' if order['contrastive_first']['map'] else 'no'}.",
        ]
    lines += ["", f"Wall time: {summary['wall_seconds']:.0f} s."]
    return "\n".join(lines) + "\n"
