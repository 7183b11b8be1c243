"""Fixtures shared by several test modules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tympan.data.corpora import synth_corpus
from tympan.data.speech import synth_speech_corpus

#: a width-8 SimCLR on 0.5 s clips, batches of 8, no workers, logging every step: the overrides
#: that size a ``simclr`` pretraining for a few CPU steps (read-only: extend with ``{**d, ...}``)
SIMCLR_TINY: dict[str, Any] = {
    "train.batch_size": 8, "train.num_workers": 0, "train.log_every_n_steps": 1,
    "train.warmup_steps": 1, "audio.clip_seconds": 0.5, "model.width": 8,
    "tasks": [{"name": "contrastive", "objective": "nt_xent",
               "head": {"hidden_dim": 16, "out_dim": 8}}],
}


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded corpus at its ``tiny`` scale (seed 0), generated once per test session.
    Shared: tests copy it before changing anything in it."""
    return synth_corpus(tmp_path_factory.mktemp("corpus"), seed=0, scale="tiny", progress=False)


@pytest.fixture(scope="session")
def speech_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded speech corpus at its ``tiny`` scale (seed 0), generated once per test
    session (rendered in parallel where the machine allows); its manifest. Shared: tests only
    read it."""
    out = tmp_path_factory.mktemp("speech") / "corpus"
    return synth_speech_corpus(out, seed=0, scale="tiny", progress=False)


@pytest.fixture(scope="session")
def simclr_tiny() -> dict[str, Any]:
    """:data:`SIMCLR_TINY`, the overrides of a few-step CPU-sized ``simclr`` pretraining."""
    return SIMCLR_TINY
