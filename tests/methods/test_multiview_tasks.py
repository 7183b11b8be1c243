"""The multi-view tagging seed's methods as tasks of the training module (seed 003, "Pre-training
Tasks"): BYOL and DINO-style clustering with an EMA teacher, Barlow Twins and VICReg on the seed's
shared head; their recipes, parameter checks, logs, and the teacher's place in the module."""

from __future__ import annotations

import math
from unittest import mock

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from tympan.config import load_recipe
from tympan.errors import ConfigError
from tympan.methods.base import EMATeacher
from tympan.methods.byol import BYOLTask
from tympan.methods.dino import DINOTask, PrototypeHead
from tympan.methods.multiview import SEED_HEAD, BarlowTwinsTask, VICRegTask
from tympan.methods.registry import TASKS, build_task
from tympan.objectives.dino import dino_loss
from tympan.training.module import PretrainModule

SR = 16000
HEAD = {"hidden_dim": 32, "out_dim": 64, "num_layers": 2, "out_batch_norm": True, "out_relu": True}
#: recipe -> (task name, objective, task class, extra head options of a tiny head)
METHODS = {
    "mv_byol": ("byol", "byol", BYOLTask, {"pred_hidden_dim": 32}),
    "mv_dino": ("clustering", "dino", DINOTask, {"prototypes": 16}),
    "mv_barlow_twins": ("barlow_twins", "barlow_twins", BarlowTwinsTask, {}),
    "mv_vicreg": ("vicreg", "vicreg", VICRegTask, {}),
}


def _recipe(name: str, params: dict | None = None, head: dict | None = None, **over):
    """The packaged recipe at test size: 32 mel bands, width-8 ResNet, 32-d attention embedding,
    small heads, the recipe's own objective parameters (updated by ``params``), 10 steps."""
    task, objective, _, extra = METHODS[name]
    packaged = load_recipe(name).tasks[0]
    return load_recipe(name, {
        "frontend.n_mels": 32, "model.width": 8, "model.embed_dim": 32, "train.max_steps": 10,
        "tasks": [{"name": task, "objective": objective,
                   "head": {**HEAD, **extra, **(head or {})},
                   "params": {**packaged.params, **(params or {})}}],
        **over,
    })


def _batch(b: int = 4, seconds: float = 0.5, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    n = int(seconds * SR)
    return {"audio": 0.1 * torch.randn(b, n, generator=g),
            "audio2": 0.1 * torch.randn(b, n, generator=g)}


def _step(module: PretrainModule, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
    """``training_step`` outside a trainer; returns the loss and what it logged."""
    logged: dict[str, torch.Tensor] = {}
    module.log_dict = lambda d, **k: logged.update(d)
    module.log = lambda *a, **k: None
    with mock.patch.object(module, "optimizers") as opt:
        opt.return_value.param_groups = [{"lr": 1e-3}]
        loss = module.training_step(batch, 0)
    return loss, logged


def _module(name: str, seed: int = 0, **kw) -> PretrainModule:
    torch.manual_seed(seed)
    return PretrainModule(_recipe(name, **kw), seed=seed)


# -- registry and recipes -----------------------------------------------------------------------


def test_every_new_objective_is_registered() -> None:
    assert TASKS["byol"] is BYOLTask and TASKS["dino"] is DINOTask
    assert TASKS["barlow_twins"] is BarlowTwinsTask and TASKS["vicreg"] is VICRegTask
    recipe = load_recipe("mv_byol")
    bad = recipe.tasks[0]
    bad.objective = "swav"
    with pytest.raises(ConfigError, match=r"tasks\[byol\]\.objective"):
        build_task(bad, 32, recipe)


@pytest.mark.parametrize("name", ["multiview", *METHODS, "mv_vicreg_seed"])
def test_recipe_is_the_seed_setting(name: str) -> None:
    r = load_recipe(name)
    # one data path and one architecture for every method (seed 003, "Pretext methodology")
    assert (r.model.arch, r.model.width, r.model.pooling, r.model.embed_dim) == ("resnet18", 32, "attention", 1024)
    assert r.audio.sample_rate == 16000 and r.frontend.n_mels == 128
    v = r.views
    assert (v.kind, v.segment_seconds, v.min_gap, v.max_gap) == ("same_track", 4.0, 4.0, 16.0)
    assert r.augment.ops == [] and r.train.batch_size == 256
    assert len(r.tasks) == 1
    head = r.tasks[0].head
    assert {k: head[k] for k in SEED_HEAD} == SEED_HEAD
    assert (head["hidden_dim"], head["out_dim"], head["num_layers"]) == (1024, 2048, 2)


@pytest.mark.parametrize("name", list(METHODS))
def test_task_builds_from_its_packaged_recipe(name: str) -> None:
    """At full size: the seed's head, 1024 -> 1024 -> 2048, blocks of linear, BN, ReLU."""
    task_name, objective, cls, _ = METHODS[name]
    r = load_recipe(name)
    assert (r.tasks[0].name, r.tasks[0].objective) == (task_name, objective)
    task = build_task(r.tasks[0], 1024, r)
    assert isinstance(task, cls) and task.name == task_name
    proj = task.head.projector if isinstance(task, DINOTask) else task.projector
    linears = [m for m in proj if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(1024, 1024), (1024, 2048)]
    assert isinstance(proj[-1], torch.nn.ReLU) and isinstance(proj[-2], torch.nn.BatchNorm1d)
    if isinstance(task, BYOLTask):
        assert task.params == {"momentum": 0.996, "final_momentum": 1.0}
        assert task.predictor[0].in_features == 2048 and task.predictor[-1].out_features == 2048
    if isinstance(task, DINOTask):
        assert isinstance(task.head, PrototypeHead)
        assert task.center.shape == (1, 512)
        assert task.warmup_steps == int(0.3 * r.train.max_steps)


def test_vicreg_recipes_weights() -> None:
    assert load_recipe("mv_vicreg").tasks[0].params == {
        "sim_coeff": 25.0, "std_coeff": 25.0, "cov_coeff": 1.0, "gamma": 1.0}
    assert load_recipe("mv_vicreg_seed").tasks[0].params == {
        "sim_coeff": 1.0, "std_coeff": 1.0, "cov_coeff": 1.0, "gamma": 1.0}
    assert load_recipe("mv_barlow_twins").tasks[0].params == {"lambda_offdiag": 0.005}
    assert load_recipe("multiview").tasks[0].params == {"temperature": 0.1}


# -- one training step ------------------------------------------------------------------------------

EXPECTED_LOGS = {
    "mv_byol": {"momentum"},
    "mv_dino": {"prototype_usage", "assignment_entropy", "teacher_temp"},
    "mv_barlow_twins": set(),
    "mv_vicreg": {"invariance", "variance", "covariance"},
}


@pytest.mark.parametrize("name", list(METHODS))
def test_one_training_step(name: str) -> None:
    module = _module(name)
    task_name = METHODS[name][0]
    with mock.patch.object(module.views, "pair", wraps=module.views.pair) as pair:
        loss, logged = _step(module, _batch())
    assert pair.call_count == 1  # a batch with "audio2": the two segments are the two views
    assert loss.dim() == 0 and torch.isfinite(loss) and loss.requires_grad
    keys = {"loss", "lr", f"{task_name}/loss", f"{task_name}/embed_std", f"{task_name}/effective_rank"}
    keys |= {f"{task_name}/{k}" for k in EXPECTED_LOGS[name]}
    assert set(logged) == keys
    assert all(v.dim() == 0 and torch.isfinite(v) and not v.requires_grad for v in logged.values())
    assert 0 < logged[f"{task_name}/embed_std"] < 1
    assert 1 <= logged[f"{task_name}/effective_rank"] <= 3 + 1e-4  # 4 centred samples
    if name == "mv_byol":
        assert logged["byol/momentum"].item() == pytest.approx(0.996)
    if name == "mv_dino":
        assert 0 < logged["clustering/prototype_usage"] <= 1
        assert logged["clustering/teacher_temp"].item() == pytest.approx(0.02)
    if name == "mv_vicreg":
        p = module.tasks["vicreg"].params
        total = sum(p[c] * logged[f"vicreg/{t}"] for c, t in (
            ("sim_coeff", "invariance"), ("std_coeff", "variance"), ("cov_coeff", "covariance")))
        assert logged["vicreg/loss"].item() == pytest.approx(total.item(), rel=1e-5)
    # the gradient reaches the encoder and the heads, never a teacher
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.encoder.parameters())
    teacher = getattr(module.tasks[task_name], "teacher", None)
    if teacher is not None:
        assert all(p.grad is None for p in teacher.parameters())


def test_an_unattached_teacher_task_says_so() -> None:
    r = _recipe("mv_byol")
    task = build_task(r.tasks[0], 32, r)
    module = _module("mv_byol")
    with pytest.raises(RuntimeError, match="attach"):
        task(module.encoder, module.views.pair(*_batch().values(), torch.Generator()))


# -- the EMA teacher ------------------------------------------------------------------------------

TEACHERS = {"mv_byol": ("encoder", "projector"), "mv_dino": ("encoder", "head")}


def _students(module: PretrainModule, name: str) -> dict[str, torch.nn.Module]:
    task = module.tasks[METHODS[name][0]]
    return {"encoder": module.encoder,
            "projector" if name == "mv_byol" else "head":
            task.projector if name == "mv_byol" else task.head}


@pytest.mark.parametrize("name", list(TEACHERS))
def test_teacher_is_a_frozen_copy_outside_the_optimiser(name: str) -> None:
    module = _module(name)
    task = module.tasks[METHODS[name][0]]
    assert isinstance(task.teacher, EMATeacher)
    assert set(task.teacher.copies) == set(TEACHERS[name])
    for key, student in _students(module, name).items():
        copy = task.teacher[key]
        assert copy is not student
        s_state, t_state = student.state_dict(), copy.state_dict()
        assert s_state.keys() == t_state.keys()
        for k in s_state:
            assert torch.equal(s_state[k], t_state[k]), k  # same weights and buffers
            assert s_state[k].data_ptr() != t_state[k].data_ptr() or s_state[k].numel() == 0, k
        assert all(not p.requires_grad for p in copy.parameters())
        assert all(p.requires_grad for p in student.parameters())
    # the optimiser holds every trainable parameter and none of the teacher's
    opt = module.configure_optimizers()["optimizer"]
    in_opt = {id(p) for group in opt.param_groups for p in group["params"]}
    assert not in_opt & {id(p) for p in task.teacher.parameters()}
    assert in_opt == {id(p) for p in module.parameters() if p.requires_grad}
    assert {id(p) for p in module.encoder.parameters()} <= in_opt


def _cosine_momentum(step: int, total: int, base: float, final: float) -> float:
    """BYOL's schedule written out: m = final - (final - base) (cos(pi k / K) + 1) / 2."""
    return final - (final - base) * (math.cos(math.pi * min(step, total) / total) + 1) / 2


@pytest.mark.parametrize("name", list(TEACHERS))
def test_teacher_follows_the_student_by_the_ema_formula(name: str) -> None:
    # a large first step (no warm-up), so that a wrong momentum could not hide in rounding
    module = _module(name, params={"momentum": 0.5, "final_momentum": 1.0},
                     **{"train.lr": 0.05, "train.warmup_steps": 1})
    task = module.tasks[METHODS[name][0]]
    opt = module.configure_optimizers()["optimizer"]
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)
    loss, _ = _step(module, _batch())
    loss.backward()
    opt.step()
    students = _students(module, name)
    before = {k: {n: p.detach().clone() for n, p in task.teacher[k].named_parameters()}
              for k in students}

    task.after_step(module.encoder, 1, 10)
    m = _cosine_momentum(1, 10, 0.5, 1.0)
    assert m == pytest.approx(1 - 0.25 * (math.cos(math.pi / 10) + 1))  # 0.5122
    # one parameter by hand: the first weight of the backbone's first convolution
    conv = next(n for n, p in module.encoder.named_parameters() if p.dim() == 4)
    s = dict(module.encoder.named_parameters())[conv].detach().flatten()[0].item()
    t0 = before["encoder"][conv].flatten()[0].item()
    t1 = dict(task.teacher["encoder"].named_parameters())[conv].flatten()[0].item()
    assert abs(s - t0) > 1e-3  # the optimiser moved the student
    assert t1 == pytest.approx(m * t0 + (1 - m) * s, rel=1e-5, abs=1e-8)
    # and every parameter of every copy; buffers (BatchNorm statistics) copied from the student
    moved = 0
    for key, student in students.items():
        t_params = dict(task.teacher[key].named_parameters())
        for n, p in student.named_parameters():
            torch.testing.assert_close(t_params[n], m * before[key][n] + (1 - m) * p.detach())
            moved += int(not torch.equal(t_params[n], before[key][n]))
        t_bufs = dict(task.teacher[key].named_buffers())
        for n, b in student.named_buffers():
            assert torch.equal(t_bufs[n], b), n
    assert moved > 0
    if name == "mv_byol":  # the momentum it used is logged at the next step
        assert task.momentum_now.item() == pytest.approx(m)
        _, logged = _step(module, _batch(seed=1))
        assert logged["byol/momentum"].item() == pytest.approx(m)


def test_momentum_follows_the_cosine_schedule_to_the_end() -> None:
    module = _module("mv_byol", params={"momentum": 0.9, "final_momentum": 0.99})
    task = module.tasks["byol"]
    for step in (0, 3, 5, 9, 10, 15):
        task.after_step(module.encoder, step, 10)
        assert task.momentum_now.item() == pytest.approx(_cosine_momentum(step, 10, 0.9, 0.99))
    assert task.momentum_now.item() == pytest.approx(0.99)
    # at momentum 1 the teacher stays where it is
    module = _module("mv_byol")  # 0.996 -> 1.0
    task = module.tasks["byol"]
    with torch.no_grad():
        for p in module.encoder.parameters():
            p.add_(0.01)
    before = [p.clone() for p in task.teacher.parameters()]
    task.after_step(module.encoder, 10, 10)
    assert all(torch.equal(a, b) for a, b in zip(before, task.teacher.parameters()))


def test_teacher_is_in_the_state_dict_and_survives_a_checkpoint() -> None:
    module = _module("mv_byol", params={"momentum": 0.5})
    task = module.tasks["byol"]
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.add_(0.05)
    task.after_step(module.encoder, 3, 10)  # teacher now differs from both init and student
    state = module.state_dict()
    teacher_keys = [k for k in state if k.startswith("tasks.byol.teacher.copies.")]
    assert any(k.startswith("tasks.byol.teacher.copies.encoder.backbone.") for k in teacher_keys)
    assert any(k.startswith("tasks.byol.teacher.copies.projector.") for k in teacher_keys)
    assert "tasks.byol.momentum_now" in state
    # a fresh module (its own random init) loading the checkpoint gets the same teacher
    fresh = _module("mv_byol", seed=1, params={"momentum": 0.5})
    fresh.load_state_dict(state)  # strict: the teacher's keys exist on both sides
    for k in teacher_keys:
        assert torch.equal(fresh.state_dict()[k], state[k]), k
    assert fresh.tasks["byol"].momentum_now.item() == pytest.approx(task.momentum_now.item())
    # the encoder's own weights (encoder.safetensors) do not carry the teacher
    assert not any("teacher" in k for k in module.encoder.state_dict())


# -- DINO: centre and teacher temperature -----------------------------------------------------------


def test_dino_centre_and_loss_use_the_momentum_formula() -> None:
    module = _module("mv_dino", params={"center_momentum": 0.8})
    task = module.tasks["clustering"]
    views = module.views.pair(*_batch().values(), torch.Generator())
    c0 = torch.randn(1, 16, generator=torch.Generator().manual_seed(5))
    task.center.copy_(c0)
    b = views.view1.shape[0]
    both = torch.cat([views.view1, views.view2])
    with torch.no_grad():
        # what the teacher and the student compute (train mode: BatchNorm on this batch)
        t_enc = task.teacher["encoder"]
        t = task.teacher["head"](t_enc.select(t_enc.pooled(both, "clustering"), "clustering"))
        s = task.head(module.encoder(both, "clustering"))
    out = task(module.encoder, views)
    torch.testing.assert_close(task.center, 0.8 * c0 + 0.2 * t.mean(dim=0, keepdim=True))
    # the loss is the cross-view loss at step 0's temperature, with the centre from before
    assert out.logs["teacher_temp"].item() == pytest.approx(0.02)
    expected = dino_loss(s[:b], s[b:], t[:b], t[b:], c0, 0.1, 0.02)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-4)


def test_dino_teacher_temperature_warms_up() -> None:
    module = _module("mv_dino")  # 10 steps: warm-up over the first 30%, 3 steps
    task = module.tasks["clustering"]
    assert task.warmup_steps == 3
    views = module.views.pair(*_batch().values(), torch.Generator())
    for step, expected in ((0, 0.02), (1, 0.02 + 0.02 / 3), (2, 0.02 + 0.04 / 3), (3, 0.04), (8, 0.04)):
        task.after_step(module.encoder, step, 10)
        assert int(task.step) == step
        with torch.no_grad():
            temp = task(module.encoder, views).logs["teacher_temp"].item()
        assert temp == pytest.approx(expected, rel=1e-6), step
    assert "tasks.clustering.step" in module.state_dict()  # resume continues the warm-up
    explicit = _module("mv_dino", params={"teacher_temp_warmup_steps": 7})
    assert explicit.tasks["clustering"].warmup_steps == 7


# -- parameter checks ---------------------------------------------------------------------------


@pytest.mark.parametrize("name, params, head, field", [
    ("mv_byol", {"momentum": 0.999, "final_momentum": 0.99}, None, "tasks[byol].params.momentum"),
    ("mv_byol", {"momentum": -0.1}, None, "tasks[byol].params.momentum"),
    ("mv_byol", {"final_momentum": 1.5}, None, "tasks[byol].params.momentum"),
    ("mv_byol", {"ema": 0.9}, None, "tasks[byol].params.ema"),
    ("mv_byol", None, {"predictor_dim": 8}, "tasks[byol].head.predictor_dim"),
    ("mv_dino", {"momentum": 0.999, "final_momentum": 0.99}, None, "tasks[clustering].params.momentum"),
    ("mv_dino", {"center_momentum": 1.0}, None, "tasks[clustering].params.center_momentum"),
    ("mv_dino", {"center_momentum": -0.1}, None, "tasks[clustering].params.center_momentum"),
    ("mv_dino", {"student_temp": 0.0}, None, "tasks[clustering].params.student_temp"),
    ("mv_dino", {"teacher_temp": -0.04}, None, "tasks[clustering].params.teacher_temp"),
    ("mv_dino", None, {"prototypes": 1}, "tasks[clustering].head.prototypes"),
    ("mv_dino", None, {"prototypes": 2.5}, "tasks[clustering].head.prototypes"),
    ("mv_barlow_twins", {"lambda_offdiag": -0.005}, None, "tasks[barlow_twins].params.lambda_offdiag"),
    ("mv_vicreg", {"sim_coeff": -1.0}, None, "tasks[vicreg].params.sim_coeff"),
    ("mv_vicreg", {"std_coeff": -25.0}, None, "tasks[vicreg].params.std_coeff"),
    ("mv_vicreg", {"cov_coeff": -1.0}, None, "tasks[vicreg].params.cov_coeff"),
    ("mv_vicreg", {"gamma": 0.0}, None, "tasks[vicreg].params.gamma"),
])
def test_invalid_parameters_name_their_field(name: str, params, head, field: str) -> None:
    r = _recipe(name, params=params, head=head)
    with pytest.raises(ConfigError) as info:
        build_task(r.tasks[0], 32, r)
    assert field in str(info.value)
    with pytest.raises(ConfigError, match=field.replace("[", r"\[").replace("]", r"\]")):
        PretrainModule(r)  # the module builds its tasks the same way


def test_boundary_parameters_are_accepted() -> None:
    for name, params in (("mv_byol", {"momentum": 1.0, "final_momentum": 1.0}),
                         ("mv_dino", {"center_momentum": 0.0}),
                         ("mv_barlow_twins", {"lambda_offdiag": 0.0}),
                         ("mv_vicreg", {"sim_coeff": 0.0})):
        r = _recipe(name, params=params)
        build_task(r.tasks[0], 32, r)


# -- inside a Lightning trainer -----------------------------------------------------------------


class _Pairs(Dataset):
    def __init__(self, n: int = 4, seconds: float = 0.5) -> None:
        g = torch.Generator().manual_seed(0)
        self.a = 0.1 * torch.randn(n, int(seconds * SR), generator=g)
        self.b = 0.1 * torch.randn(n, int(seconds * SR), generator=g)

    def __len__(self) -> int:
        return len(self.a)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"audio": self.a[i], "audio2": self.b[i], "index": i}


@pytest.mark.slow
def test_trainer_updates_the_teacher_after_each_optimiser_step(tmp_path) -> None:
    """One real optimiser step: the teacher is then ``m(1) s0 + (1 - m(1)) s1`` (it started as
    the student ``s0``), so the hook ran after the step and with the finished-step count."""
    module = _module("mv_byol", params={"momentum": 0.5},
                     **{"train.warmup_steps": 1, "train.lr": 0.05})
    task = module.tasks["byol"]
    s0 = {n: p.detach().clone() for n, p in module.encoder.named_parameters()}
    trainer = pl.Trainer(
        max_steps=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )
    trainer.fit(module, DataLoader(_Pairs(), batch_size=4))
    assert trainer.global_step == 1
    m = _cosine_momentum(1, 10, 0.5, 1.0)
    assert task.momentum_now.item() == pytest.approx(m)
    t = dict(task.teacher["encoder"].named_parameters())
    changed = 0
    for n, p in module.encoder.named_parameters():
        torch.testing.assert_close(t[n], m * s0[n] + (1 - m) * p.detach())
        changed += int(not torch.equal(p.detach(), s0[n]))
    assert changed > 0
    # the Lightning checkpoint carries the teacher
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=False)
    for n in t:
        assert torch.equal(ckpt["state_dict"][f"tasks.byol.teacher.copies.encoder.{n}"], t[n])
