"""Two-view pipeline sampling as MT-SLVR defines it."""

from __future__ import annotations

import pytest
import torch

from tympan.augment.pipeline import ViewPipeline
from tympan.config import AugmentConfig
from tympan.errors import ConfigError


def _pipe(**kw) -> ViewPipeline:
    return ViewPipeline(AugmentConfig(**kw))


def test_counts_orders_and_labels() -> None:
    pipe = _pipe()
    order = pipe.sample_order(4000, torch.Generator().manual_seed(0), torch.device("cpu"))
    counts = (order >= 0).sum(1)
    assert counts.min() == 1 and counts.max() == 4
    assert torch.bincount(counts)[1:].float().div(4000).sub(0.25).abs().max() < 0.03
    for row in order[:200]:
        used = row[row >= 0]
        assert len(set(used.tolist())) == len(used)  # distinct ops
        assert torch.all(row[len(used):] == -1)  # padding only after the used positions
    labels = pipe.labels(order)
    expected = torch.zeros_like(labels)
    for i, row in enumerate(order):
        expected[i, row[row >= 0]] = 1.0
    assert torch.equal(labels, expected)
    first = order[:, 0]
    assert torch.bincount(first, minlength=4).float().div(4000).sub(0.25).abs().max() < 0.03


def test_views_share_ops_but_not_params() -> None:
    pipe = _pipe(ops=["time_shift"], min_ops=1)
    x = torch.randn(16, 500)
    v = pipe(x, torch.Generator().manual_seed(0))
    assert torch.all(v.labels == 1.0)
    for i in range(16):
        # each view is a roll of its clip (the only op), with its own shift
        assert any(torch.equal(v.view1[i], torch.roll(x[i], s)) for s in range(-250, 251))
    assert not torch.equal(v.view1, v.view2)


def test_deterministic_under_seed() -> None:
    pipe = _pipe()
    x = torch.randn(8, 1000)
    a = pipe(x, torch.Generator().manual_seed(5))
    b = pipe(x, torch.Generator().manual_seed(5))
    c = pipe(x, torch.Generator().manual_seed(6))
    assert torch.equal(a.view1, b.view1) and torch.equal(a.view2, b.view2)
    assert torch.equal(a.labels, b.labels)
    assert not torch.equal(a.view1, c.view1)


def test_min_max_ops_and_config_errors() -> None:
    pipe = _pipe(min_ops=2, max_ops=2)
    order = pipe.sample_order(100, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert torch.all((order >= 0).sum(1) == 2)
    with pytest.raises(ConfigError):
        _pipe(ops=[])
    with pytest.raises(ConfigError):
        _pipe(ops=["fade", "fade"])
    with pytest.raises(ConfigError, match=r"augment\.params\.white_noise"):
        _pipe(ops=["fade"], params={"white_noise": {"snr_db": [3, 30]}})


def test_schedule_runs_each_clips_ops_once_in_its_order() -> None:
    ops = ["pitch_shift", "fade", "white_noise", "mixed_noise", "time_mask", "time_shift",
           "time_stretch"]
    pipe = _pipe(ops=ops, min_ops=0)
    order = pipe.sample_order(64, torch.Generator().manual_seed(3), torch.device("cpu"))
    rounds = pipe.schedule(order)
    done: list[list[int]] = [[] for _ in range(64)]
    for j, clips, fresh in rounds:
        assert clips.numel() > 0 and torch.all(clips[1:] > clips[:-1])  # ascending, distinct
        starting = [i for i, b in enumerate(clips.tolist()) if not done[b]]
        # ``fresh`` marks exactly the clips taking their first op (None: all of them)
        assert starting == (list(range(clips.numel())) if fresh is None else fresh.tolist())
        for b in clips.tolist():
            done[b].append(j)
    for b in range(64):
        assert done[b] == order[b][order[b] >= 0].tolist()  # every op once, in the clip's order
    # fewer calls than one per (position, op) pair that has clips
    pairs = {(p, int(order[b, p])) for b in range(64) for p in range(7) if order[b, p] >= 0}
    assert len(rounds) < len(pairs)
    # clips with no ops take no round and are copied through
    x = torch.randn(64, 800)
    idle = torch.nonzero((order >= 0).sum(1) == 0, as_tuple=True)[0]
    assert idle.numel() > 0
    out = pipe.apply(x, order, torch.Generator().manual_seed(0))
    assert torch.equal(out[idle], x[idle])
