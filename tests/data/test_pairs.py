"""Same-track pairs (multi-view tagging seed 003, "Data": a 4 s anchor and a 4 s positive of the
same track, 4 to 16 s apart, drawn anew every time the track is read): the dataset, the view
pipeline on two given inputs, and ``tympan pretrain --recipe multiview`` end to end."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from tympan.augment.pipeline import ViewPipeline
from tympan.cli import main
from tympan.config import AugmentConfig
from tympan.data.dataset import SameTrackPairDataset
from tympan.data.manifest import Item
from tympan.data.music import synth_music
from tympan.errors import AudioError

SR = 8000


def _write(path: Path, wav: np.ndarray, sr: int = SR) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), wav.astype(np.float32), sr, subtype="FLOAT")
    return path


def _ramp(seconds: float) -> np.ndarray:
    """A slow, strictly increasing, loud ramp: a segment's first sample gives its start."""
    n = int(seconds * SR)
    return (0.1 + 0.8 * np.arange(n) / n).astype(np.float32)


def _item(path: Path) -> Item:
    return Item(path=path, labels=("x",), split="train")


def _dataset(path: Path, segment: float = 2.0, min_gap: float = 3.0, max_gap: float = 10.0,
             **kw) -> SameTrackPairDataset:
    return SameTrackPairDataset([_item(path)], SR, segment, min_gap, max_gap, **kw)


def _starts(wav: np.ndarray, out: dict) -> tuple[int, int]:
    """Start samples of both segments, recovered from their first sample (the ramp's value)."""
    a = int(np.searchsorted(wav, out["audio"][0].item()))
    b = int(np.searchsorted(wav, out["audio2"][0].item()))
    n = len(out["audio"])
    # the segments are exactly the file's samples from there
    np.testing.assert_array_equal(out["audio"].numpy(), wav[a : a + n])
    np.testing.assert_array_equal(out["audio2"].numpy(), wav[b : b + n])
    return a, b


# -- SameTrackPairDataset -----------------------------------------------------------------------


def test_pairs_are_two_segments_the_right_distance_apart(tmp_path: Path) -> None:
    wav = _ramp(30.0)
    ds = _dataset(_write(tmp_path / "ramp.wav", wav))
    assert len(ds) == 1
    assert ds.min_seconds == pytest.approx(5.0)
    n, lo, hi = 2 * SR, 3 * SR, 10 * SR
    torch.manual_seed(0)
    pairs = []
    for _ in range(200):
        out = ds[0]
        assert set(out) == {"audio", "audio2", "index"} and out["index"] == 0
        assert out["audio"].dtype == out["audio2"].dtype == torch.float32
        assert out["audio"].shape == out["audio2"].shape == (n,)
        a, b = _starts(wav, out)
        assert lo <= abs(a - b) <= hi
        assert 0 <= min(a, b) and max(a, b) + n <= len(wav)  # both inside the file
        pairs.append((a, b))
    # the order is random: the anchor is sometimes the later segment
    later = sum(a > b for a, b in pairs)
    assert 60 < later < 140
    # drawn anew at every read: practically never the same pair twice in a row
    assert sum(p == q for p, q in zip(pairs, pairs[1:])) <= 2
    assert len(set(pairs)) >= 195
    # the gaps cover the range, and the positions the whole file
    gaps = [abs(a - b) for a, b in pairs]
    assert min(gaps) < lo + SR and max(gaps) > hi - SR
    assert min(min(p) for p in pairs) < 2 * SR and max(max(p) for p in pairs) > len(wav) - n - 2 * SR


def test_gaps_are_capped_by_the_file_length(tmp_path: Path) -> None:
    wav = _ramp(8.0)  # room for a gap of at most 8 - 2 = 6 s, below max_gap = 16 s
    ds = _dataset(_write(tmp_path / "short.wav", wav), min_gap=3.0, max_gap=16.0)
    torch.manual_seed(1)
    for _ in range(100):
        a, b = _starts(wav, ds[0])
        assert 3 * SR <= abs(a - b) <= 6 * SR
        assert max(a, b) + 2 * SR <= len(wav)


def test_a_file_exactly_segment_plus_min_gap_long(tmp_path: Path) -> None:
    wav = _ramp(5.0)
    ds = _dataset(_write(tmp_path / "exact.wav", wav))
    torch.manual_seed(2)
    seen = {tuple(sorted(_starts(wav, ds[0]))) for _ in range(20)}
    assert seen == {(0, 3 * SR)}  # the only pair there is


def test_a_too_short_file_names_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "tiny_track.wav", _ramp(4.9))
    ds = _dataset(path)
    with pytest.raises(AudioError) as info:
        ds[0]
    assert str(path) in str(info.value) and info.value.path == str(path)
    assert "too short" in str(info.value)


def _half_silent(seconds: float = 30.0, loud: float = 15.0) -> np.ndarray:
    n, k = int(seconds * SR), int(loud * SR)
    wav = np.zeros(n, dtype=np.float32)
    wav[:k] = 0.5 * np.random.default_rng(0).standard_normal(k).astype(np.float32)
    return wav


def _rms(x: torch.Tensor | np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.asarray(x, dtype=np.float64) ** 2)))


def _energy(wav: np.ndarray) -> np.ndarray:
    """What the dataset passes to ``starts``: the cumulative squared signal, ``[N + 1]``."""
    return np.concatenate(([0.0], np.cumsum(wav.astype(np.float64) ** 2)))


@pytest.mark.parametrize("segment, min_gap, max_gap, tries", [
    (2.0, 3.0, 8.0, 10), (4.0, 4.0, 16.0, 10), (4.0, 4.0, 16.0, 1),
])
def test_silent_segments_are_avoided(tmp_path: Path, segment: float, min_gap: float,
                                     max_gap: float, tries: int) -> None:
    """A loud first half and digital silence after it: there are loud pairs, so no segment may
    be near-silent, whatever the draw (the seed's own 4 s / 4-16 s setting included)."""
    wav = _half_silent()
    path = _write(tmp_path / "half.wav", wav)
    ds = _dataset(path, segment, min_gap, max_gap, tries=tries)
    n = int(segment * SR)
    floor = 10 ** (-30 / 20) * _rms(wav)  # -30 dB below the file's RMS
    energy = _energy(wav)
    torch.manual_seed(3)
    orders = set()
    for i in range(2000):
        a, b = ds.starts(len(wav), energy)
        assert min_gap * SR <= abs(a - b) <= max_gap * SR, f"draw {i}"
        assert min(a, b) >= 0 and max(a, b) + n <= len(wav), f"draw {i}"
        for s in (a, b):
            assert _rms(wav[s : s + n]) >= floor, f"draw {i}: the segment at {s / SR:.2f} s is near-silent"
        orders.add(a < b)
    assert orders == {True, False}
    for _ in range(20):  # and through the dataset, as training reads it
        out = ds[0]
        assert min(_rms(out["audio"]), _rms(out["audio2"])) >= floor


def test_with_no_loud_pair_a_pair_is_still_returned(tmp_path: Path) -> None:
    # 1 s of sound in 20 s: no two 2 s segments 3 s apart are both loud; the file is not dropped
    wav = _half_silent(20.0, 1.0)
    ds = _dataset(_write(tmp_path / "blip.wav", wav))
    energy = _energy(wav)
    torch.manual_seed(4)
    for _ in range(200):
        a, b = ds.starts(len(wav), energy)
        assert 3 * SR <= abs(a - b) <= 10 * SR and max(a, b) + 2 * SR <= len(wav)
        # one of the two segments holds the sound
        assert max(_rms(wav[a : a + 2 * SR]), _rms(wav[b : b + 2 * SR])) > 0
    out = ds[0]
    assert out["audio"].shape == out["audio2"].shape == (2 * SR,)


def test_starts_without_a_level_check_and_a_too_small_file() -> None:
    ds = SameTrackPairDataset([], SR, 1.0, 2.0, 3.0)
    torch.manual_seed(5)
    for _ in range(50):
        a, b = ds.starts(10 * SR)
        assert 2 * SR <= abs(a - b) <= 3 * SR and max(a, b) + SR <= 10 * SR
    with pytest.raises(ValueError):
        ds.starts(3 * SR - 1)


# -- ViewPipeline.pair --------------------------------------------------------------------------


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return 0.3 * torch.randn(6, 4000, generator=g), 0.3 * torch.randn(6, 4000, generator=g)


def test_pair_without_ops_returns_its_inputs() -> None:
    pipe = ViewPipeline(AugmentConfig(ops=[], min_ops=0))
    x1, x2 = _inputs()
    views = pipe.pair(x1, x2, torch.Generator().manual_seed(0))
    assert torch.equal(views.view1, x1) and torch.equal(views.view2, x2)
    assert views.labels.shape == (6, 0) and views.op_names == ()
    assert views.order.shape == (6, 0)  # no op positions at all
    # mismatched inputs are refused
    with pytest.raises(ValueError):
        pipe.pair(x1, x2[:, :100], torch.Generator())


def test_pair_with_ops_gives_both_views_one_order_and_labels() -> None:
    ops = ["fade", "white_noise", "time_mask", "time_shift"]
    pipe = ViewPipeline(AugmentConfig(ops=ops))
    x1, x2 = _inputs(1)
    views = pipe.pair(x1, x2, torch.Generator().manual_seed(7))
    assert views.view1.shape == views.view2.shape == x1.shape
    assert not torch.equal(views.view1, x1) and not torch.equal(views.view2, x2)
    assert views.op_names == tuple(ops)
    torch.testing.assert_close(views.labels, pipe.labels(views.order))
    assert (views.labels.sum(dim=1) >= 1).all()
    # both views went through that one order (on the CPU one pass per view, each from a
    # generator seeded by the pipeline's): replaying the generator reproduces them exactly
    g = torch.Generator().manual_seed(7)
    order = pipe.sample_order(6, g, x1.device)
    assert torch.equal(order, views.order)
    seeds = torch.randint(0, 2**62, (2,), generator=g).tolist()
    for x, view, seed in ((x1, views.view1, seeds[0]), (x2, views.view2, seeds[1])):
        assert torch.equal(pipe.apply(x, order, torch.Generator().manual_seed(seed)), view)
    # and one input twice is the ordinary two-view call
    same = pipe.pair(x1, x1, torch.Generator().manual_seed(8))
    plain = pipe(x1, torch.Generator().manual_seed(8))
    assert torch.equal(same.view1, plain.view1) and torch.equal(same.view2, plain.view2)
    assert torch.equal(same.labels, plain.labels)


# -- tympan pretrain --recipe multiview ------------------------------------------------------------

SMALL_HEAD = (
    "tasks=[{name: contrastive, objective: nt_xent, head: {hidden_dim: 32, out_dim: 64, "
    "num_layers: 2, out_batch_norm: true, out_relu: true}}]"
)
FAST = [
    "--recipe", "multiview", "--set", "model.width=8", "--set", "model.embed_dim=32",
    "--set", "train.batch_size=4", "--set", "train.num_workers=0",
    "--set", "views.segment_seconds=1.0", "--set", "views.min_gap=1.0",
    "--set", "views.max_gap=4.0", "--set", "train.warmup_steps=1",
    "--set", "train.log_every_n_steps=1", "--set", SMALL_HEAD, "-q",
]


@pytest.fixture(scope="module")
def music(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth_music(tmp_path_factory.mktemp("music") / "corpus", scale="tiny", progress=False)


@pytest.mark.slow
def test_pretrain_multiview_on_the_music_corpus(music: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    summary = tmp_path / "summary.json"
    code = main(["pretrain", "--data", str(music), "--out", str(run), "--max-steps", "2",
                 "--json", str(summary), *FAST])
    assert code == 0
    for name in ("config.yaml", "encoder.safetensors", "metrics.csv", "pretrain.json",
                 "checkpoints/last.ckpt"):
        assert (run / name).is_file(), name
    result = json.loads((run / "pretrain.json").read_text())
    assert result["steps"] == 2 and result["clips"] == 18
    collapse = result["collapse"]
    assert set(collapse) == {"collapsed", "events", "last"}
    assert isinstance(collapse["collapsed"], bool) and isinstance(collapse["events"], list)
    assert {"contrastive/embed_std", "contrastive/effective_rank"} <= set(collapse["last"])
    assert json.loads(summary.read_text())["collapse"] == collapse
    # the run's config says where its views came from
    import yaml

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["views"]["kind"] == "same_track" and cfg["views"]["segment_seconds"] == 1.0
    assert cfg["model"]["pooling"] == "attention" and cfg["model"]["embed_dim"] == 32
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and "contrastive/embed_std" in rows[0] and "contrastive/effective_rank" in rows[0]


def _folder(root: Path, short_seconds: float) -> tuple[Path, Path]:
    """Four 3 s files and one of ``short_seconds``, in a class folder at 16 kHz."""
    rng = np.random.default_rng(0)
    (root / "a").mkdir(parents=True)
    for i in range(4):
        sf.write(str(root / "a" / f"long_{i}.wav"),
                 (0.3 * rng.standard_normal(3 * 16000)).astype(np.float32), 16000)
    short = root / "a" / "short_one.wav"
    sf.write(str(short), (0.3 * rng.standard_normal(int(short_seconds * 16000))).astype(np.float32),
             16000)
    return root, short


@pytest.mark.slow
def test_a_too_short_file_stops_pretraining_or_is_skipped(tmp_path: Path, capsys) -> None:
    data, short = _folder(tmp_path / "data", 1.5)  # 1 s segments at least 1 s apart need 2 s
    code = main(["pretrain", "--data", str(data), "--out", str(tmp_path / "run"),
                 "--max-steps", "1", *FAST])
    err = capsys.readouterr().err
    assert code == 2
    assert "short_one.wav" in err and "--skip-bad" in err
    assert "Traceback" not in err

    code = main(["pretrain", "--data", str(data), "--out", str(tmp_path / "run2"),
                 "--max-steps", "1", "--skip-bad", *FAST])
    err = capsys.readouterr().err
    assert code == 0
    assert "skipped 1" in err and "short_one.wav" in err
    result = json.loads((tmp_path / "run2" / "pretrain.json").read_text())
    assert result["n_skipped"] == 1 and result["clips"] == 4
    assert result["skipped"][0]["path"].endswith("short_one.wav")
