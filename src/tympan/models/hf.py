"""Hugging Face speech encoders (wav2vec 2.0, HuBERT, WavLM) behind the tympan Encoder interface.

AudioConFit (``../shared/seeds/002_5040cf44179b95f4.txt``, §3.2 "Backbone") fine-tunes three
general-purpose models: Wav2Vec2 [18], HuBERT [19] and WavLM [20], and its linear stage reads
"temporal average pooling features" (§2.2). :class:`HFEncoder` wraps such a model so that the
rest of tympan sees what it sees from :class:`tympan.models.encoder.Encoder`:

* ``forward(x [B, T], task=None, attention_mask=None) -> [B, D]``: the last hidden state
  averaged over time (over the valid frames only when an ``attention_mask`` is given);
* ``frames(x [B, T], task=None, attention_mask=None) -> [B, T', D]``: the last hidden state;
* ``sample_rate`` (the feature extractor's ``sampling_rate``, else 16000), ``embedding_dim``
  (the model's ``hidden_size``), ``tasks = ("hf",)`` and ``task_slices()``, so that
  :func:`tympan.evaluation.features.embed_clips` embeds with it unchanged.

Models are read from a **local folder only** (``AutoModel.from_pretrained(...,
local_files_only=True, use_safetensors=True)``): nothing is downloaded and no pickle is
unpickled. Where the folder holds a ``preprocessor_config.json`` with ``do_normalize: true``
(wav2vec2-base does), each clip is z-normalised as ``Wav2Vec2FeatureExtractor`` would, but
batched on the device: ``(x - mean) / sqrt(var + 1e-7)`` per clip (over its valid samples).

``transformers`` is an optional dependency: it is imported only when an HF model is loaded.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tympan.errors import TympanError

__all__ = ["HF_PREFIX", "SUPPORTED_MODEL_TYPES", "HFEncoder", "is_hf_spec", "load_hf_encoder"]

#: Backbone specs starting with this name a local Hugging Face model folder.
HF_PREFIX = "hf:"
#: ``model_type`` values of ``config.json`` that can be loaded (the seed's three backbones).
SUPPORTED_MODEL_TYPES: tuple[str, ...] = ("wav2vec2", "hubert", "wavlm")
PREPROCESSOR_FILE = "preprocessor_config.json"
DEFAULT_SAMPLE_RATE = 16000


def is_hf_spec(spec: str | Path) -> bool:
    """Whether ``spec`` names a Hugging Face model folder (``hf:/path/to/model``)."""
    return str(spec).startswith(HF_PREFIX)


@contextlib.contextmanager
def _hf_progress(enabled: bool) -> Iterator[None]:
    """Silence transformers' own progress bars (weights loading/writing) unless ``enabled``."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    if not enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


class HFEncoder(nn.Module):
    """A wav2vec 2.0 / HuBERT / WavLM model with mean pooling over time (module docstring)."""

    def __init__(
        self,
        model: nn.Module,
        sample_rate: int = DEFAULT_SAMPLE_RATE,
        normalize: bool = False,
        source: Path | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.sample_rate = int(sample_rate)
        self.normalize = bool(normalize)
        #: folder the model was read from (its preprocessor config is copied on save)
        self.source = source
        self.tasks: tuple[str, ...] = ("hf",)

    @property
    def embedding_dim(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def model_type(self) -> str:
        return str(self.model.config.model_type)

    def task_slices(self) -> dict[str, tuple[int, int]]:
        return {"hf": (0, self.embedding_dim)}

    def _check_task(self, task: str | None) -> None:
        if task not in (None, "hf"):
            raise TympanError(f"unknown task '{task}': a Hugging Face encoder has only 'hf'")

    def _prepare(self, x: Tensor, attention_mask: Tensor | None) -> Tensor:
        if x.dim() != 2:
            raise TympanError(f"x: expected waveforms [B, T], got shape {tuple(x.shape)}")
        if not self.normalize:
            return x
        # Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm, batched; padding is left at 0
        if attention_mask is None:
            mean = x.mean(dim=1, keepdim=True)
            var = x.var(dim=1, unbiased=False, keepdim=True)
            return (x - mean) / torch.sqrt(var + 1e-7)
        m = attention_mask.to(x.dtype)
        n = m.sum(dim=1, keepdim=True).clamp_min(1.0)
        mean = (x * m).sum(dim=1, keepdim=True) / n
        var = (((x - mean) * m) ** 2).sum(dim=1, keepdim=True) / n
        return (x - mean) / torch.sqrt(var + 1e-7) * m

    def frames(self, x: Tensor, task: str | None = None, attention_mask: Tensor | None = None) -> Tensor:
        """Last hidden state ``[B, T', D]`` for waveforms ``[B, T]`` (``attention_mask [B, T]``:
        1 for real samples, 0 for padding)."""
        self._check_task(task)
        x = self._prepare(x, attention_mask)
        out = self.model(x, attention_mask=attention_mask)
        return out.last_hidden_state

    def forward(self, x: Tensor, task: str | None = None, attention_mask: Tensor | None = None) -> Tensor:
        """Temporal average of :meth:`frames`, over the valid frames only under a mask."""
        hidden = self.frames(x, task, attention_mask)
        if attention_mask is None:
            return hidden.mean(dim=1)
        frame_mask = self.model._get_feature_vector_attention_mask(hidden.shape[1], attention_mask)
        w = frame_mask.to(hidden.dtype).unsqueeze(2)
        return (hidden * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)

    def save_pretrained(self, folder: str | Path, progress: bool = False) -> Path:
        """Write the (tuned) model with safetensors weights, plus the preprocessor config, so
        that ``hf:FOLDER`` loads it again."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        kwargs: dict[str, Any] = {}
        # transformers 4.x takes safe_serialization (default True); 5.x always writes safetensors
        if "safe_serialization" in inspect.signature(self.model.save_pretrained).parameters:
            kwargs["safe_serialization"] = True
        with _hf_progress(progress):
            self.model.save_pretrained(str(folder), **kwargs)
        src = self.source / PREPROCESSOR_FILE if self.source is not None else None
        if src is not None and src.is_file():
            shutil.copyfile(src, folder / PREPROCESSOR_FILE)
        else:
            cfg = {"sampling_rate": self.sample_rate, "do_normalize": self.normalize,
                   "feature_size": 1, "padding_value": 0.0, "return_attention_mask": True,
                   "feature_extractor_type": "Wav2Vec2FeatureExtractor"}
            (folder / PREPROCESSOR_FILE).write_text(json.dumps(cfg, indent=2))
        return folder


def _read_preprocessor(folder: Path) -> tuple[int, bool]:
    """``(sampling_rate, do_normalize)`` from the folder's feature extractor config, else
    ``(16000, False)``."""
    f = folder / PREPROCESSOR_FILE
    if not f.is_file():
        return DEFAULT_SAMPLE_RATE, False
    try:
        cfg = json.loads(f.read_text())
    except (OSError, ValueError) as exc:
        raise TympanError(f"{f}: cannot be read as JSON ({exc}); repair or remove the file") from None
    rate = cfg.get("sampling_rate", DEFAULT_SAMPLE_RATE)
    if not isinstance(rate, int) or rate <= 0:
        raise TympanError(f"{f}: field 'sampling_rate' must be a positive integer, got {rate!r}")
    return rate, bool(cfg.get("do_normalize", False))


def load_hf_encoder(path: str | Path, *, progress: bool = False) -> HFEncoder:
    """Load a local wav2vec 2.0 / HuBERT / WavLM folder (``hf:`` prefix allowed) as an
    :class:`HFEncoder` in eval mode.

    Raises :class:`TympanError` when the folder is missing, holds no ``config.json`` or no
    safetensors weights, or is another architecture than :data:`SUPPORTED_MODEL_TYPES`.
    """
    spec = str(path)
    folder = Path(spec[len(HF_PREFIX):] if is_hf_spec(spec) else spec).expanduser()
    shown = f"{HF_PREFIX}{folder}"
    if not folder.exists():
        raise TympanError(
            f"{shown}: no such folder; give a local Hugging Face model folder (config.json + "
            "model.safetensors), e.g. one written by save_pretrained() (nothing is downloaded)"
        )
    if not folder.is_dir():
        raise TympanError(f"{shown}: is a file, not a model folder; give the folder holding config.json")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise TympanError(
            f"{shown}: not a Hugging Face model folder (no config.json); give the folder that "
            "save_pretrained() wrote"
        )
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (OSError, ValueError, AttributeError) as exc:
        raise TympanError(f"{config_file}: cannot be read as a JSON object ({exc}); repair the file") from None
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise TympanError(
            f"{config_file}: model_type {model_type!r} is not supported; the fine-tuning backbones "
            f"are {', '.join(SUPPORTED_MODEL_TYPES)} (wav2vec 2.0, HuBERT, WavLM)"
        )
    if not any(folder.glob("*.safetensors")):
        raise TympanError(
            f"{shown}: no *.safetensors weights (only safetensors are loaded, pickled .bin files "
            "are refused); convert with model.save_pretrained(folder, safe_serialization=True)"
        )
    try:
        from transformers import AutoConfig, AutoModel
    except ImportError:
        raise TympanError(
            f"{shown}: Hugging Face backbones need the 'transformers' package; install it "
            "(pip install transformers) or use a tympan run directory"
        ) from None
    sample_rate, normalize = _read_preprocessor(folder)
    try:
        with _hf_progress(progress):
            config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
            model = AutoModel.from_pretrained(
                str(folder), config=config, local_files_only=True, use_safetensors=True
            )
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise TympanError(f"{shown}: cannot be loaded as a {model_type} model ({exc})") from None
    return HFEncoder(model, sample_rate=sample_rate, normalize=normalize, source=folder).eval()


#: a tiny transformer (2 layers of 32 units, a 4-layer convolutional feature encoder with
#: wav2vec 2.0's 20 ms frame stride, 320 samples at 16 kHz, so that attention sees 50 frames per
#: second as in the real models): for tests and the CPU-sized AudioConFit reproduction, never
#: for real work
TINY_CONFIG: dict[str, Any] = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
    conv_dim=(32, 32, 32, 32), conv_kernel=(10, 8, 4, 4), conv_stride=(5, 4, 4, 4),
    num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
)


def write_random_hf_model(
    kind: str, folder: str | Path, *, seed: int = 0, config: dict[str, Any] | None = None,
    preprocessor: dict[str, Any] | None = None,
) -> Path:
    """Save a randomly initialised ``kind`` ("wav2vec2", "hubert" or "wavlm") model of
    ``config`` (default :data:`TINY_CONFIG`) to ``folder`` with safetensors, offline, so that
    ``hf:folder`` can be loaded like a downloaded checkpoint. Returns ``folder``."""
    try:
        import transformers
    except ImportError:
        raise TympanError("random Hugging Face models need the 'transformers' package "
                          "(pip install 'tympan[hf]')") from None
    classes = {
        "wav2vec2": (transformers.Wav2Vec2Model, transformers.Wav2Vec2Config, {}),
        "hubert": (transformers.HubertModel, transformers.HubertConfig, {}),
        "wavlm": (transformers.WavLMModel, transformers.WavLMConfig,
                  {"num_buckets": 32, "max_bucket_distance": 100}),
    }
    if kind not in classes:
        raise TympanError(f"random HF model kind {kind!r}: choose one of {', '.join(classes)}")
    model_cls, config_cls, extra = classes[kind]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = model_cls(config_cls(**{**TINY_CONFIG, **extra, **(config or {})}))
    with _hf_progress(False):
        model.save_pretrained(str(folder))
    if preprocessor is not None:
        (folder / PREPROCESSOR_FILE).write_text(json.dumps(preprocessor))
    return folder
