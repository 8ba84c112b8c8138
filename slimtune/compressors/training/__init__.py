"""Training-time compression: the fine-tune loop, knowledge distillation and the training compressors.

- :func:`finetune` with a :class:`FinetuneConfig` (epochs or steps, optimizer, schedule, seed, KD, reports):
  the loop every trial uses; masks and quantizers stay in force. It trains on the model's device, moving
  each batch of a list or a ``DataLoader`` there, with mixed precision (``amp: bf16 | fp16``),
  ``channels_last``, gradient accumulation (``accumulate``) and clipping (``clip_grad_norm``) as configured.
- :class:`KDConfig` / :mod:`~slimtune.compressors.training.distill`: response-, feature- and
  relation-based distillation from the original model; ``kd.mode`` (:data:`KD_MODES`) picks the teacher:
  the original model (``offline``), a peer trained alongside (``online``,
  :mod:`~slimtune.compressors.training.online`), the student's own snapshot (``born_again``,
  :mod:`~slimtune.compressors.training.born_again`) or its deepest exit teaching auxiliary exits
  (``self``, :mod:`~slimtune.compressors.training.self_distill`).
- :data:`COMPRESSORS`: model + plan → compressed model, by the name a plan's ``compressor`` field uses:
  ``oneshot`` (:func:`~slimtune.compressors.compress`), ``agp`` (gradual, cubic schedule), ``admm``,
  ``lottery`` (iterative magnitude pruning with rewind), ``slimming`` (L1 on BN scales). A new compressor
  is one module decorated with :func:`register_compressor` and imported below.
- :func:`run_compressor` applies the compressor a plan names, given a :class:`TrainingContext`.
"""

from __future__ import annotations

from slimtune.compressors.training._base import (
    COMPRESSORS,
    Compressor,
    CompressorEntry,
    CompressorError,
    TrainingContext,
    check_compressor_params,
    get_compressor,
    register_compressor,
    run_compressor,
)
from slimtune.compressors.training.admm import ADMMHook, admm
from slimtune.compressors.training.agp import AGPHook, agp, cubic_sparsity
from slimtune.compressors.training.config import KD_MODES, FinetuneConfig, KDConfig, check_finetune_overrides
from slimtune.compressors.training.finetune import FinetuneResult, TrainHook, early_stopping, finetune
from slimtune.compressors.training.lottery import RewindPoint, lottery

# Importing the algorithm modules registers them.
from slimtune.compressors.training.oneshot import oneshot
from slimtune.compressors.training.slimming import BNPenalty, slimming

__all__ = [
    "ADMMHook",
    "AGPHook",
    "BNPenalty",
    "COMPRESSORS",
    "Compressor",
    "CompressorEntry",
    "CompressorError",
    "FinetuneConfig",
    "FinetuneResult",
    "KDConfig",
    "KD_MODES",
    "RewindPoint",
    "TrainHook",
    "TrainingContext",
    "admm",
    "agp",
    "check_compressor_params",
    "check_finetune_overrides",
    "cubic_sparsity",
    "early_stopping",
    "finetune",
    "get_compressor",
    "lottery",
    "oneshot",
    "register_compressor",
    "run_compressor",
    "slimming",
]
