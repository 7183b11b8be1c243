"""Speaker verification with cosine scoring: trials, scores, equal error rate and its CI.

The pretext-task selection study (``../shared/seeds/004_f3e19d7efff003e6.txt``, section V,
speaker recognition on VoxCeleb) scores representations on speaker verification by the **equal
error rate** (EER): each trial pairs two utterances, the score is the cosine similarity of
their embeddings, and the EER is the error rate at the threshold where false acceptances and
false rejections are equally frequent. Here:

* :func:`make_trials` draws balanced target (same speaker) and non-target trials among clips,
  never pairing a clip with itself, vectorised (no loop over clips or speakers);
* :func:`cosine_scores` scores them;
* :func:`equal_error_rate` reads the EER off the empirical ROC (``sklearn.metrics.roc_curve``),
  interpolating linearly between the two ROC points where ``FNR - FPR`` changes sign;
* :func:`verification_eer` does all three and adds an uncertainty.

Uncertainty: over **speakers**, not trials. Trials are far from independent: every clip
appears in many trials and every speaker in very many, so resampling trials treats thousands
of correlated scores as independent evidence and gives intervals that are much too narrow;
the speakers are the independent units (a new corpus draws new speakers). Each draw keeps the
trials both of whose clips belong to a random half of the speakers, drawn without replacement
(:func:`tympan.evaluation.probes.bootstrap_indices`, the toolkit's bootstrap protocol).
Half-sampling without replacement has, for smooth statistics, the same variance as the
full-sample estimate (variance factor ``(n - m) / m = 1`` at ``m = n / 2``), so the 2.5th and
97.5th percentiles of the draws form a 95% interval for the EER (reported with their standard
deviation). ``unit="trials"`` resamples trials instead, for comparison. With fewer than four
speakers a half cannot hold two speakers and no interval is given.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from sklearn.metrics import roc_curve

from tympan.errors import ConfigError, TympanError
from tympan.evaluation.probes import bootstrap_indices

__all__ = [
    "VerificationResult",
    "cosine_scores",
    "equal_error_rate",
    "make_trials",
    "verification_eer",
]

UNITS = ("speakers", "trials")
# All pairs are enumerated below this many; above, non-target pairs are drawn by rejection.
_ENUMERATE_MAX_PAIRS = 4_000_000
_SCORE_CHUNK = 1 << 18


def _speaker_codes(speakers: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """``(names [S], codes [N])``: every clip's speaker as an index into the sorted names."""
    values = list(speakers)
    missing = [i for i, s in enumerate(values) if s is None or (isinstance(s, str) and not s)]
    if missing:
        raise TympanError(
            f"verification: clip {missing[0]} has no speaker ({len(missing)} clip(s) in all); "
            "give every clip a speaker (the manifest's 'speaker' column) or leave it out"
        )
    names, codes = np.unique(np.asarray([str(s) for s in values]), return_inverse=True)
    return names, codes.astype(np.int64)


def _check_speakers(names: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Clip counts per speaker; :class:`TympanError` for a speaker with one clip or < 2 speakers."""
    counts = np.bincount(codes, minlength=len(names))
    lonely = names[counts < 2]
    if lonely.size:
        more = f" ({lonely.size} such speakers)" if lonely.size > 1 else ""
        raise TympanError(
            f"verification: speaker '{lonely[0]}' has only 1 clip{more}; target trials need at "
            "least 2 clips per speaker: add clips or leave that speaker out"
        )
    if len(names) < 2:
        raise TympanError(
            f"verification: every clip is by speaker '{names[0] if len(names) else '?'}'; "
            "non-target trials need at least 2 speakers"
        )
    return counts


def _target_pairs(codes: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every same-speaker pair ``i < j`` of clip indices, vectorised over all speakers."""
    order = np.argsort(codes, kind="stable")  # clips grouped by speaker, in clip order
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])  # group start in `order`
    rank = np.arange(len(codes)) - np.repeat(first, counts)  # position within the group
    after = np.repeat(counts, counts) - 1 - rank  # later clips of the same speaker
    a = np.repeat(np.arange(len(codes)), after)  # position in `order` of the first clip
    block = np.repeat(np.cumsum(after) - after, after)
    b = a + 1 + np.arange(len(a)) - block
    i, j = order[a], order[b]
    return np.minimum(i, j), np.maximum(i, j)


def _nontarget_pairs(
    codes: np.ndarray, n_wanted: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``n_wanted`` distinct different-speaker pairs ``i < j`` drawn uniformly without
    replacement: from the full list when it is small, else by rejection sampling."""
    n = len(codes)
    total_pairs = n * (n - 1) // 2
    if total_pairs <= _ENUMERATE_MAX_PAIRS:
        i, j = np.triu_indices(n, 1)
        keep = codes[i] != codes[j]
        i, j = i[keep], j[keep]
        pick = np.sort(rng.choice(len(i), n_wanted, replace=False))
        return i[pick], j[pick]
    found = np.zeros(0, dtype=np.int64)
    while len(found) < n_wanted:  # non-targets dominate large sets: few rounds
        m = 2 * (n_wanted - len(found)) + 64
        a, b = rng.integers(0, n, m), rng.integers(0, n, m)
        ok = codes[a] != codes[b]
        key = np.minimum(a, b)[ok] * n + np.maximum(a, b)[ok]
        found = np.unique(np.concatenate([found, key]))  # sorted, distinct
    # the sorted union is not a uniform subset; a random choice of it is
    key = np.sort(rng.choice(found, n_wanted, replace=False))
    return key // n, key % n


def make_trials(
    speakers: Sequence[Any], *, n_trials: int | None = None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Balanced verification trials among clips.

    Args:
        speakers: the speaker of every clip (``N`` entries, any hashable spelled as a string).
        n_trials: total trials, half target (same speaker) and half non-target, each half drawn
            without replacement. ``None``: **every** target pair and as many non-target pairs
            (all of them if there are fewer).
        seed: seeds the draws; the same seed gives the same trials.

    Returns:
        ``(i, j, target)``: clip indices ``[M]`` with ``i < j`` (a clip is never paired with
        itself and no pair repeats), and ``target [M]`` (bool), sorted by ``(i, j)``.

    Raises:
        TympanError: a clip without speaker, a speaker with a single clip (named), fewer than
            two speakers, or more trials asked for than the clips can form.
    """
    names, codes = _speaker_codes(speakers)
    counts = _check_speakers(names, codes)
    n_targets = int(np.sum(counts * (counts - 1) // 2))
    n = len(codes)
    n_nontargets = n * (n - 1) // 2 - n_targets
    rng = np.random.default_rng(seed)
    ti, tj = _target_pairs(codes, counts)
    if n_trials is None:
        want_t, want_n = n_targets, min(n_targets, n_nontargets)
    else:
        if isinstance(n_trials, bool) or not isinstance(n_trials, (int, np.integer)) \
                or n_trials < 2:
            raise ConfigError(
                f"verification n_trials={n_trials!r}: give a whole number >= 2 (half target, "
                "half non-target) or leave it out for every target pair"
            )
        want_t = int(n_trials) // 2
        want_n = int(n_trials) - want_t
        if want_t > n_targets or want_n > n_nontargets:
            most = 2 * min(n_targets, n_nontargets)
            raise ConfigError(
                f"verification n_trials={n_trials}: these {n} clips of {len(names)} speakers "
                f"form only {n_targets} target and {n_nontargets} non-target pairs; ask for at "
                f"most {most} trials, or leave n_trials out"
            )
        pick = np.sort(rng.choice(n_targets, want_t, replace=False))
        ti, tj = ti[pick], tj[pick]
    ni, nj = _nontarget_pairs(codes, want_n, rng)
    i = np.concatenate([ti, ni])
    j = np.concatenate([tj, nj])
    target = np.concatenate([np.ones(len(ti), bool), np.zeros(len(ni), bool)])
    order = np.lexsort((j, i))
    return i[order], j[order], target[order]


def _check_embeddings(emb: Any, n: int | None = None) -> np.ndarray:
    x = np.asarray(emb, dtype=np.float64)
    if x.ndim != 2:
        raise TympanError(
            f"verification: embeddings must be a 2-D array [clips, dims], got shape {x.shape}"
        )
    if n is not None and x.shape[0] != n:
        raise TympanError(
            f"verification: {x.shape[0]} embeddings but {n} speakers; give one speaker per clip"
        )
    bad = np.flatnonzero(~np.all(np.isfinite(x), axis=1))
    if bad.size:
        raise TympanError(
            f"verification: embedding row {bad[0]} is not finite (NaN or inf; {bad.size} row(s) "
            "in all); the encoder diverged or the audio is broken: check the model and the clip"
        )
    return x


def cosine_scores(emb: Any, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Cosine similarity ``<e_i, e_j> / (|e_i| |e_j|)`` of every trial ``[M]`` (float64).

    A zero embedding scores 0 against everything. Computed in chunks of trials, so memory stays
    ``O(chunk * D)`` however many trials there are."""
    x = _check_embeddings(emb)
    i, j = np.asarray(i, dtype=np.int64), np.asarray(j, dtype=np.int64)
    if i.shape != j.shape or i.ndim != 1:
        raise TympanError(f"verification: trial indices i {i.shape} and j {j.shape} differ")
    if i.size and (min(i.min(), j.min()) < 0 or max(i.max(), j.max()) >= len(x)):
        raise TympanError(f"verification: trial indices out of range for {len(x)} embeddings")
    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    out = np.empty(len(i))
    for start in range(0, len(i), _SCORE_CHUNK):
        a, b = i[start : start + _SCORE_CHUNK], j[start : start + _SCORE_CHUNK]
        out[start : start + len(a)] = np.einsum("nd,nd->n", unit[a], unit[b])
    return out


def equal_error_rate(scores: Any, targets: Any) -> tuple[float, float]:
    """``(eer, threshold)`` of scores where higher means "same speaker".

    From the empirical ROC (``sklearn.metrics.roc_curve``, every threshold kept): with
    ``FNR = 1 - TPR``, find consecutive points ``k, k+1`` where ``FNR - FPR`` goes from ``>= 0``
    to ``<= 0`` and interpolate linearly to where they are equal; the threshold is interpolated
    the same way (accept when ``score >= threshold``). Perfectly separated scores give 0 (at the
    lowest target score), identical score distributions 0.5.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    t = np.asarray(targets).ravel()
    if s.shape != t.shape:
        raise TympanError(f"EER: {s.size} scores but {t.size} target flags")
    if not np.all(np.isfinite(s)):
        raise TympanError("EER: scores contain NaN or inf; check the embeddings")
    t = t.astype(bool)
    if t.all() or not t.any():
        raise TympanError(
            "EER: needs both target and non-target trials (got "
            f"{int(t.sum())} target, {int((~t).sum())} non-target)"
        )
    fpr, tpr, thr = roc_curve(t, s, drop_intermediate=False)
    n_pos, n_neg = int(t.sum()), int((~t).sum())
    # FNR - FPR in whole counts (scaled by n_pos * n_neg), so that a crossing exactly at a ROC
    # point is found exactly: decreasing from n_pos * n_neg to -n_pos * n_neg
    tps, fps = np.rint(tpr * n_pos).astype(np.int64), np.rint(fpr * n_neg).astype(np.int64)
    d = (n_pos - tps) * n_neg - fps * n_pos
    k = int(np.flatnonzero(d[1:] <= 0.0)[0])  # first segment [k, k + 1] that reaches 0
    alpha = float(d[k] / (d[k] - d[k + 1])) if d[k] != d[k + 1] else 0.0
    eer = float(fpr[k] + alpha * (fpr[k + 1] - fpr[k]))
    lo, hi = thr[k], thr[k + 1]
    threshold = float(hi if not np.isfinite(lo) else lo + alpha * (hi - lo))
    return eer, threshold


@dataclass(frozen=True)
class VerificationResult:
    """The EER of one set of embeddings on one set of trials, with its 95% interval.

    ``ci_low``/``ci_high`` are the 2.5th/97.5th percentiles and ``std`` the standard deviation
    of the EER over ``draws`` half-samples of ``ci_unit`` (module docstring); all NaN when no
    interval could be formed (fewer than four speakers, or ``draws=0``)."""

    eer: float
    threshold: float
    n_target: int
    n_nontarget: int
    n_clips: int
    n_speakers: int
    ci_low: float
    ci_high: float
    std: float
    ci_unit: str
    draws: int
    seed: int

    def to_json(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v)
                for k, v in asdict(self).items()}

    def summary(self) -> str:
        """One human line: EER in percent with its interval, threshold and trial counts."""
        ci = (f" [{100 * self.ci_low:.2f}, {100 * self.ci_high:.2f}] (95%, {self.draws} "
              f"half-samples of {self.ci_unit})" if not math.isnan(self.ci_low) else
              " (no interval: draws=0, or fewer than 4 speakers to halve)")
        return (f"EER {100 * self.eer:.2f}%{ci}, cosine threshold {self.threshold:.4f}; "
                f"{self.n_target} target / {self.n_nontarget} non-target trials, "
                f"{self.n_clips} clips of {self.n_speakers} speakers")


def verification_eer(
    emb: Any, speakers: Sequence[Any], *, n_trials: int | None = None, seed: int = 0,
    draws: int = 200, unit: str = "speakers", centre: Any = None,
) -> VerificationResult:
    """Speaker-verification EER of embeddings ``[N, D]`` under cosine scoring.

    ``centre``: a mean embedding ``[D]`` subtracted from every embedding before scoring (mean
    normalisation, standard in speaker verification: features that are positive everywhere,
    e.g. after ReLUs, otherwise give every pair a cosine near 1). Estimate it on data disjoint
    from the trials (e.g. the training clips); ``None`` scores the raw embeddings.

    Trials come from :func:`make_trials` (``n_trials``, ``seed``); the interval from ``draws``
    half-samples of speakers (``unit="speakers"``, the default: see the module docstring for
    why) or of trials (``unit="trials"``); ``draws=0`` skips it.

    Raises:
        TympanError: NaN/inf embeddings, a speaker with a single clip, fewer than 2 speakers,
            mismatched lengths, or a bad ``unit``/``draws``.
    """
    if unit not in UNITS:
        raise ConfigError(f"verification unit={unit!r}: choose one of {', '.join(UNITS)}")
    if isinstance(draws, bool) or not isinstance(draws, (int, np.integer)) or draws < 0:
        raise ConfigError(f"verification draws={draws!r}: give a whole number >= 0")
    values = list(speakers)
    x = _check_embeddings(emb, len(values))
    if centre is not None:
        mu = np.asarray(centre, dtype=x.dtype).reshape(-1)
        if mu.shape[0] != x.shape[1] or not np.isfinite(mu).all():
            raise TympanError(f"verification centre: expected {x.shape[1]} finite values, "
                              f"got shape {tuple(np.shape(centre))}")
        x = x - mu
    i, j, target = make_trials(values, n_trials=n_trials, seed=seed)
    scores = cosine_scores(x, i, j)
    eer, threshold = equal_error_rate(scores, target)
    names, codes = _speaker_codes(values)

    per_draw = np.zeros(0)
    if draws and (unit == "trials" or len(names) >= 4):
        n_units = len(names) if unit == "speakers" else len(i)
        halves = bootstrap_indices(n_units, draws, 0.5, seed)  # [draws, n_units / 2]
        spk_i, spk_j = codes[i], codes[j]
        found = []
        for half in halves:  # one ROC per draw: a loop over draws, never over clips
            chosen = np.zeros(n_units, bool)
            chosen[half] = True
            m = chosen[spk_i] & chosen[spk_j] if unit == "speakers" else chosen
            if 0 < target[m].sum() < m.sum():  # a draw with one class only is skipped
                found.append(equal_error_rate(scores[m], target[m])[0])
        per_draw = np.array(found)
    if per_draw.size:
        low, high = (float(v) for v in np.percentile(per_draw, [2.5, 97.5]))
        std = float(per_draw.std())
    else:
        low = high = std = math.nan
    return VerificationResult(
        eer=eer, threshold=threshold, n_target=int(target.sum()),
        n_nontarget=int((~target).sum()), n_clips=len(values), n_speakers=len(names),
        ci_low=low, ci_high=high, std=std, ci_unit=unit, draws=int(per_draw.size), seed=seed,
    )
