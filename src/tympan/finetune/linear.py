"""Stage 2 of AudioConFit: a linear softmax classifier on the frozen, tuned encoder.

``../shared/seeds/002_5040cf44179b95f4.txt``, §2.2 "Stage 2: Common Linear Protocol": "we
freeze the trained encoder ``f_e`` and train a linear classifier (a linear layer with softmax) on
top of the temporal average pooling features. We adopt a grid search strategy to find the
optimal initial learning rates and batch sizes for each task."

How it is done here, and the choices the seed leaves open:

* **Embed once.** The encoder is frozen (``requires_grad`` off, eval mode, no grad) and every
  clip of the train/val/test splits is embedded once (:func:`embed_frozen`: clips cut into
  segments whose pooled embeddings are averaged). All grid points train on these cached
  features, so the grid costs seconds.
* **Standardised features**: mean and standard deviation of the training split (as
  :mod:`tympan.evaluation.probes`); it makes one learning-rate grid fit every backbone.
* **Batched over the grid.** For each batch size, one linear head per learning rate is trained
  at once: weights ``[G, D, C]``, logits ``einsum('nd,gdc->gnc')``, the summed cross-entropy;
  each head has its own Adam parameter group, so a head's updates depend on its own loss only
  and equal those of training it alone (zero initialisation, and the minibatch order depends on
  ``(seed, batch_size, epoch)`` only, never on the other grid points).
* **Selection on the validation split**: each head keeps its best epoch (highest validation
  accuracy, then lowest validation loss; early stopping without patience), and the grid point
  with the best such score is chosen (ties: the earlier point in grid order, batch sizes outer,
  learning rates inner). Test accuracy is reported for the chosen head only.
* Defaults (the seed gives no values): learning rates ``1e-4, 1e-3, 1e-2`` and batch sizes
  ``16, 32, 64`` with Adam, 100 epochs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tympan.errors import ConfigError, TympanError
from tympan.evaluation.features import embed_clips, pick_device

__all__ = [
    "DEFAULT_BATCH_SIZES",
    "DEFAULT_LRS",
    "GridPoint",
    "check_grid",
    "LinearHead",
    "embed_frozen",
    "fit_linear_grid",
    "nearest_centroid_accuracy",
    "select_grid_point",
]

DEFAULT_LRS: tuple[float, ...] = (1e-4, 1e-3, 1e-2)
DEFAULT_BATCH_SIZES: tuple[int, ...] = (16, 32, 64)


def nearest_centroid_accuracy(
    train_emb: np.ndarray, train_labels: np.ndarray, val_emb: np.ndarray, val_labels: np.ndarray
) -> float:
    """Accuracy of the cosine nearest-centroid rule: each val clip gets the class whose mean
    L2-normalised training embedding is most similar to its own. Classes absent from the
    training clips are never predicted."""
    train_labels = np.asarray(train_labels, dtype=np.int64)
    val_labels = np.asarray(val_labels, dtype=np.int64)
    if len(val_labels) == 0:
        raise TympanError("nearest_centroid_accuracy: no validation clips")
    x = F.normalize(torch.as_tensor(np.asarray(train_emb), dtype=torch.float32), dim=1)
    v = F.normalize(torch.as_tensor(np.asarray(val_emb), dtype=torch.float32), dim=1)
    n_classes = int(max(train_labels.max(), val_labels.max())) + 1
    y = torch.from_numpy(train_labels)
    sums = torch.zeros(n_classes, x.shape[1]).index_add_(0, y, x)
    present = torch.bincount(y, minlength=n_classes) > 0
    sim = v @ F.normalize(sums, dim=1).T
    pred = sim.masked_fill(~present, -math.inf).argmax(dim=1).numpy()
    return float((pred == val_labels).mean())


@torch.no_grad()
def embed_frozen(
    encoder: nn.Module,
    audio: Sequence[np.ndarray],
    segment_seconds: float,
    *,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Freeze ``encoder`` (no gradients, eval mode: batch-norm statistics stay put) and return
    the temporal-average-pooled clip embeddings ``[N, D]`` (seed §2.2)."""
    for p in encoder.parameters():
        p.requires_grad_(False)
    encoder.eval()
    return embed_clips(encoder, audio, segment_seconds, batch_size=batch_size, device=device,
                       progress=progress)


@dataclass
class GridPoint:
    """One (learning rate, batch size) of the grid: its best epoch's validation accuracy and
    loss, and its validation accuracy after every epoch."""

    lr: float
    batch_size: int
    val_accuracy: float
    val_loss: float
    best_epoch: int
    val_curve: list[float] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def select_grid_point(points: Sequence[GridPoint]) -> int:
    """Index of the best point: highest val accuracy, then lowest val loss, then the first."""
    if not points:
        raise TympanError("the linear-stage grid is empty; give at least one lr and batch size")
    best = 0
    for i, p in enumerate(points[1:], start=1):
        b = points[best]
        if p.val_accuracy > b.val_accuracy or (p.val_accuracy == b.val_accuracy and p.val_loss < b.val_loss):
            best = i
    return best


@dataclass
class LinearHead:
    """The chosen classifier: ``softmax(((x - mean) / std) @ weight + bias)``, with the grid
    it was chosen from."""

    weight: np.ndarray  # [D, C]
    bias: np.ndarray  # [C]
    mean: np.ndarray  # [D]
    std: np.ndarray  # [D]
    lr: float
    batch_size: int
    val_accuracy: float
    best_epoch: int
    grid: list[GridPoint] = field(default_factory=list)

    def logits(self, emb: np.ndarray) -> np.ndarray:
        return ((np.asarray(emb, dtype=np.float64) - self.mean) / self.std) @ self.weight + self.bias

    def predict(self, emb: np.ndarray) -> np.ndarray:
        return self.logits(emb).argmax(axis=1)

    def accuracy(self, emb: np.ndarray, labels: np.ndarray) -> float:
        return float((self.predict(emb) == np.asarray(labels)).mean())

    @property
    def num_parameters(self) -> int:
        return int(self.weight.size + self.bias.size)


def check_grid(lrs: Sequence[float], batch_sizes: Sequence[int], epochs: int) -> None:
    """Raise :class:`ConfigError` for an empty or out-of-range grid."""
    if not lrs or any(not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0) for v in lrs):
        raise ConfigError(f"linear_lrs={tuple(lrs)!r}: give one or more positive learning rates")
    if not batch_sizes or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in batch_sizes):
        raise ConfigError(f"linear_batch_sizes={tuple(batch_sizes)!r}: give one or more positive integers")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"linear_epochs={epochs!r}: use a positive integer")


def _train_heads(
    x: Tensor, y: Tensor, xv: Tensor, yv: Tensor, n_classes: int, lrs: Sequence[float],
    batch_size: int, epochs: int, seed: int,
) -> tuple[Tensor, Tensor, list[GridPoint]]:
    """Train one zero-initialised linear head per learning rate at once (module docstring);
    return each head's best-epoch weights ``[G, D, C]``, biases ``[G, C]`` and grid points."""
    g, (n, d), dev = len(lrs), x.shape, x.device
    weights = [nn.Parameter(torch.zeros(d, n_classes, device=dev)) for _ in lrs]
    biases = [nn.Parameter(torch.zeros(n_classes, device=dev)) for _ in lrs]
    opt = torch.optim.Adam([{"params": [w, b], "lr": float(lr)} for w, b, lr in zip(weights, biases, lrs)])
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, batch_size]).generate_state(1)[0]))
    best_acc = torch.full((g,), -1.0, device=dev)
    best_loss = torch.full((g,), math.inf, device=dev)
    best_epoch = torch.zeros(g, dtype=torch.long)
    best_w = torch.zeros(g, d, n_classes, device=dev)
    best_b = torch.zeros(g, n_classes, device=dev)
    curves: list[Tensor] = []
    for epoch in range(1, epochs + 1):
        perm = torch.randperm(n, generator=gen).to(dev)
        for start in range(0, n, batch_size):
            idx = perm[start : start + batch_size]
            w, b = torch.stack(weights), torch.stack(biases)
            logits = torch.einsum("nd,gdc->gnc", x[idx], w) + b[:, None]
            # summed over heads: each head's gradient is that of its own mean cross-entropy
            loss = F.cross_entropy(logits.reshape(-1, n_classes), y[idx].repeat(g), reduction="sum") / len(idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            w, b = torch.stack(weights), torch.stack(biases)
            logits = torch.einsum("nd,gdc->gnc", xv, w) + b[:, None]
            acc = (logits.argmax(dim=2) == yv).float().mean(dim=1)
            vloss = F.cross_entropy(logits.permute(0, 2, 1), yv.expand(g, -1), reduction="none").mean(dim=1)
            better = (acc > best_acc) | ((acc == best_acc) & (vloss < best_loss))
            best_acc = torch.where(better, acc, best_acc)
            best_loss = torch.where(better, vloss, best_loss)
            best_w[better], best_b[better] = w[better], b[better]
            best_epoch[better.cpu()] = epoch
            curves.append(acc.cpu())
    curve = torch.stack(curves, dim=1)  # [G, epochs]
    points = [
        GridPoint(lr=float(lr), batch_size=int(batch_size), val_accuracy=float(best_acc[i]),
                  val_loss=float(best_loss[i]), best_epoch=int(best_epoch[i]),
                  val_curve=[float(v) for v in curve[i]])
        for i, lr in enumerate(lrs)
    ]
    return best_w, best_b, points


def fit_linear_grid(
    train_emb: np.ndarray,
    train_labels: np.ndarray,
    val_emb: np.ndarray,
    val_labels: np.ndarray,
    n_classes: int,
    *,
    lrs: Sequence[float] = DEFAULT_LRS,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    epochs: int = 100,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> LinearHead:
    """Grid search of a linear softmax classifier on cached features (module docstring).

    ``*_emb``: ``[N, D]`` features; ``*_labels``: class indices in ``[0, n_classes)``.
    """
    check_grid(lrs, batch_sizes, epochs)
    train_emb = np.asarray(train_emb, dtype=np.float64)
    val_emb = np.asarray(val_emb, dtype=np.float64)
    if train_emb.ndim != 2 or val_emb.ndim != 2 or train_emb.shape[1] != val_emb.shape[1]:
        raise TympanError(f"embeddings: expected [N, D] with one D, got {train_emb.shape} and {val_emb.shape}")
    if len(train_emb) == 0 or len(val_emb) == 0:
        raise TympanError("the linear stage needs training and validation clips; a split is empty")
    mean = train_emb.mean(axis=0)
    std = train_emb.std(axis=0)
    std = np.where(std > 1e-8, std, 1.0)  # constant features stay 0 instead of dividing by 0
    dev = pick_device(device)
    x = torch.as_tensor((train_emb - mean) / std, dtype=torch.float32, device=dev)
    xv = torch.as_tensor((val_emb - mean) / std, dtype=torch.float32, device=dev)
    y = torch.as_tensor(np.asarray(train_labels), dtype=torch.long, device=dev)
    yv = torch.as_tensor(np.asarray(val_labels), dtype=torch.long, device=dev)

    points: list[GridPoint] = []
    heads: list[tuple[Tensor, Tensor]] = []
    with torch.enable_grad():
        for bs in batch_sizes:
            w, b, pts = _train_heads(x, y, xv, yv, n_classes, lrs, int(bs), epochs, seed)
            points += pts
            heads += [(w[i], b[i]) for i in range(len(lrs))]
    k = select_grid_point(points)
    w, b = heads[k]
    chosen = points[k]
    return LinearHead(
        weight=w.detach().cpu().double().numpy(), bias=b.detach().cpu().double().numpy(),
        mean=mean, std=std, lr=chosen.lr, batch_size=chosen.batch_size,
        val_accuracy=chosen.val_accuracy, best_epoch=chosen.best_epoch, grid=points,
    )
