"""The three CLAR ops MT-SLVR adds (pitch shift, time stretch, mixed noise), checked by their
measured effect, batched == clip by clip, parameter sampling and errors, and the 7-op pipeline."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.signal import welch

from tympan.augment.ops import (
    OPS,
    MixedNoise,
    PitchShift,
    TimeStretch,
    build_op,
    mixed_noise,
    pitch_shift,
    time_stretch,
)
from tympan.augment.pipeline import ViewPipeline
from tympan.config import AugmentConfig
from tympan.errors import ConfigError

SR = 16000
CPU = torch.device("cpu")
MTSLVR_OPS = ["pitch_shift", "fade", "white_noise", "mixed_noise", "time_mask", "time_shift", "time_stretch"]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _tone(freq: float, t: int, b: int = 1, amp: float = 0.5) -> torch.Tensor:
    n = torch.arange(t, dtype=torch.float64) / SR
    return (amp * torch.sin(2 * math.pi * freq * n)).float().expand(b, t).contiguous()


def _dominant_hz(y: torch.Tensor) -> torch.Tensor:
    """Peak of each clip's Hann-windowed spectrum, zero-padded 8x (resolution SR / 8T)."""
    t = y.shape[1]
    spec = torch.fft.rfft(y.double() * torch.hann_window(t, dtype=torch.float64), n=8 * t).abs()
    return spec.argmax(dim=1).double() * SR / (8 * t)


def _clips(b: int, t: int, seed: int) -> torch.Tensor:
    """Different tones plus a little noise per clip."""
    n = torch.arange(t) / SR
    f = torch.linspace(180.0, 2500.0, b).unsqueeze(1)
    gain = torch.linspace(0.1, 0.8, b).unsqueeze(1)
    return gain * torch.sin(2 * math.pi * f * n) + 0.02 * torch.randn(b, t, generator=_gen(seed))


# ---------------------------------------------------------------------------------------------
# pitch shift


def test_pitch_shift_moves_the_dominant_frequency_by_two_to_the_n_over_12() -> None:
    semitones = torch.tensor([12.0, -12.0, 7.0, -5.0, 3.0, 15.0, -15.0])
    x = _tone(440.0, SR, b=len(semitones))
    y = pitch_shift(x, semitones)
    assert y.shape == x.shape and y.dtype == x.dtype and torch.isfinite(y).all()
    expected = 440.0 * torch.exp2(semitones.double() / 12)
    measured = _dominant_hz(y)
    assert torch.all((measured / expected - 1).abs() < 0.02), (measured, expected)
    # +12 doubles, -12 halves
    assert measured[0] == pytest.approx(880.0, rel=0.02)
    assert measured[1] == pytest.approx(220.0, rel=0.02)


def test_empty_batches_pass_through() -> None:
    empty = torch.zeros(0, 800)
    assert pitch_shift(empty, torch.zeros(0)).shape == (0, 800)
    assert time_stretch(empty, torch.ones(0)).shape == (0, 800)


def test_pitch_shift_up_does_not_alias() -> None:
    # a 7 kHz tone an octave up lies above Nyquist (8 kHz): it must vanish, not fold to 2 kHz
    x = _tone(7000.0, SR, b=1)
    y = pitch_shift(x, torch.tensor([12.0]))
    spec = torch.fft.rfft(y[0] * torch.hann_window(y.shape[1]))
    hz = torch.fft.rfftfreq(y.shape[1], 1.0 / SR)
    near_alias = spec.abs()[(hz > 1900) & (hz < 2100)].max()
    assert near_alias < 1e-3 * torch.fft.rfft(x[0] * torch.hann_window(x.shape[1])).abs().max()
    # while a 3 kHz tone an octave up is kept, at 6 kHz
    assert _dominant_hz(pitch_shift(_tone(3000.0, SR, b=1), torch.tensor([12.0])))[0] == \
        pytest.approx(6000.0, rel=0.02)


def test_pitch_shift_by_zero_keeps_the_clip_and_keeps_loudness_of_a_tone() -> None:
    x = _tone(440.0, 8000, b=3)
    same = pitch_shift(x, torch.zeros(3))
    assert torch.allclose(same, x, atol=1e-4)
    y = pitch_shift(x, torch.tensor([-7.0, 4.0, 9.0]))
    core = slice(1000, 7000)  # away from the edges
    ratio = y[:, core].std(dim=1) / x[:, core].std(dim=1)
    assert torch.all((ratio > 0.6) & (ratio < 1.4)), ratio


# ---------------------------------------------------------------------------------------------
# time stretch


def _click_train(t: int, interval: int, b: int) -> torch.Tensor:
    """Clicks every ``interval`` samples, each a 50 ms Hann-windowed noise burst: a phase vocoder
    (librosa's too) smears single-sample clicks over a window and can cancel some of them, which
    would measure the detector rather than the tempo."""
    length = SR // 20
    burst = torch.randn(length, generator=_gen(20)) * torch.hann_window(length, periodic=False)
    x = torch.zeros(b, t)
    for start in range(interval // 2, t - length, interval):
        x[:, start : start + length] = burst
    return x


def _click_times(y: torch.Tensor, min_gap: int) -> np.ndarray:
    """Click times of one clip: peaks of the energy envelope (20 ms Hann) above a tenth of the
    maximum, at least ``min_gap`` apart (greedy, strongest first)."""
    win = torch.hann_window(321, periodic=False, dtype=torch.float64)
    env = torch.nn.functional.conv1d(
        y.double().square().view(1, 1, -1), win.view(1, 1, -1), padding=160
    ).flatten().numpy()
    is_peak = (env[1:-1] > env[:-2]) & (env[1:-1] >= env[2:]) & (env[1:-1] > 0.1 * env.max())
    cand = np.flatnonzero(is_peak) + 1
    chosen: list[int] = []
    for i in cand[np.argsort(-env[cand])]:
        if all(abs(i - j) >= min_gap for j in chosen):
            chosen.append(int(i))
    return np.sort(np.array(chosen))


@pytest.mark.parametrize("rate", [0.5, 0.8, 1.25, 1.5])
def test_time_stretch_changes_the_tempo_of_a_click_train_by_the_rate(rate: float) -> None:
    t, interval = 2 * SR, 1600
    x = _click_train(t, interval, b=1)
    y = time_stretch(x, torch.tensor([rate]))
    assert y.shape == x.shape and torch.isfinite(y).all()
    expected = interval / rate
    clicks = _click_times(y[0], min_gap=int(0.6 * expected))
    # the clicks that fit: T samples of output cover T * rate samples of input
    assert len(clicks) >= int(min(t, t * rate) / interval) - 1
    measured = (clicks[-1] - clicks[0]) / (len(clicks) - 1)
    assert measured == pytest.approx(expected, rel=0.03)
    assert np.diff(clicks).min() > 0.6 * expected and np.diff(clicks).max() < 1.4 * expected


def test_time_stretch_crops_slowed_clips_and_zero_pads_sped_up_clips() -> None:
    t = 8000
    x = _tone(300.0, t, b=3)
    y = time_stretch(x, torch.tensor([0.5, 1.0, 1.5]))
    assert y.shape == (3, t)
    assert torch.allclose(y[1], x[1], atol=1e-5)  # rate 1 is the identity
    # slowed: the tone lasts the whole clip; sped up: silent after T / 1.5 samples
    assert y[0, -1000:].abs().max() > 0.2
    end = int(t / 1.5)
    assert y[2, end + 600 :].abs().max() < 1e-3 and y[2, : end - 600].abs().max() > 0.2
    assert _dominant_hz(y[:, :end]).sub(300.0).abs().max() < 6.0  # pitch kept


# ---------------------------------------------------------------------------------------------
# mixed noise


@pytest.mark.parametrize("f_decay", [-2.0, -1.0, 0.0, 1.0, 2.0])
def test_mixed_noise_has_power_law_spectrum_and_exact_snr(f_decay: float) -> None:
    t = 4 * SR
    x = _clips(2, t, seed=0)
    snr = torch.tensor([3.0, 25.0])
    noise = torch.randn(2, t, generator=_gen(1))
    y = mixed_noise(x, noise, torch.full((2,), f_decay), snr)
    added = (y - x).double()
    realised = 10 * torch.log10(x.double().square().mean(1) / added.square().mean(1))
    assert torch.all((realised - snr).abs() < 0.5), realised
    freqs, psd = welch(added.numpy(), fs=SR, nperseg=2048, axis=1)
    band = (freqs >= 50) & (freqs <= 6000)
    for b in range(2):
        slope = np.polyfit(np.log10(freqs[band]), np.log10(psd[b, band]), 1)[0]
        assert slope == pytest.approx(-f_decay, abs=0.2), (b, slope)


def test_mixed_noise_sampled_parameters_realise_their_snr() -> None:
    x = _clips(6, 8000, seed=2)
    op = MixedNoise()
    params = op.sample(6, 8000, _gen(3), CPU)
    y = op.apply(x, params)
    realised = 10 * torch.log10(x.square().mean(1) / (y - x).square().mean(1))
    assert torch.all((realised - params["snr_db"]).abs() < 0.5)


# ---------------------------------------------------------------------------------------------
# batched == clip by clip


FIXED_PARAMS = {
    "pitch_shift": {"semitones": torch.tensor([-15.0, -7.5, -1.0, 0.0, 2.5, 7.0, 12.0, 15.0])},
    "time_stretch": {"rate": torch.tensor([0.5, 0.61, 0.8, 0.97, 1.0, 1.2, 1.37, 1.5])},
    "mixed_noise": {
        "f_decay": torch.tensor([-2.0, -1.5, -0.5, 0.0, 0.3, 1.0, 1.7, 2.0]),
        "snr_db": torch.tensor([3.0, 5.0, 8.0, 12.0, 17.0, 21.0, 26.0, 30.0]),
        "noise": torch.randn(8, 12000, generator=_gen(4)),
    },
}


@pytest.mark.parametrize("name", sorted(FIXED_PARAMS))
def test_batched_equals_clip_by_clip_with_different_parameters(name: str) -> None:
    op = build_op(name)
    x = _clips(8, 12000, seed=5)
    params = FIXED_PARAMS[name]
    batched = op.apply(x, params)
    assert batched.shape == x.shape and batched.dtype == x.dtype
    for i in range(8):
        one = op.apply(x[i : i + 1], {k: v[i : i + 1] for k, v in params.items()})
        assert torch.allclose(batched[i], one[0], atol=1e-5), (name, i)
    # and with sampled parameters
    sampled = op.sample(8, 12000, _gen(6), CPU)
    batched = op.apply(x, sampled)
    for i in range(8):
        one = op.apply(x[i : i + 1], {k: v[i : i + 1] for k, v in sampled.items()})
        assert torch.allclose(batched[i], one[0], atol=1e-5), (name, i)


# ---------------------------------------------------------------------------------------------
# sampling, recipe overrides, errors


def test_default_ranges_are_the_seeds_and_sampled_parameters_lie_in_them() -> None:
    assert PitchShift.defaults == {"semitones": [-15.0, 15.0]}
    assert TimeStretch.defaults == {"rate": [0.5, 1.5]}
    assert MixedNoise.defaults == {"f_decay": [-2.0, 2.0], "snr_db": [3.0, 30.0]}
    assert {"pitch_shift", "time_stretch", "mixed_noise"} <= set(OPS)
    n = 4000
    semi = PitchShift().sample(n, 100, _gen(7), CPU)["semitones"]
    rate = TimeStretch().sample(n, 100, _gen(8), CPU)["rate"]
    mixed = MixedNoise().sample(n, 100, _gen(9), CPU)
    for v, lo, hi in (
        (semi, -15, 15),
        (rate, 0.5, 1.5),
        (mixed["f_decay"], -2, 2),
        (mixed["snr_db"], 3, 30),
    ):
        assert v.shape == (n,) and v.min() >= lo and v.max() <= hi
        assert v.min() < lo + 0.05 * (hi - lo) and v.max() > hi - 0.05 * (hi - lo)  # spans it
        assert v.mean().item() == pytest.approx((lo + hi) / 2, abs=0.03 * (hi - lo))  # uniform
    # the white noise is drawn as its spectrum: T // 2 + 1 complex Gaussian bins
    assert mixed["noise"].shape == (n, 51) and mixed["noise"].is_complex()


def test_sampling_is_deterministic_given_the_generator() -> None:
    for cls in (PitchShift, TimeStretch, MixedNoise):
        a, b = cls().sample(5, 300, _gen(10), CPU), cls().sample(5, 300, _gen(10), CPU)
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_recipe_overrides_reach_the_ops() -> None:
    cfg = AugmentConfig(
        ops=MTSLVR_OPS,
        params={
            "pitch_shift": {"semitones": [2, 3]},
            "time_stretch": {"rate": [1.1, 1.2]},
            "mixed_noise": {"f_decay": [1.5, 2.0], "snr_db": [10, 11]},
        },
    )
    ops = {op.name: op for op in ViewPipeline(cfg).ops}
    semi = ops["pitch_shift"].sample(500, 100, _gen(11), CPU)["semitones"]
    assert semi.min() >= 2 and semi.max() <= 3
    rate = ops["time_stretch"].sample(500, 100, _gen(12), CPU)["rate"]
    assert rate.min() >= 1.1 and rate.max() <= 1.2
    mixed = ops["mixed_noise"].sample(500, 100, _gen(13), CPU)
    assert mixed["f_decay"].min() >= 1.5 and mixed["snr_db"].max() <= 11
    # a fixed value works too: [v, v]
    assert torch.all(build_op("pitch_shift", {"semitones": [4, 4]}).sample(3, 10, _gen(0), CPU)["semitones"] == 4)


@pytest.mark.parametrize(
    ("name", "params", "field"),
    [
        ("pitch_shift", {"semitones": [15, -15]}, "pitch_shift.semitones"),  # min > max
        ("pitch_shift", {"semitones": [-100, 0]}, "pitch_shift.semitones"),
        ("pitch_shift", {"semitones": 12}, "pitch_shift.semitones"),  # scalar
        ("pitch_shift", {"steps": [-2, 2]}, "pitch_shift.steps"),  # unknown key
        ("time_stretch", {"rate": [0.0, 1.5]}, "time_stretch.rate"),  # a rate must be > 0
        ("time_stretch", {"rate": [1.5, 0.5]}, "time_stretch.rate"),
        ("time_stretch", {"rate": ["0.5", 1]}, "time_stretch.rate"),
        ("mixed_noise", {"f_decay": [-2, 9]}, "mixed_noise.f_decay"),
        ("mixed_noise", {"f_decay": [2]}, "mixed_noise.f_decay"),
        ("mixed_noise", {"snr_db": [30, 3]}, "mixed_noise.snr_db"),
        ("mixed_noise", {"colour": "pink"}, "mixed_noise.colour"),
    ],
)
def test_bad_recipe_values_are_config_errors_naming_the_field(name, params, field) -> None:
    with pytest.raises(ConfigError, match=rf"augment\.params\.{field}\b"):
        build_op(name, params)
    with pytest.raises(ConfigError, match=rf"augment\.params\.{field}\b"):
        ViewPipeline(AugmentConfig(ops=MTSLVR_OPS, params={name: params}))


# ---------------------------------------------------------------------------------------------
# the full MT-SLVR pipeline


def test_full_seven_op_pipeline_makes_finite_views_and_multi_hot_labels() -> None:
    pipe = ViewPipeline(AugmentConfig(ops=MTSLVR_OPS, min_ops=1))
    x = _clips(8, SR, seed=14)
    views = pipe(x, _gen(15))
    assert views.view1.shape == (8, SR) and views.view2.shape == (8, SR)
    assert views.view1.dtype == x.dtype
    assert torch.isfinite(views.view1).all() and torch.isfinite(views.view2).all()
    assert views.labels.shape == (8, 7) and views.op_names == tuple(MTSLVR_OPS)
    assert set(views.labels.unique().tolist()) <= {0.0, 1.0}
    counts = views.labels.sum(1)
    assert torch.all((counts >= 1) & (counts <= 7))
    for row, order in zip(views.labels, views.order):
        assert sorted(torch.nonzero(row).flatten().tolist()) == sorted(order[order >= 0].tolist())
    assert not torch.equal(views.view1, views.view2)
    again = pipe(x, _gen(15))  # deterministic given the generator
    assert torch.equal(again.view1, views.view1) and torch.equal(again.view2, views.view2)


def test_coloured_noise_from_a_spectrum_equals_coloured_white_noise() -> None:
    from tympan.augment.ops import coloured_noise

    noise = torch.randn(3, 1000, generator=_gen(21), dtype=torch.float64)
    d = torch.tensor([-1.5, 0.0, 2.0], dtype=torch.float64)
    direct = coloured_noise(noise, d)
    via_spectrum = coloured_noise(torch.fft.rfft(noise, dim=1), d, num_samples=1000)
    assert torch.allclose(direct, via_spectrum, atol=1e-10)


def test_pitch_shift_handles_batches_shifted_in_one_direction_only() -> None:
    from tympan.augment.ops import pitch_shift

    x = torch.randn(4, 8000, generator=_gen(22)) * 0.1
    for semis in ([3.0, 5.0, 7.0, 12.0], [-3.0, -5.0, -7.0, -12.0], [0.0, 0.0, 0.0, 0.0]):
        s = torch.tensor(semis)
        batched = pitch_shift(x, s)
        assert batched.shape == x.shape and torch.isfinite(batched).all()
        one_by_one = torch.cat([pitch_shift(x[i : i + 1], s[i : i + 1]) for i in range(4)])
        assert torch.allclose(batched, one_by_one, atol=1e-5)
