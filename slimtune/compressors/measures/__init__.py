"""Measures of a model: MACs and parameters per layer, storage size, latency, latency lookup table.

* :func:`count_flops` — per-layer MACs (per sample), element-wise ops and parameters (``flops.py``).
* :func:`model_size_bytes`, :func:`count_params` — bytes with bit-widths and sparse storage,
  prune-aware parameter counts (``size.py``).
* :func:`measure_latency`, :func:`compare_latency` — measured latency on the model's device (CPU:
  fixed threads; CUDA: CUDA events), medians, interleaved comparisons (``latency.py``).
* :class:`LatencySetting`, :func:`measure_runtime_latency` — latency in the runtime a model ships on: eager
  PyTorch, ``torch.compile`` or ONNX Runtime, at a batch size and thread count (``runtimes.py``).
* :func:`measure_memory` — peak memory of one forward pass at a batch size, weights and inputs
  included, on the model's device (``memory.py``).
* :class:`LatencyTable` — NetAdapt-style per-layer lookup table predicting a plan's latency on the
  device it was measured on (``lut.py``).
* :class:`BitsLatencyTable` — measured fp32 and int8 latency per layer, predicting a bit-width
  plan's latency (HAQ's hardware-in-the-loop table, on the CPU where int8 kernels run; ``bits_latency.py``).
* :func:`measure` — all of the above in one call, as :class:`Measures` (``summary.py``).
* :func:`measure_deployable` — what a search trial reports: the model as it would ship (SLB by
  its chosen candidates, fake-quantized layers at their bit-widths and timed as their int8 export).
* :class:`ResourcePredictor` — a plan's MACs, parameters and size predicted from channel counts,
  without building the model (``resources.py``).

Example:
    >>> import torch
    >>> from torch import nn
    >>> from slimtune.compressors.measures import measure
    >>> m = measure(nn.Conv2d(3, 16, 3, padding=1), torch.randn(1, 3, 32, 32), latency=False)
    >>> m.flops
    442368
"""

from __future__ import annotations

from slimtune.compressors.measures.bits_latency import BitsLatencyTable
from slimtune.compressors.measures.deployable import measure_deployable
from slimtune.compressors.measures.flops import count_flops
from slimtune.compressors.measures.latency import LatencyResult, compare_latency, measure_latency
from slimtune.compressors.measures.lut import LatencyTable
from slimtune.compressors.measures.memory import MemoryResult, measure_memory
from slimtune.compressors.measures.resources import ResourcePredictor, Resources, predict_resources
from slimtune.compressors.measures.runtimes import LatencySetting, measure_runtime_latency
from slimtune.compressors.measures.size import SizeReport, count_params, model_size_bytes
from slimtune.compressors.measures.summary import Measures, measure

__all__ = [
    "measure",
    "measure_deployable",
    "Measures",
    "count_flops",
    "count_params",
    "model_size_bytes",
    "SizeReport",
    "measure_latency",
    "compare_latency",
    "LatencyResult",
    "LatencySetting",
    "measure_runtime_latency",
    "measure_memory",
    "MemoryResult",
    "LatencyTable",
    "BitsLatencyTable",
    "ResourcePredictor",
    "Resources",
    "predict_resources",
]
