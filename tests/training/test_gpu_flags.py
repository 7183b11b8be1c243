"""The GPU-path flags and the learning-rate scaling of the recipe's ``train`` section.

``channels_last`` and ``compile`` change speed, not results: forced on on the CPU they give the
same loss (and, after a few steps, the same weights) as the plain run, and the saved encoder keeps
its key names. ``lr_scaling`` is checked as arithmetic (:func:`scaled_lr`, no DDP needed) and as
what a run records in ``pretrain.json``. Two-process DDP runs are in ``test_ddp.py``.

Sized for 2 CPU cores: the tiny corpus, a width-8 ResNet, batches of 8, two steps.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from tympan.config import load_recipe
from tympan.errors import ConfigError
from tympan.models.encoder import ENCODER_FILE
from tympan.training.module import PretrainModule, effective_batch, scaled_lr, warmup_cosine
from tympan.training.pretrain import pretrain

STEPS = 2


@pytest.fixture(scope="module")
def plain_run(corpus: Path, simclr_tiny: dict[str, Any],
              tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: recipe defaults (channels_last 'auto' is off on the CPU, no compile)."""
    run = tmp_path_factory.mktemp("plain") / "run"
    pretrain("simclr", corpus, run, max_steps=STEPS, progress=False, overrides=simclr_tiny)
    return run


def _column(run: Path, key: str) -> list[float]:
    """The logged values of ``key`` in the run's ``metrics.csv``, rows without one skipped."""
    with open(run / "metrics.csv", newline="") as f:
        return [float(r[key]) for r in csv.DictReader(f) if r.get(key)]


def _assert_same_run(a: Path, b: Path) -> None:
    """Same losses and weights up to float32 summation order. Another memory format or a
    compiled kernel sums in another order (relative differences ~1e-5 in the gradients); Adam
    divides by sqrt(v), so where a gradient is near 0 a weight can move by up to ``lr`` a step
    either way: the weights are compared to that bound, the losses tightly."""
    la, lb = _column(a, "loss"), _column(b, "loss")
    assert len(la) == len(lb) == STEPS
    assert la[0] == pytest.approx(lb[0], rel=1e-5)
    assert la == pytest.approx(lb, rel=1e-3)
    wa, wb = load_file(str(a / ENCODER_FILE)), load_file(str(b / ENCODER_FILE))
    assert sorted(wa) == sorted(wb)  # no "_orig_mod." or other renamed keys
    for key in wa:
        assert wa[key].is_contiguous()  # saved in the standard layout whatever the training one
        torch.testing.assert_close(wa[key], wb[key], atol=2 * STEPS * 1e-3, rtol=0, msg=key)


# -- learning-rate scaling: the arithmetic ---------------------------------------------------

def test_scaled_lr_rules() -> None:
    assert effective_batch(64, 2) == 128 and effective_batch(64, 1) == 64
    # base None: the recipe's lr was tuned on one device
    assert scaled_lr(1e-3, 64, 2) == 1e-3  # rule "none"
    assert scaled_lr(1e-3, 64, 2, None, "none") == 1e-3
    assert scaled_lr(1e-3, 64, 2, None, "linear") == pytest.approx(2e-3)
    assert scaled_lr(1e-3, 64, 2, None, "sqrt") == pytest.approx(1e-3 * math.sqrt(2))
    assert scaled_lr(1e-3, 64, 1, None, "linear") == pytest.approx(1e-3)
    # an explicit base: lr tuned for a global batch of 256
    assert scaled_lr(0.1, 32, 8, 256, "linear") == pytest.approx(0.1)  # 32 x 8 = 256
    assert scaled_lr(0.1, 32, 4, 256, "linear") == pytest.approx(0.05)
    assert scaled_lr(4e-4, 64, 16, 256, "sqrt") == pytest.approx(8e-4)  # 1024 / 256 = 4
    assert scaled_lr(4e-4, 64, 16, 256, "none") == 4e-4
    with pytest.raises(ValueError, match="cubic"):
        scaled_lr(1e-3, 64, 2, None, "cubic")


# -- recipe fields ----------------------------------------------------------------------------

def test_train_fields_defaults_and_values() -> None:
    t = load_recipe("simclr").train
    assert (t.channels_last, t.compile, t.compile_mode) == ("auto", False, "default")
    assert (t.lr_scaling, t.base_batch_size) == ("none", None)
    t = load_recipe("simclr", {"train.channels_last": True, "train.compile": True,
                               "train.compile_mode": "max-autotune", "train.lr_scaling": "sqrt",
                               "train.base_batch_size": 256}).train
    assert (t.channels_last, t.compile, t.compile_mode) == (True, True, "max-autotune")
    assert (t.lr_scaling, t.base_batch_size) == ("sqrt", 256)
    assert load_recipe("simclr", {"train.channels_last": False}).train.channels_last is False


@pytest.mark.parametrize(("key", "value"), [
    ("train.channels_last", "yes please"),
    ("train.channels_last", 1),
    ("train.compile", "true"),
    ("train.compile_mode", "fast"),
    ("train.lr_scaling", "cubic"),
    ("train.base_batch_size", 0),
    ("train.base_batch_size", "big"),
])
def test_bad_values_name_the_field(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_recipe("simclr", {key: value})


# -- channels_last: same loss, either layout ------------------------------------------------

def test_channels_last_same_loss_and_gradients_on_cpu(simclr_tiny: dict[str, Any]) -> None:
    torch.manual_seed(0)
    module = PretrainModule(load_recipe("simclr", simclr_tiny))
    wav = 0.1 * torch.randn(8, 8000)

    def loss_and_grads() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        module.zero_grad()
        loss, _ = module.compute_loss({"audio": wav}, torch.Generator().manual_seed(0))
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in module.named_parameters()
                               if p.grad is not None}

    loss_a, grads_a = loss_and_grads()
    module.to(memory_format=torch.channels_last)
    convs = [m.weight for m in module.encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    loss_b, grads_b = loss_and_grads()
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-5, atol=1e-6)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:  # float32 summation order differs: ~1e-5 of each tensor's scale
        scale = float(grads_a[name].abs().max())
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=0, atol=1e-4 * scale + 1e-8,
                                   msg=name)


def test_channels_last_forced_in_a_run(corpus: Path, plain_run: Path, tmp_path: Path,
                                       simclr_tiny: dict[str, Any]) -> None:
    run = tmp_path / "run"
    res = pretrain("simclr", corpus, run, max_steps=STEPS, progress=False,
                   overrides={**simclr_tiny, "train.channels_last": True})
    assert res.environment["channels_last"] is True
    assert json.loads((plain_run / "pretrain.json").read_text())["environment"][
        "channels_last"] is False  # "auto" on the CPU
    _assert_same_run(run, plain_run)


# -- learning-rate scaling: what a run applies and records ---------------------------------

def test_lr_scaling_recorded_in_pretrain_json(corpus: Path, plain_run: Path, tmp_path: Path,
                                              simclr_tiny: dict[str, Any]) -> None:
    env = json.loads((plain_run / "pretrain.json").read_text())["environment"]
    assert env["effective_batch_size"] == 8 and env["batch_size"] == 8
    assert env["lr"] == pytest.approx(1e-3) and env["lr_scaling"] == "none"
    assert env["gather_world_size"] == 1 and env["compile"] is False

    run = tmp_path / "run"
    # lr 1e-3 was tuned for a global batch of 4; this run steps 8 clips: linear scaling x2
    pretrain("simclr", corpus, run, max_steps=STEPS, progress=False,
             overrides={**simclr_tiny, "train.lr_scaling": "linear", "train.base_batch_size": 4})
    env = json.loads((run / "pretrain.json").read_text())["environment"]
    assert env["effective_batch_size"] == 8 and env["devices"] == 1
    assert env["lr"] == pytest.approx(2e-3) and env["lr_scaling"] == "linear"
    # the optimiser ran with it: the logged lr is the applied lr times the schedule
    for step, lr in enumerate(_column(run, "lr")):
        assert lr == pytest.approx(2e-3 * warmup_cosine(step, 1, STEPS), rel=1e-5)


# -- torch.compile: same result, same keys ----------------------------------------------------

@pytest.mark.slow
def test_compile_on_cpu_keeps_keys_and_results(corpus: Path, plain_run: Path, tmp_path: Path,
                                               simclr_tiny: dict[str, Any]) -> None:
    """Inductor compiles the width-8 ResNet's forward and backward on the CPU (gcc): tens of
    seconds on a cold cache, a few on a warm one."""
    run = tmp_path / "run"
    res = pretrain("simclr", corpus, run, max_steps=STEPS, progress=False,
                   overrides={**simclr_tiny, "train.compile": True})
    assert res.steps == STEPS and res.environment["compile"] == "default"
    _assert_same_run(run, plain_run)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert not [k for k in ckpt["state_dict"] if "_orig_mod" in k]


def test_progress_bar_counts_steps(corpus: Path, tmp_path: Path,
                                   simclr_tiny: dict[str, Any]) -> None:
    """The bar is labelled by optimiser steps (max_epochs is -1, which the stock label shows as
    "Epoch N/-2"), and a run with the bar on trains as usual."""
    from types import SimpleNamespace

    from tympan.training.pretrain import StepProgressBar

    bar = StepProgressBar()
    bar._trainer = SimpleNamespace(global_step=5, max_steps=10)
    assert bar._get_train_description(3) == "epoch 3 · step 5/10"
    result = pretrain("simclr", corpus, tmp_path / "run", max_steps=STEPS, progress=True,
                      overrides=simclr_tiny)
    assert result.steps == STEPS
