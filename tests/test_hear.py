"""The HEAR-style API on a small saved encoder: shapes, timestamps, agreement with the encoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tympan import hear
from tympan.config import load_recipe, save_recipe
from tympan.errors import TympanError
from tympan.models.encoder import CONFIG_FILE, ENCODER_FILE, Encoder, save_encoder


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    recipe = load_recipe("simclr", {"model.width": 8, "frontend.n_mels": 32,
                                    "fewshot.segment_seconds": 0.5})
    torch.manual_seed(0)
    save_encoder(Encoder(recipe).eval(), run / ENCODER_FILE)
    save_recipe(recipe, run / CONFIG_FILE)
    return run


def test_scene_embeddings_equal_the_encoder(run_dir):
    model = hear.load_model(run_dir, device="cpu")
    audio = torch.randn(3, 16000) * 0.1
    scene = hear.get_scene_embeddings(audio, model)
    assert scene.shape == (3, model.scene_embedding_size)
    with torch.no_grad():
        ref = model.encoder(audio)
    torch.testing.assert_close(scene, ref)


def test_timestamp_embeddings_are_centred_windows(run_dir):
    model = hear.load_model(run_dir, hop_ms=100, window_ms=400, batch_size=7, device="cpu")
    sr = model.sample_rate
    audio = torch.randn(2, sr) * 0.1  # 1 s: windows centred at 0, 100, ..., 1000 ms
    emb, ts = hear.get_timestamp_embeddings(audio, model)
    assert emb.shape == (2, 11, model.timestamp_embedding_size)
    assert ts.shape == (2, 11)
    np.testing.assert_allclose(ts[0].numpy(), np.arange(11) * 100.0, atol=1e-3)
    # the window centred at 500 ms is samples [300 ms, 700 ms) of the clip
    win = int(0.4 * sr)
    start = int(0.5 * sr) - win // 2
    with torch.no_grad():
        ref = model.encoder(audio[:, start : start + win])
    torch.testing.assert_close(emb[:, 5], ref, rtol=1e-4, atol=1e-5)
    # the first window is half zero padding: same as encoding the padded start by hand
    first = torch.cat([torch.zeros(2, win // 2), audio[:, : win - win // 2]], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(emb[:, 0], model.encoder(first), rtol=1e-4, atol=1e-5)


def test_bad_input_is_a_clear_error(run_dir, tmp_path):
    model = hear.load_model(run_dir, device="cpu")
    with pytest.raises(TympanError, match="n_sounds, n_samples"):
        hear.get_scene_embeddings(torch.zeros(16000), model)
    with pytest.raises(TympanError, match="NaN"):
        hear.get_scene_embeddings(torch.full((1, 100), float("nan")), model)
    with pytest.raises(TympanError, match="not a tympan run directory"):
        hear.load_model(tmp_path)
