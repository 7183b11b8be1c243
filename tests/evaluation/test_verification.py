"""Speaker verification (tympan.evaluation.verification): trials, cosine scores, EER and CI."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from tympan.errors import ConfigError, TympanError
from tympan.evaluation import verification
from tympan.evaluation.verification import (
    cosine_scores,
    equal_error_rate,
    make_trials,
    verification_eer,
)


# -- equal error rate ---------------------------------------------------------------------------


def test_eer_hand_computed_cases() -> None:
    # perfectly separated: no error at the lowest target score
    assert equal_error_rate([0.9, 0.8, 0.3, 0.2], [1, 1, 0, 0]) == (0.0, 0.8)
    # perfectly reversed: every threshold errs on one side or the other; FNR = FPR at 1
    assert equal_error_rate([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0])[0] == pytest.approx(1.0)
    # identical scores: the ROC is the diagonal, EER 1/2 at that score
    assert equal_error_rate([0.5] * 4, [1, 1, 0, 0]) == (0.5, 0.5)
    # targets 0.9, 0.8, 0.3; non-targets 0.7, 0.2, 0.1: accepting >= 0.7 rejects one target
    # (0.3) and accepts one non-target (0.7): FNR = FPR = 1/3 exactly at a ROC point
    eer, thr = equal_error_rate([0.9, 0.8, 0.3, 0.7, 0.2, 0.1], [1, 1, 1, 0, 0, 0])
    assert eer == pytest.approx(1 / 3) and thr == pytest.approx(0.7)
    # a crossing between ROC points: targets 3, 1 and non-target 2. At threshold 3 FNR = 1/2,
    # FPR = 0; at 2 FNR = 1/2, FPR = 1: FNR - FPR goes 1/2 -> -1/2, so halfway: EER 1/2 at 2.5
    eer, thr = equal_error_rate([3.0, 1.0, 2.0], [True, True, False])
    assert eer == pytest.approx(0.5) and thr == pytest.approx(2.5)


def test_eer_on_random_scores() -> None:
    rng = np.random.default_rng(0)
    # identical distributions: about 1/2
    s = rng.standard_normal(4000)
    t = np.arange(4000) % 2 == 0
    assert abs(equal_error_rate(s, t)[0] - 0.5) < 0.04
    # two unit-variance Gaussians 2 apart: EER = Phi(-1) = 0.1587; at the threshold FNR ~ FPR
    s = np.where(t, 1.0, -1.0) + rng.standard_normal(4000)
    eer, thr = equal_error_rate(s, t)
    assert abs(eer - 0.1587) < 0.02 and abs(thr) < 0.1
    fnr, fpr = np.mean(s[t] < thr), np.mean(s[~t] >= thr)
    assert abs(fnr - eer) < 2e-3 and abs(fpr - eer) < 2e-3
    # a monotone transform of the scores leaves the EER alone
    assert equal_error_rate(np.exp(s), t)[0] == pytest.approx(eer)


def test_eer_needs_both_classes_and_finite_scores() -> None:
    with pytest.raises(TympanError, match="both target and non-target"):
        equal_error_rate([0.1, 0.2], [1, 1])
    with pytest.raises(TympanError, match="NaN"):
        equal_error_rate([0.1, np.nan], [1, 0])


# -- trials -------------------------------------------------------------------------------------


def _speakers(counts: dict[str, int], seed: int = 0) -> list[str]:
    """Clips of the given speakers in a shuffled order."""
    names = [s for s, c in counts.items() for _ in range(c)]
    return [names[k] for k in np.random.default_rng(seed).permutation(len(names))]


def _check_trials(spk: list[str], i: np.ndarray, j: np.ndarray, target: np.ndarray) -> None:
    assert np.all(i < j)  # never a clip with itself, each pair once in one orientation
    assert len({(a, b) for a, b in zip(i, j)}) == len(i)
    same = np.array([spk[a] == spk[b] for a, b in zip(i, j)])
    assert np.array_equal(same, target)


def test_all_target_pairs_and_as_many_non_targets() -> None:
    counts = {"ann": 3, "bob": 2, "cy": 5, "dee": 4}
    spk = _speakers(counts)
    i, j, target = make_trials(spk, seed=0)
    _check_trials(spk, i, j, target)
    n_target = sum(c * (c - 1) // 2 for c in counts.values())  # 3 + 1 + 10 + 6
    assert target.sum() == n_target == (~target).sum()
    brute = {(a, b) for a in range(len(spk)) for b in range(a + 1, len(spk)) if spk[a] == spk[b]}
    assert {(a, b) for a, b, t in zip(i, j, target) if t} == brute
    assert np.all(np.diff(i * len(spk) + j) > 0)  # sorted by (i, j)


def test_requested_number_of_trials_is_balanced_and_seeded() -> None:
    spk = _speakers({f"s{k}": 6 for k in range(8)}, seed=1)
    i, j, target = make_trials(spk, n_trials=101, seed=3)
    _check_trials(spk, i, j, target)
    assert len(i) == 101 and target.sum() == 50
    again = make_trials(spk, n_trials=101, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip((i, j, target), again))
    other = make_trials(spk, n_trials=101, seed=4)
    assert not np.array_equal(i * 100 + j, other[0] * 100 + other[1])
    # every speaker takes part in target trials when all are asked for
    i, j, target = make_trials(spk, seed=0)
    assert Counter(spk[a] for a in i[target]).keys() == set(spk)
    with pytest.raises(ConfigError, match="at most 240 trials"):  # 8 * 15 target pairs
        make_trials(spk, n_trials=1000)
    with pytest.raises(ConfigError, match="whole number"):
        make_trials(spk, n_trials=1)


def test_large_sets_draw_non_targets_by_rejection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(verification, "_ENUMERATE_MAX_PAIRS", 10)
    spk = _speakers({f"s{k}": 5 for k in range(30)}, seed=2)
    i, j, target = make_trials(spk, seed=5)
    _check_trials(spk, i, j, target)
    assert target.sum() == (~target).sum() == 30 * 10
    again = make_trials(spk, seed=5)
    assert np.array_equal(i, again[0]) and np.array_equal(j, again[1])


def test_trial_errors_name_the_problem() -> None:
    with pytest.raises(TympanError, match="speaker 'bob' has only 1 clip"):
        make_trials(["ann", "ann", "bob", "cy", "cy"])
    with pytest.raises(TympanError, match="at least 2 speakers"):
        make_trials(["ann", "ann", "ann"])
    with pytest.raises(TympanError, match="clip 1 has no speaker"):
        make_trials(["ann", "", "ann", "bob", "bob"])


# -- scores and the whole evaluation -------------------------------------------------------------


def test_cosine_scores() -> None:
    rng = np.random.default_rng(1)
    emb = rng.standard_normal((6, 4))
    i, j = np.array([0, 1, 2, 4]), np.array([3, 5, 4, 5])
    expected = [emb[a] @ emb[b] / np.linalg.norm(emb[a]) / np.linalg.norm(emb[b])
                for a, b in zip(i, j)]
    np.testing.assert_allclose(cosine_scores(emb, i, j), expected, rtol=1e-12)
    scaled = emb * np.array([[1.0], [5.0], [0.1], [2.0], [3.0], [7.0]])
    np.testing.assert_allclose(cosine_scores(scaled, i, j), expected, rtol=1e-10)
    emb[2, 1] = np.nan
    with pytest.raises(TympanError, match="embedding row 2 is not finite"):
        cosine_scores(emb, i, j)


def _clustered(n_speakers: int, per: int, noise: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_speakers, 16))
    codes = np.repeat(np.arange(n_speakers), per)
    emb = centres[codes] + noise * rng.standard_normal((len(codes), 16))
    return emb.astype(np.float32), [f"spk{c:02d}" for c in codes]


def test_verification_eer_separated_random_and_intermediate() -> None:
    emb, spk = _clustered(8, 6, noise=0.05)
    result = verification_eer(emb, spk, draws=50)
    assert result.eer == 0.0 and result.n_target == result.n_nontarget == 8 * 15
    assert (result.n_clips, result.n_speakers, result.ci_unit) == (48, 8, "speakers")
    rng = np.random.default_rng(3)
    chance = verification_eer(rng.standard_normal((48, 16)), spk, draws=50)
    assert 0.35 < chance.eer < 0.65
    emb, spk = _clustered(10, 8, noise=1.2, seed=4)
    mid = verification_eer(emb, spk, draws=100, seed=2)
    assert 0.05 < mid.eer < 0.4
    assert mid.ci_low <= mid.eer <= mid.ci_high and mid.ci_high - mid.ci_low > 0.0
    assert mid.draws == 100 and mid.std > 0
    assert mid == verification_eer(emb, spk, draws=100, seed=2)  # deterministic
    record = json.loads(json.dumps(mid.to_json()))
    assert record["eer"] == mid.eer and record["ci_unit"] == "speakers"
    assert "EER" in mid.summary() and "95%" in mid.summary() and "speakers" in mid.summary()
    # resampling trials ignores that trials share clips and speakers: a narrower interval
    by_trials = verification_eer(emb, spk, draws=100, seed=2, unit="trials")
    assert by_trials.eer == mid.eer
    assert by_trials.ci_high - by_trials.ci_low < mid.ci_high - mid.ci_low


def test_verification_eer_without_interval_and_errors() -> None:
    emb, spk = _clustered(3, 4, noise=0.5)
    result = verification_eer(emb, spk)  # three speakers: a half cannot hold two
    assert np.isnan(result.ci_low) and result.draws == 0
    assert result.to_json()["ci_low"] is None and "no interval" in result.summary()
    with pytest.raises(TympanError, match="12 embeddings but 11 speakers"):
        verification_eer(emb, spk[:11])
    bad = emb.copy()
    bad[5] = np.nan
    with pytest.raises(TympanError, match="row 5 is not finite"):
        verification_eer(bad, spk)
    with pytest.raises(ConfigError, match="unit"):
        verification_eer(emb, spk, unit="clips")
    with pytest.raises(TympanError, match="speaker 'spk02' has only 1 clip"):
        verification_eer(emb[:9], spk[:9])


def test_centring_removes_a_shared_offset() -> None:
    """A large offset shared by every clip squeezes all cosines towards 1; subtracting the mean
    embedding (estimated on other clips) restores the speaker directions exactly."""
    rng = np.random.default_rng(0)
    speakers = np.repeat([f"s{k}" for k in range(6)], 4)
    directions = rng.standard_normal((6, 8))
    offset = np.full(8, 50.0)
    emb = offset + directions[np.repeat(np.arange(6), 4)] + 0.6 * rng.standard_normal((24, 8))
    raw = verification_eer(emb, speakers, draws=0)
    centred = verification_eer(emb, speakers, draws=0, centre=offset + directions.mean(0))
    assert centred.eer < raw.eer
    assert centred.eer < 0.1
    with pytest.raises(TympanError, match="centre"):
        verification_eer(emb, speakers, draws=0, centre=np.zeros(3))
