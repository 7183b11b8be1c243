"""Stage 1 of AudioConFit (PairTune) and the FINETUNE baseline, in one training loop.

``../shared/seeds/002_5040cf44179b95f4.txt``, §2.1 "Stage 1: Contrastive Fine-tuning": an
encoder ``f_e`` maps a clip ``x`` to ``r``, "normalised to the unit hyper-sphere"; a projection
``f_p``, "a single linear layer of size p" (§3.2 "Projector": 256), maps ``r`` to ``z``,
normalised again; the loss is SupCon with ``tau = 0.1`` (§3.2 "Loss") over hard pairs mined by
cosine similarity ("within the same class ... the lowest cosine similarity to the anchor ...
from distinct classes ... the highest", §2.1, after the multi-similarity miner [9]:
:func:`tympan.objectives.mining.hard_pair_miner` plugged into
:class:`tympan.objectives.supcon.SupConLoss`). "We then discard ``f_p`` at the end of PAIRTUNE
stage": :func:`tune_encoder` returns the encoder with exactly the parameters it was given.

FINETUNE (§3.2 "Baseline": "end-to-end fine-tuning ... wherein no layers of the pre-trained
encoder are frozen"): a linear classifier on the pooled features, cross-entropy, every
parameter trained. Both methods share everything else, so that the comparison is about the loss:

* batches from :class:`~tympan.data.samplers.MPerClassSampler` (``m`` clips of each of
  ``batch_size // m`` classes; SupCon needs positives in the batch; FINETUNE gets the same
  batches), one random ``clip_seconds`` crop per clip, drawn anew every epoch;
* Adam, constant learning rate ``5e-5`` (§3.2 "Optimiser"), 40 epochs by default ("We search
  the batch size based on the 40-epoch result"); bf16 autocast on CUDA, fp32 on the CPU;
* after every epoch a validation accuracy (the convergence curve of the seed's Fig. 2):
  FINETUNE: its classifier on the clip embeddings (clips cut into ``clip_seconds`` segments whose
  embeddings are averaged, :func:`tympan.evaluation.features.embed_clips`). PairTune has no
  classifier during stage 1, so its curve is the **nearest-centroid** accuracy of the
  L2-normalised clip embeddings ``r``: class centroids from the training clips, cosine
  similarity (no training, no hyper-parameter, and it reads the same representation the linear
  stage will). Costs one no-grad pass over the training and validation clips per epoch;
* with ``select_best`` (default) the encoder of the epoch with the best validation accuracy is
  kept (ties: the earlier epoch), otherwise the last one;
* an atomic per-epoch checkpoint (``checkpoint=``) from which an interrupted run resumes at the
  next epoch, with the same result: each epoch's batches, crops and dropout/SpecAugment draws
  are seeded by ``(seed, epoch)`` alone.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from tympan.data.dataset import fit_length
from tympan.data.samplers import MPerClassSampler
from tympan.errors import ConfigError, TympanError
from tympan.evaluation.features import embed_clips, pick_device
from tympan.finetune.linear import nearest_centroid_accuracy
from tympan.objectives.mining import hard_pair_miner
from tympan.objectives.supcon import SupConLoss

__all__ = [
    "METHODS",
    "ProjectionHead",
    "TuneConfig",
    "TuneResult",
    "crop_batch",
    "resolve_m_per_class",
    "tune_encoder",
]

METHODS: tuple[str, ...] = ("pairtune", "finetune")


class ProjectionHead(nn.Module):
    """``f_p``: one linear layer ``D -> p`` followed by L2 normalisation (seed §2.1, §3.2)."""

    def __init__(self, in_dim: int, out_dim: int = 256) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)

    def forward(self, r: Tensor) -> Tensor:
        return F.normalize(self.linear(r), dim=1)


@dataclass
class TuneConfig:
    """Stage-1 settings; defaults from the seed (§3.2) where it gives them.

    The seed gives no batch size or chunk duration (footnote 5: "will be provided upon the
    release of our open-source code"): ``batch_size=32`` and ``clip_seconds=2.0`` are ours.
    ``m_per_class=None`` picks the smallest ``m >= 4`` dividing ``batch_size`` for which the
    training classes fill a batch (:func:`resolve_m_per_class`). ``mining_margin`` is the
    multi-similarity miner's ``epsilon`` (0.1 in [9]).
    """

    method: str = "pairtune"
    epochs: int = 40
    batch_size: int = 32
    lr: float = 5e-5
    m_per_class: int | None = None
    temperature: float = 0.1
    projection_dim: int = 256
    mining_margin: float = 0.1
    clip_seconds: float = 2.0
    eval_batch_size: int = 64
    select_best: bool = True

    def check(self) -> None:
        """Raise :class:`ConfigError` naming the first bad field."""
        if self.method not in METHODS:
            raise ConfigError(f"method={self.method!r}: use one of {', '.join(METHODS)}")
        for name in ("epochs", "batch_size", "projection_dim", "eval_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}={value!r}: use a positive integer")
        if self.batch_size < 2:
            raise ConfigError(f"batch_size={self.batch_size}: use at least 2 (pairs need two clips)")
        for name in ("lr", "temperature", "clip_seconds"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ConfigError(f"{name}={value!r}: use a positive number")
        if not (isinstance(self.mining_margin, (int, float)) and math.isfinite(self.mining_margin)):
            raise ConfigError(f"mining_margin={self.mining_margin!r}: use a finite number (0.1 in [9])")


@dataclass
class TuneResult:
    """What stage 1 returns. ``encoder`` has exactly the parameters it was given (``f_p`` is
    discarded); ``head`` is FINETUNE's classifier (``None`` for PairTune). ``history`` holds
    ``{"epoch", "train_loss", "val_accuracy"}`` per epoch (epochs count from 1)."""

    encoder: nn.Module
    head: nn.Module | None
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_val_accuracy: float = float("nan")
    #: parameters of the stage-1 head (projection or classifier)
    head_parameters: int = 0
    m_per_class: int = 0


def resolve_m_per_class(batch_size: int, n_classes: int, m: int | None = None) -> int:
    """Clips per class in a batch: ``m`` as given, else a divisor ``m >= 2`` of ``batch_size``
    leaving between 2 and ``n_classes`` classes per batch (every anchor then has positives and
    negatives): the smallest such ``m >= 4``, else the largest below 4."""
    if m is not None:
        if isinstance(m, bool) or not isinstance(m, int) or m < 2:
            raise ConfigError(f"m_per_class={m!r}: use an integer >= 2 (an anchor needs a positive)")
        return m
    if n_classes < 2:
        raise TympanError(f"the training split has {n_classes} class(es); fine-tuning a classifier needs at least 2")
    valid = [c for c in range(2, batch_size // 2 + 1) if batch_size % c == 0 and 2 <= batch_size // c <= n_classes]
    if not valid:
        raise ConfigError(
            f"batch_size={batch_size}: no m_per_class >= 2 divides it into 2 to {n_classes} classes; "
            f"use a batch size that is a multiple of 4 (e.g. {max(8, batch_size // 4 * 4)}), or set m_per_class"
        )
    above = [c for c in valid if c >= 4]
    return above[0] if above else valid[-1]


def crop_batch(
    audio: Sequence[np.ndarray], index: np.ndarray, num_samples: int, rng: np.random.Generator
) -> Tensor:
    """``[B, num_samples]`` random crops (short clips tiled, :func:`fit_length`) of the clips
    ``audio[index]``; starts drawn from ``rng`` for the whole batch at once."""
    lengths = np.array([len(audio[i]) for i in index])
    starts = (rng.random(len(index)) * (np.maximum(lengths - num_samples, 0) + 1)).astype(np.int64)
    crops = np.stack([fit_length(audio[i], num_samples, int(s)) for i, s in zip(index, starts)])
    return torch.from_numpy(np.ascontiguousarray(crops, dtype=np.float32))


def _autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA, none elsewhere (bf16 on the CPU is far slower than fp32)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _seed_epoch(seed: int, epoch: int) -> np.random.Generator:
    """Seed torch and numpy's global generators (dropout; wav2vec2's SpecAugment masks draw from
    numpy's) from ``(seed, epoch)``; return the epoch's crop generator."""
    state = np.random.SeedSequence([seed, epoch]).generate_state(2)
    torch.manual_seed(int(state[0]))
    np.random.seed(int(state[1]))
    return np.random.default_rng([seed, epoch, 1])


def _cpu_state(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` to a temporary file, then an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _load_checkpoint(path: Path, method: str, seed: int) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated file cannot happen (atomic writes), a foreign one can
        raise TympanError(f"{path}: cannot be read as a fine-tuning checkpoint ({exc}); delete it to start over") from None
    if state.get("method") != method or state.get("seed") != seed:
        raise TympanError(
            f"{path}: belongs to another run (method {state.get('method')}, seed {state.get('seed')}); "
            "delete it or choose another output folder"
        )
    return state


def _batches(sampler: MPerClassSampler, epoch: int) -> Iterator[np.ndarray]:
    sampler.set_epoch(epoch)
    yield from sampler.batches()


def tune_encoder(
    encoder: nn.Module,
    train_audio: Sequence[np.ndarray],
    train_labels: np.ndarray,
    val_audio: Sequence[np.ndarray],
    val_labels: np.ndarray,
    n_classes: int,
    config: TuneConfig,
    *,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
    checkpoint: str | Path | None = None,
    desc: str | None = None,
) -> TuneResult:
    """Train ``encoder`` (in place) with PairTune or FINETUNE (module docstring).

    ``train_audio``/``val_audio``: mono waveforms at ``encoder.sample_rate``; ``*_labels``:
    class indices in ``[0, n_classes)``. Returns the encoder of the selected epoch in eval mode.
    """
    config.check()
    train_labels = np.asarray(train_labels, dtype=np.int64)
    val_labels = np.asarray(val_labels, dtype=np.int64)
    if len(train_audio) != len(train_labels) or len(val_audio) != len(val_labels):
        raise TympanError("train/val audio and labels differ in length; pass one label per clip")
    if len(val_audio) == 0:
        raise TympanError("the validation split is empty; model selection needs validation clips")
    dev = pick_device(device)
    m = resolve_m_per_class(config.batch_size, len(np.unique(train_labels)), config.m_per_class)
    sampler = MPerClassSampler(train_labels, m=m, batch_size=config.batch_size, seed=seed)
    num_samples = max(1, int(round(config.clip_seconds * encoder.sample_rate)))
    dim = int(encoder.embedding_dim)

    # the head is built from the run's seed, before any epoch is drawn
    torch.manual_seed(int(np.random.SeedSequence([seed, 0]).generate_state(1)[0]))
    if config.method == "pairtune":
        head: nn.Module = ProjectionHead(dim, config.projection_dim)
        supcon = SupConLoss(config.temperature, miner=partial(hard_pair_miner, epsilon=config.mining_margin))
    else:
        head = nn.Linear(dim, n_classes)
    encoder.to(dev).train()
    head.to(dev).train()
    params = list(encoder.parameters()) + list(head.parameters())
    optimizer = torch.optim.Adam(params, lr=config.lr)

    history: list[dict[str, float]] = []
    best_acc, best_epoch = -math.inf, 0
    best_state: dict[str, dict[str, Tensor]] | None = None
    start = 1
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if ckpt is not None and (saved := _load_checkpoint(ckpt, config.method, seed)) is not None:
        encoder.load_state_dict(saved["encoder"])
        head.load_state_dict(saved["head"])
        optimizer.load_state_dict(saved["optimizer"])
        history = [dict(h) for h in saved["history"]]
        best_acc, best_epoch, best_state = float(saved["best_acc"]), int(saved["best_epoch"]), saved["best_state"]
        start = int(saved["epoch"]) + 1

    epochs = range(start, config.epochs + 1)
    bar = tqdm(total=len(epochs) * sampler.num_batches, desc=desc or config.method, unit="batch",
               disable=not progress, leave=False)
    try:
        for epoch in epochs:
            rng = _seed_epoch(seed, epoch)
            encoder.train()
            head.train()
            total, count = 0.0, 0
            for index in _batches(sampler, epoch - 1):
                x = crop_batch(train_audio, index, num_samples, rng).to(dev, non_blocking=True)
                y = torch.from_numpy(train_labels[index]).to(dev)
                with _autocast(dev):
                    emb = encoder(x)
                    if config.method == "pairtune":
                        z = head(F.normalize(emb.float(), dim=1))
                        loss = supcon(z, y)
                    else:
                        loss = F.cross_entropy(head(emb).float(), y)
                if not torch.isfinite(loss):
                    raise TympanError(
                        f"{config.method} epoch {epoch}: the loss became {loss.item()}; lower the "
                        f"learning rate (lr={config.lr:g}) or use fp32"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach())
                count += 1
                bar.update(1)
            acc = _val_accuracy(config, encoder, head, train_audio, train_labels, val_audio, val_labels, dev)
            history.append({"epoch": epoch, "train_loss": total / max(count, 1), "val_accuracy": acc})
            bar.set_postfix(loss=f"{total / max(count, 1):.3f}", val_acc=f"{acc:.3f}")
            if acc > best_acc or not config.select_best:
                best_acc, best_epoch = acc, epoch
                best_state = {"encoder": _cpu_state(encoder), "head": _cpu_state(head)}
            if ckpt is not None:
                _save_checkpoint(ckpt, {
                    "method": config.method, "seed": seed, "epoch": epoch,
                    "encoder": _cpu_state(encoder), "head": _cpu_state(head),
                    "optimizer": optimizer.state_dict(), "history": history,
                    "best_acc": best_acc, "best_epoch": best_epoch, "best_state": best_state,
                })
    finally:
        bar.close()

    if best_state is not None:
        encoder.load_state_dict(best_state["encoder"])
        head.load_state_dict(best_state["head"])
    encoder.eval()
    head.eval()
    return TuneResult(
        encoder=encoder,
        head=head if config.method == "finetune" else None,  # f_p is discarded (seed §2.1)
        history=history,
        best_epoch=best_epoch,
        best_val_accuracy=float(best_acc),
        head_parameters=sum(p.numel() for p in head.parameters()),
        m_per_class=m,
    )


def _val_accuracy(
    config: TuneConfig,
    encoder: nn.Module,
    head: nn.Module,
    train_audio: Sequence[np.ndarray],
    train_labels: np.ndarray,
    val_audio: Sequence[np.ndarray],
    val_labels: np.ndarray,
    device: torch.device,
) -> float:
    """The epoch's validation accuracy: FINETUNE's classifier, PairTune's nearest centroid."""
    embed = partial(embed_clips, encoder, segment_seconds=config.clip_seconds,
                    batch_size=config.eval_batch_size, device=device, progress=False)
    val_emb = embed(val_audio)
    if config.method == "finetune":
        head.eval()
        with torch.no_grad():
            pred = head(torch.from_numpy(val_emb).to(device)).argmax(dim=1).cpu().numpy()
        return float((pred == val_labels).mean())
    return nearest_centroid_accuracy(embed(train_audio), train_labels, val_emb, val_labels)
