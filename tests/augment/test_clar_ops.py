"""Each CLAR op measured by its effect, and batched == clip by clip."""

from __future__ import annotations

import math

import pytest
import torch

from tympan.augment.ops import OPS, Fade, TimeMask, TimeShift, WhiteNoise, build_op, fade, time_mask, time_shift, white_noise
from tympan.errors import ConfigError


def _tones(b: int = 6, t: int = 8000) -> torch.Tensor:
    n = torch.arange(t) / 16000
    f = torch.linspace(200, 2000, b).unsqueeze(1)
    return 0.3 * torch.sin(2 * math.pi * f * n) * torch.linspace(0.2, 1.0, b).unsqueeze(1)


def test_white_noise_snr_within_half_db() -> None:
    x = _tones()
    g = torch.Generator().manual_seed(0)
    op = WhiteNoise()
    params = op.sample(x.shape[0], x.shape[1], g, x.device)
    assert params["snr_db"].min() >= 3 and params["snr_db"].max() <= 30
    for snr in (params["snr_db"], torch.tensor([3.0, 10.0, 30.0, 0.0, -5.0, 20.0])):
        y = white_noise(x, params["noise"], snr)
        noise = y - x
        measured = 10 * torch.log10(x.square().mean(1) / noise.square().mean(1))
        assert torch.all((measured - snr).abs() < 0.5), (measured, snr)


def test_time_shift_is_a_roll() -> None:
    x = torch.randn(5, 100)
    shifts = torch.tensor([0, 7, -13, 100, 257])
    y = time_shift(x, shifts)
    for i, s in enumerate(shifts.tolist()):
        assert torch.equal(y[i], torch.roll(x[i], s))
        assert torch.equal(y[i].sort().values, x[i].sort().values)
    p = TimeShift().sample(1000, 100, torch.Generator().manual_seed(0), x.device)["shift"]
    assert p.abs().max() <= 50 and p.min() < -30 and p.max() > 30


def test_time_mask_zeros_exactly_the_span() -> None:
    x = torch.randn(3, 50) + 5.0  # no natural zeros
    start, length = torch.tensor([0, 10, 45]), torch.tensor([5, 0, 5])
    y = time_mask(x, start, length)
    for i in range(3):
        zero = (y[i] == 0).nonzero().flatten().tolist()
        assert zero == list(range(start[i], start[i] + length[i]))
        keep = torch.ones(50, dtype=torch.bool)
        keep[start[i] : start[i] + length[i]] = False
        assert torch.equal(y[i][keep], x[i][keep])
    p = TimeMask().sample(2000, 800, torch.Generator().manual_seed(1), x.device)
    assert p["length"].max() <= 0.125 * 800 and torch.all(p["start"] + p["length"] <= 800)
    assert p["length"].float().mean() == pytest.approx(50, rel=0.1)  # uniform in [0, 100]


@pytest.mark.parametrize("shape", [0, 1, 2])
def test_fade_gain_curves(shape: int) -> None:
    t = 1000
    x = torch.ones(1, t)
    y = fade(x, torch.tensor([200]), torch.tensor([300]), torch.tensor([shape]))[0]
    assert y[0] == pytest.approx(0.0, abs=1e-6) and y[-1] == pytest.approx(0.0, abs=1e-6)
    assert torch.all(y[200:700] == 1.0)
    assert torch.all(y[1:200] >= y[:199]) and torch.all(y[701:] <= y[700:-1])
    if shape == 0:
        assert torch.allclose(y[:200], torch.arange(200) / 200.0)


def test_fade_shapes_differ_log_above_linear_above_exp() -> None:
    x = torch.ones(3, 1000)
    y = fade(x, torch.tensor([400] * 3), torch.tensor([0] * 3), torch.tensor([0, 1, 2]))
    lin, log, exp = y[:, 200]
    assert log > lin > exp
    p = Fade().sample(2000, 1000, torch.Generator().manual_seed(0), x.device)
    assert p["fade_in"].max() <= 500 and p["fade_out"].max() <= 500
    assert set(p["shape"].tolist()) == {0, 1, 2}


@pytest.mark.parametrize("name", sorted(OPS))
def test_batched_equals_clip_by_clip(name: str) -> None:
    op = build_op(name)
    x = _tones(8, 4000)
    params = op.sample(8, 4000, torch.Generator().manual_seed(3), x.device)
    batched = op.apply(x, params)
    for i in range(8):
        one = op.apply(x[i : i + 1], {k: v[i : i + 1] for k, v in params.items()})
        assert torch.allclose(batched[i], one[0], atol=1e-6), name


def test_bad_params_name_the_field() -> None:
    with pytest.raises(ConfigError, match=r"augment\.params\.white_noise\.snr"):
        WhiteNoise(snr=[1, 2])
    with pytest.raises(ConfigError, match=r"augment\.params\.white_noise\.snr_db"):
        WhiteNoise(snr_db=[30, 3])
    with pytest.raises(ConfigError, match=r"augment\.params\.time_mask\.max_ratio"):
        TimeMask(max_ratio=1.5)
    with pytest.raises(ConfigError, match=r"augment\.params\.fade\.shapes"):
        Fade(shapes=["cosine"])
    with pytest.raises(ConfigError, match="unknown augmentation"):
        build_op("reverb")
