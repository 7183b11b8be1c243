"""BYOL's normalised mean squared error, its EMA momentum schedule and the EMA update.

BYOL (Grill et al., 2020) is one of the five multi-view pretext tasks of the seed
(``../shared/seeds/003_302de149e7ba2620.txt``, section 2.3 "Pre-training Tasks": "a mean squared
error between the normalized student predictions and target teacher projections", the teacher
"updated using an exponential moving average (EMA) of recent student weights"; section 3.4 notes
that BYOL "is highly sensitive to the EMA momentum").

With online (student) predictions ``p`` and target (teacher) projections ``z`` of the *same*
sample, the per-sample distance is the squared error of the unit vectors::

    d(p_i, z_i) = || p_i/||p_i|| - sg(z_i)/||z_i|| ||^2 = 2 - 2 cos(p_i, sg(z_i))   (sg: stop-gradient)

reduced over the **feature** axis for each sample (one cosine per row), then averaged over the
batch. Symmetrised over the views, each prediction targets the other view's projection::

    L = 1/2 * mean_i d(p1_i, z2_i) + 1/2 * mean_i d(p2_i, z1_i)

so ``L`` lies in ``[0, 4]`` and is ``0`` when every prediction points along its target. (The BYOL
paper sums the two directions instead of averaging them; that only doubles the loss.) The
seed's public code normalised each row but then summed the product over the *batch* axis
(``dim=0``), which mixes samples and gives one "cosine" per feature; here the sum runs over
features.

No negatives and no batch statistics, so no cross-rank gather is needed: under DDP the mean of
the per-rank losses is the global-batch loss when every rank holds the same number of samples.

Shapes: ``p1, p2, z1, z2 [N, d]`` -> scalar.

The target network follows the online one by EMA, ``t <- m t + (1 - m) o``, with the momentum
raised from ``base`` to ``final`` on a cosine schedule over training::

    m(k) = final - (final - base) * (cos(pi * k / K) + 1) / 2       (k = min(step, K))
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def normalized_mse(p: Tensor, z: Tensor) -> Tensor:
    """``mean_i (2 - 2 cos(p_i, z_i))`` over rows of ``p, z [N, d]``, with no gradient through ``z``."""
    cos = F.cosine_similarity(p.float(), z.detach().float(), dim=1)  # [N]: one cosine per sample
    return (2.0 - 2.0 * cos).mean()


def byol_loss(p1: Tensor, p2: Tensor, z1: Tensor, z2: Tensor) -> Tensor:
    """Symmetrised BYOL loss of online predictions ``p`` and target projections ``z``, all ``[N, d]``."""
    if not (p1.shape == p2.shape == z1.shape == z2.shape) or p1.dim() != 2:
        raise ValueError(
            f"byol_loss expects four [N, d] tensors of one shape, got "
            f"{[tuple(t.shape) for t in (p1, p2, z1, z2)]}"
        )
    return 0.5 * normalized_mse(p1, z2) + 0.5 * normalized_mse(p2, z1)


def ema_momentum(step: int, total_steps: int, base: float = 0.996, final: float = 1.0) -> float:
    """Cosine-scheduled EMA momentum: ``base`` at step 0, ``final`` at and after ``total_steps``."""
    if total_steps <= 0:
        raise ValueError(f"ema_momentum needs total_steps > 0, got {total_steps}")
    if step < 0:
        raise ValueError(f"ema_momentum needs step >= 0, got {step}")
    progress = min(step, total_steps) / total_steps
    return final - (final - base) * (math.cos(math.pi * progress) + 1.0) / 2.0


@torch.no_grad()
def ema_update_(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """In place: ``t <- momentum * t + (1 - momentum) * o`` for every parameter; buffers copied.

    Buffers (BatchNorm running statistics, ``num_batches_tracked``) are copied from ``online``
    rather than averaged. Both modules must have the same parameter and buffer names and shapes:
    pass the unwrapped model (``ddp.module``), not a ``DistributedDataParallel`` wrapper.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"ema_update_ needs 0 <= momentum <= 1, got {momentum}")
    t_params, o_params = dict(target.named_parameters()), dict(online.named_parameters())
    t_bufs, o_bufs = dict(target.named_buffers()), dict(online.named_buffers())
    for kind, t_items, o_items in (("parameters", t_params, o_params), ("buffers", t_bufs, o_bufs)):
        if t_items.keys() != o_items.keys():
            raise ValueError(
                f"ema_update_: target and online {kind} differ: "
                f"{sorted(t_items.keys() ^ o_items.keys())}"
            )
        for name, t in t_items.items():
            if t.shape != o_items[name].shape:
                raise ValueError(
                    f"ema_update_: {kind[:-1]} {name!r} has shape {tuple(t.shape)} in target, "
                    f"{tuple(o_items[name].shape)} in online"
                )
    for name, t in t_params.items():
        t.mul_(momentum).add_(o_params[name].detach(), alpha=1.0 - momentum)
    for name, t in t_bufs.items():
        t.copy_(o_bufs[name])
