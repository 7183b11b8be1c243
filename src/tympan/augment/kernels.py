"""Compiled CPU loops for the phase vocoder (:func:`tympan.augment.ops.phase_vocoder`), the
resampling read of pitch shift (:func:`tympan.augment.ops._read`) and the uniform stream behind
the Gaussian noise (:func:`tympan.augment.ops.gaussian`).

The vocoder's torch formulation (:func:`tympan.augment.ops._vocoder_frames`) is a dozen passes
over the spectrum (magnitudes, unit phasors, phase steps, two gathers, a cumulative product, two
products), several of them on strided real/imaginary views that the CPU kernels do not vectorise;
it costs several times the FFTs around it. The same arithmetic as one loop per clip, compiled by
numba (installed with librosa), computes each input frame's magnitudes and phase step only when
the output reaches it, and keeps the running phase of every bin in one small buffer. It reads and
writes torch's interleaved complex layout directly and splits each frame it reads into real and
imaginary planes in small buffers, where the compiler vectorises the arithmetic.

The resampling read is a gather of two neighbours and a blend per output sample; in torch that
takes float64 positions and int64 indices the size of the batch, here one pass.

The torch formulations stay the reference and the path on other devices; ``tests/augment``
checks that both give the same results. The loops are compiled code over clips, frames and bins (no
Python per clip), single-threaded and ``nogil``: torch's threads run the FFTs on either side, the
two views run in two threads on the CPU (:class:`tympan.augment.pipeline.ViewPipeline`), and a
serial kernel needs no threading layer, so it is safe from several threads and after ``fork``.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# a silent bin gets phase 0 instead of 0/0 (the torch formulation adds the same offset)
_TINY = np.float32(1e-18)


@njit(cache=True, nogil=True, error_model="numpy")
def _load(z, re, im):  # pragma: no cover - compiled
    """Split one frame of interleaved complex values ``z [2F]`` into planes ``re, im [F]``,
    adding the silent-bin offset to the real part."""
    for f in range(re.shape[0]):
        re[f] = z[2 * f] + _TINY
        im[f] = z[2 * f + 1]


@njit(cache=True, nogil=True, error_model="numpy")
def _magnitude(re, im, out):  # pragma: no cover - compiled
    for f in range(re.shape[0]):
        out[f] = np.sqrt(re[f] * re[f] + im[f] * im[f])


@njit(cache=True, nogil=True, error_model="numpy")
def _step(ar, ai, hr, hi, mag_a, mag_h, st_re, st_im):  # pragma: no cover - compiled
    """``unit(h) conj(unit(a))`` per bin, each unit phasor normalised by its own magnitude (the
    product of two tiny squared magnitudes would underflow)."""
    for f in range(ar.shape[0]):
        inv_a = np.float32(1.0) / mag_a[f]
        inv_h = np.float32(1.0) / mag_h[f]
        ua_r, ua_i = ar[f] * inv_a, ai[f] * inv_a
        uh_r, uh_i = hr[f] * inv_h, hi[f] * inv_h
        st_re[f] = uh_r * ua_r + uh_i * ua_i
        st_im[f] = uh_i * ua_r - uh_r * ua_i


@njit(cache=True, nogil=True, error_model="numpy")
def vocoder_frames(z, lo, w_lo, w_hi, keep, out):  # pragma: no cover - compiled
    """Phase-vocoder output frames from the input spectrum ``z [B, K, 2F]`` (float32, the real
    view of complex64 ``[B, K, F]``: real and imaginary parts interleaved), written to ``out
    [B, K_out, 2F]`` of the same layout; bins from ``keep[b]`` up are zero.

    Output frame ``k`` of clip ``b`` has magnitude ``w_lo |S[lo]| + w_hi |S[lo + 1]|`` (rows
    clamped to the last frame) and the phase of output frame ``k - 1`` advanced by the phase step
    of input frames ``m -> m + 1``, ``m = min(lo[b, k - 1], K - 2)``; frame 0 takes input frame
    0's phase. ``lo, w_lo, w_hi [B, K_out]`` (int64, float32) are the time map of
    :func:`tympan.augment.ops._frame_map`, ``lo`` non-decreasing along ``k``; ``keep [B]``
    int64. See :func:`tympan.augment.ops.phase_vocoder`.

    Each input frame the output reaches is split once into real and imaginary planes in small
    buffers, where the arithmetic vectorises; the output is written interleaved, so the
    spectrum goes to and from torch's complex layout with no copies. Frames past the clip's end
    (both weights zero, and so every later frame) are written as zeros without arithmetic.
    """
    n_clips, n_frames, width = z.shape
    n_out = lo.shape[1]
    n_bins = width // 2
    buf = np.empty((16, n_bins), dtype=np.float32)
    for b in range(n_clips):
        kb = keep[b]
        ph_re, ph_im = buf[0, :kb], buf[1, :kb]  # running unit phasor per bin
        ar, ai, hr, hi = buf[2, :kb], buf[3, :kb], buf[4, :kb], buf[5, :kb]  # frames read
        mag_a, mag_h = buf[6, :kb], buf[7, :kb]  # their |S|
        st_re, st_im = buf[8, :kb], buf[9, :kb]  # phase step m -> m + 1
        mr, mi, nr, ni = buf[10, :kb], buf[11, :kb], buf[12, :kb], buf[13, :kb]
        sa, sh = buf[14, :kb], buf[15, :kb]  # |S| of frames m, m + 1 past the last step
        _load(z[b, 0], ar, ai)
        _magnitude(ar, ai, mag_a)
        for f in range(kb):
            ph_re[f] = ar[f] / mag_a[f]
            ph_im[f] = ai[f] / mag_a[f]
        prev = -1
        for k in range(n_out):
            o = out[b, k]
            l = lo[b, k]
            wl = w_lo[b, k]
            wh = w_hi[b, k]
            if wl == 0.0 and wh == 0.0 and l >= n_frames - 1:  # past the end: silent from here
                for r in range(k, n_out):
                    out[b, r, :] = 0.0
                break
            if l != prev:  # a new input frame: its magnitudes and phase step
                prev = l
                ra = min(l, n_frames - 1)
                rh = min(l + 1, n_frames - 1)
                m = min(l, n_frames - 2)
                _load(z[b, ra], ar, ai)
                _load(z[b, rh], hr, hi)
                _magnitude(ar, ai, mag_a)
                _magnitude(hr, hi, mag_h)
                if m == ra:  # the step's frames are the magnitudes' (all but the last frame)
                    _step(ar, ai, hr, hi, mag_a, mag_h, st_re, st_im)
                else:
                    _load(z[b, m], mr, mi)
                    _load(z[b, m + 1], nr, ni)
                    _magnitude(mr, mi, sa)
                    _magnitude(nr, ni, sh)
                    _step(mr, mi, nr, ni, sa, sh, st_re, st_im)
            for f in range(kb):
                g = wl * mag_a[f] + wh * mag_h[f]
                pr = ph_re[f]
                pi = ph_im[f]
                o[2 * f] = g * pr
                o[2 * f + 1] = g * pi
                ph_re[f] = pr * st_re[f] - pi * st_im[f]
                ph_im[f] = pr * st_im[f] + pi * st_re[f]
            o[2 * kb :] = 0.0


@njit(cache=True, nogil=True, error_model="numpy")
def read_linear(x, ratio, out):  # pragma: no cover - compiled
    """``out[b, m] = x_b(m * ratio[b])`` for ``x [B, T]``, ``out [B, T_out]`` float32, ``ratio
    [B]`` float64: linear interpolation between the two neighbouring samples, zero at and past
    the end. The compiled form of :func:`tympan.augment.ops._read` (one pass, no index
    tensors)."""
    n_clips, n = x.shape
    n_out = out.shape[1]
    for b in range(n_clips):
        r = ratio[b]
        xb = x[b]
        ob = out[b]
        for m in range(n_out):
            pos = m * r
            lo = int(pos)  # floor: pos >= 0
            if lo >= n:
                ob[m] = 0.0
                continue
            a = xb[lo]
            h = xb[lo + 1] if lo + 1 < n else np.float32(0.0)
            ob[m] = a + np.float32(pos - lo) * (h - a)


@njit(cache=True, nogil=True)
def uniform_open(seed, out):  # pragma: no cover - compiled
    """Fill ``out`` (float32) with uniforms in ``(0, 1]``: the top 24 bits of outputs ``1 ..
    len(out)`` of the SplitMix64 generator started at state ``seed`` (uint64), plus one, times
    ``2^-24``.

    SplitMix64 (Steele, Lea and Flood, "Fast splittable pseudorandom number generators", OOPSLA
    2014) passes BigCrush; its output ``i`` is a function of ``seed + i * gamma`` alone, so the
    loop has no dependence between iterations and the compiler vectorises it. It exists because
    the Gaussian noise of the augmentations needs millions of uniforms a batch and both library
    generators at hand are serial: torch's CPU Mersenne Twister takes about 2 ns a number,
    numpy's bit generators 1.5 ns a raw draw; this takes 0.15 ns
    (:func:`tympan.augment.ops.gaussian`).
    """
    gamma = np.uint64(0x9E3779B97F4A7C15)
    state = np.uint64(seed)
    scale = np.float32(1.0 / 16777216.0)
    for i in range(out.shape[0]):
        z = state + np.uint64(i + 1) * gamma
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
        out[i] = np.float32((z >> np.uint64(40)) + np.uint64(1)) * scale
