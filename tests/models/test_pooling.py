"""Pooling a feature map into one embedding (tympan.models.pooling) and the encoder's
``model.pooling`` / ``model.embed_dim`` (multi-view tagging seed 003: attention over time to a
1024-d embedding on a 2.8M-parameter ResNet)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tympan.config import load_recipe, save_recipe
from tympan.errors import ConfigError
from tympan.models.encoder import CONFIG_FILE, ENCODER_FILE, Encoder, load_encoder, save_encoder
from tympan.models.pooling import AttentionPool, MeanPool, build_pooling

SR = 16000


def _fmap(b: int = 3, c: int = 8, f: int = 4, t: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, c, f, t, generator=torch.Generator().manual_seed(seed))


def _pool(c: int = 8, out: int = 12, seed: int = 0) -> AttentionPool:
    torch.manual_seed(seed)
    return AttentionPool(c, out)


def _wave(batch: int = 2, seconds: float = 1.0, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.1 * torch.randn(batch, int(seconds * SR), generator=g)


def _recipe(**over):
    return load_recipe("multiview", {"model.width": 8, **over})


# -- AttentionPool -----------------------------------------------------------------------------


def test_attention_weights_are_a_distribution_over_time() -> None:
    pool, fmap = _pool(), _fmap()
    w = pool.weights(fmap)
    assert w.shape == (3, 5)
    assert (w > 0).all()
    torch.testing.assert_close(w.sum(dim=1), torch.ones(3))
    # the weights depend on the frames: not uniform for random input
    assert not torch.allclose(w, torch.full_like(w, 0.2))


def test_attention_output_is_the_weighted_sum_of_the_frame_values() -> None:
    pool, fmap = _pool(), _fmap()
    out, frames, w = pool(fmap), pool.frames(fmap), pool.weights(fmap)
    assert out.shape == (3, 12) and pool.out_dim == 12
    assert frames.shape == (3, 5, 12)
    torch.testing.assert_close(out, (w.unsqueeze(2) * frames).sum(dim=1), atol=1e-6, rtol=1e-5)
    # frames are the value projection of the frequency-averaged feature map
    torch.testing.assert_close(frames, pool.value(fmap.mean(dim=2).transpose(1, 2)))


def test_constant_frames_give_the_value_of_that_frame() -> None:
    pool = _pool()
    h = torch.randn(3, 8, 4, 1, generator=torch.Generator().manual_seed(1))
    fmap = h.expand(3, 8, 4, 7).contiguous()  # seven identical time frames
    torch.testing.assert_close(pool.weights(fmap), torch.full((3, 7), 1 / 7))
    torch.testing.assert_close(pool(fmap), pool.value(h.mean(dim=2).squeeze(2)), atol=1e-6, rtol=1e-5)
    # one frame: weight 1
    one = h.contiguous()
    torch.testing.assert_close(pool.weights(one), torch.ones(3, 1))
    torch.testing.assert_close(pool(one), pool.value(h.mean(dim=2).squeeze(2)))


def test_attention_is_order_free_over_time_and_per_clip() -> None:
    pool, fmap = _pool(), _fmap(t=6)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    shuffled = fmap[..., perm]
    torch.testing.assert_close(pool.weights(shuffled), pool.weights(fmap)[:, perm])
    torch.testing.assert_close(pool(shuffled), pool(fmap), atol=1e-6, rtol=1e-5)
    # clips do not see each other
    torch.testing.assert_close(pool(fmap[1:2]), pool(fmap)[1:2])


def test_attention_gradients_reach_scores_and_values() -> None:
    pool, fmap = _pool(), _fmap().requires_grad_(True)
    pool(fmap).pow(2).sum().backward()
    for name, p in pool.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert fmap.grad is not None and torch.isfinite(fmap.grad).all()


# -- MeanPool and build_pooling -------------------------------------------------------------------


def test_mean_pool_keeps_the_channels() -> None:
    pool, fmap = MeanPool(8), _fmap()
    assert pool.out_dim == 8 and list(pool.parameters()) == []
    torch.testing.assert_close(pool(fmap), fmap.mean(dim=(2, 3)))
    assert pool.frames(fmap).shape == (3, 5, 8)
    torch.testing.assert_close(pool.frames(fmap).mean(dim=1), pool(fmap))


def test_build_pooling() -> None:
    assert isinstance(build_pooling("mean", 64, None), MeanPool)
    att = build_pooling("attention", 64, None)
    assert isinstance(att, AttentionPool) and att.out_dim == 1024  # the seed's default
    assert build_pooling("attention", 64, 32).out_dim == 32
    with pytest.raises(ConfigError, match="model.pooling"):
        build_pooling("max", 64, None)
    with pytest.raises(ConfigError, match="model.embed_dim"):
        build_pooling("mean", 64, 32)


# -- in the encoder -------------------------------------------------------------------------------


def test_encoder_with_attention_pooling_to_embed_dim() -> None:
    enc = Encoder(_recipe(**{"model.pooling": "attention", "model.embed_dim": 64})).eval()
    assert isinstance(enc.pool, AttentionPool)
    assert enc.dim == enc.embedding_dim == 64
    x = _wave(2, seconds=2.0)
    with torch.no_grad():
        out, frames = enc(x), enc.frames(x, enc.tasks[0])
        fmap = enc.full_feature_map(x, enc.tasks[0])
    assert out.shape == (2, 64) and torch.isfinite(out).all()
    assert frames.shape == (2, fmap.shape[3], 64)
    # the embedding is the attention-weighted mean of the frames
    w = enc.pool.weights(fmap)
    torch.testing.assert_close(out, (w.unsqueeze(2) * frames).sum(dim=1), atol=1e-5, rtol=1e-4)


def test_split_head_slices_the_attention_embedding() -> None:
    tasks = [{"name": "a", "objective": "nt_xent"}, {"name": "b", "objective": "barlow_twins"}]
    enc = Encoder(_recipe(**{"model.embed_dim": 64, "model.split_head": True, "tasks": tasks})).eval()
    assert enc.tasks == ("a", "b") and enc.dim == 32 and enc.embedding_dim == 64
    assert enc.task_slices() == {"a": (0, 32), "b": (32, 64)}
    x = _wave(2, seconds=1.0)
    with torch.no_grad():
        full, a, b = enc(x), enc(x, "a"), enc(x, "b")
        fa, fb = enc.frames(x, "a"), enc.frames(x, "b")
    assert full.shape == (2, 64) and a.shape == b.shape == (2, 32)
    torch.testing.assert_close(full[:, :32], a)
    torch.testing.assert_close(full[:, 32:], b)
    assert fa.shape[2] == fb.shape[2] == 32
    torch.testing.assert_close(torch.cat([fa, fb], dim=2), enc.pool.frames(enc.full_feature_map(x, "a")))
    # an embed_dim that does not divide between the tasks is refused with the fields to change
    with pytest.raises(ConfigError, match="model.embed_dim"):
        Encoder(_recipe(**{"model.embed_dim": 63, "model.split_head": True, "tasks": tasks}))


def test_embed_dim_needs_attention_pooling() -> None:
    with pytest.raises(ConfigError, match="model.embed_dim"):
        load_recipe("demo", {"model.embed_dim": 64})
    with pytest.raises(ConfigError, match="model.embed_dim"):
        _recipe(**{"model.pooling": "mean", "model.embed_dim": 64})
    with pytest.raises(ConfigError, match="model.pooling"):
        _recipe(**{"model.pooling": "max"})
    with pytest.raises(ConfigError, match="model.embed_dim"):
        _recipe(**{"model.embed_dim": 0})
    # mean pooling without embed_dim keeps the backbone's channels
    enc = Encoder(_recipe(**{"model.pooling": "mean", "model.embed_dim": None}))
    assert isinstance(enc.pool, MeanPool) and enc.dim == 64


def test_attention_encoder_saves_and_loads(tmp_path: Path) -> None:
    recipe = _recipe(**{"model.embed_dim": 48})
    enc = Encoder(recipe).eval()
    with torch.no_grad():
        for p in enc.pool.parameters():
            p.add_(0.1)  # off its initialisation, so a pool rebuilt at random would show
    save_recipe(recipe, tmp_path / CONFIG_FILE)
    save_encoder(enc, tmp_path / ENCODER_FILE)
    loaded = load_encoder(tmp_path)
    x = _wave(2)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), enc(x))


def test_seed_sized_encoder_has_about_2_8m_parameters() -> None:
    """The multiview recipe: ResNet-18 at width 32, attention pooling to 1024 (seed 003: "a total
    of 2.8 million trainable parameters"). Measured: 2,795,744 backbone + 329,217 attention pooling
    = 3,124,961."""
    recipe = load_recipe("multiview")
    assert (recipe.model.arch, recipe.model.width) == ("resnet18", 32)
    assert (recipe.model.pooling, recipe.model.embed_dim) == ("attention", 1024)
    enc = Encoder(recipe)
    total = sum(p.numel() for p in enc.parameters())
    assert 2_800_000 <= total <= 3_200_000
    assert total == 3_124_961
    assert sum(p.numel() for p in enc.backbone.parameters()) == 2_795_744
    assert enc.dim == 1024


def test_parameter_counts_compare_like_with_like_under_attention_pooling() -> None:
    """A separate network has its own pooling too: one task without adapters costs exactly one
    network (``single_network`` once counted the backbone alone, so this read 1.1178)."""
    counts = Encoder(load_recipe("multiview")).parameter_counts()
    assert counts["per_task"] == {}
    assert counts["single_network"] == counts["total"]
    assert counts["ratio_to_separate"] == 1.0 and counts["extra_over_single"] == 0.0
