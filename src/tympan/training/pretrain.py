"""``tympan pretrain``: a recipe, a manifest and a run directory in, an encoder out.

Run directory (ARCHITECTURE.md, "Contracts"): ``config.yaml`` (resolved recipe),
``encoder.safetensors``, ``metrics.csv``, ``checkpoints/last.ckpt`` (for ``--resume``) and
``pretrain.json`` (a machine-readable summary: steps, clips, skipped files, parameters, time).

Pretext workers (Zaiem & Parcollet, ``../shared/seeds/004_f3e19d7efff003e6.txt``, eq. 11 and
12): ``pretext_weights`` (the ``weights.json`` of ``tympan pretext select``) records the labels
with ``lambda_i > 0`` and the labels file in the recipe's ``pretext`` section and, unless the
recipe already has a ``pretext_workers`` or ``pase`` task, appends a task ``workers``
(objective ``pretext_workers``, weight 1), so that any recipe trains
``L = L_ssl + sum_i lambda_i l1(Z_i)``. The frame labels of the training items are read from
``pretext.labels`` at every start, ``--resume`` included.

Data: a manifest (CSV or class folder: every file is checked, then decoded by the DataLoader
workers at every read) or WebDataset shards written by ``tympan shard`` (``data`` or ``shards``
naming a folder with ``shards.json``, the index, or a URL pattern such as
``https://host/shard-{000000..000031}.tar``): streamed by :class:`~tympan.data.shards.
ShardDataset` with a ``train.shuffle_buffer`` buffer, split by rank and worker so that every
rank steps the same number of batches and the clips of an epoch are read once across the
cluster. ``pretrain.json`` records which data was read (``data``: the index's hash for shards).
Pretext workers need the frame labels of each file and are not available with shards.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import platform
import time
import warnings
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint, RichProgressBar
from torch.utils.data import DataLoader

from tympan.config import Recipe, load_recipe, save_recipe
from tympan.data.dataset import CropDataset, SameTrackPairDataset
from tympan.data.manifest import read_manifest
from tympan.data.scan import scan_items
from tympan.data.shards import (
    PairSpec, ShardDataset, ShardLoader, is_shard_source, resolve_shards,
)
from tympan.errors import ConfigError, TympanError
from tympan.methods.workers import LABEL_OBJECTIVES, FrameLabels, read_selection
from tympan.models.encoder import CONFIG_FILE, ENCODER_FILE, save_encoder
from tympan.report.plots import plot_training_curves
from tympan.training.checkpoints import AtomicCheckpointIO
from tympan.training.collapse import CollapseMonitor
from tympan.training.csv_log import RunCSVLogger
from tympan.training.module import PretrainModule

log = logging.getLogger("tympan")
LAST_CKPT = "last.ckpt"


@dataclass
class PretrainResult:
    run: Path
    steps: int
    clips: int
    skipped: list[dict[str, str]] = field(default_factory=list)
    wall_seconds: float = 0.0
    parameters: dict[str, Any] = field(default_factory=dict)
    #: :class:`~tympan.training.collapse.CollapseMonitor` summary: warnings and last values
    collapse: dict[str, Any] = field(default_factory=dict)
    #: where the clips came from: ``{"kind": "manifest" | "shards", "source", "clips", ...}``
    data: dict[str, Any] = field(default_factory=dict)
    #: seed, precision, accelerator, devices, nodes, effective batch, applied learning rate,
    #: memory format, compilation and device name the run trained with
    environment: dict[str, Any] = field(default_factory=dict)
    #: this process's global rank: under DDP every process returns a result, but only rank 0
    #: wrote the run directory (callers print and write summaries on rank 0 only)
    global_rank: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "run": str(self.run), "steps": self.steps, "clips": self.clips,
            "skipped": self.skipped, "n_skipped": len(self.skipped),
            "wall_seconds": round(self.wall_seconds, 2), "parameters": self.parameters,
            "collapse": self.collapse, "data": self.data, "environment": self.environment,
        }


def pretrain_split(splits: Collection[str], split: str | None) -> str | None:
    """The split to pretrain on, of a manifest or shard set with the split names ``splits``:
    ``split`` if given; else ``pretrain`` when there is one; else ``None`` (every clip)."""
    if split is not None:
        return split
    return "pretrain" if "pretrain" in splits else None


def shard_dataset(
    cfg: Recipe, source: str | Path | Sequence[str | Path], split: str | None, seed: int
) -> ShardDataset:
    """The streaming dataset of a pretraining run on shards (crops or same-track pairs, whole
    batches per rank and worker)."""
    v = cfg.views
    pairs = PairSpec(v.segment_seconds, v.min_gap, v.max_gap, v.silence_db) \
        if v.kind == "same_track" else None
    resolved = resolve_shards(source)
    return ShardDataset(
        source, clip_seconds=cfg.audio.clip_seconds, sample_rate=cfg.audio.sample_rate,
        pairs=pairs, split=pretrain_split(resolved[0].splits, split), resolved=resolved,
        batch_size=cfg.train.batch_size, drop_last=True, shuffle=True,
        shuffle_buffer=cfg.train.shuffle_buffer, seed=seed,
    )


def resolve_precision(recipe: Recipe, accelerator: str) -> str:
    """bf16 autocast on CUDA, fp32 on the CPU (bf16 there is ~100x slower)."""
    if recipe.train.precision != "auto":
        return recipe.train.precision
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    return "bf16-mixed" if on_gpu else "32-true"


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def quiet_lightning() -> None:
    """Keep Lightning's start-up chatter (accelerator listing, tips) out of the user's way;
    warnings and errors still show. ``tympan -v`` keeps everything."""
    for name in list(logging.root.manager.loggerDict):
        if name.startswith(("pytorch_lightning", "lightning_fabric", "lightning.")):
            logging.getLogger(name).setLevel(logging.WARNING)


def with_pretext(
    cfg: Recipe, weights_file: str | Path | None, labels_file: str | Path | None
) -> Recipe:
    """``cfg`` with the pretext section filled from a selection file and/or a labels file, and a
    ``workers`` task (objective ``pretext_workers``) appended if it has no worker task yet.

    Only labels with ``lambda > 0`` are kept (sparsemax zeroes some; seed 004, section III-C).
    ``labels_file`` overrides the selection's ``settings.labels_file``.
    """
    if weights_file is None and labels_file is None:
        return cfg
    data = cfg.to_dict()
    pretext = dict(data["pretext"])
    if weights_file is not None:
        weights, from_selection = read_selection(weights_file)
        kept = {name: w for name, w in weights.items() if w > 0}
        if not kept:
            raise TympanError(f"{weights_file}: every weight is 0; no pretext label to regress")
        pretext.update(weights=kept, selection=str(Path(weights_file).resolve()))
        if labels_file is None:
            if from_selection is None:
                raise TympanError(
                    f"{weights_file} does not name its labels file (settings.labels_file); pass "
                    f"the file written by tympan pretext labels with --pretext-labels"
                )
            labels_file = from_selection
    if labels_file is not None:
        pretext["labels"] = str(Path(labels_file).resolve())
    data["pretext"] = pretext
    if not any(t["objective"] in LABEL_OBJECTIVES for t in data["tasks"]):
        if "workers" in {t["name"] for t in data["tasks"]}:
            raise ConfigError(
                "recipe field 'tasks': a task is named 'workers' but is no pretext_workers task; "
                "rename it so that the pretext workers can be added"
            )
        data["tasks"].append(
            {"name": "workers", "objective": "pretext_workers", "weight": 1.0}
        )
    return load_recipe(data)


def needs_frame_labels(cfg: Recipe) -> bool:
    """Whether a task of ``cfg`` regresses frame labels; raises (before any audio is read) when
    the recipe cannot provide them."""
    workers = [t for t in cfg.tasks if t.objective in LABEL_OBJECTIVES]
    if not workers:
        return False
    first = f"recipe task '{workers[0].name}' (objective {workers[0].objective})"
    if not cfg.pretext.weights:
        if any(t.objective == "pretext_workers" for t in workers):
            raise TympanError(
                f"{first} has no labels to regress (recipe field 'pretext.weights' is empty); "
                f"pretrain with --pretext-weights weights.json from tympan pretext select"
            )
        return False  # pase with its mel and MFCC workers only
    if cfg.views.kind == "same_track":
        raise ConfigError(
            f"{first} regresses the frame labels of each crop, which 'views.kind: same_track' "
            f"does not provide; use 'views.kind: augment' with pretext workers"
        )
    if not cfg.pretext.labels:
        raise TympanError(
            f"{first} needs frame labels but recipe field 'pretext.labels' is empty; pass "
            f"--pretext-labels labels.npz (from tympan pretext labels) or --pretext-weights "
            f"with a selection that names it"
        )
    if not Path(cfg.pretext.labels).is_file():
        raise TympanError(
            f"{cfg.pretext.labels}: no such labels file (recipe field 'pretext.labels'); create "
            f"it with tympan pretext labels --data MANIFEST --out {cfg.pretext.labels}"
        )
    return True


class StepProgressBar(RichProgressBar):
    """Lightning's rich progress bar, labelled by optimiser steps: pretraining runs to
    ``train.max_steps`` with ``max_epochs=-1``, for which the stock label reads "Epoch 66/-2".
    The logger's version number (always 0 in a run folder) is left out of the metrics."""

    def _get_train_description(self, current_epoch: int) -> str:
        return (f"epoch {current_epoch} · step {self.trainer.global_step}/"
                f"{self.trainer.max_steps}")

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        super().on_train_batch_end(trainer, *args, **kwargs)
        if self.progress is not None and self.train_progress_bar_id is not None:
            self.progress.update(self.train_progress_bar_id,
                                 description=self._get_train_description(trainer.current_epoch))

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics


def _progress_callbacks(progress: bool) -> list[pl.Callback]:
    """The step-labelled bar where ``rich`` is installed; otherwise Lightning's default."""
    if progress and importlib.util.find_spec("rich") is not None:
        return [StepProgressBar()]
    return []


def pretrain(
    recipe: str | Path | Recipe,
    data: str | Path | None,
    out: str | Path,
    *,
    max_steps: int | None = None,
    resume: bool = False,
    seed: int = 0,
    skip_bad: bool = False,
    split: str | None = None,
    devices: int | str | None = None,
    accelerator: str | None = None,
    strategy: str | None = None,
    num_nodes: int | None = None,
    progress: bool = True,
    overrides: dict[str, Any] | None = None,
    pretext_weights: str | Path | None = None,
    pretext_labels: str | Path | None = None,
    shards: str | Path | Sequence[str | Path] | None = None,
) -> PretrainResult:
    """Pretrain an encoder; see the module docstring for what lands in ``out``.

    ``data``: a manifest, or shards (recognised by :func:`~tympan.data.shards.is_shard_source`);
    ``shards``: shards given explicitly (a folder, index, URL pattern or list), ``data`` then
    ``None``. ``split`` picks a split of either (default: ``pretrain`` if present, else all).
    ``skip_bad`` applies to manifests (shards were checked when they were written).

    ``pretext_weights``: a selection (``tympan pretext select``) whose labels are regressed by
    weighted workers; ``pretext_labels``: the labels file (``tympan pretext labels``), which
    overrides the one the selection names (module docstring).
    """
    out = Path(out)
    ckpt = out / "checkpoints" / LAST_CKPT
    if shards is not None and data is not None:
        raise TympanError("give the pretraining data once: a manifest as data, or shards")
    if shards is None and data is not None and is_shard_source(data):
        shards = data
    if shards is None and data is None:
        raise TympanError("no pretraining data: give a manifest (--data) or shards")
    overrides = dict(overrides or {})
    if max_steps is not None:
        overrides["train.max_steps"] = max_steps
    for key, value in (("devices", devices), ("accelerator", accelerator),
                       ("strategy", strategy), ("num_nodes", num_nodes)):
        if value is not None:
            overrides[f"train.{key}"] = value
    if resume:
        if not (out / CONFIG_FILE).is_file():
            raise TympanError(f"--resume: {out} holds no run to resume (no {CONFIG_FILE})")
        if not ckpt.is_file():
            raise TympanError(
                f"--resume: {out} has no checkpoint yet ({ckpt} is missing); "
                f"start again without --resume after removing {out}"
            )
        # the run's own resolved recipe wins; only steps/devices may change on resume
        saved = load_recipe(out / CONFIG_FILE)
        cfg = load_recipe(out / CONFIG_FILE, overrides)
        if pretext_weights is not None or pretext_labels is not None:
            wanted = with_pretext(saved, pretext_weights, pretext_labels).pretext
            if (wanted.weights, wanted.labels) != (saved.pretext.weights, saved.pretext.labels):
                raise TympanError(
                    f"--resume: {out / CONFIG_FILE} records other pretext labels or weights than "
                    f"the ones given; resume without --pretext-weights/--pretext-labels (the run "
                    f"keeps its own) or start a new run"
                )
        if cfg.train.max_steps != saved.train.max_steps:
            log.warning(
                "resuming with max_steps %d instead of %d: the learning-rate schedule's horizon "
                "moves with it", cfg.train.max_steps, saved.train.max_steps,
            )
    else:
        cfg = recipe if isinstance(recipe, Recipe) else load_recipe(recipe, overrides)
        if isinstance(recipe, Recipe) and overrides:
            cfg = load_recipe(recipe.to_dict(), overrides)
        cfg = with_pretext(cfg, pretext_weights, pretext_labels)

    if not log.isEnabledFor(logging.DEBUG):
        quiet_lightning()
    pl.seed_everything(seed, workers=True, verbose=False)
    labelled = needs_frame_labels(cfg)
    t = cfg.train
    trainer: pl.Trainer | None = None  # the loader of shards reads its epoch and rank
    frame_labels = None
    skipped: list[dict[str, str]] = []
    if shards is not None:
        if labelled:
            raise TympanError(
                f"{shards}: pretext workers regress the frame labels of each file, which "
                f"streaming from shards does not provide; pretrain on the manifest the shards "
                f"were written from instead"
            )
        dataset: Any = shard_dataset(cfg, shards, split, seed)
        clips = dataset.total
        data_info = dataset.describe()
        if clips < t.batch_size:
            raise TympanError(
                f"{dataset.index.location}: {clips} clips, fewer than train.batch_size="
                f"{t.batch_size}; lower the batch size (--set train.batch_size=N) or add audio"
            )
        loader: DataLoader = ShardLoader(
            dataset, batch_size=t.batch_size, drop_last=True, num_workers=t.num_workers,
            persistent_workers=t.num_workers > 0, pin_memory=torch.cuda.is_available(),
            epoch=lambda: trainer.current_epoch if trainer is not None else 0,
            dist=lambda: (trainer.global_rank, trainer.world_size) if trainer is not None
            else dataset.distributed,
        )
    else:
        assert data is not None
        full = read_manifest(data, check_files=not skip_bad)
        chosen = pretrain_split(full.splits, split)
        manifest = full.select(chosen) if chosen is not None else full
        v = cfg.views
        pairs = v.kind == "same_track"
        min_seconds = v.segment_seconds + v.min_gap if pairs else 0.0
        report = scan_items(
            manifest.items, cfg.audio.sample_rate, skip_bad=skip_bad, progress=progress,
            desc="checking pretraining audio", min_seconds=min_seconds,
        )
        if not report.items:
            raise TympanError(f"{data}: no usable audio to pretrain on")
        if labelled:  # rows in the dataset's item order; names the first file without labels
            frame_labels = FrameLabels.from_file(
                cfg.pretext.labels, list(cfg.pretext.weights), [str(it.path) for it in report.items]
            )
        if pairs:
            dataset = SameTrackPairDataset(
                report.items, cfg.audio.sample_rate, v.segment_seconds, v.min_gap, v.max_gap,
                v.silence_db,
            )
        else:
            dataset = CropDataset(report.items, cfg.audio.sample_rate, cfg.audio.clip_seconds)
        if len(dataset) < t.batch_size:
            raise TympanError(
                f"{data}: {len(dataset)} usable clips, fewer than train.batch_size={t.batch_size}; "
                f"lower the batch size (--set train.batch_size=N) or add audio"
            )
        clips, skipped = len(report.items), report.skipped
        data_info = {
            "kind": "manifest", "source": str(manifest.source), "clips": clips,
            "split": chosen,
        }
        loader = DataLoader(
            dataset, batch_size=t.batch_size, shuffle=True, drop_last=True,
            num_workers=t.num_workers, persistent_workers=t.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    module = PretrainModule(cfg, seed=seed, frame_labels=frame_labels)
    monitor = CollapseMonitor({name: module.encoder.dim for name in module.tasks})
    out.mkdir(parents=True, exist_ok=True)
    checkpointing = ModelCheckpoint(
        dirpath=out / "checkpoints", filename="step{step}", save_top_k=0, save_last=True,
        every_n_train_steps=t.checkpoint_every_n_steps, enable_version_counter=False,
    )
    trainer = pl.Trainer(
        max_steps=t.max_steps,
        max_epochs=-1,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=resolve_precision(cfg, t.accelerator),
        logger=RunCSVLogger(out / "metrics.csv"),
        callbacks=[checkpointing, monitor, *_progress_callbacks(progress)],
        plugins=[AtomicCheckpointIO()],
        log_every_n_steps=t.log_every_n_steps,
        enable_progress_bar=progress,
        enable_model_summary=False,
        default_root_dir=out,
    )
    # Under DDP the launcher re-runs this function in every process; only global rank 0 (the
    # process that runs it first) checks the run directory and writes the config.
    if trainer.is_global_zero:
        if not resume and (out / CONFIG_FILE).exists():
            raise TympanError(
                f"{out} already holds a run; continue it with --resume or choose another --out"
            )
        save_recipe(cfg, out / CONFIG_FILE)
    started = time.time()
    with warnings.catch_warnings():
        # a small corpus gives short epochs; Lightning's advice about workers is noise here
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
        # resuming mid-epoch restarts that epoch's shuffled order (steps, optimiser, schedule
        # and augmentation RNG are restored exactly); documented in the README
        warnings.filterwarnings("ignore", message=".*dataloader is not resumable.*")
        # ShardDataset's length is exact per rank (whole batches per worker, from shards.json)
        warnings.filterwarnings("ignore", message=".*IterableDataset.*has `__len__` defined.*")
        trainer.fit(
            module, train_dataloaders=loader, ckpt_path=str(ckpt) if resume else None,
            weights_only=True,
        )
    wall = time.time() - started
    trainer.save_checkpoint(ckpt, weights_only=False)
    result = PretrainResult(
        run=out, steps=int(trainer.global_step), clips=clips,
        skipped=skipped, wall_seconds=wall, data=data_info,
        parameters={
            "encoder": count_parameters(module.encoder),
            # trainable head parameters; EMA teachers (BYOL, DINO) are counted apart
            "heads": sum(p.numel() for p in module.tasks.parameters() if p.requires_grad),
            "teachers": sum(p.numel() for p in module.tasks.parameters() if not p.requires_grad),
            # shared vs per-task, and the cost against one network per task (MT-SLVR)
            "encoder_breakdown": module.encoder.parameter_counts(),
        },
        collapse=monitor.summary(), global_rank=trainer.global_rank,
        environment={
            "seed": seed, "precision": str(trainer.precision),
            "accelerator": type(trainer.accelerator).__name__.replace("Accelerator", "").lower(),
            "devices": trainer.num_devices, "nodes": trainer.num_nodes,
            # per-process batch x world size, and the learning rate applied for it
            # (train.lr scaled by train.lr_scaling; docs/scale.md)
            "batch_size": t.batch_size, "effective_batch_size": module.effective_batch_size,
            # processes the global-batch losses gathered across (torch.distributed's world)
            "gather_world_size": module.gather_world_size,
            "lr": module.applied_lr, "lr_scaling": t.lr_scaling,
            "channels_last": module.channels_last,
            "compile": t.compile_mode if module.compiled else False,
            "device_name": (torch.cuda.get_device_name(module.device)
                            if module.device.type == "cuda" else platform.processor() or "cpu"),
            "torch": torch.__version__,
        },
    )
    if trainer.is_global_zero:
        save_encoder(module.encoder, out / ENCODER_FILE)
        (out / "pretrain.json").write_text(json.dumps(result.to_json(), indent=2))
        if (out / "metrics.csv").is_file():
            plot_training_curves(out / "metrics.csv", out / "training.png")
    return result


def pretrain_or_reuse(
    recipe: str | Path | Recipe, data: str | Path, out: str | Path, *, label: str = "",
    **kwargs: Any,
) -> bool:
    """Keep a finished run in ``out`` (its encoder exists), resume an interrupted one (a
    checkpoint exists), else start one; ``kwargs`` go to :func:`pretrain`. Lets the demo and the
    reproductions be stopped and started again. Returns whether anything was trained."""
    out = Path(out)
    if (out / ENCODER_FILE).is_file():
        return False
    resume = (out / "checkpoints" / LAST_CKPT).is_file()
    log.info("pretraining %s in %s%s", label or out.name, out, " (resuming)" if resume else "")
    pretrain(recipe, data, out, resume=resume, **kwargs)
    return True
