"""Sharded streaming data: WebDataset tar shards written once, streamed by every rank and worker.

Writing (:func:`write_shards`, ``tympan shard``)
    Every file of a manifest is decoded once with :func:`tympan.audio.io.load_audio` (mono,
    resampled to ``sample_rate``) and stored as one WebDataset sample ``KEY.flac`` + ``KEY.json``
    in ``shard-000000.tar``, ``shard-000001.tar``, ... of at most ``shard_size`` clips (and, if
    given, about ``shard_bytes`` bytes). The audio is **16-bit PCM FLAC**: lossless for the
    16-bit sources most corpora are (bit-exact when no resampling was needed), typically 50-70 %
    of the size of 16-bit WAV and a third or less of float32 ``.npy``; otherwise the float32
    waveform of ``load_audio`` comes back within half a 16-bit step (``|error| <= 2**-16``,
    about -96 dBFS), far below any augmentation's noise. A clip whose peak exceeds 1
    (resampling overshoot, float sources) is divided by its peak and the JSON's ``scale``
    multiplies it back, so nothing is clipped (the error scales with it). ``audio_format="npy"`` stores float32
    exactly, at 4 bytes a sample, where bit-exactness matters more than size. The JSON holds the
    manifest fields (``path``, ``labels``, ``split``, ``track``, ``fold``, ``speaker``) and
    ``sample_rate``, ``num_samples``. Clips are shuffled (``seed``) before they are cut into
    shards, so that a shard of a class-sorted manifest is not one class (a shuffling buffer
    cannot undo that and contrastive negatives would all share a class).

    ``shards.json`` (:class:`ShardIndex`) lists the shards with their clip counts (per split),
    sizes, shortest and longest clip and SHA-256, the total, the sample rate, the source
    manifest and a hash of the whole set. Each shard is written to ``NAME.tmp`` and renamed when
    complete, and the index last, so a reader never sees a half-written set.

Reading (:class:`ShardDataset`)
    Shards come from a local folder (holding ``shards.json``), the index itself, a list, or a
    URL pattern with braces (``https://host/shard-{000000..000031}.tar``, ``file:///data/
    shard-{000000..000009}.tar``; the other schemes of webdataset's ``gopen`` work too, e.g.
    ``pipe:aws s3 cp s3://bucket/shard-{000000..000031}.tar -``, whose index must then be given
    as ``index=``); the index is read beside the shards. Per epoch:

    1. the shard order is shuffled with ``(seed, epoch)``: the same order on every rank;
    2. the clips, concatenated in that order, are cut into contiguous ranges, one per rank,
       and each rank's range into one per DataLoader worker (:func:`plan_part`). With
       ``drop_last`` (training) every rank gets the same whole number of batches, and every
       worker a whole number of them, so DDP ranks step in lock-step and no worker ends on a
       partial batch; the global order is cut after ``ranks x batches x batch_size`` clips,
       fewer than ``ranks x batch_size`` clips of the epoch's tail, a different tail each
       epoch, as ``drop_last`` does for a file dataset. Without it every clip is read exactly
       once and the parts differ by at most one clip;
    3. a worker reads the shards under its range; a shard that straddles two ranges is read by
       both, each skipping (without decoding) the clips of the other. With at least as many
       shards as ranks x workers this is shard-level splitting with at most two shared shards
       per part. With fewer shards it is still exact, but several parts stream the same shard
       (more I/O, a warning says so): write smaller shards for many GPUs;
    4. each clip is cropped (as :class:`~tympan.data.dataset.CropDataset`: a random
       ``clip_seconds`` crop, short clips tiled) or cut into a same-track pair (as
       :class:`~tympan.data.dataset.SameTrackPairDataset`), and the crops pass a shuffling
       buffer of ``shuffle_buffer`` crops seeded with ``(seed, epoch, rank, worker)``.

    ``set_epoch(e)`` reshuffles deterministically; each ``iter()`` after it advances the epoch
    by one, so persistent workers (which never see ``set_epoch`` of the main process) follow
    the epochs too. ``len()`` is this rank's clip count for the epoch, known from the index.
    Iterate with :class:`ShardLoader` (a DataLoader that sets the epoch and fixes the rank in
    the main process: DataLoader workers do not see :mod:`torch.distributed`).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import random
import re
import tarfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm import tqdm

from tympan.audio.io import load_audio
from tympan.data.dataset import CropDataset, SameTrackPairDataset
from tympan.data.manifest import Item, read_manifest
from tympan.data.scan import _WINDOW_PER_WORKER, _in_order, _usable, _warn_skipped
from tympan.errors import AudioError, TympanError

__all__ = [
    "INDEX_NAME",
    "PairSpec",
    "ShardDataset",
    "ShardIndex",
    "ShardInfo",
    "ShardLoader",
    "epoch_shard_order",
    "is_shard_source",
    "iter_clips",
    "part_range",
    "plan_part",
    "resolve_shards",
    "write_shards",
]

log = logging.getLogger("tympan")

#: the index file written beside the shards
INDEX_NAME = "shards.json"
FORMAT = "tympan-shards"
VERSION = 1
AUDIO_FORMATS = ("flac", "npy")
_SHARD_NAME = "shard-{:06d}.tar"
_SHARD_RE = re.compile(r"^shard-\d{6}\.tar$")
_REWRITE = "rewrite the shards with tympan shard"


def _wds() -> Any:
    """The ``webdataset`` module (an optional dependency, the ``scale`` extra), imported only
    when shards are written or read."""
    try:
        import webdataset
        import webdataset.shardlists
        import webdataset.tariterators
    except ImportError:
        raise TympanError(
            "shards need the 'webdataset' package: pip install 'tympan[scale]'"
        ) from None
    return webdataset


# -- the index ------------------------------------------------------------------------------------


@dataclass
class ShardInfo:
    """One shard of an index: file name, clips (``splits``: per split name), size, SHA-256 and
    the shortest/longest clip in samples."""

    name: str
    count: int
    bytes: int
    sha256: str
    min_samples: int
    max_samples: int
    splits: dict[str, int] = field(default_factory=dict)

    def clips(self, split: str | None) -> int:
        """Clips of ``split`` in this shard (every clip for ``None``)."""
        return self.count if split is None else int(self.splits.get(split, 0))


@dataclass
class ShardIndex:
    """``shards.json``: what a shard set holds and how it was made.

    ``hash`` fingerprints the set (settings and every shard's SHA-256), so a run can record
    exactly which data it read. ``location`` is where the index was read from or written to (not
    stored in the file).
    """

    shards: list[ShardInfo]
    sample_rate: int
    audio_format: str
    source: str
    split: str | None
    shuffle_seed: int | None
    shard_size: int
    shard_bytes: int | None
    skipped: list[dict[str, str]] = field(default_factory=list)
    hash: str = ""
    location: str = ""

    @property
    def total(self) -> int:
        """Clips in the set."""
        return sum(s.count for s in self.shards)

    @property
    def splits(self) -> dict[str, int]:
        """Clips per split name over the set (clips without a split are not counted)."""
        out: dict[str, int] = {}
        for s in self.shards:
            for name, n in s.splits.items():
                out[name] = out.get(name, 0) + n
        return out

    def clips(self, split: str | None) -> int:
        """Clips of ``split`` (every clip for ``None``)."""
        return sum(s.clips(split) for s in self.shards)

    def fingerprint(self) -> str:
        """SHA-256 of the settings and the shards' names, counts and SHA-256s."""
        body = {k: v for k, v in self.to_json().items() if k not in ("hash", "skipped")}
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()

    def to_json(self) -> dict[str, Any]:
        data = {"format": FORMAT, "version": VERSION}
        data.update({k: v for k, v in asdict(self).items() if k != "location"})
        data["total"] = self.total
        data["splits"] = self.splits
        return data

    @classmethod
    def from_json(cls, data: Any, where: str) -> ShardIndex:
        """Parse an index, naming ``where`` and the field in every error."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise TympanError(f"{where}: is not a tympan shard index (no 'format: {FORMAT}'); "
                              f"point at the {INDEX_NAME} written by tympan shard")
        if data.get("version") != VERSION:
            raise TympanError(f"{where}: shard index version {data.get('version')!r}, this "
                              f"tympan reads version {VERSION}; {_REWRITE}")
        try:
            shards = [ShardInfo(**s) for s in data["shards"]]
            index = cls(
                shards=shards, sample_rate=int(data["sample_rate"]),
                audio_format=str(data["audio_format"]), source=str(data["source"]),
                split=data["split"], shuffle_seed=data["shuffle_seed"],
                shard_size=int(data["shard_size"]), shard_bytes=data["shard_bytes"],
                skipped=list(data.get("skipped", [])), hash=str(data["hash"]), location=where,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise TympanError(f"{where}: shard index is incomplete or malformed ({exc!r}); "
                              f"{_REWRITE}") from None
        if index.audio_format not in AUDIO_FORMATS:
            raise TympanError(f"{where}: field 'audio_format' is {index.audio_format!r}, not one "
                              f"of {', '.join(AUDIO_FORMATS)}; {_REWRITE}")
        if not shards:
            raise TympanError(f"{where}: lists no shards; {_REWRITE}")
        return index


# -- writing --------------------------------------------------------------------------------------


def _encode(item: Item, sample_rate: int, audio_format: str, min_seconds: float
            ) -> tuple[bytes, dict[str, Any]] | AudioError:
    """Decode one file and encode it for a shard (runs in a thread: libsndfile and soxr release
    the GIL). The AudioError is returned, not raised, so the caller decides in manifest order."""
    try:
        wav = load_audio(item.path, sample_rate, min_seconds=min_seconds)
    except AudioError as exc:
        return exc
    meta: dict[str, Any] = {
        "path": str(item.path), "labels": list(item.labels), "split": item.split,
        "track": item.track, "fold": item.fold, "speaker": item.speaker,
        "sample_rate": sample_rate, "num_samples": int(len(wav)), "scale": 1.0,
    }
    buf = io.BytesIO()
    if audio_format == "npy":
        np.save(buf, wav, allow_pickle=False)
    else:
        peak = float(np.max(np.abs(wav)))
        if peak > 1.0:  # PCM would clip; store at unit peak and scale back when read
            wav = wav / peak
            meta["scale"] = peak
        sf.write(buf, wav, sample_rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue(), meta


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class _ShardSink:
    """Writes samples into ``shard-NNNNNN.tar.tmp`` files and renames each one when full."""

    def __init__(self, out: Path, audio_format: str, shard_size: int, shard_bytes: int | None):
        self.out, self.ext = out, audio_format
        self.shard_size, self.shard_bytes = shard_size, shard_bytes
        self.infos: list[ShardInfo] = []
        self.written: list[Path] = []
        self._file: Any = None
        self._writer: Any = None  # a webdataset TarWriter while a shard is open
        self._tmp: Path | None = None
        self._count = self._bytes = 0
        self._lengths: list[int] = []
        self._splits: dict[str, int] = {}

    def add(self, key: str, audio: bytes, meta: dict[str, Any]) -> None:
        if self._writer is None:
            name = _SHARD_NAME.format(len(self.infos))
            self._tmp = self.out / f"{name}.tmp"
            self._file = open(self._tmp, "wb")
            # mtime 0: the same corpus gives byte-identical shards (and the same hash)
            self._writer = _wds().TarWriter(self._file, encoder=False, mtime=0)
        payload = json.dumps(meta, sort_keys=True).encode()
        self._writer.write({"__key__": key, self.ext: audio, "json": payload})
        self._count += 1
        self._bytes += len(audio) + len(payload) + 1536  # two tar headers and padding, roughly
        self._lengths.append(int(meta["num_samples"]))
        if meta["split"] is not None:
            self._splits[meta["split"]] = self._splits.get(meta["split"], 0) + 1
        if self._count >= self.shard_size or (
            self.shard_bytes is not None and self._bytes >= self.shard_bytes
        ):
            self.close_shard()

    def close_shard(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        self._file.close()
        assert self._tmp is not None
        final = self._tmp.with_suffix("")  # drop ".tmp"
        os.replace(self._tmp, final)
        self.written.append(final)
        self.infos.append(ShardInfo(
            name=final.name, count=self._count, bytes=final.stat().st_size, sha256=_sha256(final),
            min_samples=min(self._lengths), max_samples=max(self._lengths),
            splits=dict(sorted(self._splits.items())),
        ))
        self._writer, self._file, self._tmp = None, None, None
        self._count = self._bytes = 0
        self._lengths, self._splits = [], {}

    def abort(self) -> None:
        """Remove everything this sink wrote (an interrupted run leaves the folder as it was)."""
        if self._writer is not None:
            try:
                self._writer.close()
            except (OSError, ValueError):
                pass
        if self._file is not None:
            self._file.close()
        for p in [*self.written, *([self._tmp] if self._tmp else [])]:
            p.unlink(missing_ok=True)


def _write_json_atomic(data: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(json.dumps(data, indent=2))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_shards(
    data: str | Path,
    out: str | Path,
    *,
    shard_size: int = 1000,
    shard_bytes: int | None = None,
    sample_rate: int = 16000,
    split: str | None = None,
    audio_format: str = "flac",
    min_seconds: float = 0.0,
    shuffle: bool = True,
    seed: int = 0,
    skip_bad: bool = False,
    overwrite: bool = False,
    workers: int | None = None,
    progress: bool = True,
) -> ShardIndex:
    """Decode every clip of the manifest ``data`` once and write WebDataset shards to ``out``.

    ``shard_size``: the most **clips** per shard; ``shard_bytes``: also start a new shard once
    one holds about this many bytes (for long tracks). ``split``: write only that split (else
    every clip, each sample recording its split). ``audio_format``: ``"flac"`` (16-bit PCM,
    lossless for 16-bit sources; the default) or ``"npy"`` (float32, exact, ~4x larger); see the
    module docstring. ``min_seconds``: clips shorter than this are bad files (e.g. ``views.
    segment_seconds + views.min_gap`` for same-track pairs). ``shuffle``/``seed``: shuffle the
    clips before cutting them into shards. ``skip_bad``: leave out unusable files (listed in the
    index's ``skipped``) instead of stopping at the first. ``overwrite``: replace a shard set
    already in ``out``. ``workers``: decoding threads (default: the CPU count, at most 8).

    Returns the :class:`ShardIndex` written to ``out/shards.json``.
    """
    if shard_size < 1:
        raise TympanError(f"--shard-size must be >= 1 clip, got {shard_size}")
    if shard_bytes is not None and shard_bytes < 1:
        raise TympanError(f"--shard-bytes must be >= 1, got {shard_bytes}")
    if audio_format not in AUDIO_FORMATS:
        raise TympanError(
            f"audio format {audio_format!r}: choose one of {', '.join(AUDIO_FORMATS)}"
        )
    if sample_rate <= 0:
        raise TympanError(f"--sample-rate must be > 0, got {sample_rate}")
    _wds()  # a missing webdataset fails here, before an old shard set in ``out`` is touched
    manifest = read_manifest(data, check_files=not skip_bad)
    if split is not None:
        manifest = manifest.select(split)
    items = list(manifest.items)
    if shuffle:
        random.Random(seed).shuffle(items)

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise TympanError(f"{out}: is a file; choose a folder for the shards (--out)")
    out.mkdir(parents=True, exist_ok=True)
    old = sorted(p for p in out.iterdir() if _SHARD_RE.match(p.name))
    if (out / INDEX_NAME).exists() and not overwrite:
        raise TympanError(f"{out} already holds a shard set ({INDEX_NAME}); choose another --out "
                          f"or pass --overwrite to replace it")
    # the old index goes first: a reader must never pair it with new shards
    (out / INDEX_NAME).unlink(missing_ok=True)

    sink = _ShardSink(out, audio_format, shard_size, shard_bytes)
    skipped: list[dict[str, str]] = []
    n_workers = max(1, workers if workers is not None else min(8, os.cpu_count() or 1))
    pool = ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="tympan-shard")
    bar = tqdm(total=len(items), desc="writing shards", unit="clip", disable=not progress)
    written = 0  # sample keys: the clip's position in the set
    try:
        results = _in_order(pool, _encode, items, n_workers * _WINDOW_PER_WORKER, sample_rate,
                            audio_format, min_seconds)
        for _, (audio, meta) in _usable(items, results, skip_bad=skip_bad, skipped=skipped,
                                        bar=bar):
            sink.add(f"{written:09d}", audio, meta)
            written += 1
        sink.close_shard()
    except BaseException:
        sink.abort()
        raise
    finally:
        bar.close()
        pool.shutdown(wait=True, cancel_futures=True)
    if not sink.infos:
        raise TympanError(f"{data}: no usable audio to write to shards")
    index = ShardIndex(
        shards=sink.infos, sample_rate=sample_rate, audio_format=audio_format,
        source=str(manifest.source), split=split, shuffle_seed=seed if shuffle else None,
        shard_size=shard_size, shard_bytes=shard_bytes, skipped=skipped,
        location=str((out / INDEX_NAME).resolve()),
    )
    index.hash = index.fingerprint()
    _write_json_atomic(index.to_json(), out / INDEX_NAME)
    for stale in old:  # shards of a replaced, larger set
        if stale.name not in {s.name for s in sink.infos}:
            stale.unlink(missing_ok=True)
    _warn_skipped(skipped, len(items))
    return index


# -- locating shards ------------------------------------------------------------------------------

_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://|^pipe:")


def _is_url(s: str) -> bool:
    return bool(_URL_RE.match(s))


def _local_path(url: str) -> Path | None:
    """The local path of a plain path or ``file://`` URL; ``None`` for remote URLs."""
    if url.startswith("file:"):
        return Path(url2pathname(urlparse(url).path))
    if _is_url(url):
        return None
    return Path(url)


def is_shard_source(data: str | Path) -> bool:
    """Whether ``data`` names shards rather than a manifest: a folder holding ``shards.json``,
    a ``.json`` index, a ``.tar`` shard, a brace pattern, or a URL (``https://``, ``file://``,
    ``pipe:``, ...)."""
    s = str(data)
    if _is_url(s) or s.endswith(".tar") or s.endswith(".json") or re.search(r"\{[^}]*\.\.", s):
        return True
    p = Path(s)
    return p.is_dir() and (p / INDEX_NAME).is_file()


def _dirname(url: str) -> str:
    return url.rsplit("/", 1)[0] if "/" in url else "."


def _join(base: str, name: str) -> str:
    if _is_url(base):
        return f"{base.rstrip('/')}/{name}"
    return str(Path(base) / name)


def _read_index(where: str) -> ShardIndex:
    local = _local_path(where)
    try:
        if local is not None:
            if not local.is_file():
                raise TympanError(
                    f"{where}: no shard index there; write the shards with tympan shard --data "
                    f"MANIFEST --out DIR (it writes DIR/{INDEX_NAME}) and keep {INDEX_NAME} beside "
                    f"the shards"
                )
            text = local.read_text()
            where = str(local.resolve())
        else:
            with _wds().gopen(where) as f:
                text = f.read().decode()
    except TympanError:
        raise
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise TympanError(f"{where}: cannot read the shard index ({exc}); check the URL and keep "
                          f"{INDEX_NAME} beside the shards") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TympanError(f"{where}: is not valid JSON ({exc}); {_REWRITE}") from None
    return ShardIndex.from_json(data, where)


def resolve_shards(
    source: str | Path | Sequence[str | Path], index: str | Path | None = None
) -> tuple[ShardIndex, list[tuple[str, ShardInfo]]]:
    """The index and the ``(url, info)`` of every shard named by ``source``.

    ``source``: a folder holding ``shards.json``; the index (a path or URL ending ``.json``);
    a URL or path pattern with braces, a single shard, or a list of shards, whose index is read
    from ``index`` or else beside the first shard. A local shard that is missing, or whose size
    differs from the index's, raises a :class:`TympanError` naming it.
    """
    if isinstance(source, (str, Path)):
        s = str(source)
        local = _local_path(s)
        if local is not None and local.is_dir():
            idx = _read_index(str(index) if index else str(local / INDEX_NAME))
            base = str(local)
            urls = None
        elif s.endswith(".json"):
            idx = _read_index(str(index) if index else s)
            base = _dirname(s) if _is_url(s) else str(Path(s).parent)
            urls = None
        elif _is_url(s) and not s.endswith(".tar") and not re.search(r"\{[^}]*\.\.", s):
            idx = _read_index(str(index) if index else _join(s, INDEX_NAME))
            base = s
            urls = None
        else:
            urls = _wds().shardlists.expand_urls(s)
    else:
        urls = [str(u) for u in source]
    if urls is not None:
        if not urls:
            raise TympanError("no shards given; pass a folder, an index or shard URLs")
        idx = _read_index(str(index) if index else _join(_dirname(urls[0]), INDEX_NAME))
        known = {info.name: info for info in idx.shards}
        listed = []
        for url in urls:
            name = url.rsplit("/", 1)[-1]
            if name not in known:
                raise TympanError(
                    f"{url}: not listed in {idx.location}; the pattern names shards that index "
                    f"does not describe (check the brace range, or pass the index of these shards)"
                )
            listed.append((url, known[name]))
    else:
        listed = [(_join(base, info.name), info) for info in idx.shards]
    missing = []
    for url, info in listed:
        path = _local_path(url)
        if path is None:
            continue
        if not path.is_file():
            missing.append(url)
        elif path.stat().st_size != info.bytes:
            raise TympanError(
                f"{url}: {path.stat().st_size} bytes, but {idx.location} says {info.bytes}; the "
                f"shard is truncated or belongs to another set; {_REWRITE}"
            )
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise TympanError(f"{missing[0]}: shard not found{more}, but {idx.location} lists it; copy "
                          f"the whole shard set or {_REWRITE}")
    return idx, listed


# -- splitting an epoch among ranks and workers ---------------------------------------------------


def epoch_shard_order(num_shards: int, seed: int, epoch: int, shuffle: bool = True) -> list[int]:
    """The shard order of an epoch: a permutation drawn from ``(seed, epoch)`` alone, so every
    rank and worker computes the same one."""
    order = list(range(num_shards))
    if shuffle:
        random.Random(f"tympan-shards:{seed}:{epoch}").shuffle(order)
    return order


def _balanced(total: int, parts: int, part: int) -> tuple[int, int]:
    """``[lo, hi)`` of part ``part`` when ``total`` is cut into ``parts`` near-equal ranges."""
    base, extra = divmod(total, parts)
    lo = part * base + min(part, extra)
    return lo, lo + base + (1 if part < extra else 0)


def part_range(
    total: int, rank: int, world: int, worker: int, workers: int, *,
    batch_size: int = 1, drop_last: bool = False,
) -> tuple[int, int]:
    """``[lo, hi)`` in the epoch's global clip order for one (rank, worker).

    ``drop_last``: every rank gets ``total // (world * batch_size)`` whole batches (split among
    its workers in whole batches) and the tail of the order is left for this epoch; else the
    ranks, then the workers, get near-equal ranges covering every clip.
    """
    if not (0 <= rank < world and 0 <= worker < workers):
        raise ValueError(f"rank {rank}/{world}, worker {worker}/{workers} out of range")
    if drop_last:
        batches = total // (world * batch_size)
        lo_b, hi_b = _balanced(batches, workers, worker)
        first = rank * batches
        return (first + lo_b) * batch_size, (first + hi_b) * batch_size
    r_lo, r_hi = _balanced(total, world, rank)
    w_lo, w_hi = _balanced(r_hi - r_lo, workers, worker)
    return r_lo + w_lo, r_lo + w_hi


def plan_part(
    counts: Sequence[int], order: Sequence[int], rank: int, world: int, worker: int,
    workers: int, *, batch_size: int = 1, drop_last: bool = False,
) -> list[tuple[int, int, int]]:
    """What one (rank, worker) reads in an epoch: ``(shard, first, stop)`` clip ranges within
    shards, in the epoch's ``order`` (see :func:`part_range`). ``counts``: clips per shard."""
    lo, hi = part_range(sum(counts), rank, world, worker, workers,
                        batch_size=batch_size, drop_last=drop_last)
    plan: list[tuple[int, int, int]] = []
    offset = 0
    for shard in order:
        n = counts[shard]
        a, b = max(lo, offset), min(hi, offset + n)
        if a < b:
            plan.append((shard, a - offset, b - offset))
        offset += n
        if offset >= hi:
            break
    return plan


# -- reading --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairSpec:
    """Same-track pairs (``views.kind: same_track``): two ``segment_seconds`` segments of a
    clip between ``min_gap`` and ``max_gap`` seconds apart (see
    :class:`~tympan.data.dataset.SameTrackPairDataset`)."""

    segment_seconds: float = 4.0
    min_gap: float = 4.0
    max_gap: float = 16.0
    silence_db: float = -30.0


def _decode(sample: dict[str, Any], fmt: str, url: str) -> tuple[np.ndarray, dict[str, Any]]:
    """A sample's float32 waveform and metadata; a TympanError naming the shard if corrupt."""
    key = sample.get("__key__")
    try:
        meta = json.loads(sample["json"])
        raw = sample[fmt]
        if fmt == "npy":
            wav = np.load(io.BytesIO(raw), allow_pickle=False).astype(np.float32, copy=False)
        else:
            wav, _ = sf.read(io.BytesIO(raw), dtype="float32")
            scale = float(meta.get("scale", 1.0))
            if scale != 1.0:
                wav = wav * np.float32(scale)
    except KeyError as exc:
        raise TympanError(f"{url}: sample {key} has no {exc.args[0]!r} member; the shard is "
                          f"corrupt or was not written by tympan shard; {_REWRITE}") from None
    except (ValueError, RuntimeError, OSError, TypeError, sf.SoundFileError) as exc:
        raise TympanError(f"{url}: sample {key} cannot be decoded ({exc}); the shard is corrupt; "
                          f"{_REWRITE}") from None
    return np.ascontiguousarray(wav, dtype=np.float32), meta


def _shard_samples(url: str, fmt: str, split: str | None, first: int, stop: int,
                   expected: int) -> Iterator[tuple[int, np.ndarray, dict[str, Any]]]:
    """``(position, waveform, metadata)`` of clips ``first..stop-1`` of one shard (positions
    among the clips of ``split``), decoding only those. Checks the count when read to the end."""
    wds = _wds()
    try:
        stream = wds.gopen(url)
    except (OSError, ValueError) as exc:
        raise TympanError(f"{url}: cannot open the shard ({exc}); check that it exists") from None
    pos = 0
    try:
        files = wds.tariterators.tar_file_expander([{"url": url, "stream": stream}])
        for sample in wds.tariterators.group_by_keys(files):
            if pos >= stop:
                break
            if split is not None:
                try:
                    if json.loads(sample["json"]).get("split") != split:
                        continue
                except (KeyError, ValueError) as exc:
                    raise TympanError(f"{url}: sample {sample.get('__key__')} has no readable "
                                      f"metadata ({exc!r}); {_REWRITE}") from None
            if pos >= first:
                wav, meta = _decode(sample, fmt, url)
                yield pos, wav, meta
            pos += 1
    except TympanError:
        raise
    except (tarfile.TarError, OSError, EOFError, ValueError, AssertionError) as exc:
        raise TympanError(f"{url}: is not a readable tar shard ({exc}); the file is corrupt or "
                          f"truncated; {_REWRITE}") from None
    finally:
        try:
            stream.close()
        except OSError:
            pass  # a download stopped early on purpose
    if pos < stop:
        raise TympanError(f"{url}: holds {pos} clips where the index says {expected}; the shard "
                          f"is truncated or belongs to another set; {_REWRITE}")


def iter_clips(
    source: str | Path | Sequence[str | Path], *, split: str | None = None
) -> Iterator[tuple[np.ndarray, dict[str, Any]]]:
    """Every clip of a shard set in stored order: ``(float32 waveform, metadata)`` (the JSON
    written with it: path, labels, split, track, fold, speaker, sample_rate, num_samples)."""
    idx, shards = resolve_shards(source)
    for url, info in shards:
        n = info.clips(split)
        for _, wav, meta in _shard_samples(url, idx.audio_format, split, 0, n, n):
            yield wav, meta


def _rank_world() -> tuple[int, int]:
    """(rank, world size) of this process: torch.distributed if initialised, else the
    ``RANK``/``WORLD_SIZE`` environment, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return 0, 1


class ShardDataset(IterableDataset):
    """Streams crops (or same-track pairs) from WebDataset shards; see the module docstring.

    Yields ``{"audio": float32 [S], "index": int, "start": int, "length": int}`` like
    :class:`~tympan.data.dataset.CropDataset` (``index``: the clip's position among the shard
    set's clips, of ``split`` if given, in stored order), or ``{"audio", "audio2", "index"}`` with ``pairs``.

    ``batch_size`` and ``drop_last`` must match the DataLoader's: with ``drop_last`` every rank
    and worker gets whole batches (DDP ranks then step equally). ``split``: read only that split.
    ``sample_rate``: refuse shards written at another rate. Rank and world size: as given to
    :meth:`set_distributed`, else from :mod:`torch.distributed` in this process. DataLoader
    workers do not see torch.distributed: iterate with :class:`ShardLoader`, which fixes them
    in the main process, or call :meth:`set_distributed` before a plain DataLoader starts.
    ``resolved``: what :func:`resolve_shards` gave for ``source`` (and ``index``) when the
    caller already has it; the index is then not read again.
    """

    def __init__(
        self,
        source: str | Path | Sequence[str | Path],
        *,
        clip_seconds: float = 2.0,
        sample_rate: int | None = None,
        pairs: PairSpec | None = None,
        split: str | None = None,
        batch_size: int = 1,
        drop_last: bool = False,
        shuffle: bool = True,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        random_crop: bool = True,
        index: str | Path | None = None,
        resolved: tuple[ShardIndex, list[tuple[str, ShardInfo]]] | None = None,
    ) -> None:
        _wds()  # a missing webdataset fails here rather than in a DataLoader worker
        self.index, self.shards = resolved if resolved is not None else resolve_shards(
            source, index
        )
        self.source = str(source) if isinstance(source, (str, Path)) else list(map(str, source))
        rate = self.index.sample_rate
        if sample_rate is not None and sample_rate != rate:
            raise TympanError(
                f"{self.index.location}: the shards hold {rate} Hz audio but {sample_rate} Hz is "
                f"needed (recipe field 'audio.sample_rate'); rewrite them with tympan shard "
                f"--sample-rate {sample_rate} or set audio.sample_rate={rate}"
            )
        self.sample_rate = rate
        self.split = split
        self.counts = [info.clips(split) for _, info in self.shards]
        if sum(self.counts) == 0:
            names = ", ".join(self.index.splits) or "none (write them from a manifest with splits)"
            raise TympanError(
                f"{self.index.location}: no clips in split '{split}'; splits in these shards: "
                f"{names}"
            )
        self.cropper = CropDataset([], rate, clip_seconds, random_crop)
        self.pairer: SameTrackPairDataset | None = None
        if pairs is not None:
            self.pairer = SameTrackPairDataset([], rate, pairs.segment_seconds, pairs.min_gap,
                                               pairs.max_gap, pairs.silence_db)
            need = self.pairer.num_samples + self.pairer.min_gap
            short = [(u, i) for (u, i), n in zip(self.shards, self.counts)
                     if n and i.min_samples < need
                     and (split is None or i.splits.get(split) == i.count)]
            if short:
                url, info = short[0]
                raise TympanError(
                    f"{url}: holds clips of {info.min_samples / rate:.2f} s, too short for two "
                    f"{pairs.segment_seconds:g} s segments at least {pairs.min_gap:g} s apart "
                    f"(views.kind: same_track); rewrite the shards with tympan shard --min-seconds "
                    f"{need / rate:g} --skip-bad, or lower views.segment_seconds / views.min_gap"
                )
        self.batch_size = max(1, int(batch_size))
        self.drop_last = drop_last
        self.shuffle = shuffle
        self.shuffle_buffer = max(0, int(shuffle_buffer))
        self.seed = seed
        # a clip's "index": its position among the whole set's clips (of ``split``) in stored
        # order, the same whichever shards of the set a pattern names
        before, start = {}, 0
        for info in self.index.shards:
            before[info.name] = start
            start += info.clips(split)
        self.offsets = [before[info.name] for _, info in self.shards]
        self._epoch = 0
        self._iters = 0
        self._dist: tuple[int, int] | None = None

    # -- epoch and cluster -----------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Use epoch ``epoch``'s shard order and buffer seeds at the next ``iter()``."""
        self._epoch, self._iters = int(epoch), 0

    def set_distributed(self, rank: int, world_size: int) -> None:
        """Fix this process's rank and the number of ranks (else taken from torch.distributed)."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self._dist = (int(rank), int(world_size))

    @property
    def distributed(self) -> tuple[int, int]:
        """(rank, world size): as set by :meth:`set_distributed`, else from the process."""
        return self._dist if self._dist is not None else _rank_world()

    @property
    def num_samples(self) -> int:
        """Samples per crop (``clip_seconds`` at the shards' rate)."""
        return self.cropper.num_samples

    @property
    def random_crop(self) -> bool:
        """Random crops (training), else the centre of each clip."""
        return self.cropper.random_crop

    @property
    def total(self) -> int:
        """Clips in the set (of ``split``)."""
        return int(sum(self.counts))

    def __len__(self) -> int:
        """This rank's clips per epoch (whole batches with ``drop_last``)."""
        rank, world = self.distributed
        if self.drop_last:
            return (self.total // (world * self.batch_size)) * self.batch_size
        lo, hi = _balanced(self.total, world, rank)
        return hi - lo

    # -- iteration -------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rank, world = self.distributed
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        epoch = self._epoch + self._iters
        self._iters += 1
        return self.part(rank, world, worker, workers, epoch=epoch)

    def part(self, rank: int, world: int, worker: int, workers: int, *,
             epoch: int | None = None) -> Iterator[dict[str, Any]]:
        """The items one (rank, worker) yields in ``epoch`` (default: the current one)."""
        epoch = self._epoch if epoch is None else epoch
        if self.drop_last and self.total < world * self.batch_size:
            raise TympanError(
                f"{self.index.location}: {self.total} clips, fewer than {world} rank(s) x "
                f"train.batch_size={self.batch_size}; lower the batch size or add audio"
            )
        parts = world * workers
        if len(self.shards) < parts and worker == 0 and rank == 0:
            log.warning(
                "%d shard(s) for %d ranks x %d workers: several parts stream the same shards "
                "(each reads only its clips, but downloads more); write smaller shards "
                "(tympan shard --shard-size) for this many parts", len(self.shards), world, workers,
            )
        order = epoch_shard_order(len(self.shards), self.seed, epoch, self.shuffle)
        plan = plan_part(self.counts, order, rank, world, worker, workers,
                         batch_size=self.batch_size, drop_last=self.drop_last)
        items = self._items(plan)
        if self.shuffle and self.shuffle_buffer > 1:
            rng = random.Random(f"tympan-buffer:{self.seed}:{epoch}:{rank}:{worker}")
            items = _wds().shuffle(self.shuffle_buffer, self.shuffle_buffer, rng=rng)(items)
        return iter(items)

    def _items(self, plan: list[tuple[int, int, int]]) -> Iterator[dict[str, Any]]:
        for shard, first, stop in plan:
            url, info = self.shards[shard]
            for pos, wav, meta in _shard_samples(url, self.index.audio_format, self.split,
                                                 first, stop, self.counts[shard]):
                yield self._crop(wav, self.offsets[shard] + pos, url, meta)

    def _crop(self, wav: np.ndarray, index: int, url: str, meta: dict[str, Any]
              ) -> dict[str, Any]:
        """The item of one decoded clip, drawn as by the file datasets (torch's RNG, seeded per
        worker by the DataLoader). The audio is copied out of ``wav`` so that the shuffling
        buffer does not keep whole clips alive."""
        if self.pairer is not None:
            p = self.pairer
            if len(wav) < p.num_samples + p.min_gap:
                raise TympanError(
                    f"{url}: clip {meta.get('path')} is {len(wav) / self.sample_rate:.2f} s, too "
                    f"short for a same-track pair; rewrite the shards with tympan shard "
                    f"--min-seconds {(p.num_samples + p.min_gap) / self.sample_rate:g} --skip-bad"
                )
            out = p.pair(wav, index)
            keys = ("audio", "audio2")
        else:
            out = self.cropper.crop(wav, index)
            keys = ("audio",)
        for key in keys:
            out[key] = out[key].clone()
        return out

    def describe(self) -> dict[str, Any]:
        """What a run records about its data (``pretrain.json``)."""
        return {
            "kind": "shards", "source": self.source, "index": self.index.location,
            "hash": self.index.hash, "shards": len(self.shards), "clips": self.total,
            "split": self.split, "sample_rate": self.sample_rate,
            "shuffle_buffer": self.shuffle_buffer, "audio_format": self.index.audio_format,
            "skipped_when_written": len(self.index.skipped),
        }


class ShardLoader(DataLoader):
    """A DataLoader over a :class:`ShardDataset` that tells it the epoch (and the rank) at
    every ``iter()``, before any worker starts.

    Lightning calls ``set_epoch`` only on samplers, which an iterable dataset has none of, and
    creates the first epoch's iterator before any epoch hook runs (resumed runs included); so the
    epoch is read from ``epoch`` (e.g. ``lambda: trainer.current_epoch``) when the iterator is
    made. ``dist``: a callable giving ``(rank, world size)``; by default they are read from
    :mod:`torch.distributed` in the main process, since DataLoader workers do not see it.
    """

    def __init__(
        self, dataset: ShardDataset, *, epoch: Callable[[], int] | None = None,
        dist: Callable[[], tuple[int, int]] | None = None, **kwargs: Any,
    ) -> None:
        self.epoch_source = epoch
        self.dist_source = dist
        super().__init__(dataset, **kwargs)

    def __iter__(self) -> Any:
        # resolved here, in the main process: DataLoader workers do not see torch.distributed
        dist = self.dist_source() if self.dist_source is not None else self.dataset.distributed
        self.dataset.set_distributed(*dist)
        if self.epoch_source is not None:
            self.dataset.set_epoch(self.epoch_source())
        return super().__iter__()
