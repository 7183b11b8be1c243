"""Barlow Twins: push the cross-correlation of the two views' embeddings to the identity.

Barlow Twins (Zbontar et al., 2021) is one of the seed's multi-view pretext tasks
(``../shared/seeds/003_302de149e7ba2620.txt``, section 2.3 "Pre-training Tasks": "the
cross-correlation between the anchor and positive embeddings is close to the identity matrix";
section 3.4 finds it, with contrastive learning, the most stable method).

Each dimension is standardised over the batch, with the biased batch variance (as BatchNorm
without affine parameters does) and a small ``eps``::

    zn_{n,i} = (z_{n,i} - mean_n z_{n,i}) / sqrt(var_n z_{n,i} + eps)
    C = z1n^T z2n / N                                  ([d, d]; C_ij is a correlation, in [-1, 1])
    L = sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2

``L = 0`` (up to ``eps``) exactly when ``C`` is the identity: each dimension perfectly correlated
across the views and uncorrelated with the others. ``lambda = 5e-3`` is the paper's value.

Distributed convention (callers gather, as ``SimCLRTask`` does for :func:`~.nt_xent.nt_xent`):
the means, variances and ``C`` are statistics of the batch passed in, so under DDP call
``barlow_twins_loss(gather(z1), gather(z2))`` (:func:`tympan.objectives.distributed.gather`).
Every rank then computes the same global loss and the parameter gradients equal those of one
process on the whole batch (see :mod:`tympan.objectives.distributed`).

Shapes: ``z1, z2 [N, d]`` with ``N >= 2`` -> scalar.
"""

from __future__ import annotations

import torch
from torch import Tensor


def standardize(z: Tensor, eps: float = 1e-5) -> Tensor:
    """Each column of ``z [N, d]`` to batch mean 0 and (biased) batch std 1, computed in float32."""
    z = z.float()
    mean = z.mean(dim=0, keepdim=True)
    var = z.var(dim=0, unbiased=False, keepdim=True)
    return (z - mean) / torch.sqrt(var + eps)


def cross_correlation(z1: Tensor, z2: Tensor, eps: float = 1e-5) -> Tensor:
    """``C = standardize(z1)^T standardize(z2) / N``, ``[d, d]``."""
    return standardize(z1, eps).T @ standardize(z2, eps) / z1.shape[0]


def barlow_twins_loss(z1: Tensor, z2: Tensor, lambda_offdiag: float = 5e-3, eps: float = 1e-5) -> Tensor:
    """Barlow Twins loss of paired embeddings ``z1, z2 [N, d]`` (the global batch under DDP)."""
    if z1.shape != z2.shape or z1.dim() != 2 or z1.shape[0] < 2:
        raise ValueError(
            f"barlow_twins_loss expects two [N, d] tensors with N >= 2, "
            f"got {tuple(z1.shape)}, {tuple(z2.shape)}"
        )
    c = cross_correlation(z1, z2, eps)
    diag = torch.diagonal(c)
    on_diag = (1.0 - diag).pow(2).sum()
    eye = torch.eye(c.shape[0], dtype=torch.bool, device=c.device)
    off_diag = c.masked_fill(eye, 0.0).pow(2).sum()
    return on_diag + lambda_offdiag * off_diag
