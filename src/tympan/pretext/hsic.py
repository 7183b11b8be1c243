"""Pretext-task selection by conditional independence (HSIC), with group weighting and baselines.

Zaiem & Parcollet, "Pretext-task selection by conditional independence"
(``../shared/seeds/004_f3e19d7efff003e6.txt``). Given downstream clips ``X``, their discrete
downstream labels ``Y`` and a clip-level pretext-task label ``Z`` (the mean of a frame-wise signal
feature), the utility of ``Z`` is estimated by how conditionally independent ``Z`` and ``X`` are
given ``Y`` (section III-B):

    K_ij = cos(GD(x_i), GD(x_j))                                  (eq. 1, 3; GD = Gaussian downsampling)
    L_ij = RBF(z_i, z_j) = exp(-||z_i - z_j||^2 / (2 sigma^2))    (eq. 2, 4)
    HSIC_c = trace(K_c H_c L_c H_c) / n_c^2,  H_c = I - (1/n_c) 1 1^T   (eq. 5)
    HSIC(X, Z | Y) = (1/M) sum_c n_c HSIC_c                        (eq. 6)

with K_c, L_c restricted to the n_c clips of downstream class c and M = sum_c n_c.

Direction (section III-B, after eq. 5): "the lower this value is, the more independent the two
arguments of HSIC are and the better the pretext-task label should be for self-supervision";
section IV: "the lower the CI estimate is, ... the lower should the downstream error be". So
**lower = more useful**, and every ranking here lists the lowest value first. A label that is a
function of the downstream class alone is constant inside every class, so L_c is all ones and
its estimate is exactly 0 (the seed's "Blue skies / Yellow deserts" colourisation example).

Note on the centring matrix: H = I - (1/n) 1 1^T (a known defect of the public code wrote
I - 1/n^2). It is never formed here: trace(K H L H) = <H K H, L>_F, and H K H is K with its row
and column means removed and its grand mean added back (double centring), done per class with
masks over a padded [classes, n_max, n_max] batch, so every class is scored in one tensor op.

Group weighting (section V, eq. 7-9): for candidates Z_1..Z_k and weights lambda on the simplex,

    [L_c]_ij = exp(-(1 / (2 sigma^2)) sum_h lambda_h ||z_h,i - z_h,j||^2)      (eq. 7)

and lambda = softmax(W) (eq. 9) or sparsemax(W) (section V-B) minimises HSIC(Z_lambda, X | Y)
by gradient descent on W. Eq. 7 weights the *squared* distances by lambda_h (not lambda_h^2,
which the literal concatenation (lambda_1 Z_1, ...) would give); tympan follows eq. 7.

Baselines (section VI-A): "All" (equal weights), MRMR with the HSIC relevance and
mutual-information redundancy of eq. 10, and RFE with a support-vector classifier; both keep
p = 4 labels.

Settings the seed fixes and the ones it leaves open:

* samples per class: the seed shows (section IX, Fig. 3) that 100 clips per class already give
  estimates close to those with 1500 and used 50 VoxCeleb speakers; tympan caps each class at
  ``max_per_class = 300`` clips drawn with a seeded generator.
* RBF width sigma: not stated in the seed. Default: the median heuristic (median pairwise
  distance of the pooled, standardised label values); pass a float to fix it.
* Gaussian-downsampling length: not stated in the seed. Default :data:`DEFAULT_LENGTH` = 20
  frames per mel band, Gaussian std = half an output step (see :func:`downsample_logmel`).
* Pretext labels are standardised per column over the clips used (z-score) and a p-column
  label is further divided by sqrt(p), so that every candidate has the same mean squared
  pairwise distance and the weights of eq. 7 compare like with like.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from tympan.errors import ConfigError, TympanError

DEFAULT_LENGTH = 20
"""Frames per mel band after Gaussian downsampling (tympan's choice; the seed gives no value)."""

DEFAULT_MAX_PER_CLASS = 300
"""Clips kept per downstream class (seed section IX: 100 per class is already close to 1500)."""

_MEDIAN_POINTS = 2000  # pooled points used for the median heuristic (O(m^2) pairwise distances)
_ELEMENT_BUDGET = 1 << 24  # elements of a temporary tensor before work is chunked

SigmaSpec = float | Literal["median"] | None
ArrayLike = np.ndarray | Tensor | Sequence[float]


# --------------------------------------------------------------------------------------------
# Gaussian downsampling of log-mel spectrograms (seed eq. 1, GD)
# --------------------------------------------------------------------------------------------


def downsample_logmel(
    logmel: np.ndarray | Tensor | Sequence[np.ndarray | Tensor],
    length: int = DEFAULT_LENGTH,
    *,
    lengths: Sequence[int] | np.ndarray | Tensor | None = None,
    width: float = 0.5,
    flatten: bool = True,
) -> Tensor:
    """Gaussian downsampling GD(.) of log-mel spectrograms to ``length`` frames (seed eq. 1).

    Output frame ``k`` of a clip with ``T`` valid frames is a Gaussian-weighted average of its
    frames, centred at ``(k + 0.5) T / length - 0.5`` (equally spaced, covering the clip) with
    standard deviation ``max(width * T / length, 0.5)`` frames; weights are renormalised over the
    valid frames, so padding never leaks in and clips shorter than ``length`` are smoothly
    upsampled instead of failing. The seed names the operation but not its length; the default
    20 frames is tympan's choice (:data:`DEFAULT_LENGTH`).

    Args:
        logmel: ``[N, n_mels, T]`` array/tensor, or a list of ``[n_mels, T_i]`` clips of
            varying lengths (padded internally with zeros and masked).
        length: output frames per mel band.
        lengths: valid frames per clip when ``logmel`` is a padded ``[N, n_mels, T]`` batch.
        width: Gaussian std in output steps (``T / length`` input frames).
        flatten: return ``[N, n_mels * length]`` (mel-major) instead of ``[N, n_mels, length]``.

    Returns:
        float tensor (float64 if the input is float64, else float32), batched over clips; work is
        chunked to bound memory, with no per-clip Python loop.
    """
    if int(length) != length or length < 1:
        raise ConfigError(f"downsample_logmel: length must be a positive integer, got {length!r}")
    if not width > 0:
        raise ConfigError(f"downsample_logmel: width must be > 0, got {width!r}")
    length = int(length)
    if isinstance(logmel, (list, tuple)):
        if not logmel:
            raise TympanError("downsample_logmel: got an empty list of spectrograms; pass at least one clip")
        clips = [torch.as_tensor(np.asarray(c) if not isinstance(c, Tensor) else c) for c in logmel]
        bad = [i for i, c in enumerate(clips) if c.ndim != 2]
        if bad:
            raise TympanError(f"downsample_logmel: clip {bad[0]} has shape {tuple(clips[bad[0]].shape)}; "
                              "each clip must be [n_mels, T]")
        n_mels = {c.shape[0] for c in clips}
        if len(n_mels) > 1:
            raise TympanError(f"downsample_logmel: clips have different numbers of mel bands {sorted(n_mels)}; "
                              "compute every log-mel with the same frontend")
        dtype = torch.float64 if any(c.dtype == torch.float64 for c in clips) else torch.float32
        t_len = torch.tensor([c.shape[1] for c in clips])
        # [N, T_max, n_mels] -> [N, n_mels, T_max]; zero padding is masked out below.
        x = torch.nn.utils.rnn.pad_sequence([c.to(dtype).T for c in clips], batch_first=True).transpose(1, 2)
    else:
        x = torch.as_tensor(np.asarray(logmel) if not isinstance(logmel, Tensor) else logmel)
        if x.ndim != 3:
            raise TympanError(f"downsample_logmel: logmel has shape {tuple(x.shape)}; pass [N, n_mels, T] "
                              "or a list of [n_mels, T] clips")
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        x = x.to(dtype)
        if lengths is None:
            t_len = torch.full((x.shape[0],), x.shape[2])
        else:
            t_len = torch.as_tensor(np.asarray(lengths)).long().reshape(-1)
            if t_len.numel() != x.shape[0] or bool((t_len > x.shape[2]).any()):
                raise TympanError(f"downsample_logmel: lengths must have one entry per clip ({x.shape[0]}) "
                                  f"each <= {x.shape[2]} frames")
    if bool((t_len < 1).any()):
        i = int(torch.nonzero(t_len < 1)[0])
        raise TympanError(f"downsample_logmel: clip {i} has no frames; drop empty clips")
    n, _, t_max = x.shape
    valid = torch.arange(t_max)[None, None, :] < t_len[:, None, None]
    if not bool(torch.isfinite(x).masked_fill(~valid, True).all()):
        i = int(torch.nonzero(~torch.isfinite(x).masked_fill(~valid, True).flatten(1).all(1))[0])
        raise TympanError(f"downsample_logmel: clip {i} contains NaN or inf; fix its audio or log offset")

    chunk = max(1, _ELEMENT_BUDGET // max(1, length * t_max))
    t = torch.arange(t_max, dtype=dtype)[None, None, :]
    k = torch.arange(length, dtype=dtype)[None, :, None] + 0.5
    out = []
    for s in range(0, n, chunk):  # chunks of clips bound memory; each chunk is one batched op
        tl = t_len[s:s + chunk].to(dtype)[:, None, None]  # [b, 1, 1]
        hop = tl / length
        centre = k * hop - 0.5  # [b, length, 1]
        std = torch.clamp(width * hop, min=0.5)
        w = torch.exp(-0.5 * ((t - centre) / std) ** 2) * (t < tl)
        w = w / w.sum(-1, keepdim=True)
        out.append(torch.einsum("bkt,bmt->bmk", w, x[s:s + chunk]))
    res = torch.cat(out)
    return res.flatten(1) if flatten else res


# --------------------------------------------------------------------------------------------
# Kernels and HSIC (seed eqs. 1-5)
# --------------------------------------------------------------------------------------------


def _tensor(x: Any, name: str, dtype: torch.dtype = torch.float64) -> Tensor:
    try:
        t = x if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x, dtype=np.float64))
    except (TypeError, ValueError) as e:
        raise TympanError(f"{name}: cannot be read as a numeric array ({e})") from None
    return t.detach().to(dtype)


def cosine_kernel(X: ArrayLike) -> Tensor:
    """Cosine-similarity Gram matrix ``K_ij = <x_i, x_j> / (||x_i|| ||x_j||)`` (seed eqs. 1, 3).

    ``X [n, d]`` (or batched ``[..., n, d]``); for flattened spectrograms ``<x, x'>`` is the
    Frobenius inner product ``trace(x^T x')`` of eq. 3. An all-zero row gives zero similarities.
    Returns ``[n, n]`` (float64 unless a float32 tensor is passed).
    """
    Xt = X if isinstance(X, Tensor) and X.is_floating_point() else _tensor(X, "X")
    if Xt.ndim < 2:
        raise TympanError(f"cosine_kernel: X has shape {tuple(Xt.shape)}; pass [n, d]")
    Xn = F.normalize(Xt, dim=-1)
    return Xn @ Xn.transpose(-1, -2)


def _pairwise_sq(z: Tensor) -> Tensor:
    """Exact squared Euclidean distances ``[..., n, n]`` of ``z [..., n, p]`` (no matmul trick)."""
    d = None
    for j in range(z.shape[-1]):  # p columns (a handful), not clips
        col = z[..., j]
        term = (col[..., :, None] - col[..., None, :]) ** 2
        d = term if d is None else d + term
    return d


def median_heuristic(z: ArrayLike, *, max_points: int = _MEDIAN_POINTS, seed: int = 0) -> float:
    """Median heuristic RBF width: the median pairwise Euclidean distance of ``z [n]`` or ``[n, p]``.

    Uses a seeded random subset of ``max_points`` rows when ``n`` is larger. When more than half
    the pairs tie at distance 0 (a discrete label), falls back to the median of the non-zero
    distances. Raises :class:`TympanError` for a constant ``z``.
    """
    zt = _tensor(z, "z")
    zt = zt.reshape(-1, 1) if zt.ndim == 1 else zt
    if zt.shape[0] > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(zt.shape[0], max_points, replace=False))
        zt = zt[torch.as_tensor(keep)]
    if zt.shape[0] < 2:
        raise TympanError("median_heuristic: needs at least 2 values")
    dist = torch.pdist(zt).numpy()  # the n(n-1)/2 distances i < j
    pos = dist[dist > 0]
    if pos.size == 0:
        raise TympanError("median_heuristic: the label is constant, so no RBF width exists; drop it")
    med = float(np.median(dist))  # the usual median (mean of the two middle values)
    return med if med > 0 else float(np.median(pos))


def rbf_kernel(z: ArrayLike, sigma: SigmaSpec = None) -> Tensor:
    """RBF Gram matrix ``L_ij = exp(-||z_i - z_j||^2 / (2 sigma^2))`` (seed eqs. 2, 4).

    ``z [n]`` or ``[n, p]``; ``sigma`` a positive float, or ``None`` / ``"median"`` for the
    median heuristic (:func:`median_heuristic`; the seed does not state its width).
    """
    zt = _tensor(z, "z")
    zt = zt.reshape(-1, 1) if zt.ndim == 1 else zt
    s = _resolve_sigma(sigma, lambda: median_heuristic(zt), "rbf_kernel")
    return torch.exp(-_pairwise_sq(zt) / (2.0 * s * s))


def centering(n: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """The centring matrix ``H = I_n - (1/n) 1 1^T`` of seed eq. 5 (not ``I - 1/n^2``)."""
    if n < 1:
        raise ConfigError(f"centering: n must be >= 1, got {n}")
    return torch.eye(n, dtype=dtype) - torch.full((n, n), 1.0 / n, dtype=dtype)


def _double_centre(K: Tensor) -> Tensor:
    """``H K H``: remove row and column means, add the grand mean back."""
    row = K.mean(-1, keepdim=True)
    col = K.mean(-2, keepdim=True)
    return K - row - col + K.mean((-2, -1), keepdim=True)


def hsic(K: ArrayLike, L: ArrayLike) -> Tensor:
    """Biased HSIC ``trace(K H L H) / n^2`` with ``H = I - (1/n) 1 1^T`` (seed eq. 5).

    ``K, L [n, n]`` or batched ``[B, n, n]``; computed as ``<H K H, L>_F / n^2`` by double
    centring, without forming ``H``. Returns a 0-dim tensor (or ``[B]``).
    """
    Kt = K if isinstance(K, Tensor) and K.is_floating_point() else _tensor(K, "K")
    Lt = L if isinstance(L, Tensor) and L.is_floating_point() else _tensor(L, "L")
    if Kt.shape != Lt.shape or Kt.ndim < 2 or Kt.shape[-1] != Kt.shape[-2]:
        raise TympanError(f"hsic: K {tuple(Kt.shape)} and L {tuple(Lt.shape)} must be equal square [n, n]")
    n = Kt.shape[-1]
    return (_double_centre(Kt) * Lt).sum((-2, -1)) / (n * n)


def _resolve_sigma(sigma: Any, median: Any, where: str) -> float:
    if sigma is None or (isinstance(sigma, str) and sigma == "median"):
        return float(median())
    if isinstance(sigma, str):
        raise ConfigError(f"{where}: sigma must be a positive float or 'median', got {sigma!r}")
    try:
        s = float(sigma)
    except (TypeError, ValueError):
        s = float("nan")
    if not (s > 0 and math.isfinite(s)):
        raise ConfigError(f"{where}: sigma must be a positive finite float or 'median', got {sigma!r}")
    return s


# --------------------------------------------------------------------------------------------
# Per-class batching (seed eq. 5-6)
# --------------------------------------------------------------------------------------------


@dataclass
class _Groups:
    classes: list[Any]
    index: Tensor  # [C, n_max] row indices into the data (0 where padded)
    mask: Tensor  # [C, n_max] float 1/0
    sizes: np.ndarray  # [C] clips used per class
    used: np.ndarray  # sorted row indices of all clips used


def _check_x(X: Any) -> Tensor:
    Xt = _tensor(X, "X")
    if Xt.ndim < 2:
        raise TympanError(f"X has shape {tuple(Xt.shape)}; pass [n_clips, features] "
                          "(e.g. downsample_logmel output)")
    Xt = Xt.reshape(Xt.shape[0], -1)
    if not bool(torch.isfinite(Xt).all()):
        i = int(torch.nonzero(~torch.isfinite(Xt).all(1))[0])
        raise TympanError(f"X: clip {i} contains NaN or inf; fix or drop it before estimating HSIC")
    if bool((Xt.abs().sum(1) == 0).any()):
        i = int(torch.nonzero(Xt.abs().sum(1) == 0)[0])
        raise TympanError(f"X: clip {i} is all zeros, so its cosine similarity is undefined; drop it")
    return Xt


def _group(y: Any, n: int, max_per_class: int | None, seed: int) -> _Groups:
    y_arr = np.asarray(y)
    if y_arr.ndim != 1:
        raise TympanError(f"y has shape {y_arr.shape}; pass one downstream class label per clip")
    if len(y_arr) != n:
        raise TympanError(f"y has {len(y_arr)} labels but X has {n} clips; pass one label per clip")
    if y_arr.dtype.kind == "f" and bool(np.isnan(y_arr).any()):
        raise TympanError(f"y: label of clip {int(np.flatnonzero(np.isnan(y_arr))[0])} is NaN; "
                          "drop unlabelled clips")
    if max_per_class is not None and (int(max_per_class) != max_per_class or max_per_class < 2):
        raise ConfigError(f"max_per_class must be an integer >= 2 (or None), got {max_per_class!r}")
    classes, inv = np.unique(y_arr, return_inverse=True)
    counts = np.bincount(inv, minlength=len(classes))
    if (counts < 2).any():
        i = int(np.flatnonzero(counts < 2)[0])
        raise TympanError(f"y: downstream class {classes.tolist()[i]!r} has {int(counts[i])} clip(s); the per-class HSIC "
                          "needs at least 2 per class: drop the class or add clips")
    rng = np.random.default_rng(seed)
    order = np.argsort(inv, kind="stable")
    members = np.split(order, np.cumsum(counts)[:-1])
    chosen = []
    for m in members:  # one draw per class (not per clip), in sorted class order: deterministic
        if max_per_class is not None and len(m) > max_per_class:
            m = np.sort(rng.choice(m, int(max_per_class), replace=False))
        chosen.append(m)
    sizes = np.array([len(m) for m in chosen])
    n_max = int(sizes.max())
    index = np.zeros((len(chosen), n_max), dtype=np.int64)
    mask = np.zeros((len(chosen), n_max))
    for c, m in enumerate(chosen):
        index[c, : len(m)] = m
        mask[c, : len(m)] = 1.0
    return _Groups(list(classes.tolist()), torch.as_tensor(index), torch.as_tensor(mask), sizes,
                   np.sort(np.concatenate(chosen)))


def _centred_class_kernels(X: Tensor, g: _Groups) -> Tensor:
    """``H_c K_c H_c`` for every class, padded to ``[C, n_max, n_max]`` with zeros outside."""
    m = g.mask.to(X.dtype)
    Xp = F.normalize(X[g.index], dim=-1) * m[..., None]  # [C, n_max, d], padded rows zero
    K = Xp @ Xp.transpose(1, 2)
    n = torch.as_tensor(g.sizes, dtype=X.dtype)
    row = K.sum(-1) / n[:, None]  # padded entries are zero, so sums run over the class only
    grand = K.sum((-2, -1)) / (n * n)
    Kc = K - row[:, :, None] - row[:, None, :] + grand[:, None, None]
    return Kc * m[:, :, None] * m[:, None, :]


def _candidates(labels: Mapping[str, Any], n: int) -> dict[str, np.ndarray]:
    if not isinstance(labels, Mapping) or not labels:
        raise TympanError("labels: pass a non-empty dict {pretext-task name: values [n] or [n, p]}")
    out = {}
    for name, z in labels.items():
        try:
            a = np.asarray(z.detach().cpu().numpy() if isinstance(z, Tensor) else z, dtype=np.float64)
        except (TypeError, ValueError):
            raise TympanError(f"pretext label {name!r}: values are not numeric") from None
        a = a.reshape(-1, 1) if a.ndim == 1 else a
        if a.ndim != 2 or a.shape[0] != n:
            raise TympanError(f"pretext label {name!r} has shape {np.asarray(z).shape}; expected [{n}] or "
                              f"[{n}, p] (one value per clip of X)")
        bad = ~np.isfinite(a).all(1)
        if bad.any():
            raise TympanError(f"pretext label {name!r}: clip {int(np.flatnonzero(bad)[0])} is NaN or inf "
                              "(e.g. F0 of an unvoiced clip); impute or drop those clips")
        out[str(name)] = a
    return out


def _standardise(z: np.ndarray, used: np.ndarray, name: str) -> Tensor:
    """z-score each column over the clips used, then divide by sqrt(p) (see module docstring)."""
    u = z[used]
    mean, std = u.mean(0), u.std(0)
    if not (std > 0).any():
        raise TympanError(f"pretext label {name!r} is constant over the clips used, so it carries no "
                          "pretext task (its HSIC would be 0, the 'best'); drop it")
    std = np.where(std > 0, std, 1.0)
    return torch.as_tensor((z - mean) / std / math.sqrt(z.shape[1]))


def _prep_sigmas(sigma: Any, names: Sequence[str], zs: Mapping[str, Tensor], used: np.ndarray,
                 seed: int, where: str) -> dict[str, float]:
    out = {}
    for name in names:
        s = sigma.get(name) if isinstance(sigma, Mapping) else sigma
        out[name] = _resolve_sigma(s, lambda: median_heuristic(zs[name][torch.as_tensor(used)], seed=seed),
                                   f"{where} ({name!r})")
    return out


@dataclass
class ClassHSIC:
    """Per-class HSIC values of several candidates (seed eq. 5) and their eq. 6 aggregate.

    ``values[j, c]`` is ``HSIC_c`` of candidate ``names[j]`` for downstream class ``classes[c]``
    computed on ``sizes[c]`` clips; ``sigmas`` holds the RBF widths used (on standardised labels).
    """

    names: list[str]
    classes: list[Any]
    sizes: np.ndarray
    values: np.ndarray
    sigmas: dict[str, float]

    def aggregate(self) -> dict[str, float]:
        """``HSIC(X, Z | Y) = (1/M) sum_c n_c HSIC_c`` per candidate (seed eq. 6), in input order."""
        w = self.sizes / self.sizes.sum()
        return {name: float(self.values[j] @ w) for j, name in enumerate(self.names)}


def class_hsic(
    X: ArrayLike,
    labels: Mapping[str, ArrayLike],
    y: Sequence[Any] | np.ndarray,
    *,
    sigma: SigmaSpec | Mapping[str, float] = None,
    max_per_class: int | None = DEFAULT_MAX_PER_CLASS,
    seed: int = 0,
) -> ClassHSIC:
    """Per-class ``HSIC_c(X, Z)`` (seed eq. 5) of every candidate, all classes in one batch.

    Args:
        X: ``[n, d]`` clip features, typically :func:`downsample_logmel` output (higher-rank
            inputs are flattened per clip); the kernel is cosine similarity (eq. 1, 3).
        labels: ``{name: z}`` with ``z [n]`` or ``[n, p]`` clip-level pretext-task label values.
        y: ``[n]`` discrete downstream labels; each class needs at least 2 clips.
        sigma: RBF width on the standardised labels: ``None``/``"median"`` (median heuristic per
            candidate over the pooled clips used), a float, or ``{name: float}``.
        max_per_class: cap of clips per class (seeded random subset); ``None`` keeps all.
        seed: seeds the per-class subset and the median-heuristic subset.

    Classes are padded to the largest class with masks: the centred data kernels
    ``H_c K_c H_c`` form one ``[C, n_max, n_max]`` tensor computed once; each candidate then costs
    one batched RBF and one masked Frobenius product.
    """
    Xt = _check_x(X)
    n = Xt.shape[0]
    zs_raw = _candidates(labels, n)
    g = _group(y, n, max_per_class, seed)
    names = list(zs_raw)
    zs = {k: _standardise(v, g.used, k) for k, v in zs_raw.items()}
    sigmas = _prep_sigmas(sigma, names, zs, g.used, seed, "class_hsic")
    Kc = _centred_class_kernels(Xt, g)
    n_c = torch.as_tensor(g.sizes, dtype=Kc.dtype)
    values = np.zeros((len(names), len(g.classes)))
    for j, name in enumerate(names):  # candidates (a handful); classes and clips are batched
        L = torch.exp(-_pairwise_sq(zs[name][g.index]) / (2.0 * sigmas[name] ** 2))
        values[j] = ((Kc * L).sum((-2, -1)) / (n_c * n_c)).numpy()
    return ClassHSIC(names, g.classes, g.sizes, values, sigmas)


def conditional_hsic_table(
    X: ArrayLike,
    labels: Mapping[str, ArrayLike],
    y: Sequence[Any] | np.ndarray,
    *,
    sigma: SigmaSpec | Mapping[str, float] = None,
    max_per_class: int | None = DEFAULT_MAX_PER_CLASS,
    seed: int = 0,
) -> dict[str, float]:
    """``{name: HSIC(X, Z | Y)}`` (seed eq. 6) for many candidates, **sorted ascending**.

    Lower = more conditionally independent given the downstream class = more useful pretext task
    (seed section III-B), so the first entry is the most useful candidate. Arguments as
    :func:`class_hsic`.
    """
    table = class_hsic(X, labels, y, sigma=sigma, max_per_class=max_per_class, seed=seed).aggregate()
    return dict(sorted(table.items(), key=lambda kv: kv[1]))


def conditional_hsic(
    X: ArrayLike,
    z: ArrayLike,
    y: Sequence[Any] | np.ndarray,
    *,
    sigma: SigmaSpec = None,
    max_per_class: int | None = DEFAULT_MAX_PER_CLASS,
    seed: int = 0,
) -> float:
    """``HSIC(X, Z | Y) = (1/M) sum_c n_c HSIC_c(X, Z)`` of one pretext label (seed eqs. 1-6).

    Lower means a more useful pretext task. See :func:`class_hsic` for the arguments.
    """
    return class_hsic(X, {"z": z}, y, sigma=sigma, max_per_class=max_per_class, seed=seed).aggregate()["z"]


# --------------------------------------------------------------------------------------------
# Group weighting (seed eqs. 7-9, section V-B)
# --------------------------------------------------------------------------------------------


@dataclass
class _Problem:
    names: list[str]
    Kc: Tensor  # [C, n, n] centred data kernels
    D: Tensor  # [k, C, n, n] per-candidate squared distances of the standardised labels
    scale: Tensor  # [C] 1 / (n_c M): HSIC = sum_c <Kc, Lc> * scale_c
    sigma: float
    groups: _Groups


def _problem(X: Any, labels: Mapping[str, Any], y: Any, sigma: Any, max_per_class: int | None,
             seed: int, where: str) -> _Problem:
    Xt = _check_x(X)
    n = Xt.shape[0]
    zs_raw = _candidates(labels, n)
    g = _group(y, n, max_per_class, seed)
    names = list(zs_raw)
    zs = {k: _standardise(v, g.used, k) for k, v in zs_raw.items()}
    Kc = _centred_class_kernels(Xt, g)
    D = torch.stack([_pairwise_sq(zs[k][g.index]) for k in names])
    m = g.mask.to(D.dtype)
    D = D * m[None, :, :, None] * m[None, :, None, :]
    n_c = torch.as_tensor(g.sizes, dtype=Kc.dtype)
    # Default width: median heuristic of the equal-weight combination (sum_h d_h / k), kept fixed
    # during the optimisation so the objective depends on lambda only.
    if sigma is None or (isinstance(sigma, str) and sigma == "median"):
        used = torch.as_tensor(g.used)
        comb = torch.cat([zs[k][used] for k in names], 1) / math.sqrt(len(names))
        s = median_heuristic(comb, seed=seed)
    else:
        s = _resolve_sigma(sigma, lambda: 0.0, where)
    return _Problem(names, Kc, D, 1.0 / (n_c * float(g.sizes.sum())), s, g)


def _objective(p: _Problem, lam: Tensor) -> Tensor:
    """HSIC(Z_lambda, X | Y) with eq. 7's ``L_c = exp(-sum_h lambda_h d_h / (2 sigma^2))``."""
    L = torch.exp(-torch.einsum("k,kcij->cij", lam, p.D) / (2.0 * p.sigma ** 2))
    return ((p.Kc * L).sum((-2, -1)) * p.scale).sum()


def weighted_conditional_hsic(
    X: ArrayLike,
    labels: Mapping[str, ArrayLike],
    y: Sequence[Any] | np.ndarray,
    weights: Mapping[str, float],
    *,
    sigma: float | Literal["median"] | None = None,
    max_per_class: int | None = DEFAULT_MAX_PER_CLASS,
    seed: int = 0,
) -> float:
    """``HSIC(Z_lambda, X | Y)`` of a weighted group of labels (seed eq. 7), for given weights.

    ``sigma`` defaults to the median heuristic of the equal-weight combination of the
    standardised labels (the width :func:`select_weights` uses). With one-hot weights and the
    same float ``sigma`` this equals :func:`conditional_hsic` of that label.
    """
    p = _problem(X, labels, y, sigma, max_per_class, seed, "weighted_conditional_hsic")
    missing = [k for k in weights if k not in p.names]
    if missing:
        raise TympanError(f"weights: {missing[0]!r} is not one of the labels {p.names}")
    lam = torch.tensor([float(weights.get(k, 0.0)) for k in p.names], dtype=p.D.dtype)
    if bool((lam < 0).any()):
        raise ConfigError("weights: every weight must be >= 0 (seed section V-A)")
    return float(_objective(p, lam))


def select_weights(
    X: ArrayLike,
    labels: Mapping[str, ArrayLike],
    y: Sequence[Any] | np.ndarray,
    method: Literal["softmax", "sparsemax"] = "softmax",
    *,
    steps: int = 300,
    lr: float = 0.05,
    sigma: float | Literal["median"] | None = None,
    max_per_class: int | None = DEFAULT_MAX_PER_CLASS,
    seed: int = 0,
) -> tuple[dict[str, float], list[float]]:
    """Pretext-task weights minimising ``HSIC(Z_lambda, X | Y)`` (seed eqs. 7-9, section V-B).

    ``lambda = softmax(W)`` (eq. 9) or ``sparsemax(W)`` (``entmax.sparsemax``; exact zeros drop
    unneeded labels), so ``lambda >= 0`` and ``sum lambda = 1`` (eq. 8). ``W`` starts at 0 (equal
    weights) and is optimised with Adam for ``steps`` steps at learning rate ``lr``. The data
    kernels and the per-candidate squared distances of the standardised labels are computed once;
    each step is one batched ``[k, C, n, n]`` contraction.

    Returns ``({name: weight}, curve)`` with ``curve[i]`` the objective before step ``i`` and the
    last entry the objective at the returned weights.
    """
    if method not in ("softmax", "sparsemax"):
        raise ConfigError(f"select_weights: method must be 'softmax' or 'sparsemax', got {method!r}")
    if int(steps) != steps or steps < 0:
        raise ConfigError(f"select_weights: steps must be an integer >= 0, got {steps!r}")
    if not lr > 0:
        raise ConfigError(f"select_weights: lr must be > 0, got {lr!r}")
    if method == "sparsemax":
        try:
            from entmax import sparsemax as act
        except ImportError:
            raise TympanError("select_weights: method='sparsemax' needs the 'entmax' package: "
                              "pip install 'tympan[pretext]' (or pip install entmax)") from None
    else:
        act = torch.softmax
    p = _problem(X, labels, y, sigma, max_per_class, seed, "select_weights")
    torch.manual_seed(seed)  # nothing random below; kept so future stochastic variants are seeded
    W = torch.zeros(len(p.names), dtype=p.D.dtype, requires_grad=True)
    opt = torch.optim.Adam([W], lr=lr)
    curve: list[float] = []
    for _ in range(int(steps)):
        opt.zero_grad()
        loss = _objective(p, act(W, dim=-1))
        curve.append(float(loss.detach()))
        loss.backward()
        opt.step()
    with torch.no_grad():
        lam = act(W, dim=-1).to(torch.float64)
        curve.append(float(_objective(p, lam.to(p.D.dtype))))
    lam = torch.clamp(lam, min=0.0)
    lam = lam / lam.sum()
    return {k: float(v) for k, v in zip(p.names, lam.tolist())}, curve


# --------------------------------------------------------------------------------------------
# Baselines (seed section VI-A)
# --------------------------------------------------------------------------------------------


def all_weights(names: Sequence[str]) -> dict[str, float]:
    """The "All" baseline: every label with the same weight, ``1/k`` so the weights sum to 1.

    (The seed's Table VI writes 1 for every label; multiply by ``k`` for that scale.)
    """
    names = list(names)
    if not names:
        raise TympanError("all_weights: pass at least one pretext-task name")
    return {k: 1.0 / len(names) for k in names}


def _first_component(z: np.ndarray) -> np.ndarray:
    """A label as one column: itself, or the first principal component of its standardised columns."""
    if z.shape[1] == 1:
        return z[:, 0]
    s = z.std(0)
    zc = (z - z.mean(0)) / np.where(s > 0, s, 1.0)
    _, _, vt = np.linalg.svd(zc, full_matrices=False)
    return zc @ vt[0]


def _equal_on(names: Sequence[str], selected: Sequence[str]) -> dict[str, float]:
    return {k: (1.0 / len(selected) if k in selected else 0.0) for k in names}


def mrmr_weights(
    X: ArrayLike,
    labels: Mapping[str, ArrayLike],
    y: Sequence[Any] | np.ndarray,
    p: int = 4,
    *,
    ci: Mapping[str, float] | None = None,
    sigma: SigmaSpec | Mapping[str, float] = None,
    max_per_class: int | None = DEFAULT_MAX_PER_CLASS,
    seed: int = 0,
    normalise: bool = True,
) -> dict[str, float]:
    """MRMR baseline (seed eq. 10): the ``p`` labels maximising relevance minus redundancy.

        Score(S) = -(1/p) sum_{i in S} HSIC(X, Z_i | Y) - (1 / C(p, 2)) sum_{i<j in S} I(Z_i, Z_j)

    Relevance is the conditional HSIC (``ci`` if given, else :func:`conditional_hsic_table`);
    redundancy the mutual information between candidates (``sklearn``'s k-NN estimator
    ``mutual_info_regression``, symmetrised, on the clips used; a multi-column label enters
    through its first principal component). Eq. 10 is maximised exactly over all subsets when
    there are at most 50 000 of them, else greedily. Returns ``1/p`` on the selected labels and
    0 elsewhere.

    ``normalise``: HSIC values (~1e-4 to 1e-2) are orders of magnitude below mutual information
    in nats, so eq. 10 taken literally selects by redundancy alone. With ``normalise=True``
    (default) each term is divided by its largest value (relevance over candidates, redundancy
    over pairs) before summing, so both lie in [0, 1]; ``normalise=False`` is eq. 10 verbatim.
    """
    from sklearn.feature_selection import mutual_info_regression

    if int(p) != p or p < 1:
        raise ConfigError(f"mrmr_weights: p must be a positive integer, got {p!r}")
    Xt = _check_x(X)
    zs = _candidates(labels, Xt.shape[0])
    names = list(zs)
    g = _group(y, Xt.shape[0], max_per_class, seed)
    if ci is None:
        ci = conditional_hsic_table(Xt, labels, y, sigma=sigma, max_per_class=max_per_class, seed=seed)
    if p >= len(names):
        return _equal_on(names, names)
    cols = {k: _first_component(zs[k][g.used]) for k in names}
    k = len(names)
    mi = np.zeros((k, k))
    for i, j in itertools.combinations(range(k), 2):  # pairs of candidates, not clips
        a, b = cols[names[i]], cols[names[j]]
        v = 0.5 * (mutual_info_regression(a[:, None], b, random_state=seed)[0]
                   + mutual_info_regression(b[:, None], a, random_state=seed)[0])
        mi[i, j] = mi[j, i] = max(v, 0.0)
    rel = np.array([float(ci[n]) for n in names])
    if normalise:
        rel = rel / rel.max() if rel.max() > 0 else rel
        mi = mi / mi.max() if mi.max() > 0 else mi
    pairs = math.comb(int(p), 2)

    def score(S: Sequence[int]) -> float:
        red = sum(mi[a, b] for a, b in itertools.combinations(S, 2)) / pairs if pairs else 0.0
        return -rel[list(S)].mean() - red

    if math.comb(k, int(p)) <= 50_000:
        best = max(itertools.combinations(range(k), int(p)), key=score)
    else:
        best = [int(np.argmin(rel))]
        while len(best) < p:
            rest = [i for i in range(k) if i not in best]
            best.append(max(rest, key=lambda i: -rel[i] - (mi[i, best].mean() if best else 0.0)))
    return _equal_on(names, [names[i] for i in best])


def rfe_weights(
    labels: Mapping[str, ArrayLike],
    y: Sequence[Any] | np.ndarray,
    k: int = 4,
    *,
    max_per_class: int | None = DEFAULT_MAX_PER_CLASS,
    seed: int = 0,
) -> dict[str, float]:
    """RFE baseline (seed section VI-A): recursive elimination with a linear C-SVC down to ``k``.

    Features are the standardised clip-level label values (a multi-column label enters through
    its first principal component); the classifier predicts the downstream class and
    ``sklearn.feature_selection.RFE(SVC(kernel="linear"))`` drops one label per round. The seed
    used scikit-learn's default SVC hyperparameters; the default RBF kernel exposes no feature
    importances, so the kernel is linear (C = 1). Returns ``1/k`` on the kept labels, 0 elsewhere.
    """
    from sklearn.feature_selection import RFE
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    if int(k) != k or k < 1:
        raise ConfigError(f"rfe_weights: k must be a positive integer, got {k!r}")
    y_arr = np.asarray(y)
    zs = _candidates(labels, len(y_arr))
    names = list(zs)
    g = _group(y_arr, len(y_arr), max_per_class, seed)
    if k >= len(names):
        return _equal_on(names, names)
    feats = StandardScaler().fit_transform(np.stack([_first_component(zs[n][g.used]) for n in names], 1))
    rfe = RFE(SVC(kernel="linear"), n_features_to_select=int(k), step=1).fit(feats, y_arr[g.used])
    return _equal_on(names, [n for n, keep in zip(names, rfe.support_) if keep])


# --------------------------------------------------------------------------------------------
# Result record
# --------------------------------------------------------------------------------------------


@dataclass
class PretextSelection:
    """A pretext-task selection: weights, ranking and the per-candidate CI table behind them.

    ``ranking`` lists candidates by decreasing weight, ties broken by increasing conditional
    HSIC (lower = more useful); ``ci`` is ``{name: HSIC(X, Z | Y)}`` (seed eq. 6); ``curve`` the
    optimisation curve of softmax/sparsemax (empty for the baselines).
    """

    method: str
    weights: dict[str, float]
    ranking: list[str]
    ci: dict[str, float]
    settings: dict[str, Any] = field(default_factory=dict)
    curve: list[float] = field(default_factory=list)

    def selected(self) -> list[str]:
        """Names with a non-zero weight, in ranking order."""
        return [n for n in self.ranking if self.weights[n] > 0]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, path: str | Path | None = None, indent: int = 2) -> str:
        """The record as JSON text; also written to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=indent, default=_json_default)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def select_pretext_tasks(
    X: ArrayLike,
    labels: Mapping[str, ArrayLike],
    y: Sequence[Any] | np.ndarray,
    method: Literal["softmax", "sparsemax", "all", "mrmr", "rfe"] = "sparsemax",
    *,
    p: int = 4,
    steps: int = 300,
    lr: float = 0.05,
    sigma: float | Literal["median"] | None = None,
    max_per_class: int | None = DEFAULT_MAX_PER_CLASS,
    seed: int = 0,
) -> PretextSelection:
    """Run one selection method and record it with the per-candidate CI table.

    ``method``: ``"softmax"`` / ``"sparsemax"`` (:func:`select_weights`), or the baselines
    ``"all"``, ``"mrmr"`` (``p`` labels), ``"rfe"`` (``p`` labels).
    """
    methods = ("softmax", "sparsemax", "all", "mrmr", "rfe")
    if method not in methods:
        raise ConfigError(f"select_pretext_tasks: method must be one of {methods}, got {method!r}")
    ci_obj = class_hsic(X, labels, y, sigma=sigma, max_per_class=max_per_class, seed=seed)
    ci = ci_obj.aggregate()
    curve: list[float] = []
    if method in ("softmax", "sparsemax"):
        weights, curve = select_weights(X, labels, y, method, steps=steps, lr=lr, sigma=sigma,
                                        max_per_class=max_per_class, seed=seed)
    elif method == "all":
        weights = all_weights(list(ci))
    elif method == "mrmr":
        weights = mrmr_weights(X, labels, y, p, ci=ci, sigma=sigma, max_per_class=max_per_class, seed=seed)
    else:
        weights = rfe_weights(labels, y, p, max_per_class=max_per_class, seed=seed)
    ranking = sorted(weights, key=lambda n: (-weights[n], ci[n]))
    settings = {
        "estimator": "biased HSIC trace(K H L H)/n^2, H = I - 11^T/n; HSIC(X,Z|Y) = sum_c n_c HSIC_c / M",
        "direction": "lower HSIC(X,Z|Y) = more useful pretext task (seed section III-B)",
        "data_kernel": "cosine of the flattened (Gaussian-downsampled) log-mel",
        "label_kernel": "RBF on z-scored labels (p-column labels divided by sqrt(p))",
        "sigma_ci": ci_obj.sigmas,
        "sigma": sigma if sigma is not None else "median",
        "max_per_class": max_per_class,
        "clips_per_class": {str(c): int(s) for c, s in zip(ci_obj.classes, ci_obj.sizes)},
        "seed": seed,
    }
    if method in ("softmax", "sparsemax"):
        settings.update(steps=steps, lr=lr, optimiser="Adam", objective_final=curve[-1])
    if method in ("mrmr", "rfe"):
        settings["p"] = p
    if method == "mrmr":
        settings["mrmr_normalise"] = True
    return PretextSelection(method, weights, ranking, dict(sorted(ci.items(), key=lambda kv: kv[1])),
                            settings, curve)
