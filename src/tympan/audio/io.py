"""Audio loading: decode, mix to mono, resample, and refuse files that cannot be used.

This is the only place where audio files are opened. Every problem with a file (missing,
unreadable, corrupt, empty, NaN/Inf, silent, too short) raises :class:`~tympan.errors.AudioError`
with a reason that says what is wrong and what to do, so that a user never sees a traceback from
inside libsndfile or soxr.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from tympan.errors import AudioError

__all__ = ["AUDIO_EXTENSIONS", "SILENCE_PEAK", "audio_duration", "is_audio_file", "load_audio"]

#: File extensions (lower case) that libsndfile decodes; class folders are scanned for these.
AUDIO_EXTENSIONS: tuple[str, ...] = (".wav", ".flac", ".ogg", ".mp3")

#: A file whose peak absolute amplitude is below this (about -80 dBFS) counts as silent.
SILENCE_PEAK: float = 1e-4

# Said after every "cannot be decoded" reason: these three formats decode losslessly and
# identically with every libsndfile build, unlike MP3 (only libsndfile >= 1.1) or exotic codecs.
_REENCODE_HINT = "re-encode it as WAV, FLAC or OGG"

# What soundfile raises for a file it cannot open or decode: LibsndfileError (a RuntimeError) for
# libsndfile failures, TypeError/ValueError for headers it cannot interpret, OSError for I/O
# errors met while reading, EOFError/MemoryError for truncated or absurd headers.
_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    sf.SoundFileError,
    RuntimeError,
    TypeError,
    ValueError,
    OSError,
    EOFError,
    MemoryError,
)


def _check_openable(path: Path) -> None:
    """Raise AudioError unless ``path`` is an existing, readable regular file.

    Checked before libsndfile sees the path because libsndfile reports all of these cases as
    the same opaque "Error opening" message.
    """
    if not path.exists():
        raise AudioError(path, "file not found; fix the path in the manifest or remove the row")
    if path.is_dir():
        raise AudioError(
            path, "is a folder, not an audio file; point the manifest row at an audio file"
        )
    try:
        # Opening (and closing) costs one syscall and is the only reliable permission test:
        # os.access() ignores ACLs and is always true for root.
        with open(path, "rb"):
            pass
    except PermissionError:
        raise AudioError(
            path, "cannot be read (permission denied); fix its permissions, e.g. chmod a+r"
        ) from None
    except OSError as exc:
        raise AudioError(
            path, f"cannot be read ({exc.strerror or exc}); check the file and its storage"
        ) from None


def _decode_reason(exc: BaseException) -> str:
    """The reason for a decoding failure, with libsndfile's own message when it has one."""
    # LibsndfileError's str() repeats the path ("Error opening '/x.wav': ..."); its
    # error_string is the useful part ("Format not recognised.").
    detail = getattr(exc, "error_string", None) or str(exc) or type(exc).__name__
    detail = detail.strip().rstrip(".")
    return f"cannot be decoded ({detail}); {_REENCODE_HINT}"


def audio_duration(path: str | Path) -> float:
    """Duration of an audio file in seconds, read from its header (nothing is decoded).

    Raises :class:`AudioError` if the file is missing, unreadable or not decodable. For MP3 the
    header's frame count can be an estimate.
    """
    p = Path(path)
    _check_openable(p)
    try:
        info = sf.info(str(p))
    except _DECODE_ERRORS as exc:
        raise AudioError(p, _decode_reason(exc)) from None
    if info.samplerate <= 0:
        raise AudioError(p, f"has an invalid sample rate ({info.samplerate}); {_REENCODE_HINT}")
    return info.frames / info.samplerate


def load_audio(path: str | Path, sample_rate: int, *, min_seconds: float = 0.0) -> np.ndarray:
    """Decode an audio file to a mono float32 waveform at ``sample_rate``.

    Channels are averaged to mono, then the signal is resampled with soxr (quality ``"HQ"``)
    when the file's rate differs. Returns a contiguous 1-D ``float32`` array.

    Raises :class:`AudioError` when the file is missing, a folder, unreadable, corrupt, empty,
    contains NaN/Inf samples, is silent (peak below :data:`SILENCE_PEAK`) or is shorter than
    ``min_seconds`` after resampling.
    """
    if sample_rate <= 0:
        # a programming error, not a property of the file, hence not an AudioError
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    p = Path(path)
    _check_openable(p)
    try:
        # always_2d gives [frames, channels] for mono and multichannel files alike
        data, file_rate = sf.read(str(p), dtype="float32", always_2d=True)
    except _DECODE_ERRORS as exc:
        raise AudioError(p, _decode_reason(exc)) from None

    if data.shape[0] == 0:
        raise AudioError(
            p, "contains no audio (0 frames); re-export the recording or remove the row"
        )
    bad = int(data.size - np.count_nonzero(np.isfinite(data)))
    if bad:
        # only float WAV/FLAC can hold these; one NaN would poison every batch it lands in
        raise AudioError(
            p,
            f"contains {bad} NaN or infinite sample(s); repair or re-export it "
            "(e.g. as 16-bit PCM WAV) or remove the row",
        )

    mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    # Checked after mixing: phase-inverted channels cancel to silence in mono, and that is
    # what the model would see.
    peak = float(np.max(np.abs(mono)))
    if peak < SILENCE_PEAK:
        raise AudioError(
            p,
            f"is silent (peak amplitude {peak:.2g} is below {SILENCE_PEAK:g}); "
            "check the recording or remove the row",
        )

    if file_rate != sample_rate:
        mono = soxr.resample(mono, file_rate, sample_rate, quality="HQ")
        if len(mono) == 0:
            # a handful of samples can round to nothing at a lower rate
            raise AudioError(
                p,
                f"is too short to resample from {file_rate} Hz to {sample_rate} Hz "
                f"({data.shape[0]} frames); remove the row",
            )

    seconds = len(mono) / sample_rate
    if seconds < min_seconds:
        raise AudioError(
            p,
            f"is {seconds:.2f} s long, shorter than the {min_seconds:.2f} s needed; "
            "remove the row or lower the required length",
        )
    return np.ascontiguousarray(mono, dtype=np.float32)


def is_audio_file(path: str | Path) -> bool:
    """True when ``path`` has one of :data:`AUDIO_EXTENSIONS` (case-insensitive) and is not a
    hidden file (e.g. macOS ``._name.wav`` resource forks, which are not audio)."""
    name = os.path.basename(os.fspath(path))
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in AUDIO_EXTENSIONS
