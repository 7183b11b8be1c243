"""Two-view augmentation pipeline with multi-hot op labels (MT-SLVR pipeline sampling).

``../shared/seeds/000_e1eab6133071efa6.txt``, "Audio Augmentations & Application": for each clip
choose how many ops to use (1 to 7), randomise their order, and draw two independent parameter
sets for that same ordered pipeline, one per view. The multi-hot vector of the ops applied is the
target of the predictive (augmentation-prediction) objective.

Batched application: for each pipeline position ``p`` and each op ``j`` the clips whose ``p``-th
op is ``j`` are gathered, transformed together and scattered back. That is at most
``max_ops * len(ops)`` batched calls per view, independent of the batch size: no per-clip loop.
On an accelerator both views go through one such pass; on the CPU each view has its own, and the
two run at once in two threads (:meth:`ViewPipeline._views_cpu`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import torch

from tympan.augment.ops import AugmentOp, build_op, copy_rows_
from tympan.config import AugmentConfig
from tympan.errors import ConfigError


@dataclass
class Views:
    """Two augmented views of a batch and the ops each clip went through.

    ``view1, view2 [B, T]``; ``labels [B, n_ops]`` multi-hot in ``op_names`` order;
    ``order [B, max_ops]`` op indices in application order, ``-1`` past each clip's count.

    The training step also records where the batch came from, for tasks whose targets are
    computed from the clean audio (the workers of seed 004, :mod:`tympan.methods.workers`):
    ``clean [B, T]`` the crops before augmentation, ``index [B]`` their dataset items, ``start
    [B]`` and ``length [B]`` the crop's first sample and the file's length in samples
    (:class:`tympan.data.dataset.CropDataset`). ``None`` where the data do not provide them.
    """

    view1: torch.Tensor
    view2: torch.Tensor
    labels: torch.Tensor
    order: torch.Tensor
    op_names: tuple[str, ...]
    #: per-step memo of encoder outputs shared by tasks (see ``PretextTask.encode_pair``)
    cache: dict = field(default_factory=dict, repr=False, compare=False)
    clean: torch.Tensor | None = field(default=None, repr=False, compare=False)
    index: torch.Tensor | None = field(default=None, repr=False, compare=False)
    start: torch.Tensor | None = field(default=None, repr=False, compare=False)
    length: torch.Tensor | None = field(default=None, repr=False, compare=False)


class ViewPipeline:
    """Samples and applies MT-SLVR-style two-view pipelines. Deterministic given the generator."""

    def __init__(self, cfg: AugmentConfig) -> None:
        if len(set(cfg.ops)) != len(cfg.ops):
            raise ConfigError("recipe field 'augment.ops' lists an op twice")
        unknown = sorted(set(cfg.params) - set(cfg.ops))
        if unknown:
            raise ConfigError(
                f"recipe field 'augment.params.{unknown[0]}' configures an op that is not in "
                f"'augment.ops'"
            )
        self.cfg = cfg
        self.ops: list[AugmentOp] = [build_op(name, cfg.params.get(name)) for name in cfg.ops]
        self.op_names = tuple(cfg.ops)
        self.min_ops, self.max_ops = cfg.op_count_range()

    def sample_order(self, n: int, g: torch.Generator, device: torch.device) -> torch.Tensor:
        """Per clip: a count in [min_ops, max_ops] and a random order of that many distinct ops.

        Returns ``order [n, max_ops]`` with op indices, ``-1`` for unused positions.
        """
        n_ops = len(self.ops)
        count = torch.randint(self.min_ops, self.max_ops + 1, (n,), generator=g, device=device)
        # argsort of i.i.d. uniforms is a uniformly random permutation per row
        perm = torch.rand(n, n_ops, generator=g, device=device).argsort(dim=1)[:, : self.max_ops]
        used = torch.arange(self.max_ops, device=device).unsqueeze(0) < count.unsqueeze(1)
        return torch.where(used, perm, torch.full_like(perm, -1))

    def labels(self, order: torch.Tensor) -> torch.Tensor:
        """Multi-hot ``[n, n_ops]`` float labels of the ops present in ``order``."""
        onehot = torch.zeros(order.shape[0], len(self.ops) + 1, device=order.device)
        onehot.scatter_(1, order + 1, 1.0)  # column 0 collects the -1 padding
        return onehot[:, 1:]

    def apply(self, x: torch.Tensor, order: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Run each clip through its ordered ops with freshly drawn parameters.

        The first position reads the input and writes a new batch (no copy of the input first:
        every clip with an op at that position is overwritten, the others are copied over);
        later positions transform that batch in place.
        """
        groups = self._groups(order)
        if not groups:  # no op positions at all
            return x.clone()
        out = torch.empty_like(x)
        idle = groups[0][0]  # clips with no op at all keep their input
        if idle.numel():
            copy_rows_(out, idle, x.index_select(0, idle))
        for p, position in enumerate(groups):
            src = x if p == 0 else out
            for op, idx in zip(self.ops, position[1:]):
                if idx.numel() == 0:
                    continue
                params = op.sample(idx.numel(), x.shape[1], g, x.device)
                copy_rows_(out, idx, op.apply(src.index_select(0, idx), params))
        return out

    def _groups(self, order: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
        """``groups[p][j + 1]``: the clips (ascending) whose ``p``-th op is op ``j``, and
        ``groups[p][0]`` those with no op at ``p``, for every position from one sort and one
        host sync (not one nonzero per pair)."""
        b, positions = order.shape
        width = len(self.ops) + 1  # op indices shifted by one: 0 is the -1 padding
        key = (order + 1 + width * torch.arange(positions, device=order.device)).t().reshape(-1)
        perm = torch.sort(key, stable=True).indices
        counts = torch.bincount(key, minlength=positions * width).tolist()
        rows = (perm % b).split(counts)
        return [rows[p * width : (p + 1) * width] for p in range(positions)]

    def _views_cpu(
        self, x1: torch.Tensor, x2: torch.Tensor, order: torch.Tensor, g: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The two views on the CPU: one pass per view, each with its own generator seeded from
        ``g``, run at once in two threads when torch has two or more, each with half of torch's
        intra-op threads.

        Much of a pass is serial: the noise draws (torch's CPU generator is a sequential
        Mersenne Twister), the vocoder loop (:mod:`tympan.augment.kernels`) and the Python
        between ops. One pass over both views with parallel ops leaves cores idle through all
        of that; two independent passes at once keep them busy (``benchmarks/augment_views.py``:
        0.076 s instead of 0.13 s on 2 cores). The views depend only on ``g``, not on which
        pass finishes first, and are the same with one torch thread as with two (with more,
        torch's parallel reductions may round differently, as anywhere in torch).
        """
        seeds = torch.randint(0, 2**62, (2,), generator=g).tolist()
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        threads = torch.get_num_threads()
        if threads < 2:
            return self.apply(x1, order, gens[0]), self.apply(x2, order, gens[1])
        per_pass = threads // 2
        result: dict[str, object] = {}

        def second() -> None:
            torch.set_num_threads(per_pass)  # this thread's intra-op pool
            try:
                result["view"] = self.apply(x2, order, gens[1])
            except BaseException as err:  # re-raised in the caller's thread
                result["error"] = err

        worker = threading.Thread(target=second, name="tympan-view2", daemon=True)
        torch.set_num_threads(per_pass)
        try:
            worker.start()
            v1 = self.apply(x1, order, gens[0])
        finally:
            worker.join()
            torch.set_num_threads(threads)
        if "error" in result:
            raise result["error"]  # type: ignore[misc]
        return v1, result["view"]  # type: ignore[return-value]

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> Views:
        """Two views of ``x [B, T]``: same ops in the same order, independent parameters."""
        return self.pair(x, x, g)

    def pair(self, x1: torch.Tensor, x2: torch.Tensor, g: torch.Generator) -> Views:
        """Views of two given inputs ``[B, T]`` (e.g. two segments of one track, seed 003):
        each clip's ops and order are shared by both, parameters are drawn independently. With
        no ops the inputs are the views."""
        if x1.dim() != 2 or x1.shape != x2.shape:
            raise ValueError(
                f"ViewPipeline expects waveforms [B, T] of one shape, got {tuple(x1.shape)} "
                f"and {tuple(x2.shape)}"
            )
        b = x1.shape[0]
        order = self.sample_order(b, g, x1.device)
        if not self.ops:
            v1, v2 = x1, x2
        elif x1.device.type == "cpu":
            v1, v2 = self._views_cpu(x1, x2, order, g)
        else:
            # on an accelerator both views go in one pass: twice the clips per (position, op)
            # call, half the kernel launches
            both = self.apply(torch.cat([x1, x2]), order.repeat(2, 1), g)
            v1, v2 = both[:b], both[b:]
        return Views(
            view1=v1,
            view2=v2,
            labels=self.labels(order),
            order=order,
            op_names=self.op_names,
        )
