"""Frame-wise regression losses of multitask self-supervision with workers.

Zaiem & Parcollet, "Pretext-task selection by conditional independence"
(``../shared/seeds/004_f3e19d7efff003e6.txt``), section IV-B, equation (11):

    L_SSL = MSE_mel + MSE_mfcc + sum_i lambda_i * l1(Z_i)

"with MSE the classic mean squared error computed for Mel spectra (MSE_mel) and MFCC
(MSE_mfcc), and l1(Z) the l1-loss of the pretext task related to pretext-task label Z", and
section IV-D, equation (12), the wav2vec 2.0 extension ``L_SSL = L_W2V + sum_i lambda_i l1(Z_i)``
(in tympan: any objective plus the weighted workers).

Shapes: predictions and targets are frame sequences ``[B, T, K]`` (K labels, mel bands or MFCC
coefficients); losses are means over every frame and clip, computed in fp32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def frame_mse(pred: Tensor, target: Tensor) -> Tensor:
    """``mean((pred - target)^2)`` over ``[B, T, K]``: MSE_mel and MSE_mfcc of eq. (11)."""
    if pred.shape != target.shape:
        raise ValueError(f"frame_mse: prediction {tuple(pred.shape)} != target {tuple(target.shape)}")
    return F.mse_loss(pred.float(), target.float())


def worker_l1(pred: Tensor, target: Tensor) -> Tensor:
    """Per-worker l1 losses ``[K]``: ``l1(Z_k) = mean_{b,t} |pred[b,t,k] - target[b,t,k]|``
    for ``pred, target [B, T, K]`` (the ``l1(Z_i)`` of eq. 11)."""
    if pred.shape != target.shape or pred.dim() != 3:
        raise ValueError(
            f"worker_l1 expects [B, T, K] prediction and target of one shape, got "
            f"{tuple(pred.shape)} and {tuple(target.shape)}"
        )
    return (pred.float() - target.float()).abs().mean(dim=(0, 1))


def weighted_workers(pred: Tensor, target: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
    """``(sum_k lambda_k l1(Z_k), per-worker l1 [K])``; the weighted sum of eq. (11) and (12).

    A worker with ``lambda_k = 0`` adds nothing to the loss and receives no gradient.
    """
    per = worker_l1(pred, target)
    return (weights.to(per.dtype) * per).sum(), per


def multitask_ssl_loss(
    mel_pred: Tensor, mel: Tensor, mfcc_pred: Tensor, mfcc: Tensor,
    label_pred: Tensor | None = None, labels: Tensor | None = None,
    weights: Tensor | None = None, mel_weight: float = 1.0, mfcc_weight: float = 1.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Eq. (11): ``MSE(mel_pred, mel) + MSE(mfcc_pred, mfcc) + sum_i lambda_i l1(Z_i)``
    (``mel_weight``/``mfcc_weight`` scale the two MSE terms; 1 in the seed).

    Returns the loss and its parts ``{"mse_mel", "mse_mfcc", "workers", "l1" [K]}``; the label
    terms are left out when ``label_pred`` is ``None`` (the PASE-like model with only the
    mel and MFCC workers).
    """
    mse_mel, mse_mfcc = frame_mse(mel_pred, mel), frame_mse(mfcc_pred, mfcc)
    total = mel_weight * mse_mel + mfcc_weight * mse_mfcc
    parts = {"mse_mel": mse_mel, "mse_mfcc": mse_mfcc}
    if label_pred is not None:
        if labels is None or weights is None:
            raise ValueError("multitask_ssl_loss: label predictions need labels and weights")
        workers, per = weighted_workers(label_pred, labels, weights)
        total = total + workers
        parts.update(workers=workers, l1=per)
    return total, parts


def dct_matrix(n_mels: int, n_mfcc: int, device: torch.device | None = None) -> Tensor:
    """Orthonormal DCT-II basis ``[n_mels, n_mfcc]``: ``mfcc = logmel @ D`` along the mel axis
    (the MFCC of a log-mel spectrum, as ``librosa.feature.mfcc(S=logmel, norm="ortho")``)."""
    if not 1 <= n_mfcc <= n_mels:
        raise ValueError(f"dct_matrix: need 1 <= n_mfcc <= n_mels, got {n_mfcc} and {n_mels}")
    n = torch.arange(n_mels, dtype=torch.float64, device=device)
    k = torch.arange(n_mfcc, dtype=torch.float64, device=device)
    basis = torch.cos(torch.pi / n_mels * (n[:, None] + 0.5) * k[None, :])
    scale = torch.full((n_mfcc,), (2.0 / n_mels) ** 0.5, dtype=torch.float64, device=device)
    scale[0] = (1.0 / n_mels) ** 0.5
    return (basis * scale).float()
