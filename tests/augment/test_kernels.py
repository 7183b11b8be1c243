"""The CPU fast paths of the augmentations equal their reference formulations.

- the compiled phase-vocoder and resampling loops (:mod:`tympan.augment.kernels`) against the
  torch formulations that run on other devices (:func:`tympan.augment.ops._vocoder_frames`,
  :func:`tympan.augment.ops._read`);
- the two views made in two threads against the same passes made one after the other;
- the widened row copy against ``index_copy_``;
- the CPU Gaussian noise (SplitMix64 uniforms, Box–Muller) is standard normal and seeded.
"""

from __future__ import annotations

import pytest
import torch

from tympan.augment import ops
from tympan.augment.pipeline import ViewPipeline
from tympan.config import AugmentConfig

MTSLVR_OPS = ["pitch_shift", "fade", "white_noise", "mixed_noise", "time_mask", "time_shift",
              "time_stretch"]


def _torch_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ops, "_fused", lambda x: False)


@pytest.mark.parametrize("rate", [0.13, 0.5, 0.97, 1.0, 1.5, 2.7])
def test_compiled_vocoder_equals_the_torch_formulation(rate: float, monkeypatch) -> None:
    g = torch.Generator().manual_seed(0)
    x = 0.3 * torch.randn(5, 8000, generator=g)
    x[1] = 0.0  # silence: phase 0, not 0/0
    x[2, 4000:] = 0.0  # a clip that ends early
    rates = torch.tensor([rate, rate, rate, 1.0, 1.0 / rate])
    assert ops._fused(x)
    fused = ops.phase_vocoder(x, rates)
    _torch_path(monkeypatch)
    reference = ops.phase_vocoder(x, rates)
    assert torch.isfinite(fused).all()
    torch.testing.assert_close(fused, reference, atol=2e-5, rtol=1e-4)
    assert fused[1].abs().max() < 1e-6


@pytest.mark.parametrize("length", [3000, 8000, 19123])
def test_compiled_vocoder_with_length_and_cutoff_equals_the_torch_formulation(
    length: int, monkeypatch
) -> None:
    g = torch.Generator().manual_seed(2)
    x = 0.3 * torch.randn(4, 8000, generator=g)
    rates = torch.tensor([0.42, 0.8, 1.0, 1.9])
    cutoff = torch.tensor([0.42, 1.0, 0.5, 0.9])
    fused = ops.phase_vocoder(x, rates, length=length, cutoff=cutoff)
    assert fused.shape == (4, length)
    _torch_path(monkeypatch)
    reference = ops.phase_vocoder(x, rates, length=length, cutoff=cutoff)
    torch.testing.assert_close(fused, reference, atol=2e-5, rtol=1e-4)
    # past each clip's stretched end (8000 / rate samples, plus a frame) the output is silent
    end = int(8000 / 1.9) + ops.VOCODER_N_FFT
    if length > end:
        assert (fused[3, end:] == 0).all()


def test_compiled_resampling_read_equals_the_torch_formulation(monkeypatch) -> None:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(6, 3001, generator=g)
    ratio = torch.tensor([1.0, 0.42, 0.999, 1.001, 2.4, 7.0], dtype=torch.float64)
    fused = ops._read(x, ratio)
    assert torch.equal(fused[0], x[0])  # ratio 1 reads the clip exactly
    assert (fused[5, 3001 // 7 + 1 :] == 0).all()  # past the end: silence
    _torch_path(monkeypatch)
    torch.testing.assert_close(fused, ops._read(x, ratio), atol=1e-6, rtol=1e-5)
    # another output length: the same reads, cut or zero-padded
    monkeypatch.undo()
    longer = ops._read(x, ratio, length=4000)
    assert longer.shape == (6, 4000) and torch.equal(longer[:, :3001], fused)
    assert (longer[0, 3001:] == 0).all()


def test_pitch_shift_is_the_same_on_both_paths(monkeypatch) -> None:
    g = torch.Generator().manual_seed(1)
    x = 0.3 * torch.randn(6, 6000, generator=g)
    semitones = torch.tensor([-15.0, -7.0, 0.0, 3.0, 12.0, 15.0])
    fused = ops.pitch_shift(x, semitones)
    _torch_path(monkeypatch)
    torch.testing.assert_close(fused, ops.pitch_shift(x, semitones), atol=2e-5, rtol=1e-4)


def test_float64_inputs_take_the_torch_path() -> None:
    assert not ops._fused(torch.zeros(2, 10, dtype=torch.float64))
    assert ops._fused(torch.zeros(2, 10))


def _views(threads: int, seed: int = 3):
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        pipe = ViewPipeline(AugmentConfig(ops=MTSLVR_OPS, min_ops=1))
        x = 0.2 * torch.randn(8, 4000, generator=torch.Generator().manual_seed(9))
        views = pipe(x, torch.Generator().manual_seed(seed))
        return views, torch.get_num_threads()
    finally:
        torch.set_num_threads(old)


def test_views_do_not_depend_on_the_number_of_threads() -> None:
    one, after_one = _views(1)
    two, after_two = _views(2)
    assert after_one == 1 and after_two == 2  # the caller's thread count is restored
    assert torch.equal(one.view1, two.view1) and torch.equal(one.view2, two.view2)
    assert torch.equal(one.order, two.order) and torch.equal(one.labels, two.labels)
    other, _ = _views(2, seed=4)
    assert not torch.equal(other.view1, two.view1)


def test_an_error_in_the_second_view_reaches_the_caller(monkeypatch) -> None:
    pipe = ViewPipeline(AugmentConfig(ops=["white_noise"], min_ops=1))
    x = torch.randn(4, 1000)
    calls = []
    apply = pipe.apply

    def failing(xv, order, g):
        calls.append(xv)
        if len(calls) == 2:
            raise RuntimeError("second view failed")
        return apply(xv, order, g)

    monkeypatch.setattr(pipe, "apply", failing)
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(RuntimeError, match="second view failed"):
            pipe(x, torch.Generator().manual_seed(0))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("t", [48000, 1001])  # widened copy / plain index_copy_
def test_copy_rows_equals_index_copy(t: int) -> None:
    g = torch.Generator().manual_seed(2)
    out = torch.randn(9, t, generator=g)
    src = torch.randn(4, t, generator=g)
    rows = torch.tensor([7, 0, 3, 5])
    expected = out.clone().index_copy_(0, rows, src)
    assert torch.equal(ops.copy_rows_(out, rows, src), expected)
    assert torch.equal(out, expected)
    # a non-contiguous source falls back to index_copy_
    wide = torch.randn(4, 2 * t, generator=g)[:, ::2]
    torch.testing.assert_close(
        ops.copy_rows_(out.clone(), rows, wide), out.clone().index_copy_(0, rows, wide)
    )


def test_gaussian_noise_is_standard_normal_and_seeded() -> None:
    import numpy as np
    from scipy import stats

    cpu = torch.device("cpu")
    z = ops.gaussian((400, 1001), torch.Generator().manual_seed(0), cpu)  # odd count: padded pair
    assert z.shape == (400, 1001) and z.dtype == torch.float32
    flat = z.flatten().double().numpy()
    assert abs(flat.mean()) < 0.005 and abs(flat.var() - 1.0) < 0.01
    assert abs(stats.skew(flat)) < 0.02 and abs(stats.kurtosis(flat)) < 0.03
    assert stats.kstest(flat[:100_000], "norm").pvalue > 1e-3
    # no correlation between neighbours, nor between the two halves Box-Muller pairs up
    assert abs(float(torch.corrcoef(torch.stack([z.flatten()[:-1], z.flatten()[1:]]))[0, 1])) < 0.01
    half = flat.size // 2
    assert abs(np.corrcoef(flat[:half], flat[half : 2 * half])[0, 1]) < 0.01
    # seeded by the generator: same seed, same noise; another seed, other noise
    assert torch.equal(z, ops.gaussian((400, 1001), torch.Generator().manual_seed(0), cpu))
    assert not torch.equal(z, ops.gaussian((400, 1001), torch.Generator().manual_seed(1), cpu))
    # complex: variance 1, half in each part, as torch.randn draws it
    c = ops.gaussian((300, 1000), torch.Generator().manual_seed(2), cpu, complex_=True)
    assert c.dtype == torch.complex64 and c.shape == (300, 1000)
    assert abs(float(c.real.var()) - 0.5) < 0.01 and abs(float(c.imag.var()) - 0.5) < 0.01
    assert abs(float(torch.corrcoef(torch.stack([c.real.flatten(), c.imag.flatten()]))[0, 1])) < 0.01


def test_uniform_stream_lies_in_the_open_unit_interval() -> None:
    import numpy as np

    from tympan.augment.kernels import uniform_open

    u = np.empty(1_000_000, dtype=np.float32)
    uniform_open(np.uint64(12345), u)
    assert u.min() > 0.0 and u.max() <= 1.0
    assert abs(u.mean() - 0.5) < 0.002 and abs(u.var() - 1 / 12) < 0.002
    # the 24-bit values fill the interval evenly: a chi-square over 64 cells
    counts = np.bincount(np.minimum((u * 64).astype(int), 63), minlength=64)
    assert ((counts - counts.mean()) ** 2 / counts.mean()).sum() < 120
