"""The embedded corpus: a deterministic, procedural audio corpus that needs no download.

It stands in for the MetaAudio-style datasets that MT-SLVR evaluates on
(``../shared/seeds/000_e1eab6133071efa6.txt``, section "Few-Shot Audio Classification"): a
pretraining pool, and class-disjoint labelled splits from which N-way K-shot episodes are drawn,
so that ``tympan demo``, the end-to-end tests and CI run the whole pipeline offline.

Sound classes
-------------
Eight generative families of five classes each (the ``full`` scale has all 40; ``tiny`` uses
the first six families). Within a family the classes share their generator and differ in one
clear property, so a representation has to attend to that property, not to the family:

``tone``    harmonic tones that differ only in spectral envelope (pure, saw, square, a nasal
            peak near 1 kHz, a brassy peak near 2.5 kHz).
``vowel``   a glottal-like harmonic source shaped by the formants of /a/, /i/, /u/, /e/, /o/.
``chirp``   log-frequency sweeps: up or down, fast or slow, and a continuous up-down glide.
``noise``   noise textures: low, mid and high bands, a broadband notch, sparse crackle.
``clicks``  trains of identical clicks at 3, 6, 12 or 24 per second, or irregular (Poisson).
``amfm``    a tone under slow or fast amplitude modulation, slow or fast frequency modulation,
            or both.
``pluck``   Karplus-Strong strings: nylon, steel (bright, long), muted, bass, repeated strum.
``trill``   bird-like note trains: rapid rising notes, slow falling notes, a warble, a
            descending phrase, a two-note call.

Nuisances
---------
Every clip draws, from its own generator, the variation a good representation must ignore:
length (uniform between the scale's bounds), onset (up to 20% leading silence, never the whole
clip), pitch jitter of up to half a semitone and tempo jitter of up to 5% (both smaller than any
class difference), a reverberation tail (convolution with an exponentially decaying noise
impulse response, RT60 0.05-0.6 s, wet/dry mix drawn), white or pink background noise at an SNR
of 5-40 dB, and a peak gain of -20 to -1 dBFS (so a 16-bit file never clips).

Splits
------
``train``/``val``/``test`` are class-disjoint, about 60/20/20 of the classes, stratified by
family (three/one/one of each family's five classes, chosen by the seed), as in MetaAudio.
``pretrain`` holds *separate* clips of the train classes only, so val/test classes are never
heard during pretraining; its ``label`` column still names the true class, for diagnostics.

Determinism
-----------
Clip ``i`` of class ``c`` is rendered from ``numpy.random.default_rng([seed, c, i])`` alone, so
the corpus does not depend on generation order (which lets it render in parallel), the same seed
gives byte-identical WAV files and manifest (on the same numpy/scipy build), and different seeds
give different corpora.
"""

from __future__ import annotations

import csv
import io
import logging
import multiprocessing
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from scipy.fft import next_fast_len
from scipy.signal import fftconvolve, lfilter
from tqdm.auto import tqdm

from tympan.errors import ConfigError, TympanError

log = logging.getLogger("tympan")

__all__ = ["CORPUS_SCALES", "CorpusSpec", "ensure_corpus", "synth_corpus"]

# The splits, in manifest order.
_SPLITS: tuple[str, ...] = ("train", "val", "test", "pretrain")

_MANIFEST = "manifest.csv"
_AUDIO_DIR = "audio"
# Key of the generator that assigns each family's classes to splits; it cannot collide with a
# clip generator [seed, class, clip] because class indices are small.
_SPLIT_KEY = 1_000_003
# Below this many clips the cost of starting worker processes outweighs the parallel speed-up.
_PARALLEL_MIN_CLIPS = 400


@dataclass(frozen=True)
class CorpusSpec:
    """Size of a synthetic corpus.

    Attributes:
        n_families: how many of the eight sound families to use (the first ``n_families``).
        classes_per_family: classes per family (the first ones), at least 3 so that every
            family has a train, a val and a test class.
        clips_per_class: labelled clips per class in ``train``, ``val`` and ``test``.
        pretrain_clips_per_class: unlabelled-use clips per *train* class in ``pretrain``.
        min_seconds, max_seconds: clip lengths are drawn uniformly in this range.
        sample_rate: in Hz; at least 16000, since the highest designed content is near 7 kHz.
    """

    n_families: int
    classes_per_family: int
    clips_per_class: int
    pretrain_clips_per_class: int
    min_seconds: float
    max_seconds: float
    sample_rate: int = 16000

    def __post_init__(self) -> None:
        if not 1 <= self.n_families <= len(_FAMILIES):
            raise ConfigError(
                f"CorpusSpec.n_families must be in 1..{len(_FAMILIES)}, got {self.n_families}"
            )
        if not 3 <= self.classes_per_family <= 5:
            raise ConfigError(
                f"CorpusSpec.classes_per_family must be in 3..5 (one train, val and test class "
                f"per family at least), got {self.classes_per_family}"
            )
        if self.clips_per_class < 1 or self.pretrain_clips_per_class < 0:
            raise ConfigError(
                "CorpusSpec.clips_per_class must be >= 1 and pretrain_clips_per_class >= 0, got "
                f"{self.clips_per_class} and {self.pretrain_clips_per_class}"
            )
        if not 0.25 <= self.min_seconds <= self.max_seconds:
            raise ConfigError(
                "CorpusSpec needs 0.25 <= min_seconds <= max_seconds, got "
                f"{self.min_seconds} and {self.max_seconds}"
            )
        if self.sample_rate < 16000:
            raise ConfigError(f"CorpusSpec.sample_rate must be >= 16000 Hz, got {self.sample_rate}")

    @property
    def n_classes(self) -> int:
        """Number of sound classes in the corpus."""
        return self.n_families * self.classes_per_family


# ------------------------------------------------------------------------------------------
# Signal helpers. Every renderer takes (rng, n, sr, pitch, tempo, **class params) and returns
# n float64 samples of the dry source; `pitch` (about +-0.5 semitone) scales frequencies and
# `tempo` (about +-5%) scales rates: those are nuisances, the class params are the class.
# ------------------------------------------------------------------------------------------

_TABLE_SIZE = 4096


def _time(n: int, sr: int) -> np.ndarray:
    return np.arange(n) / sr


def _cycles(freq: np.ndarray, sr: int) -> np.ndarray:
    """Running phase in cycles of an instantaneous-frequency track (Hz per sample)."""
    return np.cumsum(freq) / sr


def _harmonic_osc(amps: np.ndarray, cycles: np.ndarray) -> np.ndarray:
    """Band-limited periodic waveform with harmonic amplitudes ``amps`` (k = 1, 2, ...).

    One period is built by inverse FFT and read with linear interpolation: one table lookup per
    sample instead of one sine per harmonic per sample, which keeps 60-harmonic vowels cheap.
    """
    spec = np.zeros(_TABLE_SIZE // 2 + 1, dtype=complex)
    spec[1 : len(amps) + 1] = -1j * np.asarray(amps) * (_TABLE_SIZE / 2)  # sine phases
    table = np.fft.irfft(spec, _TABLE_SIZE)
    table = np.append(table, table[0])  # wrap-around point for the interpolation
    pos = (cycles % 1.0) * _TABLE_SIZE
    i0 = pos.astype(np.int64)
    frac = pos - i0
    return table[i0] + frac * (table[i0 + 1] - table[i0])


def _n_harmonics(f0_max: float, sr: int) -> int:
    # Keep every harmonic below 0.45 sr so nothing aliases, even at the top of the vibrato.
    return max(1, min(_TABLE_SIZE // 2 - 1, int(0.45 * sr / f0_max)))


def _vibrato(rng: np.random.Generator, n: int, sr: int, max_semitones: float) -> np.ndarray:
    """A natural, small, random vibrato factor (nuisance, well below class differences)."""
    depth = rng.uniform(0.0, max_semitones)
    rate = rng.uniform(4.0, 6.5)
    phase = rng.uniform(0.0, 2 * np.pi)
    return 2.0 ** (depth / 12 * np.sin(2 * np.pi * rate * _time(n, sr) + phase))


def _ar_envelope(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Linear attack and release with drawn times, for sustained sounds."""
    t = _time(n, sr)
    attack = rng.uniform(0.01, 0.08)
    release = rng.uniform(0.05, 0.3)
    return np.clip(np.minimum(t / attack, (n / sr - t) / release), 0.0, 1.0)


def _smooth_random(rng: np.random.Generator, n: int, sr: int, rate_hz: float) -> np.ndarray:
    """A slowly wandering curve in [-1, 1]: random points at ``rate_hz``, linearly joined."""
    knots = int(np.ceil(n / sr * rate_hz)) + 2
    values = rng.uniform(-1.0, 1.0, knots)
    return np.interp(_time(n, sr) * rate_hz, np.arange(knots), values)


def _band_mask(freqs: np.ndarray, lo: float, hi: float, edge_oct: float = 0.2) -> np.ndarray:
    """Pass band [lo, hi] Hz with raised-cosine skirts ``edge_oct`` octaves wide outside it."""
    lf = np.log2(np.maximum(freqs, 1.0))
    rise = np.clip((lf - np.log2(lo)) / edge_oct + 1.0, 0.0, 1.0)
    fall = np.clip((np.log2(hi) - lf) / edge_oct + 1.0, 0.0, 1.0)
    return 0.5 - 0.5 * np.cos(np.pi * np.minimum(rise, fall))


def _shape_spectrum(x: np.ndarray, sr: int, gain: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Filter ``x`` by multiplying its spectrum by ``gain(freqs)`` (zero-phase, one FFT)."""
    n = len(x)
    m = next_fast_len(n, real=True)  # zero-padded to a fast FFT size (n may be prime)
    freqs = np.fft.rfftfreq(m, 1.0 / sr)
    return np.fft.irfft(np.fft.rfft(x, m) * gain(freqs), m)[:n]


def _note_pattern(
    n: int,
    sr: int,
    period: float,
    notes: list[tuple[float, float, float, float]],
    edge: float,
    harmonics: tuple[float, ...] = (1.0,),
) -> np.ndarray:
    """A repeating pattern of gliding notes.

    ``notes`` holds ``(start, duration, f_start, f_end)`` in seconds and Hz within one pattern
    of ``period`` seconds; each note glides log-linearly from ``f_start`` to ``f_end`` and has
    raised-cosine edges of ``edge`` seconds. The loop runs over the (few) notes of the pattern,
    never over samples.
    """
    tm = _time(n, sr) % period
    freq = np.zeros(n)
    amp = np.zeros(n)
    for start, dur, f_start, f_end in notes:
        m = (tm >= start) & (tm < start + dur)
        u = (tm[m] - start) / dur
        freq[m] = f_start * (f_end / f_start) ** u
        e = np.clip(np.minimum(u, 1.0 - u) * dur / edge, 0.0, 1.0)
        amp[m] = 0.5 - 0.5 * np.cos(np.pi * e)
    phase = 2 * np.pi * _cycles(freq, sr)
    out = np.zeros(n)
    for k, h in enumerate(harmonics, start=1):
        out += h * np.sin(k * phase) * (k * freq < 0.45 * sr)
    return amp * out


# ------------------------------------------------------------------------------------------
# Families
# ------------------------------------------------------------------------------------------


def _render_tone(
    rng: np.random.Generator, n: int, sr: int, pitch: float, tempo: float, *, envelope: str
) -> np.ndarray:
    """Harmonic tone at a fixed family pitch; classes differ only in spectral envelope."""
    f0 = 220.0 * pitch
    vib = _vibrato(rng, n, sr, 0.15)
    k = np.arange(1, _n_harmonics(f0 * vib.max(), sr) + 1, dtype=float)
    fk = k * f0
    if envelope == "pure":
        amps = np.select([k == 1, k == 2, k == 3], [1.0, 0.12, 0.04], 0.0)
    elif envelope == "saw":
        amps = 1.0 / k
    elif envelope == "square":
        amps = np.where(k % 2 == 1, 1.0 / k, 0.0)
    else:  # a resonance peak, in log frequency, on a gently falling floor
        centre = {"nasal": 1100.0, "brass": 2500.0}[envelope]
        peak = np.exp(-0.5 * (np.log2(fk / centre) / 0.3) ** 2)
        amps = 0.08 / k + peak / np.sqrt(k)
    return _ar_envelope(rng, n, sr) * _harmonic_osc(amps, _cycles(f0 * vib, sr))


def _render_vowel(
    rng: np.random.Generator,
    n: int,
    sr: int,
    pitch: float,
    tempo: float,
    *,
    formants: tuple[float, ...],
) -> np.ndarray:
    """Source-filter vowel: a 1/k harmonic source weighted by three formant resonances."""
    f0 = 130.0 * pitch
    vib = _vibrato(rng, n, sr, 0.2)
    k = np.arange(1, _n_harmonics(f0 * vib.max(), sr) + 1, dtype=float)
    fk = k * f0
    # Speaker variation: formants move by a few percent, far less than between vowels.
    shift = rng.uniform(0.96, 1.04)
    amps = 1.0 / k
    for formant, bandwidth in zip(formants, (80.0, 100.0, 130.0)):
        f_res = formant * shift
        amps = amps * f_res**2 / np.sqrt((f_res**2 - fk**2) ** 2 + (bandwidth * fk) ** 2)
    return _ar_envelope(rng, n, sr) * _harmonic_osc(amps, _cycles(f0 * vib, sr))


def _render_chirp(
    rng: np.random.Generator,
    n: int,
    sr: int,
    pitch: float,
    tempo: float,
    *,
    direction: str,
    period: float,
) -> np.ndarray:
    """Repeated log-frequency sweeps over three octaves (400-3200 Hz)."""
    lo, hi = 400.0 * pitch, 3200.0 * pitch
    period = period / tempo
    if direction == "updown":  # a continuous glide, no gaps
        notes = [(0.0, period / 2, lo, hi), (period / 2, period / 2, hi, lo)]
    else:
        f_start, f_end = (lo, hi) if direction == "up" else (hi, lo)
        notes = [(0.0, 0.75 * period, f_start, f_end)]
    return _note_pattern(n, sr, period, notes, edge=0.008, harmonics=(1.0, 0.2))


def _render_noise(
    rng: np.random.Generator,
    n: int,
    sr: int,
    pitch: float,
    tempo: float,
    *,
    band: tuple[float, float],
    notch: tuple[float, float] | None = None,
    crackle: bool = False,
) -> np.ndarray:
    """Band-shaped noise textures with a slow random level wander."""
    lo, hi = band[0] * pitch, min(band[1] * pitch, 0.47 * sr)
    if crackle:
        # Sparse impulses of very uneven size (fire, rain on a window).
        source = np.zeros(n)
        count = rng.poisson(60.0 * tempo * n / sr)
        sizes = rng.lognormal(0.0, 0.8, count) * rng.choice([-1.0, 1.0], count)
        source[rng.integers(0, n, count)] = sizes
    else:
        source = rng.standard_normal(n)

    def gain(freqs: np.ndarray) -> np.ndarray:
        g = _band_mask(freqs, lo, hi)
        if notch is not None:
            g = g * (1.0 - _band_mask(freqs, notch[0] * pitch, notch[1] * pitch, edge_oct=0.15))
        return g

    wander = 1.0 + 0.4 * _smooth_random(rng, n, sr, 3.0)
    return wander * _shape_spectrum(source, sr, gain)


def _render_clicks(
    rng: np.random.Generator, n: int, sr: int, pitch: float, tempo: float, *, rate: float | None
) -> np.ndarray:
    """Identical short clicks at a fixed rate (or Poisson at 8/s when ``rate`` is None)."""
    seconds = n / sr
    if rate is None:
        gaps = np.maximum(rng.exponential(1.0 / (8.0 * tempo), int(seconds * 40) + 8), 0.02)
        times = np.cumsum(gaps) - gaps[0] * rng.uniform(0.0, 1.0)
    else:
        r = rate * tempo
        idx = np.arange(int(seconds * r) + 2)
        # A little timing jitter (2% of the period) so trains are not perfectly mechanical.
        times = (idx + rng.uniform(0.0, 0.5) + rng.uniform(-0.02, 0.02, len(idx))) / r
    pos = np.round(times * sr).astype(np.int64)
    keep = (pos >= 0) & (pos < n)
    impulses = np.zeros(n)
    np.add.at(impulses, pos[keep], rng.uniform(0.7, 1.0, int(keep.sum())))
    t = _time(int(0.012 * sr), sr)
    kernel = np.sin(2 * np.pi * 2500.0 * pitch * t) * np.exp(-t / 0.0015)
    kernel += 0.3 * rng.standard_normal(len(t)) * np.exp(-t / 0.0008)
    return fftconvolve(impulses, kernel)[:n]


def _render_amfm(
    rng: np.random.Generator,
    n: int,
    sr: int,
    pitch: float,
    tempo: float,
    *,
    am_rate: float = 0.0,
    am_depth: float = 0.0,
    fm_rate: float = 0.0,
    fm_semitones: float = 0.0,
) -> np.ndarray:
    """A 700 Hz tone (with a weak 2nd harmonic) under amplitude and/or frequency modulation."""
    t = _time(n, sr)
    depth_jitter = rng.uniform(0.9, 1.1)
    fm_wave = np.sin(2 * np.pi * fm_rate * tempo * t + rng.uniform(0, 2 * np.pi))
    am_wave = np.sin(2 * np.pi * am_rate * tempo * t + rng.uniform(0, 2 * np.pi))
    fm = 2.0 ** (fm_semitones * depth_jitter / 12 * fm_wave)
    phase = 2 * np.pi * _cycles(700.0 * pitch * fm, sr)
    carrier = np.sin(phase) + 0.3 * np.sin(2 * phase)
    am = 1.0 - am_depth * depth_jitter * (0.5 + 0.5 * am_wave)
    return _ar_envelope(rng, n, sr) * am * carrier


def _render_pluck(
    rng: np.random.Generator,
    n: int,
    sr: int,
    pitch: float,
    tempo: float,
    *,
    f0: float,
    t60: float,
    brightness: float,
    bright_excitation: bool,
    repeat: float | None = None,
) -> np.ndarray:
    """Karplus-Strong string: a noise burst circulating in a damped delay line.

    ``y[j] = x[j] + g (b y[j-L] + (1-b) y[j-L-1])``: ``g`` sets the decay time ``t60`` and
    ``b`` (0.5 = the classic two-point average) how fast high harmonics die. Samples of one
    period depend only on earlier periods, so the recursion runs one vectorised period at a time.
    """
    period = max(2, int(round(sr / (f0 * pitch))))
    g = 10.0 ** (-3.0 / (t60 * f0 * pitch))
    b = brightness
    excitation = np.zeros(n)
    starts = [0] if repeat is None else list(range(0, n, max(period, int(repeat / tempo * sr))))
    for start in starts:
        burst = rng.uniform(-1.0, 1.0, period)
        if not bright_excitation:  # a soft pluck (finger rather than pick): low-passed burst
            burst = lfilter([0.25, 0.5, 0.25], [1.0], burst)
        burst -= burst.mean()  # no DC, which the loop would otherwise sustain
        stop = min(n, start + period)
        excitation[start:stop] += burst[: stop - start] * rng.uniform(0.8, 1.0)
    y = np.zeros(n + period + 1)  # y[j] lives at y[j + period + 1]; the head is the zero past
    for start in range(0, n, period):
        m = min(period, n - start)
        y[start + period + 1 : start + period + 1 + m] = excitation[start : start + m] + g * (
            b * y[start + 1 : start + 1 + m] + (1.0 - b) * y[start : start + m]
        )
    return y[period + 1 :]


def _render_trill(
    rng: np.random.Generator, n: int, sr: int, pitch: float, tempo: float, *, kind: str
) -> np.ndarray:
    """Bird-like calls: trains of short gliding notes between 2 and 5 kHz."""
    p = pitch
    if kind == "warble":  # a continuous tone under fast, deep FM
        t = _time(n, sr)
        freq = 3200.0 * p * 2.0 ** (0.25 * np.sin(2 * np.pi * 25.0 * tempo * t))
        phase = 2 * np.pi * _cycles(freq, sr)
        second = 0.15 * np.sin(2 * phase) * (2 * freq < 0.45 * sr)
        return _ar_envelope(rng, n, sr) * (np.sin(phase) + second)
    if kind == "rapid":  # 18 rising notes per second
        period = 1.0 / 18.0
        notes = [(0.0, 0.6 * period, 2600.0 * p, 3600.0 * p)]
    elif kind == "slow":  # 6 falling notes per second
        period = 1.0 / 6.0
        notes = [(0.0, 0.7 * period, 4500.0 * p, 2500.0 * p)]
    elif kind == "descending":  # a phrase of 8 notes stepping down an octave, then a pause
        period = 1.2
        notes = [
            (0.1 * j, 0.06, 5000.0 * p * 2.0 ** (-j / 8), 5000.0 * p * 2.0 ** (-j / 8) * 0.97)
            for j in range(8)
        ]
    elif kind == "twonote":  # "tea-cher": a short high note then a longer low one
        period = 0.5
        notes = [(0.0, 0.12, 4200.0 * p, 4000.0 * p), (0.15, 0.18, 2800.0 * p, 2900.0 * p)]
    else:
        raise ValueError(kind)
    notes = [(s / tempo, d / tempo, f1, f2) for s, d, f1, f2 in notes]
    return _note_pattern(n, sr, period / tempo, notes, edge=0.004, harmonics=(1.0, 0.15))


_Renderer = Callable[..., np.ndarray]


def _pluck(f0: float, **params: Any) -> dict[str, Any]:
    return {"f0": f0, **params}

# (family, renderer, [(label, class params), ...]); order is part of the corpus definition.
_FAMILIES: list[tuple[str, _Renderer, list[tuple[str, dict[str, Any]]]]] = [
    (
        "tone",
        _render_tone,
        [
            ("tone_pure", {"envelope": "pure"}),
            ("tone_saw", {"envelope": "saw"}),
            ("tone_square", {"envelope": "square"}),
            ("tone_nasal", {"envelope": "nasal"}),
            ("tone_brass", {"envelope": "brass"}),
        ],
    ),
    (
        "vowel",
        _render_vowel,
        [  # Peterson & Barney (1952) average adult male formants F1, F2, F3
            ("vowel_a", {"formants": (730.0, 1090.0, 2440.0)}),
            ("vowel_i", {"formants": (270.0, 2290.0, 3010.0)}),
            ("vowel_u", {"formants": (300.0, 870.0, 2240.0)}),
            ("vowel_e", {"formants": (530.0, 1840.0, 2480.0)}),
            ("vowel_o", {"formants": (570.0, 840.0, 2410.0)}),
        ],
    ),
    (
        "chirp",
        _render_chirp,
        [
            ("chirp_up_fast", {"direction": "up", "period": 0.25}),
            ("chirp_up_slow", {"direction": "up", "period": 1.0}),
            ("chirp_down_fast", {"direction": "down", "period": 0.25}),
            ("chirp_down_slow", {"direction": "down", "period": 1.0}),
            ("chirp_updown", {"direction": "updown", "period": 0.6}),
        ],
    ),
    (
        "noise",
        _render_noise,
        [
            ("noise_low", {"band": (120.0, 450.0)}),
            ("noise_mid", {"band": (700.0, 1800.0)}),
            ("noise_high", {"band": (3000.0, 6500.0)}),
            ("noise_notch", {"band": (100.0, 7000.0), "notch": (700.0, 2800.0)}),
            ("noise_crackle", {"band": (1000.0, 7000.0), "crackle": True}),
        ],
    ),
    (
        "clicks",
        _render_clicks,
        [
            ("clicks_3hz", {"rate": 3.0}),
            ("clicks_6hz", {"rate": 6.0}),
            ("clicks_12hz", {"rate": 12.0}),
            ("clicks_24hz", {"rate": 24.0}),
            ("clicks_random", {"rate": None}),
        ],
    ),
    (
        "amfm",
        _render_amfm,
        [
            ("amfm_am_4hz", {"am_rate": 4.0, "am_depth": 0.9}),
            ("amfm_am_16hz", {"am_rate": 16.0, "am_depth": 0.9}),
            ("amfm_fm_4hz", {"fm_rate": 4.0, "fm_semitones": 2.0}),
            ("amfm_fm_16hz", {"fm_rate": 16.0, "fm_semitones": 1.0}),
            (
                "amfm_both_8hz",
                {"am_rate": 8.0, "am_depth": 0.6, "fm_rate": 8.0, "fm_semitones": 1.0},
            ),
        ],
    ),
    (
        "pluck",
        _render_pluck,
        [
            ("pluck_nylon", _pluck(196.0, t60=1.2, brightness=0.5, bright_excitation=False)),
            ("pluck_steel", _pluck(196.0, t60=3.0, brightness=0.9, bright_excitation=True)),
            ("pluck_muted", _pluck(196.0, t60=0.12, brightness=0.5, bright_excitation=False)),
            ("pluck_bass", _pluck(82.0, t60=2.0, brightness=0.5, bright_excitation=False)),
            (
                "pluck_strum",
                _pluck(196.0, t60=0.8, brightness=0.6, bright_excitation=True, repeat=0.25),
            ),
        ],
    ),
    (
        "trill",
        _render_trill,
        [
            ("trill_rapid", {"kind": "rapid"}),
            ("trill_slow", {"kind": "slow"}),
            ("trill_warble", {"kind": "warble"}),
            ("trill_descending", {"kind": "descending"}),
            ("trill_twonote", {"kind": "twonote"}),
        ],
    ),
]

_CLASSES_PER_FAMILY = 5


def _class_id(family: int, k: int) -> int:
    """Global class index: stable across scales, so scale "tiny" is a subset of "full"."""
    return family * _CLASSES_PER_FAMILY + k


def _class_entry(class_id: int) -> tuple[str, _Renderer, str, dict[str, Any]]:
    family, renderer, classes = _FAMILIES[class_id // _CLASSES_PER_FAMILY]
    label, params = classes[class_id % _CLASSES_PER_FAMILY]
    return family, renderer, label, params


# ------------------------------------------------------------------------------------------
# Nuisances and one clip
# ------------------------------------------------------------------------------------------


def _pink_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """1/f noise by spectral shaping of white noise (made at a fast FFT size, then cut)."""
    m = next_fast_len(n, real=True)
    spec = np.fft.rfft(rng.standard_normal(m))
    spec[1:] /= np.sqrt(np.arange(1, len(spec)))
    spec[0] = 0.0
    return np.fft.irfft(spec, m)[:n]


def _render_clip(spec: CorpusSpec, seed: int, class_id: int, clip: int) -> np.ndarray:
    """Clip ``clip`` of class ``class_id``: float64 samples, peak in [-20, -1] dBFS."""
    _, renderer, _, params = _class_entry(class_id)
    sr = spec.sample_rate
    rng = np.random.default_rng([seed, class_id, clip])
    n = int(round(rng.uniform(spec.min_seconds, spec.max_seconds) * sr))
    # Leading silence up to a fifth of the clip: the sound always fills most of it.
    onset = int(rng.uniform(0.0, 0.2) * n)
    pitch = 2.0 ** (rng.uniform(-0.5, 0.5) / 12.0)
    tempo = rng.uniform(0.95, 1.05)

    source = renderer(rng, n - onset, sr, pitch, tempo, **params)
    fade = min(len(source) // 4, int(0.005 * sr))  # 5 ms fades: no click at either end
    ramp = 0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, fade))
    source[:fade] *= ramp
    source[len(source) - fade :] *= ramp[::-1]
    dry = np.zeros(n)
    dry[onset:] = source / (np.sqrt(np.mean(source**2)) + 1e-12)

    # Room: exponentially decaying noise (-60 dB at rt60), unit energy so the wet path keeps
    # roughly the dry level; a power-preserving wet/dry mix.
    rt60 = rng.uniform(0.05, 0.6)
    ir_t = _time(max(2, int(rt60 * sr)), sr)
    ir = rng.standard_normal(len(ir_t)) * np.exp(-6.908 * ir_t / rt60)
    ir /= np.sqrt(np.sum(ir**2))
    wet = rng.uniform(0.0, 0.6)
    signal = np.sqrt(1.0 - wet) * dry + np.sqrt(wet) * fftconvolve(dry, ir)[:n]

    # Background: white or pink noise over the whole clip, SNR against the sounding part.
    snr_db = rng.uniform(5.0, 40.0)
    noise = rng.standard_normal(n) if rng.random() < 0.5 else _pink_noise(rng, n)
    signal_power = np.mean(signal[onset:] ** 2)
    noise *= np.sqrt(signal_power / 10.0 ** (snr_db / 10.0) / (np.mean(noise**2) + 1e-20))
    mix = signal + noise

    peak_db = rng.uniform(-20.0, -1.0)  # at most -1 dBFS: 16-bit PCM never clips
    return mix * (10.0 ** (peak_db / 20.0) / np.max(np.abs(mix)))


def _write_clip(task: tuple[CorpusSpec, int, int, int, str]) -> None:
    """Render one clip and write it as 16-bit PCM (the worker-process entry point)."""
    spec, seed, class_id, clip, path = task
    wav = _render_clip(spec, seed, class_id, clip)
    # Quantise ourselves (round to nearest) so the bytes do not depend on libsndfile's rules.
    pcm = np.round(wav * 32767.0).astype(np.int16)
    sf.write(path, pcm, spec.sample_rate, subtype="PCM_16", format="WAV")


# ------------------------------------------------------------------------------------------
# The corpus
# ------------------------------------------------------------------------------------------


def _assign_splits(spec: CorpusSpec, seed: int) -> dict[int, str]:
    """Class id -> train/val/test: per family, about 20% val, 20% test, the rest train."""
    k = spec.classes_per_family
    n_held = max(1, int(round(0.2 * k)))
    splits: dict[int, str] = {}
    for family in range(spec.n_families):
        order = np.random.default_rng([seed, _SPLIT_KEY, family]).permutation(k)
        for rank, j in enumerate(order):
            split = "val" if rank < n_held else "test" if rank < 2 * n_held else "train"
            splits[_class_id(family, int(j))] = split
    return splits


def _plan(spec: CorpusSpec, seed: int) -> list[tuple[str, str, str, str, int, int]]:
    """Manifest rows ``(path, label, split, track, class_id, clip)`` in manifest order.

    A class's labelled clips are numbered 0..clips_per_class-1 and its pretrain clips follow,
    so every clip has its own generator and its own file stem (the track id).
    """
    class_split = _assign_splits(spec, seed)
    rows = []
    for split in _SPLITS:
        for class_id in sorted(class_split):
            _, _, label, _ = _class_entry(class_id)
            if split == "pretrain":
                if class_split[class_id] != "train":
                    continue
                first = spec.clips_per_class
                clips = range(first, first + spec.pretrain_clips_per_class)
            elif class_split[class_id] == split:
                clips = range(spec.clips_per_class)
            else:
                continue
            for clip in clips:
                track = f"{label}_{clip:04d}"
                path = f"{_AUDIO_DIR}/{split}/{label}/{track}.wav"
                rows.append((path, label, split, track, class_id, clip))
    return rows


def _can_fork() -> bool:
    """Whether worker processes may be forked here: only on Linux (cheap, and no re-import of
    the caller's script), and never from a daemonic process, which may not have children."""
    return sys.platform.startswith("linux") and not multiprocessing.current_process().daemon


def _n_workers(n_items: int, min_items: int = _PARALLEL_MIN_CLIPS) -> int:
    """Worker processes: one per available core (at most 8), or none below ``min_items`` items
    or where :func:`_can_fork` says no."""
    if n_items < min_items or not _can_fork():
        return 1
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 8))


def render_parallel(
    fn: Callable[[Any], Any], tasks: list[Any], *, progress: bool, desc: str, unit: str,
    min_parallel: int = _PARALLEL_MIN_CLIPS, chunksize: int = 1, workers: int | None = None,
) -> list[Any]:
    """``[fn(t) for t in tasks]`` in forked worker processes, in order, with a progress bar.
    ``workers``: ``None`` picks :func:`_n_workers`; a number asks for exactly that many (``1``:
    in this process; forking only where :func:`_can_fork` allows it). ``fn`` must be a
    module-level function (the embedded corpora's renderers)."""
    if workers is None:
        workers = _n_workers(len(tasks), min_parallel)
    elif workers > 1 and not _can_fork():
        workers = 1  # no fork here (not Linux, or a daemonic process)
    with tqdm(total=len(tasks), desc=desc, unit=unit, disable=not progress) as bar:
        if workers == 1:
            results = []
            for task in tasks:
                results.append(fn(task))
                bar.update()
            return results
        with warnings.catch_warnings():
            # Python >= 3.12 warns about fork() in a threaded process; the workers only run
            # numpy/scipy/libsndfile code of the corpus modules and take no lock of the parent.
            warnings.simplefilter("ignore", DeprecationWarning)
            context = multiprocessing.get_context("fork")
            with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
                results = []
                for result in pool.map(fn, tasks, chunksize=chunksize):
                    results.append(result)
                    bar.update()
                return results


def remove_stale_clips(root: Path, new_paths: set[str], *, prune_folders: bool = True) -> None:
    """Delete the WAV files under ``root/audio/`` that the previous manifest of ``root`` lists
    but the new corpus (``new_paths``, relative) does not, and with ``prune_folders`` their
    folder and its parent if now empty. Only our own files: no path out of the folder."""
    for rel in _old_paths(root / _MANIFEST):
        ours = rel.startswith(f"{_AUDIO_DIR}/") and rel.endswith(".wav")
        if not ours or rel in new_paths or ".." in Path(rel).parts:
            continue
        try:
            (root / rel).unlink(missing_ok=True)
        except OSError:
            continue
        if prune_folders:
            for folder in ((root / rel).parent, (root / rel).parent.parent):
                try:  # a class, speaker or split folder the new corpus does not use
                    folder.rmdir()
                except OSError:
                    break


def _old_paths(manifest: Path) -> Iterator[str]:
    """Relative paths listed by a previous manifest (none if it is unreadable)."""
    try:
        with open(manifest, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                yield row.get("path") or ""
    except (OSError, UnicodeDecodeError, csv.Error):
        return


def check_corpus_args(
    scale: str, scales: Mapping[str, Any], seed: Any, out: str | Path, what: str
) -> None:
    """The checks every embedded-corpus generator makes before writing (``what`` names it)."""
    if scale not in scales:
        choices = ", ".join(sorted(scales))
        raise ConfigError(f"unknown {what} scale {scale!r}; choose one of {choices}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"{what} seed must be a non-negative integer, got {seed!r}")
    root = Path(out)
    if root.exists() and not root.is_dir():
        raise TympanError(f"{root}: exists and is not a folder; give a folder for the corpus")


def synth_corpus(
    out: str | Path, *, seed: int = 0, scale: str = "full", progress: bool = True
) -> Path:
    """Write WAV files + manifest.csv under `out`; return the manifest path.

    Args:
        out: folder to write into (created if needed). Audio goes to
            ``out/audio/<split>/<label>/<label>_<clip>.wav`` and the manifest, with columns
            ``path,label,split,track`` (paths relative to ``out``), to ``out/manifest.csv``.
        seed: non-negative integer; the same seed gives byte-identical files, and also decides
            which classes are train, val and test.
        scale: a key of :data:`CORPUS_SCALES`: ``"full"`` (40 classes, 1-5 s clips, ~1900
            clips, under a minute on two cores) or ``"tiny"`` (30 classes, short clips, a few
            seconds; for tests).
        progress: show a progress bar.

    Re-running into the same folder overwrites it with the same result; WAV files listed by a
    previous manifest under ``out/audio`` but not in the new corpus are deleted.

    Raises:
        TympanError: unknown scale, negative seed, or ``out`` is an existing file.
    """
    check_corpus_args(scale, CORPUS_SCALES, seed, out, "corpus")
    spec = CORPUS_SCALES[scale]
    root = Path(out)
    if (root / _MANIFEST).is_dir():
        raise TympanError(f"{root / _MANIFEST}: is a folder; remove it or choose another folder")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = exc.strerror or exc
        raise TympanError(f"{root}: cannot create the corpus folder ({reason})") from exc

    rows = _plan(spec, int(seed))
    for folder in sorted({str(Path(path).parent) for path, *_ in rows}):
        try:
            (root / folder).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            reason = exc.strerror or exc
            raise TympanError(f"{root / folder}: cannot create folder ({reason})") from exc
    tasks = [
        (spec, int(seed), class_id, clip, str(root / path))
        for path, _, _, _, class_id, clip in rows
    ]
    render_parallel(_write_clip, tasks, progress=progress, desc="synth corpus", unit="clip",
                    chunksize=8)

    manifest = root / _MANIFEST
    remove_stale_clips(root, {path for path, *_ in rows})

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "label", "split", "track"])
    writer.writerows(row[:4] for row in rows)
    # Written last and atomically: a manifest always describes a complete corpus.
    tmp = root / f".{_MANIFEST}.tmp"
    tmp.write_text(buffer.getvalue(), encoding="utf-8")
    os.replace(tmp, manifest)
    return manifest


#: Corpus sizes by name. ``full``: 8 families x 5 classes (24 train / 8 val / 8 test classes),
#: 24 labelled clips per class and 40 pretrain clips per train class (1920 clips, 1-5 s).
#: ``tiny``: 6 families x 5 classes (18 / 6 / 6), 6 labelled clips per class and 2 pretrain
#: clips per train class (216 clips, 1-1.5 s), enough for 5-way episodes in tests.
CORPUS_SCALES: dict[str, CorpusSpec] = {
    "full": CorpusSpec(
        n_families=8,
        classes_per_family=5,
        clips_per_class=24,
        pretrain_clips_per_class=40,
        min_seconds=1.0,
        max_seconds=5.0,
    ),
    "tiny": CorpusSpec(
        n_families=6,
        classes_per_family=5,
        clips_per_class=6,
        pretrain_clips_per_class=2,
        min_seconds=1.0,
        max_seconds=1.5,
    ),
}


def ensure_corpus(
    folder: str | Path, make: Callable[..., Path] | None = None, *, seed: int = 0,
    progress: bool = True,
) -> Path:
    """``folder/manifest.csv``, generated with ``make`` (default :func:`synth_corpus`) unless it
    is already there; the demo and the reproductions share a corpus between runs this way."""
    manifest = Path(folder) / _MANIFEST
    if not manifest.is_file():
        log.info("generating the embedded corpus in %s", folder)
        (make or synth_corpus)(folder, seed=seed, progress=progress)
    return manifest
