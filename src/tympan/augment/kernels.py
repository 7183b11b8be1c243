"""Compiled CPU loops for the phase vocoder (:func:`tympan.augment.ops.phase_vocoder`) and the
resampling read of pitch shift (:func:`tympan.augment.ops._read`).

The vocoder's torch formulation (:func:`tympan.augment.ops._vocoder_frames`) is a dozen passes
over the spectrum (magnitudes, unit phasors, phase steps, two gathers, a cumulative product, two
products), several of them on strided real/imaginary views that the CPU kernels do not vectorise;
it costs several times the FFTs around it. The same arithmetic as one loop per clip, compiled by
numba (installed with librosa), computes each input frame's magnitudes and phase step only when
the output reaches it, and keeps the running phase of every bin in one small buffer. It works on the
real and imaginary parts as separate planes, which the compiler vectorises (interleaved complex
loads and stores it does not).

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
def _magnitude(re, im, out):  # pragma: no cover - compiled
    for f in range(re.shape[0]):
        r = re[f] + _TINY
        out[f] = np.sqrt(r * r + im[f] * im[f])


@njit(cache=True, nogil=True, error_model="numpy")
def _step(ar, ai, hr, hi, mag_a, mag_h, st_re, st_im):  # pragma: no cover - compiled
    """``unit(h) conj(unit(a))`` per bin, each unit phasor normalised by its own magnitude (the
    product of two tiny squared magnitudes would underflow)."""
    for f in range(ar.shape[0]):
        inv_a = np.float32(1.0) / mag_a[f]
        inv_h = np.float32(1.0) / mag_h[f]
        ua_r, ua_i = (ar[f] + _TINY) * inv_a, ai[f] * inv_a
        uh_r, uh_i = (hr[f] + _TINY) * inv_h, hi[f] * inv_h
        st_re[f] = uh_r * ua_r + uh_i * ua_i
        st_im[f] = uh_i * ua_r - uh_r * ua_i


@njit(cache=True, nogil=True, error_model="numpy")
def vocoder_frames(re, im, lo, w_lo, w_hi, out_re, out_im):  # pragma: no cover - compiled
    """Phase-vocoder output frames from the input spectrum's planes ``re, im [B, K, F]``
    (float32), written to ``out_re, out_im [B, K, F]``.

    Output frame ``k`` of clip ``b`` has magnitude ``w_lo |S[lo]| + w_hi |S[lo + 1]|`` (rows
    clamped to the last frame) and the phase of output frame ``k - 1`` advanced by the phase step
    of input frames ``m -> m + 1``, ``m = min(lo[b, k - 1], K - 2)``; frame 0 takes input frame
    0's phase. ``lo, w_lo, w_hi [B, K]`` (int64, float32) are the time map of
    :func:`tympan.augment.ops._frame_map`, ``lo`` non-decreasing along ``k``.
    See :func:`tympan.augment.ops.phase_vocoder`.
    """
    n_clips, n_frames, n_bins = re.shape
    ph_re = np.empty(n_bins, dtype=np.float32)  # running unit phasor per bin
    ph_im = np.empty(n_bins, dtype=np.float32)
    mag_a = np.empty(n_bins, dtype=np.float32)  # |S| of the two frames read
    mag_h = np.empty(n_bins, dtype=np.float32)
    st_re = np.empty(n_bins, dtype=np.float32)  # phase step m -> m + 1
    st_im = np.empty(n_bins, dtype=np.float32)
    step_a = np.empty(n_bins, dtype=np.float32)  # |S| of frames m, m + 1 past the last step
    step_h = np.empty(n_bins, dtype=np.float32)
    for b in range(n_clips):
        _magnitude(re[b, 0], im[b, 0], mag_a)
        r0, i0 = re[b, 0], im[b, 0]
        for f in range(n_bins):
            ph_re[f] = (r0[f] + _TINY) / mag_a[f]
            ph_im[f] = i0[f] / mag_a[f]
        prev = -1
        for k in range(n_frames):
            l = lo[b, k]
            wl = w_lo[b, k]
            wh = w_hi[b, k]
            if l != prev:  # a new input frame: its magnitudes and phase step
                prev = l
                ra = min(l, n_frames - 1)
                rh = min(l + 1, n_frames - 1)
                m = min(l, n_frames - 2)
                _magnitude(re[b, ra], im[b, ra], mag_a)
                _magnitude(re[b, rh], im[b, rh], mag_h)
                if m == ra:  # the step's frames are the magnitudes' (all but the last frame)
                    _step(re[b, m], im[b, m], re[b, m + 1], im[b, m + 1], mag_a, mag_h,
                          st_re, st_im)
                else:
                    _magnitude(re[b, m], im[b, m], step_a)
                    _magnitude(re[b, m + 1], im[b, m + 1], step_h)
                    _step(re[b, m], im[b, m], re[b, m + 1], im[b, m + 1], step_a, step_h,
                          st_re, st_im)
            o_re = out_re[b, k]
            o_im = out_im[b, k]
            for f in range(n_bins):
                g = wl * mag_a[f] + wh * mag_h[f]
                pr = ph_re[f]
                pi = ph_im[f]
                o_re[f] = g * pr
                o_im[f] = g * pi
                ph_re[f] = pr * st_re[f] - pi * st_im[f]
                ph_im[f] = pr * st_im[f] + pi * st_re[f]


@njit(cache=True, nogil=True, error_model="numpy")
def read_linear(x, ratio, out):  # pragma: no cover - compiled
    """``out[b, m] = x_b(m * ratio[b])`` for ``x, out [B, T]`` float32, ``ratio [B]`` float64:
    linear interpolation between the two neighbouring samples, zero at and past the end. The
    compiled form of :func:`tympan.augment.ops._read` (one pass, no ``[B, T]`` index tensors)."""
    n_clips, n = x.shape
    for b in range(n_clips):
        r = ratio[b]
        xb = x[b]
        ob = out[b]
        for m in range(n):
            pos = m * r
            lo = int(pos)  # floor: pos >= 0
            if lo >= n:
                ob[m] = 0.0
                continue
            a = xb[lo]
            h = xb[lo + 1] if lo + 1 < n else np.float32(0.0)
            ob[m] = a + np.float32(pos - lo) * (h - a)
