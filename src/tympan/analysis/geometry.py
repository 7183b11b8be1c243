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
When an embeddings file carries no predictions (and no ``confusion.json`` lies beside it), the
predictions are the out-of-fold predictions of a logistic regression fitted with stratified
k-fold cross-validation on the embeddings themselves (:func:`cross_validated_predictions`): a
linear probe's confusions, not the fine-tuned classifier's, and the report says so.

**UMAP of the most-confused classes** (the seed's Fig. 3): the clips of the union of the ``k``
most-confused (true, predicted) pairs, projected to 2-D with umap-learn (:func:`umap_of_confused`).
When two runs are compared the classes are chosen once, from the FINETUNE run when there is one
(the seed picks the classes "FINETUNE models most struggle with"), else from the first run, and
every run shows the same classes.

**Convergence** (the seed's §3.3 "Fast Convergence of PAIRTUNE", Fig. 2): validation accuracy per
epoch of each seed/fold run from a fine-tuning run's ``convergence.csv``, summarised per method
and epoch as mean ± standard deviation over runs (``ddof=1``) and as the first epoch reaching
95% of the final accuracy (:func:`read_convergence`, :func:`summarize_convergence`).

:func:`analyze_geometry` runs all of them on fine-tuning run directories (as written by
:func:`tympan.finetune.finetune`) or embeddings files and writes JSON, Markdown, PNG and CSV.
"""

from __future__ import annotations

import csv
import json
import math
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from sklearn.metrics import confusion_matrix

from tympan.errors import ConfigError, TympanError

__all__ = [
    "Confusion",
    "ConfusedUmap",
    "ConvergenceRow",
    "ConvergenceSummary",
    "DimensionalContribution",
    "EmbeddingSet",
    "GeometryReport",
    "MethodCurve",
    "analyze_geometry",
    "anisotropy",
    "confused_classes",
    "confused_from_matrix",
    "cross_validated_predictions",
    "dimensional_contribution",
    "format_geometry",
    "geometry_report",
    "load_confusion_file",
    "load_embeddings_file",
    "most_confused_classes",
    "read_convergence",
    "summarize_convergence",
    "umap_of_confused",
]

#: the files a fine-tuning run directory holds (:mod:`tympan.finetune.protocol`)
EMBEDDINGS_FILE = "embeddings_test.npz"
CONFUSION_FILE = "confusion.json"
CONVERGENCE_FILE = "convergence.csv"
RESULTS_FILE = "results.json"


def _unit_rows(emb: Any) -> np.ndarray:
    """``emb`` as float64 ``[N, D]`` with unit rows; zero rows and N < 2 are user errors."""
    x = _finite_matrix(emb)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    zero = np.flatnonzero(norms[:, 0] == 0)
    if len(zero):
        raise TympanError(
            f"emb: row {int(zero[0])} (and {len(zero) - 1} more) has zero norm, so its cosine "
            "similarity is undefined; drop those clips (silent or empty audio?)"
        )
    return x / norms


def _finite_matrix(emb: Any) -> np.ndarray:
    """``emb`` as float64 ``[N, D]``, N >= 2, all finite (zero rows allowed)."""
    if hasattr(emb, "detach"):  # a torch tensor
        emb = emb.detach().cpu().numpy()
    x = np.asarray(emb, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 1:
        raise TympanError(f"emb: expected embeddings [N, D] with N >= 2 rows, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise TympanError("emb: contains NaN or inf; check the encoder's output before the analysis")
    return x


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
    return _largest_off_diagonal(confusion_matrix(y_true, y_pred, labels=labels), labels, k)


def confused_from_matrix(classes: Sequence[Any], matrix: Any, k: int = 3) -> list[Confusion]:
    """:func:`most_confused_classes` read from a confusion matrix (rows = true class, columns =
    predicted class, in the order of ``classes``), e.g. a fine-tuning run's ``confusion.json``.

    Ties keep the order of ``classes``, row first.
    """
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ConfigError(f"k={k!r}: use a positive number of class pairs")
    cm = np.asarray(matrix)
    if cm.ndim != 2 or cm.shape != (len(classes), len(classes)):
        raise TympanError(
            f"matrix: expected a square [{len(classes)}, {len(classes)}] confusion matrix (one row "
            f"and one column per class), got shape {cm.shape}"
        )
    return _largest_off_diagonal(cm, list(classes), k)


def _largest_off_diagonal(cm: np.ndarray, labels: list[Any], k: int) -> list[Confusion]:
    """The ``k`` largest non-zero off-diagonal cells of ``cm`` (stable order on ties)."""
    support = cm.sum(axis=1)
    off = cm.astype(np.int64).copy()
    np.fill_diagonal(off, 0)
    flat = np.argsort(-off.ravel(), kind="stable")[:k]
    out = []
    for cell in flat:
        i, j = divmod(int(cell), len(labels))
        if off[i, j] <= 0:
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


# --------------------------------------------------------------------------------------------
# inputs: embeddings files, confusion matrices, predictions


@dataclass
class EmbeddingSet:
    """The contents of an embeddings file (ARCHITECTURE.md, "An embeddings file").

    ``embeddings [N, D]`` float64; ``paths``, ``labels`` and (when the file has them)
    ``predictions`` are ``[N]`` string arrays; ``source`` is the file they came from.
    """

    embeddings: np.ndarray
    paths: np.ndarray
    labels: np.ndarray
    predictions: np.ndarray | None = None
    source: Path | None = None

    @property
    def single_label(self) -> bool:
        """Whether every clip has exactly one non-empty label (multi-label ones are joined by
        ``;`` in files written by ``tympan embed``)."""
        return bool(len(self.labels)) and all(lab != "" and ";" not in lab for lab in self.labels)


def load_embeddings_file(path: str | Path) -> EmbeddingSet:
    """Read an embeddings ``.npz`` with ``embeddings [N, D]``, ``paths [N]``, ``labels [N]`` and
    optionally ``predictions [N]`` (seed 002 §3.4 analyses run on test-set embeddings).

    Every failure names the file and the key: a missing file or key, arrays of the wrong shape
    or length, object arrays (refused: loading them would need pickle), NaN or inf values.
    """
    p = Path(path)
    if not p.is_file():
        raise TympanError(
            f"{p}: no such embeddings file; write one with `tympan embed` or `tympan finetune` "
            "(embeddings_test.npz), or check the path"
        )
    try:
        z = np.load(p, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise TympanError(f"{p}: not a readable .npz embeddings file ({e}); save it with numpy.savez") from e
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise TympanError(
            f"{p}: holds a single array, not an .npz with keys embeddings, paths, labels; save it "
            "with numpy.savez(path, embeddings=..., paths=..., labels=...)"
        )
    with z:
        missing = [key for key in ("embeddings", "paths", "labels") if key not in z.files]
        if missing:
            raise TympanError(
                f"{p}: missing key(s) {', '.join(missing)} (it has: {', '.join(z.files) or 'none'}); "
                "an embeddings file needs embeddings [N, D], paths [N] and labels [N]"
            )
        arrays = {key: _npz_array(z, p, key) for key in ("embeddings", "paths", "labels", "predictions")
                  if key in z.files}
    emb = arrays["embeddings"]
    if emb.ndim != 2 or emb.shape[0] < 2 or emb.shape[1] < 1:
        raise TympanError(f"{p}: key 'embeddings' must be [N, D] with N >= 2 clips, got shape {emb.shape}")
    if not (np.issubdtype(emb.dtype, np.number) or emb.dtype == bool):
        raise TympanError(f"{p}: key 'embeddings' has dtype {emb.dtype}; it must hold numbers")
    emb = emb.astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(emb).all(axis=1))
    if len(bad):
        raise TympanError(
            f"{p}: key 'embeddings' has NaN or inf in row {int(bad[0])} ({len(bad)} row(s) in all); "
            "re-run the encoder on those clips (a silent or corrupt file?) or drop them"
        )
    n = emb.shape[0]
    strings = {}
    for key in ("paths", "labels", "predictions"):
        if key not in arrays:
            continue
        a = arrays[key]
        if a.ndim != 1 or a.shape[0] != n:
            raise TympanError(
                f"{p}: key '{key}' has shape {a.shape} but 'embeddings' has {n} rows; give one "
                f"{key[:-1]} per clip"
            )
        strings[key] = a.astype(str)
    return EmbeddingSet(emb, strings["paths"], strings["labels"], strings.get("predictions"), p)


def _npz_array(z: Any, p: Path, key: str) -> np.ndarray:
    try:
        return np.asarray(z[key])
    except ValueError as e:  # object arrays need pickle, which we never enable
        raise TympanError(
            f"{p}: key '{key}' is an object array ({e}); save strings as a numpy string array, "
            f"e.g. np.asarray(values, dtype=str)"
        ) from e


def load_confusion_file(path: str | Path) -> tuple[list[str], np.ndarray]:
    """``(classes, matrix)`` from a ``confusion.json`` (``{"classes": [...], "matrix": [[...]]}``,
    rows = true class, columns = predicted class, as :mod:`tympan.finetune.protocol` writes it)."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except OSError as e:
        raise TympanError(f"{p}: cannot read the confusion matrix ({e})") from e
    except json.JSONDecodeError as e:
        raise TympanError(f"{p}: not valid JSON ({e}); re-run the fine-tuning that wrote it") from e
    if not isinstance(data, dict) or "classes" not in data or "matrix" not in data:
        raise TympanError(f'{p}: expected {{"classes": [...], "matrix": [[...]]}} (rows true, columns predicted)')
    classes = [str(c) for c in data["classes"]]
    try:
        cm = np.asarray(data["matrix"], dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise TympanError(f"{p}: field 'matrix' is not a rectangular table of counts ({e})") from e
    if cm.shape != (len(classes), len(classes)):
        raise TympanError(
            f"{p}: field 'matrix' has shape {cm.shape} but 'classes' names {len(classes)} classes; "
            "it must be square with one row and one column per class"
        )
    if not np.isfinite(cm).all() or (cm < 0).any() or (cm != np.round(cm)).any():
        raise TympanError(f"{p}: field 'matrix' must hold non-negative whole counts")
    return classes, cm.astype(np.int64)


def cross_validated_predictions(
    emb: Any, labels: Sequence[Any], *, folds: int = 5, seed: int = 0, C: float = 1.0, max_iter: int = 1000
) -> np.ndarray:
    """Out-of-fold predictions of a logistic regression on ``emb [N, D]``: stratified ``folds``-fold
    cross-validation (shuffled with ``seed``), features standardised inside each fold; every
    clip is predicted by a model that never saw it.

    Stands in for a classifier's predictions when an embeddings file has none (module
    docstring). Uses ``min(folds, smallest class size)`` folds; needs at least two classes and
    two clips per class.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = _finite_matrix(emb)
    y = np.asarray(labels)
    if len(y) != len(x):
        raise TympanError(f"labels: {len(y)} labels for {len(x)} embeddings; pass one per clip")
    if not isinstance(folds, (int, np.integer)) or folds < 2:
        raise ConfigError(f"folds={folds!r}: cross-validation needs at least 2 folds")
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        raise TympanError(f"labels: only one class ({classes[0]!r}); predictions need at least two classes")
    if counts.min() < 2:
        raise TympanError(
            f"labels: class {classes[int(np.argmin(counts))]!r} has a single clip, too few for "
            "cross-validated predictions; add clips, drop the class or store the classifier's "
            "'predictions' in the embeddings file"
        )
    cv = StratifiedKFold(n_splits=int(min(folds, counts.min())), shuffle=True, random_state=seed)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return cross_val_predict(model, x, y, cv=cv)


# --------------------------------------------------------------------------------------------
# UMAP of the most-confused classes (seed 002, Fig. 3)


def confused_classes(pairs: Sequence[Confusion]) -> list[Any]:
    """The classes of ``pairs`` (true then predicted of each pair, most confused first), each once."""
    return list(dict.fromkeys(c for pair in pairs for c in (pair.true, pair.predicted)))


@dataclass
class ConfusedUmap:
    """A 2-D UMAP of the clips of the chosen classes.

    ``coords [M, 2]``; ``labels [M]`` the class of each point; ``index [M]`` its row in the
    embeddings; ``classes`` the chosen classes (most confused first); ``pairs`` the confusions
    they were chosen from (empty when the classes were given).
    """

    coords: np.ndarray
    labels: np.ndarray
    index: np.ndarray
    classes: list[Any]
    pairs: list[Confusion] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        values, counts = np.unique(self.labels, return_counts=True)
        per_class = {str(v): int(c) for v, c in zip(values, counts)}
        return {"classes": [_py(c) for c in self.classes], "pairs": [p._asdict() for p in self.pairs],
                "n_points": int(len(self.labels)),
                "points_per_class": {str(c): per_class.get(str(c), 0) for c in self.classes}}


def umap_of_confused(
    emb: Any,
    labels: Sequence[Any],
    predictions: Sequence[Any] | None = None,
    *,
    k: int = 3,
    classes: Sequence[Any] | None = None,
    seed: int = 0,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    metric: str = "euclidean",
    n_epochs: int | None = None,
) -> ConfusedUmap:
    """UMAP (umap-learn, ``random_state=seed``) of the clips whose label is one of the classes of
    the ``k`` most-confused (true, predicted) pairs of ``labels`` vs ``predictions``, or of the
    given ``classes`` (seed 002 §3.4, Fig. 3: "difficult classes ... selected by error analysis
    on the confusion matrix").

    ``n_neighbors`` is capped at the number of points minus one. The embeddings go to UMAP as
    they are (``metric="cosine"`` for the angle only).
    """
    x = _finite_matrix(emb)
    y = np.asarray(labels)
    if len(y) != len(x):
        raise TympanError(f"labels: {len(y)} labels for {len(x)} embeddings; pass one per clip")
    pairs: list[Confusion] = []
    if classes is None:
        if predictions is None:
            raise TympanError("predictions: needed to find the most-confused classes (or pass classes=...)")
        pairs = most_confused_classes(y, predictions, k)
        classes = confused_classes(pairs)
        if not classes:
            raise TympanError(
                "predictions: no clip is misclassified, so there are no confused classes to show; "
                "pass classes=... to choose them"
            )
    classes = list(classes)
    keep = np.flatnonzero(np.isin(y.astype(str), [str(c) for c in classes]))
    if len(keep) < 4:
        raise TympanError(
            f"labels: only {len(keep)} clip(s) belong to the classes {classes}; UMAP needs at least 4 points"
        )
    if not isinstance(n_neighbors, (int, np.integer)) or n_neighbors < 2:
        raise ConfigError(f"n_neighbors={n_neighbors!r}: use at least 2 (umap-learn's default is 15)")
    from sklearn.neighbors import NearestNeighbors

    import umap  # slow to import and to JIT-compile on first use: only here

    points = x[keep]
    nn = int(min(n_neighbors, len(keep) - 1))
    try:
        # exact neighbours (self first), as umap-learn computes them below 4096 points; handing
        # them over skips compiling umap's own parallel k-NN, half of its first-call JIT time
        dist, idx = NearestNeighbors(n_neighbors=nn, metric=metric).fit(points).kneighbors(points)
    except ValueError as e:
        raise ConfigError(
            f"metric={metric!r}: not a distance scikit-learn knows ({e}); try 'euclidean' or 'cosine'"
        ) from e
    reducer = umap.UMAP(
        n_components=2, n_neighbors=nn, min_dist=min_dist, metric=metric, n_epochs=n_epochs,
        random_state=seed, n_jobs=1, precomputed_knn=(idx, dist),
    )
    with warnings.catch_warnings():
        # "n_jobs value 1 overridden to 1 by setting random_state": determinism is what we want;
        # "precomputed_knn[2] ... transform will be unavailable": we never transform new data
        warnings.filterwarnings("ignore", message="n_jobs value", category=UserWarning)
        warnings.filterwarnings("ignore", message=r"precomputed_knn\[2\]", category=UserWarning)
        coords = np.asarray(reducer.fit_transform(points), dtype=np.float64)
    return ConfusedUmap(coords=coords, labels=y[keep], index=keep, classes=classes, pairs=pairs)


# --------------------------------------------------------------------------------------------
# convergence (seed 002 §3.3, Fig. 2)


class ConvergenceRow(NamedTuple):
    """One row of ``convergence.csv``: a run's validation accuracy after ``epoch``.

    ``seed`` or ``fold`` is ``None`` where the cell is empty (seeds protocol: no fold).
    """

    method: str
    seed: int | None
    fold: int | None
    epoch: int
    val_accuracy: float


CONVERGENCE_COLUMNS = ("method", "seed", "fold", "epoch", "val_accuracy")


def read_convergence(path: str | Path) -> list[ConvergenceRow]:
    """The rows of a ``convergence.csv`` (columns ``method,seed,fold,epoch,val_accuracy``, as
    :mod:`tympan.finetune.protocol` writes it), each checked; errors name the file and line."""
    p = Path(path)
    try:
        with open(p, newline="") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in reader.fieldnames or []]
            missing = [c for c in CONVERGENCE_COLUMNS if c not in header]
            if missing:
                raise TympanError(
                    f"{p}: missing column(s) {', '.join(missing)}; a convergence file has the columns "
                    f"{','.join(CONVERGENCE_COLUMNS)}"
                )
            raw = [({(k or "").strip(): (v or "").strip() for k, v in r.items()}, reader.line_num)
                   for r in reader]
    except OSError as e:
        raise TympanError(f"{p}: cannot read the convergence file ({e})") from e
    rows: list[ConvergenceRow] = []
    seen: dict[tuple[Any, ...], int] = {}
    for r, line in raw:
        if not any(r.values()):
            continue
        if not r["method"]:
            raise TympanError(f"{p}, line {line}: empty 'method'; name the method (pairtune, finetune)")
        try:
            seed = int(r["seed"]) if r["seed"] else None
            fold = int(r["fold"]) if r["fold"] else None
            epoch = int(r["epoch"])
        except ValueError as e:
            raise TympanError(f"{p}, line {line}: 'seed', 'fold' and 'epoch' must be whole numbers ({e})") from e
        try:
            acc = float(r["val_accuracy"])
        except ValueError as e:
            raise TympanError(f"{p}, line {line}: 'val_accuracy' is not a number ({r['val_accuracy']!r})") from e
        if not math.isfinite(acc):
            raise TympanError(f"{p}, line {line}: 'val_accuracy' is {acc}; it must be a finite number")
        key = (r["method"], seed, fold, epoch)
        if key in seen:
            raise TympanError(
                f"{p}, line {line}: repeats method {key[0]}, seed {seed}, fold {fold}, epoch {epoch} "
                f"of line {seen[key]}; keep one row per run and epoch"
            )
        seen[key] = line
        rows.append(ConvergenceRow(r["method"], seed, fold, epoch, acc))
    if not rows:
        raise TympanError(f"{p}: has no rows; it is written when fine-tuning finishes")
    return rows


@dataclass
class MethodCurve:
    """One method's validation accuracy per epoch over its runs (seeds/folds).

    ``mean``/``std`` per epoch over the runs that reached it (``n``); ``std`` (``ddof=1``) is
    ``None`` for one run. ``final``: mean over runs of each run's last-epoch accuracy; ``best``:
    the highest point of the mean curve; ``epoch_to_level``: first epoch at which the mean curve
    reaches ``level * final`` (``None`` if never); ``run_epochs_to_level``: the same for each run
    against its own final accuracy.
    """

    method: str
    epochs: list[int]
    mean: list[float]
    std: list[float | None]
    n: list[int]
    runs: int
    final: float
    best: float
    epoch_to_level: int | None
    run_epochs_to_level: list[int]

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        e = np.asarray(self.run_epochs_to_level, dtype=np.float64)
        out["run_epochs_to_level_mean"] = float(e.mean()) if len(e) else None
        out["run_epochs_to_level_std"] = float(e.std(ddof=1)) if len(e) > 1 else None
        return out


@dataclass
class ConvergenceSummary:
    """:func:`summarize_convergence`'s result: a :class:`MethodCurve` per method."""

    level: float
    methods: dict[str, MethodCurve]

    def to_json(self) -> dict[str, Any]:
        return {"level": self.level, "methods": {m: c.to_json() for m, c in self.methods.items()}}

    def csv_rows(self) -> list[dict[str, Any]]:
        """One row per method and epoch: ``method, epoch, runs, mean_val_accuracy, std_val_accuracy``."""
        return [
            {"method": m, "epoch": e, "runs": n, "mean_val_accuracy": f"{mu:.6f}",
             "std_val_accuracy": "" if sd is None else f"{sd:.6f}"}
            for m, c in self.methods.items() for e, mu, sd, n in zip(c.epochs, c.mean, c.std, c.n)
        ]

    def write_csv(self, path: str | Path) -> Path:
        out = Path(path)
        with open(out, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["method", "epoch", "runs", "mean_val_accuracy", "std_val_accuracy"],
                               lineterminator="\n")
            w.writeheader()
            w.writerows(self.csv_rows())
        return out


def summarize_convergence(rows: Sequence[ConvergenceRow], level: float = 0.95) -> ConvergenceSummary:
    """Mean ± std (``ddof=1``) of the validation accuracy over runs per method and epoch, and the
    epochs to reach ``level`` of the final accuracy (seed 002 §3.3: "PAIRTUNE can converge well
    within 5 epochs"). A run is one (method, seed, fold); methods keep their first-seen order."""
    if not 0 < level <= 1:
        raise ConfigError(f"level={level}: use a fraction of the final accuracy in (0, 1], e.g. 0.95")
    if not rows:
        raise TympanError("convergence: no rows to summarise")
    runs: dict[str, dict[tuple[Any, Any], dict[int, float]]] = {}
    for r in rows:
        runs.setdefault(r.method, {}).setdefault((r.seed, r.fold), {})[r.epoch] = r.val_accuracy
    curves = {}
    for method, per_run in runs.items():
        epochs = sorted({e for curve in per_run.values() for e in curve})
        means, stds, ns = [], [], []
        for e in epochs:
            v = np.array([curve[e] for curve in per_run.values() if e in curve])
            means.append(float(v.mean()))
            stds.append(float(v.std(ddof=1)) if len(v) > 1 else None)
            ns.append(int(len(v)))
        finals = [curve[max(curve)] for curve in per_run.values()]
        final = float(np.mean(finals))
        reached = [e for e, m in zip(epochs, means) if m >= level * final]
        run_reach = [next(e for e in sorted(curve) if curve[e] >= level * curve[max(curve)])
                     for curve in per_run.values()]
        curves[method] = MethodCurve(
            method=method, epochs=epochs, mean=means, std=stds, n=ns, runs=len(per_run), final=final,
            best=float(max(means)), epoch_to_level=reached[0] if reached else None,
            run_epochs_to_level=[int(e) for e in run_reach],
        )
    return ConvergenceSummary(level=float(level), methods=curves)


# --------------------------------------------------------------------------------------------
# the whole analysis


@dataclass
class _Source:
    """One run directory or embeddings file being analysed."""

    name: str
    path: Path
    data: EmbeddingSet
    method: str | None = None
    confusion: tuple[list[str], np.ndarray] | None = None
    convergence: Path | None = None


def _open_source(path: str | Path) -> _Source:
    p = Path(path)
    if p.is_dir():
        emb_file = p / EMBEDDINGS_FILE
        if not emb_file.is_file():
            raise TympanError(
                f"{p}: has no {EMBEDDINGS_FILE}; give a fine-tuning run directory (`tympan finetune` "
                "writes it) or an embeddings file with --embeddings"
            )
        method = None
        if (p / RESULTS_FILE).is_file():
            try:
                results = json.loads((p / RESULTS_FILE).read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise TympanError(f"{p / RESULTS_FILE}: not valid JSON ({e}); re-run the fine-tuning") from e
            if isinstance(results, dict) and isinstance(results.get("method"), str):
                method = results["method"]
        return _Source(
            name=p.resolve().name, path=p, data=load_embeddings_file(emb_file), method=method,
            confusion=load_confusion_file(p / CONFUSION_FILE) if (p / CONFUSION_FILE).is_file() else None,
            convergence=p / CONVERGENCE_FILE if (p / CONVERGENCE_FILE).is_file() else None,
        )
    if p.is_file():
        return _Source(name=p.stem, path=p, data=load_embeddings_file(p))
    raise TympanError(f"{p}: no such run directory or embeddings file; check the path")


def _unique_names(sources: list[_Source]) -> None:
    """Name rows by method (Table 3's FINETUNE / PAIRTUNE) when that is unambiguous, else by
    folder/file name, numbering repeats."""
    methods = [s.method for s in sources]
    taken: set[str] = set()
    for s in sources:
        base = s.method if s.method and methods.count(s.method) == 1 else s.name
        name, i = base, 2
        while name in taken:
            name, i = f"{base} ({i})", i + 1
        s.name = name
        taken.add(name)


def analyze_geometry(
    run: str | Path | None = None,
    *,
    embeddings: str | Path | None = None,
    out: str | Path | None = None,
    compare: str | Path | Sequence[str | Path] | None = None,
    seed: int = 0,
    k: int = 3,
    folds: int = 5,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    level: float = 0.95,
) -> dict[str, Any]:
    """The embedding-geometry analyses of AudioConFit (seed 002 §3.3 Fig. 2, §3.4 Table 3 and
    Fig. 3) on a fine-tuning ``run`` directory or an ``embeddings`` file, with optional
    ``compare`` runs/files (e.g. PAIRTUNE vs FINETUNE): one table row and one UMAP panel each.

    Per run: anisotropy, dimensional contribution, the ``k`` most-confused class pairs, from the
    file's ``predictions``, else the run's ``confusion.json``, else out-of-fold logistic
    regression predictions (``folds``-fold, said so in the report). Then a UMAP of the clips of
    the most-confused classes (chosen once, see the module docstring) and, when runs carry a
    ``convergence.csv``, its per-method summary.

    Writes into ``out`` (default ``RUN/analysis``): ``geometry.json``, ``geometry.md``,
    ``umap_confused.png`` and, with convergence data, ``convergence.png`` and
    ``convergence_summary.csv``. Returns the JSON record with ``markdown`` and ``files``.
    """
    from tympan.report.plots import plot_convergence, plot_umap

    if (run is None) == (embeddings is None):
        raise TympanError("give either a run directory (RUN) or --embeddings FILE, not both or neither")
    first = run if run is not None else embeddings
    if embeddings is not None and not Path(embeddings).is_file():
        raise TympanError(f"--embeddings {embeddings}: no such file; give an .npz embeddings file")
    if out is None:
        if not Path(first).is_dir():  # type: ignore[arg-type]
            raise TympanError(f"{first} is not a run directory: give --out for its analysis files")
        out = Path(first) / "analysis"  # type: ignore[arg-type]
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ConfigError(f"k={k!r}: use a positive number of class pairs")
    others = [] if compare is None else [compare] if isinstance(compare, (str, Path)) else list(compare)
    sources = [_open_source(p) for p in [first, *others]]  # type: ignore[list-item]
    _unique_names(sources)
    convergence = _convergence(sources, level)  # read first: a malformed CSV fails before UMAP
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in ("umap_confused.png", "convergence.png", "convergence_summary.csv"):
        (folder / stale).unlink(missing_ok=True)  # from an earlier analysis with other inputs
    notes: list[str] = []

    records, reports = [], {}
    for s in sources:
        d = s.data
        y_pred, confused = None, None
        if not d.single_label:
            pred_info: dict[str, Any] = {"source": None, "accuracy": None}
            notes.append(f"{s.name}: labels are missing or multi-label, so no confusions or UMAP for it")
        elif d.predictions is not None:
            y_pred = d.predictions
            pred_info = {"source": f"the predictions stored in {d.source}",
                         "accuracy": float(np.mean(d.labels == y_pred))}
        elif s.confusion is not None:
            cm = s.confusion[1]
            confused = confused_from_matrix(*s.confusion, k=k)
            pred_info = {"source": f"{s.path / CONFUSION_FILE}",
                         "accuracy": float(np.trace(cm) / max(1, cm.sum()))}
        else:
            y_pred = cross_validated_predictions(d.embeddings, d.labels, folds=folds, seed=seed)
            pred_info = {
                "source": f"out-of-fold predictions of a logistic regression ({folds}-fold stratified "
                          f"cross-validation on the embeddings, seed {seed}); {d.source} has no "
                          "predictions",
                "accuracy": float(np.mean(d.labels == y_pred)),
            }
            notes.append(f"{s.name}: confusions are those of a cross-validated linear probe on the "
                         "embeddings, not of the run's own classifier (the file has no predictions)")
        try:
            report = geometry_report(d.embeddings, None if y_pred is None else d.labels, y_pred, k=k,
                                     name=s.name)
        except TympanError as e:  # name the file: "emb: row 3 has zero norm" alone is not enough
            raise TympanError(f"{d.source}: key 'embeddings': {e}") from e
        if confused is not None:
            report.confused = confused
        reports[s.name] = report
        records.append({**report.to_json(), "source": str(s.path), "embeddings": str(d.source),
                        "method": s.method, "predictions": pred_info})

    files = {"json": str(folder / "geometry.json"), "md": str(folder / "geometry.md")}
    # UMAP: classes chosen once, from the FINETUNE run if any (the seed's choice), else the first
    chooser = next((s for s in sources if s.method == "finetune" and len(sources) > 1), sources[0])
    chosen = confused_classes(reports[chooser.name].confused)
    umap_record: dict[str, Any] | None = None
    if not chosen:
        notes.append(f"{chooser.name}: no confused classes, so no UMAP of the most-confused classes")
    else:
        panels, panel_info = {}, {}
        for s in sources:
            if not s.data.single_label:
                continue
            present = np.isin(s.data.labels, [str(c) for c in chosen]).sum()
            if present < 4:
                notes.append(f"{s.name}: only {present} clip(s) of the chosen classes, no UMAP panel")
                continue
            panels[s.name] = umap_of_confused(s.data.embeddings, s.data.labels, classes=chosen, seed=seed,
                                              n_neighbors=n_neighbors, min_dist=min_dist)
            panel_info[s.name] = panels[s.name].to_json()
        umap_record = {"classes": chosen, "chosen_from": chooser.name,
                       "pairs": [c._asdict() for c in reports[chooser.name].confused],
                       "seed": seed, "n_neighbors": n_neighbors, "min_dist": min_dist, "panels": panel_info}
        if panels:
            files["umap"] = str(plot_umap(panels, folder / "umap_confused.png", classes=chosen,
                                          title=f"most-confused classes of {chooser.name}"))

    conv_record = None
    if convergence is not None:
        conv_record = convergence.to_json()
        files["convergence_csv"] = str(convergence.write_csv(folder / "convergence_summary.csv"))
        files["convergence_png"] = str(plot_convergence(convergence, folder / "convergence.png"))

    record = {"runs": records, "umap": umap_record, "convergence": conv_record, "k": k, "seed": seed,
              "notes": notes}
    text = format_geometry(record)
    (folder / "geometry.json").write_text(json.dumps(record, indent=2))
    (folder / "geometry.md").write_text(text + "\n")
    return {**record, "markdown": text, "files": files}


def _convergence(sources: list[_Source], level: float) -> ConvergenceSummary | None:
    """Every source's ``convergence.csv`` in one summary; a method found in several sources is
    named ``"source: method"`` to keep them apart."""
    per_source = [(s, read_convergence(s.convergence)) for s in sources if s.convergence is not None]
    if not per_source:
        return None
    count: dict[str, int] = {}
    for _, rows in per_source:
        for m in dict.fromkeys(r.method for r in rows):
            count[m] = count.get(m, 0) + 1
    merged = [r._replace(method=f"{s.name}: {r.method}") if count[r.method] > 1 else r
              for s, rows in per_source for r in rows]
    return summarize_convergence(merged, level)


def _f(value: float | None, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def format_geometry(record: dict[str, Any]) -> str:
    """Markdown of an :func:`analyze_geometry` record: the seed's Table 3 (one row per run),
    the most-confused pairs, the convergence summary and the figures."""
    lines = [
        "# Embedding geometry (AudioConFit §3.4)",
        "",
        "Anisotropy = mean pairwise cosine similarity (0 = isotropic). Top-k = share of the summed "
        "cosine similarity carried by the k largest dimensions (lower = less reliance on a few "
        "dimensions); x% = dimensions needed to reach x% of it (higher = more dimensions used).",
        "",
        "| run | N | D | anisotropy | top-1 ↓ | top-2 ↓ | top-3 ↓ | 50% ↑ | 80% ↑ | 90% ↑ |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in record["runs"]:
        top, reach = r["contribution"]["top"], r["contribution"]["dims_to_reach"]
        lines.append(
            f"| {r['name']} | {r['n']} | {r['dim']} | {r['anisotropy']:.4f} | "
            + " | ".join(_f(top.get(str(i))) for i in (1, 2, 3)) + " | "
            + " | ".join(str(reach.get(lv, "")) for lv in ("0.5", "0.8", "0.9")) + " |"
        )
    lines += ["", f"## Most-confused class pairs (top {record['k']})", "",
              "| run | true → predicted | clips | rate |", "| --- | --- | ---: | ---: |"]
    for r in record["runs"]:
        if not r["confused"] and r["predictions"]["source"]:
            lines.append(f"| {r['name']} | (no misclassified clips) | 0 | |")
        for c in r["confused"]:
            lines.append(
                f"| {r['name']} | {c['true']} → {c['predicted']} | {c['count']} | {100 * c['rate']:.1f}% |"
            )
    lines.append("")
    for r in record["runs"]:
        p = r["predictions"]
        if p["source"]:
            acc = "" if p["accuracy"] is None else f" (accuracy {100 * p['accuracy']:.1f}%)"
            lines.append(f"- {r['name']}: confusions from {p['source']}{acc}.")
    u = record.get("umap")
    if u and u["panels"]:
        lines += ["", "## UMAP of the most-confused classes", "",
                  f"Classes {', '.join(map(str, u['classes']))} (from {u['chosen_from']}'s confusions; "
                  f"UMAP seed {u['seed']}, n_neighbors {u['n_neighbors']}).", "",
                  "![umap](umap_confused.png)"]
    conv = record.get("convergence")
    if conv:
        pct = f"{100 * conv['level']:g}%"
        lines += ["", "## Convergence (validation accuracy per epoch)", "",
                  f"| method | runs | final | best (mean curve) | first epoch ≥ {pct} of final (mean curve) "
                  f"| same, per run (mean ± std) |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for m, c in conv["methods"].items():
            per_run = _f(c["run_epochs_to_level_mean"], 1)
            if c["run_epochs_to_level_std"] is not None:
                per_run += f" ± {c['run_epochs_to_level_std']:.1f}"
            lines.append(f"| {m} | {c['runs']} | {_f(c['final'], 4)} | {_f(c['best'], 4)} | "
                         f"{'' if c['epoch_to_level'] is None else c['epoch_to_level']} | {per_run} |")
        lines += ["", "![convergence](convergence.png)"]
    if record.get("notes"):
        lines += ["", "Notes:", ""] + [f"- {n}" for n in record["notes"]]
    return "\n".join(lines)
