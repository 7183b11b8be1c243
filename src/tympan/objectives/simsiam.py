"""SimSiam's symmetrised negative cosine with stop-gradient.

SimSiam (Chen & He, 2021) is MT-SLVR's second contrastive objective
(``../shared/seeds/000_e1eab6133071efa6.txt``, "Main Experiments & Results"). With projections
``z1, z2`` and predictions ``p1 = h(z1), p2 = h(z2)``::

    D(p, z) = - <p / ||p||, sg(z) / ||z||>          (sg: stop-gradient)
    L = D(p1, z2) / 2 + D(p2, z1) / 2

No negatives, so no cross-rank gather is needed. Shapes: ``p1, p2, z1, z2 [N, d]`` -> scalar,
in ``[-1, 1]`` (``-1`` when every prediction points at its partner's projection).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def negative_cosine(p: Tensor, z: Tensor) -> Tensor:
    """``D(p, z)``: mean over rows of ``-cos(p_i, z_i)``, with no gradient through ``z``."""
    return -F.cosine_similarity(p.float(), z.detach().float(), dim=1).mean()


def simsiam_loss(p1: Tensor, p2: Tensor, z1: Tensor, z2: Tensor) -> Tensor:
    """Symmetrised SimSiam loss of predictions ``p`` and projections ``z``, all ``[N, d]``."""
    if not (p1.shape == p2.shape == z1.shape == z2.shape) or p1.dim() != 2:
        raise ValueError(
            f"simsiam_loss expects four [N, d] tensors of one shape, got "
            f"{[tuple(t.shape) for t in (p1, p2, z1, z2)]}"
        )
    return 0.5 * negative_cosine(p1, z2) + 0.5 * negative_cosine(p2, z1)
