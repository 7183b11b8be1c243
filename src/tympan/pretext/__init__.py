"""Pretext-task selection before training (ARCHITECTURE.md, "pretext/").

Zaiem & Parcollet, "Pretext-task selection by conditional independence" (seed ``004``):

* :mod:`tympan.pretext.labels`: the candidate pretext-task labels (openSMILE LLDs of the seed's
  Table I and section VIII-B, plus user-registered functions), extracted per 10 ms frame and
  as clip means, cached per file, in parallel (:func:`extract_labels`, :class:`PretextLabels`).
* :mod:`tympan.pretext.hsic`: the conditional-independence estimate HSIC(X, Z | Y)
  (section III-B, eqs. 1-6), the softmax/sparsemax group weighting (section V, eqs. 7-9) and the
  All / MRMR / RFE baselines (section VI-A). A *lower* estimate means a *more useful* label.
* :mod:`tympan.pretext.select`: manifest + labels file -> log-mel X, clip means, classes ->
  a recorded :class:`PretextSelection` (:func:`select_from_data`).
* :mod:`tympan.pretext.validate`: Spearman / Kendall tau between CI estimates and downstream
  errors (section IV).
* :mod:`tympan.pretext.robustness`: CI estimates on growing subsets (section IX, Fig. 3).

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
from tympan.pretext.labels import (
    CANDIDATES,
    DEFAULT_CANDIDATES,
    Candidate,
    PretextLabels,
    extract_labels,
    register_candidate,
    unregister_candidate,
)
from tympan.pretext.robustness import (
    format_robustness,
    plot_robustness,
    robustness_study,
    robustness_to_json,
    summarise_robustness,
)
from tympan.pretext.select import format_selection, logmel_features, select_from_data, selection_inputs
from tympan.pretext.validate import ValidationResult, format_validation, read_errors_csv, validate_estimates

__all__ = [
    "CANDIDATES",
    "DEFAULT_CANDIDATES",
    "Candidate",
    "ClassHSIC",
    "PretextLabels",
    "PretextSelection",
    "ValidationResult",
    "all_weights",
    "centering",
    "class_hsic",
    "conditional_hsic",
    "conditional_hsic_table",
    "cosine_kernel",
    "downsample_logmel",
    "extract_labels",
    "format_robustness",
    "format_selection",
    "format_validation",
    "logmel_features",
    "median_heuristic",
    "mrmr_weights",
    "plot_robustness",
    "rbf_kernel",
    "read_errors_csv",
    "register_candidate",
    "rfe_weights",
    "robustness_study",
    "robustness_to_json",
    "select_from_data",
    "select_pretext_tasks",
    "select_weights",
    "selection_inputs",
    "summarise_robustness",
    "unregister_candidate",
    "validate_estimates",
    "weighted_conditional_hsic",
]
