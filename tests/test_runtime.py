"""tympan.runtime: malloc keeps freed memory for reuse, unless switched off."""

from __future__ import annotations

import sys

from tympan import runtime


def test_retain_freed_memory_applies_once_on_glibc(monkeypatch) -> None:
    monkeypatch.setattr(runtime, "_applied", False)
    applied = runtime.retain_freed_memory()
    if sys.platform.startswith("linux"):
        assert applied  # glibc: both mallopt calls accepted
        assert runtime.retain_freed_memory()  # idempotent


def test_retain_freed_memory_can_be_switched_off(monkeypatch) -> None:
    monkeypatch.setattr(runtime, "_applied", False)
    monkeypatch.setenv("TYMPAN_RETAIN_MEMORY", "0")
    assert runtime.retain_freed_memory() is False
