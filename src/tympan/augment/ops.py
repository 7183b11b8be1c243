"""CLAR waveform augmentations, batched over clips with per-clip parameters.

The operations and their parameter ranges are those of CLAR as used by MT-SLVR
(``../shared/seeds/000_e1eab6133071efa6.txt``, "Audio Augmentations & Application", table of the
seven augmentations). Each op has two halves:

* a pure function ``op(x, ...)`` of a batch ``x [B, T]`` and per-clip parameter tensors ``[B]``
  (these are what the tests check against a clip-by-clip reference), and
* an :class:`AugmentOp` that draws those parameters for ``B`` clips from a ``torch.Generator`` on
  the batch's device, with ranges taken from the recipe (``augment.params.<op>``), defaulting to
  the seed's.

No op loops over clips in Python; each is a handful of tensor operations on the whole batch.
"""

from __future__ import annotations

import functools
import math

from typing import Any, ClassVar

import numpy as np
import torch

from tympan.errors import ConfigError

FADE_SHAPES = ("linear", "log", "exp")

# Phase vocoder (pitch_shift, time_stretch): fixed sizes so that every clip of a batch shares one
# STFT. 512 points is 32 ms at 16 kHz (31 Hz bins: fine enough for speech and music partials). The
# hop is half a window with a sine (square-root Hann) window for both analysis and synthesis:
# their product, Hann, overlap-adds to exactly 1 at that hop, so the inverse needs no
# normalisation, and half-overlap is the fewest frames (~T bins per clip) that reconstructs.
VOCODER_N_FFT = 512
VOCODER_HOP = VOCODER_N_FFT // 2
#: frame ``k`` of :func:`_stft` is centred on sample ``(k - VOCODER_CENTRE) * hop``
VOCODER_CENTRE = (VOCODER_N_FFT // 2 - VOCODER_HOP) / VOCODER_HOP


# ---------------------------------------------------------------------------------------------
# pure batched functions


def white_noise(x: torch.Tensor, noise: torch.Tensor, snr_db: torch.Tensor) -> torch.Tensor:
    """Add ``noise`` scaled so that each clip's signal-to-noise ratio is exactly ``snr_db``.

    ``SNR = 10 log10(P_x / P_n)`` with ``P`` the mean power over the clip; the realised noise is
    rescaled, so the SNR holds for the drawn noise itself, not only in expectation.
    Shapes: ``x, noise [B, T]``, ``snr_db [B]``.
    """
    # the noise is scaled by (|x| / |noise|) 10^(-SNR / 20): the 1/T of the mean powers cancels
    # (norms: no [B, T] temporaries); a silent noise draw (mean power under 1e-12) is not blown up
    floor = 1e-6 * math.sqrt(x.shape[1])
    ratio = torch.linalg.vector_norm(x, dim=1) / torch.linalg.vector_norm(noise, dim=1).clamp_min(floor)
    return torch.addcmul(x, noise, ratio.mul_(torch.pow(10.0, snr_db * -0.05)).unsqueeze(1))


def time_shift(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Circularly shift each clip by ``shift[b]`` samples (positive = later), i.e. ``torch.roll``
    with rollover, batched. Shapes: ``x [B, T]``, ``shift [B]`` (integer)."""
    b, t = x.shape
    # y[n] = x[(n - shift) mod t] = xx[n + t - (shift mod t)] with xx = x twice: each output row
    # is one window of xx, picked from the view of all windows by one row copy (no [B, T] index)
    start = (t - shift.long() % t) + torch.arange(b, device=x.device) * (2 * t)
    return torch.cat((x, x), dim=1).view(-1).unfold(0, t, 1).index_select(0, start)


def time_mask(x: torch.Tensor, start: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
    """Zero samples ``[start[b], start[b] + length[b])`` of each clip (the part inside the clip).
    Shapes: ``[B, T]``, ``[B]``.

    The spans are zeroed through their flat indices (one index per masked sample, an eighth of
    the clip at most with the seed's range) instead of a ``[B, T]`` mask.
    """
    b, t = x.shape
    first = start.long().clamp(0, t)
    count = ((start.long() + length.long()).clamp(0, t) - first).clamp_min(0)
    out = x.clone()
    total = int(count.sum())
    if total:
        # sample i of span b sits at flat index b t + first[b] + i
        base = torch.arange(b, device=x.device) * t + first - (torch.cumsum(count, 0) - count)
        flat = torch.arange(total, device=x.device) + torch.repeat_interleave(base, count)
        out.view(-1).index_fill_(0, flat, 0.0)
    return out


def copy_rows_(out: torch.Tensor, rows: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """``out.index_copy_(0, rows, src)`` for ``[B, T]`` batches, faster on the CPU.

    torch's CPU ``index_copy_`` moves one element at a time, so its cost follows the element
    count, three times that of ``index_select`` for float32 rows. Where the rows' bytes allow,
    both sides are viewed as 16-byte elements (the values are unchanged, only moved).
    """
    wide = torch.complex128
    if (
        out.device.type == "cpu"
        and out.dtype == src.dtype
        and out.element_size() < 16
        and out.is_contiguous()
        and src.is_contiguous()
        and (out.shape[-1] * out.element_size()) % 16 == 0
        and (out.storage_offset() * out.element_size()) % 16 == 0
        and (src.storage_offset() * src.element_size()) % 16 == 0
    ):
        out.view(wide).index_copy_(0, rows, src.view(wide))
    else:
        out.index_copy_(0, rows, src)
    return out


def _fade_linear(p: torch.Tensor) -> torch.Tensor:
    return p


def _fade_log(p: torch.Tensor) -> torch.Tensor:
    return p.mul_(0.9).add_(0.1).log10_().add_(1.0)


def _fade_exp(p: torch.Tensor) -> torch.Tensor:
    return p.sub_(1.0).mul_(5.0).exp2_().sub_(2.0**-5).div_(1.0 - 2.0**-5)


#: gain curves of :data:`FADE_SHAPES`, in that order; each overwrites its argument
_FADE_CURVES = (_fade_linear, _fade_log, _fade_exp)


def _fade_curve_(p: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
    """Gain for fade progress ``p [B, T]`` in [0, 1] (0 = silent end), written over ``p``;
    ``shape [B]``: 0 linear, 1 log, 2 exp.

    log: ``log10(0.1 + 0.9 p) + 1`` rises fast then flattens; exp: ``2^(5 (p - 1))`` starts
    slowly, mapped to start from 0. All reach 1 at ``p = 1``. The linear gain is the progress
    itself; each other shape's curve is evaluated on the rows of that shape only.
    """
    for j, curve in enumerate(_FADE_CURVES):
        if curve is _fade_linear:
            continue
        rows = torch.nonzero(shape == j, as_tuple=True)[0]
        if rows.numel():
            copy_rows_(p, rows, curve(p.index_select(0, rows)))
    return p


def fade(
    x: torch.Tensor, fade_in: torch.Tensor, fade_out: torch.Tensor, shape: torch.Tensor
) -> torch.Tensor:
    """Fade in over the first ``fade_in[b]`` samples and out over the last ``fade_out[b]``.

    ``shape[b]`` indexes :data:`FADE_SHAPES`. Shapes: ``x [B, T]``, others ``[B]``.

    The gain is 1 outside the fades, so only the head of the batch (as long as its longest
    fade-in) and its tail (its longest fade-out) are computed and multiplied; where a clip's
    fades overlap, both gains apply.
    """
    t = x.shape[1]
    out = x.clone()

    def gain(length: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        # progress steps / length, or 1 throughout where there is no fade (length 0), clamped
        # to [0, 1], through the clip's curve
        n = length.to(x.dtype).unsqueeze(1)
        none = (n <= 0).to(x.dtype)
        progress = torch.addcmul(none, steps, (1.0 - none) / n.clamp_min(1.0)).clamp_(max=1.0)
        return _fade_curve_(progress, shape)

    head = int(fade_in.clamp(0, t).max()) if fade_in.numel() else 0
    if head:
        steps = torch.arange(head, device=x.device, dtype=x.dtype)  # samples since the start
        out[:, :head].mul_(gain(fade_in, steps))
    tail = int(fade_out.clamp(0, t).max()) if fade_out.numel() else 0
    if tail:
        steps = torch.arange(tail - 1, -1, -1, device=x.device, dtype=x.dtype)  # ... to the end
        out[:, t - tail :].mul_(gain(fade_out, steps))
    return out


@functools.lru_cache(maxsize=8)
def _vocoder_window(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The sine window (cached per device and dtype; callers must not modify it)."""
    n = torch.arange(VOCODER_N_FFT, device=device, dtype=torch.float64)
    return torch.sin(math.pi * n / VOCODER_N_FFT).to(dtype)


@functools.lru_cache(maxsize=8)
def _synthesis_window(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The sine window scaled so that windowed overlap-add inverts :func:`_stft`."""
    return _vocoder_window(device, dtype) * (2.0 * VOCODER_HOP / VOCODER_N_FFT)


def _n_frames(t: int) -> int:
    """The number of :func:`_stft` frames of a ``t``-sample signal."""
    return (VOCODER_N_FFT - VOCODER_HOP + t - 1) // VOCODER_HOP + 1


def _stft(x: torch.Tensor) -> torch.Tensor:
    """``x [B, T]`` -> ``spec [B, K, F]``, zero-padded so that every sample lies under the same
    number of frames (``N / hop``); :func:`_istft` inverts it exactly."""
    t = x.shape[1]
    lead = VOCODER_N_FFT - VOCODER_HOP
    n_frames = _n_frames(t)
    right = (n_frames - 1) * VOCODER_HOP + VOCODER_N_FFT - t - lead
    padded = torch.nn.functional.pad(x, (lead, right))
    frames = padded.unfold(1, VOCODER_N_FFT, VOCODER_HOP) * _vocoder_window(x.device, x.dtype)
    return torch.fft.rfft(frames, dim=2)


def _fused(x: torch.Tensor) -> bool:
    """Whether the vocoder runs its compiled CPU loops (:mod:`tympan.augment.kernels`): float32
    on the CPU; elsewhere the torch formulation."""
    return x.device.type == "cpu" and x.dtype == torch.float32


def _istft(spec: torch.Tensor, t: int) -> torch.Tensor:
    """Inverse of :func:`_stft`: windowed overlap-add cropped to ``t`` samples. The squared
    window sums to ``N / (2 hop)`` under every sample, the only normalisation needed. (The
    inverse FFT gets a new tensor: written through ``out=`` it costs one more copy on the CPU.)"""
    frames = torch.fft.irfft(spec, n=VOCODER_N_FFT, dim=2)
    hop, overlap = VOCODER_HOP, VOCODER_N_FFT // VOCODER_HOP
    frames.mul_(_synthesis_window(spec.device, frames.dtype))
    b, k, _ = frames.shape
    chunks = frames.view(b, k, overlap, hop)
    # Output block q (samples q hop ... of the cropped signal, i.e. padded block q + overlap - 1)
    # sums chunk r of frame q + overlap - 1 - r. The sums are written straight into a contiguous
    # [B, t] result: no padded signal to crop, and a contiguous result scatters fast.
    y = torch.empty(b, t, dtype=frames.dtype, device=frames.device)
    full, rest = divmod(t, hop)

    def blocks(q0: int, q1: int, width: int, out: torch.Tensor) -> None:
        first = q0 + overlap - 1
        torch.add(chunks[:, first : first + q1 - q0, 0, :width],
                  chunks[:, first - 1 : first - 1 + q1 - q0, 1, :width], out=out)
        for r in range(2, overlap):
            out += chunks[:, first - r : first - r + q1 - q0, r, :width]

    blocks(0, full, hop, y[:, : full * hop].view(b, full, hop))
    if rest:
        blocks(full, full + 1, rest, y[:, full * hop :].unsqueeze(1))
    return y


def _vocoder_frames(
    spec: torch.Tensor,
    lo: torch.Tensor,
    w_lo: torch.Tensor,
    w_hi: torch.Tensor,
    keep: torch.Tensor | None = None,
) -> torch.Tensor:
    """The phase vocoder's output frames ``[B, K_out, F]`` in torch (the reference formulation,
    and the path on devices other than the CPU) from the input spectrum ``spec [B, K, F]`` and
    the time map ``lo, w_lo, w_hi [B, K_out]`` of :func:`_frame_map`; bins from ``keep[b]`` up
    are zero (all kept if ``None``). :func:`tympan.augment.kernels.vocoder_frames` computes the
    same frames in one compiled pass. Overwrites ``spec``."""
    b, n_frames, n_bins = spec.shape
    n_out = lo.shape[1]
    # The tiny real offset gives a silent bin phase 0 instead of 0/0, so silence cannot zero the
    # phasor product; it is far below any audible level, and its square is a normal float32.
    re_im = torch.view_as_real(spec.add_(1e-18))
    mag = re_im[..., 0].square().addcmul_(re_im[..., 1], re_im[..., 1])  # |S|^2 for now
    inv_mag = mag.rsqrt()
    mag.mul_(inv_mag)  # |S|
    # complex x real products go through the real view: multiplying a complex tensor by a real
    # one of the same size first copies the real one to complex
    re_im.mul_(inv_mag.unsqueeze(3))
    unit = spec  # S / |S|
    # steps[:, 0] is frame 0's phase, steps[:, j] the advance from frame j - 1 to frame j
    steps = torch.empty_like(unit)
    steps[:, :1] = unit[:, :1]
    torch.mul(unit[:, 1:], unit[:, :-1].conj(), out=steps[:, 1:])

    rows = (torch.arange(b, device=spec.device) * n_frames).unsqueeze(1)
    flat = mag.view(b * n_frames, n_bins)
    lo_rows = (rows + lo.clamp(max=n_frames - 1)).view(-1)
    hi_rows = (rows + (lo + 1).clamp(max=n_frames - 1)).view(-1)
    out_mag = flat.index_select(0, lo_rows).view(b, n_out, n_bins).mul_(w_lo.unsqueeze(2))
    out_mag.addcmul_(flat.index_select(0, hi_rows).view(b, n_out, n_bins), w_hi.unsqueeze(2))
    if keep is not None:
        bins = torch.arange(n_bins, device=spec.device)
        out_mag.mul_((bins < keep.unsqueeze(1)).unsqueeze(1))
    # output frame 0 takes frame 0's phase; output frame k + 1 advances by the input advance
    # from frame floor(t_k) to floor(t_k) + 1
    step_rows = torch.cat((rows, rows + 1 + lo[:, :-1].clamp(max=n_frames - 2)), dim=1)
    out = steps.view(b * n_frames, n_bins).index_select(0, step_rows.view(-1))
    out = out.view(b, n_out, n_bins).cumprod_(dim=1)
    torch.view_as_real(out).mul_(out_mag.unsqueeze(3))
    return out


def phase_vocoder(
    x: torch.Tensor,
    rate: torch.Tensor,
    length: int | None = None,
    cutoff: torch.Tensor | None = None,
) -> torch.Tensor:
    """Change each clip's tempo by ``rate[b]`` keeping its pitch (librosa's phase vocoder, batched
    with a rate per clip). Output sample ``n`` follows input sample ``n * rate[b]``.

    One STFT of the whole batch (:data:`VOCODER_N_FFT`, :data:`VOCODER_HOP`). Output frame ``k`` of
    clip ``b`` reads input frame ``t = k * rate[b]``: its magnitude is interpolated linearly between
    frames ``floor(t)`` and ``floor(t) + 1``, and its phase is the previous output frame's phase
    advanced by the phase difference between those two input frames. Phases are carried as unit
    phasors, so accumulating them is a product over frames (no angles, sines or cosines).
    Frames read past the clip's end are silent. The output is ``length`` samples long (default
    the input's ``T``). With ``cutoff [B]`` the output frames keep only the bins below
    ``cutoff[b]`` times Nyquist (the anti-aliasing of :func:`pitch_shift`, at no cost: the
    frames are synthesised anyway).
    On the CPU the frames come from one compiled pass (:mod:`tympan.augment.kernels`), elsewhere
    from :func:`_vocoder_frames`. Shapes: ``x [B, T]``, ``rate [B]``.
    """
    n_out = x.shape[1] if length is None else length
    if x.shape[0] == 0:  # MKL's FFT rejects an empty batch
        return x.new_zeros(0, n_out)
    spec = _stft(x)  # [B, K, F]
    n_bins = spec.shape[2]
    lo, w_lo, w_hi = _frame_map(rate.to(torch.float64), spec.shape[1], _n_frames(n_out), x.dtype)
    keep = None
    if cutoff is not None:  # bins k < cutoff (F - 1): below cutoff x Nyquist
        keep = torch.ceil(cutoff.to(torch.float64) * (n_bins - 1)).long().clamp_(1, n_bins)
    if _fused(x):
        from tympan.augment.kernels import vocoder_frames

        # the complex spectra as interleaved float32 [B, K, 2F], in and out
        out = spec.new_empty(spec.shape[0], lo.shape[1], n_bins)
        every = torch.full((spec.shape[0],), n_bins, dtype=torch.long)
        vocoder_frames(torch.view_as_real(spec).flatten(2).numpy(), lo.numpy(), w_lo.numpy(),
                       w_hi.numpy(), (every if keep is None else keep).numpy(),
                       torch.view_as_real(out).flatten(2).numpy())
    else:
        out = _vocoder_frames(spec, lo, w_lo, w_hi, keep)
    return _istft(out, n_out)


def _frame_map(
    rate: torch.Tensor, n_frames: int, n_out: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where each of the ``n_out`` output frames of :func:`phase_vocoder` reads among the
    ``n_frames`` input frames: ``lo [B, n_out]`` (input frame ``floor(t)``, ``t = k * rate``
    with the time map anchored at sample 0) and the weights ``w_lo, w_hi [B, n_out]`` of frames
    ``lo`` and ``lo + 1``, zero for frames past the clip's end. ``rate [B]`` float64."""
    k = torch.arange(n_out, device=rate.device, dtype=torch.float64)
    pos = ((k - VOCODER_CENTRE) * rate.unsqueeze(1) + VOCODER_CENTRE).clamp_min(0.0)
    lo = pos.long()  # floor, pos >= 0
    frac = (pos - lo).to(dtype)
    return lo, (1.0 - frac) * (lo < n_frames), frac * (lo + 1 < n_frames)


def time_stretch(x: torch.Tensor, rate: torch.Tensor) -> torch.Tensor:
    """Change each clip's tempo by ``rate[b]`` (``> 1`` faster) keeping its pitch.

    :func:`phase_vocoder`. The batch stays ``[B, T]``: a slowed clip (``rate < 1``, naturally
    ``T / rate`` long) is cropped to its first ``T`` samples, a sped-up clip is zero-padded at the
    end. Shapes: ``x [B, T]``, ``rate [B]``.
    """
    return phase_vocoder(x, rate)


def _read(x: torch.Tensor, ratio: torch.Tensor, length: int | None = None) -> torch.Tensor:
    """Resample by reading ``y[m] = x(m * ratio[b])`` for ``m < length`` (default ``T``),
    interpolating linearly; zero at and past the clip's end. ``ratio = 1`` returns ``x`` exactly.
    Anti-aliasing before reading faster than 1 is the caller's. On the CPU one compiled loop
    (:func:`tympan.augment.kernels.read_linear`). Shapes: ``x [B, T]``, ``ratio [B]``."""
    t = x.shape[1]
    n_out = t if length is None else length
    if _fused(x):
        from tympan.augment.kernels import read_linear

        out = x.new_empty(x.shape[0], n_out)
        read_linear(x.contiguous().numpy(), ratio.to(torch.float64).numpy(), out.numpy())
        return out
    padded = torch.nn.functional.pad(x, (0, 2))  # reads at or past the end see zeros
    pos = torch.arange(n_out, device=x.device, dtype=torch.float64) * ratio.to(torch.float64).unsqueeze(1)
    lo = pos.long().clamp_(max=t)  # floor, pos >= 0
    frac = pos.sub_(lo).to(x.dtype)
    return torch.gather(padded, 1, lo).lerp_(torch.gather(padded[:, 1:], 1, lo), frac)


def pitch_shift(x: torch.Tensor, semitones: torch.Tensor) -> torch.Tensor:
    """Transpose each clip by ``semitones[b]`` keeping its length and tempo.

    librosa's definition: a :func:`phase_vocoder` stretch by rate ``1 / s`` and a resampling by
    ``s = 2^(n/12)``, so that the pitch moves by ``s`` and the duration does not.

    * A clip shifted up is stretched first, as librosa does, to ``s T`` samples, and read ``s``
      times faster. Its anti-aliasing low-pass (to ``1 / s`` of Nyquist) is applied to the
      stretched clip's synthesis frames (:func:`phase_vocoder`'s ``cutoff``), so it costs no
      transform of its own; the frames' overlap-add smooths the cut over about two bins
      (60 Hz).
    * A clip shifted down is read ``s`` times slower after the stretch, which needs no
      low-pass; the stretch speeds it up, so it stays within ``T`` samples throughout, and only
      the ``s T`` samples the reading reaches are synthesised.

    Each direction is one batched stretch and one resampling of the clips shifted that way (a
    batch of clips shifted up is stretched to its largest ``s``; each clip's own frames past its
    end are silent). Shapes: ``x [B, T]``, ``semitones [B]``.
    """
    t = x.shape[1]
    if x.shape[0] == 0:
        return x.clone()
    s = torch.exp2(semitones.to(torch.float64) / 12.0)
    up = torch.nonzero(s > 1.0, as_tuple=True)[0]
    rest = torch.nonzero(s <= 1.0, as_tuple=True)[0]  # s = 1: the stretch at rate 1 alone

    def shift_up(xs: torch.Tensor, ss: torch.Tensor) -> torch.Tensor:
        # reading s times faster from the stretched clip reaches sample (T - 1) s at most
        length = int(math.floor((t - 1) * float(ss.max()))) + 2
        stretched = phase_vocoder(xs, 1.0 / ss, length=length, cutoff=1.0 / ss)
        return _read(stretched, ss, length=t)

    def shift_down(xs: torch.Tensor, ss: torch.Tensor) -> torch.Tensor:
        # reading s <= 1 times slower reaches sample (T - 1) s of the (sped-up) stretch at most
        length = min(t, int(math.floor((t - 1) * float(ss.max()))) + 2)
        return _read(phase_vocoder(xs, 1.0 / ss, length=length), ss, length=t)

    if rest.numel() == 0:
        return shift_up(x, s)
    if up.numel() == 0:
        return shift_down(x, s)
    out = torch.empty_like(x)
    copy_rows_(out, up, shift_up(x.index_select(0, up), s.index_select(0, up)))
    copy_rows_(out, rest, shift_down(x.index_select(0, rest), s.index_select(0, rest)))
    return out


@functools.lru_cache(maxsize=16)
def _log_bins(n_bins: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``log(max(k, 1))`` for bins ``k`` as ``[1, n_bins]`` (cached; callers must not modify it)."""
    k = torch.arange(n_bins, device=device, dtype=dtype)
    return torch.log(k.clamp_min(1.0)).unsqueeze(0)


def coloured_noise(noise: torch.Tensor, f_decay: torch.Tensor, num_samples: int | None = None) -> torch.Tensor:
    """Shape white noise so that its power spectrum goes as ``1 / f^d``, ``d = f_decay[b]``.

    Each clip's rfft is multiplied by ``f^(-d/2)`` (``f`` the bin index; the unit cancels in
    the SNR scaling); the DC bin, where ``1/f^d`` diverges for ``d > 0``, is zeroed so the noise
    has no offset. ``d = 0`` white, 1 pink, 2 brown, negative blue / violet.
    ``noise`` is white noise ``[B, T]`` or, complex, its spectrum ``[B, T // 2 + 1]`` (i.i.d.
    complex Gaussian bins are the spectrum of white Gaussian noise: sampling them directly skips a
    forward FFT); ``num_samples`` is ``T`` for a spectrum (default ``2 (F - 1)``).
    Shapes: ``noise [B, T]`` or ``[B, F]`` complex, ``f_decay [B]`` -> ``[B, T]``.
    """
    if noise.is_complex():
        spec = noise.clone()
        t = num_samples if num_samples is not None else 2 * (noise.shape[1] - 1)
    else:
        t = noise.shape[1]
        spec = torch.fft.rfft(noise, dim=1)
    real = spec.real.dtype
    log_k = _log_bins(spec.shape[1], noise.device, real)
    gain = (-0.5 * f_decay.to(real)).unsqueeze(1).mul(log_k).exp_()  # k^(-d/2)
    gain[:, 0] = 0.0
    return torch.fft.irfft(spec.mul_(gain), n=t, dim=1)


def mixed_noise(
    x: torch.Tensor, noise: torch.Tensor, f_decay: torch.Tensor, snr_db: torch.Tensor
) -> torch.Tensor:
    """Add white ``noise`` (or its complex spectrum, see :func:`coloured_noise`) coloured to
    ``1 / f^d`` at exactly ``snr_db[b]`` (:func:`white_noise`).
    Shapes: ``x [B, T]``, ``noise [B, T]`` or ``[B, T // 2 + 1]`` complex, ``f_decay, snr_db [B]``."""
    return white_noise(x, coloured_noise(noise, f_decay, x.shape[1]).to(x.dtype), snr_db)


# ---------------------------------------------------------------------------------------------
# parameter samplers


def _uniform(n: int, lo: float, hi: float, g: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.empty(n, device=device).uniform_(lo, hi, generator=g)


def gaussian(
    shape: tuple[int, ...], g: torch.Generator, device: torch.device, complex_: bool = False
) -> torch.Tensor:
    """Standard normal noise of ``shape`` (float32, or complex64 with variance 1 split evenly
    between the real and imaginary parts, as ``torch.randn`` draws it), deterministic given
    ``g``.

    On the CPU: Box–Muller, ``sqrt(-2 ln u1) (cos, sin)(2 pi u2)``, on uniforms from a compiled
    SplitMix64 stream seeded by one draw from ``g``
    (:func:`tympan.augment.kernels.uniform_open`), with numpy's vectorised ``log``, ``sqrt``,
    ``sin`` and ``cos``. About 1 ns a number on one core of the reference machine, where
    ``torch.randn`` (a serial Mersenne Twister) takes 2.6 ns and numpy's ``standard_normal``
    8 ns; the noise draws were a sixth of the two-view augmentation
    (``benchmarks/augment_views.py --per-op``). The 24-bit uniforms bound ``|z|`` by 5.8, as
    torch's float32 draws do. Elsewhere ``torch.randn``.
    """
    if device.type != "cpu":
        dtype = torch.complex64 if complex_ else torch.float32
        return torch.randn(shape, generator=g, device=device, dtype=dtype)
    from tympan.augment.kernels import uniform_open

    n = math.prod(shape) * (2 if complex_ else 1)
    half = (n + 1) // 2
    seed = int(torch.randint(0, 2**62, (1,), generator=g))
    u = np.empty(2 * half, dtype=np.float32)
    uniform_open(np.uint64(seed), u)
    radius, angle = u[:half], u[half:]
    np.log(radius, out=radius)
    radius *= -1.0 if complex_ else -2.0  # complex: each part has variance 1/2
    np.sqrt(radius, out=radius)
    angle *= 2.0 * np.pi
    out = np.empty(2 * half, dtype=np.float32)
    np.cos(angle, out=out[:half])
    out[:half] *= radius
    np.sin(angle, out=angle)
    np.multiply(angle, radius, out=out[half:])
    z = torch.from_numpy(out[:n])
    if complex_:
        return torch.view_as_complex(z.view(*shape, 2))
    return z.view(shape)


class AugmentOp:
    """Draws per-clip parameters for one op and applies it to a batch.

    Subclasses set ``name`` and ``defaults`` (the seed's ranges) and implement ``sample`` and
    ``apply``. Constructor keywords override defaults; an unknown keyword is a ConfigError that
    names ``augment.params.<op>.<key>``.
    """

    name: ClassVar[str]
    defaults: ClassVar[dict[str, Any]]

    def __init__(self, **params: Any) -> None:
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            raise ConfigError(
                f"unknown recipe field 'augment.params.{self.name}.{unknown[0]}' "
                f"(known: {', '.join(sorted(self.defaults))})"
            )
        self.params = {**self.defaults, **params}
        self.check()

    def check(self) -> None:
        """Validate ranges; override to add checks."""

    def _range(self, key: str, lo: float, hi: float) -> tuple[float, float]:
        value = self.params[key]
        ok = (
            isinstance(value, (list, tuple))
            and len(value) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        )
        a, b = value if ok else (math.nan, math.nan)
        if not (lo <= a <= b <= hi):
            raise ConfigError(
                f"recipe field 'augment.params.{self.name}.{key}' must be [min, max] with "
                f"{lo} <= min <= max <= {hi}, got {value!r}"
            )
        return float(a), float(b)

    def _ratio(self, key: str) -> float:
        r = self.params[key]
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 <= r <= 1.0:
            raise ConfigError(f"recipe field 'augment.params.{self.name}.{key}' must lie in [0, 1]")
        return float(r)

    def sample(
        self, n: int, num_samples: int, g: torch.Generator, device: torch.device
    ) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def apply(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError


class WhiteNoise(AugmentOp):
    """White Gaussian noise at an SNR drawn uniformly in ``snr_db`` (seed: 3–30 dB)."""

    name = "white_noise"
    defaults = {"snr_db": [3.0, 30.0]}

    def check(self) -> None:
        self._range("snr_db", -100.0, 200.0)

    def sample(self, n, num_samples, g, device):
        lo, hi = self._range("snr_db", -100.0, 200.0)
        return {
            "snr_db": _uniform(n, lo, hi, g, device),
            "noise": gaussian((n, num_samples), g, device),
        }

    def apply(self, x, params):
        return white_noise(x, params["noise"].to(x.dtype), params["snr_db"].to(x.dtype))


class TimeShift(AugmentOp):
    """Circular shift by a fraction drawn uniformly in ``[-max_ratio, max_ratio]`` (seed: 0.5)."""

    name = "time_shift"
    defaults = {"max_ratio": 0.5}

    def check(self) -> None:
        self._ratio("max_ratio")

    def sample(self, n, num_samples, g, device):
        r = self._ratio("max_ratio")
        ratio = _uniform(n, -r, r, g, device)
        return {"shift": torch.round(ratio * num_samples).long()}

    def apply(self, x, params):
        return time_shift(x, params["shift"])


class TimeMask(AugmentOp):
    """Zero one span whose length is drawn uniformly in ``[0, max_ratio]`` of the clip (seed: 0.125)."""

    name = "time_mask"
    defaults = {"max_ratio": 0.125}

    def check(self) -> None:
        self._ratio("max_ratio")

    def sample(self, n, num_samples, g, device):
        r = self._ratio("max_ratio")
        length = torch.floor(_uniform(n, 0.0, r, g, device) * num_samples)
        start = torch.floor(torch.rand(n, generator=g, device=device) * (num_samples - length + 1))
        return {"start": start.long(), "length": length.long()}

    def apply(self, x, params):
        return time_mask(x, params["start"], params["length"])


class Fade(AugmentOp):
    """Fade in and out over fractions drawn in ``[0, max_in]`` / ``[0, max_out]`` (seed: 0.5 / 0.5),
    one shape per clip drawn from ``shapes`` (seed: linear, log, exp)."""

    name = "fade"
    defaults = {"max_in": 0.5, "max_out": 0.5, "shapes": list(FADE_SHAPES)}

    def check(self) -> None:
        self._ratio("max_in")
        self._ratio("max_out")
        shapes = self.params["shapes"]
        bad = [s for s in shapes if s not in FADE_SHAPES]
        if not shapes or bad:
            raise ConfigError(
                f"recipe field 'augment.params.fade.shapes' must be a non-empty subset of "
                f"{list(FADE_SHAPES)}, got {shapes}"
            )

    def sample(self, n, num_samples, g, device):
        allowed = torch.tensor(
            [FADE_SHAPES.index(s) for s in self.params["shapes"]], device=device
        )
        pick = torch.randint(len(allowed), (n,), generator=g, device=device)
        fin = torch.floor(_uniform(n, 0.0, self._ratio("max_in"), g, device) * num_samples)
        fout = torch.floor(_uniform(n, 0.0, self._ratio("max_out"), g, device) * num_samples)
        return {"fade_in": fin.long(), "fade_out": fout.long(), "shape": allowed[pick]}

    def apply(self, x, params):
        return fade(x, params["fade_in"], params["fade_out"], params["shape"])


class PitchShift(AugmentOp):
    """Transpose by semitones drawn uniformly in ``semitones`` (seed: -15 to 15), length kept."""

    name = "pitch_shift"
    defaults = {"semitones": [-15.0, 15.0]}

    def check(self) -> None:
        self._range("semitones", -36.0, 36.0)

    def sample(self, n, num_samples, g, device):
        lo, hi = self._range("semitones", -36.0, 36.0)
        return {"semitones": _uniform(n, lo, hi, g, device)}

    def apply(self, x, params):
        return pitch_shift(x, params["semitones"])


class TimeStretch(AugmentOp):
    """Tempo change by a rate drawn uniformly in ``rate`` (seed: 0.5 to 1.5; > 1 faster), pitch
    kept; slowed clips are cropped and sped-up clips zero-padded to the batch length."""

    name = "time_stretch"
    defaults = {"rate": [0.5, 1.5]}

    def check(self) -> None:
        self._range("rate", 0.1, 10.0)

    def sample(self, n, num_samples, g, device):
        lo, hi = self._range("rate", 0.1, 10.0)
        return {"rate": _uniform(n, lo, hi, g, device)}

    def apply(self, x, params):
        return time_stretch(x, params["rate"])


class MixedNoise(AugmentOp):
    """Coloured ``1/f^d`` noise with ``d`` drawn uniformly in ``f_decay`` (seed: -2 to 2) at an
    SNR drawn uniformly in ``snr_db`` (seed: 3–30 dB)."""

    name = "mixed_noise"
    defaults = {"f_decay": [-2.0, 2.0], "snr_db": [3.0, 30.0]}

    def check(self) -> None:
        self._range("f_decay", -4.0, 4.0)
        self._range("snr_db", -100.0, 200.0)

    def sample(self, n, num_samples, g, device):
        d_lo, d_hi = self._range("f_decay", -4.0, 4.0)
        s_lo, s_hi = self._range("snr_db", -100.0, 200.0)
        return {
            "f_decay": _uniform(n, d_lo, d_hi, g, device),
            "snr_db": _uniform(n, s_lo, s_hi, g, device),
            # the white noise's spectrum, drawn directly (half the random numbers, no rfft)
            "noise": gaussian((n, num_samples // 2 + 1), g, device, complex_=True),
        }

    def apply(self, x, params):
        return mixed_noise(x, params["noise"], params["f_decay"], params["snr_db"].to(x.dtype))


#: every op by name
OPS: dict[str, type[AugmentOp]] = {
    op.name: op
    for op in (PitchShift, Fade, WhiteNoise, MixedNoise, TimeMask, TimeShift, TimeStretch)
}


def build_op(name: str, params: dict[str, Any] | None = None) -> AugmentOp:
    """Instantiate op ``name`` with recipe overrides ``params``."""
    if name not in OPS:
        raise ConfigError(
            f"unknown augmentation '{name}' in recipe field 'augment.ops' "
            f"(known: {', '.join(sorted(OPS))})"
        )
    return OPS[name](**(params or {}))
