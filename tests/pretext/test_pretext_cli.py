"""`tympan pretext labels|select|validate|robustness` end to end on a few generated clips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tympan.cli import main

SR = 16000


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes x 5 clips: a low tone, a high tone, noise; random gain and length."""
    root = tmp_path_factory.mktemp("ptcli")
    rng = np.random.default_rng(1)
    lines = ["path,label,split"]
    for name in ("low", "high", "noise"):
        for k in range(5):
            n = int(SR * rng.uniform(0.4, 0.7))
            t = np.arange(n) / SR
            if name == "noise":
                wav = rng.standard_normal(n) * 0.1
            else:
                wav = np.sin(2 * np.pi * (220.0 if name == "low" else 1760.0) * t)
            wav = wav * rng.uniform(0.1, 0.8) + 0.003 * rng.standard_normal(n)
            sf.write(root / f"{name}{k}.wav", wav.astype(np.float32), SR)
            lines.append(f"{name}{k}.wav,{name},train")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root / "manifest.csv"


def test_labels_select_validate_robustness(manifest: Path, tmp_path: Path, capsys) -> None:
    labels = tmp_path / "labels.npz"
    assert main(["pretext", "labels", "--data", str(manifest), "--out", str(labels),
                 "--candidates", "f0,voicing,zcr,loudness", "--workers", "1", "-q"]) == 0
    assert "15 clips x 4 candidates" in capsys.readouterr().out

    sel = tmp_path / "sel.json"
    assert main(["pretext", "select", "--data", str(manifest), "--labels", str(labels),
                 "--method", "softmax", "--steps", "20", "--out", str(sel), "-q"]) == 0
    out = capsys.readouterr().out
    record = json.loads(sel.read_text())
    assert abs(sum(record["weights"].values()) - 1.0) < 1e-6
    assert set(record["ci"]) == {"f0", "voicing", "zcr", "loudness"}
    assert record["settings"]["labels_file"] == str(labels.resolve())
    # the printed ranking is the record's
    first = record["ranking"][0]
    assert f"   1  {first}" in out

    # errors that follow the CI order exactly: rank correlation 1
    errors = tmp_path / "errors.csv"
    ordered = sorted(record["ci"], key=record["ci"].get)
    errors.write_text("candidate,error\n" + "".join(f"{n},{0.1 * (i + 1)}\n"
                                                    for i, n in enumerate(ordered)))
    val = tmp_path / "val.json"
    assert main(["pretext", "validate", "--ci", str(sel), "--errors", str(errors),
                 "--out", str(val)]) == 0
    res = json.loads(val.read_text())
    assert res["spearman_rho"] == pytest.approx(1.0) and res["kendall_tau"] == pytest.approx(1.0)
    assert "rho" in capsys.readouterr().out.lower()

    rob = tmp_path / "rob"
    assert main(["pretext", "robustness", "--data", str(manifest), "--labels", str(labels),
                 "--out", str(rob), "--n-classes", "2", "3", "--per-class", "3", "5",
                 "--draws", "3", "-q"]) == 0
    assert (rob / "robustness.png").stat().st_size > 0
    assert json.loads((rob / "robustness.json").read_text())


def test_errors_are_one_line(manifest: Path, tmp_path: Path, capsys) -> None:
    assert main(["pretext", "select", "--data", str(manifest), "--labels",
                 str(tmp_path / "missing.npz"), "--out", str(tmp_path / "s.json"), "-q"]) == 2
    assert "tympan: error:" in capsys.readouterr().err
    assert main(["pretext", "validate", "--ci", str(tmp_path / "none.json"),
                 "--errors", "x.csv"]) == 2
    assert "pretext select" in capsys.readouterr().err
