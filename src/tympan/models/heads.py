"""Heads that sit on an encoder's embedding: projectors, predictors, classifiers."""

from __future__ import annotations

from torch import nn


def mlp(
    in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 2, batch_norm: bool = True,
    out_batch_norm: bool = False, out_relu: bool = False,
) -> nn.Sequential:
    """``num_layers`` linear layers; every hidden one followed by BatchNorm (optional) and ReLU.

    The SimCLR projector is ``mlp(D, hidden, 128, 2)``; SimSiam's projector also normalises its
    output layer (``out_batch_norm=True``, BatchNorm without ReLU). The multi-view tagging seed's
    shared head is "two blocks, which consist of a linear layer, batch normalization, and a ReLU
    activation" (``../shared/seeds/003_302de149e7ba2620.txt``, 1024 then 2048 units):
    ``mlp(1024, 1024, 2048, 2, out_batch_norm=True, out_relu=True)``.
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
    if out_relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


#: head options of a projector in recipes (``tasks[].head``), with the SimCLR defaults
PROJECTOR_DEFAULTS = {
    "hidden_dim": 512, "out_dim": 128, "num_layers": 2, "out_batch_norm": False,
    "out_relu": False,
}


def projector(in_dim: int, opts: dict) -> nn.Sequential:
    """The projector that ``opts`` (keys of :data:`PROJECTOR_DEFAULTS`) describes."""
    return mlp(
        in_dim, opts["hidden_dim"], opts["out_dim"], opts["num_layers"],
        out_batch_norm=opts["out_batch_norm"], out_relu=opts["out_relu"],
    )
