"""Do the CI estimates predict downstream errors? (seed 004, section IV, individual selection).

Zaiem & Parcollet, "Pretext-task selection by conditional independence"
(``../shared/seeds/004_f3e19d7efff003e6.txt``), section IV: one model is pretrained per
candidate pretext-task label, evaluated downstream, and "we are looking for a monotonic
relationship between CI estimates and downstream errors. We consider two classic assessors of
monotony: Spearman Correlation and Kendall tau" (the seed reports 0.93 / 0.81 on TIMIT and
0.48 / 0.41 on VoxCeleb). The expected sign is **positive**: a lower CI estimate should go with
a lower downstream error.

This module takes the per-candidate errors from a CSV (``candidate,error``; an error rate or
any lower-is-better score) and the CI table of a selection, and reports both coefficients with
their p-values (:mod:`scipy.stats`). Training the per-candidate models itself (``--train``) is
not provided here: it needs a pretraining run per candidate with the frame labels as regression
targets, which belongs to the pretraining side.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import kendalltau, rankdata, spearmanr

from tympan.errors import TympanError

__all__ = ["MIN_COMMON", "ValidationResult", "format_validation", "read_errors_csv", "validate_estimates"]

MIN_COMMON = 3
"""Fewest candidates with both a CI estimate and an error for a rank correlation."""


def read_errors_csv(path: str | Path) -> dict[str, float]:
    """``{candidate: error}`` from a CSV with a header containing ``candidate`` and ``error``.

    Other columns are ignored. Raises :class:`TympanError` naming the file and line for a
    missing file or column, an empty candidate name, a non-numeric or non-finite error, or a
    candidate listed twice.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise TympanError(f"{p}: no such errors file; write a CSV with the header candidate,error") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TympanError(f"{p}: cannot be read as UTF-8 CSV ({exc})") from None
    rows = list(csv.reader(io.StringIO(text, newline="")))
    numbered = [(i + 1, r) for i, r in enumerate(rows) if any(c.strip() for c in r)]
    if not numbered:
        raise TympanError(f"{p}: is empty; write a CSV with the header candidate,error and one row per candidate")
    head_line, header = numbered[0]
    cols = [c.strip().lower() for c in header]
    for need in ("candidate", "error"):
        if need not in cols:
            raise TympanError(f"{p} line {head_line}: the header has no '{need}' column (it has: "
                              f"{', '.join(c for c in cols if c) or 'nothing'}); the header must contain "
                              "candidate,error")
    ci_, ei = cols.index("candidate"), cols.index("error")
    out: dict[str, float] = {}
    where: dict[str, int] = {}
    for line, row in numbered[1:]:
        if len(row) <= max(ci_, ei):
            raise TympanError(f"{p} line {line}: has {len(row)} cells but the header has {len(header)} columns")
        name, raw = row[ci_].strip(), row[ei].strip()
        if not name:
            raise TympanError(f"{p} line {line}, column 'candidate': is empty; give the pretext-task name")
        try:
            value = float(raw)
        except ValueError:
            raise TympanError(f"{p} line {line}, column 'error': {raw!r} is not a number "
                              "(write e.g. 0.21 or 21.0)") from None
        if not math.isfinite(value):
            raise TympanError(f"{p} line {line}, column 'error': {raw!r} is not finite; give a measured error")
        if name in out:
            raise TympanError(f"{p} line {line}: candidate {name!r} is already on line {where[name]}; "
                              "keep one row per candidate")
        out[name], where[name] = value, line
    if not out:
        raise TympanError(f"{p}: has a header but no rows; add one row per candidate (candidate,error)")
    return out


@dataclass
class ValidationResult:
    """Rank agreement between CI estimates and downstream errors (seed section IV).

    ``table`` rows hold ``candidate, ci, ci_rank, error, error_rank`` (rank 1 = lowest, average
    ranks for ties), sorted by CI; ``missing_ci`` / ``missing_error`` list candidates present in
    only one of the inputs (left out of the coefficients).
    """

    n: int
    spearman_rho: float
    spearman_p: float
    kendall_tau: float
    kendall_p: float
    table: list[dict[str, Any]]
    missing_ci: list[str] = field(default_factory=list)
    missing_error: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, path: str | Path | None = None, indent: int = 2) -> str:
        """JSON text (NaN written as null); also written to ``path`` when given."""
        def clean(v: Any) -> Any:
            if isinstance(v, float):
                return v if math.isfinite(v) else None
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            if isinstance(v, list):
                return [clean(x) for x in v]
            return v

        text = json.dumps(clean(self.to_dict()), indent=indent)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text


def validate_estimates(ci: Mapping[str, float], errors: Mapping[str, float]) -> ValidationResult:
    """Spearman rho and Kendall tau (with p-values) between CI estimates and errors.

    Only candidates present in both mappings are used (at least :data:`MIN_COMMON`). Kendall's
    tau is scipy's tau-b (ties handled). A positive coefficient is what the seed predicts.
    """
    if not isinstance(ci, Mapping) or not isinstance(errors, Mapping):
        raise TympanError("validate_estimates: pass {candidate: CI estimate} and {candidate: error} dicts")
    common = [n for n in ci if n in errors]
    missing_err = [n for n in ci if n not in errors]
    missing_ci = [n for n in errors if n not in ci]
    if len(common) < MIN_COMMON:
        raise TympanError(f"validate_estimates: only {len(common)} candidate(s) have both a CI estimate and an "
                          f"error ({', '.join(common) or 'none'}); need at least {MIN_COMMON}. CI estimates for: "
                          f"{', '.join(ci) or 'none'}; errors for: {', '.join(errors) or 'none'} "
                          "(check that the names match)")
    c = np.array([float(ci[n]) for n in common])
    e = np.array([float(errors[n]) for n in common])
    for what, v in (("CI estimates", c), ("errors", e)):
        if not np.isfinite(v).all():
            raise TympanError(f"validate_estimates: the {what} contain NaN or inf")
        if np.ptp(v) == 0:
            raise TympanError(f"validate_estimates: all {what} are equal, so no ranking exists; "
                              "the rank correlations are undefined")
    rho = spearmanr(c, e)
    tau = kendalltau(c, e)
    cr, er = rankdata(c), rankdata(e)
    order = np.argsort(c, kind="stable")
    table = [{"candidate": common[i], "ci": float(c[i]), "ci_rank": float(cr[i]), "error": float(e[i]),
              "error_rank": float(er[i])} for i in order]
    return ValidationResult(len(common), float(rho.statistic), float(rho.pvalue), float(tau.statistic),
                            float(tau.pvalue), table, missing_ci, missing_err)


def format_validation(result: ValidationResult) -> str:
    """Human table: per candidate its CI estimate, error and ranks, then rho and tau."""
    rows = [(r["candidate"], f"{r['ci']:.3e}", f"{r['ci_rank']:g}", f"{r['error']:.4g}", f"{r['error_rank']:g}")
            for r in result.table]
    head = ("candidate", "CI estimate", "CI rank", "error", "error rank")
    width = [max(len(h), *(len(r[j]) for r in rows)) for j, h in enumerate(head)]

    def line(cells: tuple[str, ...] | list[str]) -> str:
        return "  ".join(x.ljust(w) if j == 0 else x.rjust(w) for j, (x, w) in enumerate(zip(cells, width)))

    out = ["CI estimate vs downstream error (seed section IV; a positive correlation is expected)",
           line(head), line(["-" * w for w in width]), *(line(r) for r in rows),
           f"Spearman rho = {result.spearman_rho:+.3f} (p = {result.spearman_p:.3g})   "
           f"Kendall tau = {result.kendall_tau:+.3f} (p = {result.kendall_p:.3g})   n = {result.n}"]
    if result.missing_error:
        out.append(f"no error for: {', '.join(result.missing_error)}")
    if result.missing_ci:
        out.append(f"no CI estimate for: {', '.join(result.missing_ci)}")
    return "\n".join(out)
