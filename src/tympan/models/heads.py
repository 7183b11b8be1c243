"""Heads that sit on an encoder's embedding: projectors, predictors, classifiers."""

from __future__ import annotations

from torch import nn


def mlp(
    in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 2, batch_norm: bool = True,
    out_batch_norm: bool = False,
) -> nn.Sequential:
    """``num_layers`` linear layers; every hidden one followed by BatchNorm (optional) and ReLU.

    The SimCLR projector is ``mlp(D, hidden, 128, 2)``; SimSiam's projector also normalises its
    output layer (``out_batch_norm=True``, BatchNorm without ReLU).
    """
    if num_layers < 1:
        raise ValueError("mlp needs at least one layer")
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(num_layers - 1):
        layers.append(nn.Linear(dim, hidden_dim, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm1d(hidden_dim))
        layers.append(nn.ReLU(inplace=True))
        dim = hidden_dim
    layers.append(nn.Linear(dim, out_dim, bias=not out_batch_norm))
    if out_batch_norm:
        layers.append(nn.BatchNorm1d(out_dim))
    return nn.Sequential(*layers)
