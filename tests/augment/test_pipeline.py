"""ViewPipeline: MT-SLVR two-view sampling (same ordered ops, independent parameters)."""

from __future__ import annotations

import pytest
import torch

from tympan.augment.pipeline import ViewPipeline, Views
from tympan.config import AugmentConfig, load_recipe
from tympan.errors import ConfigError

CPU = torch.device("cpu")
ALL_OPS = ["fade", "white_noise", "time_mask", "time_shift"]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _pipe(**kw) -> ViewPipeline:
    return ViewPipeline(AugmentConfig(**kw))


class _DigitOp:
    """Spy op: ``x -> 10 x + (j + 1)``. Starting from zeros, a clip's value spells, digit by digit,
    the sequence of ops applied to it. It also draws one number from the generator per clip so
    that it consumes randomness like a real op."""

    def __init__(self, j: int) -> None:
        self.j = j

    def sample(self, n, num_samples, g, device):
        return {"u": torch.rand(n, generator=g, device=device)}

    def apply(self, x, params):
        return 10.0 * x + float(self.j + 1)


def _decode(value: float) -> list[int]:
    v = int(round(value))
    digits = []
    while v:
        digits.append(v % 10 - 1)
        v //= 10
    return digits[::-1]


def _roll_shift(x: torch.Tensor, y: torch.Tensor) -> int | None:
    """The shift ``s`` with ``y == roll(x, s)``, or None if ``y`` is no roll of ``x``."""
    t = x.shape[0]
    for s in range(t):
        if torch.equal(y, torch.roll(x, s)):
            return s if s <= t // 2 else s - t
    return None


def test_both_views_get_the_same_ops_in_the_same_order() -> None:
    pipe = _pipe(ops=ALL_OPS)
    pipe.ops = [_DigitOp(j) for j in range(len(ALL_OPS))]
    x = torch.zeros(300, 4)
    v = pipe(x, _gen(0))
    assert isinstance(v, Views)
    assert torch.equal(v.view1, v.view2)  # identical op sequences (the spy has no randomness in effect)
    for i in range(300):
        used = v.order[i][v.order[i] >= 0].tolist()
        assert _decode(v.view1[i, 0].item()) == used  # applied in exactly the sampled order
    # the orders are not all the same permutation
    assert len({tuple(r.tolist()) for r in v.order}) > 30


def test_views_have_independent_parameters() -> None:
    pipe = _pipe(ops=["time_shift"])
    x = torch.randn(64, 200, generator=_gen(1))
    v = pipe(x, _gen(2))
    s1, s2 = [], []
    for i in range(64):
        a, b = _roll_shift(x[i], v.view1[i]), _roll_shift(x[i], v.view2[i])
        # only op time_shift: each view is a roll of its clip, within max_ratio 0.5
        assert a is not None and b is not None
        assert abs(a) <= 100 and abs(b) <= 100
        s1.append(a)
        s2.append(b)
    s1, s2 = torch.tensor(s1, dtype=torch.float), torch.tensor(s2, dtype=torch.float)
    assert (s1 != s2).float().mean() > 0.9  # the two views differ
    assert abs(torch.corrcoef(torch.stack([s1, s2]))[0, 1]) < 0.4  # and are not coupled
    assert len(set(s1.tolist())) > 30  # each clip its own shift


def test_time_shift_only_view_is_a_roll_of_the_input() -> None:
    pipe = _pipe(ops=["time_shift"], params={"time_shift": {"max_ratio": 0.25}})
    x = torch.randn(10, 80, generator=_gen(3))
    v = pipe(x, _gen(4))
    assert torch.all(v.labels == 1.0) and v.labels.shape == (10, 1)
    for i in range(10):
        for view in (v.view1, v.view2):
            s = _roll_shift(x[i], view[i])
            assert s is not None and abs(s) <= 20
            assert torch.equal(view[i].sort().values, x[i].sort().values)


def test_labels_are_the_multi_hot_of_order() -> None:
    pipe = _pipe(ops=ALL_OPS)
    v = pipe(torch.randn(200, 256, generator=_gen(5)), _gen(6))
    assert v.op_names == tuple(ALL_OPS)
    assert v.labels.shape == (200, 4) and v.labels.dtype.is_floating_point
    assert v.order.shape == (200, 4)
    for i in range(200):
        row = v.order[i]
        used = row[row >= 0].tolist()
        assert len(set(used)) == len(used)  # distinct ops
        assert torch.all(row[len(used) :] == -1)  # padding only after the used positions
        expected = torch.zeros(4)
        expected[used] = 1.0
        assert torch.equal(v.labels[i], expected)
    assert torch.equal(v.labels.sum(1), (v.order >= 0).sum(1).float())


def test_labels_of_a_hand_written_order() -> None:
    pipe = _pipe(ops=ALL_OPS)
    order = torch.tensor([[2, -1, -1, -1], [3, 0, -1, -1], [1, 2, 3, 0], [-1, -1, -1, -1]])
    expected = torch.tensor(
        [[0, 0, 1, 0], [1, 0, 0, 1], [1, 1, 1, 1], [0, 0, 0, 0]], dtype=torch.float
    )
    assert torch.equal(pipe.labels(order), expected)


@pytest.mark.parametrize(("min_ops", "max_ops"), [(1, None), (2, 3), (1, 1), (4, 4), (0, 2)])
def test_counts_lie_in_min_max(min_ops: int, max_ops: int | None) -> None:
    pipe = _pipe(ops=ALL_OPS, min_ops=min_ops, max_ops=max_ops)
    hi = 4 if max_ops is None else max_ops
    order = pipe.sample_order(2000, _gen(7), CPU)
    assert order.shape == (2000, hi)
    counts = (order >= 0).sum(1)
    assert counts.min() == min_ops and counts.max() == hi  # both ends occur
    assert set(counts.tolist()) == set(range(min_ops, hi + 1))


def test_count_op_and_position_frequencies_are_roughly_uniform() -> None:
    n = 8000
    pipe = _pipe(ops=ALL_OPS)
    order = pipe.sample_order(n, _gen(8), CPU)
    counts = (order >= 0).sum(1)
    freq = torch.bincount(counts, minlength=5)[1:].float() / n
    assert torch.all((freq - 0.25).abs() < 0.03), freq  # counts 1..4 equally likely
    labels = pipe.labels(order)
    # with counts uniform in 1..4 and ops a random subset, each op is in E[count]/4 = 62.5 % of clips
    assert torch.all((labels.mean(0) - 0.625).abs() < 0.03), labels.mean(0)
    first = torch.bincount(order[:, 0], minlength=4).float() / n
    assert torch.all((first - 0.25).abs() < 0.03), first  # any op can come first
    full = order[counts == 4]
    last = torch.bincount(full[:, 3], minlength=4).float() / len(full)
    assert torch.all((last - 0.25).abs() < 0.05), last  # ... and last


def test_min_ops_zero_leaves_some_clips_untouched() -> None:
    pipe = _pipe(ops=ALL_OPS, min_ops=0, max_ops=1)
    x = torch.randn(200, 128, generator=_gen(9))
    v = pipe(x, _gen(10))
    none = v.labels.sum(1) == 0
    assert none.any() and (~none).any()
    assert torch.equal(v.view1[none], x[none]) and torch.equal(v.view2[none], x[none])


def test_every_op_actually_changes_the_clips_it_is_applied_to() -> None:
    x = torch.randn(64, 512, generator=_gen(11)) + 3.0
    for name in ALL_OPS:
        v = _pipe(ops=[name])(x, _gen(12))
        changed = (v.view1 != x).any(1)
        assert changed.float().mean() > 0.8, name


def test_deterministic_under_the_same_seed_and_not_under_another() -> None:
    pipe = _pipe(ops=ALL_OPS)
    x = torch.randn(16, 1000, generator=_gen(13))
    a = pipe(x, _gen(14))
    b = pipe(x, _gen(14))
    c = pipe(x, _gen(15))
    assert torch.equal(a.view1, b.view1) and torch.equal(a.view2, b.view2)
    assert torch.equal(a.labels, b.labels) and torch.equal(a.order, b.order)
    assert not torch.equal(a.view1, c.view1)
    assert not torch.equal(a.order, c.order)
    assert torch.equal(x, torch.randn(16, 1000, generator=_gen(13)))  # input not modified


def test_views_keep_shape_and_dtype_and_reject_non_batched_input() -> None:
    pipe = _pipe(ops=ALL_OPS)
    v = pipe(torch.randn(3, 400), _gen(16))
    assert v.view1.shape == v.view2.shape == (3, 400)
    assert v.view1.dtype == v.view2.dtype == torch.float32
    with pytest.raises(ValueError):
        pipe(torch.randn(400), _gen(16))


def test_config_errors() -> None:
    # no ops: the pipeline passes its inputs through (same-track views), but a recipe whose views
    # are two augmentations of one crop must name some
    assert _pipe(ops=[], min_ops=0).ops == []
    with pytest.raises(ConfigError, match=r"augment\.ops"):
        load_recipe("simclr", {"augment.ops": [], "augment.min_ops": 0})
    with pytest.raises(ConfigError, match=r"augment\.ops"):
        _pipe(ops=["fade", "time_mask", "fade"])
    with pytest.raises(ConfigError, match=r"augment\.params\.white_noise"):
        _pipe(ops=["fade"], params={"white_noise": {"snr_db": [3, 30]}})
    with pytest.raises(ConfigError, match=r"augment\.ops"):
        _pipe(ops=["fade", "reverb"])
    with pytest.raises(ConfigError, match=r"augment\.params\.fade\.max_in"):
        _pipe(ops=["fade"], params={"fade": {"max_in": 3.0}})


def test_recipe_params_reach_the_ops() -> None:
    pipe = _pipe(ops=["white_noise", "time_mask"], params={"white_noise": {"snr_db": [20, 20]}})
    snr = pipe.ops[0].sample(10, 100, _gen(17), CPU)["snr_db"]
    assert torch.allclose(snr, torch.full((10,), 20.0))
    assert pipe.ops[1].params["max_ratio"] == 0.125  # untouched op keeps the seed default


@pytest.mark.parametrize(
    "kw",
    [
        {"ops": ["fade"], "max_ops": 3},  # more ops per clip than there are ops
        {"ops": ["fade", "time_shift"], "min_ops": 3},  # min above len(ops), max_ops left None
        {"ops": ["fade", "time_shift"], "min_ops": 2, "max_ops": 1},  # min > max
    ],
)
def test_impossible_op_counts_are_config_errors(kw) -> None:
    """A count that cannot be met must be refused up front, never silently repeat an op on a
    clip (ops per clip are distinct) nor fail later inside torch.randint."""
    with pytest.raises(ConfigError, match=r"augment\.(min|max)_ops"):
        pipe = _pipe(**kw)
        # if construction wrongly succeeds, show what the sampler then does
        order = pipe.sample_order(50, _gen(18), CPU)
        for row in order:
            used = row[row >= 0].tolist()
            assert len(set(used)) == len(used), f"op repeated within a clip: {row.tolist()}"


def test_recipe_extending_simclr_can_use_fewer_ops(tmp_path) -> None:
    """``base: simclr`` + ``augment: {ops: [fade, time_shift]}`` is a legitimate recipe. simclr.yaml
    lists params for all four ops and the base merge is deep (no way to delete a key), so the
    inherited params for white_noise / time_mask must not make the pipeline refuse the recipe."""
    from tympan.config import load_recipe

    path = tmp_path / "two_ops.yaml"
    path.write_text("base: simclr\naugment:\n  ops: [fade, time_shift]\n")
    recipe = load_recipe(path)
    assert recipe.augment.ops == ["fade", "time_shift"]
    pipe = ViewPipeline(recipe.augment)
    assert pipe.op_names == ("fade", "time_shift")
    v = pipe(torch.randn(4, 256, generator=_gen(19)), _gen(20))
    assert v.labels.shape == (4, 2)
