"""``tympan report RUN``: one self-contained ``report.html`` for a run directory.

The page gathers whatever the run holds (:func:`tympan.report.run.gather_run`) and says what it
does not hold, with the command that would produce it; an optional piece that is missing or
unreadable never fails the report. Sections: summary (recipe, method and tasks, parameters,
steps, wall time, data), loss curves (drawn afresh from ``metrics.csv``: total and per-task
losses, learning rate), collapse monitors (``embed_std``, ``effective_rank``,
``prototype_usage`` per task, with the ``pretrain.json`` summary and a warning when collapse was
flagged), results with their intervals (few-shot accuracy ± 95% CI, probe bootstrap mean ± std,
fine-tuning mean ± std and 95% CI, reproduce/demo tables), the invariance heatmap, head weights,
geometry with the UMAP and convergence figures, the resolved recipe and the file listing.

Self-contained means one file that renders offline: figures are base64 PNGs in ``data:`` URIs,
the CSS is inline, there is no script, and a Content-Security-Policy forbids every network
load. Every piece of text read from the run is escaped (:func:`html.escape`).
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import math
import re
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tympan import __version__
from tympan.report import plots
from tympan.report.run import (
    RunContents,
    collapse_thresholds,
    gather_run,
    looks_synthetic,
    output_path,
    write_atomic,
    objective_origin,
    seed_label,
)
from tympan.report.tables import METRIC_TITLES

plt = plots.plt  # the Agg backend, set once in tympan.report.plots
MaxNLocator = plots.MaxNLocator

__all__ = ["REPORT_FILE", "render_report", "write_report"]

REPORT_FILE = "report.html"
#: images larger than this are listed, not embedded (the page stays small enough to mail)
MAX_IMAGE_BYTES = 8 * 1024 * 1024
#: leftover PNGs embedded under "Other figures"
MAX_OTHER_IMAGES = 20

_KIND_TITLES = {
    "pretrain": "self-supervised pretraining run",
    "finetune": "fine-tuning run",
    "encoder": "encoder (weights and recipe only)",
    "results": "results folder (tympan reproduce / demo)",
}

_CSS = """
:root { --fg:#1d2330; --muted:#5f6b7a; --line:#d9dee5; --bg:#ffffff; --soft:#f4f6f9;
        --warn:#b42318; --warnbg:#fef3f2; --ok:#067647; --okbg:#ecfdf3; --accent:#2e5aac; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--fg);
       font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
header { background:#1d2330; color:#fff; padding:22px 32px 14px; }
header h1 { margin:0 0 4px; font-size:24px; font-weight:650; }
header .meta { margin:0; color:#c7cfdb; font-size:13px; }
nav { margin-top:12px; display:flex; flex-wrap:wrap; gap:6px 14px; font-size:13px; }
nav a { color:#9ec1ff; text-decoration:none; }
main { max-width:1160px; margin:0 auto; padding:8px 32px 48px; }
section { border-bottom:1px solid var(--line); padding:10px 0 18px; }
h2 { font-size:20px; margin:18px 0 8px; }
h3 { font-size:16px; margin:16px 0 6px; }
h4 { font-size:14px; margin:12px 0 4px; }
p { margin:6px 0; }
table { border-collapse:collapse; margin:8px 0 12px; font-size:13.5px; }
th, td { border:1px solid var(--line); padding:4px 9px; text-align:left; vertical-align:top; }
th { background:var(--soft); font-weight:600; }
td.num, th.num { text-align:right; font-variant-numeric: tabular-nums; white-space:nowrap; }
table.kv { width:100%; }
table.kv th { width:190px; }
img { max-width:100%; height:auto; display:block; margin:8px 0; border:1px solid var(--line); }
code, pre { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size:12.5px; }
code { background:var(--soft); padding:1px 4px; border-radius:3px; overflow-wrap:anywhere; }
pre { background:var(--soft); padding:10px 12px; overflow:auto; border-radius:4px; }
a { color:var(--accent); }
details summary { cursor:pointer; color:var(--accent); font-weight:600; }
.warn { background:var(--warnbg); border-left:4px solid var(--warn); padding:8px 12px; margin:10px 0; }
.ok { background:var(--okbg); border-left:4px solid var(--ok); padding:8px 12px; margin:10px 0; }
.absent { color:var(--muted); background:var(--soft); border-left:4px solid var(--line);
          padding:6px 12px; margin:8px 0; }
.muted { color:var(--muted); font-size:13px; }
.doc { border-left:3px solid var(--line); padding-left:14px; }
ul.absent-list li { margin:4px 0; }
"""

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


# ---------------------------------------------------------------------------------------------
# small HTML helpers


class Raw(str):
    """Markup that is already safe (built here from escaped pieces); never wraps file text."""


def _e(value: Any) -> str:
    """Escaped text; :class:`Raw` passes through."""
    if isinstance(value, Raw):
        return str(value)
    return html.escape("" if value is None else str(value), quote=True)


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]],
           numeric: Iterable[int] = (), cls: str = "") -> str:
    """An HTML table; every cell is escaped unless it is :class:`Raw`."""
    num = set(numeric)
    head = "".join(f'<th{" class=num" if i in num else ""}>{_e(h)}</th>'
                   for i, h in enumerate(headers))
    body = "".join(
        "<tr>" + "".join(f'<td{" class=num" if i in num else ""}>{_e(c)}</td>'
                         for i, c in enumerate(row)) + "</tr>"
        for row in rows
    )
    attr = f" class={cls}" if cls else ""
    return f"<table{attr}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _kv(rows: Iterable[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    return f'<table class="kv"><tbody>{body}</tbody></table>'


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _code(text: str) -> Raw:
    return Raw(f"<code>{_e(text)}</code>")


def _absent(what: str, command: str | None = None) -> str:
    cmd = f" Produce it with {_code(command)}." if command else ""
    return f'<p class="absent">Not in this run: {_e(what)}.{cmd}</p>'


def _fig_png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def _via_file(draw: Callable[[Path], Any]) -> bytes:
    """PNG bytes of a ``tympan.report.plots`` function that writes to a path."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "figure.png"
        draw(path)
        return path.read_bytes()


def _num(v: Any, digits: int = 2) -> str:
    if isinstance(v, bool) or v is None:
        return "" if v is None else str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return "n/a" if not math.isfinite(v) else f"{v:.{digits}f}"
    return str(v)


def _seconds(s: Any) -> str:
    if not isinstance(s, (int, float)) or isinstance(s, bool):
        return "not recorded"
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s:.0f} s ({s / 60:.1f} min)"
    return f"{s:.0f} s ({s / 3600:.2f} h)"


def _bytes(n: int) -> str:
    if n < 0:
        return "?"
    for unit in ("B", "KB", "MB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


# ---------------------------------------------------------------------------------------------
# a safe subset of Markdown (the results.md / geometry.md that commands write)


_TABLE_RULE = re.compile(r"^\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*$")
_IMAGE = re.compile(r"^!\[([^\]]*)\]\(([^)\s]+)\)$")


def _inline(text: str) -> str:
    """Escape, then ``**bold**``, ``*em*`` and ```code```; links keep their text only."""
    t = _e(text)
    t = re.sub(r"`([^`]+)`", r"<code>\1</code>", t)
    t = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", t)
    t = re.sub(r"(?<![\w*])\*([^*\s][^*]*)\*(?![\w*])", r"<em>\1</em>", t)
    t = re.sub(r"\[([^\]]+)\]\([^)]*\)", r"\1", t)  # no links out of a self-contained page
    return t


def _cells(line: str) -> list[str]:
    s = line.strip()
    if s.startswith("|"):
        s = s[1:]
    if s.endswith("|") and not s.endswith("\\|"):
        s = s[:-1]
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", s)]


def markdown_to_html(text: str, base: Path | None = None, used: set[Path] | None = None,
                     heading_offset: int = 2) -> str:
    """HTML of the Markdown that tympan's commands write: headings, paragraphs, pipe tables,
    bullet lists and images. An image that is a PNG file next to the document (``base``) is
    embedded and added to ``used``; any other image stays a note. Everything is escaped."""
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    para: list[str] = []

    def flush() -> None:
        if para:
            out.append(f"<p>{_inline(' '.join(para))}</p>")
            para.clear()

    while i < len(lines):
        line = lines[i].rstrip()
        s = line.strip()
        if not s:
            flush()
            i += 1
            continue
        m = re.match(r"^(#{1,6})\s+(.*)$", s)
        if m:
            flush()
            level = min(6, len(m.group(1)) + heading_offset)
            out.append(f"<h{level}>{_inline(m.group(2))}</h{level}>")
            i += 1
            continue
        if s.startswith("|") and i + 1 < len(lines) and _TABLE_RULE.match(lines[i + 1].strip()):
            flush()
            head = _cells(s)
            aligns = ["num" if c.strip().endswith(":") else "" for c in _cells(lines[i + 1])]
            i += 2
            rows = []
            while i < len(lines) and lines[i].strip().startswith("|"):
                rows.append(_cells(lines[i]))
                i += 1

            def cell(tag: str, j: int, v: str) -> str:
                cls = ' class="num"' if j < len(aligns) and aligns[j] else ""
                return f"<{tag}{cls}>{_inline(v)}</{tag}>"

            out.append(
                "<table><thead><tr>" + "".join(cell("th", j, v) for j, v in enumerate(head))
                + "</tr></thead><tbody>"
                + "".join("<tr>" + "".join(cell("td", j, v) for j, v in enumerate(r)) + "</tr>"
                          for r in rows)
                + "</tbody></table>"
            )
            continue
        if re.match(r"^[-*]\s+", s):
            flush()
            items = []
            while i < len(lines) and re.match(r"^\s*[-*]\s+", lines[i]):
                items.append(re.sub(r"^\s*[-*]\s+", "", lines[i]).strip())
                i += 1
            out.append("<ul>" + "".join(f"<li>{_inline(t)}</li>" for t in items) + "</ul>")
            continue
        m = _IMAGE.match(s)
        if m:
            flush()
            alt, target = m.group(1), m.group(2)
            path = (base / target) if base is not None else None
            if (path is not None and path.suffix.lower() == ".png" and path.is_file()
                    and path.stat().st_size <= MAX_IMAGE_BYTES and "://" not in target):
                out.append(_img(path.read_bytes(), alt or target))
                if used is not None:
                    used.add(path.resolve())
            else:
                out.append(f'<p class="muted">[figure {_e(target)} not found]</p>')
            i += 1
            continue
        para.append(s)
        i += 1
    flush()
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# figures drawn from the run's files


def _series(rows: Sequence[dict[str, float]], key: str) -> tuple[np.ndarray, np.ndarray]:
    pts = [(r["step"], r[key]) for r in rows if key in r]
    if not pts:
        return np.zeros(0), np.zeros(0)
    a = np.asarray(pts, dtype=float)
    return a[:, 0], a[:, 1]


def _smooth(y: np.ndarray, alpha: float = 0.1) -> np.ndarray:
    out = np.empty_like(y)
    acc = y[0]
    for i, v in enumerate(y):
        acc = alpha * v + (1 - alpha) * acc
        out[i] = acc
    return out


def loss_columns(columns: Sequence[str]) -> list[str]:
    """The total loss and every per-task ``*/loss`` (``train_loss`` when there is no ``loss``)."""
    keys = [c for c in columns if c == "loss" or c.endswith("/loss")]
    if "loss" not in keys and "train_loss" in columns:
        keys.insert(0, "train_loss")
    return keys


def loss_figure(rows: Sequence[dict[str, float]], columns: Sequence[str]) -> bytes | None:
    """Total and per-task losses against step, and the learning rate, as PNG bytes."""
    keys = loss_columns(columns)
    lr_keys = [c for c in columns if c == "lr" or c.startswith("lr-") or c.startswith("lr/")]
    if not keys or not rows:
        return None
    fig, axes = plt.subplots(1, 2 if lr_keys else 1, figsize=(11 if lr_keys else 7, 3.6),
                             squeeze=False, gridspec_kw={"width_ratios": [2, 1]} if lr_keys else None)
    ax = axes[0][0]
    labels = {k: k for k in keys}
    tasks = [k for k in keys if k.endswith("/loss")]
    if len(tasks) == 1 and len(keys) == 2:  # one task: its loss is the total, draw it once
        xt, yt = _series(rows, keys[0])
        xs, ys = _series(rows, tasks[0])
        if len(xt) == len(xs) and np.allclose(xt, xs) and np.allclose(yt, ys, rtol=1e-5, atol=1e-7):
            keys, labels = [tasks[0]], {tasks[0]: f"{tasks[0]} (= total loss)"}
    for i, key in enumerate(keys):
        x, y = _series(rows, key)
        if not len(x):
            continue
        total = key in ("loss", "train_loss")
        style = {"color": "black", "linewidth": 2.0, "zorder": 3} if total else {
            "color": f"C{i % 10}", "linewidth": 1.2}
        if len(x) > 60:
            ax.plot(x, y, alpha=0.25, linewidth=0.8, color=style["color"])
            ax.plot(x, _smooth(y), label=f"{labels[key]} (smoothed)", **style)
        else:
            ax.plot(x, y, marker="o" if len(x) < 25 else None, markersize=3, label=labels[key],
                    linestyle="--" if total and len(keys) > 1 else "-", **style)
    ax.set(xlabel="step", ylabel="loss", title="training loss (total and per task)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8)
    if lr_keys:
        ax2 = axes[0][1]
        for key in lr_keys:
            x, y = _series(rows, key)
            ax2.plot(x, y, linewidth=1.4, label=key)
        ax2.set(xlabel="step", ylabel="learning rate", title="learning rate")
        ax2.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax2.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        ax2.grid(alpha=0.3)
    fig.tight_layout()
    return _fig_png(fig)


_COLLAPSE_KINDS: tuple[tuple[str, str], ...] = (
    ("embed_std", "embedding std (0 = collapsed)"),
    ("effective_rank", "effective rank of the batch"),
    ("prototype_usage", "fraction of prototypes used"),
    ("pos_cos", "positive-pair cosine"),
)


def collapse_columns(columns: Sequence[str]) -> dict[str, list[str]]:
    """``{kind: [task/kind columns]}`` for the collapse monitors present in ``metrics.csv``."""
    out = {}
    for kind, _ in _COLLAPSE_KINDS:
        cols = [c for c in columns if c.endswith("/" + kind)]
        if cols:
            out[kind] = cols
    return out


def collapse_figure(rows: Sequence[dict[str, float]], columns: Sequence[str],
                    events: Sequence[dict[str, Any]] = ()) -> bytes | None:
    """One panel per collapse monitor, one line per task, the monitor's floor dashed and each
    flagged event marked; ``None`` when ``metrics.csv`` has none of the columns."""
    present = collapse_columns(columns)
    if not present or not rows:
        return None
    th = collapse_thresholds()
    floors = {"effective_rank": th["min_rank"], "prototype_usage": th["min_usage"]}
    titles = dict(_COLLAPSE_KINDS)
    n = len(present)
    fig, axes = plt.subplots(1, n, figsize=(min(4.2 * n, 16), 3.3), squeeze=False)
    for ax, (kind, cols) in zip(axes[0], present.items()):
        for i, col in enumerate(cols):
            x, y = _series(rows, col)
            ax.plot(x, y, linewidth=1.3, color=f"C{i % 10}", label=col.rsplit("/", 1)[0])
        floor = floors.get(kind)
        if floor is not None:
            ax.axhline(floor, color="#b42318", linestyle="--", linewidth=1, label="collapse floor")
        for ev in events:
            if ev.get("metric") == kind and isinstance(ev.get("step"), (int, float)):
                ax.plot([ev["step"]], [ev.get("value", np.nan)], "x", color="#b42318",
                        markersize=9, markeredgewidth=2)
                if kind == "embed_std" and isinstance(ev.get("threshold"), (int, float)):
                    ax.axhline(ev["threshold"], color="#b42318", linestyle="--", linewidth=1)
        ax.set_title(titles[kind], fontsize=9)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _fig_png(fig)


def _confusion_figure(conf: dict[str, Any]) -> bytes | None:
    classes = [str(c) for c in conf.get("classes") or []]
    m = np.asarray(conf.get("matrix") or [], dtype=float)
    if not classes or m.shape != (len(classes), len(classes)):
        return None
    size = min(2.2 + 0.26 * len(classes), 10)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(m, cmap="Blues")
    if len(classes) <= 25:
        for i in range(len(classes)):
            for j in range(len(classes)):
                if m[i, j]:
                    ax.text(j, i, f"{m[i, j]:g}", ha="center", va="center", fontsize=7,
                            color="white" if m[i, j] > m.max() / 2 else "black")
    ax.set_xticks(range(len(classes)))
    ax.set_xticklabels(classes, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(classes)))
    ax.set_yticklabels(classes, fontsize=7)
    ax.set(xlabel="predicted class", ylabel="true class", title="confusion matrix (first run, test)")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return _fig_png(fig)


# ---------------------------------------------------------------------------------------------
# sections


class _Page:
    """Collects sections, the navigation and the images already shown."""

    def __init__(self, c: RunContents) -> None:
        self.c = c
        self.sections: list[tuple[str, str, str]] = []
        self.used: set[Path] = set()
        self.notes: list[str] = []  # figure failures, shown under "Files"

    def add(self, anchor: str, title: str, body: str) -> None:
        self.sections.append((anchor, title, body))

    def use(self, rel: Path) -> None:
        self.used.add((self.c.root / rel).resolve())

    def figure(self, what: str, draw: Callable[[], bytes | None]) -> bytes | None:
        """Draw a figure; a failure (odd values in a file) becomes a note, not a crash."""
        try:
            return draw()
        except Exception as e:  # noqa: BLE001 - the report must survive any one figure
            self.notes.append(f"{what}: the figure could not be drawn ({type(e).__name__}: {e})")
            return None


def _summary(p: _Page) -> str:
    c = p.c
    r = c.recipe
    pj = c.pretrain or {}
    rows: list[tuple[str, Any]] = [("run folder", str(c.root)), ("kind", _KIND_TITLES[c.kind])]
    if r is not None:
        pre = "backbone " if c.kind == "finetune" else ""  # config.yaml is the backbone's recipe
        rows += [(pre + "recipe", r.name), (pre + "method", r.method)]
        tasks = []
        for t in r.tasks:
            desc, seed = objective_origin(t.objective)
            tasks.append(f"{t.name}: {t.objective} (weight {t.weight:g}) — {desc}; "
                         f"{seed_label(seed, short=True)}")
        rows.append((pre + "tasks", Raw("<br>".join(_e(t) for t in tasks))))
        m = r.model
        arch = f"{m.arch}, width {m.width}, adapter {m.adapter}"
        arch += ", split head" if m.split_head else ""
        arch += f", {m.pooling} pooling" + (f" to {m.embed_dim}" if m.embed_dim else "")
        if m.options:
            arch += f", options {json.dumps(m.options, sort_keys=True)}"
        rows.append(("architecture", arch))
        f = r.frontend
        rows.append(("input", f"mono {r.audio.sample_rate} Hz, {r.audio.clip_seconds:g} s crops; "
                              f"log-mel {f.n_mels} bands, n_fft {f.n_fft}, hop {f.hop_length}, "
                              f"{f.channels} channel(s)"))
    fr = c.finetune_result
    if fr is not None:
        d = fr.data
        desc, seed = objective_origin(str(d.get("method")))
        rows += [("fine-tuning", f"{d.get('method')} of backbone {d.get('backbone')} "
                                 f"({d.get('protocol')}; {d.get('validation')}) — {desc}; "
                                 f"{seed_label(seed, short=True)}")]
    size = c.parameters_text(_num)
    if size is not None:
        rows.append(("parameters", size))
    params = pj.get("parameters") or {}
    if isinstance(params.get("heads"), int):
        extra = f"heads {params['heads']:,} (trainable, discarded after pretraining)"
        if params.get("teachers"):
            extra += f"; EMA teachers {params['teachers']:,}"
        rows.append(("training-only parameters", extra))
    if pj:
        planned = r.train.max_steps if r is not None else None
        steps = f"{pj.get('steps')}" + (f" of {planned} planned" if planned else "")
        if r is not None:
            steps += (f"; batch {r.train.batch_size}, lr {r.train.lr:g} (warm-up "
                      f"{r.train.warmup_steps} steps, cosine decay)")
        rows.append(("steps", steps))
        rows.append(("wall time", _seconds(pj.get("wall_seconds"))))
        rows.append(("clips", f"{pj.get('clips')} ({pj.get('n_skipped', len(pj.get('skipped') or []))} "
                              "skipped)"))
    elif c.metrics:
        rows.append(("steps", f"{int(max(row['step'] for row in c.metrics))} logged "
                              "(no pretrain.json: training did not finish, or the file is missing)"))
    data = c.training_data
    why = looks_synthetic(data, c.root)
    if c.kind != "results":
        label = "fine-tuning data" if c.kind == "finetune" else "training data"
        rows.append((label, (data + (f" (synthetic: {why})" if why else "")) if data else
                     "not recorded (pretrain.json does not name the manifest)"))
    ev = c.evaluation_data
    if ev:
        rows.append(("evaluation data", ", ".join(
            e + (" (synthetic: tympan's embedded corpus)" if looks_synthetic(e, c.root) else "")
            for e in ev)))
    if c.subruns:
        rows.append(("runs inside", ", ".join(s.as_posix() for s in c.subruns)))
    banner = ""
    if c.collapsed:
        banner = ('<div class="warn"><strong>Collapse was flagged during training.</strong> '
                  'See <a href="#collapse">collapse monitors</a>: the embeddings of at least one '
                  "task stopped spreading out; results below may reflect a degenerate encoder.</div>")
    elif c.collapse:
        banner = '<div class="ok">No collapse was flagged during training.</div>'
    return banner + _kv(rows)


def _training(p: _Page) -> str:
    c = p.c
    if not c.metrics:
        saved = Path("training.png")
        if saved in c.images:
            p.use(saved)
            return (_absent("metrics.csv (per-step losses)") +
                    "<p>The curves saved at the end of training (<code>training.png</code>):</p>"
                    + _img((c.root / saved).read_bytes(), "training curves"))
        if c.kind == "finetune":
            return ('<p class="muted">A fine-tuning run logs validation accuracy per epoch instead; '
                    'see <a href="#finetune">fine-tuning</a>.</p>')
        return _absent("metrics.csv with per-step losses (tympan pretrain writes it while training)")
    png = p.figure("loss curves", lambda: loss_figure(c.metrics, c.metric_columns))
    if (c.root / "training.png").is_file():
        p.use(Path("training.png"))  # superseded by the curves drawn here
    if png is None:
        return _absent("loss columns in metrics.csv")
    last = c.metrics[-1]
    keys = loss_columns(c.metric_columns)
    cells = ", ".join(f"{k} {last[k]:.4g}" for k in keys if k in last)
    return (_img(png, "training loss and learning rate") +
            f'<p class="muted">{len(c.metrics)} logged steps from <code>metrics.csv</code>; last '
            f"(step {int(last['step'])}): {_e(cells)}.</p>")


def _collapse(p: _Page) -> str:
    c = p.c
    summary = c.collapse
    events = summary.get("events") or []
    parts = []
    th = collapse_thresholds()
    if c.collapsed:
        parts.append('<div class="warn"><strong>Possible collapse flagged.</strong> Check the '
                     "learning rate, the EMA/temperature settings and the views.</div>")
    elif summary:
        parts.append('<div class="ok">The collapse monitor flagged nothing.</div>')
    png = p.figure("collapse monitors", lambda: collapse_figure(c.metrics, c.metric_columns, events))
    if png is not None:
        parts.append(_img(png, "collapse monitors"))
    elif c.metrics:
        parts.append(_absent("collapse columns (*/embed_std, */effective_rank, */prototype_usage) "
                             "in metrics.csv"))
    parts.append(
        f'<p class="muted">Flagged when a task\'s <code>embed_std</code> &lt; '
        f"{th['std_ratio']:g}/√D, its <code>effective_rank</code> &lt; {th['min_rank']:g}, or its "
        f"<code>prototype_usage</code> &lt; {th['min_usage']:g} "
        "(<code>tympan.training.collapse.CollapseMonitor</code>).</p>")
    if events:
        parts.append("<h3>Flagged events</h3>" + _table(
            ["step", "task", "metric", "value", "threshold"],
            [[ev.get("step"), ev.get("task"), ev.get("metric"), _num(ev.get("value"), 4),
              _num(ev.get("threshold"), 4)] for ev in events], numeric=[0, 3, 4]))
    last = summary.get("last") or {}
    if last:
        parts.append("<h3>Last logged values (pretrain.json)</h3>" + _table(
            ["monitor", "value"], [[k, _num(v, 4)] for k, v in last.items()], numeric=[1]))
    if not summary and c.kind in ("pretrain", "encoder"):
        parts.append(_absent("the collapse summary of pretrain.json"))
    return "".join(parts)


def _fewshot_section(p: _Page) -> str:
    c = p.c
    if not c.fewshot:
        return ""
    rows = []
    for f in c.fewshot:
        d = f.data
        acc, ci = d.get("accuracy"), d.get("ci95")
        interval = (f"[{acc - ci:.2f}, {acc + ci:.2f}]"
                    if isinstance(acc, (int, float)) and isinstance(ci, (int, float)) else "")
        rows.append([f.path.as_posix(), d.get("model"), d.get("split") or "", d.get("task") or "all",
                     f"{d.get('ways')}-way {d.get('shots')}-shot", _num(d.get("queries")),
                     _num(d.get("episodes")), _num(acc), _num(ci), interval])
    out = ("<h3>Few-shot classification</h3><p>Accuracy (%) of a linear readout on frozen "
           "embeddings, mean ± 95% CI half-width over episodes.</p>"
           + _table(["file", "model", "split", "features", "setting", "queries", "episodes",
                     "accuracy (%)", "± 95% CI", "95% interval"], rows,
                    numeric=[5, 6, 7, 8, 9]))
    records = [f.data for f in c.fewshot if all(k in f.data for k in ("model", "ways", "shots"))]
    if len(records) > 1:
        png = p.figure("few-shot bars", lambda: _via_file(lambda path: plots.plot_fewshot(records, path)))
        if png:
            out += _img(png, "few-shot accuracy with 95% CI")
    return out


def _probe_section(p: _Page) -> str:
    c = p.c
    out = []
    for f in c.probes:
        d = f.data
        pr = d["probe"]
        b = pr.get("bootstrap") or {}
        frac = b.get("fraction")
        share = f"{100 * frac:.0f}%" if isinstance(frac, (int, float)) else "?"
        rows = []
        for metric, v in (pr.get("metrics") or {}).items():
            mean, std = v.get("mean"), v.get("std")
            approx = (f"[{mean - 1.96 * std:.4f}, {mean + 1.96 * std:.4f}]"
                      if isinstance(mean, (int, float)) and isinstance(std, (int, float)) else "")
            rows.append([METRIC_TITLES.get(metric, metric), _num(mean, 4), _num(std, 4), approx,
                         _num((pr.get("full_test") or {}).get(metric), 4)])
        out.append(
            f"<h4>{_e(pr.get('kind', d.get('kind')))} probe of {_e(d.get('model'))} on "
            f"{_e(d.get('data'))} ({_e(pr.get('task', d.get('task')))}) — {_code(f.path.as_posix())}</h4>"
            f"<p class=muted>Bootstrap over {_e(b.get('draws'))} draws of {_e(share)} of the test set; n_train {_e(pr.get('n_train'))}, n_val {_e(pr.get('n_val'))}, "
            f"n_test {_e(pr.get('n_test'))}, {_e(pr.get('n_classes'))} classes, best epoch "
            f"{_e(pr.get('best_epoch'))}.</p>"
            + _table(["metric", "bootstrap mean", "± std", "≈95% interval (mean ± 1.96 std)",
                      "full test set"], rows, numeric=[1, 2, 3, 4]))
        if pr.get("excluded_classes"):
            out.append(f'<p class="muted">Classes left out of the full-test averages (no positive '
                       f"or no negative): {_e(', '.join(map(str, pr['excluded_classes'])))}.</p>")
        ld = d.get("limited_data")
        if isinstance(ld, dict) and ld.get("fractions"):
            name = Path(str(d.get("model"))).name or str(d.get("model"))
            png = p.figure("limited-data curve", lambda: _via_file(
                lambda path: plots.plot_limited_data({name: ld}, path)))
            if png:
                out.append(_img(png, "limited-data curve"))
                beside = f.path.parent / "limited_data.png"
                if (c.root / beside).is_file():
                    p.use(beside)
    if not out:
        return ""
    return "<h3>Probes</h3>" + "".join(out)


def _finetune_section(p: _Page) -> str:
    c = p.c
    out = []
    for f in c.finetune:
        d = f.data
        acc = d.get("test_accuracy") or {}
        mean, std, ci, n = acc.get("mean"), acc.get("std"), acc.get("ci95"), acc.get("n")
        pct = lambda v: _num(100 * v) if isinstance(v, (int, float)) else "n/a"  # noqa: E731
        out.append(
            f"<h4>{_e(d.get('method'))} of {_e(d.get('backbone'))} — {_code(f.path.as_posix())}</h4>"
            f"<p>Protocol: {_e(d.get('protocol'))} ({_e(d.get('validation'))}); "
            f"{_e(len(d.get('classes') or []))} classes.</p>"
            + _table(["runs", "test accuracy (%) mean", "± std", "± 95% CI", "val accuracy (%) mean"],
                     [[_num(n), pct(mean), pct(std), pct(ci), pct(d.get("val_accuracy_mean"))]],
                     numeric=[0, 1, 2, 3, 4]))
        runs = [r for r in d.get("runs") or [] if isinstance(r, dict)]
        if runs:
            out.append("<details><summary>every run</summary>" + _table(
                ["run", "seed", "fold", "test acc (%)", "val acc (%)", "best epoch"],
                [[r.get("name"), r.get("seed"), "" if r.get("fold") is None else r.get("fold"),
                  pct(r.get("test_accuracy")), pct(r.get("val_accuracy")), r.get("best_epoch")]
                 for r in runs], numeric=[1, 2, 3, 4, 5]) + "</details>")
        folder = f.path.parent
        conf_path = c.root / folder / "confusion.json"
        if conf_path.is_file():
            try:
                conf = json.loads(conf_path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                p.notes.append(f"{(folder / 'confusion.json').as_posix()}: not readable ({e})")
            else:
                png = p.figure("confusion matrix", lambda: _confusion_figure(conf))
                if png:
                    out.append(_img(png, "confusion matrix"))
        conv_png = c.root / folder / "analysis" / "convergence.png"
        conv_csv = c.root / folder / "convergence.csv"
        if conv_csv.is_file() and not conv_png.is_file():
            def draw_convergence() -> bytes:
                from tympan.analysis.geometry import read_convergence, summarize_convergence

                summary = summarize_convergence(read_convergence(conv_csv))
                return _via_file(lambda path: plots.plot_convergence(summary, path))

            png = p.figure("convergence", draw_convergence)
            if png:
                out.append(_img(png, "validation accuracy per epoch"))
    if not out:
        return ""
    # its own anchor, for the link from the training section of a fine-tuning run
    return '<h3 id="finetune">Fine-tuning</h3>' + "".join(out)


def _documents_section(p: _Page) -> str:
    out = []
    for f in p.c.documents:
        base = (p.c.root / f.path).parent
        out.append(f"<h3>{_code(f.path.as_posix())}</h3><div class=doc>"
                   + markdown_to_html(f.data, base, p.used, heading_offset=2) + "</div>")
    return "".join(out)


def _results(p: _Page) -> str:
    body = _fewshot_section(p) + _probe_section(p) + _finetune_section(p) + _documents_section(p)
    c = p.c
    missing = [a.piece for a in c.absent()
               if a.piece in ("few-shot results", "probe results", "fine-tuning results")]
    note = ""
    if missing and c.kind != "results":
        note = (f'<p class="absent">Not in this run: {_e(", ".join(missing))}. '
                'See <a href="#absent">what is missing</a> for the commands.</p>')
    return body + note


def _invariance(p: _Page) -> str:
    c = p.c
    if not c.invariance:
        cmd = c.command_for("invariance")
        return _absent("the learnt-invariance analysis", cmd)
    out = []
    for f in c.invariance:
        d = f.data
        ops = list(d.get("ops") or [])
        tasks = list(d.get("tasks") or d.get("distances") or [])
        dist, ci = d.get("distances") or {}, d.get("ci95") or {}
        png = p.figure("invariance heatmap", lambda: _via_file(lambda path: plots.plot_invariance_heatmap(
            d, path, title="Mahalanobis distance (lower = more invariant)")))
        beside = f.path.parent / "invariance.png"
        if png and (c.root / beside).is_file():
            p.use(beside)
        rows = []
        for t in tasks:
            cells = [t]
            for op in [*ops, "avg"]:
                v, h = (dist.get(t) or {}).get(op), (ci.get(t) or {}).get(op)
                cells.append(f"{_num(v)} ± {_num(h)}" if isinstance(v, (int, float)) else "")
            rows.append(cells)
        out.append(
            f"<p>{_code(f.path.as_posix())}: mean Mahalanobis distance between the embeddings of "
            f"{_e(d.get('num_clips'))} original and augmented clips of {_e(d.get('data'))}, each op "
            "applied alone (± 95% CI over clips; lower = more invariant).</p>"
            + (_img(png, "invariance heatmap") if png else "")
            + _table(["head", *ops, "average"], rows, numeric=range(1, len(ops) + 2)))
    return "".join(out)


def _head_weights(p: _Page) -> str:
    c = p.c
    if not c.head_weights:
        cmd = c.command_for("head weights")
        return _absent("the head-weight analysis", cmd)
    out = []
    for f in c.head_weights:
        datasets = f.data.get("datasets") or {}
        tasks = list(dict.fromkeys(t for v in datasets.values() for t in v.get("weights") or {}))
        rows = []
        for name, v in datasets.items():
            w, ci = v.get("weights") or {}, v.get("ci95") or {}
            rows.append([name, f"{v.get('ways')}-way {v.get('shots')}-shot, {v.get('episodes')} episodes",
                         f"{_num(v.get('accuracy'))} ± {_num(v.get('accuracy_ci95'))}",
                         *[f"{_num(w.get(t), 4)} ± {_num(ci.get(t), 4)}" if t in w else "" for t in tasks]])
        out.append(f"<p>{_code(f.path.as_posix())}: mean |weight| of the few-shot linear readout on "
                   "each head's features (± 95% CI over episodes); a larger value means the "
                   "classifier leans on that head.</p>"
                   + _table(["dataset", "setting", "accuracy (%)", *tasks], rows,
                            numeric=range(2, len(tasks) + 3)))
    return "".join(out)


def _geometry(p: _Page) -> str:
    c = p.c
    if not c.geometry:
        cmd = c.command_for("geometry and UMAP")
        body = _absent("the geometry analysis (anisotropy, dimensional contribution, UMAP)", cmd)
    else:
        parts = []
        for f in c.geometry:
            md = c.root / f.path.with_suffix(".md")
            if md.is_file():
                text = md.read_text(encoding="utf-8", errors="replace")
                parts.append(f"<p>{_code(f.path.with_suffix('.md').as_posix())}</p>"
                             + markdown_to_html(text, md.parent, p.used, heading_offset=2))
            else:
                runs = [r for r in f.data.get("runs") or [] if isinstance(r, dict)]
                parts.append(f"<p>{_code(f.path.as_posix())}</p>" + _table(
                    ["run", "N", "D", "anisotropy"],
                    [[r.get("name"), r.get("n"), r.get("dim"), _num(r.get("anisotropy"), 4)] for r in runs],
                    numeric=[1, 2, 3]))
                for name in ("umap_confused.png", "convergence.png"):
                    img = f.path.parent / name
                    if (c.root / img).is_file():
                        parts.append(_img((c.root / img).read_bytes(), name))
                        p.use(img)
        body = "".join(parts)
    return body


def _other_figures(p: _Page) -> str:
    c = p.c
    left = [rel for rel in c.images if (c.root / rel).resolve() not in p.used]
    if not left:
        return ""
    out = []
    for rel in left[:MAX_OTHER_IMAGES]:
        path = c.root / rel
        try:
            size = path.stat().st_size
            if size > MAX_IMAGE_BYTES:
                out.append(f'<p class="muted">{_code(rel.as_posix())}: {_bytes(size)}, '
                           "too large to embed.</p>")
                continue
            out.append(f"<h4>{_code(rel.as_posix())}</h4>" + _img(path.read_bytes(), rel.as_posix()))
        except OSError as e:
            out.append(f'<p class="muted">{_code(rel.as_posix())}: not readable ({_e(e)}).</p>')
    if len(left) > MAX_OTHER_IMAGES:
        out.append(f'<p class="muted">… and {len(left) - MAX_OTHER_IMAGES} more PNG files '
                   "(see the file list).</p>")
    return "".join(out)


def _absent_section(p: _Page) -> str:
    items = p.c.absent()
    if not items:
        return '<p class="ok">Every piece a report can show is present.</p>'
    lis = []
    for a in items:
        cmd = f"<br>{_code(a.command)}" if a.command else ""
        lis.append(f"<li><strong>{_e(a.piece)}</strong>: {_e(a.why)}{cmd}</li>")
    data_note = ""
    if "MANIFEST" in " ".join(a.command or "" for a in items):
        data_note = ('<p class="muted">MANIFEST: the labelled manifest to evaluate on (no file '
                     "of this run names one).</p>")
    return f'<ul class="absent-list">{"".join(lis)}</ul>{data_note}'


def _recipe(p: _Page) -> str:
    c = p.c
    if c.recipe_text is None:
        return _absent("config.yaml (the resolved recipe)")
    return ("<details><summary>resolved recipe (config.yaml)</summary>"
            f"<pre>{_e(c.recipe_text)}</pre></details>")


def _files(p: _Page) -> str:
    c = p.c
    rows = [[name, _bytes(size)] for name, size in c.files]
    out = _table(["file", "size"], rows, numeric=[1])
    if c.files_left_out:
        out += f'<p class="muted">… and {c.files_left_out} more files.</p>'
    if c.subruns:
        out += ("<p>Runs inside this folder (each has its own report): "
                + ", ".join(_code(s.as_posix()) for s in c.subruns) + ".</p>")
    problems = [*c.problems, *p.notes]
    if problems:
        out += "<h3>Files that could not be used</h3><ul>" + "".join(
            f"<li>{_e(x)}</li>" for x in problems) + "</ul>"
    return out


def render_report(c: RunContents, *, generated: str | None = None) -> str:
    """The HTML text of the report of gathered run contents ``c``."""
    p = _Page(c)
    p.add("summary", "Summary", _summary(p))
    if c.kind in ("pretrain", "encoder"):
        p.add("training", "Loss curves", _training(p))
        p.add("collapse", "Collapse monitors", _collapse(p))
    results = _results(p)
    p.add("results", "Results", results)
    if c.kind != "results":
        p.add("invariance", "Invariance per augmentation", _invariance(p))
        p.add("head-weights", "Head weights", _head_weights(p))
    if c.kind != "results" or (c.geometry and not c.documents):
        # a reproduce folder's results.md already carries its geometry and figures
        p.add("geometry", "Geometry, UMAP and convergence", _geometry(p))
    other = _other_figures(p)
    if other:
        p.add("figures", "Other figures", other)
    p.add("absent", "Not in this run", _absent_section(p))
    if c.kind != "results" or c.recipe_text is not None:
        p.add("recipe", "Recipe", _recipe(p))
    p.add("files", "Files", _files(p))
    body = "\n".join(f'<section id="{a}"><h2>{_e(t)}</h2>\n{b}\n</section>' for a, t, b in p.sections)
    nav = "".join(f'<a href="#{a}">{_e(t)}</a>' for a, t, _ in p.sections)
    when = generated or _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    title = f"tympan report: {c.name}"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"<header><h1>{_e(title)}</h1><p class=\"meta\">{_e(_KIND_TITLES[c.kind])} · "
        f"{_e(str(c.root))} · generated {_e(when)} by tympan {_e(__version__)}</p>"
        f"<nav>{nav}</nav></header>\n<main>\n{body}\n</main>\n</body>\n</html>\n"
    )


def write_report(run: str | Path, out: str | Path | None = None) -> Path:
    """Write the self-contained HTML report of run directory ``run`` (module docstring) to
    ``out`` (default ``RUN/report.html``; a folder gets ``report.html`` inside) and return its
    path.

    Raises:
        TympanError: ``run`` is not a run directory, or ``out`` cannot be written.
    """
    contents = gather_run(run)
    return write_atomic(output_path(Path(run), out, REPORT_FILE), render_report(contents))
