"""The Encoder contract (ARCHITECTURE.md, "Contracts between the parts"), safe save/load, the
ResNet-18 backbone, heads, and the evaluation baselines (``random``, ``logmel``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from tympan.config import load_recipe, save_recipe
from tympan.errors import ConfigError, TympanError
from tympan.evaluation.features import LogMelStats, resolve_model
from tympan.models import adapters
from tympan.models.adapters import NormSlot
from tympan.models.encoder import CONFIG_FILE, ENCODER_FILE, Encoder, load_encoder, save_encoder
from tympan.models.heads import mlp
from tympan.models.resnet import ResNet, resnet18

SR = 16000


def _recipe(tasks: list[str] | None = None, **over):
    overrides = {"model.width": 8, **over}
    if tasks is not None:
        overrides["tasks"] = [{"name": t, "objective": "nt_xent"} for t in tasks]
    return load_recipe("demo", overrides)


def _wave(batch: int = 3, seconds: float = 1.0, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.1 * torch.randn(batch, int(seconds * SR), generator=g)


class _TaskBiasNorm(NormSlot):
    """A test adapter: shared BatchNorm plus a per-task bias, so that tasks give different
    embeddings and a mixed-up task order or a dropped task argument shows."""

    def __init__(self, channels: int, tasks) -> None:
        super().__init__(channels, tasks)
        self.task_bias = nn.ParameterDict(
            {t: nn.Parameter(0.5 * torch.randn(channels)) for t in tasks}
        )

    def forward(self, x: torch.Tensor, task: str) -> torch.Tensor:
        return self.bn(x) + self.task_bias[task].view(1, -1, 1, 1)


@pytest.fixture
def per_task_adapter(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setitem(adapters.CONV_KINDS, "test_task_bias", adapters.ConvSlot)
    monkeypatch.setitem(adapters.NORM_KINDS, "test_task_bias", _TaskBiasNorm)
    return "test_task_bias"


def _randomise_state(enc: Encoder, seed: int = 0) -> None:
    """Move every parameter and BatchNorm statistic off its initial value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in enc.state_dict().items():
            if not t.is_floating_point():
                t.add_(3)  # num_batches_tracked
            elif name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            else:
                t.add_(0.05 * torch.randn(t.shape, generator=g))


# -- shapes and tasks ---------------------------------------------------------------------------


@pytest.mark.parametrize("width", [8, 12])
def test_embedding_shape_is_8_width(width: int) -> None:
    enc = Encoder(_recipe(**{"model.width": width})).eval()
    assert enc.tasks == ("contrastive",)
    assert enc.sample_rate == SR
    assert enc.dim == 8 * width and enc.embedding_dim == 8 * width
    with torch.no_grad():
        out = enc(_wave(3))
        one = enc(_wave(3), "contrastive")
    assert out.shape == (3, 8 * width) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert torch.equal(out, one)  # one task: task=None is that task's embedding


def test_batch_items_are_independent_in_eval_mode() -> None:
    enc = Encoder(_recipe()).eval()
    x = _wave(4)
    with torch.no_grad():
        full = enc(x)
        single = enc(x[2:3])
    torch.testing.assert_close(full[2:3], single, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(full[0], full[1])  # different clips, different embeddings


def test_frames_shape_and_pooling() -> None:
    enc = Encoder(_recipe()).eval()
    x = _wave(2, seconds=3.0)
    with torch.no_grad():
        frames = enc.frames(x, "contrastive")
        pooled = enc(x, "contrastive")
        fmap = enc.feature_map(x, "contrastive")
    # 48000 samples -> 94 log-mel frames -> /2 stem -> 47, /2 pool -> 24, then 12, 6, 3
    assert frames.shape == (2, 3, 64)
    assert fmap.shape[:2] == (2, 64) and fmap.shape[3] == 3
    torch.testing.assert_close(frames, fmap.mean(dim=2).transpose(1, 2))
    # the embedding is the frames' mean over time
    torch.testing.assert_close(frames.mean(dim=1), pooled, atol=1e-6, rtol=1e-5)
    # longer clips have more frames
    with torch.no_grad():
        assert enc.frames(_wave(2, seconds=6.0), "contrastive").shape == (2, 6, 64)


def test_task_none_concatenates_tasks_in_order(per_task_adapter: str) -> None:
    torch.manual_seed(0)
    recipe = _recipe(["contrastive", "other"], **{"model.adapter": per_task_adapter})
    enc = Encoder(recipe).eval()
    assert enc.tasks == ("contrastive", "other")
    assert enc.dim == 64 and enc.embedding_dim == 128
    assert enc.task_slices() == {"contrastive": (0, 64), "other": (64, 128)}
    x = _wave(3)
    with torch.no_grad():
        both = enc(x)
        c = enc(x, "contrastive")
        o = enc(x, "other")
    assert both.shape == (3, 128)
    assert not torch.allclose(c, o)  # the adapters make the tasks differ
    for task, ref in (("contrastive", c), ("other", o)):
        start, stop = enc.task_slices()[task]
        torch.testing.assert_close(both[:, start:stop], ref)
    with torch.no_grad():
        assert not torch.allclose(enc.frames(x, "contrastive"), enc.frames(x, "other"))


def test_task_order_follows_the_recipe(per_task_adapter: str) -> None:
    torch.manual_seed(0)
    recipe = _recipe(["other", "contrastive"], **{"model.adapter": per_task_adapter})
    enc = Encoder(recipe).eval()
    assert enc.tasks == ("other", "contrastive")
    assert enc.task_slices() == {"other": (0, 64), "contrastive": (64, 128)}
    x = _wave(2)
    with torch.no_grad():
        torch.testing.assert_close(enc(x), torch.cat([enc(x, "other"), enc(x, "contrastive")], 1))


def test_unknown_task_raises() -> None:
    enc = Encoder(_recipe(["contrastive", "other"])).eval()
    x = _wave(1)
    for call in (lambda: enc(x, "nope"), lambda: enc.frames(x, "nope"),
                 lambda: enc.feature_map(x, "nope")):
        with pytest.raises(TympanError, match="nope") as info:
            call()
        assert "contrastive" in str(info.value) and "other" in str(info.value)


def test_unknown_arch_raises_config_error() -> None:
    recipe = _recipe()
    recipe.model.arch = "resnet999"
    with pytest.raises(ConfigError, match="resnet999"):
        Encoder(recipe)


def test_three_channel_frontend() -> None:
    enc = Encoder(_recipe(**{"frontend.channels": 3})).eval()
    assert enc.backbone.stem_conv.in_channels == 3
    with torch.no_grad():
        assert enc(_wave(2)).shape == (2, 64)


# -- save / load ----------------------------------------------------------------------------------


def _save_run(enc: Encoder, run: Path) -> None:
    run.mkdir(parents=True, exist_ok=True)
    save_recipe(enc.recipe, run / CONFIG_FILE)
    save_encoder(enc, run / ENCODER_FILE)


def test_save_load_round_trip(tmp_path: Path, per_task_adapter: str) -> None:
    torch.manual_seed(1)
    enc = Encoder(_recipe(["contrastive", "other"], **{"model.adapter": per_task_adapter}))
    _randomise_state(enc)
    enc.eval()
    _save_run(enc, tmp_path)
    assert CONFIG_FILE == "config.yaml" and ENCODER_FILE == "encoder.safetensors"
    assert not (tmp_path / "encoder.safetensors.tmp").exists()  # the atomic write cleaned up
    again = load_encoder(tmp_path)
    assert isinstance(again, Encoder) and not again.training
    assert again.tasks == enc.tasks and again.recipe.model.width == 8
    ref_state, new_state = enc.state_dict(), again.state_dict()
    assert set(ref_state) == set(new_state)
    for k in ref_state:
        assert torch.equal(ref_state[k], new_state[k]), k
    x = _wave(2, seconds=1.5)
    with torch.no_grad():
        assert torch.equal(enc(x), again(x))
        assert torch.equal(enc.frames(x, "other"), again.frames(x, "other"))


def test_weights_file_is_safetensors(tmp_path: Path) -> None:
    enc = Encoder(_recipe())
    _randomise_state(enc)
    _save_run(enc, tmp_path)
    path = tmp_path / ENCODER_FILE
    raw = path.read_bytes()
    assert raw[:2] != b"\x80\x02" and not raw.startswith(b"PK")  # not a pickle, not a zip
    header_len = int.from_bytes(raw[:8], "little")
    assert raw[8:9] == b"{" and header_len < len(raw)  # safetensors: u64 length + JSON header
    state = load_file(str(path))
    expected = enc.state_dict()
    assert set(state) == set(expected)
    for k, v in expected.items():
        assert torch.equal(state[k], v), k
    # the front end is rebuilt from the recipe, never stored
    assert not any(k.startswith("frontend.") for k in state)
    with safe_open(str(path), "pt") as f:
        assert f.metadata()["tasks"] == "contrastive"


def test_load_missing_files_names_them(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(TympanError, match="config.yaml"):
        load_encoder(run)
    save_recipe(_recipe(), run / CONFIG_FILE)
    with pytest.raises(TympanError, match="encoder.safetensors") as info:
        load_encoder(run)
    assert "missing" in str(info.value)
    with pytest.raises(TympanError):
        load_encoder(tmp_path / "does_not_exist")


def test_load_corrupt_weights_raises(tmp_path: Path) -> None:
    save_recipe(_recipe(), tmp_path / CONFIG_FILE)
    (tmp_path / ENCODER_FILE).write_bytes(b"\x80\x04not safetensors at all")
    with pytest.raises(TympanError, match="safetensors"):
        load_encoder(tmp_path)


def test_load_weights_of_another_task_set_raises(tmp_path: Path) -> None:
    # weights with per-task parameters for tasks the config does not have
    save_recipe(_recipe(), tmp_path / CONFIG_FILE)
    save_encoder(Encoder(_recipe()), tmp_path / ENCODER_FILE)
    state = load_file(str(tmp_path / ENCODER_FILE))
    state["extra.weight"] = torch.zeros(3)
    from safetensors.torch import save_file

    save_file(state, str(tmp_path / ENCODER_FILE))
    with pytest.raises(TympanError, match="does not match"):
        load_encoder(tmp_path)


def test_load_weights_of_another_width_raises_tympan_error(tmp_path: Path) -> None:
    # a config.yaml that does not describe the weights (e.g. edited width) is a user-fixable
    # mismatch: it must be a TympanError naming the files, not a raw torch RuntimeError
    save_encoder(Encoder(_recipe()), tmp_path / ENCODER_FILE)
    save_recipe(_recipe(**{"model.width": 16}), tmp_path / CONFIG_FILE)
    with pytest.raises(TympanError, match="encoder.safetensors"):
        load_encoder(tmp_path)


# -- backbone and heads -----------------------------------------------------------------------------


def test_resnet18_parameter_count() -> None:
    # torchvision's ResNet-18: 11,689,512 parameters; without its fc layer (512*1000 + 1000):
    # 11,176,512 for 3 input channels; a 1-channel stem has 2 * 64 * 7 * 7 = 6,272 fewer.
    n1 = sum(p.numel() for p in resnet18(1, 64, "none", ("t",)).parameters())
    n3 = sum(p.numel() for p in resnet18(3, 64, "none", ("t",)).parameters())
    assert n3 == 11_689_512 - 513_000 == 11_176_512
    assert n1 == 11_176_512 - 6_272 == 11_170_240
    # the "none" adapter shares everything: more tasks, same parameter count
    n_two = sum(p.numel() for p in resnet18(1, 64, "none", ("a", "b")).parameters())
    assert n_two == n1


def test_resnet_downsampling_and_channels() -> None:
    net = ResNet(in_channels=1, width=4).eval()
    assert net.out_channels == 32
    assert len(net.blocks) == 8  # (2, 2, 2, 2)
    with torch.no_grad():
        out = net(torch.randn(2, 1, 64, 96), "default")
    assert out.shape == (2, 32, 2, 3)  # /32 in both axes


def test_unknown_adapter_kind_raises() -> None:
    with pytest.raises(ConfigError, match="model.adapter"):
        Encoder(_recipe(**{"model.adapter": "no_such_adapter"}))


def test_mlp_head_shapes_and_layout() -> None:
    head = mlp(64, 32, 16, num_layers=2)
    linears = [m for m in head if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64, 32), (32, 16)]
    assert linears[0].bias is None and linears[1].bias is not None  # BN follows the hidden one
    assert [type(m) for m in head] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert head(torch.randn(5, 64)).shape == (5, 16)

    deep = mlp(10, 20, 3, num_layers=4, batch_norm=False)
    linears = [m for m in deep if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(10, 20), (20, 20), (20, 20),
                                                                   (20, 3)]
    assert all(m.bias is not None for m in linears)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in deep)
    assert deep(torch.randn(2, 10)).shape == (2, 3)

    single = mlp(8, 99, 4, num_layers=1)
    assert len(single) == 1 and isinstance(single[0], nn.Linear)
    assert (single[0].in_features, single[0].out_features) == (8, 4)
    with pytest.raises(ValueError):
        mlp(8, 8, 8, num_layers=0)


# -- baselines -----------------------------------------------------------------------------------------


def test_logmel_stats() -> None:
    recipe = _recipe()
    model = resolve_model("logmel", recipe)
    assert isinstance(model, LogMelStats) and not model.training
    assert model.tasks == ("logmel",) and model.sample_rate == SR
    assert model.embedding_dim == 2 * recipe.frontend.n_mels == 256
    assert model.task_slices() == {"logmel": (0, 256)}
    x = _wave(3)
    with torch.no_grad():
        out = model(x)
        mel = model.frontend(x)[:, 0]
    assert out.shape == (3, 256)
    torch.testing.assert_close(out[:, :128], mel.mean(dim=2))
    torch.testing.assert_close(out[:, 128:], mel.std(dim=2))
    # n_mels sets the size
    small = resolve_model("logmel", _recipe(**{"frontend.n_mels": 40}))
    assert small(x).shape == (3, 80)


def test_random_baseline_is_deterministic_per_seed() -> None:
    recipe = _recipe()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = resolve_model("random", recipe, seed=1)
    assert torch.equal(torch.get_rng_state(), before)  # the global RNG is left alone
    torch.manual_seed(999)  # a different global state must not matter
    b = resolve_model("random", recipe, seed=1)
    c = resolve_model("random", recipe, seed=2)
    assert isinstance(a, Encoder) and not a.training
    x = _wave(2)
    with torch.no_grad():
        ya, yb, yc = a(x), b(x), c(x)
    assert ya.shape == (2, 64)
    assert torch.equal(ya, yb)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.allclose(ya, yc)


def test_resolve_model_run_dir_and_errors(tmp_path: Path) -> None:
    enc = Encoder(_recipe())
    _randomise_state(enc)
    enc.eval()
    _save_run(enc, tmp_path / "run")
    loaded = resolve_model(tmp_path / "run")
    x = _wave(1)
    with torch.no_grad():
        assert torch.equal(loaded(x), enc(x))
    with pytest.raises(TympanError, match="not a run directory"):
        resolve_model(tmp_path / "nowhere")
