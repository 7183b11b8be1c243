"""Few-shot classification with a linear readout on frozen embeddings.

Protocol of MT-SLVR (``../shared/seeds/000_e1eab6133071efa6.txt``, "Few-Shot Audio
Classification" and "Evaluation Pipeline"), which follows MetaAudio: N-way K-shot episodes drawn
from classes never used in training; each clip is embedded by the frozen encoder (variable-length
clips as the mean of fixed-length segment embeddings); a linear classifier is fitted on the
support set and scored on the query set; accuracy is the mean over episodes with a 95% CI.

Two choices make the numbers comparable and fast:

* Episodes depend only on the seed and the split's clip list, never on the model, so every model
  is scored on exactly the same episodes.
* The readout is one multinomial logistic regression per episode, with scikit-learn's objective
  (``C * sum(cross-entropy) + ||W||^2 / 2``, intercept unpenalised), but fitted for all episodes
  at once as batched tensor code (Newton's method in the span of the support set, see
  :func:`fit_logistic_batched`); a test checks agreement with per-episode
  ``sklearn.linear_model.LogisticRegression``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tympan.data.manifest import read_manifest
from tympan.data.scan import ScanReport, scan_items
from tympan.errors import EpisodeError
from tympan.evaluation.features import embed_clips
from tympan.evaluation.metrics import mean_ci95


@dataclass(frozen=True)
class Episodes:
    """Indices into the split's clips. ``support [E, ways*shots]`` and ``query [E, ways*queries]``
    are grouped by way (class position 0..ways-1); ``classes [E, ways]`` are class indices."""

    support: np.ndarray
    query: np.ndarray
    classes: np.ndarray
    ways: int
    shots: int
    queries: int

    @property
    def support_labels(self) -> np.ndarray:
        return np.repeat(np.arange(self.ways), self.shots)

    @property
    def query_labels(self) -> np.ndarray:
        return np.repeat(np.arange(self.ways), self.queries)


def sample_episodes(
    labels: Sequence[str], ways: int, shots: int, queries: int, episodes: int, seed: int = 0
) -> Episodes:
    """Draw ``episodes`` N-way K-shot episodes from clips with ``labels`` (one per clip).

    Every draw is vectorised: classes per episode by ranking uniforms, clips per (episode, way)
    by ranking uniforms over that class's clips. Raises :class:`EpisodeError` naming the classes
    that have fewer than ``shots + queries`` clips.
    """
    if min(ways, shots, queries, episodes) < 1:
        raise EpisodeError("ways, shots, queries and episodes must all be >= 1")
    classes, inverse = np.unique(np.asarray(labels), return_inverse=True)
    if len(classes) < ways:
        raise EpisodeError(
            f"{ways}-way episodes need {ways} classes but the split has {len(classes)}; "
            f"lower --ways"
        )
    need = shots + queries
    counts = np.bincount(inverse, minlength=len(classes))
    small = [f"{classes[c]} ({counts[c]})" for c in np.flatnonzero(counts < need)]
    if small:
        raise EpisodeError(
            f"{shots}-shot episodes with {queries} queries need {need} clips per class, but "
            f"{len(small)} class(es) have fewer: {', '.join(small[:10])}; lower --shots/--queries "
            f"or add clips"
        )
    rng = np.random.default_rng(seed)
    cls = np.argsort(rng.random((episodes, len(classes))), axis=1)[:, :ways]  # [E, ways]
    # members[c] lists the clip indices of class c, padded with -1 to the largest class
    order = np.argsort(inverse, kind="stable")
    members = np.full((len(classes), counts.max()), -1)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(len(order)) - np.repeat(starts, counts)
    members[inverse[order], rank] = order
    keys = rng.random((episodes, ways, counts.max()))
    keys[members[cls] < 0] = np.inf  # padding never gets picked
    pick = np.argsort(keys, axis=2)[:, :, :need]  # [E, ways, need]
    chosen = np.take_along_axis(members[cls], pick, axis=2)
    return Episodes(
        support=chosen[:, :, :shots].reshape(episodes, ways * shots),
        query=chosen[:, :, shots:].reshape(episodes, ways * queries),
        classes=cls, ways=ways, shots=shots, queries=queries,
    )


def fit_logistic_batched(
    x: torch.Tensor, y: torch.Tensor, n_classes: int, C: float = 1.0, max_iter: int = 50,
    tol: float = 1e-6, chunk: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression for ``E`` independent problems at once.

    ``x [E, S, D]`` features, ``y [E, S]`` integer labels. Minimises, for each episode,
    ``f(W, b) = C * sum_i CE(W^T x_i + b, y_i) + ||W||^2 / 2`` (scikit-learn's objective).
    Returns ``W [E, D, K]``, ``b [E, K]``.

    Why it is fast: the minimiser lies in the span of the support features (the representer
    theorem; only ``W`` is penalised), so ``W = X^T A`` with ``A [S, K]`` and the logits are
    ``G A + b`` with the Gram matrix ``G = X X^T``. A few-shot support set is small (``S*K + K``
    unknowns, 30 for 5-way 1-shot) whatever ``D`` is, so each episode's exact Newton step is a
    small dense solve; all episodes are solved together with batched ``linalg`` calls and a
    batched backtracking (Armijo) line search. Newton converges in a handful of iterations.
    """
    x = x.double()  # tiny problems: fp64 costs little and matches scikit-learn's minimiser
    ws, bs = [], []
    for start in range(0, x.shape[0], chunk):
        xc, yc = x[start : start + chunk], y[start : start + chunk]
        a, b = _newton_dual(xc @ xc.transpose(1, 2), yc, n_classes, C, max_iter, tol)
        ws.append(xc.transpose(1, 2) @ a)
        bs.append(b)
    return torch.cat(ws), torch.cat(bs)


def _newton_dual(
    gram: torch.Tensor, y: torch.Tensor, k: int, C: float, max_iter: int, tol: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Newton's method on ``f(A, b) = C*sum CE(G A + b) + tr(A^T G A)/2`` for a batch of Grams."""
    e, s, _ = gram.shape
    onehot = F.one_hot(y, k).to(gram.dtype)  # [E, S, K]
    a = gram.new_zeros(e, s, k)
    b = gram.new_zeros(e, k)
    sk = s * k
    # The Hessian is assembled in place in one buffer (no concatenations or full-size sums:
    # building it is memory-bound, more so than the solve): [[H_aa, H_ab], [H_ab^T, H_bb]].
    hess = gram.new_empty(e, sk + k, sk + k)
    # the penalty's Hessian G (x) I_K, for A flattened row-major as (sample, class), lies on
    # the entries ((i, c), (j, c)) of H_aa: the diagonal over the two class axes
    h_aa = hess[:, :sk, :sk].view(e, s, k, s, k)
    penalty = h_aa.diagonal(dim1=2, dim2=4)  # [E, S, S, K]
    steps = 0.5 ** torch.arange(12, dtype=gram.dtype, device=gram.device)  # 1, 1/2, ... 1/2048

    def objective(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # [..., E]
        z = gram @ a + b.unsqueeze(-2)
        ce = torch.logsumexp(z, dim=-1) - (z * onehot).sum(-1)
        return C * ce.sum(-1) + 0.5 * (a * (gram @ a)).sum((-2, -1))

    f = objective(a, b)
    for _ in range(max_iter):
        z = gram @ a + b.unsqueeze(1)
        p = torch.softmax(z, dim=2)
        r = C * (p - onehot)
        grad = torch.cat([(gram @ (r + a)).reshape(e, s * k), r.sum(1)], dim=1)
        if grad.abs().max() < tol:
            break
        hi = C * (torch.diag_embed(p) - p.unsqueeze(3) * p.unsqueeze(2))  # [E, S, K, K]
        gh = torch.einsum("eij,eikm->ejkm", gram, hi)  # [E, S, K, K]: sum_i G_ij H_i
        h_aa.copy_(torch.einsum("eij,eil,eikm->ejklm", gram, gram, hi))  # no reshape copy
        penalty += gram.unsqueeze(3)
        hess[:, :sk, sk:] = gh.reshape(e, sk, k)
        hess[:, sk:, :sk] = gh.reshape(e, sk, k).transpose(1, 2)
        hess[:, sk:, sk:] = hi.sum(1)
        # ridge: b + c*1 leaves the objective unchanged, so the Hessian is singular along it
        hess.diagonal(dim1=1, dim2=2).add_(1e-9)
        delta = torch.linalg.solve(hess, grad.unsqueeze(2)).squeeze(2)
        da, db = delta[:, : s * k].reshape(e, s, k), delta[:, s * k :]
        # batched Armijo backtracking: every candidate step for every episode in one call
        cand = objective(
            a - steps.view(-1, 1, 1, 1) * da, b - steps.view(-1, 1, 1) * db
        )  # [n_steps, E]
        decrease = (grad * delta).sum(1)
        ok = cand <= f - 1e-4 * steps.view(-1, 1) * decrease
        first = torch.where(ok.any(0), ok.float().argmax(0), torch.full_like(f, -1).long())
        t = torch.where(first >= 0, steps[first.clamp_min(0)], torch.zeros_like(f))
        a = a - t.view(-1, 1, 1) * da
        b = b - t.view(-1, 1) * db
        f = objective(a, b)
    return a, b


@dataclass
class Readout:
    """The batched linear readout of a set of episodes, fitted on their support sets.

    ``weight [E, D, K]`` and ``bias [E, K]`` (float64) are each episode's classifier on the
    L2-normalised embeddings; ``query [E, Q, D]`` and ``query_labels [E, Q]`` are the episodes'
    query sets in that same space. Shared by :func:`readout_accuracy` and the head-weight
    analysis (:mod:`tympan.analysis.head_weights`), so both read the same classifiers.
    """

    weight: torch.Tensor
    bias: torch.Tensor
    query: torch.Tensor
    query_labels: torch.Tensor

    def accuracy(self) -> np.ndarray:
        """Per-episode query accuracy ``[E]``."""
        pred = torch.baddbmm(self.bias.unsqueeze(1), self.query, self.weight).argmax(dim=2)
        return (pred == self.query_labels).double().mean(dim=1).cpu().numpy()


def fit_readout(
    embeddings: np.ndarray, episodes: Episodes, C: float = 1.0, max_iter: int = 50,
    device: str | torch.device = "cpu",
) -> Readout:
    """L2-normalise ``embeddings [N, D]``, gather each episode's support and query sets and fit
    every episode's logistic readout at once (:func:`fit_logistic_batched`)."""
    emb = F.normalize(torch.as_tensor(embeddings, dtype=torch.float64, device=device), dim=1)
    xs, xq = emb[torch.as_tensor(episodes.support)], emb[torch.as_tensor(episodes.query)]
    e = xs.shape[0]
    ys = torch.as_tensor(episodes.support_labels, device=device).expand(e, -1)
    yq = torch.as_tensor(episodes.query_labels, device=device).expand(e, -1)
    w, b = fit_logistic_batched(xs, ys, episodes.ways, C=C, max_iter=max_iter)
    return Readout(weight=w, bias=b, query=xq, query_labels=yq)


def readout_accuracy(
    embeddings: np.ndarray, episodes: Episodes, C: float = 1.0, max_iter: int = 50,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Per-episode query accuracy of the batched linear readout on L2-normalised embeddings."""
    return fit_readout(embeddings, episodes, C=C, max_iter=max_iter, device=device).accuracy()


@dataclass
class FewShotResult:
    """The JSON record of ``tympan fewshot`` (accuracy and ci95 in percent)."""

    model: str
    accuracy: float
    ci95: float
    ways: int
    shots: int
    queries: int
    episodes: int
    skipped: list[dict[str, str]]
    split: str | None = None
    task: str | None = None
    seed: int = 0

    def to_json(self) -> dict:
        return asdict(self)


def evaluate_fewshot(
    embeddings: np.ndarray, labels: Sequence[str], *, ways: int, shots: int, queries: int,
    episodes: int, seed: int = 0, C: float = 1.0, max_iter: int = 50,
) -> tuple[float, float, np.ndarray]:
    """Accuracy (percent), its 95% CI half-width and the per-episode accuracies."""
    eps = sample_episodes(labels, ways, shots, queries, episodes, seed)
    acc = readout_accuracy(embeddings, eps, C=C, max_iter=max_iter)
    mean, ci = mean_ci95(acc * 100.0)
    return mean, ci, acc


class FewShotBench:
    """One split's clips, decoded once, scored for any number of models and settings.

    Every model sees the same clips (the same ``--skip-bad`` outcome) and, per setting, the same
    episodes, so differences between models are differences between representations.
    """

    def __init__(
        self, data: str | Path, split: str | None = "test", *, skip_bad: bool = False,
        progress: bool = True,
    ) -> None:
        manifest = read_manifest(data, check_files=not skip_bad)
        self.split = split
        self.manifest = manifest.select(split) if split else manifest
        if self.manifest.is_multilabel:
            raise EpisodeError(
                f"{data}: split '{split}' is multi-label; few-shot episodes need one label per "
                f"clip (use 'tympan probe --task tagging' for multi-label data)"
            )
        self.skip_bad = skip_bad
        self.progress = progress
        self._audio: dict[int, ScanReport] = {}

    def clips(self, sample_rate: int) -> ScanReport:
        """The split's usable clips at ``sample_rate`` (decoded on first use)."""
        if sample_rate not in self._audio:
            self._audio[sample_rate] = scan_items(
                self.manifest.items, sample_rate, skip_bad=self.skip_bad, keep_audio=True,
                progress=self.progress, desc=f"loading {self.split or 'all'} clips",
            )
        return self._audio[sample_rate]

    def embed(
        self, model: nn.Module, *, task: str | None = None, segment_seconds: float | None = None,
        batch_size: int = 64, device: str | torch.device | None = None,
    ) -> np.ndarray:
        report = self.clips(model.sample_rate)
        seconds = segment_seconds or model.recipe.fewshot.segment_seconds
        return embed_clips(
            model, report.audio, seconds, task=task, batch_size=batch_size, device=device,
            progress=self.progress,
        )

    def run(
        self, model_name: str, embeddings: np.ndarray, *, sample_rate: int, ways: int, shots: int,
        queries: int, episodes: int, seed: int = 0, C: float = 1.0, max_iter: int = 50,
        task: str | None = None,
    ) -> FewShotResult:
        """Score ``embeddings`` (from :meth:`embed` of a model at ``sample_rate``)."""
        report = self.clips(sample_rate)
        labels = [item.label for item in report.items]
        acc, ci, _ = evaluate_fewshot(
            embeddings, labels, ways=ways, shots=shots, queries=queries, episodes=episodes,
            seed=seed, C=C, max_iter=max_iter,
        )
        return FewShotResult(
            model=model_name, accuracy=round(acc, 3), ci95=round(ci, 3), ways=ways, shots=shots,
            queries=queries, episodes=episodes, skipped=report.skipped, split=self.split,
            task=task, seed=seed,
        )
