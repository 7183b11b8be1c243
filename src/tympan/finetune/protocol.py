"""``finetune``: PairTune (AudioConFit) or plain FINETUNE over seeds or cross-validation folds.

``../shared/seeds/002_5040cf44179b95f4.txt``: AudioConFit = stage 1 PairTune
(:mod:`tympan.finetune.pairtune`) + stage 2 linear classifier on the frozen tuned encoder with a
learning-rate/batch-size grid (:mod:`tympan.finetune.linear`); the baseline FINETUNE trains a
linear classifier end to end with nothing frozen (§3.2 "Baseline"). Both run through the same
data, batches, optimiser, schedule and evaluation here.

Protocols (§3.3, Table 2: "average accuracy of 5 trial runs with different random seeds" and
"average accuracy over 5 cross-validation folds"), reported as mean ± standard deviation:

* **seeds** (default without a ``fold`` column): the manifest's ``split`` column gives
  ``train``, ``val`` (also spelled ``valid``/``validation``) and ``test``; one run per seed
  (``seeds=5``: seeds 0-4), each from a fresh copy of the pretrained backbone.
* **folds** (default when every row has a ``fold``, ESC-50 style): for each fold ``k`` (in
  sorted order), test on ``k``; the **validation fold is the next fold cyclically** (fold 1 ->
  2, ..., 5 -> 1) and training uses the remaining folds. A whole fold, not a random slice of the
  training folds, so that clips cut from one recording (which ESC-50 keeps inside one fold)
  never sit on both sides of the train/validation boundary; it costs one fold of training data.
  Every fold is trained with the first seed of ``seeds``. Needs at least 3 folds.

The validation split selects stage 1's epoch (best validation accuracy) and the linear stage's
grid point; the test split is touched once per run, at the end.

Written into ``out``:

* ``results.json``: settings, classes, parameter counts (the encoder before and after tuning:
  identical, since ``f_p`` is discarded), every run (test accuracy, best epoch, validation
  curve, the linear stage's chosen lr/batch size and grid) and the aggregate mean ± std;
* ``convergence.csv``: ``method,seed,fold,epoch,val_accuracy``, one row per stage-1 epoch of each
  run (PairTune: nearest-centroid accuracy of the tuned embeddings; FINETUNE: its classifier);
* ``embeddings_test.npz`` (``embeddings [N, D]``, ``paths``, ``labels``, ``predictions``) and
  ``confusion.json`` (``classes``, ``matrix`` rows = true, columns = predicted) of the **first**
  run's tuned encoder on its test split, for :mod:`tympan.analysis.geometry`;
* the first run's tuned encoder: ``config.yaml`` + ``encoder.safetensors`` (``out`` is then a
  loadable run directory) for tympan backbones, ``hf_model/`` for Hugging Face ones;
* ``results.md``: the human table; ``runs/<run>.json``: each finished run (``resume=True``
  skips them); ``checkpoints/<run>.pt``: the running run's last epoch (resumed from, then
  deleted when the run ends).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import confusion_matrix
from tqdm.auto import tqdm

from tympan.config import Recipe
from tympan.data.manifest import Item, Manifest, read_manifest
from tympan.data.scan import scan_items
from tympan.errors import ConfigError, ManifestError, TympanError
from tympan.evaluation.features import pick_device
from tympan.evaluation.metrics import mean_ci95
from tympan.finetune.backbones import Backbone, load_backbone
from tympan.finetune.linear import (
    DEFAULT_BATCH_SIZES,
    DEFAULT_LRS,
    check_grid,
    embed_frozen,
    fit_linear_grid,
)
from tympan.finetune.pairtune import METHODS, TuneConfig, tune_encoder

__all__ = ["FinetuneResult", "RunResult", "RunSpec", "finetune", "plan_runs"]

log = logging.getLogger("tympan")

VAL_SPLITS: tuple[str, ...] = ("val", "valid", "validation")
RESULTS_FILE = "results.json"
CONVERGENCE_FILE = "convergence.csv"
EMBEDDINGS_FILE = "embeddings_test.npz"
CONFUSION_FILE = "confusion.json"
TABLE_FILE = "results.md"
RUNS_DIR = "runs"
CHECKPOINT_DIR = "checkpoints"
SETTINGS_FILE = "settings.json"


@dataclass
class RunSpec:
    """One training run: its name, seed, held-out fold (``None`` under seeds) and clips."""

    name: str
    seed: int
    fold: int | None
    train: list[Item]
    val: list[Item]
    test: list[Item]
    val_fold: int | None = None
    train_folds: list[int] = field(default_factory=list)


@dataclass
class RunResult:
    """The outcome of one run (JSON-ready)."""

    name: str
    seed: int
    fold: int | None
    test_accuracy: float
    val_accuracy: float
    best_epoch: int
    m_per_class: int
    n_train: int
    n_val: int
    n_test: int
    history: list[dict[str, float]]
    val_fold: int | None = None
    train_folds: list[int] = field(default_factory=list)
    #: PairTune only: the chosen lr / batch size, its validation accuracy and the whole grid
    linear: dict[str, Any] | None = None
    parameters: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FinetuneResult:
    """What :func:`finetune` returns; ``to_json()`` is ``results.json``."""

    out: Path
    method: str
    backbone: str
    protocol: str
    runs: list[RunResult]
    classes: list[str]
    settings: dict[str, Any]
    parameters: dict[str, Any]
    validation: str

    @property
    def accuracies(self) -> list[float]:
        return [r.test_accuracy for r in self.runs]

    @property
    def mean(self) -> float:
        return float(np.mean(self.accuracies))

    @property
    def std(self) -> float | None:
        """Sample standard deviation (``ddof=1``) over runs; ``None`` for a single run."""
        return float(np.std(self.accuracies, ddof=1)) if len(self.runs) > 1 else None

    def to_json(self) -> dict[str, Any]:
        _, half = mean_ci95(self.accuracies)
        return {
            "method": self.method,
            "backbone": self.backbone,
            "protocol": self.protocol,
            "validation": self.validation,
            "classes": self.classes,
            "settings": self.settings,
            "parameters": self.parameters,
            "test_accuracy": {
                "mean": self.mean, "std": self.std, "std_ddof": 1,
                "ci95": None if math.isnan(half) else half, "n": len(self.runs),
                "values": self.accuracies,
            },
            "val_accuracy_mean": float(np.mean([r.val_accuracy for r in self.runs])),
            "runs": [r.to_json() for r in self.runs],
            "files": {
                "convergence": CONVERGENCE_FILE, "embeddings": EMBEDDINGS_FILE,
                "confusion": CONFUSION_FILE, "table": TABLE_FILE,
            },
        }


# --------------------------------------------------------------------------------------------
# planning


def _seed_list(seeds: int | Sequence[int]) -> list[int]:
    if isinstance(seeds, bool):
        raise ConfigError(f"seeds={seeds!r}: give a number of seeds (e.g. 5) or a list of seeds")
    if isinstance(seeds, int):
        if seeds < 1:
            raise ConfigError(f"seeds={seeds}: use at least 1 (the seed uses 5)")
        return list(range(seeds))
    out = list(seeds)
    if not out or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in out):
        raise ConfigError(f"seeds={seeds!r}: give non-negative integer seeds")
    if len(set(out)) != len(out):
        raise ConfigError(f"seeds={seeds!r}: a seed is repeated; runs with one seed are identical")
    return out


def plan_runs(
    manifest: Manifest, *, seeds: int | Sequence[int] = 5, folds: bool | Sequence[int] | None = None
) -> tuple[str, list[RunSpec], str]:
    """Split ``manifest`` into runs (module docstring). Returns ``(protocol, runs, how the
    validation split is chosen)``.

    ``folds``: ``None`` (auto: folds when every row has a ``fold``), ``True`` (folds, all of
    them), ``False`` (seeds over the ``split`` column), or the test folds to run.
    """
    seed_list = _seed_list(seeds)
    items = list(manifest.items)
    has_folds = all(it.fold is not None for it in items)
    use_folds = has_folds if folds is None else folds is not False
    if use_folds:
        if not has_folds:
            missing = sum(it.fold is None for it in items)
            raise ManifestError(
                f"{manifest.source}: cross-validation needs a 'fold' on every row ({missing} row(s) "
                "have none); fill the column or run with seeds over the split column"
            )
        all_folds = sorted({int(it.fold) for it in items})  # type: ignore[arg-type]
        if len(all_folds) < 3:
            raise ManifestError(
                f"{manifest.source}: column 'fold' has {len(all_folds)} fold(s) ({all_folds}); "
                "cross-validation needs at least 3 (test, validation, training)"
            )
        chosen = all_folds if folds is None or folds is True else [int(f) for f in folds]  # type: ignore[union-attr]
        unknown = [f for f in chosen if f not in all_folds]
        if unknown:
            raise ConfigError(f"folds={list(chosen)}: fold {unknown[0]} is not in the manifest's folds {all_folds}")
        runs = []
        for f in chosen:
            val_fold = all_folds[(all_folds.index(f) + 1) % len(all_folds)]
            train_folds = [k for k in all_folds if k not in (f, val_fold)]
            runs.append(RunSpec(
                name=f"fold{f}", seed=seed_list[0], fold=f,
                train=[it for it in items if it.fold in train_folds],
                val=[it for it in items if it.fold == val_fold],
                test=[it for it in items if it.fold == f],
                val_fold=val_fold, train_folds=train_folds,
            ))
        how = ("folds: test on each fold; validation = the next fold cyclically (whole fold, so "
               "clips of one recording never straddle train/validation); train = the other folds")
        return "folds", runs, how

    splits = manifest.splits
    if not splits:
        raise ManifestError(
            f"{manifest.source}: has no 'split' column and no 'fold' column; add a split column "
            "with train/val/test values (or a fold column for cross-validation)"
        )
    val_name = next((s for s in VAL_SPLITS if s in splits), None)
    for needed, name in (("train", "train" if "train" in splits else None), ("val", val_name),
                         ("test", "test" if "test" in splits else None)):
        if name is None:
            raise ManifestError(
                f"{manifest.source}: column 'split' has no '{needed}' rows (it has: "
                f"{', '.join(splits)}); fine-tuning needs train, val and test splits"
            )
    train, val, test = (manifest.select(s).items for s in ("train", val_name, "test"))
    runs = [RunSpec(name=f"seed{s}", seed=s, fold=None, train=train, val=val, test=test) for s in seed_list]
    how = f"seeds: the manifest's split column (train / {val_name} / test)"
    return "seeds", runs, how


# --------------------------------------------------------------------------------------------
# helpers


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _write_json(path: Path, data: Any) -> None:
    _write_atomic(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, (Path, np.ndarray)):
        return str(value) if isinstance(value, Path) else value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _state_shapes(module: torch.nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in module.state_dict().items()}


def _convergence_csv(method: str, runs: Sequence[RunResult]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["method", "seed", "fold", "epoch", "val_accuracy"])
    for r in runs:
        for h in r.history:
            w.writerow([method, r.seed, "" if r.fold is None else r.fold, int(h["epoch"]),
                        f"{h['val_accuracy']:.6f}"])
    return buf.getvalue()


def _table(result: FinetuneResult) -> str:
    fmt = lambda v: "" if v is None else f"{100 * v:.2f}"  # noqa: E731
    lines = [
        f"# {result.method} on {result.backbone}",
        "",
        f"Protocol: {result.protocol} ({result.validation}).",
        "",
        "| run | seed | fold | test acc (%) | val acc (%) | best epoch | linear lr | linear batch |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result.runs:
        lin = r.linear or {}
        lines.append(
            f"| {r.name} | {r.seed} | {'' if r.fold is None else r.fold} | {fmt(r.test_accuracy)} | "
            f"{fmt(r.val_accuracy)} | {r.best_epoch} | {lin.get('lr', '')} | {lin.get('batch_size', '')} |"
        )
    std = result.std
    lines += [
        "",
        f"**Test accuracy: {100 * result.mean:.2f} ± {'n/a' if std is None else f'{100 * std:.2f}'} %** "
        f"(mean ± std over {len(result.runs)} run(s)).",
        "",
        f"Encoder parameters before / after tuning: {result.parameters['encoder_before']:,} / "
        f"{result.parameters['encoder_after']:,}; inference model (encoder + linear classifier): "
        f"{result.parameters['inference_total']:,}.",
        "",
    ]
    return "\n".join(lines)


def _write_first_run_outputs(
    out: Path, backbone: Backbone, encoder: torch.nn.Module, run: RunSpec, classes: list[str],
    test_emb: np.ndarray, test_y: np.ndarray, pred: np.ndarray, progress: bool,
) -> None:
    """The first run's tuned encoder, test embeddings and confusion matrix."""
    names = np.asarray(classes, dtype=object)
    np.savez(
        out / EMBEDDINGS_FILE,
        embeddings=test_emb.astype(np.float32),
        paths=np.asarray([str(it.path) for it in run.test]),
        labels=np.asarray([str(c) for c in names[test_y]]),
        predictions=np.asarray([str(c) for c in names[pred]]),
    )
    cm = confusion_matrix(test_y, pred, labels=np.arange(len(classes)))
    _write_json(out / CONFUSION_FILE, {
        "run": run.name, "seed": run.seed, "fold": run.fold, "classes": classes,
        "rows": "true class", "columns": "predicted class", "matrix": cm.tolist(),
        "accuracy": float((pred == test_y).mean()),
    })
    backbone.save(encoder, out, progress=progress)


# --------------------------------------------------------------------------------------------
# the entry point


def finetune(
    method: str,
    backbone: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    seeds: int | Sequence[int] = 5,
    folds: bool | Sequence[int] | None = None,
    epochs: int = 40,
    batch_size: int = 32,
    lr: float = 5e-5,
    m_per_class: int | None = None,
    temperature: float = 0.1,
    projection_dim: int = 256,
    mining_margin: float = 0.1,
    clip_seconds: float = 2.0,
    select_best: bool = True,
    linear_lrs: Sequence[float] = DEFAULT_LRS,
    linear_batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    linear_epochs: int = 100,
    eval_batch_size: int = 64,
    recipe: str | Path | Recipe | None = None,
    device: str | torch.device | None = None,
    skip_bad: bool = False,
    resume: bool = False,
    num_workers: int = 2,
    progress: bool = True,
) -> FinetuneResult:
    """Fine-tune ``backbone`` on the labelled ``data`` with ``method`` (``"pairtune"`` or
    ``"finetune"``) and evaluate it over seeds or folds (module docstring).

    ``backbone``: a tympan run directory, ``"random"`` (architecture from ``recipe``) or
    ``"hf:/path/to/model"``. ``data``: a manifest CSV or class folder, single-label, with a
    ``split`` (train/val/test) or ``fold`` column. Defaults follow the seed (Adam, lr 5e-5, 40
    epochs, SupCon tau 0.1, 256-d projection); ``batch_size``, ``clip_seconds`` and the linear
    grid are ours (the seed does not give them). ``resume`` continues an interrupted ``out``.
    """
    if method not in METHODS:
        raise ConfigError(f"method={method!r}: use one of {', '.join(METHODS)}")
    config = TuneConfig(
        method=method, epochs=epochs, batch_size=batch_size, lr=lr, m_per_class=m_per_class,
        temperature=temperature, projection_dim=projection_dim, mining_margin=mining_margin,
        clip_seconds=clip_seconds, eval_batch_size=eval_batch_size, select_best=select_best,
    )
    config.check()
    if method == "pairtune":
        check_grid(linear_lrs, linear_batch_sizes, linear_epochs)  # before hours of stage 1
    out = Path(out)
    runs_dir, ckpt_dir = out / RUNS_DIR, out / CHECKPOINT_DIR
    finished = sorted(runs_dir.glob("*.json")) if runs_dir.is_dir() else []
    finished = [p for p in finished if p.name != SETTINGS_FILE]
    partial = sorted(ckpt_dir.glob("*.pt")) if ckpt_dir.is_dir() else []
    if (finished or partial) and not resume:
        raise TympanError(
            f"{out}: already holds fine-tuning runs ({len(finished)} finished, {len(partial)} "
            "interrupted); pass resume=True (--resume) to continue it, or choose another output folder"
        )

    manifest = read_manifest(data)
    protocol, specs, how = plan_runs(manifest, seeds=seeds, folds=folds)
    for it in manifest.items:
        it.label  # noqa: B018 (raises a ManifestError naming the file for a multi-label row)
    classes = manifest.classes
    index_of = {c: i for i, c in enumerate(classes)}

    bb = load_backbone(backbone, recipe=recipe, progress=progress)
    settings = {
        **asdict(config), "seeds": [s.seed for s in specs], "folds": [s.fold for s in specs],
        "linear_lrs": [float(v) for v in linear_lrs], "linear_batch_sizes": [int(v) for v in linear_batch_sizes],
        "linear_epochs": linear_epochs, "optimizer": "adam", "schedule": "constant",
        "backbone": str(backbone), "backbone_kind": bb.kind, "data": str(manifest.source),
        "sample_rate": bb.sample_rate, "protocol": protocol,
    }
    out.mkdir(parents=True, exist_ok=True)
    runs_dir.mkdir(exist_ok=True)
    settings_path = runs_dir / SETTINGS_FILE
    if resume and settings_path.is_file():
        before = json.loads(settings_path.read_text())
        changed = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
        if changed:
            raise TympanError(
                f"--resume: {out} was run with other settings ({', '.join(changed)} differ); "
                "repeat the original options or choose another output folder"
            )
    _write_json(settings_path, settings)

    # decode every clip once, at the backbone's rate; bad files stop the run or are skipped
    used = {it.path: it for s in specs for it in (*s.train, *s.val, *s.test)}
    report = scan_items(list(used.values()), bb.sample_rate, skip_bad=skip_bad, keep_audio=True,
                        num_workers=num_workers, progress=progress, desc="loading audio")
    audio = {it.path: wav for it, wav in zip(report.items, report.audio or [])}

    def split(items: list[Item], what: str, run: RunSpec) -> tuple[list[np.ndarray], np.ndarray]:
        kept = [it for it in items if it.path in audio]
        if not kept:
            raise TympanError(f"{manifest.source}: run {run.name} has no usable {what} clips")
        return [audio[it.path] for it in kept], np.array([index_of[it.label] for it in kept], dtype=np.int64)

    dev = pick_device(device)
    before_params = bb.num_parameters()
    before_shapes = _state_shapes(bb.module)
    results: list[RunResult] = []
    outer = tqdm(specs, desc=f"{method} runs", unit="run", disable=not progress or len(specs) < 2)
    for i, spec in enumerate(outer):
        done = runs_dir / f"{spec.name}.json"
        if resume and done.is_file():
            results.append(RunResult(**json.loads(done.read_text())))
            continue
        spec.test = [it for it in spec.test if it.path in audio]
        tr_audio, tr_y = split(spec.train, "train", spec)
        va_audio, va_y = split(spec.val, "validation", spec)
        te_audio, te_y = split(spec.test, "test", spec)
        absent = sorted(set(te_y.tolist()) - set(tr_y.tolist()))
        if absent:
            log.warning("run %s: %d test class(es) have no training clip (e.g. %s)", spec.name,
                        len(absent), classes[absent[0]])

        encoder = bb.fresh()
        tuned = tune_encoder(
            encoder, tr_audio, tr_y, va_audio, va_y, len(classes), config, seed=spec.seed,
            device=dev, progress=progress, checkpoint=ckpt_dir / f"{spec.name}.pt",
            desc=f"{method} {spec.name}",
        )
        embed = lambda a: embed_frozen(tuned.encoder, a, clip_seconds, batch_size=eval_batch_size,  # noqa: E731
                                       device=dev, progress=False)
        te_emb = embed(te_audio)
        linear: dict[str, Any] | None = None
        if method == "pairtune":
            head = fit_linear_grid(embed(tr_audio), tr_y, embed(va_audio), va_y, len(classes),
                                   lrs=linear_lrs, batch_sizes=linear_batch_sizes,
                                   epochs=linear_epochs, seed=spec.seed, device=dev)
            pred = head.predict(te_emb)
            val_acc = head.val_accuracy
            classifier_params = head.num_parameters
            linear = {"lr": head.lr, "batch_size": head.batch_size, "val_accuracy": head.val_accuracy,
                      "best_epoch": head.best_epoch, "grid": [p.to_json() for p in head.grid]}
        else:
            assert tuned.head is not None
            with torch.no_grad():
                pred = tuned.head(torch.from_numpy(te_emb).to(dev)).argmax(dim=1).cpu().numpy()
            val_acc = tuned.best_val_accuracy
            classifier_params = tuned.head_parameters
        after_params = sum(p.numel() for p in tuned.encoder.parameters())
        run = RunResult(
            name=spec.name, seed=spec.seed, fold=spec.fold,
            test_accuracy=float((pred == te_y).mean()), val_accuracy=float(val_acc),
            best_epoch=tuned.best_epoch, m_per_class=tuned.m_per_class,
            n_train=len(tr_y), n_val=len(va_y), n_test=len(te_y), history=tuned.history,
            val_fold=spec.val_fold, train_folds=spec.train_folds, linear=linear,
            parameters={
                "encoder_after": after_params,
                "state_dict_matches_original": _state_shapes(tuned.encoder) == before_shapes,
                "stage1_head": tuned.head_parameters,
                "stage1_head_kept": method == "finetune",
                "classifier": classifier_params,
            },
        )
        if i == 0:
            _write_first_run_outputs(out, bb, tuned.encoder, spec, classes, te_emb, te_y, pred, progress)
        _write_json(done, run.to_json())
        (ckpt_dir / f"{spec.name}.pt").unlink(missing_ok=True)
        results.append(run)
        outer.set_postfix(test_acc=f"{run.test_accuracy:.3f}")
    outer.close()
    if ckpt_dir.is_dir() and not any(ckpt_dir.iterdir()):
        ckpt_dir.rmdir()

    first = results[0].parameters
    parameters = {
        "encoder_before": before_params,
        "encoder_after": first["encoder_after"],
        "state_dict_matches_original": all(r.parameters["state_dict_matches_original"] for r in results),
        "stage1_head": first["stage1_head"],
        "stage1_head_kept": first["stage1_head_kept"],
        "classifier": first["classifier"],
        "inference_total": first["encoder_after"] + first["classifier"],
    }
    result = FinetuneResult(
        out=out, method=method, backbone=str(backbone), protocol=protocol, runs=results,
        classes=classes, settings=settings, parameters=parameters, validation=how,
    )
    _write_json(out / RESULTS_FILE, result.to_json())
    _write_atomic(out / CONVERGENCE_FILE, _convergence_csv(method, results))
    _write_atomic(out / TABLE_FILE, _table(result))
    return result
