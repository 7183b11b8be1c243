"""``tympan.report.html``: the self-contained run report, on hand-made run directories."""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path

import pytest

from tympan.config import load_recipe, save_recipe
from tympan.errors import TympanError
from tympan.report.html import loss_columns, markdown_to_html, write_report
from tympan.report.run import gather_run

EVIL = "<script>alert(1)</script>"


def make_run(root: Path, *, collapsed: bool = True) -> Path:
    """A pretraining run as tympan writes it, small: two tasks (one named ``EVIL``), 30 logged
    steps with collapse columns, a pretrain.json, a few-shot JSON, an invariance analysis and a
    probe folder."""
    root.mkdir(parents=True)
    recipe = load_recipe("demo", {
        "model.width": 8,
        "tasks": [{"name": "contrastive", "objective": "nt_xent"},
                  {"name": EVIL, "objective": "simsiam", "weight": 0.5}],
    })
    save_recipe(recipe, root / "config.yaml")
    (root / "encoder.safetensors").write_bytes(b"")
    cols = ["step", "contrastive/loss", f"{EVIL}/loss", "contrastive/embed_std",
            "contrastive/effective_rank", f"{EVIL}/prototype_usage", "loss", "lr", "epoch"]
    lines = [",".join(f'"{c}"' if "," in c else c for c in cols)]
    for step in range(1, 31):
        a, b = 3.0 - step * 0.05, 1.0 - step * 0.01
        lines.append(",".join(str(v) for v in (
            step, a, b, 0.06, 12.0 - step * 0.3, 0.5, a + 0.5 * b, 1e-3 * min(1, step / 10), 0)))
    (root / "metrics.csv").write_text("\n".join(lines) + "\n")
    event = {"step": 25, "task": "contrastive", "metric": "effective_rank", "value": 1.5,
             "threshold": 2.0}
    (root / "pretrain.json").write_text(json.dumps({
        "run": str(root), "steps": 30, "clips": 100, "skipped": [], "n_skipped": 0,
        "wall_seconds": 12.5,
        "parameters": {"encoder": 123457, "heads": 999, "teachers": 0, "encoder_breakdown": {
            "total": 123457, "shared": 123457, "per_task": {}, "single_network": 123457,
            "separate_networks": 246914, "ratio_to_separate": 0.5, "extra_over_single": 0.0}},
        "collapse": {"collapsed": collapsed, "events": [event] if collapsed else [],
                     "last": {"contrastive/embed_std": 0.06, "contrastive/effective_rank": 3.0}},
    }))
    (root / "fewshot.json").write_text(json.dumps({
        "model": EVIL, "accuracy": 61.25, "ci95": 1.75, "ways": 5, "shots": 1, "queries": 15,
        "episodes": 600, "skipped": [], "split": "test", "task": None, "seed": 0}))
    (root / "analysis").mkdir()
    (root / "analysis" / "invariance.json").write_text(json.dumps({
        "model": str(root), "data": "corpus/manifest.csv", "split": None,
        "tasks": ["contrastive"], "ops": ["fade", "white_noise"],
        "distances": {"contrastive": {"fade": 0.4321, "white_noise": 2.5, "avg": 1.46605}},
        "ci95": {"contrastive": {"fade": 0.0512, "white_noise": 0.25, "avg": 0.125}},
        "num_clips": 64, "clip_seconds": 1.0, "seed": 0, "metric": "mahalanobis", "extra": {},
        "skipped": []}))
    (root / "probe").mkdir()
    (root / "probe" / "probe.json").write_text(json.dumps({
        "model": str(root), "data": "music/manifest.csv", "task": "classification",
        "kind": "linear", "probe": {
            "task": "classification", "kind": "linear",
            "metrics": {"accuracy": {"mean": 0.8125, "std": 0.0312}},
            "full_test": {"accuracy": 0.8}, "excluded_classes": [], "best_epoch": 3,
            "n_train": 40, "n_val": 10, "n_test": 20, "n_classes": 4,
            "bootstrap": {"draws": 50, "fraction": 0.5}},
        "limited_data": None, "skipped": []}))
    return root


def _section(page: str, anchor: str) -> str:
    m = re.search(rf'<section id="{anchor}">(.*?)</section>', page, re.S)
    assert m, f"no section {anchor}"
    return m.group(1)


def _pngs(text: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r'src="data:image/png;base64,([^"]+)"', text)]


def test_report_of_a_pretraining_run(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    out = write_report(run)
    assert out == run / "report.html"
    page = out.read_text(encoding="utf-8")

    # the loss curves are a real PNG embedded in the page, drawn from metrics.csv
    training = _section(page, "training")
    pngs = _pngs(training)
    assert len(pngs) == 1 and pngs[0].startswith(b"\x89PNG\r\n\x1a\n")
    width = int.from_bytes(pngs[0][16:20], "big")
    assert width > 400
    assert "30 logged steps" in training
    # collapse: the monitor figure, the flagged event and a warning
    collapse = _section(page, "collapse")
    assert len(_pngs(collapse)) == 1
    assert "Possible collapse flagged" in collapse and "effective_rank" in collapse
    assert "Collapse was flagged" in _section(page, "summary")

    # the numbers and intervals from the JSONs
    results = _section(page, "results")
    assert "61.25" in results and "1.75" in results and "[59.50, 63.00]" in results
    assert "0.8125" in results and "0.0312" in results
    assert "[0.7513, 0.8737]" in results  # probe: mean ± 1.96 std
    invariance = _section(page, "invariance")
    assert "0.43 ± 0.05" in invariance and "1.47 ± 0.12" in invariance
    assert len(_pngs(invariance)) == 1  # the heatmap, drawn from invariance.json
    summary = _section(page, "summary")
    assert "123,457" in summary and "12.5 s" in summary and "30 of 1000 planned" in summary

    # text from the run is escaped: no script element anywhere, the label shown as text
    assert "<script" not in page.lower()
    assert html.escape(EVIL) in page
    # self-contained: no link or source leaves the file
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert "http://" not in page and "https://" not in page
    assert '<details><summary>resolved recipe (config.yaml)</summary>' in page

    # absent pieces are named with the command that makes them
    absent = _section(page, "absent")
    assert "head weights" in absent and "tympan analyze head-weights" in absent
    assert "geometry" in absent and "tympan analyze geometry" in absent
    assert "few-shot results" not in absent and "invariance</strong>" not in absent


def test_report_never_fails_on_missing_or_broken_pieces(tmp_path: Path) -> None:
    run = tmp_path / "bare"
    run.mkdir()
    save_recipe(load_recipe("demo"), run / "config.yaml")
    (run / "encoder.safetensors").write_bytes(b"")
    (run / "fewshot.json").write_text("{not json")
    (run / "metrics.csv").write_text("wall,loss\n1,2\n")  # no step column
    page = write_report(run, tmp_path / "elsewhere").read_text(encoding="utf-8")
    assert (tmp_path / "elsewhere" / "report.html").is_file()
    assert not (run / "report.html").exists()
    absent = _section(page, "absent")
    for piece, command in [("pretrain.json", "tympan pretrain --resume"),
                           ("few-shot results", "tympan fewshot --model"),
                           ("invariance", "tympan analyze invariance")]:
        assert piece in absent and command in absent
    files = _section(page, "files")
    assert "fewshot.json: not valid JSON" in files and "no &#x27;step&#x27; column" in files


def test_loss_columns_pick_total_and_per_task_losses() -> None:
    cols = ["step", "a/loss", "a/pos_cos", "b/loss", "loss", "lr", "train_loss"]
    assert loss_columns(cols) == ["a/loss", "b/loss", "loss"]
    assert loss_columns(["step", "train_loss", "x/loss"]) == ["train_loss", "x/loss"]


def test_gather_recognises_results_by_shape_and_dedupes(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", collapsed=False)
    probe = json.loads((run / "probe" / "probe.json").read_text())
    (run / "probe_copy.json").write_text(json.dumps({**probe, "summary": "same", "files": {}}))
    (run / "anything.json").write_text(json.dumps({"results": [
        {"model": "m", "accuracy": 50.0, "ci95": 2.0, "ways": 5, "shots": 5}]}))
    c = gather_run(run)
    assert c.kind == "pretrain" and not c.collapsed
    assert len(c.probes) == 1  # --out and --json copies of one probe
    assert sorted(f.data["shots"] for f in c.fewshot) == [1, 5]
    assert [f.path.as_posix() for f in c.invariance] == ["analysis/invariance.json"]
    assert {a.piece for a in c.absent()} >= {"head weights", "geometry and UMAP"}


def test_not_a_run_is_a_tympan_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(TympanError, match="not a tympan run directory"):
        write_report(tmp_path)
    with pytest.raises(TympanError, match="no such run directory"):
        write_report(tmp_path / "missing")
    with pytest.raises(TympanError, match="is a file"):
        write_report(tmp_path / "notes.txt")


def test_markdown_subset_is_escaped_and_embeds_local_pngs(tmp_path: Path) -> None:
    png = tmp_path / "fig.png"
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1, 1))
    ax.plot([0, 1])
    fig.savefig(png)
    plt.close(fig)
    md = ("# Title <b>\n\n| a | b |\n|---|---:|\n| <i>x</i> | **1.5** |\n\n- item `code`\n\n"
          "![fig](fig.png)\n\n![remote](https://example.com/x.png)\n")
    used: set[Path] = set()
    out = markdown_to_html(md, tmp_path, used)
    assert "<h3>Title &lt;b&gt;</h3>" in out
    assert '<td>&lt;i&gt;x&lt;/i&gt;</td><td class="num"><strong>1.5</strong></td>' in out
    assert "<li>item <code>code</code></li>" in out
    assert out.count("data:image/png;base64,") == 1 and used == {png.resolve()}
    assert 'src="https://' not in out
