"""Multi-label augmentation prediction (MLAP), MT-SLVR's predictive objective.

``../shared/seeds/000_e1eab6133071efa6.txt``, "Main Experiments & Results": "a multi-label
classification over augmentations, where a label of 1 is assigned if that augmentation is present
and 0 otherwise". With logits ``s [N, K]`` from the predictive head and multi-hot labels
``y [N, K]`` (``K`` = number of ops in the pipeline, 7 for the full CLAR set)::

    L = - 1/(N K) sum_{i,k} [ y_ik log sigma(s_ik) + (1 - y_ik) log(1 - sigma(s_ik)) ]

Shapes: ``logits, labels [N, K]`` -> scalar.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def aug_prediction_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean binary cross-entropy of ``logits [N, K]`` against multi-hot ``labels [N, K]``."""
    if logits.shape != labels.shape or logits.dim() != 2:
        raise ValueError(
            f"aug_prediction_loss expects logits and labels [N, K] of one shape, got "
            f"{tuple(logits.shape)}, {tuple(labels.shape)}"
        )
    return F.binary_cross_entropy_with_logits(logits.float(), labels.float())
