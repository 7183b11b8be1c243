"""CI estimates on growing subsets (tympan.pretext.robustness; seed 004, section IX, Fig. 3)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tympan.errors import ConfigError
from tympan.pretext.hsic import conditional_hsic
from tympan.pretext.robustness import (
    format_robustness,
    plot_robustness,
    robustness_study,
    robustness_to_json,
    summarise_robustness,
)


def make(per_class: int = 40, n_classes: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(n_classes), per_class)
    X = rng.standard_normal((len(y), 16)) + 0.5 * rng.standard_normal((n_classes, 16))[y] + 3.0
    z = {"dependent": X[:, 0] + 0.3 * rng.standard_normal(len(y)),  # follows X inside a class
         "by_class": y + 0.05 * rng.standard_normal(len(y)),  # almost a function of the class
         "noise": rng.standard_normal(len(y))}
    return X, z, y


def test_subset_sizes_and_full_draw() -> None:
    X, z, y = make()
    rec = robustness_study(X, z, y, n_classes=[2, 4, 6], per_class=[5, 40], draws=3, seed=1)
    for r in rec:
        if r["axis"] == "n_classes":
            assert r["n_classes"] == r["size"] and r["n_clips"] == 40 * r["size"]
        elif r["axis"] == "per_class":
            assert r["n_classes"] == 6 and r["n_clips"] == 6 * r["size"]
    draws = {(r["axis"], r["size"]): r["draw"] for r in rec}
    assert max(d for (a, s), d in draws.items() if (a, s) == ("n_classes", 4)) == 2  # 3 draws
    # a size that takes all the data is one draw, equal to the estimate on all data
    full = {name: conditional_hsic(X, v, y, max_per_class=None) for name, v in z.items()}
    for axis, size in (("full", None), ("n_classes", 6), ("per_class", 40)):
        got = {r["candidate"]: r["ci"] for r in rec if r["axis"] == axis and r["size"] == size}
        assert [r["draw"] for r in rec if r["axis"] == axis and r["size"] == size] == [0, 0, 0]
        for name in z:
            assert got[name] == pytest.approx(full[name], rel=1e-10)
        tau = {r["kendall_tau"] for r in rec if r["axis"] == axis and r["size"] == size}
        assert tau == {1.0}
    # deterministic under the seed, different with another seed
    again = robustness_study(X, z, y, n_classes=[2, 4, 6], per_class=[5, 40], draws=3, seed=1)
    assert again == rec
    other = robustness_study(X, z, y, n_classes=[2], per_class=[5], draws=3, seed=2, axes=["per_class"])
    assert [r["ci"] for r in other if r["axis"] == "per_class"] != \
        [r["ci"] for r in rec if r["axis"] == "per_class" and r["size"] == 5]


def test_spread_shrinks_with_more_samples() -> None:
    X, z, y = make(per_class=60)
    rec = robustness_study(X, z, y, per_class=[4, 30], axes=["per_class"], draws=10, seed=0)
    summ = {(s["size"], s["candidate"]): s for s in summarise_robustness(rec) if s["axis"] == "per_class"}
    for name in ("dependent", "noise"):
        assert summ[(30, name)]["std"] < 0.6 * summ[(4, name)]["std"]
    # with 30 clips per class the ranking of the three candidates matches all the data in every draw
    assert summ[(30, "dependent")]["kendall_tau_mean"] == pytest.approx(1.0)
    assert summ[(30, "by_class")]["mean"] < summ[(30, "noise")]["mean"] < summ[(30, "dependent")]["mean"]


def test_defaults_outputs_and_errors(tmp_path: Path) -> None:
    X, z, y = make(per_class=12, n_classes=5)
    rec = robustness_study(X, z, y, draws=2)
    sizes = sorted({r["size"] for r in rec if r["axis"] == "n_classes"})
    assert sizes == [2, 5] and sorted({r["size"] for r in rec if r["axis"] == "per_class"}) == [2, 5, 10, 12]
    png = plot_robustness(rec, tmp_path / "fig" / "robust.png")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    doc = json.loads(robustness_to_json(rec, tmp_path / "r.json"))
    assert len(doc["records"]) == len(rec) and json.loads((tmp_path / "r.json").read_text()) == doc
    assert {"axis", "size", "candidate", "mean", "std", "kendall_tau_mean"} <= set(doc["summary"][0])
    text = format_robustness(rec)
    assert "all data" in text and "per_class = 12" in text and "dependent" in text
    with pytest.raises(ConfigError, match="exceeds the 5 available"):
        robustness_study(X, z, y, n_classes=[9])
    with pytest.raises(ConfigError, match="axes"):
        robustness_study(X, z, y, axes=["speakers"])
