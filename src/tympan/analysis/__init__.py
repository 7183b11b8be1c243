"""Diagnostics of trained representations (ARCHITECTURE.md, "analysis/").

* :mod:`tympan.analysis.invariance`: how far each augmentation moves each task's embedding
  (Mahalanobis distance; MT-SLVR, "Ablation Studies" / "Learnt Invariance").
* :mod:`tympan.analysis.head_weights`: how much a few-shot linear readout relies on each task's
  columns (MT-SLVR, "Ablation Studies" / "Feature Selection").
"""

from tympan.analysis.head_weights import HeadWeights, format_head_weights, head_weights
from tympan.analysis.invariance import (
    InvarianceTable,
    format_invariance,
    invariance_report,
    load_clips,
    mahalanobis_distances,
    measure_invariance,
    shrunk_covariance,
)

__all__ = [
    "HeadWeights",
    "InvarianceTable",
    "format_head_weights",
    "format_invariance",
    "head_weights",
    "invariance_report",
    "load_clips",
    "mahalanobis_distances",
    "measure_invariance",
    "shrunk_covariance",
]
