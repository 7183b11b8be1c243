"""Probe a frozen encoder on a labelled dataset: the multi-view tagging seed's downstream path.

``../shared/seeds/003_302de149e7ba2620.txt``, "3.2. Pretext to Downstream Transfer Learning":
the backbone is frozen, each track's segment embeddings are averaged, and a probe
(:mod:`tympan.evaluation.probes`) is trained on the train split, checkpointed on the validation
loss and scored on the test split with bootstrap mean ± std; "3.3" adds limited-data curves.

:class:`ProbeBench` decodes a manifest's three splits once and scores any number of models on
them, so every model sees the same clips, targets, probe settings and bootstrap draws (as
:class:`~tympan.evaluation.fewshot.FewShotBench` does for episodes).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tympan.data.manifest import Manifest, read_manifest
from tympan.data.scan import ScanReport, scan_items
from tympan.errors import TympanError
from tympan.evaluation.features import embed_clips, embed_frames, frame_stats, pick_device
from tympan.evaluation.probes import (
    LIMITED_FRACTIONS,
    ProbeResult,
    average_by_track,
    first_by_track,
    label_vocabulary,
    limited_data,
    multi_hot,
    run_probe,
)

SPLITS = ("train", "val", "test")


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """Run a block with ``n`` torch threads. Probes are small matrix products where two CPU
    threads fight over tiny kernels (about 30x slower than one, measured on the 2-core CI
    machine); the encoder's forward passes keep every thread."""
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


class ProbeBench:
    """A labelled manifest with ``train``, ``val`` and ``test`` splits, decoded once.

    ``task="tagging"`` uses every label of an item (multi-hot over the train split's tags);
    ``task="classification"`` needs one label per item. Items sharing a ``track`` are one example:
    their embeddings are averaged (the seed's track-level evaluation).
    """

    def __init__(
        self, data: str | Path, task: str = "tagging", *, skip_bad: bool = False,
        progress: bool = True,
    ) -> None:
        if task not in ("tagging", "classification"):
            raise TympanError(f"--task {task}: choose tagging or classification")
        self.data = str(data)
        self.task = task
        manifest = read_manifest(data, check_files=not skip_bad)
        missing = [s for s in SPLITS if s not in manifest.splits]
        if missing:
            raise TympanError(
                f"{data}: a probe needs splits train, val and test in the manifest's 'split' "
                f"column; missing {', '.join(missing)} (found: {', '.join(manifest.splits) or 'none'})"
            )
        self.manifests: dict[str, Manifest] = {s: manifest.select(s) for s in SPLITS}
        if task == "classification":
            for m in self.manifests.values():
                for item in m.items:
                    item.label  # raises ManifestError naming the file if it has several labels
        self.skip_bad = skip_bad
        self.progress = progress
        self._audio: dict[tuple[str, int], ScanReport] = {}
        self.classes = label_vocabulary(it.labels for it in self.manifests["train"].items)

    def clips(self, split: str, sample_rate: int) -> ScanReport:
        key = (split, sample_rate)
        if key not in self._audio:
            self._audio[key] = scan_items(
                self.manifests[split].items, sample_rate, skip_bad=self.skip_bad,
                keep_audio=True, progress=self.progress, desc=f"loading {split} clips",
            )
        return self._audio[key]

    @property
    def skipped(self) -> list[dict[str, str]]:
        return [s for rep in self._audio.values() for s in rep.skipped]

    def _targets(self, report: ScanReport) -> np.ndarray:
        if self.task == "tagging":
            return multi_hot([it.labels for it in report.items], self.classes)
        index = {c: i for i, c in enumerate(self.classes)}
        unknown = sorted({it.label for it in report.items} - set(index))
        if unknown:
            raise TympanError(
                f"{self.data}: class '{unknown[0]}' occurs outside the train split but never in "
                f"it; a probe cannot learn it (move some of its clips to train)"
            )
        return np.array([index[it.label] for it in report.items], dtype=np.int64)

    def embed(
        self, model: nn.Module, *, segment_seconds: float | None = None,
        task: str | None = None, device: str | torch.device | None = None,
        stats: str | None = None,
    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """``{split: (track embeddings [N, D], targets)}`` of ``model``.

        ``stats``: ``None`` uses the encoder's pooled embedding; ``"mean"`` or ``"mean+std"``
        pools its frame-level representation (``Encoder.frames``) over each clip instead
        (:func:`~tympan.evaluation.features.frame_stats`, x-vector-style statistics pooling).
        """
        seconds = segment_seconds or model.recipe.fewshot.segment_seconds
        out = {}
        for split in SPLITS:
            rep = self.clips(split, model.sample_rate)
            if not rep.items:
                raise TympanError(f"{self.data}: no usable clips in split '{split}'")
            if stats is None:
                emb = embed_clips(model, rep.audio, seconds, task=task, device=device,
                                  progress=self.progress)
            else:
                emb = frame_stats(embed_frames(model, rep.audio, seconds, task=task,
                                               device=device, progress=self.progress), stats)
            tracks = [it.track or str(it.path) for it in rep.items]
            emb_t, _ = average_by_track(emb, tracks)
            out[split] = (emb_t, first_by_track(self._targets(rep), tracks))
        return out

    def run(
        self, splits: dict[str, tuple[np.ndarray, np.ndarray]], *, kind: str = "linear",
        limited: bool = False, fractions: tuple[float, ...] = LIMITED_FRACTIONS, draws: int = 4,
        seed: int = 0, device: str | torch.device | None = None, **probe_params: Any,
    ) -> dict[str, Any]:
        """Probe and score: ``{"probe": ProbeResult JSON, "limited_data": ... or None}``."""
        dev = pick_device(device)
        threads = 1 if dev.type == "cpu" else None
        params = {"device": str(dev), **probe_params}
        with _threads(threads):
            result: ProbeResult = run_probe(
                splits["train"], splits["val"], splits["test"], task=self.task, kind=kind,
                bootstrap_seed=seed, class_names=self.classes, seed=seed, **params,
            )
            curve = None
            if limited:  # subsets drawn from ``seed``; draw j's probe is initialised with seed j
                curve = limited_data(
                    splits["train"], splits["val"], splits["test"], fractions=fractions,
                    draws=draws, task=self.task, kind=kind, seed=seed,
                    class_names=self.classes, **params,
                )
        return {"probe": result.to_json(), "summary": result.summary(), "limited_data": curve}
