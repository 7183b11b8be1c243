"""Feature selection: how much a few-shot linear readout relies on each task's columns.

MT-SLVR (``../shared/seeds/000_e1eab6133071efa6.txt``, "Ablation Studies" / "Feature
Selection") examines "average weight norms learned for each of the multi-task heads by our
downstream linear classifiers" per evaluation dataset, and finds that the preferred head (the
(P)redictive or the (C)ontrastive features) varies with the downstream task.

Here the classifiers are exactly those of few-shot evaluation
(:func:`tympan.evaluation.fewshot.fit_readout`): the same episodes
(:func:`~tympan.evaluation.fewshot.sample_episodes`, model-independent given the seed), the same
L2-normalised concatenated embeddings and the same batched multinomial logistic readout. For the
weights ``W [E, D, K]`` of ``E`` episodes, task ``t`` owning columns ``[lo, hi)`` scores

    w_t(e) = mean over classes k and columns j in [lo, hi) of |W[e, j, k]|

and the result is the mean of ``w_t(e)`` over episodes with its 95% CI
(:func:`tympan.evaluation.metrics.mean_ci95`). A mean per column (not a sum) keeps heads of
different widths comparable.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from tympan.errors import TympanError
from tympan.evaluation.fewshot import fit_readout, sample_episodes
from tympan.evaluation.metrics import mean_ci95

__all__ = ["HeadWeights", "format_head_weights", "head_weights", "task_weight_per_episode"]


@dataclass
class HeadWeights:
    """Mean absolute readout weight per task (``weights``) and its 95% CI over episodes
    (``ci95``), with the few-shot accuracy (percent, ± CI) of the same readouts and the setting.
    ``to_json()`` is plain JSON."""

    weights: dict[str, float]
    ci95: dict[str, float]
    accuracy: float
    accuracy_ci95: float
    ways: int
    shots: int
    queries: int
    episodes: int
    seed: int
    C: float
    task_slices: dict[str, list[int]]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> HeadWeights:
        return cls(**dict(data))


def _check_slices(
    task_slices: Mapping[str, Sequence[int]], width: int
) -> dict[str, tuple[int, int]]:
    if not task_slices:
        raise TympanError("no task slices given: name each task's [start, stop) columns")
    out = {}
    for task, sl in task_slices.items():
        try:
            lo, hi = (int(v) for v in sl)
        except (TypeError, ValueError):
            raise TympanError(f"task '{task}': slice must be [start, stop), got {sl!r}") from None
        if not 0 <= lo < hi <= width:
            raise TympanError(
                f"task '{task}': columns [{lo}, {hi}) do not fit embeddings of width {width}"
            )
        out[str(task)] = (lo, hi)
    return out


def task_weight_per_episode(
    weight: torch.Tensor | np.ndarray, task_slices: Mapping[str, Sequence[int]]
) -> dict[str, np.ndarray]:
    """``{task: [E]}``: mean over classes and the task's columns of ``|W|`` for ``W [E, D, K]``."""
    w = torch.as_tensor(weight).abs()
    if w.dim() != 3:
        raise TympanError(f"readout weights must be [E, D, K], got {tuple(w.shape)}")
    cols = _check_slices(task_slices, w.shape[1])
    return {t: w[:, lo:hi, :].mean(dim=(1, 2)).cpu().numpy() for t, (lo, hi) in cols.items()}


def head_weights(
    embeddings: np.ndarray,
    labels: Sequence[str],
    task_slices: Mapping[str, Sequence[int]],
    *,
    ways: int = 5,
    shots: int = 1,
    queries: int = 15,
    episodes: int = 600,
    seed: int = 0,
    C: float = 1.0,
    max_iter: int = 50,
    device: str | torch.device = "cpu",
) -> HeadWeights:
    """Mean absolute few-shot readout weight on each task's columns (module docstring;
    MT-SLVR, "Ablation Studies" / "Feature Selection").

    ``embeddings [N, D]``: every task's embedding concatenated (as written by ``tympan embed``);
    ``labels``: one per clip; ``task_slices``: ``{task: (start, stop)}`` columns of ``D``
    (slices may overlap). Episodes are those of ``tympan fewshot`` with the same settings.
    """
    emb = np.asarray(embeddings)
    if emb.ndim != 2 or emb.shape[0] == 0:
        raise TympanError(f"embeddings must be [N, D] with N >= 1, got shape {emb.shape}")
    if len(labels) != emb.shape[0]:
        raise TympanError(
            f"{len(labels)} labels for {emb.shape[0]} embeddings: give one label per clip"
        )
    if not np.isfinite(emb).all():
        raise TympanError("embeddings contain NaN or inf")
    cols = _check_slices(task_slices, emb.shape[1])
    eps = sample_episodes(labels, ways, shots, queries, episodes, seed)
    readout = fit_readout(emb, eps, C=C, max_iter=max_iter, device=device)
    per_episode = task_weight_per_episode(readout.weight, cols)
    weights, ci95 = {}, {}
    for task, values in per_episode.items():
        weights[task], ci95[task] = mean_ci95(values)
    acc, acc_ci = mean_ci95(readout.accuracy() * 100.0)
    return HeadWeights(
        weights=weights, ci95=ci95, accuracy=acc, accuracy_ci95=acc_ci, ways=ways, shots=shots,
        queries=queries, episodes=episodes, seed=seed, C=C,
        task_slices={t: [lo, hi] for t, (lo, hi) in cols.items()},
    )


def format_head_weights(
    results: HeadWeights | Mapping[str, HeadWeights], *, digits: int = 4, show_ci: bool = False
) -> str:
    """Markdown table like the seed's: one row per dataset, one column per head.

    ``results`` is ``{dataset name: HeadWeights}`` (or one result, shown as one unnamed row);
    the columns are the union of the heads, a missing cell is ``-``. ``show_ci`` appends
    ``± ci95``.
    """
    named = {"": results} if isinstance(results, HeadWeights) else dict(results)
    if not named:
        raise TympanError("no head-weight results to format")
    heads = list(dict.fromkeys(t for r in named.values() for t in r.weights))
    header = ["Dataset"] + heads
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, r in named.items():
        row = [name]
        for head in heads:
            if head not in r.weights:
                row.append("-")
                continue
            cell = f"{r.weights[head]:.{digits}f}"
            ci = r.ci95.get(head)
            if show_ci and ci is not None and math.isfinite(ci):
                cell += f" ± {ci:.{digits}f}"
            row.append(cell)
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)
