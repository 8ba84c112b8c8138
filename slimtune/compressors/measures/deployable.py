"""The measures of a model as it would be deployed: what each trial of a search reports.

:func:`~slimtune.compressors.measures.measure` measures any model as it is; this measures the
model a trial would ship: an SLB model by its most probable candidates, fake-quantized layers by
their bit-widths (size) and by their int8 export (latency). The model may be on any device:
FLOPs, parameters and size do not depend on it, latency and memory are measured there — except
the latency of an int8 export, whose kernels run on the CPU only.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from slimtune.compressors.measures.flops import count_flops
from slimtune.compressors.measures.memory import measure_memory
from slimtune.compressors.measures.runtimes import LatencySetting, measure_runtime_latency
from slimtune.compressors.measures.size import count_params, model_size_bytes


def measure_deployable(
    model: nn.Module,
    example_inputs: Any,
    latency: bool,
    latency_batch: int = 32,
    latency_repeats: int = 20,
    memory: bool = False,
    memory_batch: int = 32,
    runtime: LatencySetting | str | None = None,
) -> dict[str, Any]:
    """FLOPs (MACs per sample), parameters, size in bytes (quantized weights at their bit-widths),
    and optionally latency and peak memory of ``model``.

    A fake-quantized layer counts its weight at its bit-width plus per-channel scales and its
    range buffers (what :class:`~slimtune.compressors.measures.ResourcePredictor` predicts). An
    SLB model is measured as deployed (:func:`~slimtune.compressors.quantization.unwrap`: the
    most probable candidate of each weight), so its per-weight logits are not counted.

    Latency is that of the deployable model too, in the runtime of ``runtime`` (a
    :class:`~slimtune.compressors.measures.runtimes.LatencySetting`: eager PyTorch by default, or
    ``torch.compile``, or ONNX Runtime; its ``batch``, if set, overrides ``latency_batch``, and its ``threads``
    are used on the CPU), measured on the model's device
    (:func:`~slimtune.compressors.measures.measure_latency`; ONNX Runtime on the CPU). Fake-quantized
    layers run float kernels plus fake-quant ops, which says nothing about integer kernels, so
    when the model has layers with at most 8 weight bits, the latency measured is that of
    :func:`~slimtune.compressors.quantization.export_int8` with those layers in int8 (calibrated
    on the latency batch: activation ranges do not change kernel time; below 8 bits, x86 has no
    faster kernels); in ONNX Runtime, the QDQ form of those layers. The int8 kernels run on the CPU only,
    so for a model on another device the export is made from a CPU copy and timed on the CPU:
    ``latency_device`` is then ``"cpu"`` and ``latency_note`` says so. If the int8 export fails, the
    fake-quantized model is timed on its device and ``latency_note`` says why.

    Memory is :func:`~slimtune.compressors.measures.measure_memory`'s ``peak_bytes`` of the
    deployable model on its device (fake-quantized layers hold float weights).

    Args:
        model: Any module, on any device.
        example_inputs: A tensor or a tuple of positional arguments, on any device.
        latency: Measure latency.
        latency_batch: Batch size of the latency measurement (64 is typical on a GPU).
        latency_repeats: Timed calls of the latency measurement.
        memory: Measure peak memory.
        memory_batch: Batch size of the memory measurement.

    Returns:
        ``{"flops", "params", "size", "latency", "latency_device", "memory"}`` (latency,
        latency_device and memory None unless asked for; latency in ms per batch, memory in
        bytes), plus ``latency_note`` when the latency is not that of the int8 export on the
        model's device (timed on the CPU, or the export failed).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
        >>> m = measure_deployable(model, torch.randn(1, 16), latency=False, memory=True, memory_batch=8)
        >>> m["flops"], m["params"], m["size"], m["latency"], m["memory"] > m["size"]
        (640.0, 676, 2704, None, True)
    """
    flops = float(count_flops(model, example_inputs)["macs"].sum())
    from slimtune.compressors.quantization import quant_wrappers, unwrap, weight_bits

    deployable, bits = model, weight_bits(model)
    if any(hasattr(w, "slb_logits") for w in quant_wrappers(model).values()):
        # weight_bits names the wrapped layer "<wrapper>.layer"; unwrapped, it is "<wrapper>"
        bits = {k[: -len(".layer")] if k.endswith(".layer") else "": b for k, b in bits.items()}
        deployable = unwrap(model)
    params, _ = count_params(deployable)
    size = model_size_bytes(deployable, bits=bits or None).total_bytes
    out: dict[str, Any] = {
        "flops": flops,
        "params": params,
        "size": size,
        "latency": None,
        "latency_device": None,
        "memory": None,
    }
    if latency:
        result, note = measure_runtime_latency(
            model, example_inputs, runtime, batch_size=latency_batch, warmup=3, repeats=latency_repeats
        )
        out["latency"] = result.median_ms
        out["latency_device"] = result.device
        if note is not None:
            out["latency_note"] = note
    if memory:
        out["memory"] = measure_memory(deployable, example_inputs, batch_size=memory_batch).peak_bytes
    return out


__all__ = ["measure_deployable"]
