"""The report renders in a real browser: headless Chromium screenshots it, offline.

Skipped where no Chromium is installed (``apt-get install chromium``), so CI without a browser
passes; where one is, the screenshot must show a page (pixel variance, ink) and the HTML must
reference nothing outside itself.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tympan.config import load_recipe, save_recipe
from tympan.report.html import write_report

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
BROWSER = next((b for b in map(shutil.which, BROWSERS) if b), None)


def _run(root: Path) -> Path:
    root.mkdir()
    save_recipe(load_recipe("demo", {"model.width": 8}), root / "config.yaml")
    (root / "encoder.safetensors").write_bytes(b"")
    rows = ["step,contrastive/loss,contrastive/embed_std,contrastive/effective_rank,loss,lr"]
    rows += [f"{s},{3 - 0.05 * s},{0.06},{10 - 0.1 * s},{3 - 0.05 * s},{1e-3}" for s in range(1, 41)]
    (root / "metrics.csv").write_text("\n".join(rows) + "\n")
    (root / "pretrain.json").write_text(json.dumps({
        "steps": 40, "clips": 36, "wall_seconds": 9.0, "n_skipped": 0,
        "parameters": {"encoder": 1000}, "collapse": {"collapsed": False, "events": [], "last": {}}}))
    (root / "fewshot.json").write_text(json.dumps({
        "model": "run", "accuracy": 55.0, "ci95": 1.5, "ways": 5, "shots": 1, "queries": 15,
        "episodes": 600, "skipped": [], "split": "test"}))
    return root


@pytest.mark.skipif(BROWSER is None, reason="no chromium binary (apt-get install chromium)")
def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    from PIL import Image

    report = write_report(_run(tmp_path / "run"))
    page = report.read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert not re.search(r"<(script|link|iframe|object|embed)\b", page, re.I)
    assert "@import" not in page and "url(" not in page

    shot = tmp_path / "report.png"
    profile = tmp_path / "profile"
    cmd = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--no-first-run", f"--user-data-dir={profile}", f"--screenshot={shot}",
           "--window-size=1280,2400", report.resolve().as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert shot.is_file(), f"no screenshot; chromium said: {done.stderr[-2000:]}"
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape == (2400, 1280)
    assert pixels.std() > 20  # not a blank page
    ink = (pixels < 128).mean()
    assert 0.01 < ink < 0.6  # text and figures, not an error page of one colour
    # the embedded figures decoded: matplotlib's first line colour (C0, #1f77b4) is on screen,
    # and nothing else on the page uses it
    rgb = np.asarray(Image.open(shot).convert("RGB"), dtype=int)
    c0 = (np.abs(rgb - np.array([31, 119, 180])) < 15).all(axis=2).sum()
    assert c0 > 200
