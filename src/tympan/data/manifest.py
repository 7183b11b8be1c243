"""Manifests: which audio files a command uses, with their labels, split, track, fold and speaker.

Two layouts are accepted (:func:`read_manifest`):

* a CSV file with a header containing ``path`` and ``label`` and optionally ``split``, ``track``,
  ``fold`` and ``speaker``. Several labels in one cell are separated by ``;`` (multi-label
  tagging). ``speaker`` names who is speaking (speaker recognition / verification, as in the
  pretext-selection seed ``../shared/seeds/004_f3e19d7efff003e6.txt``, VoxCeleb). Relative paths
  resolve against the CSV's folder::

      path,label,split,track,fold
      audio/dog_001.wav,dog,train,rec01,1
      audio/street.wav,car;horn,test,,2

* a folder with one subfolder per class holding audio files (``dog/001.wav``, ``cat/a/2.flac``);
  the label is the subfolder's name. A ``manifest.csv`` inside the folder takes precedence.

Every problem raises :class:`~tympan.errors.ManifestError` naming the manifest, the line (as a
text editor or spreadsheet numbers it, the header being line 1), the column, and what to do.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tympan.audio.io import AUDIO_EXTENSIONS, is_audio_file
from tympan.errors import ManifestError

__all__ = [
    "COLUMNS",
    "LABEL_SEPARATOR",
    "MANIFEST_NAME",
    "OPTIONAL_COLUMNS",
    "REQUIRED_COLUMNS",
    "Item",
    "Manifest",
    "read_manifest",
    "write_manifest",
]

log = logging.getLogger("tympan")

REQUIRED_COLUMNS: tuple[str, ...] = ("path", "label")
OPTIONAL_COLUMNS: tuple[str, ...] = ("split", "track", "fold", "speaker")
COLUMNS: tuple[str, ...] = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
#: Separates the labels of a multi-label item inside one CSV cell.
LABEL_SEPARATOR = ";"
#: A class folder holding a file of this name is read as that CSV instead of by its subfolders.
MANIFEST_NAME = "manifest.csv"

_LAYOUTS = (
    "either a CSV file with a header containing path,label (optional columns: split, track, "
    "fold, speaker), or a folder with one subfolder per class holding audio files "
    f"({', '.join(AUDIO_EXTENSIONS)}), e.g. dog/001.wav, cat/002.wav"
)


@dataclass(frozen=True)
class Item:
    """One audio file of a manifest.

    ``path`` is absolute. ``labels`` holds one label, or several for multi-label tagging.
    ``track`` groups segments cut from one recording (same-track positive pairs, and splits
    that must not separate them); ``fold`` numbers cross-validation folds; ``speaker`` names the
    speaker (speaker identification and verification trials).
    """

    path: Path
    labels: tuple[str, ...]
    split: str | None = None
    track: str | None = None
    fold: int | None = None
    speaker: str | None = None

    def __post_init__(self) -> None:
        # Accept the obvious spellings (str path, list of labels, a bare label string) so that
        # generators and tests can build items directly; a bare string must not become a tuple
        # of its characters.
        if not isinstance(self.path, Path):
            object.__setattr__(self, "path", Path(self.path))
        if isinstance(self.labels, str):
            object.__setattr__(self, "labels", (self.labels,))
        elif not isinstance(self.labels, tuple):
            object.__setattr__(self, "labels", tuple(self.labels))

    @property
    def label(self) -> str:
        """The item's single label; :class:`ManifestError` if it has none or several."""
        if len(self.labels) != 1:
            shown = LABEL_SEPARATOR.join(self.labels) or "none"
            raise ManifestError(
                f"{self.path}: has {len(self.labels)} labels ({shown}) but this step needs "
                "exactly one per file; use a single-label manifest or a multi-label evaluation"
            )
        return self.labels[0]


@dataclass
class Manifest:
    """The items of a manifest, in file order, and where they were read from."""

    items: list[Item]
    source: Path

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Item]:
        return iter(self.items)

    def __getitem__(self, index: int) -> Item:
        return self.items[index]

    @property
    def splits(self) -> list[str]:
        """The split names used by the items, in order of first appearance (empty if none)."""
        # first-appearance order keeps "train, valid, test" as the user wrote them
        return list(dict.fromkeys(it.split for it in self.items if it.split is not None))

    @property
    def classes(self) -> list[str]:
        """Every label used by some item, sorted (the class index order of classifiers)."""
        return sorted({label for it in self.items for label in it.labels})

    @property
    def is_multilabel(self) -> bool:
        """True when some item carries more than one label."""
        return any(len(it.labels) > 1 for it in self.items)

    def select(self, split: str) -> Manifest:
        """The items of one split; :class:`ManifestError` naming the available splits if the
        split is absent."""
        chosen = [it for it in self.items if it.split == split]
        if not chosen:
            available = self.splits
            if available:
                hint = f"available splits: {', '.join(available)}"
            else:
                hint = "this manifest has no 'split' column; add one (e.g. train/valid/test)"
            raise ManifestError(f"{self.source}: no items in split '{split}'; {hint}")
        return self.subset(chosen)

    def subset(self, items: Iterable[Item]) -> Manifest:
        """A manifest with the given items and the same source."""
        return Manifest(list(items), self.source)


# --------------------------------------------------------------------------------------------
# reading


def read_manifest(path: str | Path, *, check_files: bool = True) -> Manifest:
    """Read a manifest CSV, or a folder with one subfolder per class (see the module docstring).

    With ``check_files`` every CSV row must name an existing file; without it, missing files
    are left for :func:`tympan.data.scan.scan_items` to report or skip.
    """
    p = Path(path)
    if p.is_dir():
        csv_path = p / MANIFEST_NAME
        if csv_path.is_file():
            return _read_csv(csv_path, check_files=check_files)
        return _read_folder(p)
    if not p.exists():
        raise ManifestError(f"{p}: no such file or folder; the data must be {_LAYOUTS}")
    if is_audio_file(p):
        raise ManifestError(f"{p}: is an audio file, not a manifest; the data must be {_LAYOUTS}")
    return _read_csv(p, check_files=check_files)


def _absolute(path: Path) -> Path:
    """An absolute, normalised path. Symlinks are not followed (unlike Path.resolve) so that
    paths in messages and embedding files stay the ones the user wrote."""
    return Path(os.path.abspath(path))


def _read_text(p: Path) -> str:
    """The CSV's text, refusing unreadable, non-UTF-8 and empty files."""
    try:
        raw = p.read_bytes()
    except PermissionError:
        raise ManifestError(
            f"{p}: cannot be read (permission denied); fix its permissions"
        ) from None
    except OSError as exc:
        raise ManifestError(f"{p}: cannot be read ({exc.strerror or exc})") from None
    try:
        # utf-8-sig: spreadsheet programs often prepend a byte-order mark
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ManifestError(
            f"{p} line {line}: is not UTF-8 text (byte {exc.start}); save the manifest as "
            "UTF-8 CSV"
        ) from None
    if not text.strip():
        raise ManifestError(f"{p}: is empty; a manifest must be {_LAYOUTS}")
    return text


def _read_header(p: Path, line: int, header: list[str]) -> dict[str, int]:
    """Map column name -> index, refusing missing, unknown, unnamed and repeated columns."""
    names = [cell.strip().lower() for cell in header]
    unnamed = [i + 1 for i, n in enumerate(names) if not n]
    if unnamed and any(names):
        raise ManifestError(
            f"{p} line {line}: column {unnamed[0]} of the header has no name; the allowed columns "
            f"are {', '.join(COLUMNS)} (remove the empty column or name it)"
        )
    unknown = [cell.strip() for cell, n in zip(header, names) if n and n not in COLUMNS]
    if unknown:
        shown = ", ".join(repr(u) for u in unknown)
        raise ManifestError(
            f"{p} line {line}: unknown column(s) {shown}; the allowed columns are "
            f"{', '.join(COLUMNS)} (remove or rename the others)"
        )
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ManifestError(
            f"{p} line {line}: column '{repeated[0]}' appears more than once; keep one of them"
        )
    for required in REQUIRED_COLUMNS:
        if required not in names:
            raise ManifestError(
                f"{p} line {line}: the header has no '{required}' column (it has: "
                f"{', '.join(n for n in names if n) or 'nothing'}); a manifest CSV needs a "
                f"header line with path,label and optionally {', '.join(OPTIONAL_COLUMNS)}"
            )
    return {n: i for i, n in enumerate(names)}


def _read_csv(p: Path, *, check_files: bool) -> Manifest:
    """Parse a manifest CSV; errors name the file line of the offending record."""
    text = _read_text(p)
    base = _absolute(p).parent
    # strict: an unclosed quote is an error rather than a cell swallowing the rest of the file
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header: list[str] | None = None
    columns: dict[str, int] = {}
    items: list[Item] = []
    lines: list[int] = []  # line of each item, for messages that come after parsing
    written: list[str] = []  # each item's path as the CSV spells it, for those messages too
    seen: dict[Path, int] = {}
    end = 0  # reader.line_num after the previous record; a record starts on the next line

    try:
        for row in reader:
            line, end = end + 1, reader.line_num
            if not any(cell.strip() for cell in row):
                continue  # blank lines (often trailing) carry nothing
            if header is None:
                # line numbers stay those of the file even if blank lines precede the header
                header, columns = row, _read_header(p, line, row)
                continue
            item = _parse_row(p, line, row, columns, len(header), base)
            if item.path in seen:
                raise ManifestError(
                    f"{p} line {line}, column 'path': {row[columns['path']].strip()} is the same "
                    f"file as line {seen[item.path]}; remove one of the two rows"
                )
            seen[item.path] = line
            items.append(item)
            lines.append(line)
            written.append(row[columns["path"]].strip())
    except csv.Error as exc:
        # the record that failed starts on the line after the previous one ended
        raise ManifestError(
            f"{p} line {end + 1}: is not valid CSV ({exc}); check the quotes on that line "
            '(a cell with a comma must be wrapped in "..." and a quote inside it doubled)'
        ) from None

    if not items:
        raise ManifestError(
            f"{p}: has a header but no rows; add one row per audio file (path,label,...)"
        )
    if check_files:
        _check_files(p, items, lines, written)
    return Manifest(items, _absolute(p))


def _parse_row(
    p: Path, line: int, row: list[str], columns: dict[str, int], width: int, base: Path
) -> Item:
    """One data row -> Item, with errors naming ``p``, ``line`` and the column."""
    if len(row) != width:
        raise ManifestError(
            f"{p} line {line}: has {len(row)} cells but the header has {width} columns; "
            "quote cells that contain commas, and give every row the header's columns"
        )

    def cell(name: str) -> str:
        return row[columns[name]].strip() if name in columns else ""

    def fail(column: str, problem: str) -> ManifestError:
        return ManifestError(f"{p} line {line}, column '{column}': {problem}")

    raw_path = cell("path")
    if not raw_path:
        raise fail("path", "is empty (give the audio file's path or remove the row)")
    path = Path(raw_path).expanduser()
    # relative paths are relative to the manifest, not to the directory the command runs in
    path = _absolute(path if path.is_absolute() else base / path)

    # dict.fromkeys drops repeated labels but keeps the order the user wrote them in
    labels = tuple(
        dict.fromkeys(s.strip() for s in cell("label").split(LABEL_SEPARATOR) if s.strip())
    )
    if not labels:
        raise fail(
            "label",
            f"is empty (give at least one label; separate several with '{LABEL_SEPARATOR}')",
        )

    fold: int | None = None
    raw_fold = cell("fold")
    if raw_fold:
        try:
            fold = int(raw_fold)
        except ValueError:
            raise fail(
                "fold",
                f"'{raw_fold}' is not a whole number (use e.g. 1 to 5, or leave the cell empty)",
            ) from None

    return Item(
        path=path, labels=labels, split=cell("split") or None, track=cell("track") or None,
        fold=fold, speaker=cell("speaker") or None,
    )


def _check_files(p: Path, items: list[Item], lines: list[int], written: list[str]) -> None:
    """Raise for the first row whose file does not exist, counting the others so that a user
    with a wrong audio root learns it from one message rather than one run per row."""
    missing = [
        (it, line, raw) for it, line, raw in zip(items, lines, written) if not it.path.is_file()
    ]
    if not missing:
        return
    it, line, raw = missing[0]
    if it.path.is_dir():
        problem = f"{raw} is a folder, not an audio file (fix the path or remove the row)"
    else:
        problem = f"{raw} does not exist (fix the path or remove the row)"
    if not Path(raw).expanduser().is_absolute():
        # the usual surprise: relative paths are read from the CSV's folder, not the cwd
        problem += f"; relative paths are read from {_absolute(p).parent}"
    more = len(missing) - 1
    if more:
        listed = ", ".join(str(ln) for _, ln, _ in missing[1:6]) + (", ..." if more > 5 else "")
        problem += f"; {more} more row(s) name missing files (lines {listed})"
    raise ManifestError(f"{p} line {line}, column 'path': {problem}")


def _display(path: Path, base: Path) -> str:
    """``path`` relative to ``base`` when inside it, else absolute: a data folder that holds its
    manifest can then be moved or copied as a whole. Paths outside it get no ``..`` chains,
    which would break as soon as the manifest alone is moved."""
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return str(path)


def _read_folder(root: Path) -> Manifest:
    """One subfolder per class; audio files anywhere below it, in sorted order."""
    items: list[Item] = []
    empty: list[str] = []
    # hidden folders (.git, .ipynb_checkpoints) are never classes
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    for class_dir in class_dirs:
        # sort on the relative path: directory listing order differs between file systems
        files = sorted(
            (f for f in class_dir.rglob("*") if is_audio_file(f) and f.is_file()),
            key=lambda f: f.relative_to(class_dir).as_posix(),
        )
        if not files:
            empty.append(class_dir.name)
        items.extend(Item(path=_absolute(f), labels=(class_dir.name,)) for f in files)

    if not items:
        raise ManifestError(
            f"{root}: no audio found in class subfolders; the data must be {_LAYOUTS}"
        )
    loose = [f.name for f in root.iterdir() if is_audio_file(f) and f.is_file()]
    if loose:
        log.warning(
            "%s: ignoring %d audio file(s) outside the class subfolders (e.g. %s)",
            root, len(loose), sorted(loose)[0],
        )
    if empty:
        log.warning(
            "%s: ignoring %d subfolder(s) without audio: %s", root, len(empty), ", ".join(empty)
        )
    return Manifest(items, _absolute(root))


# --------------------------------------------------------------------------------------------
# writing


def write_manifest(items: Sequence[Item], path: str | Path) -> None:
    """Write ``items`` as a manifest CSV that :func:`read_manifest` reads back to equal items.

    Paths inside the CSV's folder are written relative to it (the data folder can then be moved
    as a whole); others stay absolute. Labels are joined with ``;``. Only the optional columns
    that some item uses are written. The file is replaced atomically.
    """
    p = Path(path)
    base = _absolute(p).parent
    used = [c for c in OPTIONAL_COLUMNS if any(getattr(it, c) is not None for it in items)]
    header = list(REQUIRED_COLUMNS) + used
    rows: list[list[str]] = []
    for it in items:
        if not it.labels:
            raise ManifestError(f"{it.path}: has no label; a manifest row needs at least one")
        for label in it.labels:
            if LABEL_SEPARATOR in label or label != label.strip() or not label:
                raise ManifestError(
                    f"{it.path}: label {label!r} cannot be written to a manifest (labels must "
                    f"be non-empty, without '{LABEL_SEPARATOR}' or surrounding spaces); "
                    "rename the label"
                )
        row = [_display(_absolute(it.path), base), LABEL_SEPARATOR.join(it.labels)]
        row += ["" if getattr(it, c) is None else str(getattr(it, c)) for c in used]
        rows.append(row)

    base.mkdir(parents=True, exist_ok=True)
    # write-then-rename: an interrupted write never leaves a truncated manifest behind
    tmp = p.with_name(f".{p.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(rows)
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()
