"""User-facing errors.

Every failure a user can fix (bad audio, a malformed manifest, a recipe field out of range, a
split too small for the requested episodes) raises a :class:`TympanError` whose message names
the file, row or field and says what to do. The CLI prints the message without a traceback and
exits with status 2.
"""

from __future__ import annotations

from pathlib import Path


class TympanError(Exception):
    """Base class of every error a user can act on."""


class AudioError(TympanError):
    """An audio file that cannot be used: unreadable, corrupt, empty, silent, NaN, too short."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class ManifestError(TympanError):
    """A manifest (CSV or class folder) that does not follow the expected layout."""


class ConfigError(TympanError):
    """A recipe or command-line value that is missing, unknown or out of range."""


class EpisodeError(TympanError):
    """A split that cannot supply the requested few-shot episodes."""
