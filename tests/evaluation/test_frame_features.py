"""Frame-level representations (tympan.evaluation.features.embed_frames) and their statistics
pooling (frame_stats), the inputs of the speech downstream tasks of seed 004."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tympan.config import TaskConfig, load_recipe
from tympan.errors import TympanError
from tympan.evaluation.features import embed_clips, embed_frames, frame_stats, resolve_model
from tympan.evaluation.probes import run_probe
from tympan.models.encoder import Encoder

SR = 16000
SEG = 1.0  # seconds, for the log-mel baseline
# A small encoder: 32 mels with a 128-sample hop, so that its ResNet (time stride 32) turns a
# half-second segment into 2 frames.
E_SEG = 0.5
SMALL = {"model.width": 8, "frontend.n_mels": 32, "frontend.hop_length": 128}


def _encoder(**over: object) -> Encoder:
    recipe = load_recipe("demo", {**SMALL, **over})
    torch.manual_seed(0)
    return Encoder(recipe).eval()


def _multitask_encoder(adapter: str, split_head: bool) -> Encoder:
    recipe = load_recipe("demo", SMALL)
    recipe.tasks = [TaskConfig(name="contrastive"), TaskConfig(name="other")]
    recipe.model.adapter = adapter
    recipe.model.split_head = split_head
    torch.manual_seed(0)
    return Encoder(recipe).eval()


def _clips(*seconds: float, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(int(round(s * SR))).astype(np.float32) for s in seconds]


def test_mean_of_frames_is_the_clip_embedding_for_one_segment() -> None:
    # MeanPool: embedding = mean over (freq, time) of the feature map; frames = mean over freq,
    # so the mean over frames of a one-segment clip is exactly embed_clips' embedding.
    enc = _encoder()
    audio = _clips(E_SEG, E_SEG, seed=1)
    frames = embed_frames(enc, audio, E_SEG, progress=False)
    assert [f.shape for f in frames] == [(2, enc.embedding_dim)] * 2
    assert all(f.dtype == np.float32 for f in frames)
    np.testing.assert_allclose(
        frame_stats(frames), embed_clips(enc, audio, E_SEG, progress=False), rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize(("adapter", "split_head"), [("bn", False), ("none", True)])
def test_task_none_concatenates_every_task_like_forward(adapter: str, split_head: bool) -> None:
    enc = _multitask_encoder(adapter, split_head)
    audio = _clips(E_SEG, seed=2)
    both = embed_frames(enc, audio, E_SEG, progress=False)[0]
    assert both.shape[1] == enc.embedding_dim == 2 * enc.dim
    slices = enc.task_slices()
    for task in enc.tasks:
        own = embed_frames(enc, audio, E_SEG, task=task, progress=False)[0]
        assert own.shape == (both.shape[0], enc.dim)
        np.testing.assert_allclose(both[:, slice(*slices[task])], own, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(
            frame_stats([own]), embed_clips(enc, audio, E_SEG, task=task, progress=False),
            rtol=1e-4, atol=1e-5,
        )
    np.testing.assert_allclose(
        frame_stats([both]), embed_clips(enc, audio, E_SEG, progress=False), rtol=1e-4, atol=1e-5
    )
    with pytest.raises(TympanError, match="nope"):
        embed_frames(enc, audio, E_SEG, task="nope", progress=False)


def test_frame_counts_follow_the_clip_length() -> None:
    enc = _encoder()
    t_seg = embed_frames(enc, _clips(E_SEG), E_SEG, progress=False)[0].shape[0]  # frames / segment
    assert t_seg == 2
    # In segments: 0.5, a tiled short clip, keeps its own length (1 frame); 1.25: the 0.25
    # remainder is dropped (segment()); 1.6: an end-aligned extra segment contributes only the
    # frames past the overlap (ceil(0.6 * 2) = 2); 3: three segments.
    seconds = tuple(E_SEG * k for k in (0.5, 1.25, 1.6, 3.0, 1.0))
    frames = embed_frames(enc, _clips(*seconds, seed=3), E_SEG, batch_size=3, progress=False)
    assert [f.shape for f in frames] == [(1, 64), (2, 64), (4, 64), (6, 64), (2, 64)]
    # frames of the segments, in time order: the 3-segment clip is its pieces' frames
    six = _clips(*seconds, seed=3)[3]
    pieces = embed_frames(enc, [six[:8000], six[8000:16000], six[16000:]], E_SEG, progress=False)
    np.testing.assert_allclose(frames[3], np.concatenate(pieces), rtol=1e-4, atol=1e-5)
    # the last segment of the 1.6-segment clip is aligned to its end: its frames are the last ones
    clip = _clips(*seconds, seed=3)[2]
    tail = embed_frames(enc, [clip[-8000:]], E_SEG, progress=False)[0]
    np.testing.assert_allclose(frames[2][2:], tail, rtol=1e-4, atol=1e-5)
    assert embed_frames(enc, [], E_SEG, progress=False) == []


def test_frame_stats_mean_and_std() -> None:
    rng = np.random.default_rng(4)
    frames = [rng.standard_normal((t, 5)) for t in (1, 3, 7)]
    mean = frame_stats(frames)
    both = frame_stats(frames, "mean+std")
    assert mean.shape == (3, 5) and both.shape == (3, 10) and both.dtype == np.float32
    for k, f in enumerate(frames):
        np.testing.assert_allclose(mean[k], f.mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(both[k, :5], f.mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(both[k, 5:], f.std(0), rtol=1e-5, atol=1e-6)  # ddof=0
    assert np.all(both[0, 5:] == 0.0)  # one frame: no spread
    with pytest.raises(TympanError, match="mean\\+std"):
        frame_stats(frames, "max")
    with pytest.raises(TympanError, match="no clips"):
        frame_stats([])
    with pytest.raises(TympanError, match="same D"):
        frame_stats([np.zeros((2, 3)), np.zeros((2, 4))])
    with pytest.raises(TympanError, match="clip 1 has no frames"):
        frame_stats([np.zeros((2, 3)), np.zeros((0, 3))])


def test_logmel_frames_are_the_log_mel_frames() -> None:
    model = resolve_model("logmel", load_recipe("demo"))
    audio = _clips(1.0, 1.7, seed=5)
    frames = embed_frames(model, audio, SEG, progress=False)
    n_mels = model.recipe.frontend.n_mels
    per_segment = model.frontend.num_frames(SR)
    # 1.7 s: one segment and an end-aligned one whose last ceil(0.7 * 32) frames are kept
    assert [f.shape for f in frames] == [
        (per_segment, n_mels), (per_segment + int(np.ceil(0.7 * per_segment)), n_mels)
    ]
    clip_stats = embed_clips(model, audio[:1], SEG, progress=False)  # mean and std (ddof=1)
    np.testing.assert_allclose(frame_stats(frames[:1]), clip_stats[:, :n_mels], atol=1e-4)
    t = per_segment
    np.testing.assert_allclose(
        frame_stats(frames[:1], "mean+std")[:, n_mels:] * np.sqrt(t / (t - 1)),
        clip_stats[:, n_mels:], rtol=1e-3, atol=1e-4,
    )


def test_attention_pooling_frames_are_its_values() -> None:
    enc = _encoder(**{"model.pooling": "attention", "model.embed_dim": 24})
    frames = embed_frames(enc, _clips(E_SEG, 1.5 * E_SEG), E_SEG, progress=False)
    assert [f.shape for f in frames] == [(2, 24), (3, 24)]  # 1.5 segments: 2 + 1 past overlap
    # the embedding is an attention-weighted mean of exactly these frames
    x = torch.from_numpy(_clips(E_SEG)[0])[None]
    with torch.no_grad():
        w = enc.pool.weights(enc.full_feature_map(x, enc.tasks[0]))  # [1, T']
        emb = enc(x)
    values = torch.from_numpy(embed_frames(enc, [x[0].numpy()], E_SEG, progress=False)[0])
    torch.testing.assert_close((w[0, :, None] * values).sum(0), emb[0], rtol=1e-4, atol=1e-5)


def test_models_without_frames_are_refused() -> None:
    class Plain(nn.Module):
        sample_rate = SR
        tasks = ("x",)

        def forward(self, x: torch.Tensor, task: str | None = None) -> torch.Tensor:
            return x[:, :4]

    with pytest.raises(TympanError, match="no frame-level representation"):
        embed_frames(Plain(), _clips(1.0), SEG, progress=False)


def test_frame_statistics_feed_a_classification_probe() -> None:
    # Two classes of tones (low vs high) through log-mel frames and mean+std pooling: the
    # existing probe separates them.
    rng = np.random.default_rng(6)
    t = np.arange(SR) / SR
    freqs = np.where(np.arange(60) % 2 == 0, 300.0, 2500.0) * rng.uniform(0.9, 1.1, 60)
    audio = [(np.sin(2 * np.pi * f * t) + 0.3 * rng.standard_normal(SR)).astype(np.float32)
             for f in freqs]
    labels = (np.arange(60) % 2).astype(np.int64)
    model = resolve_model("logmel", load_recipe("demo"))
    x = frame_stats(embed_frames(model, audio, SEG, progress=False), "mean+std")
    assert x.shape == (60, 2 * model.recipe.frontend.n_mels)
    result = run_probe(
        (x[:40], labels[:40]), (x[40:50], labels[40:50]), (x[50:], labels[50:]),
        task="classification", max_epochs=5, steps_per_epoch=10, bootstrap_draws=5,
    )
    assert result.full_test["accuracy"] >= 0.9
