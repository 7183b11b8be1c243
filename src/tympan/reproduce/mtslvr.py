"""``tympan reproduce mtslvr``: the seed's variant comparison on the embedded corpus.

MT-SLVR (``../shared/seeds/000_e1eab6133071efa6.txt``, "Main Experiments & Results") compares,
for SimCLR and for SimSiam as the contrastive objective, seven encoders pretrained on the same
data and scored by 5-way 1-shot accuracy with a linear readout:

* Cont Only / Pred Only: one task (contrastive or augmentation prediction) on a plain ResNet-18;
* MT-Simple: both tasks, everything shared;
* MT-Split: both tasks, only the final layer split between them;
* MT-BN / MT-Series / MT-Parallel: the split head plus per-task BatchNorm / series / parallel
  residual adapters.

Every variant is the same recipe with three fields changed (``model.adapter``,
``model.split_head`` and the task list), trained with the same seed on the same clips and scored
on the same episodes: the comparison runs through one code path. The seed's table has one column
per dataset and an average rank; here the datasets are the corpus's two class-disjoint held-out
splits (``test`` and ``val``) and any further manifests given with ``--eval-data``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import rankdata

from tympan.config import load_recipe
from tympan.data.corpora import ensure_corpus
from tympan.evaluation.features import resolve_model
from tympan.evaluation.fewshot import FewShotBench
from tympan.report.tables import format_parameters
from tympan.reproduce import write_results
from tympan.training.pretrain import pretrain_or_reuse

log = logging.getLogger("tympan")


@dataclass(frozen=True)
class Variant:
    """One row of the seed's table: which tasks, which adapters, split head or not."""

    name: str
    tasks: tuple[str, ...]
    adapter: str
    split_head: bool

    @property
    def slug(self) -> str:
        return self.name.lower().replace(" ", "_").replace("-", "_")


#: the seed's seven rows, in its order
VARIANTS: tuple[Variant, ...] = (
    Variant("Cont Only", ("contrastive",), "none", False),
    Variant("Pred Only", ("predictive",), "none", False),
    Variant("MT-Simple", ("contrastive", "predictive"), "none", False),
    Variant("MT-Split", ("contrastive", "predictive"), "none", True),
    Variant("MT-BN", ("contrastive", "predictive"), "bn", True),
    Variant("MT-Series", ("contrastive", "predictive"), "series", True),
    Variant("MT-Parallel", ("contrastive", "predictive"), "parallel", True),
)

#: contrastive objective -> (full recipe, --quick recipe)
FAMILIES: dict[str, tuple[str, str]] = {
    "simclr": ("mtslvr", "mtslvr_quick"),
    "simsiam": ("mtslvr_simsiam", "mtslvr_simsiam_quick"),
}

#: the seed's 5-way 1-shot average ranks (SimCLR, SimSiam tables), for the comparison in results.md
SEED_AVG_RANK: dict[str, dict[str, float]] = {
    "simclr": {"Cont Only": 3.9, "Pred Only": 7.0, "MT-Simple": 4.4, "MT-Split": 5.8,
               "MT-BN": 2.1, "MT-Series": 2.9, "MT-Parallel": 1.9},
    "simsiam": {"Cont Only": 5.0, "Pred Only": 7.0, "MT-Simple": 4.4, "MT-Split": 4.8,
                "MT-BN": 3.0, "MT-Series": 2.7, "MT-Parallel": 1.1},
}


def variant_overrides(recipe_name: str, variant: Variant) -> dict[str, Any]:
    """Recipe overrides that turn the family's MT-SLVR recipe into ``variant``.

    A single-task baseline keeps its task's entry with weight 1 (the loss is then that task's
    loss alone, not half of it).
    """
    base = load_recipe(recipe_name)
    tasks = [dataclasses.asdict(t) for t in base.tasks if t.name in variant.tasks]
    if len(tasks) == 1:
        tasks[0]["weight"] = 1.0
    return {
        "name": f"{base.name}_{variant.slug}",
        "model.adapter": variant.adapter,
        "model.split_head": variant.split_head,
        "tasks": tasks,
    }


def average_ranks(acc: dict[str, dict[str, float]]) -> dict[str, float]:
    """Mean over datasets of each model's rank (1 = best; ties share the mean rank)."""
    models = list(acc)
    datasets = list(next(iter(acc.values())))
    ranks = np.zeros((len(models), len(datasets)))
    for j, d in enumerate(datasets):
        ranks[:, j] = rankdata([-acc[m][d] for m in models], method="average")
    return {m: float(ranks[i].mean()) for i, m in enumerate(models)}


def _spearman(a: dict[str, float], b: dict[str, float]) -> float:
    keys = list(a)
    ra, rb = rankdata([a[k] for k in keys]), rankdata([b[k] for k in keys])
    return float(np.corrcoef(ra, rb)[0, 1])


def reproduce_mtslvr(
    out: str | Path,
    *,
    data: str | Path | None = None,
    eval_data: list[str | Path] | None = None,
    quick: bool = False,
    families: tuple[str, ...] = ("simclr", "simsiam"),
    variants: tuple[str, ...] | None = None,
    max_steps: int | None = None,
    overrides: dict[str, Any] | None = None,
    episodes: int = 600,
    queries: int = 15,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Pretrain every variant of every family, score them, write ``results.md``/``.json``.

    Re-running reuses finished runs and resumes interrupted ones, so the command can be stopped
    and started again. ``overrides`` (dotted keys, as ``--set``) apply to every variant.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    if data is None:
        data = ensure_corpus(out / "corpus", seed=seed, progress=progress)
    chosen = [v for v in VARIANTS if variants is None or v.name in variants or v.slug in variants]
    benches = {f"{Path(data).parent.name}/{s}": FewShotBench(data, s, progress=progress)
               for s in ("test", "val")}
    for extra in eval_data or []:
        benches[Path(extra).parent.name or str(extra)] = FewShotBench(
            extra, "test", progress=progress
        )

    rows: list[dict[str, Any]] = []
    for family in families:
        recipe_name = FAMILIES[family][1 if quick else 0]
        for v in chosen:
            run = out / family / v.slug
            changes = {**variant_overrides(recipe_name, v), **(overrides or {})}
            t0 = time.time()
            pretrain_or_reuse(recipe_name, data, run, label=f"{family} / {v.name}",
                              max_steps=max_steps, seed=seed, progress=progress,
                              overrides=changes)
            train_s = time.time() - t0
            encoder = resolve_model(run)
            scores: dict[str, dict[str, float]] = {}
            for dname, bench in benches.items():
                emb = bench.embed(encoder)
                res = bench.run(
                    f"{family}/{v.name}", emb, sample_rate=encoder.sample_rate, ways=5, shots=1,
                    queries=queries, episodes=episodes, seed=seed, C=encoder.recipe.fewshot.C,
                    max_iter=encoder.recipe.fewshot.readout_max_iter,
                )
                scores[dname] = {"accuracy": res.accuracy, "ci95": res.ci95}
            counts = encoder.parameter_counts()
            rows.append({
                "family": family, "variant": v.name, "run": str(run), "scores": scores,
                "parameters": counts, "pretrain_s": round(train_s, 1),
            })
            log.info("%s / %s: %s; %s", family, v.name,
                     ", ".join(f"{d} {s['accuracy']:.2f}±{s['ci95']:.2f}" for d, s in scores.items()),
                     format_parameters(counts))

    for family in families:
        fam = [r for r in rows if r["family"] == family]
        ranks = average_ranks({r["variant"]: {d: s["accuracy"] for d, s in r["scores"].items()}
                               for r in fam})
        for r in fam:
            r["avg_rank"] = ranks[r["variant"]]
    summary = {
        "seed": seed, "quick": quick, "episodes": episodes, "queries": queries,
        "datasets": list(benches), "rows": rows,
        "agreement": _agreement(rows, families),
        "wall_seconds": round(time.time() - started, 1),
    }
    return write_results(out, summary, format_results(summary))


def _agreement(rows: list[dict[str, Any]], families: tuple[str, ...]) -> dict[str, Any]:
    """How our ordering of the variants compares with the seed's average ranks."""
    out: dict[str, Any] = {}
    for family in families:
        ours = {r["variant"]: r["avg_rank"] for r in rows if r["family"] == family}
        seed = {k: SEED_AVG_RANK[family][k] for k in ours}
        if len(ours) < 3:
            continue
        best_ours = min(ours, key=ours.get)
        best_seed = min(seed, key=seed.get)
        adapters = [k for k in ("MT-BN", "MT-Series", "MT-Parallel") if k in ours]
        out[family] = {
            "spearman_with_seed": round(_spearman(ours, seed), 3),
            "best_ours": best_ours, "best_seed": best_seed,
            "adapter_variant_beats_cont_only": (
                bool(adapters) and "Cont Only" in ours
                and min(ours[a] for a in adapters) < ours["Cont Only"]
            ),
            "pred_only_last": "Pred Only" in ours and ours["Pred Only"] == max(ours.values()),
        }
    return out


def format_results(summary: dict[str, Any]) -> str:
    """The seed-style table per family, then how it compares with the seed."""
    datasets = summary["datasets"]
    lines = [
        "# MT-SLVR reproduction on the embedded corpus",
        "",
        f"5-way 1-shot accuracy (%) ± 95% CI over {summary['episodes']} episodes "
        f"({summary['queries']} queries per class, seed {summary['seed']}; the same episodes "
        f"for every model), linear readout on the frozen encoder's features (both heads "
        f"concatenated). Average rank over the datasets, 1 = best. "
        f"{'Quick (CPU-sized) recipes.' if summary['quick'] else 'Full recipes.'}",
        "",
    ]
    for family in dict.fromkeys(r["family"] for r in summary["rows"]):
        fam = [r for r in summary["rows"] if r["family"] == family]
        lines += [f"## {'SimCLR' if family == 'simclr' else 'SimSiam'}", "",
                  "| model | " + " | ".join(datasets) + " | avg rank | seed's avg rank "
                  "| params (M) | vs 2 networks |",
                  "|---|" + "---|" * (len(datasets) + 4)]
        for r in fam:
            cells = [f"{r['scores'][d]['accuracy']:.2f} ± {r['scores'][d]['ci95']:.2f}"
                     for d in datasets]
            p = r["parameters"]
            lines.append(
                f"| {r['variant']} | " + " | ".join(cells)
                + f" | {r['avg_rank']:.1f} | {SEED_AVG_RANK[family][r['variant']]:.1f} "
                f"| {p['total'] / 1e6:.3f} | {100 * p['total'] / (2 * p['single_network']):.0f}% |"
            )
        agree = summary["agreement"].get(family)
        if agree:
            lines += [
                "",
                f"Rank correlation (Spearman) of our average ranks with the seed's: "
                f"{agree['spearman_with_seed']:+.2f}. Best here: {agree['best_ours']}; best in "
                f"the seed: {agree['best_seed']}. An adapter variant "
                f"{'beats' if agree['adapter_variant_beats_cont_only'] else 'does not beat'} the "
                f"contrastive-only baseline; Pred Only "
                f"{'comes last, as in the seed' if agree['pred_only_last'] else 'does not come last (the seed has it last)'}.",
            ]
        lines.append("")
    lines.append(f"Wall time: {summary['wall_seconds']:.0f} s.")
    return "\n".join(lines) + "\n"
