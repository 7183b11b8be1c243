"""The embedded speech corpus: deterministic spoken words by synthetic speakers.

It stands in for the speech downstream tasks of the pretext-task selection study
(``../shared/seeds/004_f3e19d7efff003e6.txt``, "Pretext-task selection by conditional
independence", section V, downstream tasks: speech recognition, speaker recognition on
VoxCeleb, emotion recognition): every utterance has a **word** (its label), a **speaker** with a
voice of their own, and the nuisances of a recording. A representation can then be probed for
word recognition and scored by speaker-verification EER on speakers it never heard, offline and
in well under a minute.

Speakers
--------
Speaker ``s`` draws a voice from ``numpy.random.default_rng([seed, 1000033, s])``; its sex
alternates with ``s`` (even: male-like, odd: female-like) so both kinds are always present:

* mean F0: 90-150 Hz (male-like) or 165-250 Hz (female-like), log-uniform; an intonation range
  of 1.5-6 semitones (falling, with a random wander);
* vocal-tract length, as a **formant scale** of 0.88-1.02 (male-like) or 1.08-1.22
  (female-like) applied to every formant, plus a personal offset of each of F1-F4 (+-5%, an
  accent) and a bandwidth scale of 0.8-1.4;
* glottal **spectral tilt** (harmonic ``k`` has amplitude ``k ** -tilt``, tilt 0.5-2) and
  **breathiness** (aspiration noise under the voicing, -32 to -12 dB);
* a personal **timbre**: four smooth peaks or dips (+-15 dB, 0.4-1 octave wide, 300 Hz-6 kHz)
  in the voice's spectrum, standing for individual anatomy (sinuses, hypopharynx, nasal
  coupling). It is what makes speakers tell apart in mean MFCCs, across words;
* **jitter** (0.2-2% cycle-to-cycle F0 perturbation) and **shimmer** (1-8% amplitude);
* **speaking rate** (0.8-1.25: phone durations are divided by it).

Words
-----
:data:`SPEECH_WORDS` is a ten-word command vocabulary (``yes``, ``no``, ``up``, ``down``, ...),
each a phone sequence (:data:`WORD_PHONES`). Vowels and approximants are formant-filtered
glottal pulse trains (Peterson & Barney formant targets, scaled by the speaker), nasals a
low-passed murmur, fricatives band-limited noise (``s`` 3.8-7.5 kHz, ``f`` weak and broad),
stops a closure, a burst in the band of their place of articulation and, when voiceless, an
aspiration. Formants move linearly between phone targets (coarticulation), so ``no`` and ``on``
share phones but not their order.

Synthesis is source-filter in the short-time Fourier domain: a voiced source (band-limited
harmonic oscillator with jitter and shimmer), an aspiration noise and a frication noise, each
with its own sample-accurate amplitude envelope, are transformed once (512-point STFT, hop
128) and multiplied by per-frame spectral envelopes (formant resonances, nasal murmur,
fricative bands), then inverted once. Everything per clip is array code; no per-sample loops.

Nuisances
---------
Every utterance draws, from ``default_rng([seed, s, u])``: its length (uniform between the
scale's bounds, never shorter than the word plus 50 ms either side) and the word's onset, an
F0 offset of +-1 semitone and a rate change of +-10% (the same speaker on another day), phone
durations +-15%, a microphone tilt of +-1 dB per octave, a room (decaying-noise impulse
response, RT60 0.1-0.6 s, wet 0-40%), white or pink background noise at an SNR of 15-40 dB
(against the speech), and a peak level of -20 to -1 dBFS.

Splits
------
A quarter of the speakers (at least two, half of each sex; chosen by the seed) are **held out**:
all their utterances form the ``verify`` split and appear nowhere else, so speaker-verification
trials (:mod:`tympan.evaluation.verification`) are scored on voices that neither pretraining
nor a probe has heard. The other, **seen** speakers supply:

* ``train`` / ``val`` / ``test``: ``utterances`` labelled utterances per speaker, about
  60/20/20 per speaker (utterances 0..k-1 test, the next k val, the rest train, k = 20%). The
  splits are utterance-disjoint but share speakers, so a word probe *and* a closed-set
  speaker-identification probe (``speaker`` as the label) can both be trained and tested.
* ``pretrain``: ``pretrain_utterances`` further utterances per seen speaker, for
  self-supervised pretraining; their ``label`` still names the word, for diagnostics.

The ``n``-th utterance of a split (in manifest order: speaker, then utterance) says word
``n mod 10``, so every split holds every word equally often, to within one utterance, and each
speaker says a run of consecutive words (all ten when it has ten utterances in the split).

Files
-----
``out/audio/<split>/<speaker>/<speaker>_<uuu>.wav`` (16-bit PCM mono, 16 kHz),
``out/manifest.csv`` with columns ``path,label,split,track,speaker`` (``label`` = word,
``track`` = utterance id) and ``out/speakers.json`` with every speaker's voice and every
utterance's word, phone timings and nuisances (useful as pretext-task labels or for analysis).

Determinism
-----------
Rendering depends only on ``(seed, speaker, utterance)`` and the planned word, so clips render
in parallel in any order, the same seed gives byte-identical files (on the same numpy/scipy
build) and another seed another corpus.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from scipy.signal import fftconvolve, istft, stft

from tympan.data.corpora import (
    _band_mask,
    _cycles,
    _harmonic_osc,
    _n_harmonics,
    _pink_noise,
    _shape_spectrum,
    _smooth_random,
    _time,
    check_corpus_args,
    remove_stale_clips,
    render_parallel,
)
from tympan.data.manifest import Item, write_manifest
from tympan.errors import ConfigError, TympanError

__all__ = [
    "SPEECH_SCALES",
    "SPEECH_SPLITS",
    "SPEECH_WORDS",
    "SpeechSpec",
    "WORD_PHONES",
    "synth_speech_corpus",
]

#: The word vocabulary (the ``label`` column), in class order.
SPEECH_WORDS: tuple[str, ...] = (
    "yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go",
)
#: Each word's phones (diphthongs are two vowel targets the formants glide between).
WORD_PHONES: dict[str, tuple[str, ...]] = {
    "yes": ("j", "e", "s"),
    "no": ("n", "o", "u"),
    "up": ("uh", "p"),
    "down": ("d", "a", "u", "n"),
    "left": ("l", "e", "f", "t"),
    "right": ("r", "a", "i", "t"),
    "on": ("a", "n"),
    "off": ("o", "f"),
    "stop": ("s", "t", "a", "p"),
    "go": ("g", "o", "u"),
}
#: Split names, in manifest order. ``verify`` holds the held-out speakers only.
SPEECH_SPLITS: tuple[str, ...] = ("train", "val", "test", "pretrain", "verify")

_MANIFEST = "manifest.csv"
_SIDECAR = "speakers.json"
_AUDIO_DIR = "audio"
# Generator keys; they cannot collide with an utterance generator [seed, speaker, utterance]
# because the 2-element keys below differ in length, and speaker voices use a 3-element key
# whose middle element is far above any speaker index.
_SPEAKER_KEY = 1_000_033
_SPLIT_KEY = 1_000_003
# Below this many clips the cost of starting worker processes outweighs the speed-up.
_PARALLEL_MIN_CLIPS = 64

# STFT of the source-filter synthesis: 32 ms Hann windows, 8 ms hop at 16 kHz.
_N_FFT = 512
_HOP = 128
_N_FORMANTS = 4
# Bandwidths (Hz) of F1-F4 before the speaker's bandwidth scale.
_BANDWIDTHS = np.array([70.0, 100.0, 150.0, 250.0])


@dataclass(frozen=True)
class SpeechSpec:
    """Size of a synthetic speech corpus.

    Attributes:
        n_speakers: speakers in all, at least 4 (two held out for verification, two seen).
        utterances: labelled utterances per speaker (train/val/test for seen speakers, verify
            for held-out ones), at least 3.
        pretrain_utterances: further utterances per seen speaker in ``pretrain`` (>= 0).
        held_out_fraction: share of speakers held out for verification (at least 2 are).
        min_seconds, max_seconds: utterance lengths are drawn uniformly in this range.
        sample_rate: in Hz, at least 16000 (fricatives reach 7.5 kHz).
    """

    n_speakers: int
    utterances: int
    pretrain_utterances: int
    min_seconds: float
    max_seconds: float
    held_out_fraction: float = 0.25
    sample_rate: int = 16000

    def __post_init__(self) -> None:
        if self.n_speakers < 4:
            raise ConfigError(
                f"SpeechSpec.n_speakers (speakers=) must be >= 4 (two held out for verification, "
                f"two seen), got {self.n_speakers}"
            )
        if self.utterances < 3:
            raise ConfigError(
                f"SpeechSpec.utterances (utterances=) must be >= 3 (one train, val and test "
                f"utterance per seen speaker), got {self.utterances}"
            )
        if self.pretrain_utterances < 0:
            raise ConfigError(
                f"SpeechSpec.pretrain_utterances must be >= 0, got {self.pretrain_utterances}"
            )
        if not 0.0 < self.held_out_fraction < 1.0:
            raise ConfigError(
                f"SpeechSpec.held_out_fraction must be in (0, 1), got {self.held_out_fraction}"
            )
        if not 0.5 <= self.min_seconds <= self.max_seconds:
            raise ConfigError(
                "SpeechSpec needs 0.5 <= min_seconds <= max_seconds, got "
                f"{self.min_seconds} and {self.max_seconds}"
            )
        if self.sample_rate < 16000:
            raise ConfigError(f"SpeechSpec.sample_rate must be >= 16000 Hz, got {self.sample_rate}")

    @property
    def n_held_out(self) -> int:
        """Held-out (verification) speakers: the fraction, rounded, at least 2, leaving 2 seen."""
        n = max(2, int(round(self.held_out_fraction * self.n_speakers)))
        return min(n, self.n_speakers - 2)


#: Corpus sizes by name. ``full``: 40 speakers (30 seen, 10 held out), 12 labelled utterances
#: each and 16 pretrain utterances per seen speaker, 1-2 s (960 clips, about 24 minutes of
#: audio, well under a minute on two cores). ``tiny`` (tests): 16 speakers (12 seen, 4 held
#: out), 10 labelled utterances each and 2 pretrain per seen speaker, 1-1.5 s (184 clips).
SPEECH_SCALES: dict[str, SpeechSpec] = {
    "full": SpeechSpec(
        n_speakers=40, utterances=12, pretrain_utterances=16, min_seconds=1.0, max_seconds=2.0
    ),
    "tiny": SpeechSpec(
        n_speakers=16, utterances=10, pretrain_utterances=2, min_seconds=1.0, max_seconds=1.5
    ),
}


# ------------------------------------------------------------------------------------------
# Phones. A phone is a list of parts; a part holds for its duration: a voicing level, an
# aspiration level, a frication level and band, a nasal murmur weight, and formant targets
# (F1-F3 of an adult male, Peterson & Barney 1952, or a consonant's locus) or none (the
# formants glide through it between the neighbours' targets).
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Part:
    ms: float  # duration at speaking rate 1, in an isolated (carefully spoken) word
    voice: float = 0.0  # voicing amplitude
    aspiration: float = 0.0  # formant-shaped noise amplitude (relative to the voicing RMS)
    frication: float = 0.0  # band-noise amplitude (relative to the voicing RMS)
    band: tuple[float, float] = (1.0, 1.0)  # frication band (Hz), scaled mildly by the speaker
    nasal: float = 0.0  # weight of the nasal murmur (low-pass) on the voiced spectrum
    formants: tuple[float, float, float] | None = None
    ramp_ms: float = 12.0  # transition into and out of the part


def _vowel(ms: float, f1: float, f2: float, f3: float) -> tuple[_Part, ...]:
    return (_Part(ms, voice=1.0, formants=(f1, f2, f3), ramp_ms=20.0),)


def _stop(band: tuple[float, float], locus: tuple[float, float, float], voiced: bool) -> tuple[
    _Part, ...
]:
    """Closure (silent, or a weak voice bar when voiced), burst, then aspiration if voiceless."""
    closure = _Part(70.0 if voiced else 85.0, voice=0.12 if voiced else 0.0, nasal=1.0,
                    formants=locus, ramp_ms=6.0)
    burst = _Part(14.0, frication=0.8 if not voiced else 0.5, band=band, ramp_ms=1.5)
    if voiced:
        return closure, burst
    return closure, burst, _Part(55.0, aspiration=0.25, ramp_ms=6.0)


_PHONES: dict[str, tuple[_Part, ...]] = {
    "a": _vowel(280.0, 730.0, 1090.0, 2440.0),
    "e": _vowel(240.0, 530.0, 1840.0, 2480.0),
    "i": _vowel(200.0, 300.0, 2250.0, 2950.0),
    "o": _vowel(280.0, 570.0, 840.0, 2410.0),
    "u": _vowel(220.0, 320.0, 870.0, 2240.0),
    "uh": _vowel(220.0, 640.0, 1190.0, 2390.0),
    "j": (_Part(90.0, voice=0.7, formants=(270.0, 2200.0, 3000.0), ramp_ms=25.0),),
    "r": (_Part(100.0, voice=0.7, formants=(460.0, 1190.0, 1600.0), ramp_ms=25.0),),
    "l": (_Part(100.0, voice=0.7, formants=(360.0, 1300.0, 2700.0), ramp_ms=20.0),),
    "n": (_Part(130.0, voice=0.55, nasal=1.0, formants=(250.0, 1700.0, 2600.0), ramp_ms=15.0),),
    "s": (_Part(170.0, frication=0.3, band=(3800.0, 7500.0), formants=(400.0, 1750.0, 2600.0),
                ramp_ms=25.0),),
    "f": (_Part(150.0, frication=0.12, band=(1200.0, 7500.0), formants=(400.0, 1000.0, 2300.0),
                ramp_ms=25.0),),
    "p": _stop((400.0, 1600.0), (400.0, 900.0, 2300.0), voiced=False),
    "t": _stop((3000.0, 7000.0), (400.0, 1800.0, 2700.0), voiced=False),
    "d": _stop((2800.0, 6500.0), (400.0, 1800.0, 2700.0), voiced=True),
    "g": _stop((1500.0, 3200.0), (350.0, 2000.0, 2500.0), voiced=True),
}
# Frication bands in a fixed order: each gets its own per-frame weight track.
_BANDS: tuple[tuple[float, float], ...] = tuple(
    dict.fromkeys(p.band for parts in _PHONES.values() for p in parts if p.frication > 0)
)


# ------------------------------------------------------------------------------------------
# Speakers and utterances
# ------------------------------------------------------------------------------------------


def _speaker_id(s: int) -> str:
    return f"spk{s:03d}"


def _voice(seed: int, s: int) -> dict[str, Any]:
    """Speaker ``s``'s voice (module docstring, "Speakers"); JSON-ready values."""
    rng = np.random.default_rng([seed, _SPEAKER_KEY, s])
    female = s % 2 == 1
    lo, hi = (165.0, 250.0) if female else (90.0, 150.0)
    f0 = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    scale = float(rng.uniform(1.08, 1.22) if female else rng.uniform(0.88, 1.02))
    return {
        "speaker": _speaker_id(s),
        "sex": "female" if female else "male",
        "f0_hz": round(f0, 3),
        "f0_range_semitones": round(float(rng.uniform(1.5, 6.0)), 3),
        "formant_scale": round(scale, 4),
        "formant_offsets": [round(float(v), 4) for v in rng.uniform(0.95, 1.05, _N_FORMANTS)],
        "bandwidth_scale": round(float(rng.uniform(0.8, 1.4)), 4),
        "tilt": round(float(rng.uniform(0.5, 2.0)), 4),
        "breathiness_db": round(float(rng.uniform(-32.0, -12.0)), 2),
        "jitter": round(float(rng.uniform(0.002, 0.02)), 5),
        "shimmer": round(float(rng.uniform(0.01, 0.08)), 4),
        "rate": round(float(rng.uniform(0.8, 1.25)), 4),
        # individual anatomy (sinuses, hypopharynx, nasal coupling): a fixed colouring of the
        # voice by four smooth peaks or dips, [centre Hz, gain dB, width octaves]
        "timbre": [
            [round(float(c), 1), round(float(g), 2), round(float(w), 3)]
            for c, g, w in zip(np.exp(rng.uniform(np.log(300.0), np.log(6000.0), 4)),
                               rng.uniform(-15.0, 15.0, 4), rng.uniform(0.4, 1.0, 4))
        ],
    }


def _knots(
    starts: np.ndarray, durs: np.ndarray, ramps: np.ndarray, values: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Piecewise-linear track holding ``values[i]`` over part ``i`` with linear ramps of
    ``ramps[i]`` seconds centred on its boundaries: knots ``(times, values)``."""
    half = np.minimum(ramps / 2, durs / 2)
    times = np.stack([starts + half, starts + durs - half], axis=1).ravel()
    return times, np.repeat(values, 2)


def _render_utterance(
    spec: SpeechSpec, seed: int, s: int, u: int, word: str, *, dry: bool = False
) -> tuple[np.ndarray, dict[str, Any]]:
    """Utterance ``u`` of speaker ``s`` saying ``word``: float64 samples (peak in [-20, -1]
    dBFS) and metadata.

    ``dry`` returns the speech before the recording nuisances (microphone, room, noise, gain),
    peak-normalised to 0.5: for tests and diagnostics."""
    sr = spec.sample_rate
    voice = _voice(seed, s)
    rng = np.random.default_rng([seed, s, u])

    # Timeline of the word's parts (durations in seconds).
    parts = [p for phone in WORD_PHONES[word] for p in _PHONES[phone]]
    phone_of = [phone for phone in WORD_PHONES[word] for _ in _PHONES[phone]]
    rate = voice["rate"] * float(rng.uniform(0.9, 1.1))
    durs = np.array([p.ms for p in parts]) / 1000.0 / rate * rng.uniform(0.85, 1.15, len(parts))
    word_len = float(durs.sum())
    seconds = max(float(rng.uniform(spec.min_seconds, spec.max_seconds)), word_len + 0.1)
    n = int(round(seconds * sr))
    # 50 ms or more of silence either side (max(): no negative span from rounding)
    onset = 0.05 + float(rng.uniform(0.0, 1.0)) * max(0.0, seconds - word_len - 0.1)
    starts = onset + np.concatenate([[0.0], np.cumsum(durs)[:-1]])
    ramps = np.array([p.ramp_ms for p in parts]) / 1000.0
    t = _time(n, sr)

    def track(times_at: np.ndarray, field: str) -> np.ndarray:
        kt, kv = _knots(starts, durs, ramps, np.array([getattr(p, field) for p in parts]))
        return np.interp(times_at, kt, kv, left=0.0, right=0.0)

    # --- voiced source: intonation, jitter, shimmer, spectral tilt ---------------------------
    f0 = voice["f0_hz"] * 2.0 ** (float(rng.uniform(-1.0, 1.0)) / 12.0)
    span = voice["f0_range_semitones"]
    progress = np.clip((t - onset) / word_len, 0.0, 1.0)
    semitones = span * (0.5 - progress) * 0.8 + 0.25 * span * _smooth_random(rng, n, sr, 4.0)
    f0_track = f0 * 2.0 ** (semitones / 12.0)
    period = np.floor(_cycles(f0_track, sr)).astype(np.int64)
    per_period = rng.standard_normal((2, int(period[-1]) + 1))
    f0_track = f0_track * (1.0 + voice["jitter"] * per_period[0, period])
    k = np.arange(1, _n_harmonics(float(f0_track.max()), sr) + 1, dtype=float)
    source = _harmonic_osc(k ** -voice["tilt"], _cycles(f0_track, sr))
    source *= 1.0 + voice["shimmer"] * per_period[1, period]
    source /= np.sqrt(np.mean(source**2)) + 1e-12
    voicing = track(t, "voice")
    voiced = source * voicing
    breath = 10.0 ** (voice["breathiness_db"] / 20.0)
    aspiration = rng.standard_normal(n) * (track(t, "aspiration") + breath * voicing)
    fric_env = track(t, "frication")
    frication = rng.standard_normal(n) * fric_env

    # --- per-frame spectral envelopes --------------------------------------------------------
    freqs, frame_t, v_spec = stft(voiced, sr, window="hann", nperseg=_N_FFT,
                                  noverlap=_N_FFT - _HOP)
    a_spec = stft(aspiration, sr, window="hann", nperseg=_N_FFT, noverlap=_N_FFT - _HOP)[2]
    f_spec = stft(frication, sr, window="hann", nperseg=_N_FFT, noverlap=_N_FFT - _HOP)[2]
    frame_t = np.asarray(frame_t)
    # Formant tracks: targets at the centres of the parts that have them, linear in between.
    targeted = [i for i, p in enumerate(parts) if p.formants is not None]
    centres = starts[targeted] + durs[targeted] / 2
    targets = np.array([parts[i].formants for i in targeted])  # [P, 3]
    scale = voice["formant_scale"] * np.array(voice["formant_offsets"])
    formants = np.stack(
        [np.interp(frame_t, centres, targets[:, j]) for j in range(3)]
        + [np.full(len(frame_t), 3500.0)], axis=1
    ) * scale  # [T, 4]; F4 sits at 3.5 kHz before the speaker's scaling
    formants = np.minimum(formants, 0.45 * sr)
    bw = _BANDWIDTHS * voice["bandwidth_scale"]
    f2 = freqs[None, :, None] ** 2  # [1, F, 1]
    fr = formants[:, None, :]  # [T, 1, 4]
    # Product of second-order resonances, unit gain at DC (as in corpora._render_vowel).
    env = np.prod(fr**2 / np.sqrt((fr**2 - f2) ** 2 + bw**2 * f2), axis=2).T  # [F, T]
    timbre_db = sum(
        g * np.exp(-0.5 * (np.log2(np.maximum(freqs, 20.0) / c) / w) ** 2)
        for c, g, w in voice["timbre"]
    )
    env = env * (10.0 ** (timbre_db / 20.0))[:, None]
    nasal = track(frame_t, "nasal")
    murmur = 1.0 / np.sqrt(1.0 + (freqs / 350.0) ** 4) + 0.05
    voiced_gain = env * (1.0 - nasal + nasal * murmur[:, None])
    band_gain = np.zeros_like(env)
    fric_scale = np.sqrt(voice["formant_scale"])  # smaller mouths: slightly higher bands
    for band in _BANDS:
        shape = _band_mask(freqs, band[0] * fric_scale, min(band[1] * fric_scale, 0.47 * sr))
        shape /= np.sqrt(np.mean(shape**2)) + 1e-12  # white noise keeps its power
        weight = np.interp(frame_t, *_knots(
            starts, durs, ramps,
            np.array([p.frication > 0 and p.band == band for p in parts], float),
        ), left=0.0, right=0.0)
        band_gain += shape[:, None] * weight[None, :]
    env_rms = np.sqrt(np.mean(env**2, axis=0, keepdims=True)) + 1e-12
    speech_v = istft(v_spec * voiced_gain, sr, window="hann", nperseg=_N_FFT,
                     noverlap=_N_FFT - _HOP)[1][:n]
    # Noise levels are relative to the voiced part's RMS where it sounds.
    ref = np.sqrt(np.mean(speech_v[voicing > 0.5] ** 2)) if np.any(voicing > 0.5) else 1.0
    noise_spec = a_spec * (env / env_rms) + f_spec * band_gain
    speech_n = istft(noise_spec, sr, window="hann", nperseg=_N_FFT,
                     noverlap=_N_FFT - _HOP)[1][:n]
    speech = speech_v + ref * speech_n
    speech = np.pad(speech, (0, n - len(speech)))
    active = (t >= onset) & (t <= onset + word_len)
    if dry:
        return 0.5 * speech / np.max(np.abs(speech)), {"word": word, "speaker": voice["speaker"]}

    # --- recording nuisances -----------------------------------------------------------------
    mic_tilt = float(rng.uniform(-1.0, 1.0))  # dB per octave around 1 kHz
    speech = _shape_spectrum(
        speech, sr, lambda f: 10.0 ** (mic_tilt * np.log2(np.maximum(f, 50.0) / 1000.0) / 20.0)
    )

    rt60 = float(rng.uniform(0.1, 0.6))
    ir_t = _time(max(2, int(rt60 * sr)), sr)
    ir = rng.standard_normal(len(ir_t)) * np.exp(-6.908 * ir_t / rt60)
    ir /= np.sqrt(np.sum(ir**2))
    wet = float(rng.uniform(0.0, 0.4))
    signal = np.sqrt(1.0 - wet) * speech + np.sqrt(wet) * fftconvolve(speech, ir)[:n]

    snr_db = float(rng.uniform(15.0, 40.0))
    white = rng.random() < 0.5
    noise = rng.standard_normal(n) if white else _pink_noise(rng, n)
    power = np.mean(signal[active] ** 2)
    noise *= np.sqrt(power / 10.0 ** (snr_db / 10.0) / (np.mean(noise**2) + 1e-20))
    mix = signal + noise
    fade = int(0.005 * sr)
    ramp = 0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, fade))
    mix[:fade] *= ramp
    mix[n - fade :] *= ramp[::-1]
    peak_db = float(rng.uniform(-20.0, -1.0))  # at most -1 dBFS: 16-bit PCM never clips
    mix *= 10.0 ** (peak_db / 20.0) / np.max(np.abs(mix))

    meta = {
        "utterance": f"{voice['speaker']}_{u:03d}",
        "speaker": voice["speaker"],
        "word": word,
        "phones": [
            {"phone": ph, "start_s": round(float(a), 4), "end_s": round(float(a + d), 4)}
            for ph, a, d in _merge_parts(phone_of, starts, durs)
        ],
        "seconds": round(n / sr, 4),
        "samples": n,
        "f0_hz": round(f0, 3),
        "rate": round(rate, 4),
        "mic_tilt_db_per_octave": round(mic_tilt, 3),
        "rt60_s": round(rt60, 3),
        "wet": round(wet, 3),
        "snr_db": round(snr_db, 2),
        "noise": "white" if white else "pink",
        "peak_dbfs": round(peak_db, 2),
    }
    return mix, meta


def _merge_parts(
    phone_of: list[str], starts: np.ndarray, durs: np.ndarray
) -> list[tuple[str, float, float]]:
    """(phone, start, duration) of each phone, joining the parts of stops."""
    out: list[tuple[str, float, float]] = []
    i = 0
    while i < len(phone_of):
        j = i
        # consecutive parts of one phone (a word never repeats a phone back to back)
        while j + 1 < len(phone_of) and phone_of[j + 1] == phone_of[i]:
            j += 1
        out.append((phone_of[i], float(starts[i]), float(starts[j] + durs[j] - starts[i])))
        i = j + 1
    return out


def _write_utterance(task: tuple[SpeechSpec, int, int, int, str, str]) -> dict[str, Any]:
    """Render one utterance, write it as 16-bit PCM, return its metadata (worker entry point)."""
    spec, seed, s, u, word, path = task
    wav, meta = _render_utterance(spec, seed, s, u, word)
    # Quantise ourselves (round to nearest) so the bytes do not depend on libsndfile's rules.
    pcm = np.round(wav * 32767.0).astype(np.int16)
    sf.write(path, pcm, spec.sample_rate, subtype="PCM_16", format="WAV")
    return meta


# ------------------------------------------------------------------------------------------
# The corpus
# ------------------------------------------------------------------------------------------


def _held_out(spec: SpeechSpec, seed: int) -> set[int]:
    """The verification speakers: half of each sex (even/odd indices), chosen by the seed."""
    rng = np.random.default_rng([seed, _SPLIT_KEY])
    n = spec.n_held_out
    males = np.arange(0, spec.n_speakers, 2)
    females = np.arange(1, spec.n_speakers, 2)
    n_f = min(n // 2, len(females))
    n_m = n - n_f
    chosen = np.concatenate([rng.permutation(males)[:n_m], rng.permutation(females)[:n_f]])
    return {int(x) for x in chosen}


def _label_split(spec: SpeechSpec, u: int) -> str:
    """Split of labelled utterance ``u`` of a seen speaker: ~20% test, ~20% val, the rest train."""
    k = max(1, int(round(0.2 * spec.utterances)))
    return "test" if u < k else "val" if u < 2 * k else "train"


def _plan(spec: SpeechSpec, seed: int) -> list[tuple[str, str, int, int, str]]:
    """Manifest rows ``(relative path, split, speaker index, utterance index, word)`` in
    manifest order (:data:`SPEECH_SPLITS`, then speaker, then utterance). Pretrain utterances
    are numbered after the labelled ones, so every utterance has its own generator and file.
    The ``n``-th row of a split says word ``n mod 10``: every split is balanced to within one
    utterance per word, and each speaker says consecutive words."""
    held = _held_out(spec, seed)
    rows: list[tuple[str, str, int, int, str]] = []
    for split in SPEECH_SPLITS:
        first = len(rows)
        for s in range(spec.n_speakers):
            if split == "verify":
                utts = range(spec.utterances) if s in held else range(0)
            elif s in held:
                continue
            elif split == "pretrain":
                utts = range(spec.utterances, spec.utterances + spec.pretrain_utterances)
            else:
                utts = [u for u in range(spec.utterances) if _label_split(spec, u) == split]
            for u in utts:
                spk = _speaker_id(s)
                word = SPEECH_WORDS[(len(rows) - first) % len(SPEECH_WORDS)]
                rows.append((f"{_AUDIO_DIR}/{split}/{spk}/{spk}_{u:03d}.wav", split, s, u, word))
    return rows


def synth_speech_corpus(
    out: str | Path,
    *,
    seed: int = 0,
    scale: str = "full",
    speakers: int | None = None,
    utterances: int | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> Path:
    """Write the embedded speech corpus under `out`; return the manifest path.

    Args:
        out: folder to write into (created if needed). Audio goes to
            ``out/audio/<split>/<speaker>/<speaker>_<uuu>.wav`` (16-bit PCM mono), the manifest,
            with columns ``path,label,split,track,speaker`` (``label`` = the word, ``track`` =
            the utterance id, paths relative to ``out``), to ``out/manifest.csv``, and the
            speakers' voices and every utterance's phones and nuisances to
            ``out/speakers.json``.
        seed: non-negative integer; the same seed gives byte-identical files and the same
            held-out speakers.
        scale: a key of :data:`SPEECH_SCALES`: ``"full"`` (40 speakers, 960 clips of 1-2 s,
            well under a minute on two cores) or ``"tiny"`` (16 speakers, 184 short clips; for
            tests).
        speakers: overrides the scale's number of speakers (>= 4; a quarter are held out).
        utterances: overrides the scale's labelled utterances per speaker (>= 3).
        workers: rendering processes; ``None`` picks one per core (at most 8) for larger
            corpora, ``1`` renders in this process.
        progress: show a progress bar.

    Splits (module docstring): ``train``/``val``/``test`` (words, seen speakers),
    ``pretrain`` (more utterances of the seen speakers) and ``verify`` (held-out speakers, for
    speaker-verification EER). Re-running into the same folder overwrites it with the same
    result; WAV files listed by a previous manifest under ``out/audio`` but not in the new
    corpus are deleted.

    Raises:
        TympanError: unknown scale, negative seed, bad sizes or workers, or ``out`` is an
            existing file.
    """
    check_corpus_args(scale, SPEECH_SCALES, seed, out, "speech corpus")
    spec = SPEECH_SCALES[scale]
    for name, value in (("speakers", speakers), ("utterances", utterances), ("workers", workers)):
        whole = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
        if value is not None and (not whole or value < 1):
            raise ConfigError(f"speech corpus {name}={value!r}: give a positive whole number")
    if speakers is not None:
        spec = replace(spec, n_speakers=int(speakers))
    if utterances is not None:
        spec = replace(spec, utterances=int(utterances))
    seed = int(seed)
    root = Path(out)
    for name in (_MANIFEST, _SIDECAR):
        if (root / name).is_dir():
            raise TympanError(f"{root / name}: is a folder; remove it or choose another folder")

    rows = _plan(spec, seed)
    try:
        for folder in sorted({str(Path(rel).parent) for rel, *_ in rows}):
            (root / folder).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = exc.strerror or exc
        raise TympanError(f"{root}: cannot create the corpus folders ({reason})") from exc

    tasks = [(spec, seed, s, u, word, str(root / rel)) for rel, _, s, u, word in rows]
    metas = render_parallel(_write_utterance, tasks, progress=progress, desc="synth speech",
                            unit="clip", min_parallel=_PARALLEL_MIN_CLIPS, chunksize=8,
                            workers=None if workers is None else int(workers))

    manifest = root / _MANIFEST
    remove_stale_clips(root, {rel for rel, *_ in rows})

    held = _held_out(spec, seed)
    voices = []
    for s in range(spec.n_speakers):
        voice = _voice(seed, s)
        voice["group"] = "held_out" if s in held else "seen"
        voices.append(voice)
    header = {"seed": seed, "scale": scale, **asdict(spec), "words": list(SPEECH_WORDS),
              "word_phones": {w: list(p) for w, p in WORD_PHONES.items()}}
    # One line per speaker and per utterance: readable, diffable, and still plain JSON.
    lines = [f" {json.dumps(k)}: {json.dumps(v)}," for k, v in header.items()]
    spk_text = ",\n".join(f"  {json.dumps(v)}" for v in voices)
    utt_text = ",\n".join(
        f"  {json.dumps({'path': rel, 'split': split, **meta})}"
        for (rel, split, *_), meta in zip(rows, metas)
    )
    text = ("{\n" + "\n".join(lines) + '\n "speakers": [\n' + spk_text + '\n ],\n'
            ' "utterances": [\n' + utt_text + "\n ]\n}\n")
    tmp = root / f".{_SIDECAR}.tmp"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, root / _SIDECAR)
    # The manifest is written last (and atomically): it always describes a complete corpus.
    items = [
        Item(path=root / rel, labels=(meta["word"],), split=split, track=meta["utterance"],
             speaker=meta["speaker"])
        for (rel, split, *_), meta in zip(rows, metas)
    ]
    write_manifest(items, manifest)
    return manifest
