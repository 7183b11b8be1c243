"""Backbones to fine-tune: a tympan run directory, ``random`` or a local Hugging Face model.

AudioConFit is "backbone model-agnostic" (``../shared/seeds/002_5040cf44179b95f4.txt``, §1
contributions, §3.2 "Backbone"). A backbone spec is one string:

* a tympan run directory (``config.yaml`` + ``encoder.safetensors``, from ``tympan pretrain``):
  :func:`tympan.models.encoder.load_encoder`, its pooled embedding ``Encoder(x) -> [B, D]``;
* ``random``: a tympan :class:`~tympan.models.encoder.Encoder` with untrained weights, built
  from ``recipe`` (default: the packaged ``simclr`` recipe), seeded; a floor, and quick tests;
* ``hf:/path/to/model``: a local wav2vec 2.0, HuBERT or WavLM folder
  (:func:`tympan.models.hf.load_hf_encoder`), mean-pooled over time.

Every one is an ``nn.Module`` with ``forward(x [B, T]) -> [B, D]``, ``sample_rate`` and
``embedding_dim``; :class:`Backbone` adds what the fine-tuning protocol needs on top: a fresh
copy per seed or fold, and saving a tuned copy where it can be loaded again.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from tympan.config import Recipe, load_recipe, save_recipe
from tympan.errors import TympanError
from tympan.evaluation.features import resolve_model
from tympan.models.encoder import CONFIG_FILE, ENCODER_FILE, Encoder, save_encoder
from tympan.models.hf import HFEncoder, is_hf_spec, load_hf_encoder

__all__ = ["HF_MODEL_DIR", "Backbone", "load_backbone"]

#: Subfolder of a fine-tuning run that holds a tuned Hugging Face model.
HF_MODEL_DIR = "hf_model"


@dataclass
class Backbone:
    """A resolved backbone: ``module`` (the pretrained weights, never trained in place),
    ``kind`` (``"tympan"``, ``"random"`` or ``"hf"``) and the ``spec`` it came from."""

    module: nn.Module
    kind: str
    spec: str

    @property
    def sample_rate(self) -> int:
        return int(self.module.sample_rate)

    @property
    def embedding_dim(self) -> int:
        return int(self.module.embedding_dim)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    def fresh(self) -> nn.Module:
        """An independent copy of the pretrained weights, in train mode, all parameters
        trainable (the seed's FINETUNE baseline freezes nothing, §3.2 "Baseline")."""
        module = copy.deepcopy(self.module).train()
        for p in module.parameters():
            p.requires_grad_(True)
        return module

    def save(self, module: nn.Module, out: str | Path, *, progress: bool = False) -> Path:
        """Save a tuned copy ``module`` so that it loads as a backbone again: a tympan encoder
        as ``out/config.yaml`` + ``out/encoder.safetensors`` (a run directory), a Hugging Face
        model with ``save_pretrained`` into ``out/hf_model``. Returns the loadable path."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        if isinstance(module, HFEncoder):
            return module.save_pretrained(out / HF_MODEL_DIR, progress=progress)
        if isinstance(module, Encoder):
            save_recipe(module.recipe, out / CONFIG_FILE)
            save_encoder(module, out / ENCODER_FILE)
            return out
        raise TympanError(f"backbone {self.spec}: cannot save a {type(module).__name__}")


def load_backbone(
    spec: str | Path, *, recipe: str | Path | Recipe | None = None, seed: int = 0, progress: bool = False
) -> Backbone:
    """Resolve a backbone spec (module docstring) to a :class:`Backbone`.

    ``recipe`` sets the architecture of ``random`` (a packaged name, a YAML path or a
    :class:`Recipe`; default ``simclr``); ``seed`` its initial weights.
    """
    text = str(spec)
    if is_hf_spec(text):
        return Backbone(load_hf_encoder(text, progress=progress), "hf", text)
    if text == "logmel":
        raise TympanError(
            "backbone 'logmel' has no weights to fine-tune; give a tympan run directory, "
            "'random' or hf:/path/to/model"
        )
    if text == "random":
        cfg = recipe if isinstance(recipe, Recipe) else load_recipe(recipe or "simclr")
        return Backbone(resolve_model("random", cfg, seed=seed), "random", text)
    path = Path(text).expanduser()
    if not path.is_dir():
        raise TympanError(
            f"backbone {text}: not a folder; give a tympan run directory (from 'tympan "
            "pretrain'), 'random', or a local Hugging Face model as hf:/path/to/model"
        )
    if (path / "config.json").is_file() and not (path / CONFIG_FILE).is_file():
        raise TympanError(
            f"backbone {text}: looks like a Hugging Face model folder (config.json); "
            f"write it as hf:{text}"
        )
    return Backbone(resolve_model(path), "tympan", text)
