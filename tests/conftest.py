"""Fixtures shared by several test modules."""

from __future__ import annotations

from pathlib import Path

import pytest

from tympan.data.corpora import synth_corpus


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded corpus at its ``tiny`` scale (seed 0), generated once per test session.
    Shared: tests copy it before changing anything in it."""
    return synth_corpus(tmp_path_factory.mktemp("corpus"), seed=0, scale="tiny", progress=False)
