"""HEAR-style embedding API: ``load_model``, ``get_scene_embeddings``, ``get_timestamp_embeddings``.

The three functions of the HEAR benchmark's common API (Turian et al., "HEAR: Holistic Evaluation
of Audio Representations", 2022), so that a tympan encoder plugs into existing audio benchmarks::

    from tympan import hear
    model = hear.load_model("runs/simclr")             # a run directory of `tympan pretrain`
    scene = hear.get_scene_embeddings(audio, model)    # audio [n, samples] at model.sample_rate
    emb, ts = hear.get_timestamp_embeddings(audio, model)   # [n, T, D], [n, T] in milliseconds

Scene embeddings are the encoder's pooled embedding of the whole clip (every task's embedding
concatenated, the Encoder contract), ``[n, model.scene_embedding_size]``.

Timestamp embeddings are the embeddings of windows of ``window_ms`` centred every ``hop_ms``
(default: 50 ms, the resolution HEAR's event tasks ask for; the window is the recipe's evaluation
segment, ``fewshot.segment_seconds``). The audio is zero-padded by half a window at both ends, so
the first timestamp is 0 ms; all windows of the batch go through the encoder in batches of
``batch_size``. A ResNet's own frames (``Encoder.frames``) are 32 front-end hops apart (about one
second with the default front end), too coarse for event detection, hence the windows.
Weights are read with safetensors (:func:`tympan.models.encoder.load_encoder`): nothing is
unpickled.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tympan.errors import TympanError
from tympan.evaluation.features import pick_device
from tympan.models.encoder import Encoder, load_encoder

__all__ = ["HearModel", "get_scene_embeddings", "get_timestamp_embeddings", "load_model"]


class HearModel(nn.Module):
    """A tympan :class:`Encoder` with the attributes HEAR expects."""

    def __init__(
        self, encoder: Encoder, *, hop_ms: float = 50.0, window_ms: float | None = None,
        batch_size: int = 64,
    ) -> None:
        super().__init__()
        if hop_ms <= 0:
            raise TympanError(f"hear.load_model: hop_ms must be > 0, got {hop_ms}")
        self.encoder = encoder.eval()
        self.sample_rate: int = encoder.sample_rate
        self.scene_embedding_size: int = encoder.embedding_dim
        self.timestamp_embedding_size: int = encoder.embedding_dim
        self.hop_ms = float(hop_ms)
        self.window_ms = float(window_ms or encoder.recipe.fewshot.segment_seconds * 1000.0)
        if self.window_ms <= 0:
            raise TympanError(f"hear.load_model: window_ms must be > 0, got {window_ms}")
        self.batch_size = batch_size

    def forward(self, audio: Tensor) -> Tensor:
        return self.encoder(audio)


def load_model(
    model_file_path: str | Path = "", *, hop_ms: float = 50.0, window_ms: float | None = None,
    batch_size: int = 64, device: str | None = None,
) -> HearModel:
    """Load the encoder of a tympan run directory (``model_file_path``) as a HEAR model."""
    if not str(model_file_path):
        raise TympanError("hear.load_model: give the run directory written by 'tympan pretrain'")
    encoder = load_encoder(model_file_path)
    return HearModel(encoder, hop_ms=hop_ms, window_ms=window_ms, batch_size=batch_size).to(
        pick_device(device)
    )


def _check_audio(audio: Tensor, model: HearModel) -> Tensor:
    if not isinstance(audio, Tensor) or audio.dim() != 2:
        shape = tuple(audio.shape) if isinstance(audio, Tensor) else type(audio).__name__
        raise TympanError(
            f"HEAR audio must be a tensor [n_sounds, n_samples] at {model.sample_rate} Hz, "
            f"got {shape}"
        )
    if audio.shape[1] == 0:
        raise TympanError("HEAR audio has zero samples")
    if not torch.isfinite(audio).all():
        raise TympanError("HEAR audio contains NaN or infinite samples")
    return audio.to(next(model.parameters()).device, torch.float32)


@torch.no_grad()
def get_scene_embeddings(audio: Tensor, model: HearModel) -> Tensor:
    """``[n, scene_embedding_size]``: the pooled embedding of each whole clip."""
    x = _check_audio(audio, model)
    return torch.cat([model(x[i : i + model.batch_size])
                      for i in range(0, x.shape[0], model.batch_size)])


@torch.no_grad()
def get_timestamp_embeddings(audio: Tensor, model: HearModel) -> tuple[Tensor, Tensor]:
    """``(embeddings [n, T, D], timestamps [n, T])``: windows centred every ``hop_ms``
    milliseconds from 0 to the clip's end; timestamps in milliseconds (module docstring)."""
    x = _check_audio(audio, model)
    n, length = x.shape
    sr = model.sample_rate
    hop = model.hop_ms * sr / 1000.0
    win = max(1, int(round(model.window_ms * sr / 1000.0)))
    count = int(length // hop) + 1 if hop <= length else 1
    centres = torch.arange(count, device=x.device, dtype=torch.float64) * hop
    starts = centres.round().long()  # in the padded signal, a window centred at c starts at c
    padded = F.pad(x, (win // 2, win - win // 2))
    # every window of every clip as one [n * count, win] batch, gathered without a Python loop
    index = starts.unsqueeze(1) + torch.arange(win, device=x.device).unsqueeze(0)  # [count, win]
    windows = padded[:, index].reshape(n * count, win)
    emb = torch.cat([model(windows[i : i + model.batch_size])
                     for i in range(0, windows.shape[0], model.batch_size)])
    timestamps = (centres * 1000.0 / sr).float().unsqueeze(0).expand(n, count)
    return emb.reshape(n, count, -1), timestamps.contiguous()
