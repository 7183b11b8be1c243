"""Pretext-task selection before training (ARCHITECTURE.md, "pretext/").

* :mod:`tympan.pretext.hsic`: the conditional-independence estimate HSIC(X, Z | Y) of Zaiem &
  Parcollet (seed ``004``, section III-B, eqs. 1-6), the softmax/sparsemax group weighting
  (section V, eqs. 7-9) and the All / MRMR / RFE baselines (section VI-A). A *lower* estimate
  means a *more useful* pretext-task label.

The HSIC estimator itself is ``tympan.pretext.hsic.hsic`` (not re-exported here, so that
``tympan.pretext.hsic`` stays the module).
"""

from tympan.pretext.hsic import (
    ClassHSIC,
    PretextSelection,
    all_weights,
    centering,
    class_hsic,
    conditional_hsic,
    conditional_hsic_table,
    cosine_kernel,
    downsample_logmel,
    median_heuristic,
    mrmr_weights,
    rbf_kernel,
    rfe_weights,
    select_pretext_tasks,
    select_weights,
    weighted_conditional_hsic,
)

__all__ = [
    "ClassHSIC",
    "PretextSelection",
    "all_weights",
    "centering",
    "class_hsic",
    "conditional_hsic",
    "conditional_hsic_table",
    "cosine_kernel",
    "downsample_logmel",
    "median_heuristic",
    "mrmr_weights",
    "rbf_kernel",
    "rfe_weights",
    "select_pretext_tasks",
    "select_weights",
    "weighted_conditional_hsic",
]
