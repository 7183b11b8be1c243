"""ResNet-18 over log-mel spectrograms, with an adapter slot at every 3x3 conv and BatchNorm.

The backbone of MT-SLVR (``../shared/seeds/000_e1eab6133071efa6.txt``, "Model Variants"; a
ResNet-18 as in the residual-adapters work it cites). ``width`` scales every stage (64 in the
standard network; 16 makes a CPU demo fast). The forward takes the task name so that each task
uses the shared weights plus its own adapters (:mod:`tympan.models.adapters`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor, nn

from tympan.errors import ConfigError
from tympan.models.adapters import conv_slot, norm_slot, zero_adapters
from tympan.models.pase import pase


def _conv3x3(cin: int, cout: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 conv slots with a residual connection (1x1 projection when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int, adapter: str, tasks: Sequence[str]):
        super().__init__()
        self.conv1 = conv_slot(adapter, _conv3x3(cin, cout, stride), tasks)
        self.bn1 = norm_slot(adapter, cout, tasks)
        self.conv2 = conv_slot(adapter, _conv3x3(cout, cout, 1), tasks)
        self.bn2 = norm_slot(adapter, cout, tasks)
        self.relu = nn.ReLU(inplace=True)
        self.down_conv: nn.Module | None = None
        self.down_bn: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.down_conv = nn.Conv2d(cin, cout, 1, stride=stride, bias=False)
            self.down_bn = norm_slot(adapter, cout, tasks)

    def forward(self, x: Tensor, task: str) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x, task), task))
        out = self.bn2(self.conv2(out, task), task)
        skip = x
        if self.down_conv is not None:
            skip = self.down_bn(self.down_conv(x), task)
        return self.relu(out + skip)


class ResNet(nn.Module):
    """ResNet with BasicBlocks; ``[B, C, F, T] -> [B, 8*width, F/32, T/32]``.

    ``layers=(2, 2, 2, 2)`` is ResNet-18. The stem is the standard 7x7/2 conv and 3x3/2 max-pool.
    """

    def __init__(
        self,
        in_channels: int = 1,
        width: int = 64,
        layers: Sequence[int] = (2, 2, 2, 2),
        adapter: str = "none",
        tasks: Sequence[str] = ("default",),
    ) -> None:
        super().__init__()
        self.tasks = tuple(tasks)
        self.stem_conv = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
        self.stem_bn = norm_slot(adapter, width, tasks)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        blocks: list[BasicBlock] = []
        cin = width
        for stage, n in enumerate(layers):
            cout = width * 2**stage
            for i in range(n):
                stride = 2 if (stage > 0 and i == 0) else 1
                blocks.append(BasicBlock(cin, cout, stride, adapter, tasks))
                cin = cout
        self.blocks = nn.ModuleList(blocks)
        self.out_channels = cin
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        zero_adapters(self)

    def forward(self, x: Tensor, task: str) -> Tensor:
        x = self.pool(self.relu(self.stem_bn(self.stem_conv(x), task)))
        for block in self.blocks:
            x = block(x, task)
        return x


def resnet18(
    in_channels: int, width: int, adapter: str, tasks: Sequence[str], *,
    options: dict[str, Any] | None = None, n_mels: int | None = None,
) -> ResNet:
    """Builder of ``model.arch: resnet18``, sized by ``width``; it takes no ``model.options``."""
    if options:
        raise ConfigError(
            f"unknown recipe field 'model.options.{sorted(options)[0]}': the resnet18 backbone "
            f"takes no options (it is sized by 'model.width'); remove 'model.options'"
        )
    return ResNet(in_channels, width, (2, 2, 2, 2), adapter, tasks)


#: backbone name -> builder(in_channels, width, adapter, tasks, *, options, n_mels), where
#: ``options`` is the recipe's ``model.options`` and ``n_mels`` the front end's mel bands
ARCHS: dict[str, Callable[..., nn.Module]] = {"resnet18": resnet18, "pase": pase}
