"""``MODEL_CARD.md``: what an encoder is, what it was trained on, how well it does, what it is
for and what it is not for, and how to load it safely.

Built from the same gathered run contents as the HTML report
(:func:`tympan.report.run.gather_run`), in the spirit of Mitchell et al., "Model Cards for
Model Reporting" (2019): model details, training data, training procedure, evaluation results
(each with its interval), intended use, limitations and loading. Where a file does not record
something (``pretrain.json`` does not name its manifest, seed or hardware), the card says
"not recorded" rather than guessing. Text read from the run is made inert for Markdown viewers
(``<``, ``>``, ``|`` and line breaks escaped).
"""

from __future__ import annotations

import datetime as _dt
import math
from pathlib import Path
from typing import Any

from tympan import __version__
from tympan.report.run import (
    RunContents,
    collapse_thresholds,
    gather_run,
    looks_synthetic,
    objective_origin,
    output_path,
    seed_label,
    write_atomic,
)
from tympan.report.tables import METRIC_TITLES

__all__ = ["MODEL_CARD_FILE", "render_model_card", "write_model_card"]

MODEL_CARD_FILE = "MODEL_CARD.md"
#: below this many steps a run is called short (the packaged full recipes train 1000+ steps)
SHORT_RUN_STEPS = 1000
#: ResNet-18's first-stage width; narrower encoders are CPU-sized
FULL_WIDTH = 64


def _batch_and_lr(t: Any, pj: dict[str, Any]) -> str:
    """The global batch and the learning rate the run applied (``train.lr_scaling``)."""
    env = pj.get("environment") or {}
    batch = env.get("effective_batch_size", t.batch_size)
    lr = env.get("lr", t.lr)
    text = f"batch {batch}"
    if batch != t.batch_size:
        text += f" ({t.batch_size} per process)"
    text += f", learning rate {lr:g}"
    if getattr(t, "lr_scaling", "none") != "none":
        text += f" ({t.lr_scaling} scaling of {t.lr:g})"
    return text


def _md(value: Any) -> str:
    """Text for a Markdown table cell or line: no raw HTML, no cell breaks, one line."""
    s = "" if value is None else str(value)
    s = s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return s.replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _num(v: Any, digits: int = 2) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:.{digits}f}" if math.isfinite(v) else "n/a"
    return _md(v)


def _pct(v: Any) -> str:
    return _num(100 * v) if isinstance(v, (int, float)) and not isinstance(v, bool) else "n/a"


def _table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(_md(h) for h in headers) + " |",
           "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(c if isinstance(c, _Cell) else _md(c) for c in row) + " |"
            for row in rows]
    return out


class _Cell(str):
    """A cell already made safe (numbers formatted here)."""


def _model_details(c: RunContents) -> list[str]:
    r = c.recipe
    lines = ["## Model details", ""]
    kind = {"pretrain": "a self-supervised audio encoder (tympan pretrain)",
            "finetune": "an audio encoder fine-tuned on labelled clips (tympan finetune)",
            "encoder": "an audio encoder (weights and recipe)",
            "results": "a folder of results (tympan reproduce / demo)"}[c.kind]
    lines.append(f"- **What it is:** {kind}, mapping mono waveforms `[B, T]` to one embedding per "
                 "clip `[B, D]` (every task's embedding concatenated).")
    if r is not None:
        m = r.model
        arch = f"{m.arch}, width {m.width}, adapters `{m.adapter}`"
        arch += ", split head" if m.split_head else ""
        arch += f", {m.pooling} pooling" + (f" to {m.embed_dim} dimensions" if m.embed_dim else "")
        lines.append(f"- **Architecture:** {_md(arch)}; log-mel front end ({r.frontend.n_mels} "
                     f"bands, n_fft {r.frontend.n_fft}, hop {r.frontend.hop_length}, "
                     f"{r.frontend.channels} channel(s)).")
    else:
        lines.append("- **Architecture:** not recorded (config.yaml is missing).")
    size = c.parameters_text(_num)
    if size is not None:
        lines.append(f"- **Parameters:** {_md(size)}.")
    else:
        lines.append("- **Parameters:** not recorded (no pretrain.json).")
    heads = ((c.pretrain or {}).get("parameters") or {}).get("heads")
    if isinstance(heads, int):
        lines.append(f"- **Training-only heads:** {heads:,} parameters (projectors/predictors, "
                     "not part of the saved encoder).")
    lines.append(f"- **Software:** tympan {__version__}.")
    if r is not None:
        who = "Pretraining tasks of the backbone" if c.kind == "finetune" else "Tasks and objectives"
        lines += ["", f"{who} (one adapter set and embedding per task):", ""]
        rows = []
        for t in r.tasks:
            desc, seed = objective_origin(t.objective)
            rows.append([t.name, t.objective, _Cell(f"{t.weight:g}"), desc, seed_label(seed)])
        lines += _table(["task", "objective", "weight", "what it is", "source document"], rows)
    f = c.finetune_result
    if f is not None:
        desc, seed = objective_origin(str(f.data.get("method")))
        lines += ["", f"Fine-tuning: **{_md(f.data.get('method'))}** of backbone "
                      f"`{_md(f.data.get('backbone'))}` — {_md(desc)}; {_md(seed_label(seed))}."]
    return lines


def _training_data(c: RunContents) -> list[str]:
    r = c.recipe
    pj = c.pretrain or {}
    lines = ["## Training data", ""]
    data = c.training_data
    result = c.finetune_result
    if result is not None:
        ft = result.data
        s = ft.get("settings") or {}
        lines += [
            f"- **Fine-tuning manifest:** `{_md(data)}` ({len(ft.get('classes') or [])} classes; "
            f"protocol {_md(ft.get('protocol'))}: {_md(ft.get('validation'))}).",
            f"- **Audio:** mono at {_md(s.get('sample_rate'))} Hz; {_md(s.get('clip_seconds'))} s "
            "training crops.",
            f"- **Backbone pretraining data:** not recorded here; see the backbone run "
            f"`{_md(ft.get('backbone'))}` and its own model card.",
        ]
        why = looks_synthetic(data, c.root)
        if why:
            lines.append(f"- **Synthetic:** {_md(why)}.")
        return lines
    if data:
        lines.append(f"- **Manifest:** `{_md(data)}`")
    else:
        lines.append("- **Manifest:** not recorded (this version of pretrain.json does not name "
                     "it); record it by hand before sharing the model.")
    record = pj.get("data")
    split = pj.get("split") or (record.get("split") if isinstance(record, dict) else None)
    if c.kind == "pretrain":
        lines.append("- **Split:** " + (_md(split) if split else
                     "not recorded (tympan pretrain uses the pretrain split when the manifest has "
                     "one, else every clip; labels are never read)"))
        if "clips" in pj:
            lines.append(f"- **Clips:** {_num(pj.get('clips'))} used, "
                         f"{_num(pj.get('n_skipped', len(pj.get('skipped') or [])))} skipped as unreadable.")
    if r is not None:
        lines.append(f"- **Audio:** mono, resampled to {r.audio.sample_rate} Hz; "
                     f"{r.audio.clip_seconds:g} s random crops.")
        if r.views.kind == "same_track":
            v = r.views
            lines.append(f"- **Views:** two {v.segment_seconds:g} s segments of one file, "
                         f"{v.min_gap:g}–{v.max_gap:g} s apart.")
        if r.augment.ops:
            lines.append(f"- **Augmentations:** {_md(', '.join(r.augment.ops))}.")
    why = looks_synthetic(data, c.root)
    if why:
        lines.append(f"- **Synthetic:** {_md(why)}.")
    if c.evaluation_data:
        lines.append(f"- **Evaluation data named by the results:** "
                     f"{_md(', '.join(c.evaluation_data))}.")
    return lines


def _procedure(c: RunContents) -> list[str]:
    r = c.recipe
    pj = c.pretrain or {}
    lines = ["## Training procedure", ""]
    if r is not None:
        t = r.train
        pre = "Backbone p" if c.kind == "finetune" else "P"
        lines += [
            f"- **{'Backbone r' if c.kind == 'finetune' else 'R'}ecipe:** `{_md(r.name)}` "
            f"(method `{_md(r.method)}`); the resolved recipe is `config.yaml` beside the weights.",
            f"- **{pre}retraining optimisation:** {_batch_and_lr(t, pj)}, weight decay "
            f"{t.weight_decay:g}, {t.warmup_steps} linear warm-up steps then cosine decay to 0 at "
            f"{t.max_steps} steps.",
        ]
        env = pj.get("environment") or {}
        precision = pj.get("precision") or env.get("precision") or (
            t.precision if t.precision != "auto" else "auto (bf16-mixed on CUDA, 32-true on the CPU)")
        lines.append(f"- **Precision:** {_md(precision)}.")
        hw = pj.get("hardware") or pj.get("device") or pj.get("accelerator")
        if not hw and env:
            hw = f"{env.get('devices', 1)} x {env.get('accelerator')} ({env.get('device_name')})"
        lines.append(f"- **Hardware:** {_md(hw) if hw else 'not recorded'} (recipe: accelerator "
                     f"`{_md(t.accelerator)}`, devices `{_md(t.devices)}`, nodes {t.num_nodes}).")
    if pj:
        lines.append(f"- **Steps trained:** {_num(pj.get('steps'))}; wall time "
                     f"{_num(pj.get('wall_seconds'), 1)} s.")
    seed = pj.get("seed", (pj.get("environment") or {}).get("seed"))
    if c.kind != "finetune":  # a fine-tuning run lists its seeds below
        lines.append(f"- **Seed:** {_md(seed) if seed is not None else 'not recorded'}.")
    f = c.finetune_result
    if f is not None:
        s = f.data.get("settings") or {}
        lines.append(f"- **Fine-tuning:** {_num(s.get('epochs'))} epochs, batch "
                     f"{_num(s.get('batch_size'))}, lr {_md(s.get('lr'))} ({_md(s.get('optimizer'))}, "
                     f"{_md(s.get('schedule'))}); seeds {_md(s.get('seeds'))}; protocol "
                     f"{_md(f.data.get('protocol'))}.")
    collapse = c.collapse
    if collapse:
        if c.collapsed:
            events = "; ".join(f"{_md(e.get('task'))} {_md(e.get('metric'))} = {_num(e.get('value'), 4)} "
                               f"at step {_md(e.get('step'))}" for e in collapse.get("events") or [])
            lines.append(f"- **Collapse monitor:** ⚠ flagged possible collapse ({events}).")
        else:
            last = ", ".join(f"{_md(k)} {_num(v, 4)}" for k, v in (collapse.get("last") or {}).items())
            lines.append(f"- **Collapse monitor:** nothing flagged (last values: {last or 'none'}).")
    return lines


def _results(c: RunContents) -> list[str]:
    lines = ["## Evaluation results", ""]
    if c.fewshot:
        lines += ["Few-shot classification (linear readout on frozen embeddings; accuracy %, "
                  "mean ± 95% CI half-width over episodes):", ""]
        rows = []
        for f in c.fewshot:
            d = f.data
            rows.append([d.get("model"), d.get("split") or "", d.get("task") or "all",
                         f"{d.get('ways')}-way {d.get('shots')}-shot", _Cell(_num(d.get("episodes"))),
                         _Cell(f"{_num(d.get('accuracy'))} ± {_num(d.get('ci95'))}"), f.path.as_posix()])
        lines += _table(["model", "split", "features", "setting", "episodes", "accuracy (%)", "file"], rows)
        lines.append("")
    if c.probes:
        lines += ["Probes on frozen embeddings (bootstrap mean ± std over test-set draws; "
                  "≈95% interval = mean ± 1.96 std):", ""]
        rows = []
        for f in c.probes:
            d, pr = f.data, f.data["probe"]
            for metric, v in (pr.get("metrics") or {}).items():
                mean, std = v.get("mean"), v.get("std")
                iv = (f"[{mean - 1.96 * std:.4f}, {mean + 1.96 * std:.4f}]"
                      if isinstance(mean, (int, float)) and isinstance(std, (int, float)) else "n/a")
                rows.append([d.get("data"), f"{pr.get('kind')} ({pr.get('task')})",
                             METRIC_TITLES.get(metric, metric),
                             _Cell(f"{_num(mean, 4)} ± {_num(std, 4)}"), iv, f.path.as_posix()])
        lines += _table(["data", "probe", "metric", "mean ± std", "≈95% interval", "file"], rows)
        lines.append("")
    if c.finetune:
        lines += ["Fine-tuning (test accuracy %, mean ± std over runs, and the 95% CI half-width):", ""]
        rows = []
        for f in c.finetune:
            a = f.data.get("test_accuracy") or {}
            rows.append([f.data.get("method"), f.data.get("protocol"), _Cell(_num(a.get("n"))),
                         _Cell(f"{_pct(a.get('mean'))} ± {_pct(a.get('std'))}"),
                         _Cell(_pct(a.get("ci95"))), f.path.as_posix()])
        lines += _table(["method", "protocol", "runs", "accuracy (%)", "± 95% CI", "file"], rows)
        lines.append("")
    if c.invariance:
        lines += ["Learnt invariance (mean Mahalanobis distance original → augmented, ± 95% CI "
                  "over clips; lower = more invariant):", ""]
        for f in c.invariance:
            d = f.data
            ops = list(d.get("ops") or [])
            rows = []
            for t, dist in (d.get("distances") or {}).items():
                ci = (d.get("ci95") or {}).get(t) or {}
                rows.append([t, *[_Cell(f"{_num(dist.get(o))} ± {_num(ci.get(o))}") for o in [*ops, "avg"]]])
            lines += _table(["head", *ops, "average"], rows)
            lines.append("")
    if c.head_weights:
        lines += ["Few-shot readout weight per head (mean |weight| ± 95% CI over episodes):", ""]
        for f in c.head_weights:
            ds = f.data.get("datasets") or {}
            tasks = list(dict.fromkeys(t for v in ds.values() for t in v.get("weights") or {}))
            rows = [[name, _Cell(f"{_num(v.get('accuracy'))} ± {_num(v.get('accuracy_ci95'))}"),
                     *[_Cell(f"{_num((v.get('weights') or {}).get(t), 4)} ± "
                             f"{_num((v.get('ci95') or {}).get(t), 4)}") for t in tasks]]
                    for name, v in ds.items()]
            lines += _table(["dataset", "accuracy (%)", *tasks], rows)
            lines.append("")
    for f in c.documents:
        lines.append(f"- Reproduction results: `{_md(f.path.as_posix())}` (see that file).")
    if not c.has_results:
        lines.append("**No evaluation results in this run.** Until there are, nothing is known "
                     "about how well these embeddings work.")
    missing = [a for a in c.absent() if a.piece in ("few-shot results", "probe results")]
    if missing:
        if lines[-1] != "":
            lines.append("")
        lines.append("Not evaluated here:")
        lines += [f"- {_md(a.piece)}: `{a.command}`" for a in missing if a.command]
    return lines


def _intended_use(c: RunContents) -> list[str]:
    return [
        "## Intended use",
        "",
        "- Research on self-supervised audio representations: a frozen feature extractor for "
        "few-shot classification, linear/MLP probes and embedding analyses, or the starting "
        "point of fine-tuning (`tympan finetune --backbone RUN`).",
        "- Comparing methods and recipes under the protocols tympan implements (few-shot "
        "episodes, probes with bootstrap intervals, invariance and geometry analyses).",
        "",
        "Not intended for: decisions about people (speaker identification, surveillance, "
        "health or emotion inference), safety-critical detection, or any deployment without an "
        "evaluation on the target data, which this card does not provide.",
    ]


def _limitations(c: RunContents) -> list[str]:
    r = c.recipe
    pj = c.pretrain or {}
    out: list[str] = []
    why = looks_synthetic(c.training_data, c.root)
    if why:
        out.append(f"**Trained on synthetic audio** ({_md(why)}): procedural tones, chirps, "
                   "noises and vowels, not recordings. Expect it to transfer poorly to real "
                   "sound; use it to test pipelines, not as a general-purpose audio encoder.")
    elif not c.training_data and c.kind != "results":
        out.append("The training data is not recorded in the run directory, so its domain, "
                   "licence and biases cannot be checked from this card.")
    synthetic_eval = [e for e in c.evaluation_data if looks_synthetic(e, c.root)]
    if synthetic_eval and not why:
        out.append(f"Evaluated on synthetic audio ({_md(', '.join(synthetic_eval))} is tympan's "
                   "embedded procedural corpus): the scores say little about real recordings.")
    steps = pj.get("steps")
    if isinstance(steps, int) and steps < SHORT_RUN_STEPS:
        out.append(f"Short training: {steps} steps (the packaged full recipes train "
                   f"{SHORT_RUN_STEPS}+); the representation is far from converged.")
    if r is not None and r.model.width < FULL_WIDTH:
        out.append(f"CPU-sized encoder: width {r.model.width} instead of ResNet-18's {FULL_WIDTH}; "
                   "scores are not comparable with the seed papers' models.")
    if c.collapsed:
        out.append("The collapse monitor flagged possible collapse during training: the "
                   "embeddings may be near-constant or low-rank in at least one task.")
    result = c.finetune_result
    ft = (result.data.get("settings") or {}) if result is not None else None
    if ft is not None and ft.get("sample_rate") and ft.get("clip_seconds"):
        sr, crop = ft["sample_rate"], ft["clip_seconds"]
    elif r is not None:
        sr, crop = r.audio.sample_rate, r.audio.clip_seconds
    else:
        sr = crop = None
    if sr is not None:
        out.append(f"Expects mono audio at {_md(sr)} Hz (resample first); it was trained on "
                   f"{crop:g} s crops, so much longer clips are best embedded in segments "
                   "(tympan's evaluation does this).")
    evals = set(c.evaluation_data)
    if c.training_data and any(Path(e) == Path(c.training_data) for e in evals):
        out.append("Evaluated on the same manifest it was pretrained on (other splits or "
                   "classes, but the same recording conditions): in-domain numbers.")
    small = [f for f in c.fewshot if isinstance(f.data.get("episodes"), int) and f.data["episodes"] < 600]
    if small:
        counts = ", ".join(str(f.data["episodes"]) for f in small)
        out.append(f"Few-shot results use fewer than 600 episodes ({counts}); their confidence "
                   "intervals are wide.")
    if not c.has_results:
        out.append("No evaluation results: its usefulness is unmeasured.")
    out.append("One training seed: run-to-run variation is not measured by this run.")
    return ["## Limitations", ""] + [f"- {x}" for x in out]


def _loading(c: RunContents) -> list[str]:
    run = str(c.root)
    lines = ["## How to load it safely", ""]
    if (c.root / "encoder.safetensors").is_file():
        lines += [
            "The weights are `encoder.safetensors` (tensors only, read with safetensors: nothing "
            "is unpickled) and the architecture is rebuilt from `config.yaml`:",
            "",
            "```python",
            "from tympan import hear",
            "",
            "# HEAR API: audio [n, samples], mono at model.sample_rate",
            f"model = hear.load_model({run!r})",
            "scene = hear.get_scene_embeddings(audio, model)  # [n, model.scene_embedding_size]",
            "",
            "# or the encoder itself: waveforms [B, T] -> embeddings [B, D]",
            "from tympan.api import load_encoder",
            f"encoder = load_encoder({run!r}).eval()",
            "```",
            "",
            "`checkpoints/*.ckpt` are Lightning checkpoints for `--resume`: they are pickles, so "
            "load them only from a source you trust. Using the model never needs them.",
        ]
    else:
        lines.append("This folder has no `encoder.safetensors`; there is no model to load here.")
    return lines


def render_model_card(c: RunContents, *, generated: str | None = None) -> str:
    """The Markdown text of the model card of gathered run contents ``c``."""
    when = generated or _dt.datetime.now().astimezone().strftime("%Y-%m-%d")
    title = f"# Model card: {_md(c.name)}"
    if c.kind == "results":  # a reproduce/demo folder: many models, each with its own card
        lines = [title, "",
                 f"`{_md(str(c.root))}` holds the results of several runs (tympan reproduce or "
                 "demo), not one model. Each run inside has its own model card:", ""]
        lines += [f"- `{_md(s.as_posix())}`: `tympan report {_md(str(c.root / s))}`" for s in c.subruns]
        lines += ["", "Results: " + ", ".join(f"`{_md(f.path.as_posix())}`" for f in c.documents)
                  if c.documents else "No results file was found."]
        return "\n".join(lines).rstrip() + "\n"
    parts = [
        [title, "",
         f"Generated by `tympan report` (tympan {__version__}) on {when} from `{_md(str(c.root))}`. "
         "Numbers come from the run's own files; \"not recorded\" means no file says."],
        _model_details(c), _training_data(c), _procedure(c), _results(c), _intended_use(c),
        _limitations(c), _loading(c),
    ]
    th = collapse_thresholds()
    if c.collapse:
        parts.append(["## Notes", "",
                      f"Collapse thresholds: embed_std < {th['std_ratio']:g}/√D, effective rank < "
                      f"{th['min_rank']:g}, prototype usage < {th['min_usage']:g}."])
    return "\n\n".join("\n".join(p) for p in parts).rstrip() + "\n"


def write_model_card(run: str | Path, out: str | Path | None = None) -> Path:
    """Write ``MODEL_CARD.md`` for run directory ``run`` to ``out`` (default
    ``RUN/MODEL_CARD.md``; a folder gets ``MODEL_CARD.md`` inside) and return its path.

    Raises:
        TympanError: ``run`` is not a run directory, or ``out`` cannot be written.
    """
    contents = gather_run(run)
    return write_atomic(output_path(Path(run), out, MODEL_CARD_FILE), render_model_card(contents))
