"""Pretext-task labels: frame-wise signal features and their clip means, extracted once and cached.

Zaiem & Parcollet, "Pretext-task selection by conditional independence"
(``../shared/seeds/004_f3e19d7efff003e6.txt``). The candidates are the seed's Table I (section
VI-A) -- loudness, F0, voicing, alpha ratio, zero-crossing rate, RASTA-spectrum L1 norm, log HNR
-- plus the three labels added in section VIII-B ("mean spectral centroid, mean spectral
kurtosis and Hammarberg index"). Each is an openSMILE low-level descriptor (LLD) at a 10 ms
hop, as in the seed's released code:

==================  ==============  ===================================  ============================
name                feature set     openSMILE column                     seed
==================  ==============  ===================================  ============================
loudness            eGeMAPSv02      ``Loudness_sma3``                    Table I "Loudness"
f0                  ComParE_2016    ``F0final_sma`` (Hz, 0 if unvoiced)  Table I "F0"
voicing             ComParE_2016    ``voicingFinalUnclipped_sma``        Table I "Voicing"
alpha_ratio         eGeMAPSv02      ``alphaRatio_sma3``                  Table I "Alpha Ratio"
zcr                 ComParE_2016    ``pcm_zcr_sma``                      Table I "Zero Crossing Rate"
audspec_l1          ComParE_2016    ``audspecRasta_lengthL1norm_sma``    Table I "RastaSpec L1Norm"
log_hnr             ComParE_2016    ``logHNR_sma``                       Table I "log HNR"
spectral_centroid   ComParE_2016    ``pcm_fftMag_spectralCentroid_sma``  section VIII-B
spectral_kurtosis   ComParE_2016    ``pcm_fftMag_spectralKurtosis_sma``  section VIII-B
hammarberg          eGeMAPSv02      ``hammarbergIndex_sma3``             section VIII-B
==================  ==============  ===================================  ============================

``audspec_l1`` is the L1 norm of the *RASTA-filtered* auditory spectrum (Table I: "L1 Norm of
Rasta Spectrum"; the seed's code reads ``audspecRasta_lengthL1norm_sma``). The unfiltered
``audspec_lengthL1norm_sma`` is, in openSMILE 2.x, numerically identical to eGeMAPS'
``Loudness_sma3`` and would duplicate ``loudness``.

**Clip means** (the ``z_i`` of the seed, section III-B: "zi values are the mean of the
frame-wise pretext-task label values") are plain means over a clip's frames, as the seed does.
For ``f0`` this includes the unvoiced frames, where openSMILE writes 0 Hz: a clip's mean F0
therefore mixes pitch height and voiced fraction (a wholly unvoiced clip has mean F0 0, never
NaN). ``voicing`` is the unclipped voicing probability averaged over all frames. The mean is
taken over each candidate's own frames, before the length alignment below.

**Frames.** Every candidate gives one value per 10 ms hop. A clip of ``n`` samples has
``T = max(1, n // hop)`` frames (``hop = sample_rate / 100``); each candidate's frames are
trimmed or edge-padded to ``T`` (openSMILE stops a few frames early because its analysis
windows, 20-60 ms, must fit inside the clip). A user candidate whose frame count is far from
``T`` (more than 10 frames + 10 %) is refused: it is probably at another hop.

**Non-finite values** (NaN/inf from a user function, say) are replaced by the mean of that
candidate's finite frames in the clip (0 if none), counted per clip and candidate in
``nonfinite`` and reported in one warning; the clip mean is then the mean of the finite frames.

**Registry.** :data:`CANDIDATES` maps names to :class:`Candidate`; :func:`register_candidate`
adds one from a function ``fn(wav, sr) -> np.ndarray [frames]`` at the 10 ms hop (librosa-only
candidates work without openSMILE). Extraction (:func:`extract_labels`) runs each openSMILE
feature set once per file, caches one small file per (audio file, candidate set, sample rate,
extractor version) and runs over files in a pool of forked processes with a progress bar.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import re
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from tympan.audio.io import load_audio
from tympan.data.corpora import _can_fork
from tympan.data.manifest import read_manifest
from tympan.data.scan import SKIP_BAD_HINT
from tympan.errors import AudioError, ConfigError, TympanError

__all__ = [
    "CANDIDATES",
    "DEFAULT_CANDIDATES",
    "HOP_SECONDS",
    "LABELS_VERSION",
    "MIN_SECONDS",
    "Candidate",
    "PretextLabels",
    "extract_labels",
    "register_candidate",
    "unregister_candidate",
]

log = logging.getLogger("tympan")

HOP_SECONDS = 0.01
"""Frame hop of every candidate (openSMILE's LLD hop; the seed's 10 ms frames)."""

LABELS_VERSION = 1
"""Version of the labels file layout and of the extraction rules (part of every cache key)."""

MIN_SECONDS = 0.1
"""Shortest usable clip: ComParE's 60 ms pitch window must fit and leave a few frames."""

_INSTALL_HINT = "pip install 'tympan[pretext]' (or pip install opensmile)"
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_WINDOW_PER_WORKER = 4  # files in flight per worker process


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """A pretext-task label candidate.

    Either an openSMILE LLD (``feature_set`` + ``column``) or a function
    ``fn(wav: np.ndarray, sr: int) -> np.ndarray [frames]`` at the 10 ms hop. ``version`` enters
    the cache key: bump it when the definition changes.
    """

    name: str
    description: str
    fn: Callable[[np.ndarray, int], np.ndarray] | None = None
    feature_set: str | None = None
    column: str | None = None
    version: str = "1"

    @property
    def uses_opensmile(self) -> bool:
        return self.feature_set is not None

    def token(self) -> str:
        """What identifies the candidate's definition in a cache key."""
        if self.uses_opensmile:
            return f"{self.name}:opensmile:{self.feature_set}:{self.column}:{self.version}"
        code = getattr(self.fn, "__code__", None)
        digest = _code_digest(code)[:16] if code is not None else ""
        qual = f"{getattr(self.fn, '__module__', '')}.{getattr(self.fn, '__qualname__', type(self.fn).__name__)}"
        return f"{self.name}:fn:{qual}:{digest}:{self.version}"


def _code_digest(code: Any) -> str:
    """Hash of a function's bytecode and constants, nested code objects (comprehensions,
    inner functions) included by their own hash: a ``repr`` would hold memory addresses."""
    h = hashlib.sha256(code.co_code)
    for const in code.co_consts:
        h.update(_code_digest(const).encode() if hasattr(const, "co_code") else repr(const).encode())
    h.update(repr(code.co_names).encode())
    return h.hexdigest()


CANDIDATES: dict[str, Candidate] = {}
"""Registered candidates by name, in registration order (the seed's ten first)."""


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigError(f"pretext candidate name {name!r}: use snake case (a-z, 0-9, _), e.g. 'spectral_flux'")
    return name


def register_candidate(
    name: str,
    fn: Callable[[np.ndarray, int], np.ndarray],
    description: str = "",
    *,
    version: str = "1",
    overwrite: bool = False,
) -> Candidate:
    """Add a candidate computed by ``fn(wav, sr) -> np.ndarray [frames]`` (one value per 10 ms).

    ``wav`` is the mono float32 clip at the extraction's sample rate. The result may also be
    ``[1, frames]`` (as librosa returns). It is aligned to the clip's frame count (see the
    module docstring). With the default process pool the function need not be picklable
    (workers are forked after registration), but it must be registered before
    :func:`extract_labels` is called. Raises :class:`ConfigError` if the name is taken, unless
    ``overwrite``.
    """
    _check_name(name)
    if not callable(fn):
        raise ConfigError(f"register_candidate({name!r}): fn must be callable fn(wav, sr) -> frames")
    if name in CANDIDATES and not overwrite:
        raise ConfigError(f"pretext candidate {name!r} is already registered; pick another name "
                          "or pass overwrite=True")
    cand = Candidate(name, description or name, fn=fn, version=str(version))
    CANDIDATES[name] = cand
    return cand


def unregister_candidate(name: str) -> None:
    """Remove a registered candidate (no error if absent)."""
    CANDIDATES.pop(name, None)


def _builtin(name: str, feature_set: str, column: str, description: str) -> None:
    CANDIDATES[name] = Candidate(name, description, feature_set=feature_set, column=column)


_builtin("loudness", "eGeMAPSv02", "Loudness_sma3", "Intensity & approx. loudness (seed Table I)")
_builtin("f0", "ComParE_2016", "F0final_sma", "Fundamental frequency in Hz, 0 when unvoiced (seed Table I)")
_builtin("voicing", "ComParE_2016", "voicingFinalUnclipped_sma", "Voicing decision / probability (seed Table I)")
_builtin("alpha_ratio", "eGeMAPSv02", "alphaRatio_sma3",
         "Ratio of spectrum intensity below / above 1000 Hz (seed Table I)")
_builtin("zcr", "ComParE_2016", "pcm_zcr_sma", "Zero crossings per frame (seed Table I)")
_builtin("audspec_l1", "ComParE_2016", "audspecRasta_lengthL1norm_sma",
         "L1 norm of the RASTA-filtered auditory spectrum (seed Table I 'RastaSpec L1Norm')")
_builtin("log_hnr", "ComParE_2016", "logHNR_sma", "log harmonics-to-noise ratio (seed Table I)")
_builtin("spectral_centroid", "ComParE_2016", "pcm_fftMag_spectralCentroid_sma",
         "Spectral centroid in Hz (seed section VIII-B)")
_builtin("spectral_kurtosis", "ComParE_2016", "pcm_fftMag_spectralKurtosis_sma",
         "Spectral kurtosis (seed section VIII-B)")
_builtin("hammarberg", "eGeMAPSv02", "hammarbergIndex_sma3", "Hammarberg index (seed section VIII-B)")

DEFAULT_CANDIDATES: tuple[str, ...] = tuple(CANDIDATES)
"""The seed's ten candidates (Table I and section VIII-B)."""


def _resolve(candidates: Sequence[str] | None) -> list[Candidate]:
    if candidates is None:
        names = list(CANDIDATES)
    else:
        names = [candidates] if isinstance(candidates, str) else list(candidates)
    if not names:
        raise ConfigError("pretext labels: no candidates given; pass at least one name "
                          f"(registered: {', '.join(CANDIDATES)})")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"pretext labels: candidate {dup[0]!r} is listed twice")
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        raise ConfigError(f"pretext labels: unknown candidate {unknown[0]!r}; registered: "
                          f"{', '.join(CANDIDATES)} (add one with tympan.pretext.register_candidate)")
    return [CANDIDATES[n] for n in names]


def _require_opensmile(cands: Sequence[Candidate]) -> str | None:
    """openSMILE's version if some candidate needs it; TympanError if it is not installed."""
    needing = [c.name for c in cands if c.uses_opensmile]
    if not needing:
        return None
    try:
        import opensmile
    except ImportError:
        raise TympanError(f"pretext labels: candidates {', '.join(needing)} are computed with openSMILE, "
                          f"which is not installed; {_INSTALL_HINT}, or choose only user-registered "
                          "candidates") from None
    return str(getattr(opensmile, "__version__", "unknown"))


# --------------------------------------------------------------------------------------------
# One file
# --------------------------------------------------------------------------------------------

_SMILES: dict[tuple[int, str], Any] = {}


def _smile(feature_set: str) -> Any:
    """One ``opensmile.Smile`` per (process, feature set): never shared across a fork."""
    key = (os.getpid(), feature_set)
    if key not in _SMILES:
        import opensmile

        _SMILES[key] = opensmile.Smile(feature_set=getattr(opensmile.FeatureSet, feature_set),
                                       feature_level=opensmile.FeatureLevel.LowLevelDescriptors)
    return _SMILES[key]


def _n_frames(n_samples: int, sample_rate: int) -> int:
    return max(1, n_samples // max(1, round(HOP_SECONDS * sample_rate)))


def _align(v: np.ndarray, t: int) -> np.ndarray:
    """Trim or edge-pad ``v [frames]`` to ``t`` frames."""
    if len(v) >= t:
        return v[:t]
    return np.concatenate([v, np.full(t - len(v), v[-1])])


def _frames(path: str, wav: np.ndarray, sr: int, cands: Sequence[Candidate]) -> dict[str, np.ndarray]:
    """Native frame values of every candidate; each openSMILE feature set runs once."""
    out: dict[str, np.ndarray] = {}
    for fs in dict.fromkeys(c.feature_set for c in cands if c.uses_opensmile):
        try:
            df = _smile(fs).process_signal(wav, sr)
        except Exception as exc:  # openSMILE reports failures as generic exceptions
            raise AudioError(path, f"openSMILE ({fs}) failed ({exc}); re-encode the file or remove the row") from None
        for c in cands:
            if c.feature_set == fs:
                out[c.name] = df[c.column].to_numpy(np.float64)
    for c in cands:
        if c.uses_opensmile:
            continue
        try:
            v = np.asarray(c.fn(wav, sr), dtype=np.float64)  # type: ignore[misc]
        except Exception as exc:
            raise TympanError(f"pretext candidate {c.name!r} failed on {path}: {type(exc).__name__}: {exc}; "
                              "fix the function given to register_candidate") from None
        if v.ndim != 1:
            if v.ndim == 2 and 1 in v.shape:
                v = v.reshape(-1)
            else:
                raise TympanError(f"pretext candidate {c.name!r} returned shape {v.shape} for {path}; it must "
                                  "return one value per 10 ms frame, shape [frames]")
        out[c.name] = v
    return out


def _compute(path: str, sample_rate: int, cands: Sequence[Candidate]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(frames [T, K] float32, clip means [K] float64, non-finite counts [K])`` of one file."""
    wav = load_audio(path, sample_rate, min_seconds=MIN_SECONDS)
    t = _n_frames(len(wav), sample_rate)
    native = _frames(path, wav, sample_rate, cands)
    frames = np.zeros((t, len(cands)), dtype=np.float32)
    means = np.zeros(len(cands))
    bad = np.zeros(len(cands), dtype=np.int64)
    for k, c in enumerate(cands):  # a handful of candidates per file; frames are vectorised
        v = native[c.name]
        if len(v) == 0:
            raise AudioError(path, f"is too short for candidate {c.name!r} (no frames); remove the row")
        if abs(len(v) - t) > 10 + 0.1 * t:
            raise TympanError(f"pretext candidate {c.name!r} gave {len(v)} frames for {path} "
                              f"({len(wav) / sample_rate:.2f} s, {t} frames of 10 ms expected); "
                              "candidates must return one value per 10 ms hop")
        ok = np.isfinite(v)
        bad[k] = int((~ok).sum())
        means[k] = float(v[ok].mean()) if ok.any() else 0.0
        if bad[k]:
            v = np.where(ok, v, means[k])
        frames[:, k] = _align(v, t)
    return frames, means, bad


def _cache_key(path: str, sample_rate: int, cands: Sequence[Candidate], smile_version: str | None) -> str:
    st = os.stat(path)
    ident = {
        "path": os.path.abspath(path),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "sample_rate": int(sample_rate),
        "candidates": [c.token() for c in cands],
        "labels_version": LABELS_VERSION,
        "opensmile": smile_version,
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


def _cache_file(cache_dir: Path, key: str) -> Path:
    return cache_dir / key[:2] / f"{key}.npz"


def _read_cache(p: Path, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    try:
        with np.load(p, allow_pickle=False) as z:
            res = z["frames"], z["means"], z["nonfinite"]
    except (OSError, ValueError, KeyError, EOFError):
        return None  # missing or damaged: recompute
    if res[0].ndim != 2 or res[0].shape[1] != k:
        return None
    return res


def _atomic_savez(p: Path, **arrays: Any) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp{os.getpid()}.npz")
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()


# Task and result of one worker. Errors travel as plain tuples: AudioError does not unpickle.
_Task = tuple[int, str, int, tuple[str, ...], str | None]


def _work(task: _Task) -> tuple[int, Any]:
    i, path, sample_rate, names, cache_path = task
    cands = [CANDIDATES[n] for n in names]
    try:
        frames, means, bad = _compute(path, sample_rate, cands)
    except AudioError as exc:
        return i, ("audio", exc.path, exc.reason)
    except TympanError as exc:
        return i, ("error", str(exc), "")
    if cache_path is not None:
        try:
            _atomic_savez(Path(cache_path), frames=frames, means=means, nonfinite=bad)
        except OSError as exc:
            log.warning("pretext labels: cannot write cache file %s (%s)", cache_path, exc)
    return i, (frames, means, bad)


def _default_workers() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 8))


def _run(tasks: list[_Task], workers: int, bar: tqdm) -> Iterator[tuple[int, Any]]:
    """Results of :func:`_work` in task order, in-process or in worker processes."""
    if workers <= 1 or len(tasks) < 2 or not _can_fork():
        for t in tasks:
            yield _work(t)
            bar.update()
        return
    workers = min(workers, len(tasks))
    # Built-in (openSMILE) candidates run in spawned workers: a fork of a process whose other
    # threads (torch's OpenMP pool, tqdm's monitor) hold a lock can deadlock the child, and did
    # once in the test suite on a loaded machine. A user's function may not be importable by a
    # fresh interpreter (a lambda, a function of __main__), so user candidates keep fork.
    builtin = all(CANDIDATES[n].uses_opensmile for n in tasks[0][3])
    method = "spawn" if builtin else "fork"
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(method))
    pending: deque[Future[tuple[int, Any]]] = deque()
    nxt = 0
    try:
        while pending or nxt < len(tasks):
            with warnings.catch_warnings():
                # Python >= 3.12 warns about fork() in a threaded process; the workers run
                # numpy / openSMILE / librosa code only and take no lock of the parent.
                warnings.simplefilter("ignore", DeprecationWarning)
                while nxt < len(tasks) and len(pending) < workers * _WINDOW_PER_WORKER:
                    pending.append(pool.submit(_work, tasks[nxt]))
                    nxt += 1
            res = pending.popleft().result()
            bar.update()
            yield res
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# --------------------------------------------------------------------------------------------
# Labels file
# --------------------------------------------------------------------------------------------


def _norm_path(p: str | Path) -> str:
    return os.path.abspath(os.fspath(p))


@dataclass(eq=False)
class PretextLabels:
    """Pretext-task labels of N clips and K candidates (seed section III-B's ``z``).

    ``frames`` concatenates every clip's ``[T_i, K]`` frames; clip ``i`` owns rows
    ``offsets[i]:offsets[i+1]``. ``clip_means[i, k]`` is the mean of candidate ``k`` over clip
    ``i``'s frames (see the module docstring for F0 / voicing). ``nonfinite[i, k]`` counts the
    frames that were NaN/inf and replaced. ``skipped`` lists ``{"path", "reason"}`` of files
    left out with ``skip_bad``.
    """

    paths: list[str]
    names: list[str]
    clip_means: np.ndarray
    frames: np.ndarray
    offsets: np.ndarray
    hop_seconds: float = HOP_SECONDS
    sample_rate: int = 16000
    version: int = LABELS_VERSION
    nonfinite: np.ndarray | None = None
    skipped: list[dict[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.paths = [str(p) for p in self.paths]
        self.names = [str(n) for n in self.names]
        self.clip_means = np.asarray(self.clip_means, dtype=np.float32).reshape(len(self.paths), len(self.names))
        self.frames = np.asarray(self.frames, dtype=np.float32).reshape(-1, len(self.names))
        self.offsets = np.asarray(self.offsets, dtype=np.int64)
        if self.nonfinite is None:
            self.nonfinite = np.zeros((len(self.paths), len(self.names)), dtype=np.int64)
        if len(self.offsets) != len(self.paths) + 1 or self.offsets[-1] != len(self.frames):
            raise TympanError(f"pretext labels: offsets ({len(self.offsets)}) must have N+1 = {len(self.paths) + 1} "
                              f"entries ending at the {len(self.frames)} frames; the file is damaged, re-extract it")
        self._index: dict[str, int] | None = None

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def lengths(self) -> np.ndarray:
        """Frames per clip ``[N]``."""
        return np.diff(self.offsets)

    # ---- access

    def clip_means_dict(self) -> dict[str, np.ndarray]:
        """``{name: clip means [N]}`` (the ``labels`` argument of the HSIC functions)."""
        return {n: self.clip_means[:, k].copy() for k, n in enumerate(self.names)}

    def frames_of(self, i: int) -> np.ndarray:
        """Frames ``[T_i, K]`` of clip ``i``."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"clip {i} out of range ({len(self)} clips)")
        i = i % len(self)
        return self.frames[self.offsets[i]:self.offsets[i + 1]]

    def _cols(self, names: Sequence[str] | None) -> list[int]:
        if names is None:
            return list(range(len(self.names)))
        if isinstance(names, str):
            names = [names]
        missing = [n for n in names if n not in self.names]
        if missing:
            raise TympanError(f"pretext labels: no candidate {missing[0]!r} in this labels file (it has "
                              f"{', '.join(self.names)}); re-run tympan pretext labels with it")
        return [self.names.index(n) for n in names]

    def padded(self, names: Sequence[str] | None = None) -> tuple[Tensor, Tensor]:
        """``(frames [N, T_max, K'] float32 zero-padded, lengths [N] int64)`` for ``names``."""
        cols = self._cols(names)
        lengths = self.lengths
        out = torch.zeros((len(self), int(lengths.max(initial=0)), len(cols)), dtype=torch.float32)
        row = np.repeat(np.arange(len(self)), lengths)
        col = np.arange(len(self.frames)) - np.repeat(self.offsets[:-1], lengths)
        out[torch.as_tensor(row), torch.as_tensor(col)] = torch.as_tensor(self.frames[:, cols])
        return out, torch.as_tensor(lengths)

    def index_of(self, paths: Sequence[str | Path]) -> np.ndarray:
        """Row of each path (compared as absolute paths); TympanError naming missing ones."""
        if self._index is None:
            self._index = {_norm_path(p): i for i, p in enumerate(self.paths)}
        keys = [_norm_path(p) for p in paths]
        missing = [k for k in keys if k not in self._index]
        if missing:
            raise TympanError(f"pretext labels: {len(missing)} file(s) have no labels (first: {missing[0]}); "
                              "run tympan pretext labels on this data first (or with the same manifest)")
        return np.array([self._index[k] for k in keys], dtype=np.int64)

    def select(self, names: Sequence[str]) -> PretextLabels:
        """The same clips with only the candidates ``names`` (in that order)."""
        cols = self._cols(names)
        return PretextLabels(list(self.paths), [self.names[c] for c in cols], self.clip_means[:, cols],
                             self.frames[:, cols], self.offsets.copy(), self.hop_seconds, self.sample_rate,
                             self.version, self.nonfinite[:, cols], [dict(s) for s in self.skipped])

    # ---- files

    def save(self, path: str | Path) -> Path:
        """Write the labels to ``path`` (``.npz``; replaced atomically)."""
        p = Path(path)
        _atomic_savez(
            p,
            paths=np.array(self.paths, dtype=str),
            names=np.array(self.names, dtype=str),
            clip_means=self.clip_means.astype(np.float32),
            frames=self.frames.astype(np.float32),
            offsets=self.offsets.astype(np.int64),
            nonfinite=np.asarray(self.nonfinite, dtype=np.int64),
            hop_seconds=np.float64(self.hop_seconds),
            sample_rate=np.int64(self.sample_rate),
            version=np.int64(self.version),
            skipped=np.array(json.dumps(self.skipped)),
        )
        return p

    @classmethod
    def load(cls, path: str | Path) -> PretextLabels:
        """Read a labels file written by :meth:`save` / :func:`extract_labels`."""
        p = Path(path)
        if not p.is_file():
            raise TympanError(f"{p}: no such labels file; create it with tympan pretext labels --data M --out {p}")
        try:
            with np.load(p, allow_pickle=False) as z:
                need = ("paths", "names", "clip_means", "frames", "offsets")
                missing = [k for k in need if k not in z.files]
                if missing:
                    raise TympanError(f"{p}: not a pretext labels file (no {missing[0]!r} array); "
                                      "create it with tympan pretext labels")
                version = int(z["version"]) if "version" in z.files else 0
                if version > LABELS_VERSION:
                    raise TympanError(f"{p}: labels file version {version} is newer than this tympan "
                                      f"({LABELS_VERSION}); upgrade tympan or re-extract the labels")
                return cls(
                    paths=z["paths"].tolist(), names=z["names"].tolist(), clip_means=z["clip_means"],
                    frames=z["frames"], offsets=z["offsets"],
                    hop_seconds=float(z["hop_seconds"]) if "hop_seconds" in z.files else HOP_SECONDS,
                    sample_rate=int(z["sample_rate"]) if "sample_rate" in z.files else 16000,
                    version=version,
                    nonfinite=z["nonfinite"] if "nonfinite" in z.files else None,
                    skipped=json.loads(str(z["skipped"])) if "skipped" in z.files else [],
                )
        except (OSError, ValueError, EOFError) as exc:
            raise TympanError(f"{p}: cannot be read as a labels .npz ({exc}); re-extract it") from None


# --------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------


def extract_labels(
    data: str | Path,
    out: str | Path,
    *,
    candidates: Sequence[str] | None = None,
    sample_rate: int = 16000,
    workers: int | None = None,
    cache_dir: str | Path | None = None,
    skip_bad: bool = False,
    progress: bool = True,
) -> PretextLabels:
    """Extract the pretext-task labels of every file of a manifest and write them to ``out``.

    Args:
        data: a manifest CSV or a class folder (:func:`tympan.data.manifest.read_manifest`);
            every item is labelled, whatever its split.
        out: the labels ``.npz`` (:class:`PretextLabels`), written atomically.
        candidates: names from :data:`CANDIDATES`; default: every registered candidate.
        sample_rate: clips are decoded, mixed to mono and resampled to this rate first.
        workers: worker processes (default ``min(cpus, 8)``; 1 = in this process).
        cache_dir: per-file cache (default ``<out>.cache/`` beside ``out``). An entry is keyed
            by the file's absolute path, size and mtime, the candidate set and definitions, the
            sample rate and the extractor versions, so any change re-extracts that file.
        skip_bad: leave out unusable files (unreadable, corrupt, silent, shorter than
            :data:`MIN_SECONDS`) and list them in ``labels.skipped``; otherwise the first one (in
            manifest order) raises :class:`~tympan.errors.AudioError` naming it.
        progress: show a tqdm progress bar.
    """
    cands = _resolve(candidates)
    if int(sample_rate) != sample_rate or sample_rate <= 0:
        raise ConfigError(f"pretext labels: sample_rate must be a positive integer, got {sample_rate!r}")
    if workers is None:
        workers = _default_workers()
    if int(workers) != workers or workers < 1:
        raise ConfigError(f"pretext labels: workers must be a positive integer, got {workers!r}")
    smile_version = _require_opensmile(cands)
    out = Path(out)
    if out.is_dir():
        raise TympanError(f"{out}: is a folder; give a file name for the labels, e.g. {out / 'labels.npz'}")
    cache = Path(cache_dir) if cache_dir is not None else out.with_name(out.name + ".cache")
    manifest = read_manifest(data, check_files=not skip_bad)
    paths = [str(it.path) for it in manifest]
    names = tuple(c.name for c in cands)

    results: list[Any] = [None] * len(paths)
    tasks: list[_Task] = []
    for i, path in enumerate(paths):
        try:
            cfile = _cache_file(cache, _cache_key(path, sample_rate, cands, smile_version))
        except OSError:
            tasks.append((i, path, int(sample_rate), names, None))  # unreadable: load_audio says why
            continue
        hit = _read_cache(cfile, len(cands))
        if hit is not None:
            results[i] = hit
        else:
            tasks.append((i, path, int(sample_rate), names, str(cfile)))

    hits = len(paths) - len(tasks)
    with tqdm(total=len(paths), initial=hits, desc="pretext labels", unit="file", disable=not progress) as bar:
        for i, res in _run(tasks, int(workers), bar):
            if isinstance(res, tuple) and res and isinstance(res[0], str):
                kind, a, b = res
                if kind == "error":
                    raise TympanError(a)
                if not skip_bad:
                    raise AudioError(a, f"{b} {SKIP_BAD_HINT}")
            results[i] = res

    skipped = [{"path": r[1], "reason": r[2]} for r in results if isinstance(r[0], str)]
    keep = [i for i, r in enumerate(results) if not isinstance(r[0], str)]
    if skipped:
        log.warning("pretext labels: skipped %d of %d file(s) that cannot be used (first: %s: %s)",
                    len(skipped), len(paths), skipped[0]["path"], skipped[0]["reason"])
    if not keep:
        raise TympanError(f"{data}: no usable audio file; every file was skipped (first: "
                          f"{skipped[0]['path']}: {skipped[0]['reason']})")
    frames = [results[i][0] for i in keep]
    lengths = np.array([len(f) for f in frames], dtype=np.int64)
    labels = PretextLabels(
        paths=[paths[i] for i in keep],
        names=list(names),
        clip_means=np.stack([results[i][1] for i in keep]).astype(np.float32),
        frames=np.concatenate(frames),
        offsets=np.concatenate([[0], np.cumsum(lengths)]),
        hop_seconds=HOP_SECONDS,
        sample_rate=int(sample_rate),
        nonfinite=np.stack([results[i][2] for i in keep]),
        skipped=skipped,
    )
    n_bad = labels.nonfinite.sum(0)
    if n_bad.any():
        worst = [f"{n} ({int(c)} frames)" for n, c in zip(names, n_bad) if c]
        log.warning("pretext labels: replaced NaN/inf frame values by the clip's finite mean for %s; "
                    "see 'nonfinite' in %s", ", ".join(worst), out)
    labels.save(out)
    return labels
