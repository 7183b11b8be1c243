"""CI estimates vs downstream errors: Spearman and Kendall (tympan.pretext.validate; seed 004, section IV)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from scipy.stats import kendalltau, spearmanr

from tympan.errors import TympanError
from tympan.pretext.validate import format_validation, read_errors_csv, validate_estimates

CI = {"f0": 1e-4, "voicing": 2e-4, "loudness": 5e-4, "zcr": 9e-4, "log_hnr": 3e-3}


def test_monotone_and_reversed() -> None:
    increasing = {k: 10 + 5 * i for i, k in enumerate(CI)}  # any increasing map of the CI order
    r = validate_estimates(CI, increasing)
    assert r.spearman_rho == pytest.approx(1.0) and r.kendall_tau == pytest.approx(1.0) and r.n == 5
    r = validate_estimates(CI, {k: -v for k, v in increasing.items()})
    assert r.spearman_rho == pytest.approx(-1.0) and r.kendall_tau == pytest.approx(-1.0)


def test_hand_computed_case() -> None:
    ci = {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0}
    err = {"a": 0.1, "b": 0.3, "c": 0.2, "d": 0.4}
    r = validate_estimates(ci, err)
    # one swapped pair: sum d^2 = 2 -> rho = 1 - 6*2 / (4*15) = 0.8; tau = (5 - 1) / 6
    assert r.spearman_rho == pytest.approx(0.8)
    assert r.kendall_tau == pytest.approx(2 / 3)
    assert r.spearman_p == pytest.approx(spearmanr([1, 2, 3, 4], [0.1, 0.3, 0.2, 0.4]).pvalue)
    assert r.kendall_p == pytest.approx(kendalltau([1, 2, 3, 4], [0.1, 0.3, 0.2, 0.4]).pvalue)
    assert [row["error_rank"] for row in r.table] == [1, 3, 2, 4]


def test_only_common_candidates(tmp_path: Path) -> None:
    err = {"f0": 0.2, "voicing": 0.25, "zcr": 0.3, "other": 0.9}
    r = validate_estimates(CI, err)
    assert r.n == 3 and r.missing_ci == ["other"] and set(r.missing_error) == {"loudness", "log_hnr"}
    assert r.kendall_tau == pytest.approx(1.0)
    text = format_validation(r)
    assert "Spearman rho = +1.000" in text and "no CI estimate for: other" in text
    doc = json.loads(r.to_json(tmp_path / "v.json"))
    assert doc["n"] == 3 and json.loads((tmp_path / "v.json").read_text()) == doc
    with pytest.raises(TympanError, match="only 2 candidate"):
        validate_estimates(CI, {"f0": 1.0, "zcr": 2.0, "x": 3.0})
    with pytest.raises(TympanError, match="all errors are equal"):
        validate_estimates(CI, {k: 0.5 for k in CI})


def test_read_errors_csv(tmp_path: Path) -> None:
    p = tmp_path / "e.csv"
    p.write_text("Candidate, Error ,notes\nf0,0.21,x\n\nzcr,  3.5e-1 ,\n")
    assert read_errors_csv(p) == {"f0": 0.21, "zcr": 0.35}
    bad = {
        "name,error\nf0,0.2\n": "no 'candidate' column",
        "candidate,err\nf0,0.2\n": "no 'error' column",
        "candidate,error\nf0,0.2\nzcr,high\n": r"line 3, column 'error': 'high' is not a number",
        "candidate,error\nf0,0.2\nf0,0.3\n": "'f0' is already on line 2",
        "candidate,error\nf0,nan\n": "not finite",
        "candidate,error\n": "no rows",
        "": "is empty",
    }
    for text, msg in bad.items():
        p.write_text(text)
        with pytest.raises(TympanError, match=msg):
            read_errors_csv(p)
    with pytest.raises(TympanError, match="no such errors file"):
        read_errors_csv(tmp_path / "absent.csv")
