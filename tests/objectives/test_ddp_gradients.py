"""Under DDP, losses on ``gather(z)`` give the gradients of one process on the whole batch.

Two CPU processes (gloo) each hold half of a fixed batch and a ``DistributedDataParallel``
``nn.Linear``. For the global-batch objectives (NT-Xent, Barlow Twins, VICReg) each rank computes
the loss on ``gather(z1), gather(z2)``: the autograd-aware all-gather sums every rank's gradient
back onto the slice's owner (``world_size`` times the single-process gradient, since every rank
computes the same loss) and DDP's averaging divides by ``world_size`` again. The per-sample
objectives (BYOL, DINO's cross-entropy) are averaged by DDP without a gather; DINO's centre is a
global-batch mean of ``gather(teacher_logits)``. Every rank's gradients must equal those of a
single process on the concatenated batch; a Barlow Twins loss on the local halves must not.
"""

from __future__ import annotations

import importlib
import os
import socket
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn

from tympan.objectives.barlow_twins import barlow_twins_loss
from tympan.objectives.byol import byol_loss
from tympan.objectives.dino import dino_loss, update_center
from tympan.objectives.distributed import gather
from tympan.objectives.nt_xent import nt_xent
from tympan.objectives.vicreg import vicreg_loss

WORLD = 2
N, D_IN, D_OUT = 8, 5, 4  # global batch of 8 pairs, 4 per rank
OBJECTIVES = ("nt_xent", "barlow_twins", "vicreg", "dino", "byol")


def _problem() -> tuple[Tensor, Tensor, nn.Linear, nn.Linear, Tensor]:
    """The fixed batch (two views), the student model, a frozen teacher and an initial centre."""
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(N, D_IN, generator=g)
    x2 = x1 + 0.5 * torch.randn(N, D_IN, generator=g)
    model, teacher = nn.Linear(D_IN, D_OUT), nn.Linear(D_IN, D_OUT)
    with torch.no_grad():
        for m in (model, teacher):
            m.weight.copy_(torch.randn(D_OUT, D_IN, generator=g))
            m.bias.copy_(torch.randn(D_OUT, generator=g))
    teacher.requires_grad_(False)
    return x1, x2, model, teacher, 0.1 * torch.randn(D_OUT, generator=g)


def _gradients(
    model: nn.Module, teacher: nn.Module, x1: Tensor, x2: Tensor, center0: Tensor
) -> dict[str, Tensor]:
    """Loss value and flattened parameter gradient of each objective on this process's batch."""
    out: dict[str, Tensor] = {}
    for name in (*OBJECTIVES, "barlow_twins_local"):
        model.zero_grad(set_to_none=True)
        z1, z2 = model(torch.cat([x1, x2])).chunk(2)  # one forward per backward, as DDP expects
        with torch.no_grad():
            t1, t2 = teacher(x1), teacher(x2)
        if name == "nt_xent":
            loss = nt_xent(gather(z1), gather(z2), temperature=0.5)
        elif name == "barlow_twins":
            loss = barlow_twins_loss(gather(z1), gather(z2), lambda_offdiag=0.1)
        elif name == "barlow_twins_local":  # the mistake: local batch statistics
            loss = barlow_twins_loss(z1, z2, lambda_offdiag=0.1)
        elif name == "vicreg":
            loss = vicreg_loss(gather(z1), gather(z2))
        elif name == "dino":
            center = update_center(center0, gather(torch.cat([t1, t2])), momentum=0.9)
            out["center"] = center
            loss = dino_loss(z1, z2, t1, t2, center, student_temp=0.5, teacher_temp=0.2)
        else:
            loss = byol_loss(z1, z2, t1, t2)
        loss.backward()
        out[name] = torch.cat([p.grad.detach().flatten() for p in model.parameters()])
        out[f"{name}/loss"] = loss.detach()
    return out


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    if "GLOO_SOCKET_IFNAME" not in os.environ and "lo" in {n for _, n in socket.if_nameindex()}:
        os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # single host: loopback, whatever the hostname resolves to
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD, timeout=timedelta(seconds=60)
    )
    try:
        x1, x2, model, teacher, center0 = _problem()
        rows = slice(rank * N // WORLD, (rank + 1) * N // WORLD)
        ddp = nn.parallel.DistributedDataParallel(model)
        result = _gradients(ddp, teacher, x1[rows], x2[rows], center0)
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
        # both ranks done before either tears gloo down: without it one rank now and then
        # aborted in teardown ("terminate called without an active exception", 2 runs in 20)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_ddp_gradients_equal_single_process_gradients(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert not dist.is_initialized()
    # spawned children unpickle _worker by module name: make this file importable as a top-level
    # module (pytest's importlib mode does not put its folder on sys.path; children inherit sys.path)
    here = Path(__file__).resolve()
    monkeypatch.syspath_prepend(str(here.parent))
    added = here.stem not in sys.modules
    worker = importlib.import_module(here.stem)._worker
    try:
        context = mp.spawn(worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=False)
        deadline = time.monotonic() + 120
        while not context.join(timeout=1):
            if time.monotonic() > deadline:
                for process in context.processes:
                    process.terminate()
                pytest.fail("DDP children did not finish within 120 s")
    finally:
        if added:
            sys.modules.pop(here.stem, None)

    x1, x2, model, teacher, center0 = _problem()
    reference = _gradients(model, teacher, x1, x2, center0)  # no process group: gather is identity
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        for name in OBJECTIVES:
            assert reference[name].abs().sum() > 0
            assert torch.allclose(got[name], reference[name], rtol=1e-5, atol=1e-6), (
                rank,
                name,
                (got[name] - reference[name]).abs().max().item(),
            )
        for name in ("nt_xent", "barlow_twins", "vicreg"):  # every rank computes the global loss
            assert torch.allclose(got[f"{name}/loss"], reference[f"{name}/loss"], rtol=1e-5, atol=1e-6)
        assert torch.allclose(got["center"], reference["center"], rtol=1e-6, atol=1e-7)
        # local batch statistics are not the global batch's: the gradient differs
        assert not torch.allclose(got["barlow_twins_local"], reference["barlow_twins"], rtol=1e-3, atol=1e-4)
