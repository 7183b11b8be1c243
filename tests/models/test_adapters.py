"""MT-SLVR encoder variants: per-task adapters, split head, parameter counts."""

from __future__ import annotations

import pytest
import torch

from tympan.config import load_recipe
from tympan.errors import ConfigError
from tympan.models.encoder import Encoder

TASKS = [
    {"name": "contrastive", "objective": "nt_xent"},
    {"name": "predictive", "objective": "aug_prediction"},
]


def _encoder(adapter: str, split: bool, width: int = 8) -> Encoder:
    recipe = load_recipe(
        "simclr",
        {"model.width": width, "model.adapter": adapter, "model.split_head": split, "tasks": TASKS},
    )
    torch.manual_seed(0)
    return Encoder(recipe)


def _perturb_task_params(enc: Encoder, task: str) -> None:
    with torch.no_grad():
        for name, p in enc.named_parameters():
            if f".{task}." in name:
                p.add_(0.5)


@pytest.mark.parametrize("adapter", ["bn", "series", "parallel"])
def test_each_task_uses_shared_weights_plus_its_own_adapters(adapter: str) -> None:
    enc = _encoder(adapter, True).eval()
    x = torch.randn(2, 8000, generator=torch.Generator().manual_seed(1))
    before = {t: enc(x, t) for t in enc.tasks}
    _perturb_task_params(enc, "predictive")
    # changing the predictive adapters leaves the contrastive embedding alone ...
    assert torch.allclose(enc(x, "contrastive"), before["contrastive"])
    assert not torch.allclose(enc(x, "predictive"), before["predictive"])
    # ... and a shared weight moves both
    with torch.no_grad():
        enc.backbone.blocks[0].conv1.conv.weight.mul_(1.5)
    assert not torch.allclose(enc(x, "contrastive"), before["contrastive"])


@pytest.mark.parametrize("adapter", ["series", "parallel"])
def test_residual_adapters_start_as_the_identity(adapter: str) -> None:
    """Zero-initialised 1x1 adapters: at initialisation each task computes the shared network."""
    enc = _encoder(adapter, False).eval()
    plain = _encoder("bn", False).eval()
    plain.load_state_dict(enc.state_dict(), strict=False)
    x = torch.randn(2, 8000, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(enc(x, "contrastive"), plain(x, "contrastive"), atol=1e-5)


def test_split_head_gives_each_task_half_of_the_final_layer() -> None:
    enc = _encoder("none", True).eval()
    x = torch.randn(3, 8000, generator=torch.Generator().manual_seed(3))
    full = enc(x)
    assert full.shape == (3, enc.backbone.out_channels) and enc.dim * 2 == full.shape[1]
    slices = enc.task_slices()
    assert slices == {"contrastive": (0, enc.dim), "predictive": (enc.dim, 2 * enc.dim)}
    for t, (a, b) in slices.items():
        assert torch.allclose(full[:, a:b], enc(x, t))
    assert enc.frames(x, "predictive").shape[-1] == enc.dim


def test_mt_simple_shares_everything_and_does_not_duplicate_the_embedding() -> None:
    enc = _encoder("none", False).eval()
    x = torch.randn(2, 8000, generator=torch.Generator().manual_seed(4))
    assert torch.allclose(enc(x, "contrastive"), enc(x, "predictive"))
    assert enc(x).shape == (2, enc.dim) and enc.embedding_dim == enc.dim
    assert enc.task_slices() == {"contrastive": (0, enc.dim), "predictive": (0, enc.dim)}
    assert enc.path_key("contrastive") == enc.path_key("predictive")


@pytest.mark.parametrize("adapter", ["bn", "series", "parallel"])
def test_adapter_encoders_concatenate_task_embeddings(adapter: str) -> None:
    enc = _encoder(adapter, True).eval()
    x = torch.randn(2, 8000, generator=torch.Generator().manual_seed(5))
    full = enc(x)
    assert full.shape == (2, enc.embedding_dim) == (2, 2 * enc.dim)
    for t, (a, b) in enc.task_slices().items():
        assert torch.allclose(full[:, a:b], enc(x, t), atol=1e-6)


def test_parameter_counts_and_efficiency() -> None:
    """Full-width ResNet-18: BN adapters add ~0.1% per task; 1x1 adapters about 1/9 of the
    3x3 weights per task; every variant is far cheaper than two separate networks."""
    counts = {a: _encoder(a, True, width=64).parameter_counts() for a in ("none", "bn", "parallel")}
    single = counts["none"]["single_network"]
    assert counts["none"]["total"] == single and counts["none"]["per_task"] == {}
    bn = counts["bn"]
    assert bn["total"] == bn["shared"] + sum(bn["per_task"].values())
    assert 0 < bn["per_task"]["contrastive"] < 0.002 * single
    par = counts["parallel"]
    assert 0.09 * single < par["per_task"]["predictive"] < 0.13 * single
    assert par["separate_networks"] == 2 * single
    assert par["ratio_to_separate"] == pytest.approx(par["total"] / (2 * single), abs=1e-4)
    assert par["ratio_to_separate"] < 0.65


def test_unknown_adapter_and_indivisible_split_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="model.adapter"):
        _encoder("lora", True)
    recipe = load_recipe(
        "simclr",
        {"model.width": 8, "model.split_head": True,
         "tasks": TASKS + [{"name": "third", "objective": "nt_xent"}]},
    )
    with pytest.raises(ConfigError, match="split_head"):
        Encoder(recipe)
