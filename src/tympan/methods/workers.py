"""Multitask self-supervision with workers that regress pretext-task labels frame by frame.

Zaiem & Parcollet, "Pretext-task selection by conditional independence"
(``../shared/seeds/004_f3e19d7efff003e6.txt``). After the selection (section III, ``tympan
pretext select``) gives each pretext-task label ``Z_i`` a weight ``lambda_i``, "the SSL model
learns to predict the selected pretext-task labels. For every one of those, the loss is
multiplied by the corresponding assigned weight" (section IV-B). Two objectives:

* ``pase`` -- the PASE-like model, eq. (11):
  ``L = MSE_mel + MSE_mfcc + sum_i lambda_i l1(Z_i)``: workers reconstruct the clean crop's
  log-mel frames and compute its MFCCs (``params.n_mfcc``, 40 in the seed) besides the labels.
* ``pretext_workers`` -- the weighted workers alone, ``sum_i lambda_i l1(Z_i)``, to attach to
  any other objective as in the seed's wav2vec 2.0 extension, eq. (12):
  ``L = L_ssl + sum_i lambda_i l1(Z_i)`` (``tympan pretrain --pretext-weights`` appends it).

**Workers** ("small predictors limited in capacity", section IV-A; "one dense layer that predict
the selected pretext task labels", appendix A) read the encoder's frames ``[B, T', D]``
(:meth:`~tympan.models.encoder.Encoder.frames`) of the (augmented) view; there is one per label,
a linear layer by default (``head.num_layers``), run together as one grouped batched op.

**Targets** are the labels of the *clean* crop (as PASE): the frames of the labels file
(``tympan pretext labels``, 10 ms hop) under the crop, gathered for the whole batch in one
indexing op from a device table (:class:`FrameLabels`) and averaged to the encoder's ``T'``
frames. A clip shorter than the crop was tiled by :func:`tympan.data.dataset.fit_length`, so crop
sample ``s`` reads the file at ``s mod length``. Every label is z-scored over the corpus' frames
so that the ``l1`` terms are comparable and ``lambda_i`` alone sets their balance.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tympan.augment.pipeline import Views
from tympan.config import Recipe
from tympan.errors import ConfigError, TympanError
from tympan.methods.base import PretextTask, TaskOutput
from tympan.models.encoder import Encoder
from tympan.objectives.regression import dct_matrix, multitask_ssl_loss, weighted_workers

#: objectives whose workers regress the frame labels of ``recipe.pretext``
LABEL_OBJECTIVES: frozenset[str] = frozenset({"pretext_workers", "pase"})


# -- the labels table -----------------------------------------------------------------------------


@dataclass
class FrameLabels:
    """Frame labels of the training items, standardised, ready to gather on the device.

    ``frames [F, K]`` concatenates item ``i``'s ``lengths[i]`` frames from ``offsets[i]``, in
    the order of the dataset's items; columns follow ``names``. ``mean``/``std`` are the corpus
    statistics each column was z-scored with. Not a module buffer on purpose: it is rebuilt from
    the labels file on every start (checkpoints stay small) and DDP does not broadcast it at
    every step (it broadcasts module buffers).
    """

    names: tuple[str, ...]
    frames: Tensor
    offsets: Tensor
    lengths: Tensor
    hop_seconds: float
    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def from_file(
        cls, path: str | Path, names: Sequence[str], item_paths: Sequence[str | Path]
    ) -> FrameLabels:
        """The rows of ``item_paths`` (dataset order) and columns ``names`` of a labels file
        written by ``tympan pretext labels``; TympanError names the first file without labels."""
        from tympan.pretext.labels import PretextLabels

        labels = PretextLabels.load(path)
        return cls.from_labels(labels, names, item_paths, source=str(path))

    @classmethod
    def from_labels(
        cls, labels: Any, names: Sequence[str], item_paths: Sequence[str | Path], source: str = ""
    ) -> FrameLabels:
        """As :meth:`from_file` from a loaded :class:`~tympan.pretext.labels.PretextLabels`."""
        where = source or "the pretext labels"
        missing = [n for n in names if n not in labels.names]
        if missing:
            raise TympanError(
                f"{where} has no label {missing[0]!r} (it has {', '.join(labels.names)}); run "
                f"tympan pretext labels with that candidate, or select among the labels it has"
            )
        try:
            rows = labels.index_of([str(p) for p in item_paths])
        except TympanError as exc:
            raise TympanError(f"{where}: {exc}") from None
        cols = [list(labels.names).index(n) for n in names]
        offsets = np.asarray(labels.offsets, dtype=np.int64)
        lengths = (offsets[1:] - offsets[:-1])[rows]
        if (lengths < 1).any():
            bad = item_paths[int(np.argmax(lengths < 1))]
            raise TympanError(f"{where}: {bad} has no label frames; re-run tympan pretext labels")
        new_offsets = np.concatenate([[0], np.cumsum(lengths)])
        # source row of every output frame, vectorised: item i's frames are a contiguous range
        src = np.repeat(offsets[:-1][rows] - new_offsets[:-1], lengths) + np.arange(new_offsets[-1])
        frames = np.asarray(labels.frames, dtype=np.float64)[src][:, cols]
        mean = frames.mean(axis=0)
        std = frames.std(axis=0)
        std = np.where(std > 1e-12, std, 1.0)  # a constant label stays 0, never NaN
        frames = (frames - mean) / std
        return cls(
            names=tuple(names), frames=torch.from_numpy(frames.astype(np.float32)),
            offsets=torch.from_numpy(new_offsets[:-1].astype(np.int64)),
            lengths=torch.from_numpy(lengths.astype(np.int64)),
            hop_seconds=float(labels.hop_seconds), mean=mean, std=std,
        )

    def to(self, device: torch.device) -> FrameLabels:
        """This table on ``device`` (a no-op when it is there already)."""
        if self.frames.device == device:
            return self
        return FrameLabels(self.names, self.frames.to(device), self.offsets.to(device),
                           self.lengths.to(device), self.hop_seconds, self.mean, self.std)

    def gather(
        self, index: Tensor, start: Tensor, file_length: Tensor | None, num_samples: int,
        sample_rate: int,
    ) -> Tensor:
        """Label frames under each crop ``[B, n, K]`` (:func:`gather_frame_labels`)."""
        return gather_frame_labels(
            self.frames, self.offsets, self.lengths, index, start, file_length, num_samples,
            self.hop_seconds * sample_rate,
        )


def gather_frame_labels(
    frames: Tensor, offsets: Tensor, lengths: Tensor, index: Tensor, start: Tensor,
    file_length: Tensor | None, num_samples: int, hop_samples: float,
) -> Tensor:
    """The label frames under a batch of crops, in one indexing op: ``[B, n, K]``.

    Crop ``b`` of item ``index[b]`` starts at sample ``start[b]`` of a file of
    ``file_length[b]`` samples and is ``num_samples`` long; its label slot ``j`` (``n =
    ceil(num_samples / hop_samples)`` slots of one hop) begins at file sample
    ``p = (start + floor(j hop)) mod file_length`` (the modulo follows the tiling of short clips)
    and reads frame ``min(floor(p / hop), lengths - 1)``. Without ``file_length`` the file is
    taken to be ``lengths * hop`` samples long.
    """
    device = frames.device
    index = index.to(device=device, dtype=torch.long)
    start = start.to(device=device, dtype=torch.long)
    n = max(1, math.ceil(num_samples / hop_samples - 1e-9))
    steps = torch.floor(torch.arange(n, device=device, dtype=torch.float64) * hop_samples).long()
    frames_of = lengths[index]
    if file_length is None:
        total = torch.floor(frames_of.double() * hop_samples).long()
    else:
        total = file_length.to(device=device, dtype=torch.long)
    pos = (start[:, None] + steps[None, :]) % total.clamp_min(1)[:, None]
    frame = torch.floor(pos.double() / hop_samples).long()
    frame = torch.minimum(frame, (frames_of - 1)[:, None])
    return frames[offsets[index][:, None] + frame]


def resample_frames(x: Tensor, num_frames: int) -> Tensor:
    """``[B, n, K] -> [B, num_frames, K]`` by adaptive average pooling over time (each output
    frame averages the input frames it covers; upsampling repeats them)."""
    if x.shape[1] == num_frames:
        return x
    return F.adaptive_avg_pool1d(x.transpose(1, 2).float(), num_frames).transpose(1, 2)


def read_selection(path: str | Path) -> tuple[dict[str, float], str | None]:
    """``(weights {name: lambda}, labels file or None)`` of a selection written by ``tympan
    pretext select`` (keys ``weights`` and ``settings.labels_file``; see seed 004, section III)."""
    p = Path(path)
    if not p.is_file():
        raise TympanError(f"{p}: no such pretext weights file; create it with tympan pretext select")
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise TympanError(f"{p}: cannot be read as JSON ({exc}); re-run tympan pretext select") from None
    weights = data.get("weights") if isinstance(data, dict) else None
    if not isinstance(weights, dict) or not weights:
        raise TympanError(f"{p}: no 'weights' mapping {{label: weight}}; is it the output of "
                          f"tympan pretext select?")
    out: dict[str, float] = {}
    for name, w in weights.items():
        if not isinstance(w, (int, float)) or isinstance(w, bool) or not math.isfinite(w) or w < 0:
            raise TympanError(f"{p}: weight of {name!r} must be a finite number >= 0, got {w!r}")
        out[str(name)] = float(w)
    settings = data.get("settings") if isinstance(data.get("settings"), dict) else {}
    labels = settings.get("labels_file")
    if labels is not None:
        labels_path = Path(str(labels))
        if not labels_path.is_absolute() and not labels_path.exists():
            labels_path = p.parent / labels_path  # written relative to the selection's folder
        labels = str(labels_path)
    return out, labels


# -- heads ----------------------------------------------------------------------------------------


class WorkerHeads(nn.Module):
    """``K`` independent frame-wise MLPs ``D -> 1`` (one per label) run as one grouped op.

    Each has ``num_layers`` layers (hidden ones of ``hidden_dim`` units with LeakyReLU, the
    seed's activation); ``num_layers=1`` is the seed's "one dense layer" per label. Weights are
    stacked ``[K, in, out]`` and applied with ``einsum``, so no Python loop runs over labels.
    Initialised as ``nn.Linear``.
    """

    def __init__(self, in_dim: int, num_workers: int, hidden_dim: int = 256,
                 num_layers: int = 1, negative_slope: float = 0.01) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError("WorkerHeads needs at least one layer")
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [1]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for a, b in zip(dims[:-1], dims[1:]):
            bound = 1.0 / math.sqrt(a)
            self.weights.append(nn.Parameter(torch.empty(num_workers, a, b).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(num_workers, b).uniform_(-bound, bound)))
        self.negative_slope = negative_slope

    def forward(self, frames: Tensor) -> Tensor:
        """``frames [B, T, D]`` -> predictions ``[B, T, K]``."""
        h = torch.einsum("btd,kde->btke", frames, self.weights[0]) + self.biases[0]
        for w, b in zip(self.weights[1:], self.biases[1:]):
            h = F.leaky_relu(h, self.negative_slope)
            h = torch.einsum("btkd,kde->btke", h, w) + b
        return h.squeeze(-1)


def frame_mlp(in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 1,
              negative_slope: float = 0.01) -> nn.Sequential:
    """A frame-wise MLP ``[B, T, in_dim] -> [B, T, out_dim]`` with LeakyReLU hidden layers (the
    mel and MFCC workers of eq. 11)."""
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(num_layers - 1):
        layers += [nn.Linear(dim, hidden_dim), nn.LeakyReLU(negative_slope)]
        dim = hidden_dim
    layers.append(nn.Linear(dim, out_dim))
    return nn.Sequential(*layers)


# -- tasks ----------------------------------------------------------------------------------------


class _FrameWorkersTask(PretextTask):
    """Shared parts of the worker objectives: the label workers, the labels table, the frames."""

    head_defaults = {"hidden_dim": 256, "num_layers": 1}
    param_defaults: dict[str, Any] = {"views": 2}
    #: run before the other tasks of a step: its backbone pass (frames of both views) also fills
    #: the pooled cache that two-view objectives read (``PretextTask.encode_pair``)
    runs_first = True
    objective = ""

    def __init__(self, name: str, embed_dim: int, head: dict[str, Any], params: dict[str, Any],
                 recipe: Recipe) -> None:
        super().__init__(name)
        self.head_cfg, self.params = self.options(head, params)
        for key in ("hidden_dim", "num_layers"):
            v = self.head_cfg[key]
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"recipe field 'tasks[{name}].head.{key}' must be an integer "
                                  f">= 1, got {v!r}")
        if self.params["views"] not in (1, 2):
            raise ConfigError(f"recipe field 'tasks[{name}].params.views' must be 1 (the first "
                              f"view) or 2 (both views), got {self.params['views']!r}")
        self.num_views = int(self.params["views"])
        self.sample_rate = recipe.audio.sample_rate
        #: label names in worker order, and their weights lambda_i (recipe ``pretext.weights``)
        self.names: tuple[str, ...] = tuple(recipe.pretext.weights)
        self.register_buffer(
            "lambdas", torch.tensor([float(w) for w in recipe.pretext.weights.values()]),
            persistent=False,
        )
        self.label_heads: WorkerHeads | None = None
        if self.names:
            self.label_heads = WorkerHeads(
                embed_dim, len(self.names), self.head_cfg["hidden_dim"], self.head_cfg["num_layers"]
            )
        self._labels: FrameLabels | None = None

    def use_labels(self, labels: FrameLabels | None) -> None:
        """Give the task the frame-label table of the training items (rows in dataset order)."""
        if labels is not None and tuple(labels.names) != self.names:
            raise TympanError(
                f"task '{self.name}': the labels table has {', '.join(labels.names)} but recipe "
                f"field 'pretext.weights' names {', '.join(self.names)}"
            )
        self._labels = labels

    def frames(self, encoder: Encoder, views: Views) -> Tensor:
        """Encoder frames ``[V B, T', D]`` of the first view (``V = 1``) or both views (``V =
        2``, one pass over ``2B`` whose pooled output is left in ``views.cache`` for
        two-view objectives)."""
        if self.num_views == 1:
            return encoder.frames(views.view1, self.name)
        x = torch.cat([views.view1, views.view2])
        frames, pooled = encoder.frames_and_pooled(x, self.name)
        views.cache.setdefault((id(encoder), encoder.path_key(self.name)), pooled)
        return frames

    def label_targets(self, views: Views, num_frames: int) -> Tensor:
        """Standardised labels of the clean crops at the encoder's frame rate ``[B, T', K]``."""
        if self._labels is None:
            raise TympanError(
                f"task '{self.name}' (objective {self.objective}) has no frame labels: pretrain "
                f"with --pretext-weights weights.json (from tympan pretext select), or set recipe "
                f"field 'pretext.labels' to the file written by tympan pretext labels"
            )
        if views.index is None or views.start is None or views.clean is None:
            raise TympanError(
                f"task '{self.name}' (objective {self.objective}) needs each crop's item index and "
                f"start, which only 'views.kind: augment' provides; 'views.kind: same_track' "
                f"cannot be combined with pretext workers"
            )
        table = self._labels.to(views.clean.device)
        self._labels = table  # moved once, then reused
        raw = table.gather(views.index, views.start, views.length, views.clean.shape[1],
                           self.sample_rate)
        return resample_frames(raw, num_frames)

    def label_prediction(self, frames: Tensor, views: Views) -> tuple[Tensor, Tensor]:
        """``(worker predictions, standardised targets)``, both ``[V B, T', K]``."""
        assert self.label_heads is not None
        with torch.no_grad():
            target = self.label_targets(views, frames.shape[1])
        target = target.repeat(frames.shape[0] // target.shape[0], 1, 1)  # both views: same labels
        return self.label_heads(frames), target

    def worker_logs(self, per: Tensor) -> dict[str, Tensor]:
        """Each worker's ``l1`` as ``l1_<label>``."""
        return {f"l1_{n}": per[k] for k, n in enumerate(self.names)}


class PretextWorkersTask(_FrameWorkersTask):
    """``pretext_workers``: ``loss = sum_i lambda_i l1(Z_i)`` (seed 004, eq. 12's workers term).

    With the default ``params.views: 2`` the workers read both augmented views in the pass that
    a two-view objective of the same recipe (SimCLR, BYOL, ...) reuses, so attaching the workers
    costs no extra backbone pass.
    """

    objective = "pretext_workers"

    def __init__(self, name: str, embed_dim: int, head: dict[str, Any], params: dict[str, Any],
                 recipe: Recipe) -> None:
        super().__init__(name, embed_dim, head, params, recipe)
        if not self.names:
            raise ConfigError(
                f"task '{name}' (objective pretext_workers) has no labels to regress: recipe "
                f"field 'pretext.weights' is empty; pretrain with --pretext-weights weights.json"
            )

    def forward(self, encoder: Encoder, views: Views) -> TaskOutput:
        pred, target = self.label_prediction(self.frames(encoder, views), views)
        loss, per = weighted_workers(pred, target, self.lambdas)
        return TaskOutput(loss, self.worker_logs(per))


class PASETask(_FrameWorkersTask):
    """``pase``: eq. (11), ``MSE_mel + MSE_mfcc + sum_i lambda_i l1(Z_i)`` (seed 004, IV-B).

    The mel worker reconstructs the clean crop's log-mel frames (the front end's first channel,
    averaged to the encoder's ``T'`` frames); the MFCC worker predicts their first ``n_mfcc``
    orthonormal DCT-II coefficients. ``mel_weight``/``mfcc_weight`` scale the two MSE terms (1 in
    the seed). With an empty ``pretext.weights`` this is the PASE-like model with its two
    reconstruction workers only. Reads the first view by default (``params.views: 1``).
    """

    param_defaults = {"views": 1, "n_mfcc": 40, "mel_weight": 1.0, "mfcc_weight": 1.0}
    objective = "pase"

    def __init__(self, name: str, embed_dim: int, head: dict[str, Any], params: dict[str, Any],
                 recipe: Recipe) -> None:
        super().__init__(name, embed_dim, head, params, recipe)
        n_mels, n_mfcc = recipe.frontend.n_mels, self.params["n_mfcc"]
        if not isinstance(n_mfcc, int) or isinstance(n_mfcc, bool) or not 1 <= n_mfcc <= n_mels:
            raise ConfigError(f"recipe field 'tasks[{name}].params.n_mfcc' must be an integer in "
                              f"[1, frontend.n_mels={n_mels}], got {n_mfcc!r}")
        for key in ("mel_weight", "mfcc_weight"):
            v = self.params[key]
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
                raise ConfigError(f"recipe field 'tasks[{name}].params.{key}' must be >= 0, got {v!r}")
        h, layers = self.head_cfg["hidden_dim"], self.head_cfg["num_layers"]
        self.mel_head = frame_mlp(embed_dim, h, n_mels, layers)
        self.mfcc_head = frame_mlp(embed_dim, h, n_mfcc, layers)
        self.register_buffer("dct", dct_matrix(n_mels, n_mfcc), persistent=False)

    def forward(self, encoder: Encoder, views: Views) -> TaskOutput:
        clean = views.clean if views.clean is not None else views.view1
        frames = self.frames(encoder, views)  # [V B, T', D]
        with torch.no_grad():
            logmel = encoder.frontend(clean)[:, 0]  # [B, n_mels, T]
            mel = resample_frames(logmel.transpose(1, 2), frames.shape[1])  # [B, T', n_mels]
            mfcc = mel @ self.dct  # DCT and time averaging are linear: their order is free
        reps = frames.shape[0] // clean.shape[0]
        label_pred = labels = None
        if self.label_heads is not None:
            label_pred, labels = self.label_prediction(frames, views)
        loss, parts = multitask_ssl_loss(
            self.mel_head(frames), mel.repeat(reps, 1, 1), self.mfcc_head(frames),
            mfcc.repeat(reps, 1, 1), label_pred, labels, self.lambdas,
            float(self.params["mel_weight"]), float(self.params["mfcc_weight"]),
        )
        logs: dict[str, Tensor] = {"mse_mel": parts["mse_mel"], "mse_mfcc": parts["mse_mfcc"]}
        if "l1" in parts:
            logs.update(workers=parts["workers"], **self.worker_logs(parts["l1"]))
        # no embed_std / effective_rank: the collapse monitor's thresholds are set for the
        # normalised embeddings of joint-embedding objectives, which a regression model's
        # uncentred frames at initialisation fall below without having collapsed
        return TaskOutput(loss, logs)
