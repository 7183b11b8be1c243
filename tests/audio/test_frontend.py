"""Batched log-mel front end."""

from __future__ import annotations

import math

import librosa
import numpy as np
import torch

from tympan.audio.frontend import LogMel
from tympan.config import FrontendConfig


def test_shape_normalisation_and_gain_invariance() -> None:
    fe = LogMel(FrontendConfig(), 16000)
    x = torch.randn(4, 16000)
    y = fe(x)
    assert y.shape == (4, 1, 128, 1 + 16000 // 512)
    assert torch.allclose(y.mean(dim=(1, 2, 3)), torch.zeros(4), atol=1e-4)
    assert torch.allclose(y.std(dim=(1, 2, 3)), torch.ones(4), atol=1e-3)
    assert torch.allclose(fe(3.0 * x), y, atol=1e-3)
    assert torch.allclose(fe(x[1:2]), y[1:2], atol=1e-5)  # batched == per clip


def test_tone_lands_in_its_mel_band() -> None:
    fe = LogMel(FrontendConfig(normalize=False), 16000)
    t = torch.arange(16000) / 16000
    y = fe(torch.sin(2 * math.pi * 1000 * t)[None])[0, 0].mean(1)
    freqs = librosa.mel_frequencies(n_mels=128 + 2, fmin=0, fmax=8000)[1:-1]
    assert abs(freqs[int(y.argmax())] - 1000) < 60


def test_three_channels_are_logmel_and_deltas() -> None:
    fe = LogMel(FrontendConfig(channels=3), 16000)
    y = fe(torch.randn(2, 16000))
    assert y.shape == (2, 3, 128, 32)
    ref = librosa.feature.delta(y[0, 0].numpy(), width=5, axis=-1)
    assert np.allclose(y[0, 1].numpy()[:, 2:-2], ref[:, 2:-2], atol=1e-4)
