"""All measures of one model in one call: :func:`measure` → :class:`Measures`.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from slimtune.compressors.measures import measure
    >>> model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    >>> m = measure(model, torch.randn(1, 64), latency=False)
    >>> m.flops, m.params, m.size_bytes  # MACs per sample, 64*32+32 + 32*10+10, 4 bytes each
    (2368, 2410, 9640)
    >>> sorted(m.to_dict())
    ['device', 'flops', 'latency_ms', 'memory_bytes', 'nonzero_params', 'params', 'size_bytes', 'sparse_flops']
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd

from slimtune import devices
from slimtune.compressors.measures.flops import count_flops
from slimtune.compressors.measures.latency import measure_latency
from slimtune.compressors.measures.memory import measure_memory
from slimtune.compressors.measures.size import count_params, model_size_bytes

if TYPE_CHECKING:
    from collections.abc import Mapping

    from torch import nn

__all__ = ["Measures", "measure"]


@dataclass
class Measures:
    """What :func:`measure` found.

    Args:
        flops: MACs per sample of one forward pass (dense count; see
            :func:`~slimtune.compressors.measures.count_flops`).
        sparse_flops: MACs per sample skipping zero weights (what an ideal sparse kernel does).
        params: Parameters (prune-aware, see :func:`~slimtune.compressors.measures.count_params`).
        nonzero_params: Non-zero parameters.
        size_bytes: Storage size (see :func:`~slimtune.compressors.measures.model_size_bytes`).
        latency_ms: Median latency per batch, or None when not measured.
        per_layer: The :func:`count_flops` table.
        memory_bytes: Peak memory of a forward pass (see
            :func:`~slimtune.compressors.measures.measure_memory`), or None when not measured.
        device: The model's device (where latency and memory were measured).
    """

    flops: int | float
    sparse_flops: float
    params: int
    nonzero_params: int
    size_bytes: int
    latency_ms: float | None = None
    per_layer: pd.DataFrame = field(default_factory=pd.DataFrame, repr=False)
    memory_bytes: int | None = None
    device: str = "cpu"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-friendly numbers (no DataFrame)."""
        flops = self.flops
        return {
            "flops": int(flops) if float(flops).is_integer() else float(flops),
            "sparse_flops": float(self.sparse_flops),
            "params": int(self.params),
            "nonzero_params": int(self.nonzero_params),
            "size_bytes": int(self.size_bytes),
            "latency_ms": None if self.latency_ms is None else float(self.latency_ms),
            "memory_bytes": None if self.memory_bytes is None else int(self.memory_bytes),
            "device": self.device,
        }


def measure(
    model: nn.Module,
    example_inputs: Any,
    latency: bool = True,
    batch_size: int | None = 32,
    threads: int = 1,
    bits: Mapping[str, int | None] | None = None,
    repeats: int = 50,
    warmup: int = 10,
    min_time_s: float = 0.5,
    memory: bool = False,
) -> Measures:
    """FLOPs, parameters, size and (optionally) latency and peak memory of ``model``.

    Args:
        model: Any module, on any device (its training flags are restored); latency and memory
            are measured there.
        example_inputs: A tensor or a tuple of positional arguments, on any device (moved to the
            model's).
        latency: Measure latency (the slow part); False leaves ``latency_ms`` None.
        batch_size: Batch size of the latency and memory measurements (None: the example inputs
            as given; 64 is typical on a GPU).
        threads: Intra-op threads of a CPU latency measurement.
        bits: Weight bit-width per layer for the size (see
            :func:`~slimtune.compressors.measures.model_size_bytes`).
        repeats: Minimum timed calls of the latency measurement.
        warmup: Untimed calls before timing.
        min_time_s: Minimum total timed seconds of the latency measurement.
        memory: Measure the peak memory of a forward pass at ``batch_size``.

    Returns:
        A :class:`Measures`.
    """
    df = count_flops(model, example_inputs)
    total, nonzero = count_params(model)
    size = model_size_bytes(model, bits=bits)
    lat = None
    if latency:
        lat = measure_latency(
            model,
            example_inputs,
            batch_size=batch_size,
            threads=threads,
            warmup=warmup,
            repeats=repeats,
            min_time_s=min_time_s,
        ).median_ms
    mem = measure_memory(model, example_inputs, batch_size=batch_size).peak_bytes if memory else None
    flops = df["macs"].sum() if len(df) else 0
    flops = int(flops) if float(flops).is_integer() else float(flops)
    return Measures(
        flops=flops,
        sparse_flops=float(df["sparse_macs"].sum()) if len(df) else 0.0,
        params=total,
        nonzero_params=nonzero,
        size_bytes=size.total_bytes,
        latency_ms=lat,
        per_layer=df,
        memory_bytes=mem,
        device=str(devices.model_device(model)),
    )
