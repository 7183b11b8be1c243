"""Gathering across processes for losses that need the global batch.

Contrastive negatives (and, in other objectives, batch statistics) should come from the whole
global batch under data parallelism. ``torch.distributed.nn.functional.all_gather`` is
autograd-aware: its backward sums each rank's gradient for the gathered slice back onto the rank
that owns it. If every rank computes the same global loss, that sum is ``world_size`` times the
single-process gradient of its slice, and DDP's gradient averaging divides it out again, so the
parameter gradients equal those of one process on the concatenated batch.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
from torch import Tensor


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather(x: Tensor) -> Tensor:
    """Concatenate ``x [n, ...]`` from every rank along dim 0 (rank order), keeping gradients.

    Every rank must pass the same ``n``. Without an initialised process group this is ``x``.
    """
    if world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():
        # deprecated in favour of a private (underscore) module whose API is not stable yet;
        # this one is public, autograd-aware and works with gloo and NCCL
        warnings.simplefilter("ignore", FutureWarning)
        return torch.cat(all_gather(x.contiguous()), dim=0)
