"""Supervised fine-tuning: AudioConFit's PairTune + linear stage, and the FINETUNE baseline.

``../shared/seeds/002_5040cf44179b95f4.txt`` ("AudioConFit: audio contrastive-based
fine-tuning"). :func:`finetune` is the entry point; :mod:`.pairtune` holds stage 1 (and the
baseline, in the same loop), :mod:`.linear` stage 2, :mod:`.backbones` the backbone specs
(tympan run directory, ``random``, ``hf:/path``) and :mod:`.protocol` seeds/folds and outputs.
"""

from tympan.finetune.backbones import Backbone, load_backbone
from tympan.finetune.linear import LinearHead, fit_linear_grid, nearest_centroid_accuracy
from tympan.finetune.pairtune import METHODS, ProjectionHead, TuneConfig, TuneResult, tune_encoder
from tympan.finetune.protocol import FinetuneResult, RunResult, finetune, plan_runs

__all__ = [
    "METHODS",
    "Backbone",
    "FinetuneResult",
    "LinearHead",
    "ProjectionHead",
    "RunResult",
    "TuneConfig",
    "TuneResult",
    "finetune",
    "fit_linear_grid",
    "load_backbone",
    "nearest_centroid_accuracy",
    "plan_runs",
    "tune_encoder",
]
