"""The measures of a model as it would be deployed: what each trial of a search reports.

:func:`~slimtune.compressors.measures.measure` measures any model as it is; this measures the
model a trial would ship: an SLB model by its most probable candidates, fake-quantized layers by
their bit-widths (size) and by their int8 export (latency).
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from slimtune.compressors.measures.flops import count_flops
from slimtune.compressors.measures.latency import measure_latency
from slimtune.compressors.measures.size import count_params, model_size_bytes


def measure_deployable(
    model: nn.Module,
    example_inputs: Any,
    latency: bool,
    latency_batch: int = 32,
    latency_repeats: int = 20,
) -> dict[str, Any]:
    """FLOPs (MACs per sample), parameters, size in bytes (quantized weights at their bit-widths)
    and (optionally) latency of ``model``.

    A fake-quantized layer counts its weight at its bit-width plus per-channel scales and its
    range buffers (what :class:`~slimtune.compressors.measures.ResourcePredictor` predicts). An
    SLB model is measured as deployed (:func:`~slimtune.compressors.quantization.unwrap`: the
    most probable candidate of each weight), so its per-weight logits are not counted.

    Latency is that of the deployable model too: fake-quantized layers run float kernels plus
    fake-quant ops, which says nothing about integer kernels, so when the model has layers with
    at most 8 weight bits, the latency measured is that of
    :func:`~slimtune.compressors.quantization.export_int8` with those layers in int8 (calibrated
    on the latency batch: activation ranges do not change kernel time; below 8 bits, x86 has no
    faster kernels). If the export fails, the fake-quantized model is measured and
    ``latency_note`` in the result says why.

    Returns:
        ``{"flops", "params", "size", "latency"}`` (latency None unless asked for), plus
        ``latency_note`` when the latency of a quantized model could not be measured on its int8 export.
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
    out: dict[str, Any] = {"flops": flops, "params": params, "size": size, "latency": None}
    if latency:
        timed, note = _latency_model(model, example_inputs, latency_batch)
        out["latency"] = measure_latency(
            timed, example_inputs, batch_size=latency_batch, threads=1, warmup=3, repeats=latency_repeats
        ).median_ms
        if note is not None:
            out["latency_note"] = note
    return out


def _latency_model(model: nn.Module, example_inputs: Any, batch: int) -> tuple[nn.Module, str | None]:
    """The model whose latency a trial reports: the int8 export of the layers with at most 8 weight
    bits (none: ``model`` itself), or ``model`` and why the export failed."""
    from slimtune.compressors.measures.bits_latency import INT8_MAX_BITS
    from slimtune.compressors.measures.latency import make_batch
    from slimtune.compressors.quantization import QuantWrapper, export_int8

    layers = sorted(
        name
        for name, w in model.named_modules()
        if isinstance(w, QuantWrapper) and not w.recurrent and w.bits_w is not None and w.bits_w <= INT8_MAX_BITS
    )
    if not layers:
        return model, None
    try:
        calibration = [(make_batch(example_inputs, batch),)]
        return export_int8(model, example_inputs, calibration, layers=layers), None
    except Exception as e:  # noqa: BLE001 - any export failure: measure the fake-quantized model, say why
        return (
            model,
            f"latency of the fake-quantized model: int8 export of {', '.join(layers)} failed: {type(e).__name__}: {e}",
        )


__all__ = ["measure_deployable"]
