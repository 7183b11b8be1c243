"""Stage 2 of AudioConFit (``../shared/seeds/002_5040cf44179b95f4.txt``, §2.2): the grid over
learning rate and batch size chosen on validation, batched heads, nearest-centroid readout,
and the frozen encoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tympan.config import load_recipe
from tympan.errors import ConfigError, TympanError
from tympan.finetune.backbones import load_backbone
from tympan.finetune.linear import (
    GridPoint,
    embed_frozen,
    fit_linear_grid,
    nearest_centroid_accuracy,
    select_grid_point,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def ordered_clusters(n_per: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Three 1-D classes at -1, 0.2 and 1.2 (class 1 and 2 share the sign of their mean)."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), n_per)
    x = np.array([-1.0, 0.2, 1.2])[y] + 0.1 * rng.standard_normal(len(y))
    return x[:, None], y


def test_grid_picks_the_best_validation_config() -> None:
    # One full-batch Adam step from zero moves every weight by ±lr (the sign of its gradient):
    # classes 1 and 2 get identical weights and biases, so class 2 is never predicted (val
    # accuracy 2/3). Minibatches of 8 take 19 steps and separate the three classes.
    x, y = ordered_clusters(50, 0)
    xv, yv = ordered_clusters(20, 1)
    head = fit_linear_grid(x, y, xv, yv, 3, lrs=(0.1, 0.3), batch_sizes=(150, 8), epochs=1, seed=0)
    table = {(p.lr, p.batch_size): p.val_accuracy for p in head.grid}
    assert len(table) == 4
    assert table[(0.1, 150)] == pytest.approx(2 / 3) and table[(0.3, 150)] == pytest.approx(2 / 3)
    assert head.batch_size == 8
    assert head.val_accuracy == max(table.values()) == table[(head.lr, head.batch_size)]
    # the returned head is the chosen one: its accuracy on val is the reported one
    assert head.accuracy(xv, yv) == pytest.approx(head.val_accuracy)
    assert head.weight.shape == (1, 3) and head.num_parameters == 6


def test_batched_heads_equal_heads_trained_alone() -> None:
    x, y = ordered_clusters(30, 2)
    xv, yv = ordered_clusters(10, 3)
    both = fit_linear_grid(x, y, xv, yv, 3, lrs=(0.01, 0.05), batch_sizes=(8,), epochs=3, seed=4)
    alone = fit_linear_grid(x, y, xv, yv, 3, lrs=(0.05,), batch_sizes=(8,), epochs=3, seed=4)
    p, q = both.grid[1], alone.grid[0]
    assert p.val_curve == pytest.approx(q.val_curve)
    assert p.val_loss == pytest.approx(q.val_loss, rel=1e-5)
    assert len(p.val_curve) == 3 and 1 <= p.best_epoch <= 3


def test_select_grid_point_ties_break_on_loss_then_order() -> None:
    pts = [GridPoint(1e-3, 16, 0.8, 0.5, 3), GridPoint(1e-2, 16, 0.9, 0.7, 2),
           GridPoint(1e-3, 32, 0.9, 0.4, 5), GridPoint(1e-2, 32, 0.9, 0.4, 1)]
    assert select_grid_point(pts) == 2
    with pytest.raises(TympanError):
        select_grid_point([])


def test_grid_arguments_are_checked() -> None:
    x, y = ordered_clusters(5, 0)
    with pytest.raises(ConfigError, match="linear_lrs"):
        fit_linear_grid(x, y, x, y, 3, lrs=(), batch_sizes=(4,), epochs=1)
    with pytest.raises(ConfigError, match="linear_batch_sizes"):
        fit_linear_grid(x, y, x, y, 3, lrs=(0.1,), batch_sizes=(0,), epochs=1)


def test_nearest_centroid_accuracy() -> None:
    train = np.array([[1.0, 0.0], [2.0, 0.1], [0.0, 1.0], [0.1, 3.0]])
    labels = np.array([0, 0, 1, 1])
    val = np.array([[5.0, 0.2], [0.3, 1.0], [1.0, 0.9]])
    assert nearest_centroid_accuracy(train, labels, val, np.array([0, 1, 0])) == pytest.approx(1.0)
    assert nearest_centroid_accuracy(train, labels, val, np.array([1, 1, 1])) == pytest.approx(1 / 3)
    # a class without training clips is never predicted
    assert nearest_centroid_accuracy(train, labels, val, np.array([2, 2, 2])) == 0.0


def test_embed_frozen_leaves_the_encoder_untouched() -> None:
    recipe = load_recipe("demo", {"model.width": 4, "frontend.n_mels": 16, "frontend.n_fft": 256,
                                  "frontend.hop_length": 128})
    enc = load_backbone("random", recipe=recipe, seed=0).fresh()  # train mode, trainable
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    audio = [np.random.default_rng(i).standard_normal(4000 + 500 * i).astype(np.float32) for i in range(3)]
    emb = embed_frozen(enc, audio, 0.25)
    assert emb.shape == (3, enc.embedding_dim)
    assert not any(p.requires_grad for p in enc.parameters()) and not enc.training
    after = enc.state_dict()
    # batch-norm running statistics included: nothing moved
    assert all(torch.equal(before[k], after[k]) for k in before)
