"""DINO-style clustering: cross-entropy to a centred, sharpened teacher over ``K`` prototypes.

The "clustering" pretext task of the seed (``../shared/seeds/003_302de149e7ba2620.txt``,
section 2.3 "Pre-training Tasks", after SwAV and DINO, Caron et al. 2020/2021): "the teacher
generates the target class distribution the student has to match via a cross-entropy loss", the
teacher is an EMA of the student (:func:`tympan.objectives.byol.ema_momentum`,
:func:`~tympan.objectives.byol.ema_update_`), and "centering and sharpening" keep it from
collapsing to one class or to the uniform distribution. Section 3.2 reports a collapse where
only a subset of the clusters is used: :func:`prototype_usage` measures it. Section 3.4 notes the
method's reliance on temperature and momentum schedules.

With student logits ``s`` and teacher logits ``t`` over ``K`` prototypes, a running ``center c``
(centering) and temperatures ``T_s`` (student) and ``T_t`` (teacher, low: sharpening)::

    q_i = softmax((t_i - c) / T_t)          (stop-gradient)
    log p_i = log_softmax(s_i / T_s)
    H(q, s) = mean_i ( - sum_k q_ik log p_ik )
    L = 1/2 * H(q1, s2) + 1/2 * H(q2, s1)    (cross-view pairs only)

The centre is an EMA of the teacher logits' mean over the **global** batch::

    c <- m c + (1 - m) * mean_i t_i

Distributed convention (the same for every objective in this package: callers gather).
:func:`dino_loss` is a mean of per-sample terms and needs no gather: under DDP each rank's local
loss is the mean over its slice and DDP's gradient averaging gives the global-batch gradient (equal
slice sizes). :func:`update_center` and :func:`prototype_usage` take batch statistics, so pass
them the global batch, ``gather(teacher_logits)`` (:func:`tympan.objectives.distributed.gather`);
every rank then holds the same centre.

Shapes: ``student_logits_*, teacher_logits_* [N, K]``, ``center [K]`` or ``[1, K]`` -> scalar.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


def _check_center(center: Tensor, k: int, fn: str) -> None:
    if center.shape not in ((k,), (1, k)):
        raise ValueError(f"{fn} expects center [K] or [1, K] with K = {k}, got {tuple(center.shape)}")


def teacher_probs(teacher_logits: Tensor, center: Tensor, teacher_temp: float) -> Tensor:
    """Centred and sharpened teacher distribution ``softmax((t - c) / T_t)``, ``[N, K]``, no gradient."""
    if teacher_logits.dim() != 2:
        raise ValueError(f"teacher_probs expects teacher logits [N, K], got {tuple(teacher_logits.shape)}")
    _check_center(center, teacher_logits.shape[1], "teacher_probs")
    if teacher_temp <= 0:
        raise ValueError(f"teacher_temp must be > 0, got {teacher_temp}")
    shifted = teacher_logits.detach().float() - center.detach().float().reshape(1, -1)
    return F.softmax(shifted / teacher_temp, dim=1)


def _cross_entropy(q: Tensor, student_logits: Tensor, student_temp: float) -> Tensor:
    log_p = F.log_softmax(student_logits.float() / student_temp, dim=1)
    return -(q * log_p).sum(dim=1).mean()


def dino_loss(
    student_logits_1: Tensor,
    student_logits_2: Tensor,
    teacher_logits_1: Tensor,
    teacher_logits_2: Tensor,
    center: Tensor,
    student_temp: float = 0.1,
    teacher_temp: float = 0.04,
) -> Tensor:
    """Cross-view cross-entropy of the student to the centred, sharpened teacher; all logits ``[N, K]``."""
    logits = (student_logits_1, student_logits_2, teacher_logits_1, teacher_logits_2)
    shapes = [tuple(t.shape) for t in logits]
    if len(set(shapes)) != 1 or len(shapes[0]) != 2:
        raise ValueError(f"dino_loss expects four [N, K] logit tensors of one shape, got {shapes}")
    _check_center(center, shapes[0][1], "dino_loss")
    if student_temp <= 0:
        raise ValueError(f"student_temp must be > 0, got {student_temp}")
    q1 = teacher_probs(teacher_logits_1, center, teacher_temp)
    q2 = teacher_probs(teacher_logits_2, center, teacher_temp)
    return 0.5 * _cross_entropy(q1, student_logits_2, student_temp) + 0.5 * _cross_entropy(
        q2, student_logits_1, student_temp
    )


def teacher_temperature(step: int, warmup_steps: int, start: float = 0.02, end: float = 0.04) -> float:
    """Teacher temperature: linear from ``start`` at step 0 to ``end`` at ``warmup_steps``, then ``end``."""
    if step < 0 or warmup_steps < 0:
        raise ValueError(f"teacher_temperature needs step, warmup_steps >= 0, got {step}, {warmup_steps}")
    if step >= warmup_steps:
        return end
    return start + (end - start) * step / warmup_steps


@torch.no_grad()
def update_center(center: Tensor, teacher_logits: Tensor, momentum: float = 0.9) -> Tensor:
    """New centre ``m * center + (1 - m) * mean_i teacher_logits_i`` (a new tensor, same shape).

    ``teacher_logits [N, K]`` must be the **global** batch: under DDP pass
    ``gather(teacher_logits)`` (both views may be concatenated along dim 0), so that every rank
    computes the same centre.
    """
    if teacher_logits.dim() != 2 or teacher_logits.shape[0] == 0:
        raise ValueError(
            f"update_center expects teacher logits [N, K] with N > 0, got {tuple(teacher_logits.shape)}"
        )
    _check_center(center, teacher_logits.shape[1], "update_center")
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"update_center needs 0 <= momentum <= 1, got {momentum}")
    batch_mean = teacher_logits.detach().to(center.dtype).mean(dim=0).reshape(center.shape)
    return momentum * center + (1.0 - momentum) * batch_mean


class PrototypeUsage(NamedTuple):
    """Collapse monitors of a batch of assignments (0-dim tensors; call ``.item()`` to log).

    ``used_fraction``: fraction of the ``K`` prototypes that are the argmax of at least one
    sample, in ``[1/K, 1]`` (the seed's partial collapse shows as a small value).
    ``entropy``: entropy in nats of the batch-mean assignment ``mean_i q_i``, in ``[0, log K]``;
    ``0`` when every sample puts all its mass on one prototype, ``log K`` when the mean is uniform.
    """

    used_fraction: Tensor
    entropy: Tensor


@torch.no_grad()
def prototype_usage(teacher_probs: Tensor) -> PrototypeUsage:
    """:class:`PrototypeUsage` of assignment probabilities ``[N, K]`` (global batch under DDP: gather)."""
    if teacher_probs.dim() != 2 or teacher_probs.shape[0] == 0:
        raise ValueError(
            f"prototype_usage expects probabilities [N, K] with N > 0, got {tuple(teacher_probs.shape)}"
        )
    probs = teacher_probs.detach().float()
    k = probs.shape[1]
    used = torch.zeros(k, dtype=torch.bool, device=probs.device)
    used[probs.argmax(dim=1)] = True
    mean = probs.mean(dim=0)
    entropy = -torch.special.xlogy(mean, mean).sum()  # 0 log 0 = 0
    return PrototypeUsage(used_fraction=used.float().mean(), entropy=entropy)
