"""Process-level settings for CPU work.

glibc's ``malloc`` hands large freed blocks back to the kernel (``munmap``, or trimming the top
of the heap) and takes them again on the next allocation, paying one page fault per 4 KiB page
each time. A training step on the CPU allocates and frees tensors of tens of MB many times (the
augmentation ops of :mod:`tympan.augment`, the encoder's activations), so that churn is a real
share of a step: ``benchmarks/augment_views.py`` measures it on the two-view augmentation and the
encoder step (``docs/benchmarks.md``). :func:`retain_freed_memory` asks ``malloc`` to keep freed
memory for reuse, as torch's caching allocators do on GPUs; the process's resident memory then
stays near its peak instead of shrinking between steps.

The ``tympan`` command applies it at start-up; library users can call it once themselves. It is
skipped where ``malloc`` is not glibc's, and when ``TYMPAN_RETAIN_MEMORY=0``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

log = logging.getLogger(__name__)

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: blocks up to this size come from the heap (glibc's upper limit for the setting on 64-bit)
MMAP_THRESHOLD = 32 << 20
#: freed memory at the top of the heap is kept up to this size
TRIM_THRESHOLD = 1 << 30

_applied = False


def retain_freed_memory() -> bool:
    """Configure glibc ``malloc`` to keep freed memory for reuse (see the module docstring).

    Idempotent; returns whether the setting is in effect.
    """
    global _applied
    if _applied:
        return True
    if os.environ.get("TYMPAN_RETAIN_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _applied = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    log.debug("malloc keeps freed memory: %s", _applied)
    return _applied
