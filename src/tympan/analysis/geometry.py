"""Embedding geometry: anisotropy, dimensional contribution, most-confused classes.

The analyses of AudioConFit (``../shared/seeds/002_5040cf44179b95f4.txt``, §3.4 "Why does
PAIRTUNE work?"), run on mean-pooled test-set embeddings ``emb [N, D]``:

**Isotropy.** "estimate their anisotropy by computing the empirical mean of pair-wise cosine
similarity of all representations" (the seed reports 0.008 for FINETUNE, 0.026 for PAIRTUNE).
With ``u_i = e_i / ||e_i||`` and ``s = sum_i u_i``::

    anisotropy = 1/(N(N-1)) * sum_{i != j} u_i·u_j = (||s||^2 - N) / (N(N-1))

which is O(N D) instead of the O(N^2 D) of the full similarity matrix. 1 for identical
directions, 0 for an orthonormal set, ``-1/(N-1)`` (its minimum) when the ``u_i`` sum to zero.

**Dimensionality contribution.** "the dimensional contribution towards cosine similarity ...
following [24]" (Xiao et al., 2023, who follow Timkey & van Schijndel, 2021: the contribution of
dimension ``k`` to ``cos(x, y)`` is ``x_k y_k / (||x|| ||y||)``, averaged over pairs and divided
by the average cosine similarity). Over all ordered pairs ``i != j``::

    share_k = sum_{i != j} u_ik u_jk / sum_{i != j} u_i·u_j
            = (s_k^2 - sum_i u_ik^2) / (||s||^2 - N)

so ``sum_k share_k = 1``. The seed's Table 3 reports the (cumulative) share of the top 1, 2 and 3
dimensions (lower is better: similarity relies less on a few dimensions) and the number of
dimensions needed to reach 50%, 80% and 90% of the similarity (higher is better). Shares can be
negative (a dimension along which pairs disagree); sorted in decreasing order the cumulative sum
rises to its maximum and falls back to 1, and "dimensions to reach x" is the first ``k`` whose
cumulative share is ``>= x``. When the anisotropy is near 0 the denominator is near 0 and the
shares become large and noisy: read them together with the anisotropy.

**Most-confused classes.** "the classes that FINETUNE models most struggle with, judging from
error analysis of the confusion matrix": the largest off-diagonal cells of the confusion matrix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import numpy as np
from sklearn.metrics import confusion_matrix

from tympan.errors import ConfigError, TympanError

__all__ = [
    "Confusion",
    "DimensionalContribution",
    "GeometryReport",
    "anisotropy",
    "dimensional_contribution",
    "geometry_report",
    "most_confused_classes",
]


def _unit_rows(emb: Any) -> np.ndarray:
    """``emb`` as float64 ``[N, D]`` with unit rows; zero rows and N < 2 are user errors."""
    if hasattr(emb, "detach"):  # a torch tensor
        emb = emb.detach().cpu().numpy()
    x = np.asarray(emb, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 1:
        raise TympanError(f"emb: expected embeddings [N, D] with N >= 2 rows, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise TympanError("emb: contains NaN or inf; check the encoder's output before the analysis")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    zero = np.flatnonzero(norms[:, 0] == 0)
    if len(zero):
        raise TympanError(
            f"emb: row {int(zero[0])} (and {len(zero) - 1} more) has zero norm, so its cosine "
            "similarity is undefined; drop those clips (silent or empty audio?)"
        )
    return x / norms


def anisotropy(emb: Any) -> float:
    """Mean cosine similarity over all pairs ``i != j`` of ``emb [N, D]`` (see module docstring)."""
    u = _unit_rows(emb)
    n = u.shape[0]
    s = u.sum(axis=0)
    return float((s @ s - n) / (n * (n - 1)))


@dataclass
class DimensionalContribution:
    """Each dimension's share of the summed pairwise cosine similarity.

    ``shares``: ``[D]`` in decreasing order, summing to 1; ``dims``: the dimension index of each
    share; ``top``: cumulative share of the top ``k`` dimensions, keyed by ``k``;
    ``dims_to_reach``: fewest top dimensions whose cumulative share reaches each level.
    """

    shares: np.ndarray
    dims: np.ndarray
    top: dict[int, float]
    dims_to_reach: dict[float, int]

    def to_json(self) -> dict[str, Any]:
        return {
            "shares": self.shares.tolist(),
            "dims": self.dims.tolist(),
            "top": {str(k): v for k, v in self.top.items()},
            "dims_to_reach": {f"{level:g}": v for level, v in self.dims_to_reach.items()},
        }


def dimensional_contribution(
    emb: Any, top: Sequence[int] = (1, 2, 3), levels: Sequence[float] = (0.5, 0.8, 0.9)
) -> DimensionalContribution:
    """Dimensional contribution to cosine similarity of ``emb [N, D]`` (see module docstring)."""
    u = _unit_rows(emb)
    n, d = u.shape
    for k in top:
        if not 1 <= k <= d:
            raise ConfigError(f"top={tuple(top)}: each k must be between 1 and D={d}")
    for level in levels:
        if not 0 < level <= 1:
            raise ConfigError(f"levels={tuple(levels)}: each level must be in (0, 1], e.g. 0.5, 0.8, 0.9")
    s = u.sum(axis=0)
    per_dim = s**2 - (u**2).sum(axis=0)  # sum over i != j of u_ik u_jk
    total = per_dim.sum()  # = ||s||^2 - N = N(N-1) * anisotropy
    if abs(total) <= 1e-12 * n * (n - 1):
        raise TympanError(
            "emb: the pairwise cosine similarities sum to 0 (anisotropy 0), so each dimension's "
            "share of it is undefined; this analysis needs a non-zero mean similarity"
        )
    shares = per_dim / total
    order = np.argsort(-shares, kind="stable")
    shares = shares[order]
    cum = np.cumsum(shares)
    # a level of 1 must be reachable despite rounding in the cumulative sum
    reach = {float(level): int(np.argmax(cum >= level - 1e-9)) + 1 for level in levels}
    return DimensionalContribution(
        shares=shares, dims=order, top={int(k): float(cum[k - 1]) for k in top}, dims_to_reach=reach
    )


class Confusion(NamedTuple):
    """One off-diagonal cell: ``count`` clips of class ``true`` predicted as ``predicted``.

    ``rate`` is ``count`` over the number of clips of ``true``.
    """

    true: Any
    predicted: Any
    count: int
    rate: float


def most_confused_classes(
    y_true: Sequence[Any], y_pred: Sequence[Any], k: int = 3, labels: Sequence[Any] | None = None
) -> list[Confusion]:
    """The ``k`` largest off-diagonal cells of the confusion matrix, largest first.

    Cells are ordered (true -> predicted); ties keep the order of ``labels`` (by default the
    sorted union of ``y_true`` and ``y_pred``), row first. Cells with count 0 are never returned,
    so fewer than ``k`` come back when there are fewer errors.
    """
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ConfigError(f"k={k!r}: use a positive number of class pairs")
    if len(y_true) != len(y_pred):
        raise TympanError(f"y_pred: {len(y_pred)} predictions for {len(y_true)} true labels; pass one per clip")
    if len(y_true) == 0:
        raise TympanError("y_true: empty; pass the labels of at least one clip")
    if labels is None:
        labels = np.unique(np.concatenate([np.asarray(y_true), np.asarray(y_pred)]))
    labels = list(labels)
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    support = cm.sum(axis=1)
    off = cm.astype(np.int64).copy()
    np.fill_diagonal(off, 0)
    flat = np.argsort(-off.ravel(), kind="stable")[:k]
    out = []
    for cell in flat:
        i, j = divmod(int(cell), len(labels))
        if off[i, j] == 0:
            break
        out.append(Confusion(_py(labels[i]), _py(labels[j]), int(off[i, j]), float(off[i, j] / support[i])))
    return out


def _py(value: Any) -> Any:
    """numpy scalars to Python ones, so that reports serialise to JSON."""
    return value.item() if isinstance(value, np.generic) else value


@dataclass
class GeometryReport:
    """The geometry analyses of one set of embeddings, as one JSON record."""

    n: int
    dim: int
    anisotropy: float
    contribution: DimensionalContribution
    confused: list[Confusion] = field(default_factory=list)
    name: str | None = None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["contribution"] = self.contribution.to_json()
        out["confused"] = [c._asdict() for c in self.confused]
        return out


def geometry_report(
    emb: Any,
    y_true: Sequence[Any] | None = None,
    y_pred: Sequence[Any] | None = None,
    *,
    k: int = 3,
    name: str | None = None,
) -> GeometryReport:
    """Anisotropy and dimensional contribution of ``emb [N, D]``; most-confused classes when
    both ``y_true`` and ``y_pred`` are given."""
    u = _unit_rows(emb)
    confused = most_confused_classes(y_true, y_pred, k) if y_true is not None and y_pred is not None else []
    return GeometryReport(
        n=int(u.shape[0]),
        dim=int(u.shape[1]),
        anisotropy=anisotropy(u),
        contribution=dimensional_contribution(u, top=[k for k in (1, 2, 3) if k <= u.shape[1]]),
        confused=confused,
        name=name,
    )
