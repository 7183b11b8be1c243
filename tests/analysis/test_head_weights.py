"""Head weights (MT-SLVR, "Ablation Studies" / "Feature Selection"): the readout leans on the
head that carries the class information; per-episode reduction by hand; keys, JSON, markdown;
the shared readout agrees with few-shot accuracy; errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tympan.analysis.head_weights import (
    HeadWeights,
    format_head_weights,
    head_weights,
    task_weight_per_episode,
)
from tympan.errors import TympanError
from tympan.evaluation.fewshot import fit_readout, readout_accuracy, sample_episodes

SLICES = {"contrastive": (0, 16), "predictive": (16, 48)}


def _data(n_classes: int = 8, per_class: int = 20, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Only the predictive columns know the class; the contrastive columns are noise."""
    rng = np.random.default_rng(seed)
    labels = [f"c{c}" for c in range(n_classes) for _ in range(per_class)]
    y = np.repeat(np.arange(n_classes), per_class)
    noise_a = rng.standard_normal((len(y), 16))
    centres = 3.0 * rng.standard_normal((n_classes, 32))
    informative = centres[y] + rng.standard_normal((len(y), 32))
    return np.concatenate([noise_a, informative], axis=1).astype(np.float32), labels


def test_informative_head_gets_more_weight() -> None:
    emb, labels = _data()
    r = head_weights(emb, labels, SLICES, ways=5, shots=1, queries=5, episodes=60, seed=0)
    assert r.weights["predictive"] > 1.5 * r.weights["contrastive"], r.weights
    assert r.accuracy > 80.0
    # swapping which block is informative swaps the preference
    swapped = np.concatenate([emb[:, 16:], emb[:, :16]], axis=1)
    s = head_weights(swapped, labels, {"predictive": (0, 32), "contrastive": (32, 48)},
                     ways=5, shots=1, queries=5, episodes=60, seed=0)
    assert s.weights["predictive"] > 1.5 * s.weights["contrastive"]


def test_keys_ci_json_and_markdown() -> None:
    emb, labels = _data()
    r = head_weights(emb, labels, SLICES, ways=5, shots=2, queries=3, episodes=30, seed=1)
    assert set(r.weights) == set(r.ci95) == {"contrastive", "predictive"}
    assert all(v > 0 and np.isfinite(v) for v in r.ci95.values())
    assert r.task_slices == {"contrastive": [0, 16], "predictive": [16, 48]}
    assert HeadWeights.from_json(json.loads(json.dumps(r.to_json()))) == r

    md = format_head_weights({"ESC-50": r, "NSynth": r}).splitlines()
    assert md[0] == "| Dataset | contrastive | predictive |"
    assert md[2].startswith("| ESC-50 | ") and md[3].startswith("| NSynth | ")
    assert "±" in format_head_weights(r, show_ci=True)


def test_overlapping_slices_of_a_shared_model() -> None:
    emb, labels = _data()
    shared = {"contrastive": (0, 48), "predictive": (0, 48)}
    r = head_weights(emb, labels, shared, ways=5, shots=1, queries=5, episodes=20)
    assert r.weights["contrastive"] == r.weights["predictive"]


def test_per_episode_reduction_by_hand() -> None:
    w = torch.zeros(2, 4, 3)
    w[0, :2] = -2.0  # task a, episode 0: |W| = 2 everywhere
    w[1, 2:] = 1.0  # task b, episode 1
    out = task_weight_per_episode(w, {"a": (0, 2), "b": (2, 4)})
    np.testing.assert_allclose(out["a"], [2.0, 0.0])
    np.testing.assert_allclose(out["b"], [0.0, 1.0])


def test_shared_readout_matches_readout_accuracy() -> None:
    emb, labels = _data()
    eps = sample_episodes(labels, 5, 1, 5, 25, seed=2)
    readout = fit_readout(emb, eps)
    assert readout.weight.shape == (25, 48, 5) and readout.bias.shape == (25, 5)
    np.testing.assert_array_equal(readout.accuracy(), readout_accuracy(emb, eps))


def test_errors() -> None:
    emb, labels = _data()
    with pytest.raises(TympanError, match="do not fit embeddings of width 48"):
        head_weights(emb, labels, {"x": (40, 60)}, episodes=5)
    with pytest.raises(TympanError, match="labels for"):
        head_weights(emb, labels[:-1], SLICES, episodes=5)
    with pytest.raises(TympanError, match="no task slices"):
        head_weights(emb, labels, {}, episodes=5)
