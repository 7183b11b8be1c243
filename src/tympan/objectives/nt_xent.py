"""NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR.

SimCLR (Chen et al., 2020) as used for MT-SLVR's contrastive task
(``../shared/seeds/000_e1eab6133071efa6.txt``, "Main Experiments & Results") and as the
"contrastive" method of the multi-view seed (``003_302de149e7ba2620.txt``, temperature 0.1).

For ``N`` pairs ``(z1_i, z2_i)`` stack ``u = [z1; z2]`` (``2N`` rows), ``s_ij = cos(u_i, u_j) / tau``.
Each row's positive is its partner ``p(i) = i ± N``; the other ``2N - 2`` rows are negatives::

    L = 1/(2N) * sum_i -log( exp(s_{i,p(i)}) / sum_{j != i} exp(s_ij) )

Shapes: ``z1, z2 [N, d]`` -> scalar. Gather across ranks first (:func:`~.distributed.gather`)
to use the global batch's negatives.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.1) -> Tensor:
    """NT-Xent loss of paired embeddings ``z1, z2 [N, d]`` (not necessarily normalised)."""
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"nt_xent expects two [N, d] tensors, got {tuple(z1.shape)}, {tuple(z2.shape)}")
    n = z1.shape[0]
    u = F.normalize(torch.cat([z1, z2], dim=0).float(), dim=1)
    sim = u @ u.T / temperature
    # a row is never its own negative: -inf on the diagonal drops it from the softmax
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z1.device)
    return F.cross_entropy(sim, target)
