"""The Encoder contract (ARCHITECTURE.md) and safe save/load."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tympan.config import TaskConfig, load_recipe, save_recipe
from tympan.errors import TympanError
from tympan.evaluation.features import resolve_model
from tympan.models.encoder import Encoder, load_encoder, save_encoder
from tympan.models.resnet import resnet18


def _recipe(**over):
    return load_recipe("demo", {"model.width": 8, **over})


def test_shapes_tasks_and_concatenation() -> None:
    recipe = _recipe()
    recipe.tasks = [TaskConfig(name="contrastive"), TaskConfig(name="other")]
    recipe.model.adapter = "bn"  # tasks with parameters of their own: embeddings differ
    enc = Encoder(recipe).eval()
    x = torch.randn(3, 16000)
    assert enc.tasks == ("contrastive", "other")
    one = enc(x, "contrastive")
    assert one.shape == (3, 64)  # 8 * width
    both = enc(x)
    assert both.shape == (3, 128) and enc.embedding_dim == 128
    sl = enc.task_slices()
    assert torch.allclose(both[:, slice(*sl["contrastive"])], one)
    assert torch.allclose(both[:, slice(*sl["other"])], enc(x, "other"))
    frames = enc.frames(x, "other")
    assert frames.shape[0] == 3 and frames.shape[2] == 64 and frames.shape[1] >= 1
    assert torch.allclose(frames.mean(1), enc(x, "other"), atol=1e-5)
    with pytest.raises(TympanError, match="unknown task"):
        enc(x, "nope")


def test_save_load_round_trip(tmp_path: Path) -> None:
    recipe = _recipe()
    enc = Encoder(recipe).eval()
    save_recipe(recipe, tmp_path / "config.yaml")
    save_encoder(enc, tmp_path / "encoder.safetensors")
    assert set(load_file(str(tmp_path / "encoder.safetensors"))) == set(enc.state_dict())
    again = load_encoder(tmp_path)
    x = torch.randn(2, 8000)
    assert torch.allclose(enc(x), again(x))
    (tmp_path / "encoder.safetensors").unlink()
    with pytest.raises(TympanError, match="encoder.safetensors"):
        load_encoder(tmp_path)


def test_resnet18_size_and_baselines() -> None:
    n = sum(p.numel() for p in resnet18(3, 64, "none", ("t",)).parameters())
    assert abs(n - 11.17e6) < 0.02e6  # torchvision's ResNet-18 without its fc layer
    a, b = resolve_model("random", _recipe(), seed=1), resolve_model("random", _recipe(), seed=1)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    logmel = resolve_model("logmel", _recipe())
    assert logmel(torch.randn(2, 16000)).shape == (2, 256)
