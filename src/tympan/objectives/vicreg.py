"""VICReg: variance, invariance and covariance regularisation of two views' embeddings.

VICReg (Bardes, Ponce & LeCun, 2022) is one of the seed's multi-view pretext tasks
(``../shared/seeds/003_302de149e7ba2620.txt``, section 2.3 "Pre-training Tasks": the invariance
term minimises the views' mean squared distance, the variance term "promotes diversity among
embedding vectors within a batch", the covariance term decorrelates the dimensions; section 3.4
finds it "highly sensitive to hyperparameter choice since it uses multiple losses").

For ``z1, z2 [N, d]``, with unbiased batch variances and covariances::

    inv = 1/(N d) * sum_{n,i} (z1_{n,i} - z2_{n,i})^2
    v(z) = 1/d * sum_i relu(gamma - sqrt(Var(z_{:,i}) + eps))
    c(z) = 1/d * sum_{i != j} Cov(z)_ij^2,   Cov(z) = (z - mean)^T (z - mean) / (N - 1)
    var = (v(z1) + v(z2)) / 2
    cov = c(z1) + c(z2)
    L = sim_coeff * inv + std_coeff * var + cov_coeff * cov

The defaults 25 / 25 / 1 are the VICReg paper's; the seed's public repository weighted the three
terms 1 / 1 / 1 (pass ``sim_coeff=1, std_coeff=1, cov_coeff=1``). The variance term is ``0`` once
every dimension's standard deviation reaches ``gamma``.

Distributed convention (callers gather, as for :func:`~.nt_xent.nt_xent`): the variance and
covariance are statistics of the batch passed in, so under DDP call
``vicreg_loss(gather(z1), gather(z2))`` (:func:`tympan.objectives.distributed.gather`); every rank
computes the same global loss, and the gradients equal those of one process on the whole batch
(see :mod:`tympan.objectives.distributed`).

Shapes: ``z1, z2 [N, d]`` with ``N >= 2`` -> scalar (:func:`vicreg_loss`) or the three unweighted
scalars (:func:`vicreg_terms`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class VICRegTerms(NamedTuple):
    """The three unweighted VICReg terms, each a 0-dim tensor."""

    invariance: Tensor
    variance: Tensor
    covariance: Tensor


def variance_hinge(z: Tensor, gamma: float = 1.0, eps: float = 1e-4) -> Tensor:
    """``v(z) = mean_i relu(gamma - sqrt(Var(z_{:,i}) + eps))`` of ``z [N, d]`` (unbiased variance)."""
    std = torch.sqrt(z.var(dim=0) + eps)
    return F.relu(gamma - std).mean()


def covariance_penalty(z: Tensor) -> Tensor:
    """``c(z) = sum_{i != j} Cov(z)_ij^2 / d`` of ``z [N, d]`` (unbiased covariance)."""
    n, d = z.shape
    centred = z - z.mean(dim=0, keepdim=True)
    cov = centred.T @ centred / (n - 1)
    eye = torch.eye(d, dtype=torch.bool, device=z.device)
    return cov.masked_fill(eye, 0.0).pow(2).sum() / d


def vicreg_terms(z1: Tensor, z2: Tensor, gamma: float = 1.0, eps: float = 1e-4) -> VICRegTerms:
    """Invariance, variance (mean of the two branches) and covariance (sum of the two branches)."""
    if z1.shape != z2.shape or z1.dim() != 2 or z1.shape[0] < 2:
        raise ValueError(
            f"vicreg expects two [N, d] tensors with N >= 2, got {tuple(z1.shape)}, {tuple(z2.shape)}"
        )
    z1, z2 = z1.float(), z2.float()
    return VICRegTerms(
        invariance=F.mse_loss(z1, z2),
        variance=0.5 * (variance_hinge(z1, gamma, eps) + variance_hinge(z2, gamma, eps)),
        covariance=covariance_penalty(z1) + covariance_penalty(z2),
    )


def vicreg_loss(
    z1: Tensor,
    z2: Tensor,
    sim_coeff: float = 25.0,
    std_coeff: float = 25.0,
    cov_coeff: float = 1.0,
    gamma: float = 1.0,
    eps: float = 1e-4,
) -> Tensor:
    """Weighted VICReg loss of ``z1, z2 [N, d]`` (the global batch under DDP), from :func:`vicreg_terms`."""
    terms = vicreg_terms(z1, z2, gamma, eps)
    return sim_coeff * terms.invariance + std_coeff * terms.variance + cov_coeff * terms.covariance
