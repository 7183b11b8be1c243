"""WebDataset shards: writing (round trip, sizes, index), splitting an epoch among ranks and
workers, deterministic shuffling, URL patterns and the errors for broken shard sets."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from torch.utils.data import DataLoader

from tympan.audio.io import load_audio
from tympan.data.manifest import Item, read_manifest, write_manifest
from tympan.data.shards import (
    INDEX_NAME, PairSpec, ShardDataset, ShardLoader, epoch_shard_order, is_shard_source,
    iter_clips, plan_part, resolve_shards, write_shards,
)
from tympan.errors import AudioError, TympanError

SHARD_SIZE = 40


@pytest.fixture(scope="module")
def shards(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    write_shards(corpus, out, shard_size=SHARD_SIZE, progress=False, workers=2)
    return out


def _indices(items) -> list[int]:
    return [int(it["index"]) for it in items]


# -- writing ----------------------------------------------------------------------------------------


def test_round_trip_preserves_audio_and_fields(corpus: Path, shards: Path) -> None:
    by_path = {str(it.path): it for it in read_manifest(corpus)}
    seen = set()
    for wav, meta in iter_clips(shards):
        item = by_path[meta["path"]]
        ref = load_audio(item.path, 16000)
        assert wav.dtype == np.float32 and wav.shape == ref.shape == (meta["num_samples"],)
        assert np.abs(wav - ref).max() <= 2.0**-15  # one 16-bit step
        assert tuple(meta["labels"]) == item.labels
        assert (meta["split"], meta["track"], meta["fold"]) == (item.split, item.track, item.fold)
        assert meta["sample_rate"] == 16000
        seen.add(meta["path"])
    assert seen == set(by_path)  # every clip once


def test_resampled_float_audio_within_pcm_tolerance_and_npy_exact(tmp_path: Path) -> None:
    """A 44.1 kHz stereo float file with peaks above 1: resampled once, scaled, not clipped."""
    rng = np.random.default_rng(0)
    t = np.arange(44100) / 44100
    loud = np.stack([1.6 * np.sin(2 * np.pi * 440 * t), 0.3 * rng.normal(size=t.size)], 1)
    sf.write(tmp_path / "loud.wav", loud.astype(np.float32), 44100, subtype="FLOAT")
    sf.write(tmp_path / "quiet.wav", 0.1 * np.sin(2 * np.pi * 220 * t[:22050]), 44100)
    items = [Item(tmp_path / "loud.wav", ("a",), split="train", track="r1", fold=2),
             Item(tmp_path / "quiet.wav", ("a", "b"), speaker="s1")]
    write_manifest(items, tmp_path / "m.csv")
    for fmt, tol in (("flac", 2.0**-15), ("npy", 0.0)):
        write_shards(tmp_path / "m.csv", tmp_path / fmt, sample_rate=16000, audio_format=fmt,
                     progress=False, shuffle=False)
        clips = list(iter_clips(tmp_path / fmt))
        for (wav, meta), item in zip(clips, items):
            ref = load_audio(item.path, 16000)
            assert len(wav) == len(ref)
            assert np.abs(wav - ref).max() <= tol * max(1.0, float(np.abs(ref).max()))
            assert meta["speaker"] == item.speaker and tuple(meta["labels"]) == item.labels
        if fmt == "flac":
            assert clips[0][1]["scale"] > 1.0


def test_shard_size_and_index(corpus: Path, shards: Path, tmp_path: Path) -> None:
    index = json.loads((shards / INDEX_NAME).read_text())
    manifest = read_manifest(corpus)
    n = len(manifest)
    counts = [s["count"] for s in index["shards"]]
    assert index["total"] == sum(counts) == n
    assert all(c == SHARD_SIZE for c in counts[:-1]) and 0 < counts[-1] <= SHARD_SIZE
    assert [s["name"] for s in index["shards"]] == [f"shard-{i:06d}.tar" for i in range(len(counts))]
    for s in index["shards"]:
        path = shards / s["name"]
        assert path.stat().st_size == s["bytes"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == s["sha256"]
        assert sum(s["splits"].values()) == s["count"]
    assert index["splits"] == dict(Counter(it.split for it in manifest))
    assert index["sample_rate"] == 16000 and index["source"] == str(manifest.source)
    assert index["audio_format"] == "flac" and len(index["hash"]) == 64
    assert not list(shards.glob("*.tmp")) and not list(shards.glob(".*"))
    # deterministic: the same corpus gives the same set (byte-identical shards, same hash)
    again = write_shards(corpus, tmp_path / "again", shard_size=SHARD_SIZE, progress=False)
    assert again.hash == index["hash"]
    # a byte budget starts new shards before the clip limit
    small = write_shards(corpus, tmp_path / "bytes", shard_size=1000, shard_bytes=200_000,
                         progress=False)
    assert len(small.shards) > 1 and small.total == n
    assert all(s.bytes < 200_000 + 100_000 for s in small.shards)


def test_shuffled_before_sharding(shards: Path, corpus: Path) -> None:
    first = [meta["path"] for _, meta in iter_clips(shards)][:SHARD_SIZE]
    manifest = [str(it.path) for it in read_manifest(corpus)][:SHARD_SIZE]
    assert first != manifest and len({Path(p).parent for p in first}) > 3


def test_bad_files_and_existing_sets(corpus: Path, tmp_path: Path) -> None:
    items = read_manifest(corpus).items[:10]
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all")
    write_manifest([*items, Item(bad, ("x",))], tmp_path / "m.csv")
    with pytest.raises(AudioError, match="bad.wav.*--skip-bad"):
        write_shards(tmp_path / "m.csv", tmp_path / "s", progress=False)
    assert not list((tmp_path / "s").glob("shard-*"))  # nothing half-written left behind
    index = write_shards(tmp_path / "m.csv", tmp_path / "s", shard_size=3, skip_bad=True,
                         progress=False)
    assert index.total == 10 and index.skipped[0]["path"] == str(bad)
    with pytest.raises(TympanError, match="already holds a shard set.*--overwrite"):
        write_shards(tmp_path / "m.csv", tmp_path / "s", skip_bad=True, progress=False)
    write_shards(tmp_path / "m.csv", tmp_path / "s", shard_size=100, skip_bad=True,
                 overwrite=True, progress=False)
    assert sorted(p.name for p in (tmp_path / "s").glob("shard-*")) == ["shard-000000.tar"]


# -- splitting among ranks and workers --------------------------------------------------------------


@pytest.mark.parametrize("counts", [[40, 40, 40, 40, 40, 16], [7, 3], [1, 9, 2, 30, 5]])
@pytest.mark.parametrize("world", [1, 2])
def test_plan_covers_every_clip_once(counts: list[int], world: int) -> None:
    workers = 2
    total = sum(counts)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    for epoch in (0, 1):
        order = epoch_shard_order(len(counts), seed=3, epoch=epoch)
        seen: list[int] = []
        rank_sizes = []
        for rank in range(world):
            size = 0
            for worker in range(workers):
                plan = plan_part(counts, order, rank, world, worker, workers)
                for shard, a, b in plan:
                    assert 0 <= a < b <= counts[shard]
                    seen.extend(range(offsets[shard] + a, offsets[shard] + b))
                    size += b - a
            rank_sizes.append(size)
        assert sorted(seen) == list(range(total))  # union is everything, parts disjoint
        assert max(rank_sizes) - min(rank_sizes) <= 1
        # drop_last: equal whole batches per rank, whole batches per worker, disjoint
        batch = 8
        seen, per_rank = [], []
        for rank in range(world):
            size = 0
            for worker in range(workers):
                ranges = plan_part(counts, order, rank, world, worker, workers,
                                   batch_size=batch, drop_last=True)
                part = sum(b - a for _, a, b in ranges)
                assert part % batch == 0
                size += part
                seen.extend((s, i) for s, a, b in ranges for i in range(a, b))
            per_rank.append(size)
        assert len(set(per_rank)) == 1 and per_rank[0] == total // (world * batch) * batch
        assert len(seen) == len(set(seen)) and total - len(seen) < world * batch


@pytest.mark.parametrize("world", [1, 2])
def test_dataset_parts_read_every_clip_once(shards: Path, world: int) -> None:
    ds = ShardDataset(shards, clip_seconds=0.25, shuffle_buffer=32, seed=1)
    got: list[int] = []
    for rank in range(world):
        for worker in range(2):
            part = _indices(ds.part(rank, world, worker, 2, epoch=1))
            assert len(part) >= ds.total // (2 * world) - 1
            got.extend(part)
    assert sorted(got) == list(range(ds.total))
    # few shards for many parts: still exact (parts share shards, each reads its own clips)
    few = ShardDataset(f"{shards}/shard-{{000000..000001}}.tar", clip_seconds=0.25)
    got = [i for r in range(2) for w in range(3) for i in _indices(few.part(r, 2, w, 3))]
    assert sorted(got) == list(range(2 * SHARD_SIZE))


def test_drop_last_whole_batches_with_dataloader_workers(shards: Path) -> None:
    ds = ShardDataset(shards, clip_seconds=0.25, batch_size=8, drop_last=True, seed=0)
    ds.set_distributed(1, 2)
    assert len(ds) == ds.total // 16 * 8
    loader = DataLoader(ds, batch_size=8, drop_last=True, num_workers=2)
    assert len(loader) == len(ds) // 8
    batches = list(loader)
    assert len(batches) == len(loader)
    ids = torch.cat([b["index"] for b in batches]).tolist()
    assert len(ids) == len(set(ids)) == len(ds)
    other = ShardDataset(shards, clip_seconds=0.25, batch_size=8, drop_last=True, seed=0)
    rank0 = {i for w in range(2) for i in _indices(other.part(0, 2, w, 2))}
    assert not rank0 & set(ids) and len(rank0) == len(ds)
    assert batches[0]["audio"].shape == (8, 4000) and batches[0]["audio"].dtype == torch.float32


def test_crops_match_crop_dataset_semantics(tmp_path: Path) -> None:
    sf.write(tmp_path / "short.wav", 0.5 * np.sin(np.arange(1000) / 5.0), 16000)
    write_manifest([Item(tmp_path / "short.wav", ("a",))], tmp_path / "m.csv")
    write_shards(tmp_path / "m.csv", tmp_path / "s", progress=False)
    (item,) = list(ShardDataset(tmp_path / "s", clip_seconds=0.25))
    audio = item["audio"].numpy()
    ref = load_audio(tmp_path / "short.wav", 16000)
    assert audio.shape == (4000,) and item["length"] == 1000 and item["start"] == 0
    assert np.abs(audio - np.tile(ref, 4)).max() <= 2.0**-15  # tiled, as fit_length does


# -- shuffling --------------------------------------------------------------------------------------


def test_shuffle_is_deterministic_and_changes_per_epoch(shards: Path) -> None:
    def order(epoch: int, seed: int = 0) -> list[int]:
        ds = ShardDataset(shards, clip_seconds=0.1, shuffle_buffer=50, seed=seed)
        ds.set_epoch(epoch)
        return _indices(ds)

    e0, e1 = order(0), order(1)
    assert e0 == order(0)  # same seed and epoch: same order
    assert e0 != e1 and sorted(e0) == sorted(e1) == list(range(len(e0)))
    assert order(0, seed=5) != e0
    # each iter() after set_epoch advances the epoch (persistent workers never see set_epoch)
    ds = ShardDataset(shards, clip_seconds=0.1, shuffle_buffer=50, seed=0)
    assert _indices(ds) == e0 and _indices(ds) == e1
    no_shuffle = ShardDataset(shards, clip_seconds=0.1, shuffle=False)
    assert _indices(no_shuffle) == list(range(no_shuffle.total))


def test_shard_loader_sets_the_epoch_before_workers_start(shards: Path) -> None:
    epoch = [0]
    kw = dict(clip_seconds=0.1, batch_size=8, drop_last=True, shuffle_buffer=20, seed=2)

    def run(loader: DataLoader) -> list[int]:
        return torch.cat([b["index"] for b in loader]).tolist()

    persistent = ShardLoader(ShardDataset(shards, **kw), epoch=lambda: epoch[0], batch_size=8,
                             drop_last=True, num_workers=2, persistent_workers=True)
    first = run(persistent)
    epoch[0] = 1
    second = run(persistent)
    fresh = ShardLoader(ShardDataset(shards, **kw), epoch=lambda: 1, batch_size=8,
                        drop_last=True, num_workers=2)
    assert second == run(fresh) and first != second
    assert len(first) == len(set(first)) == len(second)


# -- sources and errors -----------------------------------------------------------------------------


def test_sources_and_url_patterns(shards: Path) -> None:
    pattern = f"file://{shards}/shard-{{000001..000003}}.tar"
    assert is_shard_source(pattern) and is_shard_source(shards)
    assert is_shard_source(shards / INDEX_NAME) and not is_shard_source(shards.parent)
    ds = ShardDataset(pattern, clip_seconds=0.1)
    assert ds.total == 3 * SHARD_SIZE and len(ds) == ds.total
    assert sorted(_indices(ds)) == list(range(SHARD_SIZE, 4 * SHARD_SIZE))
    index, listed = resolve_shards(f"file://{shards}/{INDEX_NAME}")
    assert len(listed) == len(index.shards) and listed[0][0].startswith("file://")
    via_list = ShardDataset([shards / "shard-000000.tar"], clip_seconds=0.1)
    assert via_list.total == SHARD_SIZE
    with pytest.raises(TympanError, match="shard-000098.tar: not listed in"):
        ShardDataset(f"{shards}/shard-{{000098..000099}}.tar")
    with pytest.raises(TympanError, match=r"44100 Hz is needed.*--sample-rate 44100"):
        ShardDataset(shards, sample_rate=44100)
    pretrain = ShardDataset(shards, split="pretrain", clip_seconds=0.1)
    assert pretrain.total == json.loads((shards / INDEX_NAME).read_text())["splits"]["pretrain"]
    assert sorted(_indices(pretrain)) == list(range(pretrain.total))
    assert {m["split"] for _, m in iter_clips(shards, split="pretrain")} == {"pretrain"}
    with pytest.raises(TympanError, match="no clips in split 'nope'"):
        ShardDataset(shards, split="nope")


def test_missing_truncated_and_corrupt_shards(shards: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(shards, copy)
    with pytest.raises(TympanError, match="no shard index there"):
        ShardDataset(tmp_path / "nothing" / INDEX_NAME)
    (copy / "shard-000002.tar").unlink()
    with pytest.raises(TympanError, match=r"shard-000002.tar: shard not found"):
        ShardDataset(copy)
    shutil.copy(shards / "shard-000002.tar", copy / "shard-000002.tar")
    data = (copy / "shard-000001.tar").read_bytes()
    (copy / "shard-000001.tar").write_bytes(data[: len(data) // 2])
    with pytest.raises(TympanError, match=r"shard-000001.tar: \d+ bytes, but .* says"):
        ShardDataset(copy)
    # same size, garbage inside: found when the shard is read, named in the error
    (copy / "shard-000001.tar").write_bytes(data[:2048] + b"\x07" * (len(data) - 2048))
    ds = ShardDataset(copy, clip_seconds=0.1, shuffle=False)
    with pytest.raises(TympanError, match="shard-000001.tar"):
        list(ds)
    (copy / INDEX_NAME).write_text("{not json")
    with pytest.raises(TympanError, match="is not valid JSON"):
        ShardDataset(copy)


def test_same_track_pairs(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    items = []
    for i in range(4):
        sf.write(tmp_path / f"t{i}.wav", 0.3 * rng.normal(size=16000 * 3), 16000)
        items.append(Item(tmp_path / f"t{i}.wav", ("a",), track=f"t{i}"))
    sf.write(tmp_path / "short.wav", 0.3 * rng.normal(size=8000), 16000)
    write_manifest(items, tmp_path / "m.csv")
    write_shards(tmp_path / "m.csv", tmp_path / "s", progress=False)
    spec = PairSpec(segment_seconds=0.5, min_gap=0.5, max_gap=1.5)
    got = list(ShardDataset(tmp_path / "s", pairs=spec))
    assert len(got) == 4 and set(got[0]) == {"audio", "audio2", "index"}
    assert all(g["audio"].shape == g["audio2"].shape == (8000,) for g in got)
    assert all(not torch.equal(g["audio"], g["audio2"]) for g in got)
    write_manifest([*items, Item(tmp_path / "short.wav", ("a",))], tmp_path / "m2.csv")
    write_shards(tmp_path / "m2.csv", tmp_path / "s2", progress=False)
    with pytest.raises(TympanError, match="too short for two 0.5 s segments.*--min-seconds 1"):
        ShardDataset(tmp_path / "s2", pairs=spec)
    index = write_shards(tmp_path / "m2.csv", tmp_path / "s3", min_seconds=1.0, skip_bad=True,
                         progress=False)
    assert index.total == 4 and len(ShardDataset(tmp_path / "s3", pairs=spec)) == 4
