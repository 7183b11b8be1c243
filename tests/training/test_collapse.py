"""Collapse monitoring (tympan.training.collapse): the embedding statistics every task logs and the
callback that warns once per (task, metric) and keeps the events for ``pretrain.json``."""

from __future__ import annotations

import json
import logging
import math
from types import SimpleNamespace

import pytest
import torch

from tympan.training.collapse import CollapseMonitor, embedding_stats

# -- embedding_stats ------------------------------------------------------------------------------


def _gaussian(b: int = 64, d: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, d, generator=torch.Generator().manual_seed(seed))


def test_stats_of_a_spread_out_batch() -> None:
    stats = embedding_stats(_gaussian())
    assert set(stats) == {"embed_std", "effective_rank"}
    assert all(v.dim() == 0 for v in stats.values())
    # unit rows of an isotropic Gaussian: each coordinate has std 1/sqrt(D) = 0.25
    assert 0.2 < stats["embed_std"].item() < 0.3
    # nearly isotropic: far above half the dimensions, never above min(B, D)
    assert 8.0 < stats["effective_rank"].item() <= 16.0 + 1e-4


def test_stats_of_a_rank_one_batch() -> None:
    g = torch.Generator().manual_seed(1)
    u, v, offset = torch.randn(64, 1, generator=g), torch.randn(1, 16, generator=g), torch.randn(16, generator=g)
    stats = embedding_stats(offset + u @ v)  # every embedding on one line
    assert stats["effective_rank"].item() == pytest.approx(1.0, abs=1e-3)
    assert math.isfinite(stats["embed_std"].item())


def test_stats_of_a_constant_batch() -> None:
    stats = embedding_stats(torch.full((64, 16), 0.7))
    assert stats["embed_std"].item() == pytest.approx(0.0, abs=1e-6)
    # no spread at all: finite, and the floor of the scale (1), not NaN
    assert stats["effective_rank"].item() == pytest.approx(1.0, abs=1e-4)


def test_stats_are_scale_invariant_detached_and_bounded_by_the_batch() -> None:
    e = _gaussian(seed=2).requires_grad_(True)
    a, b = embedding_stats(e), embedding_stats(10.0 * e.detach())
    assert not a["embed_std"].requires_grad and not a["effective_rank"].requires_grad
    # embed_std reads L2-normalised rows; the effective rank is a ratio of singular values
    assert a["embed_std"].item() == pytest.approx(b["embed_std"].item(), rel=1e-5)
    assert a["effective_rank"].item() == pytest.approx(b["effective_rank"].item(), rel=1e-4)
    # 4 samples in 64 dimensions: centring leaves at most 3 directions
    few = embedding_stats(_gaussian(4, 64, seed=3))
    assert 1.0 <= few["effective_rank"].item() <= 3.0 + 1e-4
    # half-precision inputs are read in float32
    half = embedding_stats(_gaussian(seed=2).to(torch.bfloat16))
    assert half["embed_std"].dtype == torch.float32


# -- CollapseMonitor ------------------------------------------------------------------------------


def _trainer(step: int, **metrics: float) -> SimpleNamespace:
    """The two attributes of a Lightning trainer that the monitor reads."""
    return SimpleNamespace(
        global_step=step, callback_metrics={k: torch.tensor(v) for k, v in metrics.items()}
    )


def _batch_end(monitor: CollapseMonitor, trainer: SimpleNamespace) -> None:
    monitor.on_train_batch_end(trainer, None, None, None, 0)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "tympan"]


def test_monitor_warns_once_per_task_and_metric(caplog: pytest.LogCaptureFixture) -> None:
    monitor = CollapseMonitor({"byol": 16, "clustering": 16})  # embed_std floor 0.1 / 4 = 0.025
    healthy = {"byol/embed_std": 0.24, "byol/effective_rank": 12.0,
               "clustering/embed_std": 0.23, "clustering/effective_rank": 11.0,
               "clustering/prototype_usage": 0.8}
    with caplog.at_level(logging.WARNING, logger="tympan"):
        _batch_end(monitor, _trainer(1, **healthy))
        assert monitor.events == [] and _warnings(caplog) == []
        assert monitor.last["byol/embed_std"] == pytest.approx(0.24)

        # byol's std falls below the floor: one event, one warning
        _batch_end(monitor, _trainer(5, **{**healthy, "byol/embed_std": 0.001}))
        assert len(monitor.events) == 1 and len(_warnings(caplog)) == 1
        assert monitor.events[0] == {"step": 5, "task": "byol", "metric": "embed_std",
                                     "value": pytest.approx(0.001), "threshold": pytest.approx(0.025)}
        assert "byol" in caplog.text and "embed_std" in caplog.text

        # still collapsed later: no new event or warning for the same (task, metric)
        for step in (6, 7):
            _batch_end(monitor, _trainer(step, **{**healthy, "byol/embed_std": 0.0005}))
        assert len(monitor.events) == 1 and len(_warnings(caplog)) == 1
        assert monitor.last["byol/embed_std"] == pytest.approx(0.0005)  # last value still kept

        # another metric of the same task, and the same metric of another task, are new kinds
        _batch_end(monitor, _trainer(8, **{**healthy, "byol/effective_rank": 1.0,
                                           "clustering/embed_std": 0.01,
                                           "clustering/prototype_usage": 0.01}))
    kinds = [(e["task"], e["metric"], e["step"]) for e in monitor.events]
    assert kinds == [("byol", "embed_std", 5), ("byol", "effective_rank", 8),
                     ("clustering", "embed_std", 8), ("clustering", "prototype_usage", 8)]
    assert len(_warnings(caplog)) == 4
    usage = monitor.events[-1]
    assert usage["threshold"] == pytest.approx(0.05) and usage["value"] == pytest.approx(0.01)


def test_monitor_treats_nan_as_collapse_and_ignores_missing_metrics() -> None:
    monitor = CollapseMonitor({"vicreg": 64})
    _batch_end(monitor, _trainer(0))  # nothing logged yet (e.g. before the first log)
    assert monitor.events == [] and monitor.last == {}
    _batch_end(monitor, _trainer(3, **{"vicreg/embed_std": float("nan"), "vicreg/effective_rank": 30.0}))
    assert [(e["metric"], e["step"]) for e in monitor.events] == [("embed_std", 3)]
    assert math.isnan(monitor.events[0]["value"])
    # a metric of a task the monitor was not told about is not read
    _batch_end(monitor, _trainer(4, **{"other/embed_std": 0.0}))
    assert len(monitor.events) == 1 and "other/embed_std" not in monitor.last


def test_embed_std_floor_scales_with_the_dimension() -> None:
    # 0.02 is healthy-ish for D = 1024 (1/sqrt(D) ~ 0.031, floor 0.0031), collapsed for D = 4
    wide, narrow = CollapseMonitor({"t": 1024}), CollapseMonitor({"t": 4})
    for m in (wide, narrow):
        _batch_end(m, _trainer(1, **{"t/embed_std": 0.02}))
    assert wide.events == []
    assert [e["metric"] for e in narrow.events] == ["embed_std"]
    assert narrow.events[0]["threshold"] == pytest.approx(0.1 / 2)


def test_summary_shape_and_json() -> None:
    monitor = CollapseMonitor({"t": 16})
    assert monitor.summary() == {"collapsed": False, "events": [], "last": {}}
    _batch_end(monitor, _trainer(2, **{"t/embed_std": 0.2, "t/effective_rank": 1.2}))
    summary = monitor.summary()
    assert set(summary) == {"collapsed", "events", "last"}
    assert summary["collapsed"] is True
    assert [e["metric"] for e in summary["events"]] == ["effective_rank"]
    assert set(summary["last"]) == {"t/embed_std", "t/effective_rank"}
    assert all(isinstance(v, float) for v in summary["last"].values())
    # pretrain.json carries it as it is: plain JSON types only
    assert json.loads(json.dumps(summary)) == summary
