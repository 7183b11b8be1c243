"""CLAR waveform augmentations, batched over clips with per-clip parameters.

The operations and their parameter ranges are those of CLAR as used by MT-SLVR
(``../shared/seeds/000_e1eab6133071efa6.txt``, "Audio Augmentations & Application", table of the
seven augmentations). Each op has two halves:

* a pure function ``op(x, ...)`` of a batch ``x [B, T]`` and per-clip parameter tensors ``[B]``
  (these are what the tests check against a clip-by-clip reference), and
* an :class:`AugmentOp` that draws those parameters for ``B`` clips from a ``torch.Generator`` on
  the batch's device, with ranges taken from the recipe (``augment.params.<op>``), defaulting to
  the seed's.

No op loops over clips in Python; each is a handful of tensor operations on the whole batch.
"""

from __future__ import annotations

import math

from typing import Any, ClassVar

import torch

from tympan.errors import ConfigError

FADE_SHAPES = ("linear", "log", "exp")


# ---------------------------------------------------------------------------------------------
# pure batched functions


def white_noise(x: torch.Tensor, noise: torch.Tensor, snr_db: torch.Tensor) -> torch.Tensor:
    """Add ``noise`` scaled so that each clip's signal-to-noise ratio is exactly ``snr_db``.

    ``SNR = 10 log10(P_x / P_n)`` with ``P`` the mean power over the clip; the realised noise is
    rescaled, so the SNR holds for the drawn noise itself, not only in expectation.
    Shapes: ``x, noise [B, T]``, ``snr_db [B]``.
    """
    p_signal = x.square().mean(dim=1, keepdim=True)
    p_noise = noise.square().mean(dim=1, keepdim=True).clamp_min(1e-12)
    target = p_signal / torch.pow(10.0, snr_db.unsqueeze(1) / 10.0)
    return x + noise * torch.sqrt(target / p_noise)


def time_shift(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Circularly shift each clip by ``shift[b]`` samples (positive = later), i.e. ``torch.roll``
    with rollover, batched with one gather. Shapes: ``x [B, T]``, ``shift [B]`` (integer)."""
    t = x.shape[1]
    idx = (torch.arange(t, device=x.device).unsqueeze(0) - shift.long().unsqueeze(1)) % t
    return torch.gather(x, 1, idx)


def time_mask(x: torch.Tensor, start: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
    """Zero samples ``[start[b], start[b] + length[b])`` of each clip. Shapes: ``[B, T]``, ``[B]``."""
    pos = torch.arange(x.shape[1], device=x.device).unsqueeze(0)
    s, n = start.long().unsqueeze(1), length.long().unsqueeze(1)
    return x.masked_fill((pos >= s) & (pos < s + n), 0.0)


def _fade_curve(p: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
    """Gain for fade progress ``p`` in [0, 1] (0 = silent end); shapes 0 linear, 1 log, 2 exp.

    log: ``log10(0.1 + p) + 1`` rises fast then flattens; exp: ``2^(5 (p - 1))`` starts slowly.
    Both reach 1 at ``p = 1``; log starts near 0 (``log10(0.1) + 1 = 0``) and exp at ``2^-5``,
    which is then mapped to 0 so every shape starts from silence.
    """
    lin = p
    log = torch.log10(0.1 + 0.9 * p) + 1.0
    exp = (torch.exp2(5.0 * (p - 1.0)) - 2.0**-5) / (1.0 - 2.0**-5)
    s = shape.view(-1, 1)
    return torch.where(s == 0, lin, torch.where(s == 1, log, exp))


def fade(
    x: torch.Tensor, fade_in: torch.Tensor, fade_out: torch.Tensor, shape: torch.Tensor
) -> torch.Tensor:
    """Fade in over the first ``fade_in[b]`` samples and out over the last ``fade_out[b]``.

    ``shape[b]`` indexes :data:`FADE_SHAPES`. Shapes: ``x [B, T]``, others ``[B]``.
    """
    t = x.shape[1]
    pos = torch.arange(t, device=x.device, dtype=x.dtype).unsqueeze(0)
    fin = fade_in.to(x.dtype).unsqueeze(1)
    fout = fade_out.to(x.dtype).unsqueeze(1)
    p_in = torch.where(fin > 0, (pos / fin.clamp_min(1.0)).clamp(0.0, 1.0), torch.ones_like(pos))
    p_out = torch.where(
        fout > 0, ((t - 1 - pos) / fout.clamp_min(1.0)).clamp(0.0, 1.0), torch.ones_like(pos)
    )
    return x * _fade_curve(p_in, shape) * _fade_curve(p_out, shape)


# ---------------------------------------------------------------------------------------------
# parameter samplers


def _uniform(n: int, lo: float, hi: float, g: torch.Generator, device: torch.device) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g, device=device)


class AugmentOp:
    """Draws per-clip parameters for one op and applies it to a batch.

    Subclasses set ``name`` and ``defaults`` (the seed's ranges) and implement ``sample`` and
    ``apply``. Constructor keywords override defaults; an unknown keyword is a ConfigError that
    names ``augment.params.<op>.<key>``.
    """

    name: ClassVar[str]
    defaults: ClassVar[dict[str, Any]]

    def __init__(self, **params: Any) -> None:
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            raise ConfigError(
                f"unknown recipe field 'augment.params.{self.name}.{unknown[0]}' "
                f"(known: {', '.join(sorted(self.defaults))})"
            )
        self.params = {**self.defaults, **params}
        self.check()

    def check(self) -> None:
        """Validate ranges; override to add checks."""

    def _range(self, key: str, lo: float, hi: float) -> tuple[float, float]:
        value = self.params[key]
        ok = (
            isinstance(value, (list, tuple))
            and len(value) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        )
        a, b = value if ok else (math.nan, math.nan)
        if not (lo <= a <= b <= hi):
            raise ConfigError(
                f"recipe field 'augment.params.{self.name}.{key}' must be [min, max] with "
                f"{lo} <= min <= max <= {hi}, got {value!r}"
            )
        return float(a), float(b)

    def _ratio(self, key: str) -> float:
        r = self.params[key]
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 <= r <= 1.0:
            raise ConfigError(f"recipe field 'augment.params.{self.name}.{key}' must lie in [0, 1]")
        return float(r)

    def sample(
        self, n: int, num_samples: int, g: torch.Generator, device: torch.device
    ) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def apply(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError


class WhiteNoise(AugmentOp):
    """White Gaussian noise at an SNR drawn uniformly in ``snr_db`` (seed: 3–30 dB)."""

    name = "white_noise"
    defaults = {"snr_db": [3.0, 30.0]}

    def check(self) -> None:
        self._range("snr_db", -100.0, 200.0)

    def sample(self, n, num_samples, g, device):
        lo, hi = self._range("snr_db", -100.0, 200.0)
        return {
            "snr_db": _uniform(n, lo, hi, g, device),
            "noise": torch.randn(n, num_samples, generator=g, device=device),
        }

    def apply(self, x, params):
        return white_noise(x, params["noise"].to(x.dtype), params["snr_db"].to(x.dtype))


class TimeShift(AugmentOp):
    """Circular shift by a fraction drawn uniformly in ``[-max_ratio, max_ratio]`` (seed: 0.5)."""

    name = "time_shift"
    defaults = {"max_ratio": 0.5}

    def check(self) -> None:
        self._ratio("max_ratio")

    def sample(self, n, num_samples, g, device):
        r = self._ratio("max_ratio")
        ratio = _uniform(n, -r, r, g, device)
        return {"shift": torch.round(ratio * num_samples).long()}

    def apply(self, x, params):
        return time_shift(x, params["shift"])


class TimeMask(AugmentOp):
    """Zero one span whose length is drawn uniformly in ``[0, max_ratio]`` of the clip (seed: 0.125)."""

    name = "time_mask"
    defaults = {"max_ratio": 0.125}

    def check(self) -> None:
        self._ratio("max_ratio")

    def sample(self, n, num_samples, g, device):
        r = self._ratio("max_ratio")
        length = torch.floor(_uniform(n, 0.0, r, g, device) * num_samples)
        start = torch.floor(torch.rand(n, generator=g, device=device) * (num_samples - length + 1))
        return {"start": start.long(), "length": length.long()}

    def apply(self, x, params):
        return time_mask(x, params["start"], params["length"])


class Fade(AugmentOp):
    """Fade in and out over fractions drawn in ``[0, max_in]`` / ``[0, max_out]`` (seed: 0.5 / 0.5),
    one shape per clip drawn from ``shapes`` (seed: linear, log, exp)."""

    name = "fade"
    defaults = {"max_in": 0.5, "max_out": 0.5, "shapes": list(FADE_SHAPES)}

    def check(self) -> None:
        self._ratio("max_in")
        self._ratio("max_out")
        shapes = self.params["shapes"]
        bad = [s for s in shapes if s not in FADE_SHAPES]
        if not shapes or bad:
            raise ConfigError(
                f"recipe field 'augment.params.fade.shapes' must be a non-empty subset of "
                f"{list(FADE_SHAPES)}, got {shapes}"
            )

    def sample(self, n, num_samples, g, device):
        allowed = torch.tensor(
            [FADE_SHAPES.index(s) for s in self.params["shapes"]], device=device
        )
        pick = torch.randint(len(allowed), (n,), generator=g, device=device)
        fin = torch.floor(_uniform(n, 0.0, self._ratio("max_in"), g, device) * num_samples)
        fout = torch.floor(_uniform(n, 0.0, self._ratio("max_out"), g, device) * num_samples)
        return {"fade_in": fin.long(), "fade_out": fout.long(), "shape": allowed[pick]}

    def apply(self, x, params):
        return fade(x, params["fade_in"], params["fade_out"], params["shape"])


#: every op by name; MT-SLVR's issue adds pitch_shift, mixed_noise and time_stretch here
OPS: dict[str, type[AugmentOp]] = {
    op.name: op for op in (Fade, WhiteNoise, TimeMask, TimeShift)
}


def build_op(name: str, params: dict[str, Any] | None = None) -> AugmentOp:
    """Instantiate op ``name`` with recipe overrides ``params``."""
    if name not in OPS:
        raise ConfigError(
            f"unknown augmentation '{name}' in recipe field 'augment.ops' "
            f"(known: {', '.join(sorted(OPS))})"
        )
    return OPS[name](**(params or {}))
