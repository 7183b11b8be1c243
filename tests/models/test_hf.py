"""Hugging Face backbones (AudioConFit's Wav2Vec2, HuBERT and WavLM,
``../shared/seeds/002_5040cf44179b95f4.txt`` §3.2 "Backbone") from tiny random configs saved to a
local folder: loading, pooled and frame embeddings, masks, saving, and the user errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from tympan.errors import TympanError  # noqa: E402
from tympan.evaluation.features import embed_clips  # noqa: E402
from tympan.finetune.backbones import load_backbone  # noqa: E402
from tympan.models.hf import HFEncoder, load_hf_encoder, write_random_hf_model  # noqa: E402

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def save_tiny(kind: str, folder: Path, preprocessor: dict | None = None) -> Path:
    return write_random_hf_model(kind, folder, preprocessor=preprocessor)


@pytest.mark.parametrize("kind", ["wav2vec2", "hubert", "wavlm"])
def test_tiny_models_load_and_embed(kind: str, tmp_path: Path) -> None:
    folder = save_tiny(kind, tmp_path / kind)
    bb = load_backbone(f"hf:{folder}")
    enc = bb.module
    assert bb.kind == "hf" and isinstance(enc, HFEncoder) and enc.model_type == kind
    assert enc.sample_rate == 16000 and enc.embedding_dim == 32 and not enc.training
    x = torch.randn(3, 4000)
    with torch.no_grad():
        emb, frames = enc(x), enc.frames(x)
    assert emb.shape == (3, 32)
    assert frames.shape[0] == 3 and frames.shape[2] == 32 and frames.shape[1] > 1
    assert torch.allclose(frames.mean(dim=1), emb, atol=1e-5)  # temporal average pooling
    # the Encoder contract as evaluation uses it: variable-length clips -> [N, D]
    clips = [np.random.default_rng(i).standard_normal(3000 + 2000 * i).astype(np.float32) for i in range(3)]
    assert embed_clips(enc, clips, 0.25, progress=False).shape == (3, 32)


def test_attention_mask_pools_valid_frames_only(tmp_path: Path) -> None:
    enc = load_hf_encoder(save_tiny("wav2vec2", tmp_path / "m", {"sampling_rate": 16000, "do_normalize": True}))
    assert enc.normalize
    x = torch.randn(2, 6000)
    mask = torch.ones(2, 6000, dtype=torch.long)
    mask[1, 3000:] = 0
    with torch.no_grad():
        pooled = enc(x, attention_mask=mask)
        full = enc(x)
    assert pooled.shape == (2, 32)
    assert torch.allclose(pooled[0], full[0], atol=1e-5)  # an all-ones mask changes nothing
    assert not torch.allclose(pooled[1], full[1], atol=1e-3)


def test_sample_rate_from_feature_extractor_and_save_round_trip(tmp_path: Path) -> None:
    folder = save_tiny("hubert", tmp_path / "m", {"sampling_rate": 8000, "do_normalize": False})
    bb = load_backbone(f"hf:{folder}")
    assert bb.sample_rate == 8000
    tuned = bb.fresh()
    with torch.no_grad():
        next(tuned.parameters()).add_(0.5)
    saved = bb.save(tuned, tmp_path / "run")
    assert saved == tmp_path / "run" / "hf_model"
    assert any(saved.glob("*.safetensors")) and not any(saved.glob("*.bin"))
    again = load_hf_encoder(f"hf:{saved}")
    assert again.sample_rate == 8000
    x = torch.randn(2, 4000)
    tuned.eval()
    with torch.no_grad():
        assert torch.allclose(again(x), tuned(x), atol=1e-5)


def test_user_errors(tmp_path: Path) -> None:
    with pytest.raises(TympanError, match="no such folder"):
        load_backbone(f"hf:{tmp_path / 'missing'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TympanError, match="config.json"):
        load_backbone(f"hf:{tmp_path / 'empty'}")
    other = tmp_path / "bert"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(TympanError, match="'bert' is not supported"):
        load_hf_encoder(other)
    pickled = save_tiny("wavlm", tmp_path / "pickled")
    for f in pickled.glob("*.safetensors"):
        f.unlink()
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(TympanError, match="safetensors"):
        load_hf_encoder(pickled)
    # an HF folder without the prefix gets a hint rather than a run-directory error
    folder = save_tiny("wav2vec2", tmp_path / "w")
    with pytest.raises(TympanError, match="hf:"):
        load_backbone(str(folder))
    with pytest.raises(TympanError, match="logmel"):
        load_backbone("logmel")
