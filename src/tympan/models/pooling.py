"""Pooling a backbone's feature map ``[B, C, F', T']`` into one embedding per clip.

* :class:`MeanPool`: global average over frequency and time (MT-SLVR's ResNet-18, seed 000).
* :class:`AttentionPool`: the multi-view tagging seed's "attention layer that summarises the
  sequential data into a single, 1024-dimension embedding vector"
  (``../shared/seeds/003_302de149e7ba2620.txt``, "Training setup"). Frames are the feature map
  averaged over frequency; each frame ``h_t [C]`` is projected to ``v_t = W_v h_t [E]`` and scored
  ``a_t = w_a^T tanh(W_a h_t)``; the embedding is ``sum_t softmax(a)_t v_t`` (attention over time,
  as in attention-pooled audio taggers).

Both map ``[B, C, F', T'] -> [B, out_dim]``; ``frames`` gives the per-frame vectors ``[B, T', out_dim]``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tympan.errors import ConfigError


class MeanPool(nn.Module):
    """Global average pooling; ``out_dim == C``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.out_dim = channels

    def frames(self, fmap: Tensor) -> Tensor:
        """Per-frame features ``[B, T', C]`` (the frequency average)."""
        return fmap.mean(dim=2).transpose(1, 2)

    def forward(self, fmap: Tensor) -> Tensor:
        return fmap.mean(dim=(2, 3))


class AttentionPool(nn.Module):
    """Attention over time frames to an ``out_dim`` embedding (module docstring)."""

    def __init__(self, channels: int, out_dim: int = 1024, attention_dim: int | None = None) -> None:
        super().__init__()
        hidden = attention_dim or channels
        self.value = nn.Linear(channels, out_dim)
        self.score = nn.Sequential(nn.Linear(channels, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        self.out_dim = out_dim

    def _attend(self, frames: Tensor) -> Tensor:
        # softmax in fp32: under bf16 autocast long sequences would lose the small weights
        return torch.softmax(self.score(frames).squeeze(2).float(), dim=1).to(frames.dtype)

    def weights(self, fmap: Tensor) -> Tensor:
        """Attention weights over time ``[B, T']`` (rows sum to 1)."""
        return self._attend(fmap.mean(dim=2).transpose(1, 2))

    def frames(self, fmap: Tensor) -> Tensor:
        """Per-frame values ``[B, T', out_dim]``, the vectors that attention averages."""
        return self.value(fmap.mean(dim=2).transpose(1, 2))

    def forward(self, fmap: Tensor) -> Tensor:
        frames = fmap.mean(dim=2).transpose(1, 2)  # [B, T', C]
        return torch.bmm(self._attend(frames).unsqueeze(1), self.value(frames)).squeeze(1)


#: recipe ``model.pooling`` -> builder(channels, embed_dim)
POOLINGS = {
    "mean": lambda channels, embed_dim: MeanPool(channels),
    "attention": lambda channels, embed_dim: AttentionPool(channels, embed_dim or 1024),
}


def build_pooling(kind: str, channels: int, embed_dim: int | None) -> nn.Module:
    if kind not in POOLINGS:
        raise ConfigError(
            f"unknown pooling '{kind}' in recipe field 'model.pooling' (known: {', '.join(POOLINGS)})"
        )
    if kind == "mean" and embed_dim not in (None, channels):
        raise ConfigError(
            f"recipe field 'model.embed_dim'={embed_dim} needs 'model.pooling: attention' (mean "
            f"pooling keeps the backbone's {channels} channels)"
        )
    return POOLINGS[kind](channels, embed_dim)
