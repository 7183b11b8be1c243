"""Batched log-mel front end: shape, per-clip normalisation, deltas, mel placement, batching."""

from __future__ import annotations

import math

import librosa
import numpy as np
import pytest
import torch

from tympan.audio.frontend import LogMel, _delta
from tympan.config import FrontendConfig

SR = 16000
SMALL = {"n_mels": 40, "n_fft": 512, "hop_length": 128}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _noise(b: int, t: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, t, generator=_gen(seed))


def _tone(freq: float, t: int = SR) -> torch.Tensor:
    return torch.sin(2 * math.pi * freq * torch.arange(t) / SR)


@pytest.mark.parametrize("num_samples", [SR, 8000, 1234, 511])
def test_output_shape(num_samples: int) -> None:
    fe = LogMel(FrontendConfig(**SMALL), SR)
    y = fe(_noise(3, num_samples))
    assert y.shape == (3, 1, 40, 1 + num_samples // 128)
    assert fe.num_frames(num_samples) == y.shape[-1]
    assert fe.out_channels == 1 and y.dtype == torch.float32
    assert torch.isfinite(y).all()


def test_default_config_shape() -> None:
    fe = LogMel(FrontendConfig(), SR)
    y = fe(_noise(2, SR))
    assert y.shape == (2, 1, 128, 1 + SR // 512)


def test_three_channel_shape() -> None:
    fe = LogMel(FrontendConfig(channels=3, **SMALL), SR)
    y = fe(_noise(2, 4000))
    assert y.shape == (2, 3, 40, 1 + 4000 // 128)
    assert fe.out_channels == 3


def test_per_clip_z_normalisation() -> None:
    fe = LogMel(FrontendConfig(**SMALL), SR)
    # clips of very different level and content in one batch
    x = torch.stack([0.001 * _noise(1, 8000, 1)[0], 5.0 * _noise(1, 8000, 2)[0], _tone(440, 8000)])
    y = fe(x)
    assert torch.allclose(y.mean(dim=(1, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(y.std(dim=(1, 2, 3)), torch.ones(3), atol=1e-3)
    # without normalisation the levels differ: the normalisation is what removed them
    raw = LogMel(FrontendConfig(normalize=False, **SMALL), SR)(x)
    means = raw.mean(dim=(1, 2, 3))
    assert means[1] - means[0] > 10.0


def test_gain_invariance_when_normalised() -> None:
    fe = LogMel(FrontendConfig(**SMALL), SR)
    x = _noise(4, 8000, 3)
    gains = torch.tensor([0.1, 0.5, 3.0, 20.0]).unsqueeze(1)
    assert torch.allclose(fe(gains * x), fe(x), atol=1e-3)
    # ... and not without it: log(g^2 P) = log P + 2 log g
    raw = LogMel(FrontendConfig(normalize=False, **SMALL), SR)
    diff = raw(3.0 * x) - raw(x)
    assert torch.allclose(diff, torch.full_like(diff, 2 * math.log(3.0)), atol=1e-3)


def test_log_mel_matches_a_numpy_reference() -> None:
    """Un-normalised channel 0 is log(mel power + 1e-6): librosa's filterbank applied to the power
    of a centred (zero-padded) periodic-Hann STFT, here recomputed frame by frame in numpy."""
    n_fft, hop = 512, 128
    fe = LogMel(FrontendConfig(normalize=False, **SMALL), SR)
    x = _noise(1, 4000, 4)
    padded = np.pad(x[0].numpy().astype(np.float64), n_fft // 2)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    frames = [padded[i * hop : i * hop + n_fft] * window for i in range(1 + 4000 // hop)]
    power = np.abs(np.fft.rfft(np.stack(frames), axis=1)).T ** 2  # [F, frames]
    fb = librosa.filters.mel(sr=SR, n_fft=n_fft, n_mels=40, fmin=0.0, fmax=None)
    ref = np.log(fb @ power + 1e-6)
    got = fe(x)[0, 0].numpy()
    assert got.shape == ref.shape
    assert np.allclose(got, ref, atol=1e-3)


def test_delta_of_a_linear_ramp_is_its_slope() -> None:
    t = torch.arange(20, dtype=torch.float32)
    x = torch.stack([2.0 * t, -0.5 * t + 3.0, torch.full_like(t, 7.0)]).unsqueeze(0)  # [1, 3, 20]
    d = _delta(x)
    assert d.shape == x.shape
    assert torch.allclose(d[0, :, 2:-2], torch.tensor([2.0, -0.5, 0.0]).unsqueeze(1).expand(3, 16), atol=1e-5)
    ref = librosa.feature.delta(x[0].numpy(), width=5, axis=-1)  # default mode='interp'
    assert np.allclose(d[0, :, 2:-2].numpy(), ref[:, 2:-2], atol=1e-5)
    # the delta of a quadratic is a ramp, its delta-delta the constant second derivative
    q = (t.square() / 2).view(1, 1, -1)
    assert torch.allclose(_delta(q)[0, 0, 2:-2], t[2:-2], atol=1e-4)
    assert torch.allclose(_delta(_delta(q))[0, 0, 4:-4], torch.ones(12), atol=1e-4)


def test_three_channels_are_logmel_delta_and_delta_delta() -> None:
    x = _noise(2, 8000, 5)
    one = LogMel(FrontendConfig(channels=1, **SMALL), SR)(x)
    three = LogMel(FrontendConfig(channels=3, **SMALL), SR)(x)
    assert torch.equal(three[:, 0], one[:, 0])  # channel 0 is the (normalised) log-mel
    for b in range(2):
        m = three[b, 0].numpy()
        d1 = librosa.feature.delta(m, width=5, axis=-1)
        assert np.allclose(three[b, 1].numpy()[:, 2:-2], d1[:, 2:-2], atol=1e-4)
        # edges are replicate-padded, i.e. librosa's mode='nearest'
        d1n = librosa.feature.delta(m, width=5, axis=-1, mode="nearest")
        assert np.allclose(three[b, 1].numpy(), d1n, atol=1e-4)
        d2 = librosa.feature.delta(d1n, width=5, axis=-1, mode="nearest")
        assert np.allclose(three[b, 2].numpy(), d2, atol=1e-4)


@pytest.mark.parametrize("freq", [250.0, 1000.0, 3000.0])
def test_tone_energy_peaks_in_the_mel_band_containing_it(freq: float) -> None:
    fe = LogMel(FrontendConfig(normalize=False), SR)
    spectrum = fe(_tone(freq)[None])[0, 0].mean(dim=1)  # [n_mels], averaged over frames
    band = int(spectrum.argmax())
    # triangle m spans mel points m .. m+2 of n_mels + 2 points between f_min and f_max
    edges = librosa.mel_frequencies(n_mels=128 + 2, fmin=0.0, fmax=SR / 2)
    assert edges[band] < freq < edges[band + 2], (band, edges[band], edges[band + 2])
    # the peak band is among those whose filter weighs the tone's FFT bin most
    k = int(round(freq * 1024 / SR))
    weights = fe.mel_fb[:, k]
    assert weights[band] >= 0.5 * weights.max()
    # far away bands see (almost) nothing: at least 40 dB (in power, natural log: 9.2) below
    far = torch.cat([spectrum[: max(band - 20, 0)], spectrum[band + 20 :]])
    assert spectrum[band] - far.max() > 9.2


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("normalize", [True, False])
def test_batched_equals_per_clip(channels: int, normalize: bool) -> None:
    fe = LogMel(FrontendConfig(channels=channels, normalize=normalize, **SMALL), SR)
    x = torch.cat([_noise(2, 6000, 6), _tone(700, 6000)[None], 0.01 * _tone(2500, 6000)[None]])
    batched = fe(x)
    for i in range(x.shape[0]):
        assert torch.allclose(batched[i], fe(x[i : i + 1])[0], atol=1e-5), i


def test_rejects_non_batched_input() -> None:
    fe = LogMel(FrontendConfig(**SMALL), SR)
    with pytest.raises(ValueError):
        fe(torch.randn(4000))
    with pytest.raises(ValueError):
        fe(torch.randn(1, 1, 4000))


def test_buffers_are_not_weights() -> None:
    fe = LogMel(FrontendConfig(**SMALL), SR)
    assert list(fe.parameters()) == []
    assert fe.state_dict() == {}
    assert fe.mel_fb.shape == (40, 512 // 2 + 1)
