"""Metrics and their uncertainty.

Few-shot accuracy is reported as the mean over episodes with a 95% confidence interval from the
normal approximation, ``1.96 * s / sqrt(E)`` with ``s`` the sample standard deviation of the
per-episode accuracies, the form used by MetaAudio and by the MT-SLVR tables
(``../shared/seeds/000_e1eab6133071efa6.txt``, "63.40 ± 0.39").
"""

from __future__ import annotations

import math

import numpy as np

Z95 = 1.959963984540054  # two-sided 95% quantile of the standard normal


def mean_ci95(values: np.ndarray | list[float]) -> tuple[float, float]:
    """Mean and 95% CI half-width ``1.96 * std(ddof=1) / sqrt(n)`` of ``values``.

    A single value has an undefined spread: its half-width is ``nan``.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("mean_ci95 needs at least one value")
    if v.size == 1:
        return float(v[0]), math.nan
    return float(v.mean()), float(Z95 * v.std(ddof=1) / math.sqrt(v.size))


def intervals_overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Whether ``mean ± half-width`` intervals ``a`` and ``b`` overlap."""
    return abs(a[0] - b[0]) <= a[1] + b[1]
