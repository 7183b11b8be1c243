"""``pretrain`` from WebDataset shards: a few steps end to end (local folder and a ``file://``
brace pattern with DataLoader workers), what the run records, and the refusals.

Sized for 2 CPU cores: the tiny corpus, width-8 ResNet, batches of 8, a handful of steps.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tympan.data.shards import INDEX_NAME, write_shards
from tympan.errors import TympanError
from tympan.models.encoder import ENCODER_FILE
from tympan.training.pretrain import pretrain



@pytest.fixture(scope="module")
def tiny(simclr_tiny: dict[str, Any]) -> dict[str, Any]:
    """The shared tiny SimCLR overrides with a small shuffle buffer for the shard stream."""
    return {**simclr_tiny, "train.shuffle_buffer": 16}


@pytest.fixture(scope="module")
def shards(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    write_shards(corpus, out, shard_size=10, progress=False)
    return out


def test_pretrain_from_shard_folder(shards: Path, tmp_path: Path, tiny: dict[str, Any]) -> None:
    index = json.loads((shards / INDEX_NAME).read_text())
    n = index["splits"]["pretrain"]  # the 'pretrain' split, as for a manifest
    steps = n // 8 + 2  # runs into a second epoch
    res = pretrain("simclr", shards, tmp_path / "run", max_steps=steps, progress=False,
                   overrides=tiny)
    assert res.steps == steps and res.clips == n
    summary = json.loads((tmp_path / "run" / "pretrain.json").read_text())
    assert summary["data"]["kind"] == "shards" and summary["data"]["hash"] == index["hash"]
    assert summary["data"]["split"] == "pretrain" and summary["data"]["clips"] == n
    assert (tmp_path / "run" / ENCODER_FILE).is_file()
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert config["train"]["shuffle_buffer"] == 16


def test_pretrain_from_url_pattern_with_workers(shards: Path, tmp_path: Path,
                                                 tiny: dict[str, Any]) -> None:
    pattern = f"file://{shards}/shard-{{000000..000009}}.tar"
    res = pretrain("simclr", None, tmp_path / "run", max_steps=3, progress=False, split="train",
                   overrides={**tiny, "train.num_workers": 2}, shards=pattern)
    assert res.steps == 3 and res.data["source"] == pattern and res.data["shards"] == 10
    assert res.data["split"] == "train" and res.clips == res.data["clips"] > 8


def test_refusals(corpus: Path, shards: Path, tmp_path: Path, tiny: dict[str, Any]) -> None:
    with pytest.raises(TympanError, match="give the pretraining data once"):
        pretrain("simclr", corpus, tmp_path / "a", shards=shards, progress=False, overrides=tiny)
    with pytest.raises(TympanError, match=r"16000 Hz audio but 8000 Hz is needed"):
        pretrain("simclr", shards, tmp_path / "b", max_steps=1, progress=False,
                 overrides={**tiny, "audio.sample_rate": 8000})
    with pytest.raises(TympanError, match="fewer than train.batch_size=64"):
        pretrain("simclr", shards, tmp_path / "c", max_steps=1, progress=False, split="val",
                 overrides={**tiny, "train.batch_size": 64})
    labels = tmp_path / "labels.npz"
    labels.write_bytes(b"")
    workers = {**tiny, "pretext.weights": {"loudness": 1.0}, "pretext.labels": str(labels),
               "tasks": [*tiny["tasks"], {"name": "workers", "objective": "pretext_workers"}]}
    with pytest.raises(TympanError, match="pretext workers .* shards does not provide"):
        pretrain("simclr", shards, tmp_path / "d", max_steps=1, progress=False, overrides=workers)
    assert not (tmp_path / "d").exists()
