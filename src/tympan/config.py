"""Recipes: the fully described composition of a run.

A recipe is a YAML file with the sections below. Every field has a default taken from the seed
that defines it (``../shared/seeds/000_e1eab6133071efa6.txt``, MT-SLVR, unless a field says
otherwise); a recipe names only what it changes. Unknown fields are an error that names the field,
so a typo never silently falls back to a default. The resolved recipe (defaults filled in) is
written to ``RUN/config.yaml`` so a run directory describes itself.

Packaged recipes live in ``tympan/recipes/*.yaml`` and are addressed by name (``--recipe simclr``);
any other value is read as a path.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from tympan.errors import ConfigError


@dataclass
class AudioConfig:
    """Decoding and cropping. Clips are mono float32 at ``sample_rate``."""

    sample_rate: int = 16000
    #: length of the random crop each pretraining example is cut to (shorter clips are tiled)
    clip_seconds: float = 2.0


@dataclass
class FrontendConfig:
    """Log-mel front end (issue 2: 16 kHz, 128 mels, n_fft 1024, hop 512)."""

    n_mels: int = 128
    n_fft: int = 1024
    hop_length: int = 512
    f_min: float = 0.0
    f_max: float | None = None
    #: 1: log-mel only; 3: log-mel, delta and delta-delta (the 3-channel input of MT-SLVR/CLAR)
    channels: int = 1
    #: z-normalise each clip's log-mel (MT-SLVR, "Processing & Input")
    normalize: bool = True


@dataclass
class ModelConfig:
    """Backbone. ``width`` is the channel count of the first stage (64 in ResNet-18)."""

    arch: str = "resnet18"
    width: int = 64
    #: adapter kind in every adapter slot (:mod:`tympan.models.adapters`): "none" (all shared),
    #: "bn", "series" or "parallel"
    adapter: str = "none"
    #: MT-SLVR's split head: the final layer's channels are divided equally between the tasks,
    #: each task's embedding is its own share (seed 000, "Model Variants")
    split_head: bool = False
    #: "mean" (global average, MT-SLVR) or "attention" (attention over time frames to
    #: ``embed_dim``, the multi-view tagging seed 003) (:mod:`tympan.models.pooling`)
    pooling: str = "mean"
    #: embedding size of attention pooling (seed 003: 1024); ``None`` keeps the backbone's channels
    embed_dim: int | None = None
    #: backbone-specific sizes, checked by the backbone's builder (unknown keys are an error):
    #: e.g. ``arch: pase`` takes ``channels``, ``lstm_layers``, ... (:mod:`tympan.models.pase`);
    #: ``resnet18`` takes none (it is sized by ``width``)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ViewsConfig:
    """Where the two views of a training example come from.

    ``kind: augment``: two augmentations of one crop (MT-SLVR, CLAR pipeline).
    ``kind: same_track``: two ``segment_seconds`` segments of one file whose starts are between
    ``min_gap`` and ``max_gap`` seconds apart, drawn anew every time the file is read, skipping
    segments more than ``silence_db`` below the file's RMS (multi-view tagging seed 003,
    "Training setup": 4 s segments, 4 to 16 s apart). The ``augment`` pipeline then runs on both
    segments; with ``augment.ops: []`` the segments are the views as they are.
    """

    kind: str = "augment"
    segment_seconds: float = 4.0
    min_gap: float = 4.0
    max_gap: float = 16.0
    silence_db: float = -30.0


@dataclass
class AugmentConfig:
    """CLAR augmentation pipeline (MT-SLVR, "Audio Augmentations & Application").

    Per clip, choose between ``min_ops`` and ``max_ops`` of ``ops``, in random order; both views
    get the same ops in the same order with independently drawn parameters.
    """

    ops: list[str] = field(
        default_factory=lambda: ["fade", "white_noise", "time_mask", "time_shift"]
    )
    min_ops: int = 1
    #: ``None`` means ``len(ops)``
    max_ops: int | None = None
    #: per-op parameter ranges; missing ops or keys take the op's seed defaults
    params: dict[str, dict[str, Any]] = field(default_factory=dict)

    def op_count_range(self) -> tuple[int, int]:
        """``(min_ops, max_ops)`` resolved and checked: ops within a clip are distinct, so
        neither bound may exceed ``len(ops)``."""
        n = len(self.ops)
        hi = n if self.max_ops is None else self.max_ops
        if not 0 <= self.min_ops <= n:
            raise ConfigError(
                f"recipe field 'augment.min_ops' must lie in [0, len(ops)={n}], got {self.min_ops}"
            )
        if not self.min_ops <= hi <= n:
            raise ConfigError(
                f"recipe field 'augment.max_ops' must lie in [min_ops={self.min_ops}, "
                f"len(ops)={n}], got {hi}"
            )
        return self.min_ops, hi


@dataclass
class TaskConfig:
    """One (task name, objective, weight) entry of a method.

    ``name`` keys the encoder's adapters; ``objective`` is a name in
    :mod:`tympan.methods.registry`; ``head`` and ``params`` go to that objective's builder.
    """

    name: str = "contrastive"
    objective: str = "nt_xent"
    weight: float = 1.0
    head: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class PretextConfig:
    """Selected pretext-task labels and their weights (Zaiem & Parcollet,
    ``../shared/seeds/004_f3e19d7efff003e6.txt``, section IV-B, eq. 11 and 12).

    ``tympan pretrain --pretext-weights weights.json`` fills this section from the selection
    written by ``tympan pretext select`` so that a run directory's ``config.yaml`` says which
    labels its workers regressed and with which weights ``lambda_i`` (and ``--resume`` rebuilds
    the same workers). Read by the ``pretext_workers`` and ``pase`` objectives
    (:mod:`tympan.methods.workers`).
    """

    #: the frame-label file written by ``tympan pretext labels`` (``.npz``)
    labels: str | None = None
    #: label name -> weight ``lambda_i`` (>= 0), in the order of the worker heads
    weights: dict[str, float] = field(default_factory=dict)
    #: the selection file the weights were read from (a record; not read again)
    selection: str | None = None


@dataclass
class TrainConfig:
    """Optimisation and the Lightning trainer (scaling out: ``docs/scale.md``)."""

    #: clips per optimiser step on each device (each DDP process); the global (effective) batch
    #: is ``batch_size x world size`` (devices x nodes as the trainer resolved them)
    batch_size: int = 64
    max_steps: int = 1000
    #: the learning rate as tuned for ``base_batch_size``; the rate applied is scaled by
    #: ``lr_scaling`` and recorded in ``pretrain.json`` (``environment.lr``)
    lr: float = 1e-3
    #: how ``lr`` follows the effective batch: "none" (as given), "linear" (x effective/base,
    #: Goyal et al. 2017) or "sqrt" (x sqrt(effective/base))
    lr_scaling: str = "none"
    #: the global batch ``lr`` was tuned for; ``None``: ``batch_size`` (one device)
    base_batch_size: int | None = None
    weight_decay: float = 1e-6
    #: linear warm-up steps, then cosine decay to 0 at ``max_steps`` (stepped per batch)
    warmup_steps: int = 50
    num_workers: int = 2
    #: "auto": bf16-mixed on CUDA, 32-true on CPU (bf16 on CPU is ~100x slower); any other
    #: value is Lightning's ``precision`` (e.g. "16-mixed", "32-true")
    precision: str = "auto"
    #: convolution weights (encoder and EMA teachers) in ``torch.channels_last`` memory format:
    #: true, false or "auto" (on when training on CUDA, where cuDNN's NHWC kernels are faster
    #: with bf16/fp16; results agree with the default layout to float32 rounding)
    channels_last: bool | str = "auto"
    #: ``torch.compile`` every encoder backbone in place (weights keep their names) with
    #: ``compile_mode``; the first steps are slower while it compiles. Needs a C compiler
    compile: bool = False
    #: "default", "reduce-overhead", "max-autotune" or "max-autotune-no-cudagraphs"
    compile_mode: str = "default"
    accelerator: str = "auto"
    devices: int | str = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    checkpoint_every_n_steps: int = 100
    log_every_n_steps: int = 10
    #: crops held by each DataLoader worker's shuffling buffer when pretraining from WebDataset
    #: shards (:mod:`tympan.data.shards`); 0 or 1: shard order only. File manifests ignore it
    #: (they shuffle the whole list)
    shuffle_buffer: int = 1000


@dataclass
class FewShotConfig:
    """Few-shot evaluation (MetaAudio protocol as used by MT-SLVR, "Few-Shot Audio Classification")."""

    #: variable-length clips are cut into segments of this length whose embeddings are averaged
    segment_seconds: float = 1.0
    #: inverse L2 strength of the logistic-regression readout (as scikit-learn's ``C``)
    C: float = 1.0
    readout_max_iter: int = 50
    batch_size: int = 64


@dataclass
class Recipe:
    """A complete run description."""

    name: str = "simclr"
    method: str = "simclr"
    audio: AudioConfig = field(default_factory=AudioConfig)
    frontend: FrontendConfig = field(default_factory=FrontendConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    views: ViewsConfig = field(default_factory=ViewsConfig)
    tasks: list[TaskConfig] = field(default_factory=lambda: [TaskConfig()])
    train: TrainConfig = field(default_factory=TrainConfig)
    fewshot: FewShotConfig = field(default_factory=FewShotConfig)
    pretext: PretextConfig = field(default_factory=PretextConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def task_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tasks)


#: ``train.lr_scaling``: how the learning rate follows the effective batch
LR_SCALING_RULES: tuple[str, ...] = ("none", "linear", "sqrt")
#: ``train.compile_mode``: the modes of ``torch.compile``
COMPILE_MODES: tuple[str, ...] = (
    "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs",
)

#: objectives that read one view only: with them alone, ``views.kind: augment`` may have no ops
#: (the seed-004 PASE-like model trains on clean speech; :mod:`tympan.methods.workers`)
SINGLE_VIEW_OBJECTIVES: frozenset[str] = frozenset({"pase"})


def _build(cls: type, data: Any, where: str) -> Any:
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys with their dotted path."""
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise ConfigError(f"recipe field '{where}' must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown recipe field '{where}.{unknown[0]}'" if where else
            f"unknown recipe field '{unknown[0]}'"
        ) from None
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        kwargs[key] = _coerce(hints[key], value, path)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, path)
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"recipe field '{path}' must be a list")
        return [_coerce(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, path)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"recipe field '{path}' has a bad value")
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        # PyYAML (YAML 1.1) reads ``3e-4`` as a string; recipes are written that way.
        try:
            return float(value)
        except ValueError:
            pass
    if hint in (int, str, bool):
        if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            raise ConfigError(
                f"recipe field '{path}' must be {hint.__name__}, got {value!r}"
            )
        return value
    if hint is float:
        raise ConfigError(f"recipe field '{path}' must be a number, got {value!r}")
    return value  # dict[str, Any] and Any: taken as given, checked by their consumer


def merge_options(defaults: dict[str, Any], given: dict[str, Any], where: str) -> dict[str, Any]:
    """Overlay free-form options (a head's or objective's) on their defaults.

    Unknown keys raise a ConfigError naming ``where.<key>``, so a typo never falls back silently.
    """
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ConfigError(
            f"unknown recipe field '{where}.{unknown[0]}' (known: {', '.join(sorted(defaults))})"
        )
    return {**defaults, **given}


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _drop_unlisted_op_params(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """When ``over`` sets ``augment.ops``, forget ``base``'s params for ops it no longer lists.

    A deep merge cannot delete keys, so without this a recipe extending ``simclr`` could never
    drop an op. Params that ``over`` itself gives are kept (and checked by the pipeline).
    """
    ops = (over.get("augment") or {}).get("ops") if isinstance(over.get("augment"), dict) else None
    params = (base.get("augment") or {}).get("params") if isinstance(base.get("augment"), dict) else None
    if not isinstance(ops, list) or not isinstance(params, dict):
        return base
    kept = {k: v for k, v in params.items() if k in ops}
    return {**base, "augment": {**base["augment"], "params": kept}}


def packaged_recipes() -> list[str]:
    """Names of the recipes shipped with tympan."""
    folder = resources.files("tympan") / "recipes"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _read_yaml(name_or_path: str | Path) -> tuple[dict[str, Any], str]:
    text: str
    candidate = Path(name_or_path)
    # A file path wins; a bare name is a packaged recipe even when a folder of that
    # name exists in the working directory (``tympan demo --out demo`` makes one).
    if candidate.is_file():
        text, label = candidate.read_text(), str(candidate)
    elif candidate.suffix in (".yaml", ".yml") or len(candidate.parts) > 1:
        raise ConfigError(f"recipe file {candidate} does not exist")
    else:
        res = resources.files("tympan") / "recipes" / f"{name_or_path}.yaml"
        if not res.is_file():
            raise ConfigError(
                f"unknown recipe '{name_or_path}': give a YAML path or one of "
                f"{', '.join(packaged_recipes())}"
            )
        text, label = res.read_text(), f"{name_or_path} (packaged)"
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"recipe {label} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {label} must be a YAML mapping at the top level")
    return data, label


def load_recipe(
    name_or_path: str | Path | dict[str, Any], overrides: dict[str, Any] | None = None
) -> Recipe:
    """Load a recipe by packaged name, path or dict, apply ``overrides`` and validate.

    A recipe may start with ``base: NAME`` to extend another recipe. ``overrides`` use the same
    nesting (``{"train": {"max_steps": 10}}``) or dotted keys (``{"train.max_steps": 10}``).
    """
    if isinstance(name_or_path, dict):
        data = dict(name_or_path)
    else:
        data, _ = _read_yaml(name_or_path)
    seen: set[str] = set()
    while "base" in data:
        base_name = data.pop("base")
        if base_name in seen:
            raise ConfigError(f"recipe 'base' chain loops at {base_name}")
        seen.add(base_name)
        base, _ = _read_yaml(base_name)
        data = _deep_merge(_drop_unlisted_op_params(base, data), data)
    if overrides:
        nested: dict[str, Any] = {}
        for key, value in overrides.items():
            node = nested
            *parents, last = key.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[last] = value
        data = _deep_merge(_drop_unlisted_op_params(data, nested), nested)
    recipe = _build(Recipe, data, "")
    validate(recipe)
    return recipe


def validate(recipe: Recipe) -> None:
    """Range checks that the type system cannot express."""
    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ConfigError(msg)

    need(recipe.audio.sample_rate > 0, "recipe field 'audio.sample_rate' must be > 0")
    need(recipe.audio.clip_seconds > 0, "recipe field 'audio.clip_seconds' must be > 0")
    f = recipe.frontend
    need(f.channels in (1, 3), "recipe field 'frontend.channels' must be 1 or 3")
    need(f.hop_length > 0 and f.n_fft > 0 and f.n_mels > 0,
         "recipe fields 'frontend.n_fft', 'hop_length', 'n_mels' must be > 0")
    need(recipe.model.width >= 4, "recipe field 'model.width' must be >= 4")
    need(len(recipe.tasks) >= 1, "recipe field 'tasks' must name at least one task")
    names = recipe.task_names
    need(len(set(names)) == len(names), "recipe field 'tasks': task names must be unique")
    recipe.augment.op_count_range()
    t = recipe.train
    need(t.batch_size >= 2, "recipe field 'train.batch_size' must be >= 2")
    need(t.max_steps >= 1, "recipe field 'train.max_steps' must be >= 1")
    need(t.lr > 0, "recipe field 'train.lr' must be > 0")
    need(t.lr_scaling in LR_SCALING_RULES,
         f"recipe field 'train.lr_scaling' must be one of {', '.join(LR_SCALING_RULES)}, "
         f"got {t.lr_scaling!r}")
    need(t.base_batch_size is None or t.base_batch_size >= 1,
         f"recipe field 'train.base_batch_size' must be >= 1 (the global batch 'train.lr' was "
         f"tuned for) or null, got {t.base_batch_size}")
    need(isinstance(t.channels_last, bool) or t.channels_last == "auto",
         f"recipe field 'train.channels_last' must be true, false or 'auto', "
         f"got {t.channels_last!r}")
    need(t.compile_mode in COMPILE_MODES,
         f"recipe field 'train.compile_mode' must be one of {', '.join(COMPILE_MODES)}, "
         f"got {t.compile_mode!r}")
    need(t.shuffle_buffer >= 0, "recipe field 'train.shuffle_buffer' must be >= 0 (crops per "
                                "worker; 0 shuffles the shard order only)")
    need(recipe.fewshot.segment_seconds > 0, "recipe field 'fewshot.segment_seconds' must be > 0")
    m = recipe.model
    need(m.pooling in ("mean", "attention"),
         f"recipe field 'model.pooling' must be 'mean' or 'attention', got {m.pooling!r}")
    need(m.embed_dim is None or m.embed_dim >= 1, "recipe field 'model.embed_dim' must be >= 1")
    need(m.embed_dim is None or m.pooling == "attention",
         "recipe field 'model.embed_dim' needs 'model.pooling: attention' (mean pooling keeps "
         "the backbone's channels); remove embed_dim or set pooling to attention")
    v = recipe.views
    need(v.kind in ("augment", "same_track"),
         f"recipe field 'views.kind' must be 'augment' or 'same_track', got {v.kind!r}")
    need(v.segment_seconds > 0, "recipe field 'views.segment_seconds' must be > 0")
    need(v.silence_db <= 0, f"recipe field 'views.silence_db' must be <= 0 dB (a level below the "
                            f"track's RMS), got {v.silence_db}")
    need(0 <= v.min_gap <= v.max_gap,
         f"recipe fields 'views.min_gap' and 'views.max_gap' must satisfy 0 <= min_gap <= max_gap, "
         f"got {v.min_gap} and {v.max_gap}")
    single_view = all(t.objective in SINGLE_VIEW_OBJECTIVES for t in recipe.tasks)
    need(v.kind == "same_track" or len(recipe.augment.ops) > 0 or single_view,
         "recipe field 'augment.ops' is empty: with 'views.kind: augment' both views would be "
         "the same crop; name at least one op, or use 'views.kind: same_track'")
    need(isinstance(m.options, dict), "recipe field 'model.options' must be a mapping")
    p = recipe.pretext
    need(isinstance(p.weights, dict), "recipe field 'pretext.weights' must be a mapping "
                                      "{label name: weight}")
    for name, w in p.weights.items():
        need(isinstance(name, str) and bool(name),
             f"recipe field 'pretext.weights': label names must be strings, got {name!r}")
        need(isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) and w >= 0,
             f"recipe field 'pretext.weights.{name}' must be a finite number >= 0, got {w!r}")


def save_recipe(recipe: Recipe, path: Path) -> None:
    """Write the resolved recipe as YAML."""
    path.write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False))
