"""Linear and MLP probes on frozen embeddings: music tagging and classification.

Protocol of the multi-view music-tagging study (``../shared/seeds/003_302de149e7ba2620.txt``,
"3. EVALUATION": "3.1. Downstream Tasks", "3.2. Pretext to Downstream Transfer Learning" and
"3.3. Limited Data Music Tagging"):

* the encoder is frozen; segment embeddings are averaged per track (:func:`average_by_track`)
  and a probe is trained on the track embeddings ("an MLP that operates directly on the average
  embedding space of each track ... we optimize 1024 x N weights", i.e. one linear layer);
* tagging is multi-label with binary cross-entropy; batch size 256, "25 epochs of 128 steps",
  and the checkpoint with the best **validation loss** is the one scored on the test set;
* metrics: macro ROC-AUC and mAP (macro average precision);
* uncertainty by bootstrapping: 50% of the test set drawn **without replacement**, 50 times,
  reported as the mean and standard deviation of the 50 values (:func:`bootstrap`);
* limited data: the training set subsampled four times at 1%, 5%, 10% and 20%, one probe per
  subset, scored on the full test set, plus the full training set as the reference
  (:func:`limited_data`).

Where this module goes beyond or departs from the seed, and why:

* ``kind="mlp"`` adds one hidden layer (ReLU, ``hidden_dim=512``); the seed's probe is linear
  (the default here). The seed gives no learning rate, weight decay or hidden width: Adam with
  ``lr=1e-3`` (Adam's own default) and no weight decay are our choices.
* Embeddings are standardised with the training split's mean and standard deviation (the seed
  does not say; it makes one learning rate work across encoders).
* ``patience`` adds optional early stopping on the validation loss; the default (``None``)
  trains all 25 epochs and keeps the best epoch, as the seed does.
* A class with no positive or no negative in the evaluated (sub)set has no ROC-AUC or AP; it is
  left out of the macro averages and the number left out is reported, never a silent NaN.
* The bootstrap standard deviation is that of the 50 values (``ddof=0``, "the standard deviation
  of all samples"). The seed reports only means for limited data; here each fraction also gets
  the standard deviation over its four draws (``ddof=1``: four independent trainings).
* Limited-data subsets hold ``round(fraction * N)`` examples but never fewer than 2 (tagging) or
  than one per class (classification), so "1%" of a small set can be more than 1%; every run
  records its ``n_train``. Subsets depend only on the seed and the training targets, never on
  the model, so every model is trained on the same subsets.
* ``task="classification"`` (single-label, cross-entropy, accuracy) reuses the same machinery
  for the non-tagging datasets of the toolkit.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator
from sklearn.metrics import average_precision_score, roc_auc_score
from torch import nn

from tympan.errors import ConfigError, TympanError

KINDS = ("linear", "mlp")
TASKS = ("tagging", "classification")
#: Training fractions of the seed's limited-data experiment ("1%, 5%, 10%, and 20%").
LIMITED_FRACTIONS = (0.01, 0.05, 0.10, 0.20)

Split = tuple[np.ndarray, np.ndarray]


class ProbeError(TympanError):
    """Embeddings or targets that a probe cannot be trained or scored on."""


# --------------------------------------------------------------------------------------------
# labels and tracks


def label_vocabulary(labels: Iterable[Sequence[str]]) -> list[str]:
    """The sorted set of labels used by ``labels`` (one tuple of strings per item): the fixed
    class vocabulary, to be taken from the training split."""
    return sorted({label for item in labels for label in item})


def multi_hot(
    labels: Sequence[Sequence[str]], classes: Sequence[str], *, unknown: str = "error"
) -> np.ndarray:
    """``[N, C]`` float32 matrix with a 1 where item ``n`` carries ``classes[c]``.

    ``labels`` holds one tuple of strings per item (like ``Item.labels``); a bare string counts
    as one label. ``classes`` is the vocabulary (from the training split, see
    :func:`label_vocabulary`). A label outside it raises :class:`ProbeError` naming it, or is
    dropped with ``unknown="ignore"``.
    """
    if unknown not in ("error", "ignore"):
        raise ConfigError(f"unknown={unknown!r}: use 'error' or 'ignore'")
    classes = list(classes)
    if len(set(classes)) != len(classes):
        raise ProbeError("classes: the vocabulary lists a class twice; pass each class once")
    items = [(item,) if isinstance(item, str) else tuple(item) for item in labels]
    counts = np.array([len(item) for item in items], dtype=np.int64)
    flat = np.array([label for item in items for label in item], dtype=object)
    rows = np.repeat(np.arange(len(items)), counts)
    out = np.zeros((len(items), len(classes)), dtype=np.float32)
    if flat.size == 0 or not classes:
        if flat.size and unknown == "error":
            raise ProbeError(f"label {flat[0]!r} is not in the (empty) class vocabulary")
        return out
    vocab = np.array(classes, dtype=object)
    sorter = np.argsort(vocab)
    pos = np.searchsorted(vocab[sorter], flat).clip(0, len(classes) - 1)
    idx = sorter[pos]
    known = vocab[idx] == flat
    if not known.all() and unknown == "error":
        missing = sorted(set(flat[~known].tolist()))
        raise ProbeError(
            f"{len(missing)} label(s) not in the class vocabulary of {len(classes)} classes: "
            f"{', '.join(map(repr, missing[:10]))}; build the vocabulary from the training split "
            f"with every label it should know, or pass unknown='ignore' to drop them"
        )
    out[rows[known], idx[known]] = 1.0
    return out


def _track_groups(track_ids: Sequence[Any], n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(first, inverse, counts)``: for each track in order of first appearance, the index of its
    first segment; for each segment, its track's position; segments per track."""
    if len(track_ids) != n:
        raise ProbeError(
            f"track_ids has {len(track_ids)} entries but there are {n} embeddings; pass one track "
            f"id per segment"
        )
    ids = np.asarray(track_ids, dtype=object)
    missing = np.flatnonzero(np.array([t is None for t in ids.tolist()], dtype=bool))
    if missing.size:
        raise ProbeError(
            f"track_ids[{missing[0]}] is None ({missing.size} segment(s) without a track); give "
            f"every segment a track id (the manifest's 'track' column), or use the item path"
        )
    keys = np.array([str(t) for t in ids.tolist()]) if n else np.array([], dtype=str)
    _, first_sorted, inverse_sorted, counts_sorted = np.unique(
        keys, return_index=True, return_inverse=True, return_counts=True
    )
    order = np.argsort(first_sorted, kind="stable")  # sorted-unique -> first-appearance order
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return first_sorted[order], rank[inverse_sorted.reshape(-1)], counts_sorted[order]


def average_by_track(
    embeddings: np.ndarray, track_ids: Sequence[Any]
) -> tuple[np.ndarray, list[Any]]:
    """Mean segment embedding of each track, as the seed's probes use ("the average embedding
    space of each track").

    Returns ``(track_embeddings [T, D], track_ids_in_order)`` with the tracks in order of first
    appearance. Vectorised (``np.add.at``), no loop over tracks.
    """
    emb = np.asarray(embeddings)
    if emb.ndim != 2:
        raise ProbeError(f"embeddings must be [N, D], got shape {tuple(emb.shape)}")
    if emb.shape[0] == 0:
        raise ProbeError("embeddings is empty (0 segments); embed the split first")
    first, inverse, counts = _track_groups(track_ids, emb.shape[0])
    dtype = np.result_type(emb.dtype, np.float32)
    sums = np.zeros((first.size, emb.shape[1]), dtype=np.float64)
    np.add.at(sums, inverse, emb.astype(np.float64, copy=False))
    ids = list(track_ids)
    return (sums / counts[:, None]).astype(dtype), [ids[i] for i in first]


def first_by_track(values: np.ndarray, track_ids: Sequence[Any]) -> np.ndarray:
    """Per-segment ``values`` (targets) reduced to one row per track, in the order of
    :func:`average_by_track`. Segments of one track must agree; a track whose segments carry
    different targets raises :class:`ProbeError`."""
    vals = np.asarray(values)
    first, inverse, _ = _track_groups(track_ids, vals.shape[0])
    per_track = vals[first]
    differ = per_track[inverse] != vals
    if differ.ndim > 1:
        differ = differ.reshape(differ.shape[0], -1).any(axis=1)
    if differ.any():
        bad = int(np.flatnonzero(differ)[0])
        raise ProbeError(
            f"segment {bad} of track {list(track_ids)[bad]!r} has other targets than the track's "
            f"first segment; segments of one track must share their labels"
        )
    return per_track


# --------------------------------------------------------------------------------------------
# metrics


def tagging_metrics(
    y_true: np.ndarray, y_score: np.ndarray, class_names: Sequence[str] | None = None
) -> dict[str, Any]:
    """Macro ROC-AUC and mAP (macro average precision) of ``y_score [N, C]`` against multi-hot
    ``y_true [N, C]``, with scikit-learn.

    A class with no positive or no negative among the ``N`` rows has neither metric; it is left
    out of both macro averages. Returns ``roc_auc``, ``map``, ``n_classes``, ``n_evaluated``,
    ``n_excluded`` and ``excluded`` (the left-out class indices, or names if ``class_names`` is
    given). If every class is left out, both metrics are NaN and ``n_excluded == n_classes``
    says why.
    """
    yt = np.asarray(y_true)
    ys = np.asarray(y_score, dtype=np.float64)
    if yt.ndim != 2 or yt.shape != ys.shape:
        raise ProbeError(
            f"y_true {tuple(yt.shape)} and y_score {tuple(ys.shape)} must both be [N, C]"
        )
    yt = yt > 0.5
    pos = yt.sum(axis=0)
    valid = (pos > 0) & (pos < yt.shape[0])
    excluded_idx = np.flatnonzero(~valid)
    excluded: list[Any] = (
        [class_names[i] for i in excluded_idx] if class_names is not None
        else [int(i) for i in excluded_idx]
    )
    if valid.any():
        roc = float(roc_auc_score(yt[:, valid], ys[:, valid], average="macro"))
        ap = float(average_precision_score(yt[:, valid], ys[:, valid], average="macro"))
    else:
        roc = ap = math.nan
    return {
        "roc_auc": roc, "map": ap, "n_classes": int(yt.shape[1]),
        "n_evaluated": int(valid.sum()), "n_excluded": int(excluded_idx.size),
        "excluded": excluded,
    }


def classification_metrics(y_true: np.ndarray, y_score: np.ndarray) -> dict[str, float]:
    """Accuracy of scores ``[N, K]`` (argmax) or predicted class indices ``[N]``."""
    yt = np.asarray(y_true).reshape(-1)
    ys = np.asarray(y_score)
    pred = ys.argmax(axis=1) if ys.ndim == 2 else ys.reshape(-1)
    if pred.shape[0] != yt.shape[0]:
        raise ProbeError(f"y_true has {yt.shape[0]} rows but y_score has {pred.shape[0]}")
    if yt.size == 0:
        return {"accuracy": math.nan}
    return {"accuracy": float((pred == yt).mean())}


@dataclass(frozen=True)
class BootstrapEstimate:
    """Mean and standard deviation (``ddof=0``) of a metric over bootstrap draws.

    ``values [draws]`` are the per-draw metrics; draws where the metric is undefined (NaN) are
    counted in ``n_nan`` and left out of ``mean``/``std`` (both NaN if every draw is)."""

    mean: float
    std: float
    values: np.ndarray
    size: int
    n_nan: int = 0

    def to_json(self) -> dict[str, float | int]:
        return {"mean": self.mean, "std": self.std, "draws": int(self.values.size),
                "size": self.size, "n_nan": self.n_nan}


def bootstrap_indices(n: int, draws: int = 50, fraction: float = 0.5, seed: int = 0) -> np.ndarray:
    """``[draws, m]`` row indices, each row ``m = round(fraction * n)`` (at least 1) distinct
    indices of ``range(n)``: subsets drawn **without replacement**, as the seed does. One
    vectorised draw (the first ``m`` of a per-row random ranking)."""
    if n < 1:
        raise ProbeError("cannot bootstrap an empty test set")
    if draws < 1:
        raise ConfigError(f"bootstrap draws={draws}: use at least 1 draw (the seed uses 50)")
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(
            f"bootstrap fraction={fraction}: use a fraction in (0, 1] (the seed uses 0.5)"
        )
    m = max(1, int(round(fraction * n)))
    rng = np.random.default_rng(seed)
    return np.argsort(rng.random((draws, n)), axis=1)[:, :m]


def _summarise(values: np.ndarray, size: int) -> BootstrapEstimate:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return BootstrapEstimate(math.nan, math.nan, values, size, int(values.size))
    return BootstrapEstimate(
        float(finite.mean()), float(finite.std()), values, size, int(values.size - finite.size)
    )


def bootstrap_metrics(
    metrics_fn: Callable[[np.ndarray, np.ndarray], Mapping[str, float]], y_true: np.ndarray,
    y_score: np.ndarray, draws: int = 50, fraction: float = 0.5, seed: int = 0,
) -> dict[str, BootstrapEstimate]:
    """Like :func:`bootstrap` for a function returning several named metrics: every metric is
    computed on the same draws. Returns ``{name: BootstrapEstimate}`` for every numeric entry
    (other entries, such as :func:`tagging_metrics`' ``excluded`` list, are dropped)."""
    yt, ys = np.asarray(y_true), np.asarray(y_score)
    if yt.shape[0] != ys.shape[0]:
        raise ProbeError(f"y_true has {yt.shape[0]} rows but y_score has {ys.shape[0]}")
    idx = bootstrap_indices(yt.shape[0], draws, fraction, seed)
    per_draw = [dict(metrics_fn(yt[rows], ys[rows])) for rows in idx]  # one call per draw
    # numbers only: a metrics dict may carry lists (e.g. tagging_metrics' "excluded")
    names = [k for k, v in per_draw[0].items() if isinstance(v, (int, float, np.number))]
    return {
        k: _summarise(np.array([float(d[k]) for d in per_draw]), idx.shape[1]) for k in names
    }


def bootstrap(
    scores_fn: Callable[[np.ndarray, np.ndarray], float], y_true: np.ndarray,
    y_score: np.ndarray, draws: int = 50, fraction: float = 0.5, seed: int = 0,
) -> BootstrapEstimate:
    """Mean and standard deviation of ``scores_fn(y_true[s], y_score[s])`` over ``draws``
    subsets ``s`` of ``fraction`` of the rows, drawn without replacement
    (:func:`bootstrap_indices`). The seed: 50% of the test set, 50 draws, mean and std."""
    out = bootstrap_metrics(
        lambda t, s: {"value": float(scores_fn(t, s))}, y_true, y_score, draws, fraction, seed
    )
    return out["value"]


# --------------------------------------------------------------------------------------------
# the probe


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not known; use one of {', '.join(allowed)}")


def _as_embeddings(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ProbeError(f"{name} embeddings must be [N, D], got shape {tuple(arr.shape)}")
    if arr.shape[0] == 0:
        raise ProbeError(f"{name} split is empty (0 embeddings); every split needs examples")
    if arr.shape[1] == 0:
        raise ProbeError(f"{name} embeddings have 0 dimensions")
    if not np.issubdtype(arr.dtype, np.number):
        raise ProbeError(f"{name} embeddings must be numeric, got dtype {arr.dtype}")
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        raise ProbeError(
            f"{name} embeddings contain NaN or inf in {int(bad.sum())} row(s) (first: row "
            f"{int(np.flatnonzero(bad)[0])}); re-embed those clips or drop them (e.g. --skip-bad)"
        )
    return arr


def _as_targets(y: Any, task: str, n: int, name: str) -> np.ndarray:
    arr = np.asarray(y)
    if arr.shape[0:1] != (n,):
        raise ProbeError(
            f"{name} targets have {arr.shape[0] if arr.ndim else 0} rows but {name} embeddings "
            f"have {n}; pass one target per embedding"
        )
    if task == "tagging":
        if arr.ndim != 2:
            raise ProbeError(
                f"{name} targets must be multi-hot [N, C] for task='tagging', got shape "
                f"{tuple(arr.shape)}; build them with multi_hot(), or use task='classification'"
            )
        if not np.isin(arr, (0, 1)).all():
            raise ProbeError(f"{name} targets for task='tagging' must contain only 0 and 1")
        return arr.astype(np.float32)
    if arr.ndim != 1:
        raise ProbeError(
            f"{name} targets must be class indices [N] for task='classification', got shape "
            f"{tuple(arr.shape)}; use task='tagging' for multi-hot targets"
        )
    if not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise ProbeError(
                f"{name} targets must be integer class indices, got dtype {arr.dtype}; map "
                f"label strings to indices first (e.g. np.unique(labels, return_inverse=True))"
            )
    if arr.min() < 0:
        raise ProbeError(f"{name} targets contain a negative class index ({arr.min()})")
    return arr.astype(np.int64)


class Probe(BaseEstimator):
    """A linear or one-hidden-layer MLP probe on frozen embeddings, trained in torch.

    scikit-learn style: :meth:`fit` (with a validation split), :meth:`predict_proba`,
    :meth:`predict`, :meth:`score`. Embeddings are standardised with the training split's
    statistics. Each epoch is ``steps_per_epoch`` mini-batches drawn from a reshuffled stream of
    the training set (``None``: one pass); the validation loss is measured after every epoch and
    the weights of the best epoch are restored at the end (the seed's "best downstream model
    checkpoint, in terms of validation loss"). ``patience`` stops after that many epochs without
    improvement (``None``: never). Deterministic given ``seed`` (initialisation and shuffling use
    their own generators, the global RNG is left untouched).

    Defaults: ``batch_size=256``, ``max_epochs=25``, ``steps_per_epoch=128`` and the linear
    probe are the seed's; ``lr``, ``weight_decay`` and ``hidden_dim`` are not in the seed.

    Fitted attributes: ``best_epoch_`` (1-based), ``best_val_loss_``, ``epochs_run_``,
    ``history_`` (``epoch``, ``train_loss``, ``val_loss`` lists), ``n_features_in_``,
    ``n_outputs_``, ``mean_``, ``scale_``, ``model_``.
    """

    def __init__(
        self, kind: str = "linear", task: str = "tagging", hidden_dim: int = 512,
        lr: float = 1e-3, weight_decay: float = 0.0, max_epochs: int = 25,
        batch_size: int = 256, steps_per_epoch: int | None = 128, patience: int | None = None,
        seed: int = 0, device: str = "cpu",
    ) -> None:
        _check_choice("kind", kind, KINDS)
        _check_choice("task", task, TASKS)
        self.kind = kind
        self.task = task
        self.hidden_dim = hidden_dim
        self.lr = lr
        self.weight_decay = weight_decay
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.steps_per_epoch = steps_per_epoch
        self.patience = patience
        self.seed = seed
        self.device = device

    # -- helpers ------------------------------------------------------------------------------

    def _check_params(self) -> None:
        _check_choice("kind", self.kind, KINDS)
        _check_choice("task", self.task, TASKS)
        for name in ("max_epochs", "batch_size", "hidden_dim"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ConfigError(f"{name}={value!r}: use a positive integer")
        for name in ("steps_per_epoch", "patience"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (int, np.integer)) or value < 1):
                raise ConfigError(f"{name}={value!r}: use a positive integer or None")
        if not self.lr > 0:
            raise ConfigError(f"lr={self.lr!r}: use a positive learning rate (e.g. 1e-3)")
        if not self.weight_decay >= 0:
            raise ConfigError(f"weight_decay={self.weight_decay!r}: use 0 or a positive value")

    def _build(self, d: int, c: int) -> nn.Module:
        if self.kind == "linear":
            return nn.Linear(d, c)
        h = self.hidden_dim
        return nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, c))

    def _tensor(self, x: np.ndarray) -> torch.Tensor:
        t = torch.as_tensor(np.asarray(x, dtype=np.float32), device=self.device)
        return (t - self.mean_) / self.scale_

    def _loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.task == "tagging":
            return F.binary_cross_entropy_with_logits(logits, y)
        return F.cross_entropy(logits, y)

    def _target_tensor(self, y: np.ndarray) -> torch.Tensor:
        dtype = torch.float32 if self.task == "tagging" else torch.long
        return torch.as_tensor(y, dtype=dtype, device=self.device)

    @torch.no_grad()
    def _logits(self, xs: torch.Tensor, chunk: int = 16384) -> torch.Tensor:
        self.model_.eval()
        return torch.cat([self.model_(xs[i : i + chunk]) for i in range(0, xs.shape[0], chunk)])

    def _check_x(self, x: Any, name: str = "X") -> np.ndarray:
        arr = _as_embeddings(x, name)
        if arr.shape[1] != self.n_features_in_:
            raise ProbeError(
                f"{name} has {arr.shape[1]} dimensions but the probe was fitted on "
                f"{self.n_features_in_}; use embeddings from the same encoder and task"
            )
        return arr

    def _check_y(self, y: Any, n: int, name: str) -> np.ndarray:
        arr = _as_targets(y, self.task, n, name)
        if self.task == "tagging" and arr.shape[1] != self.n_outputs_:
            raise ProbeError(
                f"{name} targets have {arr.shape[1]} tags but the probe has {self.n_outputs_}; "
                f"build every split's multi-hot matrix with the training vocabulary"
            )
        if self.task == "classification" and arr.max() >= self.n_outputs_:
            raise ProbeError(
                f"{name} targets contain class {int(arr.max())} but the probe has "
                f"{self.n_outputs_} classes; pass n_classes to fit()"
            )
        return arr

    # -- scikit-learn API ---------------------------------------------------------------------

    def fit(
        self, X: Any, y: Any, X_val: Any = None, y_val: Any = None, *,
        n_classes: int | None = None,
    ) -> Probe:
        """Train on ``X [N, D]``, ``y`` (multi-hot ``[N, C]`` or class indices ``[N]``), keeping
        the weights of the epoch with the lowest loss on ``(X_val, y_val)``; without a validation
        split the last epoch's weights are kept. ``n_classes`` fixes the number of outputs for
        classification (default: the largest index in ``y``/``y_val`` plus one)."""
        self._check_params()
        x = _as_embeddings(X, "train")
        yt = _as_targets(y, self.task, x.shape[0], "train")
        has_val = X_val is not None
        if has_val != (y_val is not None):
            raise ProbeError("pass both X_val and y_val, or neither")
        if has_val:
            xv = _as_embeddings(X_val, "validation")
            if xv.shape[1] != x.shape[1]:
                raise ProbeError(
                    f"validation embeddings have {xv.shape[1]} dimensions but train has "
                    f"{x.shape[1]}; use embeddings from the same encoder and task"
                )
            yv = _as_targets(y_val, self.task, xv.shape[0], "validation")
        if self.task == "tagging":
            c = yt.shape[1]
            if c < 1:
                raise ProbeError("train targets have 0 tags; tagging needs at least one tag")
            if has_val and yv.shape[1] != c:
                raise ProbeError(
                    f"validation targets have {yv.shape[1]} tags but train has {c}; build every "
                    f"split's multi-hot matrix with the training vocabulary"
                )
        else:
            seen = int(max(yt.max(), yv.max() if has_val else 0)) + 1
            c = seen if n_classes is None else int(n_classes)
            if c < seen:
                raise ProbeError(f"n_classes={n_classes} but the targets contain class {seen - 1}")
            if c < 2:
                raise ProbeError("classification needs at least 2 classes; the targets have 1")
        self.n_features_in_ = x.shape[1]
        self.n_outputs_ = c

        xt = torch.as_tensor(np.asarray(x, dtype=np.float32), device=self.device)
        self.mean_ = xt.mean(dim=0)
        std = xt.std(dim=0, unbiased=False)
        # a constant feature carries nothing: scale 1 keeps it at 0 instead of dividing by 0
        self.scale_ = torch.where(std > 1e-8, std, torch.ones_like(std))
        xt = (xt - self.mean_) / self.scale_
        ytt = self._target_tensor(yt)
        if has_val:
            xvt, yvt = self._tensor(xv), self._target_tensor(yv)

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            model = self._build(x.shape[1], c)
        self.model_ = model.to(self.device)
        opt = torch.optim.Adam(model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        gen = torch.Generator().manual_seed(self.seed)

        n = xt.shape[0]
        b = min(self.batch_size, n)
        steps = self.steps_per_epoch or math.ceil(n / b)
        passes = math.ceil(steps * b / n)
        history: dict[str, list[float]] = {"epoch": [], "train_loss": [], "val_loss": []}
        best_loss, best_epoch, best_state, since_best = math.inf, 0, None, 0
        for epoch in range(1, self.max_epochs + 1):
            # one epoch's stream: `passes` independent shuffles of the training set, cut into
            # `steps` batches of `b` (drawn in one call, on the CPU generator for determinism)
            order = torch.argsort(torch.rand(passes, n, generator=gen), dim=1).reshape(-1)
            order = order[: steps * b].view(steps, b).to(self.device)
            model.train()
            total = torch.zeros((), device=self.device)
            for batch in order:
                loss = self._loss(model(xt[batch]), ytt[batch])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.detach()
            history["epoch"].append(epoch)
            history["train_loss"].append(float(total) / steps)
            if not has_val:
                continue
            val_loss = float(self._loss(self._logits(xvt), yvt))
            history["val_loss"].append(val_loss)
            if val_loss < best_loss:
                best_loss, best_epoch, since_best = val_loss, epoch, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                since_best += 1
                if self.patience is not None and since_best >= self.patience:
                    break
        if has_val and best_state is not None:
            model.load_state_dict(best_state)
            self.best_epoch_, self.best_val_loss_ = best_epoch, best_loss
        elif has_val:  # every validation loss was NaN: the run diverged
            raise ProbeError(
                "the validation loss was NaN at every epoch (training diverged); lower lr"
            )
        else:
            self.best_epoch_, self.best_val_loss_ = len(history["epoch"]), math.nan
        self.epochs_run_ = len(history["epoch"])
        self.history_ = history
        model.eval()
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        """Logits ``[N, C]``."""
        x = self._check_x(X)
        return self._logits(self._tensor(x)).cpu().numpy()

    def predict_proba(self, X: Any) -> np.ndarray:
        """Per-tag sigmoid probabilities (tagging) or softmax class probabilities ``[N, C]``."""
        x = self._check_x(X)
        logits = self._logits(self._tensor(x))
        probs = torch.sigmoid(logits) if self.task == "tagging" else logits.softmax(dim=1)
        return probs.cpu().numpy()

    def predict(self, X: Any) -> np.ndarray:
        """Multi-hot ``[N, C]`` (probability >= 0.5) for tagging, class indices ``[N]`` else."""
        logits = self.decision_function(X)
        if self.task == "tagging":
            return (logits >= 0).astype(np.int64)
        return logits.argmax(axis=1)

    def loss(self, X: Any, y: Any) -> float:
        """Mean BCE-with-logits (tagging) or cross-entropy (classification) on ``(X, y)``."""
        x = self._check_x(X)
        yt = self._check_y(y, x.shape[0], "y")
        return float(self._loss(self._logits(self._tensor(x)), self._target_tensor(yt)))

    def score(self, X: Any, y: Any) -> float:
        """Macro ROC-AUC (tagging, degenerate tags left out) or accuracy (classification)."""
        x = self._check_x(X)
        yt = self._check_y(y, x.shape[0], "y")
        if self.task == "tagging":
            return tagging_metrics(yt, self.decision_function(x))["roc_auc"]
        return classification_metrics(yt, self.decision_function(x))["accuracy"]


# --------------------------------------------------------------------------------------------
# running the protocol


def _probe_params(params: Mapping[str, Any]) -> dict[str, Any]:
    allowed = set(inspect.signature(Probe.__init__).parameters) - {"self", "kind", "task"}
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ConfigError(
            f"unknown probe setting(s) {', '.join(unknown)}; use {', '.join(sorted(allowed))}"
        )
    return dict(params)


def _check_splits(
    train: Split, val: Split, test: Split, task: str, class_names: Sequence[str] | None
) -> tuple[Split, Split, Split, int]:
    """Validate the three splits together; return them as arrays and the number of classes."""
    _check_choice("task", task, TASKS)
    out = []
    for name, split in (("train", train), ("validation", val), ("test", test)):
        if not isinstance(split, (tuple, list)) or len(split) != 2:
            raise ProbeError(f"the {name} split must be a pair (embeddings [N, D], targets)")
        x = _as_embeddings(split[0], name)
        out.append((x, _as_targets(split[1], task, x.shape[0], name)))
    (xtr, ytr), (xv, yv), (xte, yte) = out
    d = xtr.shape[1]
    for name, (x, _) in (("validation", out[1]), ("test", out[2])):
        if x.shape[1] != d:
            raise ProbeError(
                f"{name} embeddings have {x.shape[1]} dimensions but train has {d}; use "
                f"embeddings from the same encoder and task for every split"
            )
    if task == "tagging":
        c = ytr.shape[1]
        for name, y in (("validation", yv), ("test", yte)):
            if y.shape[1] != c:
                raise ProbeError(
                    f"{name} targets have {y.shape[1]} tags but train has {c}; build every "
                    f"split's multi-hot matrix with the training vocabulary"
                )
        if c < 1:
            raise ProbeError("the targets have 0 tags; tagging needs at least one tag")
        never = np.flatnonzero(ytr.sum(axis=0) == 0)
        if never.size:
            shown = [class_names[i] if class_names is not None else f"#{i}" for i in never[:10]]
            raise ProbeError(
                f"{never.size} tag(s) never occur in the training split: {', '.join(shown)}; "
                f"drop them from the vocabulary or move examples of them into train"
            )
    else:
        present = np.unique(ytr)
        if present.size < 2:
            raise ProbeError(
                f"the training split has {present.size} class(es); classification needs at "
                f"least 2"
            )
        c = int(max(ytr.max(), yv.max(), yte.max())) + 1
        unseen = np.setdiff1d(np.union1d(yv, yte), present)
        if unseen.size:
            shown = [class_names[i] if class_names is not None else f"#{i}" for i in unseen[:10]]
            raise ProbeError(
                f"{unseen.size} class(es) of the validation/test splits never occur in the "
                f"training split: {', '.join(map(str, shown))}; move examples of them into train "
                f"or drop them"
            )
    if class_names is not None and len(class_names) != c:
        raise ProbeError(f"class_names has {len(class_names)} names but there are {c} classes")
    return out[0], out[1], out[2], c


def _metric_names(task: str) -> list[str]:
    return ["roc_auc", "map"] if task == "tagging" else ["accuracy"]


def _scores(task: str, y: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    if task == "tagging":
        m = tagging_metrics(y, scores)
        return {"roc_auc": m["roc_auc"], "map": m["map"], "n_excluded": float(m["n_excluded"])}
    return classification_metrics(y, scores)


def _py(value: Any) -> Any:
    """numpy scalars and arrays to plain Python (JSON-able) values."""
    if isinstance(value, dict):
        return {k: _py(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_py(v) for v in value]
    if isinstance(value, np.ndarray):
        return _py(value.tolist())
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


@dataclass
class ProbeResult:
    """The JSON record of one probe: bootstrap metrics, full-test metrics and the training run.

    ``metrics`` maps each metric (``roc_auc``, ``map`` or ``accuracy``) to the bootstrap
    ``{"mean", "std", ...}``; ``full_test`` holds the metrics on the whole test set;
    ``excluded_classes`` the classes left out of the full-test macro averages (no positive or
    no negative in the test set); ``bootstrap`` the protocol and how many classes the draws left
    out on average.
    """

    task: str
    kind: str
    metrics: dict[str, dict[str, float]]
    full_test: dict[str, float]
    excluded_classes: list[Any]
    best_epoch: int
    best_val_loss: float
    epochs_run: int
    n_train: int
    n_val: int
    n_test: int
    n_classes: int
    embedding_dim: int
    bootstrap: dict[str, Any]
    params: dict[str, Any]
    history: dict[str, list[float]] = field(default_factory=dict)
    class_names: list[str] | None = None

    def to_json(self) -> dict[str, Any]:
        return _py(asdict(self))

    def summary(self) -> str:
        """One human line: each metric's bootstrap mean ± std."""
        parts = [f"{k} {v['mean']:.4f} ± {v['std']:.4f}" for k, v in self.metrics.items()]
        n_out = len(self.excluded_classes)
        extra = f"; {n_out} class(es) excluded" if n_out else ""
        return (f"{self.kind} probe ({self.task}, n_train={self.n_train}, best epoch "
                f"{self.best_epoch}): " + ", ".join(parts) + extra)


def _fit_probe(
    task: str, kind: str, params: Mapping[str, Any], train: Split, val: Split, n_classes: int
) -> Probe:
    probe = Probe(kind=kind, task=task, **params)
    return probe.fit(train[0], train[1], val[0], val[1],
                     n_classes=n_classes if task == "classification" else None)


def run_probe(
    train: Split, val: Split, test: Split, *, task: str = "tagging", kind: str = "linear",
    bootstrap_draws: int = 50, bootstrap_fraction: float = 0.5, bootstrap_seed: int = 0,
    class_names: Sequence[str] | None = None, **probe_params: Any,
) -> ProbeResult:
    """Train one probe and score it on the test set, the seed's downstream protocol.

    Each split is ``(embeddings [N, D], targets)``: multi-hot ``[N, C]`` for ``task="tagging"``,
    class indices ``[N]`` for ``task="classification"`` (track-average segment embeddings first
    with :func:`average_by_track`). ``probe_params`` are :class:`Probe` settings (``hidden_dim``,
    ``lr``, ``weight_decay``, ``max_epochs``, ``batch_size``, ``steps_per_epoch``, ``patience``,
    ``seed``, ``device``). The test metrics are bootstrapped: ``bootstrap_draws`` subsets of
    ``bootstrap_fraction`` of the test set without replacement (seed: 50 draws of 50%).
    """
    _check_choice("kind", kind, KINDS)
    params = _probe_params(probe_params)
    train, val, test, c = _check_splits(train, val, test, task, class_names)
    probe = _fit_probe(task, kind, params, train, val, c)
    scores = probe.decision_function(test[0])
    full = _scores(task, test[1], scores)
    excluded: list[Any] = []
    if task == "tagging":
        excluded = tagging_metrics(test[1], scores, class_names)["excluded"]
        full = {k: v for k, v in full.items() if k != "n_excluded"}
    boot = bootstrap_metrics(
        lambda t, s: _scores(task, t, s), test[1], scores, bootstrap_draws, bootstrap_fraction,
        bootstrap_seed,
    )
    names = _metric_names(task)
    info: dict[str, Any] = {
        "draws": bootstrap_draws, "fraction": bootstrap_fraction, "seed": bootstrap_seed,
        "size": boot[names[0]].size, "replacement": False,
        "nan_draws": {k: boot[k].n_nan for k in names},
    }
    if task == "tagging":
        info["mean_excluded_per_draw"] = boot["n_excluded"].mean
    return ProbeResult(
        task=task, kind=kind,
        metrics={k: {"mean": boot[k].mean, "std": boot[k].std} for k in names},
        full_test=full, excluded_classes=excluded, best_epoch=probe.best_epoch_,
        best_val_loss=probe.best_val_loss_, epochs_run=probe.epochs_run_,
        n_train=int(train[0].shape[0]), n_val=int(val[0].shape[0]), n_test=int(test[0].shape[0]),
        n_classes=c, embedding_dim=int(train[0].shape[1]), bootstrap=info,
        params=probe.get_params(), history=probe.history_,
        class_names=list(class_names) if class_names is not None else None,
    )


def limited_data_subset(
    targets: np.ndarray, fraction: float, task: str, seed: int | Sequence[int] = 0
) -> np.ndarray:
    """Sorted indices of a random training subset of ``round(fraction * N)`` examples, at least
    2 for tagging and at least one per class for classification (where the split has them).
    Depends only on ``targets`` and ``seed``, so every model gets the same subsets."""
    _check_choice("task", task, TASKS)
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"fraction={fraction}: use training fractions in (0, 1]")
    y = np.asarray(targets)
    n = y.shape[0]
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    m = int(round(fraction * n))
    if task == "tagging":
        if n < 2:
            raise ProbeError(f"the training split has {n} example(s); limited data needs >= 2")
        return np.sort(perm[: max(m, 2)])
    # one random example of every class first (the first of each class in a random order)
    _, first = np.unique(y[perm], return_index=True)
    taken = np.zeros(n, dtype=bool)
    taken[first] = True
    rest = perm[~taken]
    return np.sort(np.concatenate([perm[first], rest[: max(0, m - first.size)]]))


def limited_data(
    train: Split, val: Split, test: Split, *, fractions: Sequence[float] = LIMITED_FRACTIONS,
    draws: int = 4, task: str = "tagging", kind: str = "linear", seed: int = 0,
    include_full: bool = True, class_names: Sequence[str] | None = None, **probe_params: Any,
) -> dict[str, Any]:
    """The seed's limited-data experiment: for each training ``fraction``, ``draws`` random
    training subsets (:func:`limited_data_subset`), one probe each (same settings, full
    validation split for checkpoint selection), scored on the full test set; the per-fraction
    mean and standard deviation (``ddof=1``) over draws. With ``include_full`` the full training
    set is added as fraction 1.0 (one run, std ``None``), the seed's reference point.

    Returns a JSON-able dict: ``task``, ``kind``, ``metrics`` (names), ``n_train_full``,
    ``n_test``, ``draws``, ``seed``, ``params`` and ``fractions``, a list of
    ``{"fraction", "n_train" (per run), "mean", "std", "runs"}`` in increasing fraction.
    """
    _check_choice("kind", kind, KINDS)
    params = _probe_params(probe_params)
    if draws < 1:
        raise ConfigError(f"draws={draws}: use at least 1 subset per fraction (the seed uses 4)")
    fr = [float(f) for f in fractions]
    for f in fr:
        if not 0.0 < f <= 1.0:
            raise ConfigError(f"fractions: {f} is not in (0, 1]; use e.g. 0.01, 0.05, 0.1, 0.2")
    train, val, test, c = _check_splits(train, val, test, task, class_names)
    names = _metric_names(task)
    plan = [(f, draws) for f in sorted(set(fr)) if not (include_full and f == 1.0)]
    if include_full:
        plan.append((1.0, 1))
    out_fractions = []
    for f, k in plan:
        runs = []
        for j in range(k):
            if f == 1.0 and k == 1:
                idx = np.arange(train[0].shape[0])
            else:
                # keyed on the fraction itself: the 5% subsets do not depend on which other
                # fractions were asked for
                idx = limited_data_subset(train[1], f, task, seed=[seed, round(f * 1e6), j])
            sub = (train[0][idx], train[1][idx])
            run_params = {**params, "seed": params.get("seed", 0) + j}
            probe = _fit_probe(task, kind, run_params, sub, val, c)
            m = _scores(task, test[1], probe.decision_function(test[0]))
            run: dict[str, Any] = {
                "draw": j, "n_train": int(idx.size), "best_epoch": probe.best_epoch_,
                "best_val_loss": probe.best_val_loss_, "metrics": {k2: m[k2] for k2 in names},
            }
            if task == "tagging":
                run["test_classes_excluded"] = int(m["n_excluded"])
                run["tags_without_positive_in_subset"] = int((sub[1].sum(axis=0) == 0).sum())
            else:
                run["classes_in_subset"] = int(np.unique(sub[1]).size)
            runs.append(run)
        vals = {k2: np.array([r["metrics"][k2] for r in runs], dtype=np.float64) for k2 in names}
        out_fractions.append({
            "fraction": f,
            "n_train": [r["n_train"] for r in runs],
            "mean": {k2: float(np.nanmean(v)) if np.isfinite(v).any() else math.nan
                     for k2, v in vals.items()},
            "std": {k2: (float(np.std(v[np.isfinite(v)], ddof=1))
                         if np.isfinite(v).sum() > 1 else None) for k2, v in vals.items()},
            "runs": runs,
        })
    return _py({
        "task": task, "kind": kind, "metrics": names, "n_train_full": int(train[0].shape[0]),
        "n_val": int(val[0].shape[0]), "n_test": int(test[0].shape[0]), "n_classes": c,
        "draws": draws, "seed": seed, "params": Probe(kind=kind, task=task, **params).get_params(),
        "fractions": out_fractions,
    })
