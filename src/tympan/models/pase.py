"""The PASE-like encoder of the pretext-task selection seed (Zaiem & Parcollet,
``../shared/seeds/004_f3e19d7efff003e6.txt``, appendix A, "Pretraining of the PASE-like SSL
encoder").

"The encoder is a succession of 2D CNN layers, LSTM layers and a final dense network ... There
are 3 successive CNN blocks containing each 2 CNN layers with kernel size (3, 3) and 128, 200 and
256 channels for each block respectively. No time pooling is performed in order to preserve the
input sequence length. 5 bidirectional LSTM layers of size 256 are then stacked. Finally, a MLP
with one hidden layer with 256 neurons. The LeakyReLU activation is used across all the layers
except for the LSTM. We use a dropout rate of 0.15 during the training."

Here, over the log-mel front end ``[B, C, n_mels, T]``:

* each CNN block is ``(conv 3x3 -> BatchNorm -> LeakyReLU) x 2 -> max-pool over frequency by
  freq_pool -> dropout`` (frequency pooling between blocks as in SpeechBrain's CRDNN, which the
  seed's PASE-like model is built with; time is never pooled);
* the channels x frequency of every frame are flattened and run through ``lstm_layers``
  bidirectional LSTM layers of ``lstm_hidden`` units per direction (dropout between layers);
* the MLP is ``Linear(2 * lstm_hidden, mlp_hidden) -> LeakyReLU -> dropout ->
  Linear(mlp_hidden, out_dim)``; its output is the frame representation (256 in the seed).

The output is shaped ``[B, out_dim, 1, T]`` so that the encoder's pooling (mean over time) and
``Encoder.frames`` (``[B, T, out_dim]``, one frame per front-end hop) work unchanged.

Sizes are the recipe's ``model.options`` (:data:`PASE_DEFAULTS` are the seed's); ``model.width``
is not used by this backbone. It has no adapter slots: ``model.adapter`` must be ``none``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from tympan.config import merge_options
from tympan.errors import ConfigError

#: ``model.options`` of ``arch: pase`` with the seed's sizes (appendix A)
PASE_DEFAULTS: dict[str, Any] = {
    "channels": [128, 200, 256],
    "lstm_layers": 5,
    "lstm_hidden": 256,
    "mlp_hidden": 256,
    "out_dim": 256,
    "dropout": 0.15,
    "freq_pool": 2,
    "negative_slope": 0.01,
}


def pase_options(options: dict[str, Any] | None) -> dict[str, Any]:
    """``model.options`` overlaid on :data:`PASE_DEFAULTS` and range-checked (ConfigError names
    the recipe field)."""
    opts = merge_options(PASE_DEFAULTS, dict(options or {}), "model.options")

    def positive_int(key: str, minimum: int = 1) -> int:
        value = opts[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ConfigError(
                f"recipe field 'model.options.{key}' must be an integer >= {minimum}, got {value!r}"
            )
        return value

    channels = opts["channels"]
    if (not isinstance(channels, (list, tuple)) or not channels
            or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in channels)):
        raise ConfigError(
            f"recipe field 'model.options.channels' must be a non-empty list of positive "
            f"integers (one per CNN block; the seed's is [128, 200, 256]), got {channels!r}"
        )
    opts["channels"] = [int(c) for c in channels]
    for key in ("lstm_hidden", "mlp_hidden", "out_dim", "freq_pool"):
        positive_int(key)
    positive_int("lstm_layers", 0)
    for key, lo, hi in (("dropout", 0.0, 1.0), ("negative_slope", 0.0, 1.0)):
        value = opts[key]
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not lo <= value < hi:
            raise ConfigError(
                f"recipe field 'model.options.{key}' must be a number in [{lo:g}, {hi:g}), "
                f"got {value!r}"
            )
        opts[key] = float(value)
    return opts


class PASEEncoder(nn.Module):
    """CNN blocks -> BiLSTM -> MLP over log-mel; ``[B, C, n_mels, T] -> [B, out_dim, 1, T]``
    (module docstring)."""

    def __init__(self, in_channels: int, n_mels: int, options: dict[str, Any] | None = None) -> None:
        super().__init__()
        opts = pase_options(options)
        self.options = opts
        slope, p, pool = opts["negative_slope"], opts["dropout"], opts["freq_pool"]
        blocks: list[nn.Module] = []
        cin, freq = in_channels, n_mels
        for cout in opts["channels"]:
            blocks.append(nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                nn.LeakyReLU(slope),
                nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                nn.LeakyReLU(slope),
                nn.MaxPool2d((pool, 1)),  # frequency only: one output frame per input frame
                nn.Dropout(p),
            ))
            cin, freq = cout, freq // pool
            if freq < 1:
                raise ConfigError(
                    f"recipe field 'model.options.channels': {len(opts['channels'])} CNN blocks "
                    f"each pooling frequency by {pool} leave no frequency bin of "
                    f"'frontend.n_mels'={n_mels}; raise n_mels to at least "
                    f"{pool ** len(opts['channels'])}, lower 'model.options.freq_pool' or use "
                    f"fewer blocks"
                )
        self.cnn = nn.Sequential(*blocks)
        features = cin * freq
        self.lstm: nn.LSTM | None = None
        if opts["lstm_layers"] > 0:
            self.lstm = nn.LSTM(
                features, opts["lstm_hidden"], num_layers=opts["lstm_layers"], batch_first=True,
                bidirectional=True, dropout=p if opts["lstm_layers"] > 1 else 0.0,
            )
            features = 2 * opts["lstm_hidden"]
        self.mlp = nn.Sequential(
            nn.Dropout(p),
            nn.Linear(features, opts["mlp_hidden"]), nn.LeakyReLU(slope), nn.Dropout(p),
            nn.Linear(opts["mlp_hidden"], opts["out_dim"]),
        )
        self.out_channels: int = opts["out_dim"]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, a=slope, nonlinearity="leaky_relu")

    def forward(self, x: Tensor, task: str | None = None) -> Tensor:
        """``x [B, C, n_mels, T]`` -> ``[B, out_dim, 1, T]``; ``task`` is ignored (no adapters)."""
        h = self.cnn(x)  # [B, C', F', T]
        b, c, f, t = h.shape
        h = h.reshape(b, c * f, t).transpose(1, 2)  # [B, T, C' F']: one vector per frame
        if self.lstm is not None:
            h, _ = self.lstm(h)
        return self.mlp(h).transpose(1, 2).unsqueeze(2)


def pase(
    in_channels: int, width: int, adapter: str, tasks: Sequence[str], *,
    options: dict[str, Any] | None = None, n_mels: int | None = None,
) -> PASEEncoder:
    """Builder of ``model.arch: pase`` (``width`` is not used; sizes are ``model.options``)."""
    if adapter != "none":
        raise ConfigError(
            f"recipe field 'model.adapter'={adapter!r}: the pase backbone has no adapter slots; "
            f"set 'model.adapter: none'"
        )
    if n_mels is None:
        raise ConfigError("the pase backbone needs the front end's n_mels (recipe field "
                          "'frontend.n_mels') to size its LSTM input")
    return PASEEncoder(in_channels, n_mels, options)
