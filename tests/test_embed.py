"""`tympan embed` writes the embeddings contract as .npz and as .parquet, with the same values."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from tympan.cli import main
from tympan.data.corpora import synth_corpus

SMALL = ["--recipe", "demo"]


def test_embed_npz_and_parquet_agree(tmp_path: Path, capsys) -> None:
    corpus = synth_corpus(tmp_path / "corpus", seed=0, scale="tiny", progress=False)
    npz, parquet = tmp_path / "e.npz", tmp_path / "e.parquet"
    for out in (npz, parquet):
        assert main(["embed", "--model", "random", "--data", str(corpus), "--split", "val",
                     "--out", str(out), "-q", *SMALL]) == 0
    a = np.load(npz)
    table = pq.read_table(parquet)
    assert table.column_names == ["path", "label", "embedding"]
    emb = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    assert emb.dtype == np.float32 and emb.shape == a["embeddings"].shape
    np.testing.assert_allclose(emb, a["embeddings"], rtol=1e-6)
    assert table.column("path").to_pylist() == a["paths"].tolist()
    assert table.column("label").to_pylist() == a["labels"].tolist()
    slices = json.loads(table.schema.metadata[b"tympan.task_slices"])
    assert {t: tuple(v) for t, v in slices.items()} == {
        t: tuple(v) for t, v in zip(a["tasks"].tolist(), a["task_slices"].tolist())}


def test_embed_rejects_other_suffixes(tmp_path: Path, capsys) -> None:
    corpus = synth_corpus(tmp_path / "corpus", seed=0, scale="tiny", progress=False)
    assert main(["embed", "--model", "random", "--data", str(corpus), "--split", "val",
                 "--out", str(tmp_path / "e.csv"), "-q", *SMALL]) == 2
    assert ".npz or .parquet" in capsys.readouterr().err
