"""Learnt invariance (MT-SLVR, "Ablation Studies" / "Learnt Invariance"): the Mahalanobis
distance by hand, an identity op scores 0, a time-shift-invariant head scores lower than a
time-sensitive one, the table/markdown/JSON/heatmap, clip loading and the errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from sklearn.covariance import LedoitWolf
from torch import nn

from tympan.analysis.invariance import (
    InvarianceTable,
    centre_crops,
    format_invariance,
    invariance_report,
    load_clips,
    mahalanobis_distances,
    measure_invariance,
    shrunk_covariance,
)
from tympan.audio.frontend import LogMel
from tympan.config import AudioConfig, AugmentConfig, FrontendConfig, Recipe
from tympan.errors import TympanError
from tympan.report.plots import plot_invariance_heatmap

SR = 16000


class TwoHeadModel(nn.Module):
    """Fake two-task model with the Encoder interface.

    ``invariant``: mean log-mel per band over time (a circular time shift barely changes it);
    ``sensitive``: mean log-mel per band in each quarter of the clip (a shift moves content
    between quarters).
    """

    tasks = ("invariant", "sensitive")
    n_mels = 16

    def __init__(self, augment: AugmentConfig | None = None, clip_seconds: float = 0.5) -> None:
        super().__init__()
        self.recipe = Recipe(
            audio=AudioConfig(sample_rate=SR, clip_seconds=clip_seconds),
            augment=augment or AugmentConfig(ops=["time_shift", "white_noise"]),
        )
        self.sample_rate = SR
        self.frontend = LogMel(
            FrontendConfig(n_mels=self.n_mels, n_fft=256, hop_length=128, normalize=False), SR
        )

    def task_slices(self) -> dict[str, tuple[int, int]]:
        return {"invariant": (0, self.n_mels), "sensitive": (self.n_mels, 5 * self.n_mels)}

    def forward(self, x: torch.Tensor, task: str | None = None) -> torch.Tensor:
        mel = self.frontend(x)[:, 0]  # [B, n_mels, frames]
        quarters = [q.mean(dim=2) for q in mel.tensor_split(4, dim=2)]
        out = torch.cat([mel.mean(dim=2), *quarters], dim=1)
        if task is None:
            return out
        lo, hi = self.task_slices()[task]
        return out[:, lo:hi]


def _clips(n: int, seconds: float = 0.6, seed: int = 0) -> list[np.ndarray]:
    """Noise bursts at random times with random spectral tilt: varied in time and in spectrum."""
    rng = np.random.default_rng(seed)
    t = int(seconds * SR)
    out = []
    for _ in range(n):
        noise = rng.standard_normal(t)
        spec = np.fft.rfft(noise) * np.arange(1, t // 2 + 2) ** (-rng.uniform(0.0, 1.5))
        coloured = np.fft.irfft(spec, n=t)
        env = np.full(t, 0.02)
        start = rng.integers(0, t - t // 4)
        env[start : start + t // 4] = 1.0
        wav = coloured * env
        out.append((0.3 * wav / np.abs(wav).max()).astype(np.float32))
    return out


# ---------------------------------------------------------------------------------------------
# the distance


def test_mahalanobis_hand_example_known_covariance() -> None:
    cov = np.diag([4.0, 1.0])
    original = np.array([[0.0, 0.0], [1.0, 1.0], [3.0, -2.0]])
    augmented = original + np.array([[2.0, 1.0], [0.0, 3.0], [-4.0, 0.0]])
    # (2^2/4 + 1^2/1), (0 + 9/1), (16/4 + 0)
    expected = np.sqrt([2.0, 9.0, 4.0])
    np.testing.assert_allclose(mahalanobis_distances(original, augmented, cov), expected)


def test_mahalanobis_matches_numpy_inverse_of_a_full_covariance() -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((5, 5))
    cov = a @ a.T + 0.5 * np.eye(5)
    o, x = rng.standard_normal((20, 5)), rng.standard_normal((20, 5))
    diff = x - o
    expected = np.sqrt(np.einsum("nd,de,ne->n", diff, np.linalg.inv(cov), diff))
    np.testing.assert_allclose(mahalanobis_distances(o, x, cov), expected, rtol=1e-10)


def test_default_covariance_is_ledoit_wolf_of_the_originals_even_with_n_below_d() -> None:
    rng = np.random.default_rng(1)
    o = rng.standard_normal((6, 10)) * np.linspace(0.5, 3.0, 10)  # N < D: singular sample cov
    x = o + 0.1 * rng.standard_normal((6, 10))
    cov = LedoitWolf().fit(o).covariance_
    np.testing.assert_allclose(shrunk_covariance(o), cov)
    diff = x - o
    expected = np.sqrt(np.einsum("nd,de,ne->n", diff, np.linalg.inv(cov), diff))
    np.testing.assert_allclose(mahalanobis_distances(o, x), expected, rtol=1e-8)


def test_mahalanobis_errors() -> None:
    with pytest.raises(TympanError, match="same shape"):
        mahalanobis_distances(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(TympanError, match="do not vary"):
        mahalanobis_distances(np.ones((4, 3)), np.ones((4, 3)))
    with pytest.raises(TympanError, match="N >= 2"):
        shrunk_covariance(np.zeros((1, 3)))


# ---------------------------------------------------------------------------------------------
# the table


def test_identity_op_gives_zero_distance() -> None:
    model = TwoHeadModel(
        AugmentConfig(ops=["time_shift", "time_mask"],
                      params={"time_shift": {"max_ratio": 0.0}, "time_mask": {"max_ratio": 0.0}})
    )
    table = invariance_report(model, _clips(12), num_clips=12, batch_size=5, progress=False)
    for task in model.tasks:
        for op in ("time_shift", "time_mask", "avg"):
            assert table.distances[task][op] == pytest.approx(0.0, abs=1e-9)


def test_time_shift_invariant_head_scores_lower_than_time_sensitive_head() -> None:
    model = TwoHeadModel()
    table = invariance_report(
        model, _clips(40), ops=["time_shift"], num_clips=40, batch_size=16, progress=False
    )
    inv = table.distances["invariant"]["time_shift"]
    sens = table.distances["sensitive"]["time_shift"]
    assert inv < 0.3 * sens, (inv, sens)
    assert sens > 1.0


def test_table_keys_avg_json_markdown_and_determinism() -> None:
    model = TwoHeadModel()
    clips = _clips(10)
    table = invariance_report(model, clips, num_clips=8, seed=3, batch_size=3, progress=False)
    assert table.tasks == ["invariant", "sensitive"]
    assert table.ops == ["time_shift", "white_noise"]  # the recipe's augment.ops
    assert table.num_clips == 8 and table.clip_seconds == pytest.approx(0.5)
    for task in table.tasks:
        assert set(table.distances[task]) == {"time_shift", "white_noise", "avg"}
        mean = np.mean([table.distances[task][op] for op in table.ops])
        assert table.distances[task]["avg"] == pytest.approx(mean)
        assert all(np.isfinite(v) for v in table.ci95[task].values())
    data = json.loads(json.dumps(table.to_json()))
    assert InvarianceTable.from_json(data) == table
    again = invariance_report(model, clips, num_clips=8, seed=3, batch_size=3, progress=False)
    assert again.distances == table.distances
    other = invariance_report(model, clips, num_clips=8, seed=4, batch_size=3, progress=False)
    assert other.distances != table.distances

    md = format_invariance(table).splitlines()
    assert md[0] == "| Head | time_shift | white_noise | Avg |"
    assert md[2].startswith("| invariant | ") and md[3].startswith("| sensitive | ")
    assert len(md) == 4
    both = format_invariance({"cont": table, "pred": table}, show_ci=True).splitlines()
    assert both[0] == "| Model | Head | time_shift | white_noise | Avg |"
    assert both[5].startswith("| pred | sensitive | ") and "±" in both[5]


def test_one_task_and_explicit_ops_and_crops() -> None:
    model = TwoHeadModel()
    crops = centre_crops(_clips(6), 4000)
    assert crops.shape == (6, 4000) and crops.dtype == np.float32
    short = centre_crops([np.arange(3, dtype=np.float32)], 7)
    np.testing.assert_array_equal(short[0], [0, 1, 2, 0, 1, 2, 0])  # tiled
    table = measure_invariance(model, crops, ops=["fade"], tasks=["sensitive"])
    assert table.tasks == ["sensitive"] and table.ops == ["fade"]


def test_errors_name_the_problem() -> None:
    model = TwoHeadModel()
    clips = _clips(4)
    with pytest.raises(TympanError, match="unknown augmentation op 'reverb'"):
        invariance_report(model, clips, ops=["reverb"], progress=False)
    with pytest.raises(TympanError, match="unknown task 'nope'.*invariant, sensitive"):
        invariance_report(model, clips, tasks=["nope"], progress=False)
    with pytest.raises(TympanError, match="at least 2 clips"):
        invariance_report(model, clips[:1], progress=False)
    with pytest.raises(TympanError, match="at least 2"):
        invariance_report(model, clips, num_clips=1, progress=False)
    with pytest.raises(TympanError, match="listed twice"):
        invariance_report(model, clips, ops=["fade", "fade"], progress=False)


def test_heatmap_is_written(tmp_path: Path) -> None:
    model = TwoHeadModel()
    table = invariance_report(model, _clips(6), num_clips=6, progress=False)
    out = plot_invariance_heatmap(table, tmp_path / "figs" / "invariance.png")
    assert out.is_file() and out.stat().st_size > 1000
    out2 = plot_invariance_heatmap({"a": {"x": 1.0, "avg": 1.0}}, tmp_path / "plain.png")
    assert out2.is_file()


# ---------------------------------------------------------------------------------------------
# loading clips from a manifest


def test_load_clips_prefers_pretrain_split_and_is_deterministic(tmp_path: Path) -> None:
    rows = ["path,label,split"]
    for i in range(8):
        split = "pretrain" if i < 6 else "test"
        sf.write(tmp_path / f"c{i}.wav", _clips(1, seconds=0.2, seed=i)[0], SR)
        rows.append(f"c{i}.wav,x,{split}")
    (tmp_path / "bad.wav").write_bytes(b"not audio at all" * 64)
    rows.append("bad.wav,x,pretrain")
    manifest = tmp_path / "m.csv"
    manifest.write_text("\n".join(rows) + "\n")

    a = load_clips(manifest, sample_rate=SR, num_clips=4, seed=0, skip_bad=True, progress=False)
    b = load_clips(manifest, None, SR, 4, 0, True, progress=False)
    assert [it.path for it in a.items] == [it.path for it in b.items]
    assert len(a.audio) == 4 and all(it.split == "pretrain" for it in a.items)
    every = load_clips(manifest, sample_rate=SR, num_clips=50, skip_bad=True, progress=False)
    assert len(every.items) == 6 and len(every.skipped) == 1  # the bad file is replaced/skipped
    test = load_clips(manifest, "test", SR, 50, progress=False, skip_bad=True)
    assert len(test.items) == 2
