"""Check every file of a manifest once, before training or evaluation starts.

A corrupt file found at step 40,000 of a run (or inside a DataLoader worker) costs the run; found
here it costs seconds. :func:`scan_items` decodes each file with
:func:`tympan.audio.io.load_audio` and either stops at the first bad file or, with
``skip_bad``, drops the bad ones and says which and why.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from tympan.audio.io import load_audio
from tympan.data.manifest import Item
from tympan.errors import AudioError

__all__ = ["SKIP_BAD_HINT", "ScanReport", "scan_items"]

log = logging.getLogger("tympan")

#: Appended to the first bad file's message when the scan stops on it.
SKIP_BAD_HINT = "(use --skip-bad to skip unreadable files and continue)"

# Futures in flight per worker: enough to keep the threads busy, few enough that a million-file
# manifest does not become a million Future objects (or decoded arrays) at once.
_WINDOW_PER_WORKER = 4


@dataclass
class ScanReport:
    """What :func:`scan_items` found.

    ``items`` are the usable items in manifest order; ``skipped`` lists ``{"path", "reason"}``
    for each bad file (only filled with ``skip_bad``); ``audio`` holds the decoded waveforms of
    ``items`` (same order) when ``keep_audio`` was asked for, else ``None``.
    """

    items: list[Item]
    skipped: list[dict[str, str]] = field(default_factory=list)
    audio: list[np.ndarray] | None = None

    def to_json(self) -> dict[str, Any]:
        """``{"n_ok", "n_skipped", "skipped"}``, for the machine-readable output of commands."""
        return {
            "n_ok": len(self.items),
            "n_skipped": len(self.skipped),
            "skipped": [dict(s) for s in self.skipped],
        }


def _check(
    item: Item, sample_rate: int, min_seconds: float, keep: bool
) -> np.ndarray | AudioError | None:
    """Decode one item; the AudioError is returned rather than raised so that the caller can
    decide in manifest order (a later file may fail first in another thread)."""
    try:
        wav = load_audio(item.path, sample_rate, min_seconds=min_seconds)
    except AudioError as exc:
        return exc
    # without keep_audio the waveform is dropped in the worker, so memory stays flat
    return wav if keep else None


def _in_order(
    pool: ThreadPoolExecutor, fn: Callable[..., Any], items: Sequence[Item], window: int,
    *args: Any,
) -> Iterator[Any]:
    """Results of ``fn(item, *args)`` (e.g. :func:`_check`) in item order, with at most
    ``window`` files in flight on ``pool``."""
    pending: deque[Future[Any]] = deque()
    next_index = 0
    while pending or next_index < len(items):
        while next_index < len(items) and len(pending) < window:
            pending.append(pool.submit(fn, items[next_index], *args))
            next_index += 1
        yield pending.popleft().result()


def _usable(
    items: Sequence[Item], results: Iterator[Any], *, skip_bad: bool,
    skipped: list[dict[str, str]], bar: tqdm,
) -> Iterator[tuple[Item, Any]]:
    """``(item, result)`` of the items whose result is no :class:`AudioError`, in order,
    advancing ``bar`` per item. A bad file raises its AudioError (with :data:`SKIP_BAD_HINT`)
    or, with ``skip_bad``, is appended to ``skipped`` as ``{"path", "reason"}``."""
    for item, result in zip(items, results):
        bar.update(1)
        if isinstance(result, AudioError):
            if not skip_bad:
                raise AudioError(result.path, f"{result.reason} {SKIP_BAD_HINT}") from None
            skipped.append({"path": result.path, "reason": result.reason})
            continue
        yield item, result


def _warn_skipped(skipped: Sequence[dict[str, str]], total: int) -> None:
    """One warning on the ``tympan`` logger summarising the skipped files, if any."""
    if skipped:
        first = skipped[0]
        log.warning(
            "skipped %d of %d audio file(s) that cannot be used (first: %s: %s)",
            len(skipped), total, first["path"], first["reason"],
        )


def scan_items(
    items: Sequence[Item],
    sample_rate: int,
    *,
    skip_bad: bool = False,
    min_seconds: float = 0.0,
    keep_audio: bool = False,
    num_workers: int = 2,
    progress: bool = True,
    desc: str = "checking audio",
) -> ScanReport:
    """Decode every item once and report which can be used.

    Files are decoded by ``num_workers`` threads (libsndfile and soxr release the GIL), with a
    tqdm progress bar unless ``progress`` is false. Without ``skip_bad`` the first bad file in
    manifest order raises its :class:`AudioError` (deterministic whatever the thread timing),
    with a hint to use ``--skip-bad``. With ``skip_bad`` bad files are left out of
    ``report.items``, listed in ``report.skipped`` and summarised in one warning on the
    ``tympan`` logger. ``keep_audio`` keeps the decoded waveforms (mono, ``sample_rate``) so that
    small evaluation sets are not decoded twice.
    """
    items = list(items)
    report = ScanReport(items=[], skipped=[], audio=[] if keep_audio else None)
    workers = max(1, int(num_workers))
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tympan-scan")
    bar = tqdm(total=len(items), desc=desc, unit="file", disable=not progress)
    try:
        results = _in_order(
            pool, _check, items, workers * _WINDOW_PER_WORKER, sample_rate, min_seconds,
            keep_audio,
        )
        for item, result in _usable(items, results, skip_bad=skip_bad, skipped=report.skipped,
                                    bar=bar):
            report.items.append(item)
            if report.audio is not None and result is not None:
                report.audio.append(result)
    finally:
        bar.close()
        # on an early raise, files not yet started are not decoded for nothing
        pool.shutdown(wait=True, cancel_futures=True)

    _warn_skipped(report.skipped, len(items))
    return report
