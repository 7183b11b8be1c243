"""MT-SLVR's tasks inside the training module: joint weighted loss, shared passes, variants."""

from __future__ import annotations

from unittest import mock

import pytest
import torch

from tympan.config import load_recipe
from tympan.methods.aug_prediction import AugPredictionTask
from tympan.methods.simsiam import SimSiamTask
from tympan.reproduce.mtslvr import VARIANTS, average_ranks, variant_overrides
from tympan.training.module import PretrainModule

FOUR_OPS = ["fade", "white_noise", "time_mask", "time_shift"]


def _recipe(adapter: str = "parallel", split: bool = True, contrastive: str = "nt_xent"):
    head = (
        {"hidden_dim": 32, "out_dim": 16, "num_layers": 2}
        if contrastive == "nt_xent"
        else {"hidden_dim": 32, "out_dim": 32, "num_layers": 3, "pred_hidden_dim": 8}
    )
    return load_recipe(
        "mtslvr_quick",
        {
            "model.width": 8, "model.adapter": adapter, "model.split_head": split,
            "augment.ops": FOUR_OPS,
            "tasks": [
                {"name": "contrastive", "objective": contrastive, "weight": 0.3, "head": head},
                {"name": "predictive", "objective": "aug_prediction", "weight": 0.7,
                 "head": {"hidden_dim": 16, "num_layers": 2}},
            ],
        },
    )


def _step_parts(module: PretrainModule, wav: torch.Tensor, seed: int = 0):
    views = module.views(wav, torch.Generator().manual_seed(seed))
    return views, {n: t(module.encoder, views).loss for n, t in module.tasks.items()}


@pytest.mark.parametrize("contrastive", ["nt_xent", "simsiam"])
def test_joint_loss_is_the_recipe_weighted_sum(contrastive: str) -> None:
    torch.manual_seed(0)
    module = PretrainModule(_recipe(contrastive=contrastive))
    wav = torch.randn(6, 8000, generator=torch.Generator().manual_seed(1))
    _, parts = _step_parts(module, wav)
    module.log_dict = lambda *a, **k: None  # no trainer attached
    module.log = lambda *a, **k: None
    with mock.patch.object(module, "optimizers") as opt:
        opt.return_value.param_groups = [{"lr": 0.1}]
        module._generator = torch.Generator().manual_seed(0)  # the views of _step_parts
        total = module.training_step({"audio": wav}, 0)
    assert total.item() == pytest.approx(0.3 * parts["contrastive"].item()
                                         + 0.7 * parts["predictive"].item(), rel=1e-5)


def test_predictive_head_predicts_every_op_of_the_pipeline() -> None:
    module = PretrainModule(_recipe())
    task = module.tasks["predictive"]
    assert isinstance(task, AugPredictionTask) and task.num_ops == len(FOUR_OPS)
    assert task.head[-1].out_features == len(FOUR_OPS)


def test_simsiam_task_has_predictor_and_bn_projector() -> None:
    module = PretrainModule(_recipe(contrastive="simsiam"))
    task = module.tasks["contrastive"]
    assert isinstance(task, SimSiamTask)
    assert isinstance(task.projector[-1], torch.nn.BatchNorm1d)


def test_shared_backbone_runs_once_per_step_and_adapters_once_per_task() -> None:
    wav = torch.randn(4, 8000, generator=torch.Generator().manual_seed(2))
    for adapter, split, expected in (("none", False, 1), ("none", True, 1), ("parallel", True, 2)):
        module = PretrainModule(_recipe(adapter, split))
        with mock.patch.object(
            module.encoder, "pooled", wraps=module.encoder.pooled
        ) as pooled:
            _step_parts(module, wav)
        assert pooled.call_count == expected, (adapter, split)


def test_each_task_gradient_reaches_only_its_own_adapters() -> None:
    module = PretrainModule(_recipe("parallel", True))
    wav = torch.randn(4, 8000, generator=torch.Generator().manual_seed(3))
    _, parts = _step_parts(module, wav)
    parts["predictive"].backward()
    grads = {n: p.grad for n, p in module.encoder.named_parameters()}
    contrastive_adapters = [g for n, g in grads.items() if ".contrastive." in n]
    predictive_adapters = [g for n, g in grads.items() if ".predictive." in n]
    assert contrastive_adapters and all(g is None or g.abs().sum() == 0 for g in contrastive_adapters)
    assert any(g is not None and g.abs().sum() > 0 for g in predictive_adapters)


def test_variants_are_the_seeds_seven_rows() -> None:
    names = [v.name for v in VARIANTS]
    assert names == ["Cont Only", "Pred Only", "MT-Simple", "MT-Split", "MT-BN", "MT-Series",
                     "MT-Parallel"]
    over = variant_overrides("mtslvr_quick", VARIANTS[0])
    assert [t["name"] for t in over["tasks"]] == ["contrastive"] and over["tasks"][0]["weight"] == 1
    over = variant_overrides("mtslvr_simsiam_quick", VARIANTS[-1])
    assert over["model.adapter"] == "parallel" and over["model.split_head"] is True
    assert [t["objective"] for t in over["tasks"]] == ["simsiam", "aug_prediction"]
    recipe = load_recipe("mtslvr_quick", {**variant_overrides("mtslvr_quick", VARIANTS[3])})
    assert recipe.model.adapter == "none" and recipe.model.split_head


def test_average_ranks_with_ties() -> None:
    acc = {"a": {"d1": 50.0, "d2": 40.0}, "b": {"d1": 60.0, "d2": 40.0}, "c": {"d1": 10.0, "d2": 45.0}}
    ranks = average_ranks(acc)
    # d1: b=1, a=2, c=3; d2: c=1, a=b=2.5
    assert ranks == {"a": 2.25, "b": 1.75, "c": 2.0}
