"""The shared compressor library: tracing, pruning, speedup and the measures.

It knows nothing about search: it imports neither optuna nor ray.

Public entry points:
    - :func:`trace` → :class:`ModelGraph` (dependency groups, prunable and quantizable layers),
      for any model: ``torch.fx`` or ``torch.export`` frontends, one :class:`LayerHandler` per layer
      kind (:func:`register_handler` adds one)
    - :class:`CompressionPlan` (what to prune / factorize / quantize), JSON round-trip and validation
    - :func:`factorize` (low-rank factorization: SVD, Tucker-2; :mod:`slimtune.compressors.lowrank`)
    - :func:`compress` (a compressed copy: masked or physically smaller), :func:`speedup`
    - :func:`measure` (FLOPs, params, size in bytes, latency) and :class:`LatencyTable`
    - :data:`CRITERIA` (pruning criteria by name)
    - :data:`COMPRESSORS` (oneshot, agp, admm, lottery, slimming) and :func:`run_compressor`;
      :func:`finetune` with a :class:`FinetuneConfig` (see :mod:`slimtune.compressors.training`)
"""

from __future__ import annotations

from slimtune.compressors._types import Group, LayerInfo, Member, Tap
from slimtune.compressors.compress import compress
from slimtune.compressors.criteria import CRITERIA, CriterionContext, register_criterion, score_group
from slimtune.compressors.graph import ModelGraph, trace
from slimtune.compressors.handlers import LayerHandler, handler_for, register_handler
from slimtune.compressors.lowrank import factorize, factorize_layer
from slimtune.compressors.measures import (
    LatencyResult,
    LatencyTable,
    Measures,
    compare_latency,
    count_flops,
    count_params,
    measure,
    measure_latency,
    model_size_bytes,
)
from slimtune.compressors.plan import CompressionPlan, FactorSpec, PruneSpec, QuantSpec
from slimtune.compressors.pruning import apply_channel_masks, apply_unstructured_masks, make_permanent
from slimtune.compressors.speedup import SpeedupError, speedup
from slimtune.compressors.training import COMPRESSORS, FinetuneConfig, KDConfig, finetune, run_compressor

__all__ = [
    "COMPRESSORS",
    "CRITERIA",
    "CompressionPlan",
    "CriterionContext",
    "FactorSpec",
    "FinetuneConfig",
    "Group",
    "KDConfig",
    "LatencyResult",
    "LatencyTable",
    "LayerHandler",
    "LayerInfo",
    "Measures",
    "Member",
    "ModelGraph",
    "PruneSpec",
    "QuantSpec",
    "SpeedupError",
    "Tap",
    "apply_channel_masks",
    "apply_unstructured_masks",
    "compare_latency",
    "compress",
    "count_flops",
    "count_params",
    "factorize",
    "factorize_layer",
    "finetune",
    "handler_for",
    "make_permanent",
    "measure",
    "measure_latency",
    "model_size_bytes",
    "register_criterion",
    "register_handler",
    "run_compressor",
    "score_group",
    "speedup",
    "trace",
]
