"""The 95% confidence interval of few-shot accuracy, and interval overlap."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tympan.evaluation.metrics import Z95, intervals_overlap, mean_ci95


def test_z95_is_the_normal_quantile() -> None:
    assert Z95 == pytest.approx(1.96, abs=5e-5)
    # Phi(Z95) = 0.975
    assert 0.5 * (1 + math.erf(Z95 / math.sqrt(2))) == pytest.approx(0.975, abs=1e-12)


def test_ci_by_hand() -> None:
    # values 2, 4, 4, 4, 5, 5, 7, 9: mean 40/8 = 5
    # squared deviations 9, 1, 1, 1, 0, 0, 4, 16 -> sum 32
    # sample variance 32/7, sample std sqrt(32/7) = 2.1380899...
    # half-width 1.96 * 2.1380899 / sqrt(8) = 1.96 * 0.7559289 = 1.4816207
    mean, ci = mean_ci95([2, 4, 4, 4, 5, 5, 7, 9])
    assert mean == 5.0
    assert ci == pytest.approx(1.4816207, abs=1e-4)  # 1.96 vs Z95: agree to ~4e-5 relative
    assert ci == pytest.approx(Z95 * math.sqrt(32 / 7) / math.sqrt(8), rel=1e-12)
    # not the population std (ddof=0, which would give 1.96 * 2 / sqrt(8) = 1.3859)
    assert ci != pytest.approx(1.96 * 2.0 / math.sqrt(8), abs=1e-3)


def test_ci_by_hand_two_values_percent() -> None:
    # 60 and 80 (percent): mean 70, sample std sqrt(((-10)^2 + 10^2) / 1) = 14.1421356
    # half-width 1.96 * 14.1421356 / sqrt(2) = 1.96 * 10 = 19.6
    mean, ci = mean_ci95(np.array([60.0, 80.0]))
    assert mean == 70.0
    assert ci == pytest.approx(19.6, abs=1e-3)


def test_ci_matches_numpy_formula() -> None:
    v = np.random.default_rng(0).uniform(0, 100, size=600)
    mean, ci = mean_ci95(v)
    assert mean == pytest.approx(v.mean(), rel=1e-12)
    assert ci == pytest.approx(1.96 * v.std(ddof=1) / math.sqrt(600), rel=1e-4)
    # shrinks like 1/sqrt(n): four times the (same-spread) episodes, half the half-width
    _, ci4 = mean_ci95(np.tile(v, 4))
    assert ci4 == pytest.approx(ci / 2, rel=2e-3)


def test_constant_values_have_zero_width() -> None:
    assert mean_ci95([0.8] * 10) == (pytest.approx(0.8), pytest.approx(0.0, abs=1e-15))


def test_single_value_nan_half_width() -> None:
    mean, ci = mean_ci95([42.5])
    assert mean == 42.5 and math.isnan(ci)
    mean, ci = mean_ci95(np.array([3.0]))
    assert mean == 3.0 and math.isnan(ci)


def test_empty_raises() -> None:
    with pytest.raises(ValueError):
        mean_ci95([])
    with pytest.raises(ValueError):
        mean_ci95(np.zeros(0))


def test_returns_python_floats() -> None:
    mean, ci = mean_ci95(np.array([1, 2, 3], dtype=np.int64))
    assert type(mean) is float and type(ci) is float
    assert mean == 2.0 and ci == pytest.approx(Z95 * 1.0 / math.sqrt(3))


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ((50.0, 2.0), (53.0, 1.5), True),  # 52 > 51.5: overlap
        ((50.0, 1.0), (53.0, 1.5), False),  # 51 < 51.5: gap
        ((50.0, 1.0), (52.0, 1.0), True),  # touching at 51 counts as overlap
        ((53.0, 1.5), (50.0, 2.0), True),  # symmetric
        ((53.0, 1.5), (50.0, 1.0), False),
        ((60.0, 0.0), (60.0, 0.0), True),  # identical points
        ((60.0, 0.0), (60.1, 0.0), False),
        ((10.0, 5.0), (11.0, 0.1), True),  # one inside the other
    ],
)
def test_intervals_overlap(a, b, expected) -> None:
    assert intervals_overlap(a, b) is expected
    assert intervals_overlap(b, a) is expected


def test_overlap_with_mean_ci95_results() -> None:
    a = mean_ci95([60, 62, 64, 66])  # 63 ± 1.96*2.582/2 = 63 ± 2.53
    b = mean_ci95([66, 68, 70, 72])  # 69 ± 2.53
    c = mean_ci95([64, 66, 68, 70])  # 67 ± 2.53
    assert not intervals_overlap(a, b)
    assert intervals_overlap(a, c)
