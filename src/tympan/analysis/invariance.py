"""Learnt invariance: how far each augmentation moves each task's embedding.

MT-SLVR (``../shared/seeds/000_e1eab6133071efa6.txt``, "Ablation Studies" / "Learnt
Invariance") measures "the Mahalanobis distance between our original and augmented training
samples" for each head of a model and each augmentation, and reports the mean per
(head, augmentation) with an average column; lower means more invariant.

Here, for ``N`` fixed-length crops (``recipe.audio.clip_seconds``, the centre of each clip as in
evaluation; shorter clips tiled, :func:`tympan.data.dataset.fit_length`) and for each op applied
**alone** (parameters drawn per clip from the recipe's ``augment.params`` ranges with a seeded
``torch.Generator``), and for each task ``t`` of the model:

* ``E0 [N, D_t]``: the task's embeddings of the original crops, ``Ea [N, D_t]`` of the augmented;
* ``S``: the covariance of ``E0``, shrunk with Ledoit-Wolf (``N`` may be below ``D_t``, where
  the sample covariance is singular);
* ``d_i = sqrt((ea_i - e0_i)^T S^-1 (ea_i - e0_i))`` per clip; the cell is the mean over clips.

Measuring in units of the originals' own spread makes heads of different widths and scales
comparable: a change as large as the spread between two unrelated clips scores about
``sqrt(2 D_t)``, a change the head ignores scores 0.

Everything is batched: each batch of crops is embedded once (every task's columns from one
``forward(x)``, sliced by ``task_slices()``), then each op transforms the whole batch at once.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.covariance import LedoitWolf
from torch import nn
from tqdm.auto import tqdm

from tympan.augment.ops import OPS, AugmentOp, build_op
from tympan.data.dataset import fit_length
from tympan.data.manifest import read_manifest
from tympan.data.scan import ScanReport, scan_items
from tympan.errors import TympanError
from tympan.evaluation.features import pick_device
from tympan.evaluation.metrics import mean_ci95

__all__ = [
    "AVG",
    "InvarianceTable",
    "centre_crops",
    "format_invariance",
    "invariance_report",
    "load_clips",
    "mahalanobis_distances",
    "measure_invariance",
    "shrunk_covariance",
]

#: the key of the average-over-ops column
AVG = "avg"
#: the split pretraining uses; :func:`load_clips` prefers it (the seed measures on training data)
PRETRAIN_SPLIT = "pretrain"


# ---------------------------------------------------------------------------------------------
# the distance


def shrunk_covariance(embeddings: np.ndarray) -> np.ndarray:
    """Ledoit-Wolf shrunk covariance ``[D, D]`` of ``embeddings [N, D]`` (rows are samples).

    Shrinkage towards a scaled identity keeps the estimate invertible when ``N <= D``.
    """
    e = np.asarray(embeddings, dtype=np.float64)
    if e.ndim != 2 or e.shape[0] < 2:
        raise TympanError(
            f"a covariance needs embeddings [N >= 2, D], got shape {tuple(e.shape)}"
        )
    return LedoitWolf(assume_centered=False).fit(e).covariance_


def mahalanobis_distances(
    original: np.ndarray, augmented: np.ndarray, cov: np.ndarray | None = None
) -> np.ndarray:
    """Per-row Mahalanobis distance ``sqrt((a_i - o_i)^T S^-1 (a_i - o_i))``, ``[N]``.

    ``original, augmented [N, D]`` pair row by row. ``S`` is ``cov`` if given, else
    :func:`shrunk_covariance` of ``original``. ``S^-1`` is applied through the eigendecomposition
    of ``S``; directions with no variance at all (eigenvalue below ``1e-12`` of the largest) are
    left out, i.e. a pseudo-inverse, which only matters when Ledoit-Wolf did not shrink.
    """
    o = np.asarray(original, dtype=np.float64)
    a = np.asarray(augmented, dtype=np.float64)
    if o.ndim != 2 or o.shape != a.shape:
        raise TympanError(
            f"original and augmented embeddings must both be [N, D] with the same shape, got "
            f"{tuple(o.shape)} and {tuple(a.shape)}"
        )
    if not (np.isfinite(o).all() and np.isfinite(a).all()):
        raise TympanError("embeddings contain NaN or inf; the Mahalanobis distance is undefined")
    s = shrunk_covariance(o) if cov is None else np.asarray(cov, dtype=np.float64)
    if s.shape != (o.shape[1], o.shape[1]):
        raise TympanError(f"covariance must be [{o.shape[1]}, {o.shape[1]}], got {s.shape}")
    evals, evecs = np.linalg.eigh((s + s.T) / 2.0)
    keep = evals > 1e-12 * max(float(evals.max()), 0.0)
    if not keep.any():
        raise TympanError(
            "the original embeddings do not vary across clips (zero covariance), so the "
            "Mahalanobis distance is undefined; use more (or more varied) clips"
        )
    z = (a - o) @ evecs[:, keep]  # difference in the eigenbasis
    return np.sqrt(np.maximum((z * z / evals[keep]).sum(axis=1), 0.0))


# ---------------------------------------------------------------------------------------------
# the table


@dataclass
class InvarianceTable:
    """Mean Mahalanobis distance per (task, op), plus the average over ops.

    ``distances[task][op]`` and ``distances[task]["avg"]``: means over clips (lower = more
    invariant). ``ci95`` has the same keys: the 95% CI half-width over clips
    (:func:`tympan.evaluation.metrics.mean_ci95`); the ``avg`` CI is that of each clip's average
    over ops. ``to_json()`` is plain JSON.
    """

    tasks: list[str]
    ops: list[str]
    distances: dict[str, dict[str, float]]
    ci95: dict[str, dict[str, float]]
    num_clips: int
    clip_seconds: float
    seed: int
    metric: str = "mahalanobis (Ledoit-Wolf covariance of the original embeddings)"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def table(self) -> dict[str, dict[str, float]]:
        """``{task: {op: mean distance, ..., "avg": ...}}`` (the same object as ``distances``)."""
        return self.distances

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> InvarianceTable:
        return cls(**dict(data))


def _op_seed(seed: int, name: str) -> int:
    """Each op's own stream: its parameters do not depend on which other ops are measured."""
    return (int(seed) * 1_000_003 + zlib.crc32(name.encode())) % (2**63 - 1)


def resolve_ops(model: nn.Module, ops: Sequence[str] | None) -> dict[str, AugmentOp]:
    """The ops to measure, built with the model recipe's ``augment.params`` (else the seed's
    defaults). ``ops=None`` means the recipe's ``augment.ops``."""
    recipe = getattr(model, "recipe", None)
    augment = getattr(recipe, "augment", None)
    params: Mapping[str, Any] = getattr(augment, "params", None) or {}
    if ops is None:
        if augment is None or not augment.ops:
            raise TympanError(
                "this model has no recipe with 'augment.ops'; name the ops to measure "
                f"(known: {', '.join(sorted(OPS))})"
            )
        ops = list(augment.ops)
    names = list(ops)
    if not names:
        raise TympanError(f"no augmentation ops to measure; name some of {', '.join(sorted(OPS))}")
    unknown = [n for n in names if n not in OPS]
    if unknown:
        raise TympanError(
            f"unknown augmentation op '{unknown[0]}' (known: {', '.join(sorted(OPS))})"
        )
    if len(set(names)) != len(names):
        raise TympanError(f"augmentation op listed twice: {', '.join(names)}")
    return {n: build_op(n, params.get(n)) for n in names}


def _task_columns(model: nn.Module, tasks: Sequence[str] | None) -> dict[str, tuple[int, int]]:
    slices = dict(model.task_slices())
    names = list(model.tasks) if tasks is None else list(tasks)
    unknown = [t for t in names if t not in slices]
    if unknown:
        raise TympanError(f"unknown task '{unknown[0]}': this model has {', '.join(slices)}")
    if not names:
        raise TympanError(f"no tasks to measure; this model has {', '.join(slices)}")
    return {t: (int(slices[t][0]), int(slices[t][1])) for t in names}


def centre_crops(audio_clips: Sequence[np.ndarray], num_samples: int) -> np.ndarray:
    """One ``num_samples`` crop per clip, ``[N, num_samples]`` float32: the centre, as the
    evaluation crop of :class:`tympan.data.dataset.CropDataset`; shorter clips are tiled."""
    crops = []
    for i, wav in enumerate(audio_clips):
        w = np.asarray(wav, dtype=np.float32)
        if w.ndim != 1 or w.size == 0:
            raise TympanError(f"clip {i}: expected a non-empty mono waveform, got {w.shape}")
        crops.append(fit_length(w, num_samples, max(0, len(w) - num_samples) // 2))
    if not crops:
        return np.zeros((0, num_samples), np.float32)
    return np.ascontiguousarray(np.stack(crops))


@torch.no_grad()
def measure_invariance(
    model: nn.Module,
    crops: np.ndarray | torch.Tensor,
    *,
    ops: Sequence[str] | None = None,
    tasks: Sequence[str] | None = None,
    seed: int = 0,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> InvarianceTable:
    """The invariance table of ``model`` on fixed-length ``crops [N, T]`` (module docstring).

    Deterministic given ``seed`` and ``batch_size`` (parameters are drawn batch by batch from
    one generator per op).
    """
    if isinstance(crops, torch.Tensor):
        x_all = crops.float()
    else:
        x_all = torch.as_tensor(np.asarray(crops, dtype=np.float32))
    if x_all.dim() != 2:
        raise TympanError(f"crops must be waveforms [N, T], got shape {tuple(x_all.shape)}")
    n, t = x_all.shape
    if n < 2:
        raise TympanError(
            f"invariance needs at least 2 clips (a covariance of the originals), got {n}"
        )
    if batch_size < 1:
        raise TympanError(f"batch size must be >= 1, got {batch_size}")
    op_table = resolve_ops(model, ops)
    columns = _task_columns(model, tasks)
    dev = pick_device(device)
    model = model.to(dev).eval()
    gens = {
        name: torch.Generator(device=dev).manual_seed(_op_seed(seed, name)) for name in op_table
    }

    originals: list[torch.Tensor] = []
    augmented: dict[str, list[torch.Tensor]] = {name: [] for name in op_table}
    for start in tqdm(range(0, n, batch_size), desc="invariance", disable=not progress,
                      leave=False):
        x = x_all[start : start + batch_size].to(dev)
        originals.append(model(x).double().cpu())
        for name, op in op_table.items():
            params = op.sample(x.shape[0], t, gens[name], dev)
            augmented[name].append(model(op.apply(x, params)).double().cpu())
    e0 = torch.cat(originals).numpy()
    width = max(stop for _, stop in columns.values())
    if e0.ndim != 2 or e0.shape[1] < width:
        raise TympanError(
            f"the model's embedding is {tuple(e0.shape)} but its task slices need {width} "
            f"columns ({columns})"
        )
    ea = {name: torch.cat(chunks).numpy() for name, chunks in augmented.items()}

    distances: dict[str, dict[str, float]] = {}
    ci95: dict[str, dict[str, float]] = {}
    for task, (lo, hi) in columns.items():
        cov = shrunk_covariance(e0[:, lo:hi])
        per_op = {
            name: mahalanobis_distances(e0[:, lo:hi], ea[name][:, lo:hi], cov) for name in op_table
        }
        distances[task], ci95[task] = {}, {}
        for name, d in per_op.items():
            distances[task][name], ci95[task][name] = mean_ci95(d)
        distances[task][AVG], ci95[task][AVG] = mean_ci95(np.mean(list(per_op.values()), axis=0))
    recipe = getattr(model, "recipe", None)
    sr = getattr(model, "sample_rate", None)
    return InvarianceTable(
        tasks=list(columns), ops=list(op_table), distances=distances, ci95=ci95, num_clips=n,
        clip_seconds=(t / sr) if sr else math.nan, seed=seed,
        extra={"recipe": getattr(recipe, "name", None)} if recipe is not None else {},
    )


def invariance_report(
    model: nn.Module,
    audio_clips: Sequence[np.ndarray],
    *,
    ops: Sequence[str] | None = None,
    num_clips: int = 256,
    seed: int = 0,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    tasks: Sequence[str] | None = None,
    clip_seconds: float | None = None,
    progress: bool = True,
) -> InvarianceTable:
    """MT-SLVR's learnt-invariance table of ``model`` on decoded ``audio_clips``
    (seed, "Ablation Studies" / "Learnt Invariance"; method in the module docstring).

    ``audio_clips``: mono waveforms at ``model.sample_rate`` (e.g. ``load_clips(...).audio``);
    the first ``num_clips`` are used, each cropped to ``clip_seconds`` (default: the model
    recipe's ``audio.clip_seconds``). ``ops`` default to the recipe's ``augment.ops``, ``tasks``
    to all of ``model.tasks``.
    """
    if num_clips < 2:
        raise TympanError(f"--num-clips must be at least 2 (a covariance needs 2), got {num_clips}")
    clips = list(audio_clips)[:num_clips]
    if len(clips) < 2:
        raise TympanError(
            f"invariance needs at least 2 clips (a covariance of the originals), got {len(clips)}"
        )
    if clip_seconds is None:
        recipe = getattr(model, "recipe", None)
        if recipe is None:
            raise TympanError("this model has no recipe: give clip_seconds")
        clip_seconds = float(recipe.audio.clip_seconds)
    if not clip_seconds > 0:
        raise TympanError(f"clip length must be > 0 seconds, got {clip_seconds}")
    num_samples = max(1, int(round(clip_seconds * model.sample_rate)))
    return measure_invariance(
        model, centre_crops(clips, num_samples), ops=ops, tasks=tasks, seed=seed,
        batch_size=batch_size, device=device, progress=progress,
    )


def load_clips(
    data: str | Path,
    split: str | None = None,
    sample_rate: int = 16000,
    num_clips: int = 256,
    seed: int = 0,
    skip_bad: bool = False,
    *,
    progress: bool = True,
) -> ScanReport:
    """Decode ``num_clips`` clips of a manifest, chosen deterministically by ``seed``.

    ``split`` defaults to ``"pretrain"`` when the manifest has it (the seed measures on training
    data), else every item. Clips are taken in a seeded random order; with ``skip_bad`` an
    unreadable clip is replaced by the next one in that order, so the count is kept while the
    manifest has enough good files. Returns the :class:`~tympan.data.scan.ScanReport` (``audio``
    in the chosen order, ``skipped`` for the JSON record).
    """
    if num_clips < 2:
        raise TympanError(f"--num-clips must be at least 2 (a covariance needs 2), got {num_clips}")
    manifest = read_manifest(data, check_files=not skip_bad)
    if split is None and PRETRAIN_SPLIT in manifest.splits:
        split = PRETRAIN_SPLIT
    if split is not None:
        manifest = manifest.select(split)
    order = np.random.default_rng(seed).permutation(len(manifest.items))
    report = ScanReport(items=[], skipped=[], audio=[])
    pos = 0
    while len(report.items) < num_clips and pos < len(order):
        want = order[pos : pos + num_clips - len(report.items)]
        pos += len(want)
        part = scan_items(
            [manifest.items[i] for i in want], sample_rate, skip_bad=skip_bad, keep_audio=True,
            progress=progress, desc=f"loading {split or 'all'} clips",
        )
        report.items += part.items
        report.skipped += part.skipped
        report.audio += part.audio or []
    if len(report.items) < 2:
        raise TympanError(
            f"{data}: only {len(report.items)} usable clip(s) in split '{split or 'all'}'; "
            f"invariance needs at least 2"
        )
    return report


# ---------------------------------------------------------------------------------------------
# the human table


def format_invariance(
    tables: InvarianceTable | Mapping[str, InvarianceTable], *, digits: int = 2,
    show_ci: bool = False,
) -> str:
    """Markdown table like the seed's: one row per head, one column per op, then ``Avg``.

    Given ``{model name: table}`` the rows are (model, head) and the columns are the union of the
    tables' ops (a missing cell is ``-``). ``show_ci`` appends ``± ci95`` to each cell.
    """
    named = {"": tables} if isinstance(tables, InvarianceTable) else dict(tables)
    if not named:
        raise TympanError("no invariance tables to format")
    ops = list(dict.fromkeys(op for tab in named.values() for op in tab.ops))
    with_model = not isinstance(tables, InvarianceTable)
    header = (["Model"] if with_model else []) + ["Head"] + ops + ["Avg"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model_name, tab in named.items():
        for task in tab.tasks:
            row = [model_name] if with_model else []
            row.append(task)
            for op in ops + [AVG]:
                value = tab.distances[task].get(op) if op == AVG or op in tab.ops else None
                if value is None:
                    row.append("-")
                    continue
                cell = f"{value:.{digits}f}"
                ci = tab.ci95[task].get(op)
                if show_ci and ci is not None and math.isfinite(ci):
                    cell += f" ± {ci:.{digits}f}"
                row.append(cell)
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)
