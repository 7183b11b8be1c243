"""Tests for tympan.data.manifest: CSV and class-folder layouts, validation messages, writing."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tympan.data.manifest import Item, Manifest, read_manifest, write_manifest
from tympan.errors import ManifestError, TympanError


def make_wav(path: Path, seconds: float = 0.1, sr: int = 8000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), sr)
    return path


def make_csv(folder: Path, text: str, name: str = "manifest.csv") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def manifest_error(path: Path, **kwargs: bool) -> str:
    with pytest.raises(ManifestError) as info:
        read_manifest(path, **kwargs)
    assert isinstance(info.value, TympanError)
    return str(info.value)


# -- CSV: happy paths ---------------------------------------------------------------------------


def test_csv_with_relative_paths_and_all_columns(tmp_path: Path) -> None:
    for name in ("a.wav", "b.wav", "c.wav"):
        make_wav(tmp_path / "data" / "audio" / name)
    csv_path = make_csv(
        tmp_path / "data",
        "split,path,label,track,fold\n"  # any column order
        "train,audio/a.wav,dog,rec1,1\n"
        "train, audio/b.wav , cat ,,2\n"  # spaces around cells are stripped
        "test,audio/c.wav,dog,rec1,\n",
    )
    m = read_manifest(csv_path)
    assert isinstance(m, Manifest) and len(m) == 3
    assert m.source == csv_path
    a, b, c = m.items
    assert a == Item(tmp_path / "data" / "audio" / "a.wav", ("dog",), "train", "rec1", 1)
    assert b.path.is_absolute() and b.path == (tmp_path / "data" / "audio" / "b.wav")
    assert b.labels == ("cat",) and b.track is None and b.fold == 2
    assert c.fold is None and c.label == "dog"
    assert m[1] == b and list(m) == [a, b, c]
    assert m.splits == ["train", "test"]
    assert m.classes == ["cat", "dog"]
    assert not m.is_multilabel


def test_csv_resolves_against_its_own_folder_not_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_wav(tmp_path / "data" / "x.wav")
    make_csv(tmp_path / "data", "path,label\nx.wav,a\n", name="list.csv")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    m = read_manifest("../data/list.csv")
    assert m.items[0].path == tmp_path / "data" / "x.wav"


def test_csv_absolute_paths_stay(tmp_path: Path) -> None:
    wav = make_wav(tmp_path / "audio" / "x.wav")
    csv_path = make_csv(tmp_path / "lists", f"path,label\n{wav},a\n")
    assert read_manifest(csv_path).items[0].path == wav


def test_multilabel(tmp_path: Path) -> None:
    make_wav(tmp_path / "a.wav")
    make_wav(tmp_path / "b.wav")
    csv_path = make_csv(tmp_path, 'path,label\na.wav," car ; horn;;car"\nb.wav,horn\n')
    m = read_manifest(csv_path)
    assert m.items[0].labels == ("car", "horn")  # stripped, empty parts and repeats dropped
    assert m.is_multilabel and m.classes == ["car", "horn"]
    assert m.items[1].label == "horn"
    with pytest.raises(ManifestError, match=r"a\.wav: has 2 labels \(car;horn\)"):
        _ = m.items[0].label


def test_bom_crlf_uppercase_header_and_blank_lines(tmp_path: Path) -> None:
    make_wav(tmp_path / "a.wav")
    csv_path = tmp_path / "manifest.csv"
    csv_path.write_bytes(b"\xef\xbb\xbfPath,Label\r\na.wav,x\r\n\r\n")
    m = read_manifest(csv_path)
    assert [it.labels for it in m] == [("x",)]


def test_check_files_false_keeps_missing_rows(tmp_path: Path) -> None:
    csv_path = make_csv(tmp_path, "path,label\ngone.wav,a\n")
    m = read_manifest(csv_path, check_files=False)
    assert m.items[0].path == tmp_path / "gone.wav"


# -- CSV: errors ----------------------------------------------------------------------------------


def test_missing_file_names_line_and_column(tmp_path: Path) -> None:
    make_wav(tmp_path / "audio" / "ok.wav")
    csv_path = make_csv(
        tmp_path,
        "path,label\naudio/ok.wav,a\naudio/ok.wav2,a\naudio/x.wav,b\naudio/y.wav,b\n",
    )
    message = manifest_error(csv_path)
    assert str(csv_path) in message
    assert "line 3, column 'path': audio/ok.wav2 does not exist" in message
    assert "(fix the path or remove the row)" in message
    assert f"relative paths are read from {tmp_path}" in message
    assert "2 more row(s) name missing files (lines 4, 5)" in message


def test_missing_column(tmp_path: Path) -> None:
    message = manifest_error(make_csv(tmp_path, "path,split\na.wav,train\n"))
    assert "manifest.csv line 1" in message
    assert "no 'label' column" in message
    message = manifest_error(make_csv(tmp_path, "file,label\na.wav,x\n"))
    assert "unknown column(s) 'file'" in message  # unknown is reported before missing


def test_extra_column(tmp_path: Path) -> None:
    # ('speaker' was the example here until it became a known column; 'gender' stands in)
    message = manifest_error(make_csv(tmp_path, "path,label,gender,Notes\na.wav,x,f,n\n"))
    assert "manifest.csv line 1: unknown column(s) 'gender', 'Notes'" in message
    assert "allowed columns are path, label, split, track, fold, speaker" in message


def test_repeated_and_unnamed_columns(tmp_path: Path) -> None:
    assert "column 'label' appears more than once" in manifest_error(
        make_csv(tmp_path, "path,label,label\na.wav,x,y\n")
    )
    assert "column 3 of the header has no name" in manifest_error(
        make_csv(tmp_path, "path,label,\na.wav,x,\n")
    )


def test_empty_label(tmp_path: Path) -> None:
    make_wav(tmp_path / "a.wav")
    make_wav(tmp_path / "b.wav")
    message = manifest_error(make_csv(tmp_path, "path,label\na.wav,x\nb.wav, ; \n"))
    assert "manifest.csv line 3, column 'label': is empty" in message


def test_empty_path(tmp_path: Path) -> None:
    message = manifest_error(make_csv(tmp_path, "path,label\n,x\n"))
    assert "line 2, column 'path': is empty" in message


def test_bad_fold(tmp_path: Path) -> None:
    make_wav(tmp_path / "a.wav")
    message = manifest_error(make_csv(tmp_path, "path,label,fold\na.wav,x,one\n"))
    assert "manifest.csv line 2, column 'fold': 'one' is not a whole number" in message


def test_wrong_number_of_cells(tmp_path: Path) -> None:
    make_wav(tmp_path / "a.wav")
    message = manifest_error(make_csv(tmp_path, "path,label\na.wav,x,extra\n"))
    assert "line 2: has 3 cells but the header has 2 columns" in message


def test_unclosed_quote(tmp_path: Path) -> None:
    make_wav(tmp_path / "a.wav")
    message = manifest_error(make_csv(tmp_path, 'path,label\na.wav,x\n"b.wav,y\nc.wav,z\n'))
    assert "manifest.csv line 3: is not valid CSV" in message


def test_duplicate_path_names_both_lines(tmp_path: Path) -> None:
    make_wav(tmp_path / "audio" / "a.wav")
    csv_path = make_csv(tmp_path, "path,label\naudio/a.wav,x\n./audio/../audio/a.wav,y\n")
    message = manifest_error(csv_path)
    assert "line 3, column 'path'" in message and "same file as line 2" in message


def test_empty_header_only_and_non_utf8(tmp_path: Path) -> None:
    assert "is empty" in manifest_error(make_csv(tmp_path, "\n  \n", name="blank.csv"))
    assert "has a header but no rows" in manifest_error(
        make_csv(tmp_path, "path,label\n", name="header.csv")
    )
    latin = tmp_path / "latin.csv"
    latin.write_bytes("path,label\ncaf\xe9.wav,x\n".encode("latin-1"))
    message = manifest_error(latin)
    assert "latin.csv line 2: is not UTF-8 text" in message


def test_nonexistent_manifest_and_audio_file_as_manifest(tmp_path: Path) -> None:
    message = manifest_error(tmp_path / "nothing.csv")
    assert "nothing.csv: no such file or folder" in message
    wav = make_wav(tmp_path / "a.wav")
    assert "is an audio file, not a manifest" in manifest_error(wav)


# -- folder layout --------------------------------------------------------------------------------


def test_class_folders(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "ds"
    make_wav(root / "dog" / "b.wav")
    make_wav(root / "dog" / "a.flac")
    make_wav(root / "dog" / "sub" / "c.wav")  # recursive within the class folder
    make_wav(root / "cat" / "z.ogg")
    (root / "cat" / "readme.txt").write_text("not audio")
    (root / "cat" / "._z.wav").write_bytes(b"resource fork")  # hidden: ignored
    (root / "empty").mkdir()
    make_wav(root / "loose.wav")
    with caplog.at_level(logging.WARNING, logger="tympan"):
        m = read_manifest(root)
    assert [(it.path.relative_to(root).as_posix(), it.label) for it in m] == [
        ("cat/z.ogg", "cat"),
        ("dog/a.flac", "dog"),
        ("dog/b.wav", "dog"),
        ("dog/sub/c.wav", "dog"),
    ]
    assert all(it.split is None and it.path.is_absolute() for it in m)
    assert m.splits == [] and m.classes == ["cat", "dog"] and m.source == root
    assert "loose.wav" in caplog.text and "empty" in caplog.text


def test_folder_without_classes_explains_layouts(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    make_wav(root / "a.wav")
    message = manifest_error(root)
    assert "flat: no audio found" in message
    assert "CSV file with a header containing path,label" in message
    assert "one subfolder per class" in message


def test_folder_with_manifest_csv_reads_the_csv(tmp_path: Path) -> None:
    make_wav(tmp_path / "dog" / "a.wav")
    make_csv(tmp_path, "path,label,split\ndog/a.wav,puppy,train\n")
    m = read_manifest(tmp_path)
    assert [it.labels for it in m] == [("puppy",)]
    assert m.source == tmp_path / "manifest.csv"


# -- Manifest API ---------------------------------------------------------------------------------


def test_select_and_subset(tmp_path: Path) -> None:
    items = [
        Item(tmp_path / "a.wav", ("x",), "train"),
        Item(tmp_path / "b.wav", ("y",), "test"),
        Item(tmp_path / "c.wav", ("x",), "train"),
    ]
    m = Manifest(items, tmp_path / "manifest.csv")
    train = m.select("train")
    assert [it.path.name for it in train] == ["a.wav", "c.wav"] and train.source == m.source
    with pytest.raises(ManifestError) as info:
        m.select("valid")
    assert "no items in split 'valid'" in str(info.value)
    assert "available splits: train, test" in str(info.value)
    assert len(m.subset(items[:1])) == 1
    no_splits = Manifest([Item(tmp_path / "a.wav", ("x",))], tmp_path)
    with pytest.raises(ManifestError, match="has no 'split' column"):
        no_splits.select("train")


def test_item_accepts_plain_types(tmp_path: Path) -> None:
    it = Item(str(tmp_path / "a.wav"), "dog")  # type: ignore[arg-type]
    assert it.path == tmp_path / "a.wav" and it.labels == ("dog",)
    assert Item(tmp_path / "a.wav", ["a", "b"]).labels == ("a", "b")  # type: ignore[arg-type]


# -- writing ------------------------------------------------------------------------------------


def test_write_then_read_round_trips(tmp_path: Path) -> None:
    inside = make_wav(tmp_path / "data" / "audio" / "a.wav")
    outside = make_wav(tmp_path / "other" / "b.wav")
    items = [
        Item(inside, ("car", "horn"), "train", None, 3),
        Item(outside, ("dog",), None, "rec, 1", None),  # a comma inside a cell gets quoted
    ]
    csv_path = tmp_path / "data" / "manifest.csv"
    write_manifest(items, csv_path)
    lines = csv_path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "path,label,split,track,fold"
    assert lines[1] == "audio/a.wav,car;horn,train,,3"  # relative inside the folder
    assert lines[2].startswith(str(outside))  # absolute outside it
    assert read_manifest(csv_path).items == items


def test_write_only_used_columns_and_refuse_bad_labels(tmp_path: Path) -> None:
    out = tmp_path / "m.csv"
    write_manifest([Item(tmp_path / "a.wav", ("x",))], out)
    assert out.read_text(encoding="utf-8") == "path,label\na.wav,x\n"
    with pytest.raises(ManifestError, match="cannot be written"):
        write_manifest([Item(tmp_path / "a.wav", ("x;y",))], out)
    assert out.read_text(encoding="utf-8") == "path,label\na.wav,x\n"  # left untouched


# -- the speaker column -------------------------------------------------------------------------


def test_speaker_column_is_read_and_optional(tmp_path: Path) -> None:
    make_wav(tmp_path / "a.wav")
    make_wav(tmp_path / "b.wav")
    path = make_csv(
        tmp_path, "path,label,speaker,split\na.wav,yes, spk01 ,train\nb.wav,no,,test\n"
    )
    a, b = read_manifest(path).items
    assert a.speaker == "spk01" and a.split == "train"  # surrounding spaces stripped
    assert b.speaker is None  # an empty cell is no speaker, like track and split
    assert Item(tmp_path / "a.wav", "x").speaker is None  # positional fields unchanged


def test_speaker_column_round_trips_and_is_written_last(tmp_path: Path) -> None:
    a = make_wav(tmp_path / "d" / "a.wav")
    b = make_wav(tmp_path / "d" / "b.wav")
    items = [
        Item(a, ("yes",), "train", "utt1", None, "spk01"),
        Item(b, ("no",), "verify", None, None, None),
    ]
    csv_path = tmp_path / "d" / "manifest.csv"
    write_manifest(items, csv_path)
    lines = csv_path.read_text(encoding="utf-8").splitlines()
    assert lines == ["path,label,split,track,speaker", "a.wav,yes,train,utt1,spk01",
                     "b.wav,no,verify,,"]
    assert read_manifest(csv_path).items == items
    # a manifest without speakers is written exactly as before
    write_manifest([Item(a, ("yes",), "train")], csv_path)
    assert csv_path.read_text(encoding="utf-8") == "path,label,split\na.wav,yes,train\n"
