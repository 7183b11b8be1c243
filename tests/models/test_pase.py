"""The PASE-like backbone of seed 004 (tympan.models.pase): shapes, sizes, options, Encoder use."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tympan.config import load_recipe, save_recipe
from tympan.errors import ConfigError
from tympan.models.encoder import Encoder, load_encoder, save_encoder
from tympan.models.pase import PASE_DEFAULTS, PASEEncoder, pase
from tympan.models.resnet import ARCHS

TINY = {"channels": [4, 6], "lstm_layers": 2, "lstm_hidden": 5, "mlp_hidden": 7, "out_dim": 9}


def _expected_params(cin: int, n_mels: int, channels: list[int], layers: int, hidden: int,
                     mlp_hidden: int, out_dim: int, pool: int = 2) -> int:
    """Hand count: bias-free 3x3 convs + BatchNorm (weight, bias) per conv; LSTM gates
    ``4 h (in + h) + 2 * 4 h`` per direction; two linear layers."""
    total, c, f = 0, cin, n_mels
    for cout in channels:
        total += 9 * c * cout + 9 * cout * cout + 2 * 2 * cout
        c, f = cout, f // pool
    feat = c * f
    for _ in range(layers):
        total += 2 * (4 * hidden * (feat + hidden) + 2 * 4 * hidden)
        feat = 2 * hidden
    return total + feat * mlp_hidden + mlp_hidden + mlp_hidden * out_dim + out_dim


def test_backbone_shape_keeps_time_and_has_the_counted_parameters() -> None:
    net = PASEEncoder(1, 16, TINY)
    x = torch.randn(3, 1, 16, 21)
    out = net(x)
    assert out.shape == (3, 9, 1, 21)  # [B, out_dim, 1, T]: no time pooling
    assert net.out_channels == 9
    n = sum(p.numel() for p in net.parameters())
    assert n == _expected_params(1, 16, [4, 6], 2, 5, 7, 9) == 2829
    # 3 input channels (log-mel + deltas) only change the first conv
    assert sum(p.numel() for p in PASEEncoder(3, 16, TINY).parameters()) == n + 9 * 2 * 4


def test_seed_defaults_and_size() -> None:
    assert PASE_DEFAULTS["channels"] == [128, 200, 256] and PASE_DEFAULTS["lstm_layers"] == 5
    assert PASE_DEFAULTS["lstm_hidden"] == 256 and PASE_DEFAULTS["mlp_hidden"] == 256
    assert PASE_DEFAULTS["dropout"] == 0.15
    r = load_recipe("pase")
    assert r.model.arch == "pase" and r.frontend.hop_length == 160  # 10 ms, as the labels
    net = ARCHS["pase"](1, r.model.width, "none", ("pase",), options=r.model.options,
                        n_mels=r.frontend.n_mels)
    n = sum(p.numel() for p in net.parameters())
    assert n == _expected_params(1, 80, [128, 200, 256], 5, 256, 256, 256)
    # the seed's SSL models have 16.3M parameters with their workers; the encoder is most of it
    assert 12e6 < n < 16.3e6
    # LeakyReLU everywhere but the LSTM; dropout 0.15
    acts = [m for m in net.modules() if isinstance(m, torch.nn.LeakyReLU)]
    assert len(acts) == 2 * 3 + 1
    assert net.lstm is not None and net.lstm.dropout == pytest.approx(0.15)
    assert all(m.p == pytest.approx(0.15) for m in net.modules() if isinstance(m, torch.nn.Dropout))


def test_lstm_can_be_left_out_and_time_context_comes_from_it() -> None:
    torch.manual_seed(0)
    flat = PASEEncoder(1, 8, {**TINY, "lstm_layers": 0}).eval()
    rec = PASEEncoder(1, 8, TINY).eval()
    x = torch.randn(1, 1, 8, 12)
    y = x.clone()
    y[..., -1] += 5.0  # change the last frame only
    # without the LSTM the receptive field is 2 blocks x 2 convs x 1 frame each side: frame 0 is
    # untouched; the bidirectional LSTM carries the change back to the first frame
    assert torch.equal(flat(x)[..., :7], flat(y)[..., :7])
    assert (rec(x)[..., 0] - rec(y)[..., 0]).abs().max() > 1e-6


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"chanels": [4]}, "model.options.chanels"),
        ({"channels": []}, "model.options.channels"),
        ({"channels": [4, 0]}, "model.options.channels"),
        ({"lstm_layers": -1}, "model.options.lstm_layers"),
        ({"out_dim": 2.5}, "model.options.out_dim"),
        ({"dropout": 1.0}, "model.options.dropout"),
        ({"channels": [2, 2, 2, 2, 2]}, "frontend.n_mels"),  # 16 mels pooled 5 times
    ],
)
def test_option_errors_name_the_field(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        pase(1, 64, "none", ("t",), options={**TINY, **options}, n_mels=16)


def test_adapters_and_resnet_options_are_refused() -> None:
    with pytest.raises(ConfigError, match="model.adapter.*none"):
        pase(1, 64, "parallel", ("a", "b"), options=TINY, n_mels=16)
    with pytest.raises(ConfigError, match="model.options.channels"):
        ARCHS["resnet18"](1, 8, "none", ("t",), options={"channels": [4]}, n_mels=16)
    with pytest.raises(ConfigError, match="model.options"):
        Encoder(load_recipe("simclr", {"model.width": 8, "model.options": {"lstm_layers": 1}}))
    with pytest.raises(ConfigError, match="adapter"):
        Encoder(load_recipe("pase_quick", {"model.adapter": "bn"}))


def _tiny_recipe(**over):
    return load_recipe("pase_quick", {
        "frontend.n_mels": 16, "frontend.hop_length": 160, "frontend.n_fft": 256,
        "model.options": TINY, **over,
    })


def test_encoder_contract_with_pase(tmp_path: Path) -> None:
    torch.manual_seed(0)
    enc = Encoder(_tiny_recipe()).eval()
    wav = torch.randn(2, 1600)
    frames = enc.frames(wav, "pase")
    assert frames.shape == (2, 1 + 1600 // 160, 9)  # one frame per front-end hop
    emb = enc(wav)
    assert emb.shape == (2, 9) and enc.embedding_dim == 9
    # the embedding is the time average of the frames (mean pooling)
    assert torch.allclose(emb, frames.mean(dim=1), atol=1e-6)
    f2, pooled = enc.frames_and_pooled(wav, "pase")
    assert torch.allclose(f2, frames) and torch.allclose(pooled, emb)
    # dropout is off in eval mode: deterministic
    assert torch.equal(enc(wav), emb)
    # a run directory round trip: config.yaml carries model.options, weights load strictly
    save_recipe(enc.recipe, tmp_path / "config.yaml")
    save_encoder(enc, tmp_path / "encoder.safetensors")
    again = load_encoder(tmp_path)
    assert again.recipe.model.options == enc.recipe.model.options
    assert again.recipe.model.options["channels"] == TINY["channels"]
    assert torch.allclose(again(wav), emb, atol=1e-6)
    counts = enc.parameter_counts()
    assert counts["total"] == counts["single_network"] == sum(p.numel() for p in enc.parameters())
