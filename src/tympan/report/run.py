"""What a run directory holds, gathered once for the HTML report and the model card.

A run directory (ARCHITECTURE.md, "Contracts") is written by several commands, each adding its
own files, and any of them may be missing: ``tympan pretrain`` writes ``config.yaml``,
``encoder.safetensors``, ``metrics.csv``, ``pretrain.json`` and ``training.png``;
``tympan fewshot --json`` and ``tympan probe --out/--json`` write result JSONs wherever they are
told; ``tympan analyze`` writes ``analysis/{invariance,head_weights,geometry}.*`` and figures;
``tympan finetune`` writes a run of its own (``results.json``, ``convergence.csv``,
``confusion.json``, ``config.yaml`` + ``encoder.safetensors``); ``tympan reproduce`` and
``tympan demo`` write folders with ``results.md``/``results.json`` and one run per method.

:func:`gather_run` reads whatever is there, recognises result JSONs by their shape (not by their
file name, since ``--json`` can name them anything), never fails because a piece is missing or
unreadable (it records a note instead), and says for each missing piece which command would
produce it (:meth:`RunContents.absent`). A folder holding none of a run's files is a
:class:`~tympan.errors.TympanError`.
"""

from __future__ import annotations

import csv
import functools
import json
import math
import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable
from typing import Any

import yaml

from tympan.config import Recipe, load_recipe
from tympan.errors import TympanError
from tympan.report.tables import format_parameters

__all__ = [
    "Absent", "Found", "RunContents", "SEED_DOCUMENTS", "collapse_thresholds", "gather_run",
    "objective_origin", "looks_synthetic", "output_path", "write_atomic",
]

#: files whose presence makes a folder a run (or a results folder) worth reporting
RUN_MARKERS: tuple[str, ...] = (
    "config.yaml", "encoder.safetensors", "pretrain.json", "metrics.csv", "results.json",
)
#: folders never searched for results (Lightning pickles, caches)
SKIP_DIRS: frozenset[str] = frozenset({"checkpoints", "__pycache__", ".git", ".staging"})
#: result JSONs larger than this are listed but not parsed (embeddings belong in .npz files)
MAX_JSON_BYTES = 20 * 1024 * 1024
#: how deep below the run folder results are searched
MAX_DEPTH = 3
#: files shown in the listing before it is cut short
MAX_LISTED_FILES = 300

#: the source documents (``../shared/seeds/``) that tympan's methods come from
SEED_DOCUMENTS: dict[str, str] = {
    "000": "MT-SLVR: multi-task self-supervised learning for transformation in(variant) "
           "representations (Heggan et al., InterSpeech 2023), long-form explanation",
    "001": "MT-SLVR (arXiv 2305.17191), structured summary",
    "002": "AudioConFit: audio contrastive-based fine-tuning (Wang et al.)",
    "003": "An experimental comparison of multi-view self-supervised methods for music tagging "
           "(Meseguer-Brocal, Desblancs, Hennequin)",
    "004": "Pretext-task selection by conditional independence (Zaiem & Parcollet)",
}

#: objective name (``tasks[].objective``) -> (what it is, the seed document it is taken from)
_OBJECTIVES: dict[str, tuple[str, str]] = {
    "nt_xent": ("SimCLR, NT-Xent contrastive loss (Chen et al., 2020)", "000"),
    "simsiam": ("SimSiam, stop-gradient negative cosine (Chen & He, 2021)", "000"),
    "aug_prediction": ("multi-label augmentation prediction (MT-SLVR)", "000"),
    "byol": ("BYOL, EMA teacher (Grill et al., 2020)", "003"),
    "dino": ("DINO-style clustering (Caron et al., 2021)", "003"),
    "barlow_twins": ("Barlow Twins (Zbontar et al., 2021)", "003"),
    "vicreg": ("VICReg (Bardes et al., 2022)", "003"),
    "pretext_workers": ("weighted pretext-task label workers", "004"),
    "pase": ("PASE-like workers: mel, MFCC and weighted pretext labels", "004"),
    "pairtune": ("PairTune: supervised contrastive fine-tuning with hard pair mining, then a "
                 "linear classifier", "002"),
    "finetune": ("plain end-to-end cross-entropy fine-tuning (AudioConFit's baseline)", "002"),
}


def objective_origin(objective: str) -> tuple[str, str | None]:
    """``(description, seed document)`` of an objective name; the seed is read from the task
    module's docstring (``../shared/seeds/NNN_...``) when the objective is not in the table."""
    if objective in _OBJECTIVES:
        desc, seed = _OBJECTIVES[objective]
        return desc, seed
    try:
        from tympan.methods.registry import TASKS

        builder = TASKS.get(objective)
        doc = (sys.modules[builder.__module__].__doc__ or "") if builder is not None else ""
    except Exception:  # noqa: BLE001 - a registry that fails to import only loses the citation
        doc = ""
    m = re.search(r"seeds/(\d{3})_[0-9a-f]+\.txt", doc)
    return objective, (m.group(1) if m else None)


#: short names of the seed documents, for one-line mentions
SEED_SHORT: dict[str, str] = {
    "000": "MT-SLVR", "001": "MT-SLVR, arXiv 2305.17191", "002": "AudioConFit",
    "003": "multi-view SSL for music tagging", "004": "pretext-task selection, Zaiem & Parcollet",
}


def seed_label(seed: str | None, short: bool = False) -> str:
    """``"seed 000 (MT-SLVR ...)"`` for a seed number (``short``: the document's short name),
    ``"unknown"`` for ``None``."""
    if seed is None:
        return "unknown"
    names = SEED_SHORT if short else SEED_DOCUMENTS
    return f"seed {seed} ({names.get(seed, 'see ../shared/seeds/')})"


#: :class:`~tympan.training.collapse.CollapseMonitor`'s defaults, used if its source is unreadable
_COLLAPSE_DEFAULTS: dict[str, float] = {"std_ratio": 0.1, "min_rank": 2.0, "min_usage": 0.05}


@functools.lru_cache(maxsize=1)
def collapse_thresholds() -> dict[str, float]:
    """The :class:`~tympan.training.collapse.CollapseMonitor` defaults: ``std_ratio`` (the
    ``embed_std`` floor is ``std_ratio / sqrt(D)``), ``min_rank`` and ``min_usage``.

    Read from the module's source with :mod:`ast` rather than imported: importing it imports
    Lightning, which costs seconds and a report needs none of it.
    """
    import ast
    import importlib.util

    found = dict(_COLLAPSE_DEFAULTS)
    try:
        spec = importlib.util.find_spec("tympan.training.collapse")
        tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))  # type: ignore[union-attr, arg-type]
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and node.name == "CollapseMonitor":
                init = next(n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
                args = init.args.args[len(init.args.args) - len(init.args.defaults):]
                for arg, default in zip(args, init.args.defaults):
                    if arg.arg in found:
                        found[arg.arg] = float(ast.literal_eval(default))
    except Exception:  # noqa: BLE001 - fall back to the documented defaults
        return dict(_COLLAPSE_DEFAULTS)
    return found


def _count(v: Any) -> str:
    """A count with thousands separators (anything else as it is)."""
    return f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v)


@dataclass
class Found:
    """A result read from ``path`` (relative to the run folder)."""

    path: Path
    data: Any


@dataclass
class Absent:
    """A piece the run does not hold, and the command that would produce it."""

    piece: str
    why: str
    command: str | None = None


@dataclass
class RunContents:
    """Everything :func:`gather_run` found in a run folder (see the module docstring).

    ``kind`` is ``"pretrain"`` (``pretrain.json`` or ``metrics.csv``), ``"finetune"`` (a
    ``results.json`` of ``tympan finetune``), ``"encoder"`` (weights and config only) or
    ``"results"`` (a ``tympan reproduce``/``demo`` folder).
    """

    root: Path
    kind: str
    recipe: Recipe | None = None
    recipe_text: str | None = None
    pretrain: dict[str, Any] | None = None
    metrics: list[dict[str, float]] = field(default_factory=list)
    metric_columns: list[str] = field(default_factory=list)
    fewshot: list[Found] = field(default_factory=list)
    probes: list[Found] = field(default_factory=list)
    finetune: list[Found] = field(default_factory=list)
    invariance: list[Found] = field(default_factory=list)
    head_weights: list[Found] = field(default_factory=list)
    geometry: list[Found] = field(default_factory=list)
    #: ``results.md`` of reproduce/demo folders: ``data`` is the Markdown text
    documents: list[Found] = field(default_factory=list)
    #: every PNG below the run (relative paths), sub-runs excluded
    images: list[Path] = field(default_factory=list)
    #: ``(relative path, bytes)`` of the files, cut at :data:`MAX_LISTED_FILES`
    files: list[tuple[str, int]] = field(default_factory=list)
    files_left_out: int = 0
    #: sub-folders that are runs of their own (reproduce folders, ``demo/simclr``)
    subruns: list[Path] = field(default_factory=list)
    #: files that exist but could not be read, with the reason
    problems: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.root.resolve().name or str(self.root)

    @property
    def collapse(self) -> dict[str, Any]:
        """The ``pretrain.json`` collapse summary (``{}`` when not recorded)."""
        c = (self.pretrain or {}).get("collapse")
        return c if isinstance(c, dict) else {}

    @property
    def collapsed(self) -> bool:
        return bool(self.collapse.get("collapsed"))

    @property
    def encoder_breakdown(self) -> dict[str, Any] | None:
        b = ((self.pretrain or {}).get("parameters") or {}).get("encoder_breakdown")
        return b if isinstance(b, dict) and "total" in b else None

    @property
    def encoder_parameters(self) -> int | None:
        """Encoder parameter count from ``pretrain.json``, else from a fine-tuning result."""
        p = (self.pretrain or {}).get("parameters") or {}
        if isinstance(p.get("encoder"), int):
            return p["encoder"]
        for f in self.finetune:
            n = (f.data.get("parameters") or {}).get("encoder_after")
            if isinstance(n, int):
                return n
        return None

    @property
    def training_data(self) -> str | None:
        """The manifest the encoder was trained on, where a file records it."""
        for key in ("data", "manifest"):
            v = (self.pretrain or {}).get(key)
            if isinstance(v, dict):  # pretrain.json's data record: kind, source, clips, ...
                v = v.get("source")
            if v:
                return str(v)
        for f in self.finetune:
            v = (f.data.get("settings") or {}).get("data")
            if v:
                return str(v)
        return None

    @property
    def evaluation_data(self) -> list[str]:
        """Datasets named by the evaluation results (probe and invariance records name theirs;
        few-shot JSONs do not)."""
        seen: dict[str, None] = {}
        for f in [*self.probes, *self.invariance]:
            if f.data.get("data"):
                seen[str(f.data["data"])] = None
        for f in self.head_weights:
            for name in f.data.get("datasets") or {}:
                seen[str(name)] = None
        return list(seen)

    def any_data(self) -> str | None:
        """A manifest to put in suggested commands: the training data, else an evaluation one."""
        if self.training_data:
            return self.training_data
        for f in [*self.invariance, *self.probes]:  # invariance reads the pretraining data
            if f.data.get("data"):
                return str(f.data["data"])
        return None

    @property
    def has_results(self) -> bool:
        return bool(self.fewshot or self.probes or self.finetune or self.documents)

    @property
    def finetune_result(self) -> Found | None:
        """``tympan finetune``'s own ``results.json`` at the top of the run, if there is one."""
        return next((f for f in self.finetune if f.path == Path("results.json")), None)

    def parameters_text(self, num: Callable[[Any], str] = _count) -> str | None:
        """The encoder's size in one line (the breakdown of ``pretrain.json`` where it is
        recorded, else the bare count); ``None`` when no file records it. ``num`` formats the
        total when the breakdown is incomplete."""
        breakdown = self.encoder_breakdown
        if breakdown:
            try:
                return format_parameters(breakdown)
            except (KeyError, TypeError, ZeroDivisionError):
                return f"encoder {num(breakdown.get('total'))}"
        if self.encoder_parameters is not None:
            return f"encoder {num(self.encoder_parameters)}"
        return None

    def command_for(self, piece: str) -> str | None:
        """The command that would produce the absent ``piece`` (see :meth:`absent`)."""
        return next((a.command for a in self.absent() if a.piece == piece), None)

    def absent(self) -> list[Absent]:
        """What this run lacks that a report could show, with the command that would make it."""
        run = shlex.quote(str(self.root))
        data = self.any_data()
        data = shlex.quote(data) if data else "MANIFEST"
        out: list[Absent] = []
        if self.kind == "results":
            for sub in self.subruns:
                out.append(Absent(f"report of {sub.as_posix()}", "a run of its own, reported apart",
                                  f"tympan report {shlex.quote(str(self.root / sub))}"))
            return out
        if self.recipe is None:
            out.append(Absent("config.yaml", "the resolved recipe is missing, so architecture and "
                              "training settings are unknown", None))
        if self.kind in ("pretrain", "encoder"):
            if not self.metrics:
                out.append(Absent("metrics.csv", "no per-step losses, so no loss curves or collapse "
                                  "monitors (written by tympan pretrain while it trains)", None))
            if self.pretrain is None:
                out.append(Absent("pretrain.json", "no training summary (steps, clips, wall time, "
                                  "parameters, collapse); tympan pretrain writes it when training "
                                  "ends, an interrupted run finishes with --resume",
                                  f"tympan pretrain --resume --out {run} --data {data}"))
        if not self.fewshot:
            out.append(Absent("few-shot results", "no few-shot accuracy ± 95% CI",
                              f"tympan fewshot --model {run} --data {data} --split test "
                              f"--json {shlex.quote(str(self.root / 'fewshot.json'))}"))
        if not self.probes:
            out.append(Absent("probe results", "no linear-probe scores (needs labelled "
                              "train/val/test splits)",
                              f"tympan probe --model {run} --data {data} --task classification "
                              f"--out {shlex.quote(str(self.root / 'probe'))}"))
        if self.kind == "pretrain" and not self.finetune:
            out.append(Absent("fine-tuning results", "fine-tuning writes a run folder of its own; "
                              "report that folder",
                              f"tympan finetune --method pairtune --backbone {run} --data {data} "
                              f"--out {shlex.quote(str(self.root) + '_pairtune')}"))
        if not self.invariance:
            out.append(Absent("invariance", "no learnt-invariance heatmap",
                              f"tympan analyze invariance {run} --data {data}"))
        if not self.head_weights:
            out.append(Absent("head weights", "no few-shot readout weight per head",
                              f"tympan analyze head-weights {run} --data {data}"))
        if not self.geometry:
            if self.kind == "finetune":
                cmd = f"tympan analyze geometry {run}"
            else:
                emb = shlex.quote(str(self.root / "embeddings_test.npz"))
                cmd = (f"tympan embed --model {run} --data {data} --split test --out {emb} && "
                       f"tympan analyze geometry --embeddings {emb} "
                       f"--out {shlex.quote(str(self.root / 'analysis'))}")
            out.append(Absent("geometry and UMAP", "no anisotropy / dimensional contribution / "
                              "UMAP of the most-confused classes", cmd))
        return out


# ---------------------------------------------------------------------------------------------
# recognising result files


def _is_fewshot(d: Any) -> bool:
    return isinstance(d, dict) and all(k in d for k in ("accuracy", "ci95", "ways", "shots"))


def _classify(path: Path, data: Any) -> str | None:
    """The kind of result ``data`` (parsed from ``path``) is, by its shape; ``None`` if unknown."""
    if isinstance(data, list):
        return "fewshot" if data and all(_is_fewshot(d) for d in data) else None
    if not isinstance(data, dict):
        return None
    if path.name == "pretrain.json" and "steps" in data:
        return "pretrain"
    if _is_fewshot(data):
        return "fewshot"
    if isinstance(data.get("probe"), dict) and isinstance(data["probe"].get("metrics"), dict):
        return "probe"
    if isinstance(data.get("test_accuracy"), dict) and "runs" in data:
        return "finetune"
    if isinstance(data.get("distances"), dict) and "ops" in data:
        return "invariance"
    ds = data.get("datasets")
    if isinstance(ds, dict) and ds and all(isinstance(v, dict) and "weights" in v for v in ds.values()):
        return "head_weights"
    if isinstance(data.get("runs"), list) and "umap" in data:
        return "geometry"
    results = data.get("results")
    if isinstance(results, list) and results and all(_is_fewshot(r) for r in results):
        return "fewshot"
    return None


def _fewshot_records(data: Any) -> list[dict[str, Any]]:
    if isinstance(data, list):
        return list(data)
    if _is_fewshot(data):
        return [data]
    return list(data.get("results") or [])


def _is_run_dir(p: Path) -> bool:
    return any((p / m).is_file() for m in RUN_MARKERS)


def _walk(root: Path) -> tuple[list[Path], list[Path]]:
    """Files below ``root`` (relative, sorted, depth <= MAX_DEPTH, :data:`SKIP_DIRS` listed but
    not searched) and the sub-folders that are runs of their own (not descended into)."""
    files: list[Path] = []
    subruns: list[Path] = []

    def visit(folder: Path, depth: int) -> None:
        try:
            entries = sorted(folder.iterdir(), key=lambda p: p.name)
        except OSError:
            return
        for p in entries:
            if p.is_symlink():
                continue
            if p.is_file():
                files.append(p.relative_to(root))
            elif p.is_dir() and depth < MAX_DEPTH:
                if p.name in SKIP_DIRS:
                    files.extend(q.relative_to(root) for q in sorted(p.glob("*")) if q.is_file())
                elif _is_run_dir(p):
                    subruns.append(p.relative_to(root))
                else:
                    visit(p, depth + 1)

    visit(root, 0)
    return files, subruns


def _read_metrics(path: Path, problems: list[str]) -> tuple[list[dict[str, float]], list[str]]:
    """Numeric rows of ``metrics.csv`` (empty cells dropped) and its columns in file order."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            columns = [c for c in reader.fieldnames or [] if c]
            rows = []
            for raw in reader:
                row: dict[str, float] = {}
                for k, v in raw.items():
                    if not k or v in (None, ""):
                        continue
                    try:
                        x = float(v)
                    except (TypeError, ValueError):
                        continue
                    if math.isfinite(x):
                        row[k] = x
                if "step" in row:
                    rows.append(row)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        problems.append(f"{path.name}: cannot be read ({e}); the loss curves are left out")
        return [], []
    if "step" not in columns:
        problems.append(f"{path.name}: has no 'step' column; the loss curves are left out")
        return [], columns
    return rows, columns


def _dedupe(found: list[Found], key: Any) -> list[Found]:
    """Drop results equal to an earlier one (``probe --out`` and ``--json`` write the same)."""
    seen, out = set(), []
    for f in found:
        k = json.dumps(key(f.data), sort_keys=True, default=str)
        if k not in seen:
            seen.add(k)
            out.append(f)
    return out


def gather_run(run: str | Path) -> RunContents:
    """Read everything a run folder holds (module docstring).

    Raises:
        TympanError: ``run`` does not exist, is not a folder, or holds none of a run's files.
    """
    root = Path(run)
    if not root.exists():
        raise TympanError(f"{root}: no such run directory; give the --out folder of tympan "
                          "pretrain, finetune, reproduce or demo")
    if not root.is_dir():
        raise TympanError(f"{root}: is a file, not a run directory; give the folder that holds "
                          "config.yaml / pretrain.json / results.json")
    if not _is_run_dir(root):
        raise TympanError(
            f"{root} is not a tympan run directory: it holds none of {', '.join(RUN_MARKERS)}; "
            "give the --out folder of tympan pretrain, finetune, reproduce or demo"
        )
    problems: list[str] = []
    files, subruns = _walk(root)
    c = RunContents(root=root, kind="encoder", subruns=subruns, problems=problems)
    for rel in files:
        if rel == Path("report.html"):
            continue  # an earlier report of this run, about to be replaced
        try:
            c.files.append((rel.as_posix(), (root / rel).stat().st_size))
        except OSError:
            c.files.append((rel.as_posix(), -1))
    c.files_left_out = max(0, len(c.files) - MAX_LISTED_FILES)
    c.files = c.files[:MAX_LISTED_FILES]

    cfg = root / "config.yaml"
    if cfg.is_file():
        try:
            c.recipe_text = cfg.read_text(encoding="utf-8")
            c.recipe = load_recipe(cfg)
        except (OSError, UnicodeDecodeError, yaml.YAMLError, TympanError) as e:
            problems.append(f"config.yaml: cannot be loaded as a recipe ({e})")
    if (root / "metrics.csv").is_file():
        c.metrics, c.metric_columns = _read_metrics(root / "metrics.csv", problems)

    for rel in files:
        if rel.parts[0] in SKIP_DIRS or rel.suffix.lower() != ".json":
            continue
        path = root / rel
        if rel.parts[0] == "runs" and (root / "results.json").is_file():
            continue  # tympan finetune's per-run records, summarised in its results.json
        try:
            if path.stat().st_size > MAX_JSON_BYTES:
                problems.append(f"{rel.as_posix()}: larger than {MAX_JSON_BYTES >> 20} MB, not read")
                continue
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as e:
            problems.append(f"{rel.as_posix()}: not valid JSON ({e}); left out")
            continue
        kind = _classify(rel, data)
        if kind == "pretrain" and rel == Path("pretrain.json"):
            c.pretrain = data
        elif kind == "fewshot":
            c.fewshot.extend(Found(rel, r) for r in _fewshot_records(data))
        elif kind in ("probe", "finetune", "invariance", "head_weights", "geometry"):
            getattr(c, "probes" if kind == "probe" else kind).append(Found(rel, data))
        elif rel.name == "results.json" and (path.parent / "results.md").is_file():
            try:
                text = (path.parent / "results.md").read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                problems.append(f"{(rel.parent / 'results.md').as_posix()}: cannot be read ({e})")
            else:
                c.documents.append(Found(rel.parent / "results.md", text))
    c.probes = _dedupe(c.probes, lambda d: [d.get("model"), d.get("data"), d["probe"]["metrics"]])
    c.fewshot = _dedupe(c.fewshot, lambda d: {k: v for k, v in d.items() if k != "skipped"})
    c.images = [rel for rel in files if rel.suffix.lower() == ".png" and rel.parts[0] not in SKIP_DIRS]

    if c.pretrain is not None or c.metrics:
        c.kind = "pretrain"
    elif c.finetune_result is not None:
        c.kind = "finetune"
    elif c.recipe is None and not (root / "encoder.safetensors").is_file():
        c.kind = "results"
    return c


# ---------------------------------------------------------------------------------------------
# the training data


@functools.lru_cache(maxsize=1)
def _synthetic_labels() -> frozenset[str]:
    """Class names of the embedded procedural corpora (sound events and music tags)."""
    names: set[str] = set()
    try:
        from tympan.data import corpora

        names |= {n for _, _, classes in corpora._FAMILIES for n, _ in classes}  # noqa: SLF001
    except Exception:  # noqa: BLE001 - only the detection is lost
        pass
    try:
        from tympan.data.music import MUSIC_TAGS

        names |= set(MUSIC_TAGS)
    except Exception:  # noqa: BLE001
        pass
    return frozenset(names)


def looks_synthetic(manifest: str | Path | None, base: Path | None = None) -> str | None:
    """Why ``manifest`` looks like tympan's embedded synthetic corpus, or ``None``.

    Reads the manifest's ``label`` column when the file is found (relative paths are tried
    against the working folder, then ``base`` and its parent): every label is a class of the
    procedural corpus.
    Falls back to the path (``corpus``/``synth`` in a folder name).
    """
    if not manifest:
        return None
    p = Path(str(manifest))
    candidates = [p]
    if base is not None and not p.is_absolute():  # commands usually run beside the run folder
        candidates += [base / p, base.parent / p]
    known = _synthetic_labels()
    for cand in candidates:
        if not cand.is_file() or cand.suffix.lower() != ".csv":
            continue
        try:
            with open(cand, newline="", encoding="utf-8") as f:
                labels = {row.get("label") or "" for _, row in zip(range(100_000), csv.DictReader(f))}
        except (OSError, UnicodeDecodeError, csv.Error):
            break
        tags = {t for lab in labels for t in re.split(r"[;,|]", lab) if t}
        if tags and tags <= known:
            return f"every label of {manifest} is a class of tympan's embedded procedural corpus"
        return None
    if any(re.search(r"corpus|synth", part, re.I) for part in p.parts[:-1]):
        return f"{manifest} is in a folder named like tympan's embedded synthetic corpus"
    return None


# ---------------------------------------------------------------------------------------------
# writing


def output_path(run: Path, out: str | Path | None, default_name: str) -> Path:
    """Where to write: ``None`` -> ``RUN/default_name``; an existing folder, or a path without a
    suffix that does not exist yet -> ``default_name`` inside it; else ``out`` itself."""
    if out is None:
        return run / default_name
    o = Path(out)
    if o.is_dir() or (not o.suffix and not o.exists()):
        return o / default_name
    return o


def write_atomic(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file (a reader never sees half a file)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    except OSError as e:
        raise TympanError(f"{path}: cannot be written ({e.strerror or e}); choose another --out "
                          "or check the folder's permissions") from e
    return path
