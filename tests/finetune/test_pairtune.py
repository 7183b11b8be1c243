"""Stage 1 of AudioConFit (``../shared/seeds/002_5040cf44179b95f4.txt``, §2.1) and the FINETUNE
baseline (§3.2) in one loop: learning on a tiny separable problem, the projection discarded,
every parameter trained by FINETUNE, reproducibility and resuming."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tympan.config import load_recipe
from tympan.errors import ConfigError, TympanError
from tympan.evaluation.features import embed_clips
from tympan.finetune.backbones import load_backbone
from tympan.finetune.pairtune import (
    ProjectionHead,
    TuneConfig,
    crop_batch,
    resolve_m_per_class,
    tune_encoder,
)

SR = 16000
FREQS = (300.0, 600.0, 1200.0, 2400.0)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tones(n_per: int, seed: int, seconds: float = 0.5) -> tuple[list[np.ndarray], np.ndarray]:
    """Noisy sines, one frequency per class (±5%), random phase: separable by pitch."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    audio, labels = [], []
    for c, f in enumerate(FREQS):
        for _ in range(n_per):
            f0 = f * (1 + 0.05 * rng.standard_normal())
            wav = 0.5 * np.sin(2 * np.pi * f0 * t + rng.uniform(0, 2 * np.pi)) + 0.3 * rng.standard_normal(len(t))
            audio.append(wav.astype(np.float32))
            labels.append(c)
    return audio, np.array(labels)


@pytest.fixture(scope="module")
def backbone():
    recipe = load_recipe("demo", {"model.width": 4, "frontend.n_mels": 32, "frontend.n_fft": 512,
                                  "frontend.hop_length": 256})
    return load_backbone("random", recipe=recipe, seed=0)


@pytest.fixture(scope="module")
def problem():
    return (*tones(8, 0), *tones(4, 1))


def config(method: str, epochs: int, **over) -> TuneConfig:
    return TuneConfig(method=method, epochs=epochs, batch_size=8, lr=3e-3, clip_seconds=0.5,
                      projection_dim=16, **over)


def cosine_gap(enc: torch.nn.Module, audio: list[np.ndarray], labels: np.ndarray) -> tuple[float, float]:
    """Mean cosine of same-class pairs and of different-class pairs of the clip embeddings."""
    e = F.normalize(torch.from_numpy(embed_clips(enc, audio, 0.5, progress=False)), dim=1)
    sim = e @ e.T
    y = torch.from_numpy(labels)
    off = ~torch.eye(len(y), dtype=torch.bool)
    same = (y[:, None] == y[None, :]) & off
    return sim[same].mean().item(), sim[~same & off].mean().item()


def test_pairtune_learns_and_discards_the_projection(backbone, problem) -> None:
    tr, ytr, va, yva = problem
    original = backbone.module.state_dict()
    same0, other0 = cosine_gap(backbone.module, tr, ytr)
    res = tune_encoder(backbone.fresh(), tr, ytr, va, yva, len(FREQS), config("pairtune", 5),
                       seed=0, progress=False)
    losses = [h["train_loss"] for h in res.history]
    assert len(losses) == 5 and [h["epoch"] for h in res.history] == [1, 2, 3, 4, 5]
    assert np.mean(losses[-2:]) < 0.7 * losses[0]
    # positives pulled together relative to negatives: the same-class cosine rises above the
    # different-class cosine by a clearly larger margin than at random initialisation
    same1, other1 = cosine_gap(res.encoder, tr, ytr)
    assert same1 - other1 > (same0 - other0) + 0.08
    assert res.best_val_accuracy >= 0.75
    assert res.history[res.best_epoch - 1]["val_accuracy"] == res.best_val_accuracy
    # f_p discarded: exactly the original encoder's parameters, with new values
    tuned = res.encoder.state_dict()
    assert res.head is None and res.head_parameters == backbone.embedding_dim * 16 + 16
    assert list(tuned) == list(original)
    assert all(tuned[k].shape == original[k].shape for k in original)
    assert sum(p.numel() for p in res.encoder.parameters()) == backbone.num_parameters()
    assert any(not torch.equal(tuned[k], original[k]) for k in original)
    # the pretrained backbone itself was never trained in place
    assert all(torch.equal(backbone.module.state_dict()[k], original[k]) for k in original)


def test_finetune_updates_every_parameter(backbone, problem) -> None:
    tr, ytr, va, yva = problem
    enc = backbone.fresh()
    before = {n: p.detach().clone() for n, p in enc.named_parameters()}
    assert all(p.requires_grad for p in enc.parameters())
    res = tune_encoder(enc, tr, ytr, va, yva, len(FREQS), config("finetune", 1), seed=0, progress=False)
    unchanged = [n for n, p in res.encoder.named_parameters() if torch.equal(p.detach(), before[n])]
    assert unchanged == []
    assert isinstance(res.head, torch.nn.Linear) and res.head.out_features == len(FREQS)
    assert res.head_parameters == backbone.embedding_dim * len(FREQS) + len(FREQS)
    assert 0.0 <= res.history[0]["val_accuracy"] <= 1.0


def test_same_seed_same_run_and_resume(backbone, problem, tmp_path: Path) -> None:
    tr, ytr, va, yva = problem
    cfg = config("pairtune", 2, select_best=False)
    a = tune_encoder(backbone.fresh(), tr, ytr, va, yva, 4, cfg, seed=3, progress=False)
    # interrupted after epoch 1, then resumed from the checkpoint: the same result
    ckpt = tmp_path / "run.pt"
    tune_encoder(backbone.fresh(), tr, ytr, va, yva, 4, config("pairtune", 1, select_best=False),
                 seed=3, progress=False, checkpoint=ckpt)
    assert ckpt.is_file()
    b = tune_encoder(backbone.fresh(), tr, ytr, va, yva, 4, cfg, seed=3, progress=False, checkpoint=ckpt)
    assert [h["train_loss"] for h in a.history] == pytest.approx([h["train_loss"] for h in b.history])
    sa, sb = a.encoder.state_dict(), b.encoder.state_dict()
    assert all(torch.allclose(sa[k].float(), sb[k].float(), atol=1e-6) for k in sa)
    with pytest.raises(TympanError, match="another run"):
        tune_encoder(backbone.fresh(), tr, ytr, va, yva, 4, config("finetune", 2), seed=3,
                     progress=False, checkpoint=ckpt)


def test_helpers_and_checks() -> None:
    assert resolve_m_per_class(32, 50) == 4
    assert resolve_m_per_class(32, 5) == 8  # 4 classes of 8
    assert resolve_m_per_class(12, 2) == 6
    assert resolve_m_per_class(6, 3) == 3  # two classes of 3, never one class of 6
    assert resolve_m_per_class(8, 2) == 4
    with pytest.raises(ConfigError, match="batch_size=7"):
        resolve_m_per_class(7, 10)
    assert resolve_m_per_class(32, 50, 2) == 2
    with pytest.raises(ConfigError, match="m_per_class"):
        resolve_m_per_class(32, 50, 1)
    with pytest.raises(ConfigError, match="method"):
        TuneConfig(method="nope").check()
    with pytest.raises(ConfigError, match="lr"):
        TuneConfig(lr=0).check()
    z = ProjectionHead(8, 4)(torch.randn(5, 8))
    assert z.shape == (5, 4) and torch.allclose(z.norm(dim=1), torch.ones(5))
    audio = [np.arange(10, dtype=np.float32), np.arange(3, dtype=np.float32)]
    crops = crop_batch(audio, np.array([0, 1, 0]), 4, np.random.default_rng(0))
    assert crops.shape == (3, 4)
    assert torch.equal(crops[1], torch.tensor([0.0, 1.0, 2.0, 0.0]))  # short clip tiled
    assert all(torch.equal(c, c[0] + torch.arange(4.0)) for c in crops[[0, 2]])  # contiguous crops
