"""From a manifest and its pretext labels to a pretext-task selection (seed 004, sections III-V).

Zaiem & Parcollet, "Pretext-task selection by conditional independence"
(``../shared/seeds/004_f3e19d7efff003e6.txt``). :func:`selection_inputs` builds the three
inputs of :func:`tympan.pretext.hsic.select_pretext_tasks`: the Gaussian-downsampled log-mel
``X`` of every clip (eq. 1, ``GD``), the clip means ``z`` of every candidate (section III-B)
and the downstream class ``y``; :func:`select_from_data` runs a selection method on them and
records where the labels came from, so that pretraining can find the frame labels later.

Front end (seed appendix: "80-band Mel spectrograms, with 25ms windows and 10ms stride" at
16 kHz): :class:`tympan.audio.frontend.LogMel` with ``n_fft`` = 25 ms, hop = 10 ms, natural-log
mel power (no per-clip z-normalisation), batched over length-sorted chunks of clips, then
:func:`~tympan.pretext.hsic.downsample_logmel` over each clip's valid frames.

**Centring before the cosine kernel** (``centre``; the seed does not say). Raw log-mel values
are large and mostly of one sign, so every pair of clips has a cosine similarity close to 1.
Three options were measured on the embedded corpus (``synth_corpus(scale="full", seed=0)``,
train split: 24 classes x 24 clips, the ten seed candidates; stability = mean Kendall tau
between the candidate ranking of 10 random subsets and the ranking on all the data, via
:func:`tympan.pretext.robustness.robustness_study`)::

    centre    off-diagonal cosine   tau, 6 / 12 clips per class   tau, 6 / 12 classes   loudness rank
    none      0.93 +- 0.05          0.72 / 0.79                   0.52 / 0.75           10 of 10
    clip      0.14 +- 0.34          0.60 / 0.83                   0.59 / 0.84            4 of 10
    dataset   0.02 +- 0.50          0.79 / 0.89                   0.70 / 0.76           10 of 10

* ``"none"``: the nearly constant kernel gives the least stable ranking.
* ``"clip"`` (remove each clip's mean over mel and time) removes the clip's gain from ``X``:
  loudness then looks artificially independent of ``X`` and jumps from last to 4th.
* ``"dataset"`` (**default**): remove the dataset's mean log-mel per mel band (the average
  spectrum over every clip and frame used). Cosine similarities spread over [-1, 1], level
  information stays in ``X`` (same ranking of loudness as raw), and the ranking is the most
  stable on average (mean tau 0.79 against 0.69 raw and 0.72 per clip).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from tympan.audio.frontend import LogMel
from tympan.config import FrontendConfig
from tympan.data.manifest import Manifest, read_manifest
from tympan.data.scan import scan_items
from tympan.errors import ConfigError, ManifestError, TympanError
from tympan.pretext.hsic import (
    DEFAULT_LENGTH,
    DEFAULT_MAX_PER_CLASS,
    PretextSelection,
    downsample_logmel,
    select_pretext_tasks,
)
from tympan.pretext.labels import PretextLabels

__all__ = [
    "DEFAULT_N_MELS",
    "Centre",
    "format_selection",
    "logmel_features",
    "select_from_data",
    "selection_inputs",
]

DEFAULT_N_MELS = 80
"""Mel bands of the data kernel's spectrogram (seed appendix: 80-band Mel spectrograms)."""

Centre = Literal["dataset", "clip", "none"]

_CHUNK_SAMPLES = 1 << 22  # padded waveform samples per front-end batch (about 16 MB of float32)


def _labels_obj(labels: PretextLabels | str | Path) -> tuple[PretextLabels, str | None]:
    if isinstance(labels, PretextLabels):
        return labels, None
    return PretextLabels.load(labels), os.path.abspath(os.fspath(labels))


def _subsample(y: np.ndarray, max_per_class: int | None, seed: int) -> np.ndarray:
    """Sorted indices keeping at most ``max_per_class`` clips per class (seeded, per class)."""
    if max_per_class is None:
        return np.arange(len(y))
    if int(max_per_class) != max_per_class or max_per_class < 2:
        raise ConfigError(f"max_per_class must be an integer >= 2 (or None), got {max_per_class!r}")
    rng = np.random.default_rng(seed)
    classes, inv = np.unique(y, return_inverse=True)
    keep = []
    for c in range(len(classes)):  # one draw per class, in sorted class order
        m = np.flatnonzero(inv == c)
        if len(m) > max_per_class:
            m = np.sort(rng.choice(m, int(max_per_class), replace=False))
        keep.append(m)
    return np.sort(np.concatenate(keep))


def logmel_features(
    waves: Sequence[np.ndarray],
    sample_rate: int,
    *,
    n_mels: int = DEFAULT_N_MELS,
    length: int = DEFAULT_LENGTH,
    centre: Centre = "dataset",
) -> Tensor:
    """``X [N, n_mels * length]``: Gaussian-downsampled log-mel of each clip (seed eq. 1).

    Clips are sorted by length and transformed in padded batches by one
    :class:`~tympan.audio.frontend.LogMel` (25 ms window, 10 ms hop); only each clip's own
    frames (``1 + n // hop``) enter :func:`downsample_logmel`. ``centre`` as in the module
    docstring.
    """
    if centre not in ("dataset", "clip", "none"):
        raise ConfigError(f"centre must be 'dataset', 'clip' or 'none', got {centre!r}")
    if not waves:
        raise TympanError("logmel_features: no clips")
    n_fft = int(round(0.025 * sample_rate))
    hop = int(round(0.010 * sample_rate))
    frontend = LogMel(FrontendConfig(n_mels=int(n_mels), n_fft=n_fft, hop_length=hop, f_min=0.0, f_max=None,
                                     channels=1, normalize=False), sample_rate)
    n = np.array([len(w) for w in waves])
    order = np.argsort(n, kind="stable")
    out = torch.empty((len(waves), int(n_mels), int(length)), dtype=torch.float32)
    start = 0
    with torch.no_grad():
        while start < len(order):  # length-sorted chunks bound padding and memory
            stop = start + 1
            while stop < len(order) and (stop - start + 1) * n[order[stop]] <= _CHUNK_SAMPLES:
                stop += 1
            idx = order[start:stop]
            batch = torch.nn.utils.rnn.pad_sequence([torch.from_numpy(np.asarray(waves[i], np.float32))
                                                     for i in idx], batch_first=True)
            # a clip shorter than n_fft is zero-padded by the frontend's centred STFT
            mel = frontend(batch)[:, 0]  # [b, n_mels, frames]
            frames = torch.as_tensor(1 + n[idx] // hop).clamp(max=mel.shape[-1])
            out[torch.as_tensor(idx)] = downsample_logmel(mel, int(length), lengths=frames, flatten=False)
            start = stop
    if centre == "dataset":
        out = out - out.mean(dim=(0, 2), keepdim=True)  # the dataset's mean log-mel per band
    elif centre == "clip":
        out = out - out.mean(dim=(1, 2), keepdim=True)
    return out.flatten(1)


def selection_inputs(
    data: str | Path | Manifest,
    labels: PretextLabels | str | Path,
    *,
    sample_rate: int = 16000,
    n_mels: int = DEFAULT_N_MELS,
    length: int = DEFAULT_LENGTH,
    split: str | None = None,
    max_per_class: int | None = DEFAULT_MAX_PER_CLASS,
    seed: int = 0,
    centre: Centre = "dataset",
    skip_bad: bool = False,
    workers: int = 2,
    progress: bool = True,
) -> tuple[Tensor, dict[str, np.ndarray], np.ndarray, list[str]]:
    """``(X [N, n_mels*length], {name: z [N]}, y [N], paths)`` for the HSIC selection.

    Args:
        data: manifest CSV / class folder (or a read :class:`Manifest`); its ``label`` column is
            the downstream class ``y`` (one label per clip, at least 2 clips per class).
        labels: a :class:`PretextLabels` or the path of a labels file from
            ``tympan pretext labels``; rows are matched to manifest items by absolute path.
        split: use only this split of the manifest.
        max_per_class: at most this many clips per class (seeded subset, drawn before any audio
            is decoded); ``None`` keeps all. The seed (section IX) finds 100 per class enough.
        centre: centring of the log-mel before the cosine kernel (module docstring).
        skip_bad: leave out audio that cannot be decoded (else the first raises).
        workers: decoding threads.
    """
    lab, _ = _labels_obj(labels)
    manifest = data if isinstance(data, Manifest) else read_manifest(data, check_files=not skip_bad)
    if split is not None:
        manifest = manifest.select(split)
    items = list(manifest)
    try:
        y_all = np.array([it.label for it in items])
    except ManifestError as exc:
        raise ManifestError(f"{manifest.source}: {exc}; pretext selection needs one downstream class per clip "
                            "in the 'label' column") from None
    classes, counts = np.unique(y_all, return_counts=True)
    if len(classes) < 1:
        raise ManifestError(f"{manifest.source}: no labelled clips")
    small = [(str(c), int(k)) for c, k in zip(classes, counts) if k < 2]
    if small:
        raise ManifestError(f"{manifest.source}: class {small[0][0]!r} has {small[0][1]} clip; the per-class HSIC "
                            "needs at least 2 clips per class (add clips or drop the class)")
    keep = _subsample(y_all, max_per_class, seed)
    items = [items[i] for i in keep]
    rows = lab.index_of([it.path for it in items])  # raises "run tympan pretext labels first"
    report = scan_items(items, sample_rate, skip_bad=skip_bad, keep_audio=True, num_workers=workers,
                        progress=progress, desc="pretext inputs")
    if report.skipped:
        ok = {str(it.path) for it in report.items}
        sel = [k for k, it in enumerate(items) if str(it.path) in ok]
        items, rows = [items[k] for k in sel], rows[sel]
    X = logmel_features(report.audio or [], sample_rate, n_mels=n_mels, length=length, centre=centre)
    z = {name: lab.clip_means[rows, k].astype(np.float64) for k, name in enumerate(lab.names)}
    y = np.array([it.label for it in items])
    return X, z, y, [str(it.path) for it in items]


def select_from_data(
    data: str | Path | Manifest,
    labels: PretextLabels | str | Path,
    method: Literal["softmax", "sparsemax", "all", "mrmr", "rfe"] = "sparsemax",
    *,
    candidates: Sequence[str] | None = None,
    sample_rate: int = 16000,
    n_mels: int = DEFAULT_N_MELS,
    length: int = DEFAULT_LENGTH,
    split: str | None = None,
    max_per_class: int | None = DEFAULT_MAX_PER_CLASS,
    p: int = 4,
    steps: int = 300,
    lr: float = 0.05,
    sigma: float | Literal["median"] | None = None,
    centre: Centre = "dataset",
    seed: int = 0,
    skip_bad: bool = False,
    progress: bool = True,
    out: str | Path | None = None,
) -> PretextSelection:
    """Select and weight pretext tasks for the downstream task of ``data`` (seed sections III-V).

    Runs :func:`selection_inputs` then :func:`~tympan.pretext.hsic.select_pretext_tasks`;
    ``candidates`` restricts the labels used (default: all in the labels file). The record's
    ``settings`` additionally hold ``labels_file`` (absolute path, or ``None`` for an in-memory
    :class:`PretextLabels`), ``data``, ``split`` and the front end, so pretraining can load the
    frame labels of the selected candidates. Written as JSON to ``out`` when given.
    """
    lab, labels_file = _labels_obj(labels)
    if candidates is not None:
        lab = lab.select(list(candidates))
    X, z, y, paths = selection_inputs(data, lab, sample_rate=sample_rate, n_mels=n_mels, length=length,
                                      split=split, max_per_class=max_per_class, seed=seed, centre=centre,
                                      skip_bad=skip_bad, progress=progress)
    sel = select_pretext_tasks(X, z, y, method, p=p, steps=steps, lr=lr, sigma=sigma,
                               max_per_class=max_per_class, seed=seed)
    data_path = data.source if isinstance(data, Manifest) else data
    sel.settings.update(
        labels_file=labels_file,
        data=os.path.abspath(os.fspath(data_path)),
        split=split,
        n_clips=len(paths),
        frontend={"n_mels": int(n_mels), "window_ms": 25, "hop_ms": 10, "length": int(length),
                  "centre": centre, "sample_rate": int(sample_rate)},
        labels_hop_seconds=lab.hop_seconds,
    )
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        sel.to_json(out)
    return sel


def format_selection(selection: PretextSelection) -> str:
    """Human table: rank, candidate, weight, CI estimate (lower = more useful, seed section III-B)."""
    rows = [(str(i + 1), name, f"{selection.weights[name]:.3f}", f"{selection.ci.get(name, math.nan):.3e}")
            for i, name in enumerate(selection.ranking)]
    head = ("rank", "candidate", "weight", "CI estimate")
    width = [max(len(h), *(len(r[j]) for r in rows)) for j, h in enumerate(head)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if j != 1 else c.ljust(w) for j, (c, w) in enumerate(zip(cells, width)))

    text = [f"pretext-task selection: {selection.method} (CI = HSIC(X, Z | Y); lower = more useful)",
            line(head), line(["-" * w for w in width])]
    text += [line(r) for r in rows]
    chosen = selection.selected()
    text.append(f"selected: {', '.join(chosen) if chosen else 'none'}")
    return "\n".join(text)
