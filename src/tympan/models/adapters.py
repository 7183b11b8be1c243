"""Adapter slots: where a shared backbone may hold task-specific parameters.

MT-SLVR (``../shared/seeds/000_e1eab6133071efa6.txt``, "Basis of Algorithm", "Model Variants")
shares a ResNet between the contrastive and predictive tasks and gives each task small adapters.
Every 3x3 convolution of the ResNet is a :class:`ConvSlot` and every BatchNorm a
:class:`NormSlot`; both take the task name in ``forward``. The slot's *kind* decides what is
task-specific:

* ``"none"``: nothing; every task uses the shared weights (MT-Simple, MT-Split, single-task).
* ``"bn"``: every BatchNorm is per task, the convolutions are shared (MT-BN).
* ``"series"``: per-task BatchNorm, and after each shared 3x3 convolution a per-task 1x1
  convolution added residually, ``y = W*x; y + A_t*y`` (MT-Series).
* ``"parallel"``: per-task BatchNorm, and beside each shared 3x3 convolution a per-task 1x1
  convolution on the same input with the same stride, ``y = W*x + A_t*x`` (MT-Parallel).

Series and parallel follow the residual-adapters work the seed cites (Rebuffi et al. 2017/2018),
where the task-specific 1x1 filters come with task-specific BatchNorm. The 1x1 adapters start at
zero, so at initialisation every task computes exactly what the shared network computes.
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


class TaskNorm(nn.Module):
    """One BatchNorm per task (MT-BN; also part of the series and parallel adapters)."""

    def __init__(self, channels: int, tasks: Sequence[str]) -> None:
        super().__init__()
        self.tasks = tuple(tasks)
        self.bn = nn.ModuleDict({t: nn.BatchNorm2d(channels) for t in self.tasks})

    def forward(self, x: Tensor, task: str) -> Tensor:
        return self.bn[task](x)


def _adapters(
    cin: int, cout: int, tasks: Sequence[str], stride: int | tuple[int, ...]
) -> nn.ModuleDict:
    """Per-task 1x1 convolutions, zero-initialised."""
    return nn.ModuleDict(
        {t: nn.Conv2d(cin, cout, 1, stride=stride, bias=False) for t in tasks}
    )


def zero_adapters(module: nn.Module) -> None:
    """Zero every 1x1 residual adapter in ``module``: each task then starts as the shared net.

    Called by the backbone after its own weight initialisation, which would otherwise overwrite
    the adapters with Kaiming-normal weights.
    """
    for m in module.modules():
        if isinstance(m, (SeriesAdapterSlot, ParallelAdapterSlot)):
            for conv in m.adapter.values():
                nn.init.zeros_(conv.weight)


class SeriesAdapterSlot(ConvSlot):
    """Shared 3x3 conv followed by a residual per-task 1x1 conv: ``y + A_t y``, ``y = W x``."""

    def __init__(self, conv: nn.Conv2d, tasks: Sequence[str]) -> None:
        super().__init__(conv, tasks)
        self.adapter = _adapters(conv.out_channels, conv.out_channels, tasks, 1)

    def forward(self, x: Tensor, task: str) -> Tensor:
        y = self.conv(x)
        return y + self.adapter[task](y)


class ParallelAdapterSlot(ConvSlot):
    """Shared 3x3 conv plus a per-task 1x1 conv on the same input: ``W x + A_t x``."""

    def __init__(self, conv: nn.Conv2d, tasks: Sequence[str]) -> None:
        super().__init__(conv, tasks)
        self.adapter = _adapters(conv.in_channels, conv.out_channels, tasks, conv.stride)

    def forward(self, x: Tensor, task: str) -> Tensor:
        return self.conv(x) + self.adapter[task](x)


#: adapter kind -> builder(conv, tasks) of a conv slot
CONV_KINDS: dict[str, Callable[[nn.Conv2d, Sequence[str]], nn.Module]] = {
    "none": ConvSlot,
    "bn": ConvSlot,
    "series": SeriesAdapterSlot,
    "parallel": ParallelAdapterSlot,
}
#: adapter kind -> builder(channels, tasks) of a norm slot
NORM_KINDS: dict[str, Callable[[int, Sequence[str]], nn.Module]] = {
    "none": NormSlot,
    "bn": TaskNorm,
    "series": TaskNorm,
    "parallel": TaskNorm,
}


def has_task_parameters(kind: str) -> bool:
    """Whether adapter ``kind`` gives each task parameters of its own inside the backbone."""
    return kind != "none"


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


def task_parameter_counts(module: nn.Module, tasks: Sequence[str]) -> dict[str, int]:
    """Number of parameters each task owns inside ``module`` (its BatchNorms and 1x1 adapters).

    Empty when ``module`` has no task-specific parameters.
    """
    counts = {t: 0 for t in tasks}
    found = False
    for m in module.modules():
        dicts = []
        if isinstance(m, TaskNorm):
            dicts.append(m.bn)
        if isinstance(m, (SeriesAdapterSlot, ParallelAdapterSlot)):
            dicts.append(m.adapter)
        for d in dicts:
            found = True
            for t in tasks:
                counts[t] += sum(p.numel() for p in d[t].parameters())
    return counts if found else {}
