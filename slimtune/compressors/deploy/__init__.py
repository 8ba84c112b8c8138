"""Deployable exports of a (compressed) model: ONNX and ``torch.export`` programs, each checked.

- :func:`export_onnx`: ``torch.onnx.export(..., dynamo=True)`` of a CPU eval copy with a dynamic batch
  dimension, run in onnxruntime at two batch sizes against the eager model; fake-quantized layers in QDQ
  form (int8 weights, QuantizeLinear/DequantizeLinear) — :mod:`.onnx_export`, :mod:`.qdq`;
- :func:`export_onnx_int8`: a static int8 ONNX file in QDQ form by onnxruntime's quantizer (``quantize_static``,
  calibrated on a few batches), checked in onnxruntime against the float model (relative L2 error at most
  :data:`ORT_INT8_REL_L2`) — :mod:`.ort_int8`;
- :func:`export_pt2` / :func:`load_pt2`: ``torch.export.save`` / ``load`` of the same program, reloaded and
  checked — :mod:`.pt2_export`;
- :class:`ExportResult`: the file, its size, the inputs and outputs (``batch`` marking the dynamic
  dimension), the difference measured, and notes; ``print(result)`` describes it.

The model is never moved or modified; a model on a GPU is exported from a CPU copy. ONNX needs
``pip install "slimtune[deploy]"`` (onnx, onnxscript, onnxruntime).

Example:
    >>> import tempfile, torch
    >>> from slimtune.compressors import CompressionPlan, compress, trace
    >>> from slimtune.compressors.deploy import export_onnx
    >>> from slimtune.examples.models import vgg_small
    >>> model, x = vgg_small(), torch.randn(2, 3, 32, 32)
    >>> small = compress(model, CompressionPlan.uniform(trace(model, x), 0.5, "l1"), x)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     result = export_onnx(small, x, f"{d}/small.onnx")
    >>> result.dynamic_batch, result.max_abs_diff < 1e-4
    (True, True)
"""

from __future__ import annotations

from slimtune.compressors.deploy.onnx_export import export_onnx, onnx_available
from slimtune.compressors.deploy.ort_int8 import ORT_INT8_REL_L2, export_onnx_int8
from slimtune.compressors.deploy.program import BATCH, QUANT_REL_L2
from slimtune.compressors.deploy.pt2_export import export_pt2, load_pt2
from slimtune.compressors.deploy.qdq import QDQLayer, qdq_form
from slimtune.compressors.deploy.result import ExportResult, TensorSpec

__all__ = [
    "BATCH",
    "ORT_INT8_REL_L2",
    "QUANT_REL_L2",
    "ExportResult",
    "QDQLayer",
    "TensorSpec",
    "export_onnx",
    "export_onnx_int8",
    "export_pt2",
    "load_pt2",
    "onnx_available",
    "qdq_form",
]
