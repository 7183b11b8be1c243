"""Atomic, safe checkpoints for Lightning.

A checkpoint is first written to ``<name>.tmp`` in the same folder, flushed to disk, then renamed
over the target (``os.replace`` is atomic on POSIX), so a run killed at any moment (``kill -9``
included) leaves either the old or the new checkpoint, never a truncated one. Loading uses
``torch.load(weights_only=True)``: a checkpoint cannot run code when it is read.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

from tympan.errors import TympanError


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO with write-then-rename saves and weights-only loads."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def load_checkpoint(
        self, path: str | Path, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        try:
            return torch.load(path, map_location=map_location or "cpu", weights_only=True)
        except FileNotFoundError:
            raise TympanError(f"checkpoint {path} does not exist") from None
        except Exception as exc:
            raise TympanError(
                f"checkpoint {path} cannot be read safely ({type(exc).__name__}: {exc}); "
                f"delete it to restart from the previous one or from scratch"
            ) from None
