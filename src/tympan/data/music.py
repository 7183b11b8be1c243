"""The embedded music corpus: deterministic multi-instrument tracks with several tags each.

It stands in for the music-tagging datasets (MTAT, MSD, MTG-Jamendo) of the multi-view
self-supervision benchmark (``../shared/seeds/003_302de149e7ba2620.txt``): pretraining takes two
4-second segments of the *same track* as a positive pair, the second 4 to 16 seconds away from
the first, and evaluation is multi-label tagging scored by ROC-AUC and mAP. That needs tracks
long enough for such pairs (a 4 s anchor, a gap of up to 16 s and a 4 s positive: 24 s; the
``full`` scale has 30 s tracks; ``tiny``, for tests, 20 s, room for gaps up to 12 s), several
tags per track, and tracks whose segments differ while sharing instruments and tempo. This
module writes such a corpus offline, in well under a minute.

Tracks
------
Every track is a 4/4 piece with a tempo (BPM), a key (one of 12 roots, major or minor) and a
beat grid. It mixes 2 to 4 of twelve synthetic instruments, each playing a part of its role:

``synth_pad``   soft detuned sine-like pad, held chords, slow attack.
``strings``     string ensemble: two detuned band-limited sawtooth voices with vibrato.
``organ``       additive drawbar organ (per-track registration of nine drawbars), tremolo.
``brass``       harmonic tone whose brightness grows with its amplitude, with a pitch scoop.
``piano``       stiff-string partials (inharmonic, high partials dying first) and a hammer thump.
``guitar``      Karplus-Strong plucked string, let-ring arpeggios.
``marimba``     bar partials at 1 : 3.9 : 9.2 with fast-decaying upper partials, mallet click.
``synth_lead``  band-limited square wave lead with a filter setting and a little vibrato.
``flute``       near-sine tone with vibrato, breath noise and an attack chiff.
``bell``        two-operator FM bell (inharmonic ratio, decaying index).
``synth_bass``  sawtooth bass with a decaying filter envelope.
``drums``       kick (pitch-dropping sine), snare (tone + noise), closed and open hi-hats.

Pads play held chords, comping instruments (organ, brass, piano) chord rhythms, guitar and
marimba arpeggios, leads a motif that follows the harmony, the bass roots and fifths, and the
drums a kick/snare/hi-hat pattern. The music changes **section** every four chords (two bars at
slow tempi, four bars otherwise, so every 6-10 s): a new diatonic chord progression, new
patterns and motif, and new instrument levels (+-3 dB). Two segments of one track thus differ
but share instruments, key and tempo.

Tags
----
:data:`MUSIC_TAGS` lists the vocabulary (17 tags). A track carries, in that order, the name of
every instrument it mixes, one tempo tag (``slow`` below 90 BPM, ``medium`` 90-130, ``fast``
above 130; BPMs are drawn 60-85, 95-125 and 135-170, so no track sits on a boundary) and one
brightness tag: ``bright`` when the spectral centroid of the rendered mix (mean magnitude
spectrum of 2048-sample frames) is at least :data:`BRIGHT_CENTROID_HZ`, else ``dark``. Every
track therefore has 4 to 6 tags, written to the manifest's ``label`` column joined by ``;``.

Nuisances
---------
Each track draws tuning (+-25 cents), per-instrument levels (-6 to 0 dB) and timbre settings,
a tone filter (low-pass or presence boost: the main driver of brightness), timing jitter
(+-8 ms) and velocities, a start offset within the first beat, a reverberation tail
(convolution with decaying noise, RT60 0.3-1.5 s, wet 10-40%), pink background hiss at an SNR
of 40-60 dB, and a peak level of -20 to -1 dBFS.

Splits and files
----------------
``out/audio/<split>/track_NNNN.wav`` (16-bit PCM mono), ``out/manifest.csv`` with columns
``path,label,split,track`` and ``out/tracks.json`` with per-track metadata (BPM, key, mode,
instruments, centroid, tags, ...). ``train``/``val``/``test`` hold 70/15/15% of the tracks,
assigned after rendering by iterative multi-label stratification (rarest tag first) so that at
the ``full`` scale every tag occurs in every split.

Determinism
-----------
Track ``i`` is rendered from ``numpy.random.default_rng([seed, i])`` alone (tracks render in
parallel, in any order), the split from ``default_rng([seed, 1000003])``: the same seed gives
byte-identical files (on the same numpy/scipy build), another seed another corpus.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from scipy.signal import fftconvolve

from tympan.data.corpora import (
    _band_mask,
    _cycles,
    _harmonic_osc,
    _n_harmonics,
    _pink_noise,
    _render_pluck,
    _shape_spectrum,
    _time,
    _vibrato,
    check_corpus_args,
    remove_stale_clips,
    render_parallel,
)
from tympan.data.manifest import Item, write_manifest
from tympan.errors import ConfigError, TympanError

__all__ = [
    "BRIGHT_CENTROID_HZ",
    "MUSIC_INSTRUMENTS",
    "MUSIC_SCALES",
    "MUSIC_TAGS",
    "MusicSpec",
    "synth_music",
    "tempo_tag",
]

#: The instruments, in tag order (each is also a tag).
MUSIC_INSTRUMENTS: tuple[str, ...] = (
    "synth_pad",
    "strings",
    "organ",
    "brass",
    "piano",
    "guitar",
    "marimba",
    "synth_lead",
    "flute",
    "bell",
    "synth_bass",
    "drums",
)
_TEMPO_TAGS: tuple[str, ...] = ("slow", "medium", "fast")
_BRIGHTNESS_TAGS: tuple[str, ...] = ("dark", "bright")
#: The tag vocabulary in its fixed order: instruments, then tempo, then brightness.
MUSIC_TAGS: tuple[str, ...] = MUSIC_INSTRUMENTS + _TEMPO_TAGS + _BRIGHTNESS_TAGS

#: A track is ``bright`` when the spectral centroid of its mix is at least this (Hz).
BRIGHT_CENTROID_HZ = 1250.0
# BPMs are drawn inside these ranges, clear of the tag boundaries at 90 and 130 BPM.
_BPM_RANGES: dict[str, tuple[float, float]] = {
    "slow": (60.0, 85.0),
    "medium": (95.0, 125.0),
    "fast": (135.0, 170.0),
}

_SPLITS: tuple[str, ...] = ("train", "val", "test")
_SPLIT_FRACTIONS: tuple[float, ...] = (0.70, 0.15, 0.15)
_MANIFEST = "manifest.csv"
_SIDECAR = "tracks.json"
_AUDIO_DIR = "audio"
_STAGING = ".staging"  # tracks are rendered here, then moved to their split's folder
# Key of the split generator; cannot collide with a track generator [seed, track index].
_SPLIT_KEY = 1_000_003
# Below this many tracks the cost of starting worker processes outweighs the speed-up.
_PARALLEL_MIN_TRACKS = 8
_CENTROID_FRAME = 2048


@dataclass(frozen=True)
class MusicSpec:
    """Size of a synthetic music corpus.

    Attributes:
        n_tracks: number of tracks, at least 3 (one per split).
        seconds: length of every track, at least 20 (same-track segment pairs need room).
        sample_rate: in Hz, at least 16000.
    """

    n_tracks: int
    seconds: float
    sample_rate: int = 16000

    def __post_init__(self) -> None:
        if self.n_tracks < len(_SPLITS):
            raise ConfigError(
                f"MusicSpec.n_tracks must be >= 3 (one per split), got {self.n_tracks}"
            )
        if self.seconds < 20.0:
            raise ConfigError(
                f"MusicSpec.seconds must be >= 20 (room for same-track segment pairs), got "
                f"{self.seconds}"
            )
        if self.sample_rate < 16000:
            raise ConfigError(f"MusicSpec.sample_rate must be >= 16000 Hz, got {self.sample_rate}")


def tempo_tag(bpm: float) -> str:
    """``slow`` below 90 BPM, ``medium`` from 90 to 130, ``fast`` above 130."""
    return "slow" if bpm < 90.0 else "fast" if bpm > 130.0 else "medium"


# ------------------------------------------------------------------------------------------
# Music: scales, chords and the parts each role plays. A part is a list of note events
# (onset s, duration s, MIDI pitch, velocity); drums use the pitch slot for the kit piece.
# ------------------------------------------------------------------------------------------

_Event = tuple[float, float, int, float]

_MODES: dict[str, tuple[int, ...]] = {
    "major": (0, 2, 4, 5, 7, 9, 11),
    "minor": (0, 2, 3, 5, 7, 8, 10),
}
_ROOT_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
# Diatonic progressions as 0-based scale degrees of the chord roots (I-V-vi-IV, ii-V-I, ...).
_PROGRESSIONS: tuple[tuple[int, ...], ...] = (
    (0, 4, 5, 3),
    (0, 5, 3, 4),
    (1, 4, 0, 0),
    (0, 3, 4, 3),
    (5, 3, 0, 4),
    (0, 3, 0, 4),
    (0, 5, 2, 6),
    (0, 6, 5, 6),
    (3, 4, 0, 0),
    (0, 2, 3, 4),
)
_ROLES: dict[str, str] = {
    "synth_pad": "pad",
    "strings": "pad",
    "organ": "comp",
    "brass": "comp",
    "piano": "comp",
    "guitar": "arp",
    "marimba": "arp",
    "synth_lead": "melody",
    "flute": "melody",
    "bell": "melody",
    "synth_bass": "bass",
    "drums": "drums",
}
# Lowest MIDI pitch of each pitched part; it plays within about an octave and a half above.
_LOW_NOTE: dict[str, int] = {
    "synth_pad": 53,
    "strings": 50,
    "organ": 50,
    "brass": 50,
    "piano": 48,
    "guitar": 45,
    "marimba": 60,
    "synth_lead": 67,
    "flute": 72,
    "bell": 72,
    "synth_bass": 33,
}
# Comping rhythms: onsets in eighth notes within one chord.
_COMP_PATTERNS: tuple[tuple[int, ...], ...] = (
    (0,),
    (0, 2, 4, 6),
    (1, 3, 5, 7),
    (0, 3),
    (0, 3, 6),
    (0, 4),
)
_BASS_PATTERNS: tuple[tuple[int, ...], ...] = (
    (0, 2, 4, 6),
    (0, 1, 2, 3, 4, 5, 6, 7),
    (0, 4),
    (0, 3, 4, 6),
)
_ARP_ORDERS: tuple[tuple[int, ...], ...] = (
    (0, 1, 2, 3),
    (3, 2, 1, 0),
    (0, 1, 2, 3, 2, 1),
    (0, 2, 1, 2),
    (0, 1, 3, 2),
)
# Drums on a 16-step bar: 0 kick, 1 snare, 2 closed hat, 3 open hat.
_KICKS: tuple[tuple[int, ...], ...] = ((0, 8), (0, 4, 8, 12), (0, 6, 8), (0, 7, 10))
_SNARES: tuple[tuple[int, ...], ...] = ((4, 12), (4, 12, 14))


_NUMERALS = ("I", "II", "III", "IV", "V", "VI", "VII")


def _numeral(degree: int, scale: tuple[int, ...]) -> str:
    """Roman numeral of the diatonic triad on a degree: upper case major, lower minor, ° dim."""
    third = _degree_semitones(degree + 2, scale) - _degree_semitones(degree, scale)
    fifth = _degree_semitones(degree + 4, scale) - _degree_semitones(degree, scale)
    name = _NUMERALS[degree % 7]
    if third == 4:
        return name
    return name.lower() + ("°" if fifth == 6 else "")


def _degree_semitones(degree: int, scale: tuple[int, ...]) -> int:
    """Semitones above the tonic of a (possibly negative or > 6) scale degree."""
    return 12 * (degree // 7) + scale[degree % 7]


def _place(pitch: int, low: int) -> int:
    """``pitch`` moved by octaves into ``[low, low + 12)``."""
    return low + (pitch - low) % 12


@dataclass(frozen=True)
class _Design:
    """Everything musical about one track (drawn first from the track's generator)."""

    bpm: float
    tonic: int  # pitch class 0-11
    mode: str
    instruments: tuple[str, ...]
    chord_beats: int  # a chord lasts this many beats; a section is four chords
    offset: float  # seconds of music before the excerpt starts (within the first beat)
    progressions: tuple[tuple[int, ...], ...]  # one per section that sounds


def _design(rng: np.random.Generator, seed: int, index: int, seconds: float) -> _Design:
    tempo = _TEMPO_TAGS[int(rng.integers(len(_TEMPO_TAGS)))]
    bpm = float(rng.uniform(*_BPM_RANGES[tempo]))
    tonic = int(rng.integers(12))
    mode = "major" if rng.random() < 0.5 else "minor"
    # One instrument rotates with the track index, so that even a small corpus has all twelve
    # and a large one has them equally often; the other 1-3 are drawn.
    first = MUSIC_INSTRUMENTS[(index + seed) % len(MUSIC_INSTRUMENTS)]
    others = [name for name in MUSIC_INSTRUMENTS if name != first]
    k = int(rng.integers(1, 4))
    chosen = {first, *(others[j] for j in rng.choice(len(others), k, replace=False))}
    instruments = tuple(name for name in MUSIC_INSTRUMENTS if name in chosen)
    chord_beats = 2 if bpm < 90.0 else 4
    offset = float(rng.uniform(0.0, 60.0 / bpm))
    section_seconds = 4 * chord_beats * 60.0 / bpm
    n_sections = int(np.ceil((seconds + offset) / section_seconds))
    progressions = tuple(
        _PROGRESSIONS[int(j)] for j in rng.integers(len(_PROGRESSIONS), size=n_sections)
    )
    return _Design(bpm, tonic, mode, instruments, chord_beats, offset, progressions)


def _chord(root_degree: int, scale: tuple[int, ...], tonic: int, seventh: bool) -> list[int]:
    """Pitches (any octave) of the diatonic triad or seventh chord on a scale degree."""
    steps = (0, 2, 4, 6) if seventh else (0, 2, 4)
    return [tonic + _degree_semitones(root_degree + s, scale) for s in steps]


def _part(rng: np.random.Generator, name: str, design: _Design, seconds: float) -> list[_Event]:
    """The note events of one instrument over the whole track (its role, its sections)."""
    role = _ROLES[name]
    beat = 60.0 / design.bpm
    eighth = beat / 2
    span8 = 2 * design.chord_beats  # eighths per chord
    chord_len = design.chord_beats * beat
    scale = _MODES[design.mode]
    events: list[_Event] = []

    def add(t: float, dur: float, pitch: int, vel: float) -> None:
        if t < seconds:  # a little human timing; never before the start
            jitter = float(rng.uniform(-0.008, 0.008))
            events.append((max(0.0, t + jitter), dur, pitch, vel * float(rng.uniform(0.85, 1.0))))

    for section, progression in enumerate(design.progressions):
        t0 = section * 4 * chord_len
        if t0 >= seconds:
            break
        gain = 10.0 ** (float(rng.uniform(-3.0, 3.0)) / 20.0)  # section level change
        seventh = bool(rng.random() < 0.4)
        if role == "drums":
            bars = int(round(4 * chord_len / (4 * beat)))
            kicks = _KICKS[int(rng.integers(len(_KICKS)))]
            snares = _SNARES[int(rng.integers(len(_SNARES)))]
            hat_style = int(rng.integers(3 if design.bpm < 115 else 2))
            hats = {0: range(0, 16, 2), 1: (2, 6, 10, 14), 2: range(16)}[hat_style]
            for bar in range(bars):
                tb = t0 + bar * 4 * beat
                for step in kicks:
                    add(tb + step * beat / 4, 0.0, 0, gain)
                for step in snares:
                    add(tb + step * beat / 4, 0.0, 1, gain * (0.9 if step in (4, 12) else 0.5))
                for step in hats:
                    piece = 3 if hat_style == 1 else 2
                    accent = 0.8 if step % 4 == 0 else 0.55
                    add(tb + step * beat / 4, 0.0, piece, gain * accent)
            continue
        low = _LOW_NOTE[name]
        if role == "melody":
            density = {"synth_lead": 0.6, "flute": 0.5, "bell": 0.35}[name]
            grid = 1 if name != "bell" else 2  # bells on quarter notes
            onsets = [p for p in range(0, span8, grid) if p == 0 or rng.random() < density]
            offsets = rng.choice([0, 2, 4, 7, 1, 3, 5, 6], len(onsets),
                                 p=[0.2, 0.17, 0.17, 0.1, 0.09, 0.09, 0.09, 0.09])
            legato = float(rng.choice([0.75, 0.85, 0.95]))
        elif role == "arp":
            order = _ARP_ORDERS[int(rng.integers(len(_ARP_ORDERS)))]
            sixteenths = design.bpm < 100.0
        elif role == "comp":
            pattern = _COMP_PATTERNS[int(rng.integers(len(_COMP_PATTERNS)))]
            onsets = [p for p in pattern if p < span8]
            legato = 0.98 if len(onsets) == 1 else float(rng.choice([0.5, 0.7, 0.9]))
        elif role == "bass":
            pattern = _BASS_PATTERNS[int(rng.integers(len(_BASS_PATTERNS)))]
            onsets = [p for p in pattern if p < span8]
            with_fifth = bool(rng.random() < 0.5)

        for c, degree in enumerate(progression):
            tc = t0 + c * chord_len
            if tc >= seconds:
                break
            tones = _chord(degree, scale, design.tonic, seventh)
            if role == "pad":
                for p in sorted(_place(x, low) for x in tones):
                    add(tc, chord_len + 0.05, p, 0.7 * gain)
            elif role == "comp":
                chord = sorted(_place(x, low) for x in tones)
                for j, o in enumerate(onsets):
                    nxt = onsets[j + 1] if j + 1 < len(onsets) else span8
                    for p in chord:
                        add(tc + o * eighth, (nxt - o) * eighth * legato, p, 0.75 * gain)
            elif role == "arp":
                chord = sorted(_place(x, low) for x in tones[:3])
                chord.append(chord[0] + 12)
                step = eighth / 2 if sixteenths else eighth
                n_steps = int(round(chord_len / step))
                for j in range(n_steps):
                    t = tc + j * step
                    ring = chord_len - j * step if name == "guitar" else 2 * step
                    add(t, ring, chord[order[j % len(order)]], (0.8 if j % 4 == 0 else 0.65) * gain)
            elif role == "melody":
                root = degree + 7 * 10  # a positive degree keeps % and // simple
                for j, o in enumerate(onsets):
                    nxt = onsets[j + 1] if j + 1 < len(onsets) else span8
                    pitch = design.tonic + _degree_semitones(root + int(offsets[j]), scale)
                    pitch = _place(pitch, low) if offsets[j] < 7 else _place(pitch, low) + 12
                    add(tc + o * eighth, (nxt - o) * eighth * legato, pitch, 0.75 * gain)
            elif role == "bass":
                root = _place(tones[0], low)
                fifth = root + _degree_semitones(degree + 4, scale)
                fifth -= _degree_semitones(degree, scale)
                for j, o in enumerate(onsets):
                    nxt = onsets[j + 1] if j + 1 < len(onsets) else span8
                    p = fifth if with_fifth and o == 4 else root
                    add(tc + o * eighth, (nxt - o) * eighth * 0.85, p, 0.8 * gain)
    return events


# ------------------------------------------------------------------------------------------
# Instruments. Each factory draws the instrument's per-track timbre from the track generator
# and returns ``note(pitch, duration) -> samples`` at unit velocity, release included. A track
# uses a dozen or so pitches and a few durations, so notes are memoised per (pitch, length)
# when rendered, and decaying instruments also keep one ringing waveform per pitch.
# ------------------------------------------------------------------------------------------

_Note = Callable[[int, float], np.ndarray]


def _hz(pitch: float, tuning: float) -> float:
    return tuning * 2.0 ** ((pitch - 69.0) / 12.0)


def _adsr(
    n_on: int, sr: int, attack: float, decay: float, sustain: float, release: float
) -> np.ndarray:
    """Linear attack, exponential decay to ``sustain`` while held, then a smooth release.

    Returns ``n_on + release * sr`` samples.
    """
    t = _time(n_on, sr)
    on = np.minimum(t / attack, 1.0)
    if decay > 0.0:
        on *= sustain + (1.0 - sustain) * np.exp(-np.maximum(t - attack, 0.0) / decay)
    level = on[-1] if n_on else 0.0
    u = np.linspace(0.0, 1.0, max(2, int(release * sr)), endpoint=False)
    return np.concatenate([on, level * (1.0 - u) * np.exp(-4.0 * u)])


def _damp(wave: np.ndarray, n_on: int, sr: int, release: float) -> np.ndarray:
    """A cached decaying note cut at ``n_on`` samples with a ``release``-second fade."""
    n_rel = max(2, int(release * sr))
    out = wave[: n_on + n_rel].copy()
    tail = out[n_on:]
    tail *= np.linspace(1.0, 0.0, n_rel)[: len(tail)]
    return out


def _lowpass_amps(k: np.ndarray, f0: float, cutoff: float) -> np.ndarray:
    """Gentle (one-pole-like) roll-off of harmonic ``k`` of ``f0`` above ``cutoff`` Hz."""
    return 1.0 / np.sqrt(1.0 + (k * f0 / cutoff) ** 2)


def _synth_pad(rng: np.random.Generator, sr: int, tuning: float) -> _Note:
    attack = float(rng.uniform(0.2, 0.5))
    detune = float(rng.uniform(3.0, 9.0))  # cents between the two oscillators
    amps = np.array([1.0, 0.22, 0.08, 0.03])

    def note(pitch: int, dur: float) -> np.ndarray:
        n_on = int(dur * sr)
        env = _adsr(n_on, sr, attack, 0.0, 1.0, 0.6)
        f0 = _hz(pitch, tuning)
        up = _cycles(np.full(len(env), f0 * 2.0 ** (detune / 2400.0)), sr)
        down = up * 2.0 ** (-detune / 1200.0)
        return env * (_harmonic_osc(amps, up) + _harmonic_osc(amps, down)) / 2.0

    return note


def _synth_strings(rng: np.random.Generator, sr: int, tuning: float) -> _Note:
    attack = float(rng.uniform(0.15, 0.35))
    cutoff = float(rng.uniform(1500.0, 3500.0))
    detune = float(rng.uniform(4.0, 12.0))

    def note(pitch: int, dur: float) -> np.ndarray:
        env = _adsr(int(dur * sr), sr, attack, 0.0, 1.0, 0.4)
        f0 = _hz(pitch, tuning)
        vib = _vibrato(rng, len(env), sr, 0.15)
        k = np.arange(1, _n_harmonics(f0 * 1.02, sr) + 1, dtype=float)
        amps = _lowpass_amps(k, f0, cutoff) / k
        cyc = _cycles(f0 * vib, sr)
        ratio = 2.0 ** (detune / 1200.0)
        return env * (_harmonic_osc(amps, cyc) + _harmonic_osc(amps, cyc * ratio)) / 2.0

    return note


def _synth_organ(rng: np.random.Generator, sr: int, tuning: float) -> _Note:
    # Drawbars 16', 8', 5 1/3', 4', 2 2/3', 2', 1 3/5', 1 1/3', 1' are harmonics 1, 2, 3, 4, 6,
    # 8, 10, 12, 16 of the sub-octave; each drawbar step is about 3 dB.
    harmonics = np.array([1, 2, 3, 4, 6, 8, 10, 12, 16])
    levels = rng.integers(0, 9, size=9)
    levels[1] = max(int(levels[1]), 6)  # the 8' fundamental always sounds
    table = np.zeros(16)
    table[harmonics - 1] = np.where(levels > 0, 10.0 ** ((levels - 8) * 3.0 / 20.0), 0.0)
    tremolo_rate = float(rng.uniform(5.5, 7.0))
    tremolo_depth = float(rng.uniform(0.0, 0.15))

    def note(pitch: int, dur: float) -> np.ndarray:
        env = _adsr(int(dur * sr), sr, 0.005, 0.0, 1.0, 0.03)
        sub = _hz(pitch, tuning) / 2.0
        k = np.arange(1, 17)
        amps = np.where(k * sub < 0.45 * sr, table, 0.0)
        lfo = np.sin(2 * np.pi * tremolo_rate * _time(len(env), sr))
        trem = 1.0 - tremolo_depth * (0.5 + 0.5 * lfo)
        return env * trem * _harmonic_osc(amps, _cycles(np.full(len(env), sub), sr)) / 2.0

    return note


def _synth_brass(rng: np.random.Generator, sr: int, tuning: float) -> _Note:
    attack = float(rng.uniform(0.04, 0.09))
    spread = float(rng.uniform(5.0, 10.0))  # harmonics reached at full amplitude

    def note(pitch: int, dur: float) -> np.ndarray:
        n_on = int(dur * sr)
        env = _adsr(n_on, sr, attack, 0.12, 0.8, 0.1)
        f0 = _hz(pitch, tuning)
        t = _time(len(env), sr)
        freq = f0 * 2.0 ** (-0.5 / 12.0 * np.exp(-t / 0.03))  # starts half a semitone flat
        k = np.arange(1, _n_harmonics(f0, sr) + 1, dtype=float)
        dark = k**-0.8 * np.exp(-(k - 1.0) / 1.5)
        bright = k**-0.8 * np.exp(-(k - 1.0) / spread)
        cyc = _cycles(freq, sr)
        # Louder is brighter: the bright spectrum fades in with the envelope.
        return env * (_harmonic_osc(dark, cyc) + env * _harmonic_osc(bright - dark, cyc))

    return note


def _synth_piano(rng: np.random.Generator, sr: int, tuning: float) -> _Note:
    stiffness = float(rng.uniform(1e-4, 4e-4))
    hardness = float(rng.uniform(0.8, 1.4))  # spectral slope of the hammer
    cache: dict[int, np.ndarray] = {}

    def render(pitch: int) -> np.ndarray:
        f0 = _hz(pitch, tuning)
        t60 = float(np.clip(3.0 * np.sqrt(220.0 / f0), 0.8, 4.0))
        t = _time(int(min(t60, 2.0) * sr), sr)
        out = np.zeros(len(t))
        for k in range(1, 11):
            fk = k * f0 * np.sqrt(1.0 + stiffness * k * k)
            if fk >= 0.45 * sr:
                break
            decay = t60 / (1.0 + 0.35 * (k - 1))
            out += k**-hardness * np.sin(2 * np.pi * fk * t) * np.exp(-6.908 * t / decay)
        n_thump = int(0.01 * sr)
        thump = rng.standard_normal(n_thump) * np.exp(-np.arange(n_thump) / (0.002 * sr))
        out[: len(thump)] += 0.15 * thump
        out[: int(0.002 * sr)] *= np.linspace(0.0, 1.0, int(0.002 * sr))
        return out

    def note(pitch: int, dur: float) -> np.ndarray:
        if pitch not in cache:
            cache[pitch] = render(pitch)
        return _damp(cache[pitch], int(dur * sr), sr, 0.12)

    return note


def _synth_guitar(rng: np.random.Generator, sr: int, tuning: float) -> _Note:
    t60 = float(rng.uniform(1.0, 2.5))
    brightness = float(rng.uniform(0.5, 0.8))
    pick = bool(rng.random() < 0.5)
    cache: dict[int, np.ndarray] = {}

    def note(pitch: int, dur: float) -> np.ndarray:
        if pitch not in cache:
            n = int(min(t60, 2.0) * sr)
            cache[pitch] = _render_pluck(
                rng, n, sr, 1.0, 1.0, f0=_hz(pitch, tuning), t60=t60,
                brightness=brightness, bright_excitation=pick,
            )
        return _damp(cache[pitch], int(dur * sr), sr, 0.05)

    return note


def _synth_marimba(rng: np.random.Generator, sr: int, tuning: float) -> _Note:
    t60 = float(rng.uniform(0.5, 1.0))
    ratios = np.array([1.0, 3.93, 9.2])
    amps = np.array([1.0, 0.45, 0.15]) * rng.uniform(0.8, 1.2, 3)
    cache: dict[int, np.ndarray] = {}

    def render(pitch: int) -> np.ndarray:
        f0 = _hz(pitch, tuning)
        t = _time(int(t60 * 1.2 * sr), sr)
        out = np.zeros(len(t))
        for ratio, amp, decay in zip(ratios, amps, (t60, t60 / 3.0, t60 / 8.0)):
            if ratio * f0 < 0.45 * sr:
                out += amp * np.sin(2 * np.pi * ratio * f0 * t) * np.exp(-6.908 * t / decay)
        n_click = int(0.004 * sr)
        out[:n_click] += 0.3 * rng.standard_normal(n_click) * np.linspace(1.0, 0.0, n_click)
        return out

    def note(pitch: int, dur: float) -> np.ndarray:
        if pitch not in cache:
            cache[pitch] = render(pitch)
        return cache[pitch]  # bars ring out

    return note


def _synth_lead(rng: np.random.Generator, sr: int, tuning: float) -> _Note:
    cutoff = float(rng.uniform(2000.0, 6000.0))
    sustain = float(rng.uniform(0.6, 0.85))

    def note(pitch: int, dur: float) -> np.ndarray:
        env = _adsr(int(dur * sr), sr, 0.005, 0.1, sustain, 0.05)
        f0 = _hz(pitch, tuning)
        k = np.arange(1, _n_harmonics(f0 * 1.01, sr) + 1, dtype=float)
        amps = np.where(k % 2 == 1, 1.0 / k, 0.0) * _lowpass_amps(k, f0, cutoff)
        vib = _vibrato(rng, len(env), sr, 0.08)
        return 0.7 * env * _harmonic_osc(amps, _cycles(f0 * vib, sr))

    return note


def _synth_flute(rng: np.random.Generator, sr: int, tuning: float) -> _Note:
    breath = float(rng.uniform(0.04, 0.12))
    amps = np.array([1.0, 0.25, 0.08, 0.03])
    lo, hi = float(rng.uniform(1200.0, 2000.0)), float(rng.uniform(4000.0, 6500.0))

    def note(pitch: int, dur: float) -> np.ndarray:
        env = _adsr(int(dur * sr), sr, 0.06, 0.0, 1.0, 0.08)
        n = len(env)
        f0 = _hz(pitch, tuning)
        k = np.arange(1, 5)
        cyc = _cycles(f0 * _vibrato(rng, n, sr, 0.2), sr)
        tone = _harmonic_osc(np.where(k * f0 < 0.45 * sr, amps, 0.0), cyc)
        noise = _shape_spectrum(rng.standard_normal(n), sr, lambda f: _band_mask(f, lo, hi))
        noise /= np.sqrt(np.mean(noise**2)) + 1e-12
        chiff = 1.0 + 4.0 * np.exp(-_time(n, sr) / 0.03)  # the attack's burst of air
        return env * (tone + breath * chiff * noise)

    return note


def _synth_bell(rng: np.random.Generator, sr: int, tuning: float) -> _Note:
    ratio = float(rng.choice([1.4, 2.76, 3.5]))
    index0 = float(rng.uniform(2.0, 5.0))
    t60 = float(rng.uniform(1.5, 3.0))
    cache: dict[int, np.ndarray] = {}

    def render(pitch: int) -> np.ndarray:
        fc = _hz(pitch, tuning)
        fm = ratio * fc
        # Keep the sidebands (about index + 1 of them) below 0.45 sr: no aliasing.
        index = min(index0, max(0.3, (0.45 * sr - fc) / fm - 1.0))
        t = _time(int(min(t60, 2.0) * sr), sr)
        modulation = index * np.exp(-t / (0.3 * t60)) * np.sin(2 * np.pi * fm * t)
        env = np.exp(-6.908 * t / t60) * np.minimum(t / 0.002, 1.0)
        return env * np.sin(2 * np.pi * fc * t + modulation)

    def note(pitch: int, dur: float) -> np.ndarray:
        if pitch not in cache:
            cache[pitch] = render(pitch)
        return 0.8 * cache[pitch]

    return note


def _synth_bass(rng: np.random.Generator, sr: int, tuning: float) -> _Note:
    cutoff = float(rng.uniform(300.0, 900.0))
    sweep = float(rng.uniform(2.0, 6.0))  # the filter opens this much at the attack
    decay = float(rng.uniform(0.05, 0.2))

    def note(pitch: int, dur: float) -> np.ndarray:
        env = _adsr(int(dur * sr), sr, 0.004, 0.3, 0.7, 0.04)
        f0 = _hz(pitch, tuning)
        k = np.arange(1, _n_harmonics(f0, sr) + 1, dtype=float)
        dark = _lowpass_amps(k, f0, cutoff) / k
        bright = _lowpass_amps(k, f0, cutoff * sweep) / k
        cyc = _cycles(np.full(len(env), f0), sr)
        opening = np.exp(-_time(len(env), sr) / decay)
        return env * (_harmonic_osc(dark, cyc) + opening * _harmonic_osc(bright - dark, cyc))

    return note


def _synth_drums(rng: np.random.Generator, sr: int, tuning: float) -> _Note:
    def noise_hit(lo: float, hi: float, tau: float, seconds: float) -> np.ndarray:
        n = int(seconds * sr)
        top = min(hi, 0.47 * sr)
        hit = _shape_spectrum(rng.standard_normal(n), sr, lambda f: _band_mask(f, lo, top))
        return hit / (np.max(np.abs(hit)) + 1e-12) * np.exp(-_time(n, sr) / tau)

    t = _time(int(0.5 * sr), sr)
    f_hi, f_lo = float(rng.uniform(110.0, 160.0)), float(rng.uniform(42.0, 58.0))
    sweep = f_lo + (f_hi - f_lo) * np.exp(-t / float(rng.uniform(0.025, 0.05)))
    kick = np.sin(2 * np.pi * _cycles(sweep, sr)) * np.exp(-t / float(rng.uniform(0.12, 0.25)))
    ts = t[: int(0.3 * sr)]
    snare_tone = np.sin(2 * np.pi * float(rng.uniform(170.0, 230.0)) * ts) * np.exp(-ts / 0.05)
    snare = 0.5 * snare_tone + noise_hit(1000.0, 7000.0, float(rng.uniform(0.08, 0.15)), 0.3)
    closed = 0.5 * noise_hit(5000.0, 7600.0, float(rng.uniform(0.02, 0.04)), 0.15)
    opened = 0.45 * noise_hit(4500.0, 7600.0, float(rng.uniform(0.15, 0.25)), 0.5)
    kit = [kick, snare, closed, opened]

    def note(piece: int, dur: float) -> np.ndarray:
        return kit[piece]

    return note


_SYNTHS: dict[str, Callable[[np.random.Generator, int, float], _Note]] = {
    "synth_pad": _synth_pad,
    "strings": _synth_strings,
    "organ": _synth_organ,
    "brass": _synth_brass,
    "piano": _synth_piano,
    "guitar": _synth_guitar,
    "marimba": _synth_marimba,
    "synth_lead": _synth_lead,
    "flute": _synth_flute,
    "bell": _synth_bell,
    "synth_bass": _synth_bass,
    "drums": _synth_drums,
}


# ------------------------------------------------------------------------------------------
# One track
# ------------------------------------------------------------------------------------------


def _spectral_centroid(x: np.ndarray, sr: int) -> float:
    """Centroid (Hz) of the mean magnitude spectrum of Hann-windowed 2048-sample frames."""
    frames = np.lib.stride_tricks.sliding_window_view(x, _CENTROID_FRAME)[:: _CENTROID_FRAME // 2]
    mag = np.abs(np.fft.rfft(frames * np.hanning(_CENTROID_FRAME), axis=1)).mean(axis=0)
    freqs = np.fft.rfftfreq(_CENTROID_FRAME, 1.0 / sr)
    return float(np.sum(freqs * mag) / (np.sum(mag) + 1e-20))


def _render_track(spec: MusicSpec, seed: int, index: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Track ``index``: float64 samples (peak in [-20, -1] dBFS) and its metadata."""
    sr = spec.sample_rate
    rng = np.random.default_rng([seed, index])
    design = _design(rng, seed, index, spec.seconds)
    n = int(round(spec.seconds * sr))
    beat = 60.0 / design.bpm
    n_buf = n + int(design.offset * sr)
    tuning = 440.0 * 2.0 ** (float(rng.uniform(-25.0, 25.0)) / 1200.0)

    mix = np.zeros(n_buf)
    levels: dict[str, float] = {}
    for name in design.instruments:
        note = _SYNTHS[name](rng, sr, tuning * 2.0 ** (float(rng.uniform(-5.0, 5.0)) / 1200.0))
        memo: dict[tuple[int, int], np.ndarray] = {}
        part = np.zeros(n_buf)
        for t, dur, pitch, vel in _part(rng, name, design, n_buf / sr):
            start = int(round(t * sr))
            if start >= n_buf:
                continue
            key = (pitch, int(dur * sr))
            if key not in memo:
                memo[key] = note(pitch, key[1] / sr)
            wave = memo[key][: n_buf - start]
            part[start : start + len(wave)] += vel * wave
        level_db = float(rng.uniform(-6.0, 0.0))
        levels[name] = round(level_db, 2)
        part *= 10.0 ** (level_db / 20.0) / (np.sqrt(np.mean(part**2)) + 1e-12)
        mix += part
    mix = mix[n_buf - n :]

    # The tone filter: a low-pass (dark) or a presence boost (bright) setting.
    if rng.random() < 0.5:
        setting, corner = "low-pass", float(rng.uniform(700.0, 2000.0))
        mix = _shape_spectrum(mix, sr, lambda f: 1.0 / np.sqrt(1.0 + (f / corner) ** 4))
    else:
        setting, corner = "presence", float(rng.uniform(1500.0, 3000.0))
        boost = 10.0 ** (float(rng.uniform(4.0, 12.0)) / 20.0)
        mix = _shape_spectrum(
            mix, sr, lambda f: 1.0 + (boost - 1.0) * _band_mask(f, corner, 0.5 * sr, 1.0)
        )

    # Room: decaying noise (-60 dB at rt60) after a short pre-delay, power-preserving mix.
    rt60 = float(rng.uniform(0.3, 1.5))
    ir_t = _time(int(rt60 * sr), sr)
    ir = np.concatenate([np.zeros(int(rng.uniform(0.01, 0.03) * sr)),
                         rng.standard_normal(len(ir_t)) * np.exp(-6.908 * ir_t / rt60)])
    ir /= np.sqrt(np.sum(ir**2))
    wet = float(rng.uniform(0.1, 0.4))
    mix = np.sqrt(1.0 - wet) * mix + np.sqrt(wet) * fftconvolve(mix, ir)[:n]

    snr_db = float(rng.uniform(40.0, 60.0))
    hiss = _pink_noise(rng, n)
    hiss *= np.sqrt(np.mean(mix**2) / 10.0 ** (snr_db / 10.0) / (np.mean(hiss**2) + 1e-20))
    mix = mix + hiss
    fade = int(0.01 * sr)
    ramp = 0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, fade))
    mix[:fade] *= ramp
    mix[n - fade :] *= ramp[::-1]

    centroid = _spectral_centroid(mix, sr)
    peak_db = float(rng.uniform(-20.0, -1.0))  # at most -1 dBFS: 16-bit PCM never clips
    mix *= 10.0 ** (peak_db / 20.0) / np.max(np.abs(mix))

    brightness = "bright" if centroid >= BRIGHT_CENTROID_HZ else "dark"
    tags = [*design.instruments, tempo_tag(design.bpm), brightness]
    meta = {
        "track": f"track_{index:04d}",
        "tags": tags,
        "instruments": list(design.instruments),
        "bpm": round(design.bpm, 3),
        "tempo": tempo_tag(design.bpm),
        "key": _ROOT_NAMES[design.tonic],
        "mode": design.mode,
        "centroid_hz": round(centroid, 2),
        "brightness": brightness,
        "tone_filter": setting,
        "tone_corner_hz": round(corner, 1),
        "section_seconds": round(4 * design.chord_beats * beat, 4),
        "progressions": [
            "-".join(_numeral(d, _MODES[design.mode]) for d in p) for p in design.progressions
        ],
        "levels_db": levels,
        "tuning_hz": round(tuning, 3),
        "start_offset_s": round(design.offset, 4),
        "rt60_s": round(rt60, 3),
        "wet": round(wet, 3),
        "snr_db": round(snr_db, 2),
        "peak_dbfs": round(peak_db, 2),
    }
    return mix, meta


def _write_track(task: tuple[MusicSpec, int, int, str]) -> dict[str, Any]:
    """Render one track, write it as 16-bit PCM, return its metadata (worker entry point)."""
    spec, seed, index, path = task
    wav, meta = _render_track(spec, seed, index)
    # Quantise ourselves (round to nearest) so the bytes do not depend on libsndfile's rules.
    pcm = np.round(wav * 32767.0).astype(np.int16)
    sf.write(path, pcm, spec.sample_rate, subtype="PCM_16", format="WAV")
    return meta


# ------------------------------------------------------------------------------------------
# The corpus
# ------------------------------------------------------------------------------------------


def _split_sizes(n: int) -> list[int]:
    held = [max(1, int(round(f * n))) for f in _SPLIT_FRACTIONS[1:]]
    return [n - sum(held), *held]


def _assign_splits(tags: list[list[str]], seed: int) -> list[str]:
    """Iterative multi-label stratification (Sechidis et al., 2011), exact split sizes.

    The rarest tag among unassigned tracks goes first: each of its tracks joins the split that
    still wants most of that tag (then most tracks, then a seeded random order), among splits
    not yet full.
    """
    n = len(tags)
    sizes = _split_sizes(n)
    want_total = np.array(sizes, dtype=float)
    counts = {t: sum(t in row for row in tags) for t in MUSIC_TAGS}
    want = {t: np.array(_SPLIT_FRACTIONS) * counts[t] for t in MUSIC_TAGS}
    rng = np.random.default_rng([seed, _SPLIT_KEY])
    order = [int(i) for i in rng.permutation(n)]
    tiebreak = rng.random((n, len(_SPLITS)))
    split_of: list[int | None] = [None] * n
    left = n
    while left:
        remaining = {t: sum(t in tags[i] for i in order if split_of[i] is None) for t in MUSIC_TAGS}
        tag = min((t for t in MUSIC_TAGS if remaining[t]), key=lambda t: remaining[t])
        for i in order:
            if split_of[i] is not None or tag not in tags[i]:
                continue
            open_ = [s for s in range(len(_SPLITS)) if want_total[s] > 0]
            s = max(open_, key=lambda s: (want[tag][s], want_total[s], tiebreak[i, s]))
            split_of[i] = s
            want_total[s] -= 1
            for t in tags[i]:
                want[t][s] -= 1
            left -= 1
    return [_SPLITS[s] for s in split_of if s is not None]


def synth_music(
    out: str | Path, *, seed: int = 0, scale: str = "full", progress: bool = True
) -> Path:
    """Write the embedded multi-instrument music corpus under `out`; return the manifest path.

    Args:
        out: folder to write into (created if needed). Audio goes to
            ``out/audio/<split>/track_NNNN.wav`` (16-bit PCM mono), the manifest, with columns
            ``path,label,split,track`` (paths relative to ``out``; ``label`` holds the track's
            tags joined by ``;``), to ``out/manifest.csv``, and per-track metadata (BPM, key,
            instruments, spectral centroid, ...) to ``out/tracks.json``.
        seed: non-negative integer; the same seed gives byte-identical files.
        scale: a key of :data:`MUSIC_SCALES`: ``"full"`` (144 tracks of 30 s, well under a
            minute on two cores) or ``"tiny"`` (18 tracks of 20 s, a few seconds; for tests).
        progress: show a progress bar.

    Tags come from :data:`MUSIC_TAGS` (see the module docstring). Re-running into the same
    folder overwrites it with the same result; WAV files listed by a previous manifest under
    ``out/audio`` but not in the new corpus are deleted.

    Raises:
        TympanError: unknown scale, negative seed, or ``out`` is an existing file.
    """
    check_corpus_args(scale, MUSIC_SCALES, seed, out, "music corpus")
    spec = MUSIC_SCALES[scale]
    seed = int(seed)
    root = Path(out)
    for name in (_MANIFEST, _SIDECAR):
        if (root / name).is_dir():
            raise TympanError(f"{root / name}: is a folder; remove it or choose another folder")
    staging = root / _AUDIO_DIR / _STAGING
    try:
        for folder in (staging, *(root / _AUDIO_DIR / s for s in _SPLITS)):
            folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = exc.strerror or exc
        raise TympanError(f"{root}: cannot create the corpus folders ({reason})") from exc

    tasks = [
        (spec, seed, i, str(staging / f"track_{i:04d}.wav")) for i in range(spec.n_tracks)
    ]
    metas = render_parallel(_write_track, tasks, progress=progress, desc="synth music",
                            unit="track", min_parallel=_PARALLEL_MIN_TRACKS)
    splits = _assign_splits([m["tags"] for m in metas], seed)

    rows: list[tuple[str, dict[str, Any]]] = []
    for split in _SPLITS:
        for meta, s in zip(metas, splits):
            if s == split:
                rel = f"{_AUDIO_DIR}/{split}/{meta['track']}.wav"
                os.replace(staging / f"{meta['track']}.wav", root / rel)
                rows.append((rel, {"path": rel, "split": split, **meta}))
    shutil.rmtree(staging, ignore_errors=True)

    manifest = root / _MANIFEST
    remove_stale_clips(root, {rel for rel, _ in rows}, prune_folders=False)

    header = {
        "seed": seed,
        "scale": scale,
        "sample_rate": spec.sample_rate,
        "seconds": spec.seconds,
        "bright_centroid_hz": BRIGHT_CENTROID_HZ,
        "tags": list(MUSIC_TAGS),
    }
    # One line per track: readable, diffable, and still plain JSON.
    lines = [f" {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}," for k, v in header.items()]
    tracks = ",\n".join(f"  {json.dumps(meta, ensure_ascii=False)}" for _, meta in rows)
    text = "{\n" + "\n".join(lines) + '\n "tracks": [\n' + tracks + "\n ]\n}\n"
    tmp = root / f".{_SIDECAR}.tmp"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, root / _SIDECAR)
    # The manifest is written last (and atomically): it always describes a complete corpus.
    items = [
        Item(path=root / rel, labels=tuple(meta["tags"]), split=meta["split"], track=meta["track"])
        for rel, meta in rows
    ]
    write_manifest(items, manifest)
    return manifest


#: Corpus sizes by name. ``full``: 144 tracks of 30 s (100 train, 22 val, 22 test); ``tiny``:
#: 18 tracks of 20 s (12 / 3 / 3), enough for every instrument to appear.
MUSIC_SCALES: dict[str, MusicSpec] = {
    "full": MusicSpec(n_tracks=144, seconds=30.0),
    "tiny": MusicSpec(n_tracks=18, seconds=20.0),
}
