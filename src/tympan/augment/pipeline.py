"""Two-view augmentation pipeline with multi-hot op labels (MT-SLVR pipeline sampling).

``../shared/seeds/000_e1eab6133071efa6.txt``, "Audio Augmentations & Application": for each clip
choose how many ops to use (1 to 7), randomise their order, and draw two independent parameter
sets for that same ordered pipeline, one per view. The multi-hot vector of the ops applied is the
target of the predictive (augmentation-prediction) objective.

Batched application, in rounds: each round applies one op, with parameters drawn for its
clips, to every clip whose next op it is (:meth:`ViewPipeline.schedule`), so every call is batched
and their number does not grow with the batch size: no per-clip loop. On an accelerator both views
go through one such pass; on the CPU each view has its own, and the two run at once in two
threads (:meth:`ViewPipeline._views_cpu`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np
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

        The work goes in rounds (:meth:`schedule`): each round applies one op, with parameters
        drawn for its clips, to every clip whose next op it is. A clip's first op reads the
        input; the result is written to a new batch, which later ops transform in place. Clips
        with no ops are copied over.
        """
        rounds = self.schedule(order)
        out = torch.empty_like(x)
        count = (order >= 0).sum(1)
        idle = torch.nonzero(count == 0, as_tuple=True)[0]
        if idle.numel():
            copy_rows_(out, idle, x.index_select(0, idle))
        for j, idx, fresh in rounds:
            op = self.ops[j]
            params = op.sample(idx.numel(), x.shape[1], g, x.device)
            src = (x if fresh is None else out).index_select(0, idx)  # None: all first ops
            if fresh is not None and fresh.numel():  # the clips taking their first op
                copy_rows_(src, fresh, x.index_select(0, idx.index_select(0, fresh)))
            copy_rows_(out, idx, op.apply(src, params))
        return out

    def schedule(self, order: torch.Tensor) -> list[tuple[int, torch.Tensor, torch.Tensor | None]]:
        """The rounds in which :meth:`apply` runs the clips' ops: ``(j, clips, fresh)``, op ``j``
        applied to ``clips`` (ascending), of which those at positions ``fresh`` (into ``clips``)
        take their first op (``fresh`` is None when all do).

        Every clip's ops run in its own order; a round may serve clips at different positions
        in their pipelines. Each round takes the op whose ready clips carry the most remaining
        work (the sum over them of the square of their remaining op count): about 27 rounds for
        64 clips with the seed's 1 to 7 of 7 ops, where one call per (position, op) pair takes
        about 46. Fewer, larger calls mean fewer torch calls, each of which releases and retakes
        the GIL: with the two views in two threads on the CPU, 64 one-second clips take 12–18%
        less time; 64 three-second clips, whose ops are long enough to hide the calls, about 2%
        less (old against new in one process, ``docs/benchmarks.md``).
        """
        host = order.cpu().numpy()
        b = host.shape[0]
        count = (host >= 0).sum(1)
        pos = np.zeros(b, dtype=np.int64)
        # each clip's op at its next position (-1 past its last op)
        padded = np.concatenate([host, np.full((b, 1), -1, dtype=host.dtype)], axis=1)
        ops, parts, sizes = [], [], []
        while True:
            nxt = padded[np.arange(b), pos]
            live = nxt >= 0
            if not live.any():
                break
            rem = (count - pos)[live].astype(np.float64)
            j = int(np.bincount(nxt[live], weights=rem * rem, minlength=len(self.ops)).argmax())
            clips = np.flatnonzero(nxt == j)
            fresh = np.flatnonzero(pos[clips] == 0)
            pos[clips] += 1
            ops.append(j)
            parts += [clips, fresh]
            sizes += [clips.size, fresh.size]
        if not ops:
            return []
        # one transfer to the batch's device for all rounds
        flat = torch.from_numpy(np.concatenate(parts)).to(order.device).split(sizes)
        return [
            (j, clips, None if fresh.numel() == clips.numel() else fresh)
            for j, clips, fresh in zip(ops, flat[0::2], flat[1::2])
        ]

    def _views_cpu(
        self, x1: torch.Tensor, x2: torch.Tensor, order: torch.Tensor, g: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The two views on the CPU: one pass per view, each with its own generator seeded from
        ``g``, run at once in two threads when torch has two or more, each with half of torch's
        intra-op threads.

        Much of a pass is serial: the noise draws, the compiled loops
        (:mod:`tympan.augment.kernels`) and the Python between ops. One pass over both views
        with parallel ops leaves cores idle through all of that; two independent passes at once
        keep them busy (``docs/benchmarks.md``, MT-SLVR section). The views depend only on ``g``,
        not on which
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
