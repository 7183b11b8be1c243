"""CLAR ops checked by their measured effect, batched == clip by clip, and parameter errors."""

from __future__ import annotations

import math

import pytest
import torch

from tympan.augment.ops import (
    FADE_SHAPES,
    OPS,
    Fade,
    TimeMask,
    TimeShift,
    WhiteNoise,
    build_op,
    fade,
    time_mask,
    time_shift,
    white_noise,
)
from tympan.errors import ConfigError

CPU = torch.device("cpu")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _clips(b: int = 6, t: int = 4000, seed: int = 0) -> torch.Tensor:
    """Tones of different frequencies and gains plus a little noise: no two clips alike."""
    g = _gen(seed)
    n = torch.arange(t) / 16000
    f = torch.linspace(150, 3000, b).unsqueeze(1)
    gain = torch.linspace(0.05, 1.0, b).unsqueeze(1)
    return gain * torch.sin(2 * math.pi * f * n) + 0.01 * torch.randn(b, t, generator=g)


def _snr_db(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Realised SNR per clip from the added component ``y - x``."""
    added = y - x
    return 10 * torch.log10(x.square().mean(1) / added.square().mean(1))


# ---------------------------------------------------------------------------------------------
# white noise


def test_white_noise_realised_snr_matches_each_clips_target() -> None:
    x = _clips(b=3)
    noise = torch.randn(3, x.shape[1], generator=_gen(1))
    target = torch.tensor([3.0, 10.0, 30.0])
    y = white_noise(x, noise, target)
    measured = _snr_db(x, y)
    assert torch.all((measured - target).abs() < 0.5), (measured, target)
    # the three clips really got different amounts of noise (not one SNR for the batch)
    assert measured[0] < measured[1] < measured[2]


def test_white_noise_sampled_snr_in_range_and_realised() -> None:
    x = _clips(b=64, t=2000)
    op = WhiteNoise()
    params = op.sample(64, 2000, _gen(2), CPU)
    snr = params["snr_db"]
    assert snr.shape == (64,)
    assert snr.min() >= 3.0 and snr.max() <= 30.0
    assert snr.max() - snr.min() > 15.0  # drawn across the range, not a constant
    y = op.apply(x, params)
    assert torch.all((_snr_db(x, y) - snr).abs() < 0.5)
    # what was added is the drawn noise, rescaled by a positive per-clip factor
    scale = ((y - x) * params["noise"]).sum(1) / params["noise"].square().sum(1)
    assert torch.all(scale > 0)
    assert torch.allclose(y - x, scale.unsqueeze(1) * params["noise"], atol=1e-5)


def test_white_noise_custom_range_is_respected() -> None:
    op = WhiteNoise(snr_db=[10, 12])
    x = _clips(b=32, t=1000)
    params = op.sample(32, 1000, _gen(3), CPU)
    assert params["snr_db"].min() >= 10 and params["snr_db"].max() <= 12
    assert torch.all((_snr_db(x, op.apply(x, params)) - params["snr_db"]).abs() < 0.5)


# ---------------------------------------------------------------------------------------------
# time shift


def test_time_shift_equals_torch_roll_per_clip() -> None:
    x = torch.randn(6, 100, generator=_gen(4))
    shifts = torch.tensor([0, 7, -13, 99, 100, 257])  # 100 == T is identity, 257 wraps to 57
    y = time_shift(x, shifts)
    for i, s in enumerate(shifts.tolist()):
        assert torch.equal(y[i], torch.roll(x[i], s)), s
        # a roll permutes samples: the multiset of values is unchanged
        assert torch.equal(y[i].sort().values, x[i].sort().values)
    assert torch.equal(y[0], x[0])
    assert torch.equal(y[4], x[4])
    assert torch.equal(y[5], torch.roll(x[5], 57))
    # positive = later: the first sample moves to index s
    assert y[1, 7] == x[1, 0]
    assert y[2, 100 - 13] == x[2, 0]


def test_time_shift_sampled_shifts_are_bounded_rolls() -> None:
    op = TimeShift()
    x = torch.randn(500, 200, generator=_gen(5))
    params = op.sample(500, 200, _gen(6), CPU)
    shift = params["shift"]
    assert shift.dtype == torch.long
    assert shift.abs().max() <= 100  # max_ratio 0.5 of T
    assert shift.min() < -60 and shift.max() > 60 and (shift < 0).any() and (shift > 0).any()
    y = op.apply(x, params)
    for i in range(0, 500, 25):
        assert torch.equal(y[i], torch.roll(x[i], int(shift[i])))
    small = TimeShift(max_ratio=0.1).sample(500, 200, _gen(6), CPU)["shift"]
    assert small.abs().max() <= 20


# ---------------------------------------------------------------------------------------------
# time mask


def test_time_mask_zeros_exactly_the_span() -> None:
    t = 60
    x = torch.rand(5, t, generator=_gen(7)) + 1.0  # no natural zeros
    start = torch.tensor([0, 10, 52, 30, 59])
    length = torch.tensor([5, 0, 8, 12, 1])
    y = time_mask(x, start, length)
    for i in range(5):
        s, n = int(start[i]), int(length[i])
        zeros = (y[i] == 0).nonzero().flatten().tolist()
        assert zeros == list(range(s, s + n))
        keep = torch.ones(t, dtype=torch.bool)
        keep[s : s + n] = False
        assert torch.equal(y[i][keep], x[i][keep])
    assert torch.equal(y[1], x[1])  # length 0: untouched


def test_time_mask_sampled_spans_are_bounded_and_applied() -> None:
    t = 800
    op = TimeMask()
    params = op.sample(2000, t, _gen(8), CPU)
    start, length = params["start"], params["length"]
    assert torch.all(length >= 0) and torch.all(length <= 0.125 * t)
    assert torch.all(start >= 0) and torch.all(start + length <= t)
    assert length.max() > 0.1 * t  # the range is used
    assert start.min() < 0.05 * t and (start + length).max() > 0.95 * t  # anywhere in the clip
    x = torch.rand(50, t, generator=_gen(9)) + 1.0
    sub = {k: v[:50] for k, v in params.items()}
    y = op.apply(x, sub)
    assert torch.equal((y == 0).sum(1), sub["length"])


# ---------------------------------------------------------------------------------------------
# fade


def _gain(t: int, fin: int, fout: int, shape: int) -> torch.Tensor:
    return fade(torch.ones(1, t), torch.tensor([fin]), torch.tensor([fout]), torch.tensor([shape]))[0]


@pytest.mark.parametrize("shape", range(len(FADE_SHAPES)), ids=list(FADE_SHAPES))
def test_fade_gain_curve(shape: int) -> None:
    t, fin, fout = 1000, 200, 300
    g = _gain(t, fin, fout, shape)
    assert g[0].item() == pytest.approx(0.0, abs=1e-6)  # silent first sample
    assert g[-1].item() == pytest.approx(0.0, abs=1e-6)  # silent last sample
    assert torch.all(g[fin : t - fout] == 1.0)  # untouched middle
    assert torch.all((g >= 0) & (g <= 1))
    assert torch.all(g[1:fin] >= g[: fin - 1])  # non-decreasing over the fade-in
    assert torch.all(g[t - fout :] <= g[t - fout - 1 : -1])  # non-increasing over the fade-out
    assert torch.all(g[1:fin] > 0) and torch.all(g[1:fin] < 1)
    # a real signal is multiplied by that same gain
    x = torch.randn(1, t, generator=_gen(10))
    y = fade(x, torch.tensor([fin]), torch.tensor([fout]), torch.tensor([shape]))
    assert torch.allclose(y[0], x[0] * g)


def test_fade_linear_gain_is_i_over_length() -> None:
    t, fin, fout = 500, 100, 50
    g = _gain(t, fin, fout, FADE_SHAPES.index("linear"))
    i = torch.arange(fin, dtype=torch.float32)
    assert torch.allclose(g[:fin], i / fin, atol=1e-6)
    # fade-out mirrors it: the last sample is 0, the one fout samples from the end is 1
    j = torch.arange(fout, dtype=torch.float32)
    assert torch.allclose(g[t - fout :].flip(0), j / fout, atol=1e-6)


def test_fade_zero_lengths_leave_the_clip_alone() -> None:
    x = torch.randn(3, 300, generator=_gen(11))
    y = fade(x, torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long), torch.tensor([0, 1, 2]))
    assert torch.equal(y, x)


def test_fade_shapes_differ_log_above_linear_above_exp() -> None:
    t, fin = 1000, 400
    x = torch.ones(3, t)
    shapes = torch.tensor([FADE_SHAPES.index(s) for s in ("linear", "log", "exp")])
    y = fade(x, torch.full((3,), fin), torch.zeros(3, dtype=torch.long), shapes)
    lin, log, exp = y[:, fin // 2]
    assert log > lin + 0.1 and lin > exp + 0.1
    # over the whole fade-in (ends excluded) the ordering holds
    assert torch.all(y[1, 1:fin] > y[0, 1:fin]) and torch.all(y[0, 1:fin] > y[2, 1:fin])


def test_fade_sampled_lengths_and_shapes() -> None:
    t = 1000
    params = Fade().sample(3000, t, _gen(12), CPU)
    fin, fout, shape = params["fade_in"], params["fade_out"], params["shape"]
    assert torch.all(fin >= 0) and torch.all(fin <= 0.5 * t)
    assert torch.all(fout >= 0) and torch.all(fout <= 0.5 * t)
    assert fin.max() > 0.45 * t and fout.max() > 0.45 * t
    counts = torch.bincount(shape, minlength=3).float() / 3000
    assert torch.all((counts - 1 / 3).abs() < 0.05)  # the three shapes about equally often
    only_log = Fade(shapes=["log"], max_in=0.1, max_out=0.2).sample(200, t, _gen(13), CPU)
    assert torch.all(only_log["shape"] == FADE_SHAPES.index("log"))
    assert only_log["fade_in"].max() <= 100 and only_log["fade_out"].max() <= 200


# ---------------------------------------------------------------------------------------------
# batched == clip by clip, for every op


@pytest.mark.parametrize("name", sorted(OPS))
def test_batched_op_equals_clip_by_clip(name: str) -> None:
    op = build_op(name)
    b, t = 8, 3000
    x = _clips(b=b, t=t, seed=14)
    params = op.sample(b, t, _gen(15), CPU)
    for v in params.values():
        assert v.shape[0] == b
    batched = op.apply(x, params)
    assert batched.shape == x.shape and batched.dtype == x.dtype
    for i in range(b):
        one = op.apply(x[i : i + 1], {k: v[i : i + 1] for k, v in params.items()})
        assert torch.allclose(batched[i], one[0], rtol=1e-6, atol=1e-6), (name, i)
    assert not torch.equal(batched, x)  # the op did something


# ---------------------------------------------------------------------------------------------
# parameter errors


@pytest.mark.parametrize(
    ("cls", "kwargs", "field"),
    [
        (WhiteNoise, {"snr": [3, 30]}, "white_noise.snr"),
        (TimeShift, {"max_shift": 0.2}, "time_shift.max_shift"),
        (TimeMask, {"ratio": 0.1}, "time_mask.ratio"),
        (Fade, {"shape": ["log"]}, "fade.shape"),
    ],
)
def test_unknown_parameter_key_names_the_field(cls, kwargs, field) -> None:
    with pytest.raises(ConfigError, match=rf"augment\.params\.{field}\b"):
        cls(**kwargs)
    # and through the recipe entry point
    with pytest.raises(ConfigError, match=rf"augment\.params\.{field}\b"):
        build_op(cls.name, kwargs)


@pytest.mark.parametrize(
    ("cls", "kwargs", "field"),
    [
        (WhiteNoise, {"snr_db": [30, 3]}, "white_noise.snr_db"),  # min > max
        (WhiteNoise, {"snr_db": [3, 500]}, "white_noise.snr_db"),
        (TimeShift, {"max_ratio": -0.1}, "time_shift.max_ratio"),
        (TimeShift, {"max_ratio": 1.5}, "time_shift.max_ratio"),
        (TimeMask, {"max_ratio": 1.5}, "time_mask.max_ratio"),
        (Fade, {"max_in": 2.0}, "fade.max_in"),
        (Fade, {"max_out": -0.5}, "fade.max_out"),
        (Fade, {"shapes": ["cosine"]}, "fade.shapes"),
        (Fade, {"shapes": []}, "fade.shapes"),
    ],
)
def test_out_of_range_parameter_names_the_field(cls, kwargs, field) -> None:
    with pytest.raises(ConfigError, match=rf"augment\.params\.{field}\b"):
        cls(**kwargs)


@pytest.mark.parametrize(
    ("cls", "kwargs", "field"),
    [
        (WhiteNoise, {"snr_db": 10}, "white_noise.snr_db"),  # a scalar where [min, max] is due
        (WhiteNoise, {"snr_db": [3]}, "white_noise.snr_db"),
        (WhiteNoise, {"snr_db": [3, 10, 30]}, "white_noise.snr_db"),
        (TimeMask, {"max_ratio": "0.1"}, "time_mask.max_ratio"),
        (Fade, {"shapes": "log"}, "fade.shapes"),
    ],
)
def test_malformed_parameter_is_a_config_error(cls, kwargs, field) -> None:
    """A malformed recipe value is a user error: ConfigError naming the field, not a TypeError."""
    with pytest.raises(ConfigError, match=rf"augment\.params\.{field}\b"):
        cls(**kwargs)


def test_unknown_op_name_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"augment\.ops"):
        build_op("reverb")
