"""Adapter slots: where a shared backbone may hold task-specific parameters.

MT-SLVR (``../shared/seeds/000_e1eab6133071efa6.txt``, "Basis of Algorithm", "Model Variants")
shares a ResNet between the contrastive and predictive tasks and gives each task small adapters.
Every 3x3 convolution of the ResNet is a :class:`ConvSlot` and every BatchNorm a
:class:`NormSlot`; both take the task name in ``forward``. The slot's *kind* decides what is
task-specific:

* ``"none"``: nothing; every task uses the shared weights (MT-Simple, single-task methods).

The MT-SLVR issue registers the other kinds (task-specific BatchNorm, series and parallel 1x1
residual adapters) in :data:`CONV_KINDS` / :data:`NORM_KINDS`; the ResNet needs no change for it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor, nn

from tympan.errors import ConfigError


class ConvSlot(nn.Module):
    """A shared 3x3 convolution plus the task-specific adapters its kind adds."""

    def __init__(self, conv: nn.Conv2d, tasks: Sequence[str]) -> None:
        super().__init__()
        self.conv = conv
        self.tasks = tuple(tasks)

    def forward(self, x: Tensor, task: str) -> Tensor:
        return self.conv(x)


class NormSlot(nn.Module):
    """A BatchNorm, shared or per task depending on the kind."""

    def __init__(self, channels: int, tasks: Sequence[str]) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)
        self.tasks = tuple(tasks)

    def forward(self, x: Tensor, task: str) -> Tensor:
        return self.bn(x)


#: adapter kind -> builder(conv, tasks) of a conv slot
CONV_KINDS: dict[str, Callable[[nn.Conv2d, Sequence[str]], nn.Module]] = {"none": ConvSlot}
#: adapter kind -> builder(channels, tasks) of a norm slot
NORM_KINDS: dict[str, Callable[[int, Sequence[str]], nn.Module]] = {"none": NormSlot}


def conv_slot(kind: str, conv: nn.Conv2d, tasks: Sequence[str]) -> nn.Module:
    if kind not in CONV_KINDS:
        raise ConfigError(
            f"unknown adapter kind '{kind}' in recipe field 'model.adapter' "
            f"(known: {', '.join(sorted(CONV_KINDS))})"
        )
    return CONV_KINDS[kind](conv, tasks)


def norm_slot(kind: str, channels: int, tasks: Sequence[str]) -> nn.Module:
    if kind not in NORM_KINDS:
        raise ConfigError(
            f"unknown adapter kind '{kind}' in recipe field 'model.adapter' "
            f"(known: {', '.join(sorted(NORM_KINDS))})"
        )
    return NORM_KINDS[kind](channels, tasks)
