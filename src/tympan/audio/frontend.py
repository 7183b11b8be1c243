"""Batched log-mel front end, on whatever device the waveforms are on.

MT-SLVR (``../shared/seeds/000_e1eab6133071efa6.txt``, "Processing & Input") z-normalises each
sample and feeds a (3-channel) mel-spectrogram to a ResNet. The filterbank comes from librosa (the
reference implementation, Slaney-normalised HTK=False mels); the STFT runs in torch so that a whole
batch is transformed at once on the CPU or GPU.
"""

from __future__ import annotations

import librosa
import torch
from torch import nn

from tympan.config import FrontendConfig


class LogMel(nn.Module):
    """Waveforms ``[B, T]`` -> log-mel ``[B, C, n_mels, frames]``.

    ``frames = 1 + T // hop_length`` (centred STFT). With ``normalize`` each clip's log-mel is
    z-normalised over (mel, time), which removes the clip's gain and keeps the network's input
    scale fixed. With ``channels=3`` the channels are log-mel, delta and delta-delta.
    """

    def __init__(self, cfg: FrontendConfig, sample_rate: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.sample_rate = sample_rate
        fb = librosa.filters.mel(
            sr=sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.f_min, fmax=cfg.f_max
        )
        # buffers travel with .to(device) but are not learnable and not saved as weights
        self.register_buffer("mel_fb", torch.from_numpy(fb).float(), persistent=False)
        self.register_buffer("window", torch.hann_window(cfg.n_fft), persistent=False)

    @property
    def out_channels(self) -> int:
        return self.cfg.channels

    def num_frames(self, num_samples: int) -> int:
        return 1 + num_samples // self.cfg.hop_length

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        if wav.dim() != 2:
            raise ValueError(f"LogMel expects waveforms [B, T], got shape {tuple(wav.shape)}")
        # the STFT and log are done in fp32 even under autocast: bf16 log-power is too coarse
        with torch.autocast(device_type=wav.device.type, enabled=False):
            spec = torch.stft(
                wav.float(), self.cfg.n_fft, self.cfg.hop_length, window=self.window,
                center=True, pad_mode="constant", return_complex=True,
            )
            power = spec.real.square() + spec.imag.square()  # [B, F, frames]
            mel = torch.matmul(self.mel_fb, power)  # [B, n_mels, frames]
            logmel = torch.log(mel + 1e-6)
            if self.cfg.normalize:
                mean = logmel.mean(dim=(1, 2), keepdim=True)
                std = logmel.std(dim=(1, 2), keepdim=True)
                logmel = (logmel - mean) / (std + 1e-5)
            x = logmel.unsqueeze(1)
            if self.cfg.channels == 3:
                d1 = _delta(logmel)
                x = torch.stack([logmel, d1, _delta(d1)], dim=1)
        return x


def _delta(x: torch.Tensor, width: int = 2) -> torch.Tensor:
    """Regression delta over the last (time) axis, as ``librosa.feature.delta`` with edge padding."""
    n = torch.arange(-width, width + 1, dtype=x.dtype, device=x.device)
    # conv1d correlates: out[t] = sum_n n * x[t + n] / sum_n n^2
    kernel = (n / n.square().sum()).view(1, 1, -1)
    b, f, t = x.shape
    padded = torch.nn.functional.pad(x.reshape(b * f, 1, t), (width, width), mode="replicate")
    return torch.nn.functional.conv1d(padded, kernel).reshape(b, f, t)
