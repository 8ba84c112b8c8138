"""ONNX export with PyTorch's ``torch.export``-based exporter, checked in onnxruntime.

:func:`export_onnx` captures a CPU eval copy of the model with ``torch.export`` and a dynamic batch dimension
(:func:`~slimtune.compressors.deploy.program.capture`), translates it with
``torch.onnx.export(exported_program, dynamo=True)`` (onnxscript's ATen → ONNX library, then its graph
optimizer), writes one ``.onnx`` file (weights inside; a model over 2 GB gets an external-data file beside it),
and runs that file in ``onnxruntime.InferenceSession`` (CPUExecutionProvider) at the example batch and at
another batch size, comparing every output with the eager model's.

Fake-quantized models (``QuantWrapper`` layers) are exported in QDQ form: int8 weights and
QuantizeLinear/DequantizeLinear pairs (see :mod:`slimtune.compressors.deploy.qdq`).

Needs ``onnx``, ``onnxscript`` and ``onnxruntime`` (``pip install "slimtune[deploy]"``).
"""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path
from typing import Any

from torch import nn

from slimtune.compressors.deploy.program import (
    Capture,
    Comparison,
    capture,
    check_destination,
    check_tolerance,
    first_line,
    quantized_note,
    quiet,
    tensors,
)
from slimtune.compressors.deploy.qdq import qdq_form
from slimtune.compressors.deploy.result import ExportResult
from slimtune.errors import ArgumentError, QuantExportError, SlimtuneError

_PACKAGES = ("onnx", "onnxscript", "onnxruntime")


def onnx_available() -> bool:
    """Whether ``onnx``, ``onnxscript`` and ``onnxruntime`` are installed (``pip install "slimtune[deploy]"``)."""
    return all(importlib.util.find_spec(name) is not None for name in _PACKAGES)


def _require(check: bool) -> None:
    needed = _PACKAGES if check else _PACKAGES[:2]
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise SlimtuneError(
            f"export_onnx needs {', '.join(missing)}: pip install 'slimtune[deploy]' "
            f"(or pip install {' '.join(missing)})"
        )


def export_onnx(
    model: nn.Module,
    example_inputs: Any,
    path: str | os.PathLike[str],
    dynamic_batch: bool = True,
    opset: int | None = None,
    check: bool = True,
    rtol: float = 1e-4,
    atol: float = 1e-5,
    debug_info: bool = False,
) -> ExportResult:
    """Export ``model`` to an ONNX file and check it in onnxruntime.

    Args:
        model: Any module (a compressed model from slimtune, pruned or fake-quantized, or any other), on
            any device: a CPU copy in eval mode is exported; the model is neither moved nor modified.
        example_inputs: Its positional inputs (a tensor or a tuple; ``None`` entries allowed), batch
            dimension first. Non-tensor values are fixed in the file.
        path: The file to write (``model.onnx``); its directory must exist.
        dynamic_batch: Let the file take any batch size (dimension ``batch`` of every input of the example's
            batch size). A model whose code fixes its batch is exported at the example batch instead, and
            ``notes`` say why.
        opset: The ONNX opset (default: the exporter's, 20 with torch 2.13; 13 or later).
        check: Run the file in onnxruntime (CPU) at the example batch and, for a dynamic batch, at another
            batch size (1, or 3 for an example of batch 1), and compare every output with the eager model's.
        rtol, atol: The check passes when ``|onnx - eager| <= atol + rtol * |eager|`` for every element; for a
            model with quantized inputs, when the relative L2 error of every output is at most
            :data:`~slimtune.compressors.deploy.program.QUANT_REL_L2` (rounding at quantization boundaries
            can differ by a step between runtimes).
        debug_info: Keep the exporter's metadata on every node (the PyTorch module path, the FX node and the
            Python stack trace, with your file paths): about 1.5 kB a node, most of a small model's file.

    Returns:
        An :class:`~slimtune.compressors.deploy.ExportResult` (``print(result)`` describes it).

    Raises:
        ArgumentError: ``path`` is a directory or its directory does not exist (the message names it), a
            tolerance is negative.
        QuantExportError: A quantized layer that cannot be exported (still calibrating; names the layer), or
            an export that failed where layers quantize in floating-point ops (names them).
        SlimtuneError: The packages are missing; the model fails on the inputs or cannot be captured or
            translated (with the exporter's reason); onnxruntime cannot load the file; or the check failed
            (the file is kept; the message gives the difference and where).

    Example:
        >>> import tempfile, torch
        >>> from slimtune.examples.models import resnet20
        >>> with tempfile.TemporaryDirectory() as d:
        ...     result = export_onnx(resnet20(), torch.randn(2, 3, 32, 32), f"{d}/resnet20.onnx")
        >>> [str(s) for s in result.inputs], result.checked_batches, result.max_abs_diff < 1e-4
        (['x: float32[batch, 3, 32, 32]'], (2, 1), True)
    """
    dest = check_destination(path, "export_onnx")
    check_tolerance(rtol, atol)
    if opset is not None and (isinstance(opset, bool) or not isinstance(opset, int) or opset < 13):
        raise ArgumentError(f"opset must be an int >= 13 (QDQ per channel needs 13), got {opset!r}", field="opset")
    _require(check)
    start = time.perf_counter()
    cap = capture(model, example_inputs, dynamic_batch, what="export_onnx", transform=qdq_form)
    quantized = bool(cap.quantized_inputs)
    float_ops = [n for n, kind in cap.quant_kinds.items() if kind == "float-ops"]
    import torch

    n_outputs = len(cap.program.graph_signature.user_outputs)
    names = cap.output_names if len(cap.output_names) == n_outputs and len(set(cap.output_names)) == n_outputs else None
    try:
        with quiet():
            program = torch.onnx.export(
                cap.program, (), dynamo=True, opset_version=opset, verbose=False, output_names=names
            )
    except Exception as e:
        reason = first_line(e, 600)
        if float_ops:
            raise QuantExportError(
                f"export_onnx: the ONNX exporter failed ({reason}); layers {float_ops} quantize their inputs "
                "in floating-point ops that have no ONNX form here: quantize them with another algorithm "
                "(ste, ptq, pact) or export_pt2"
            ) from e
        raise SlimtuneError(f"export_onnx: the ONNX exporter cannot translate {type(model).__name__}: {reason}") from e
    assert program is not None
    if not debug_info:  # the exporter's per-node stack traces and module paths: most of a small file
        graph = program.model.graph
        for node in graph.all_nodes():
            node.metadata_props.clear()
            for value in node.outputs:
                value.metadata_props.clear()
        for value in [*graph.inputs, *graph.initializers.values()]:
            value.metadata_props.clear()
    for old in (dest, Path(f"{dest}.data")):
        if old.is_file():
            old.unlink()
    with quiet():
        program.save(dest)
    seconds = time.perf_counter() - start
    files = [p for p in (dest, Path(f"{dest}.data")) if p.is_file()]
    graph = program.model.graph
    in_names = [v.name for v in graph.inputs]
    out_names = [v.name for v in graph.outputs]
    result = ExportResult(
        path=dest,
        format="onnx",
        size_bytes=sum(p.stat().st_size for p in files),
        export_seconds=seconds,
        inputs=cap.input_specs(in_names),
        outputs=cap.output_specs(out_names),
        dynamic_batch=cap.dynamic,
        opset=program.model.opset_imports.get(""),
        files=files,
        notes=list(cap.notes),
    )
    if check:
        _check(cap, result, in_names, out_names, rtol, atol, quantized, float_ops)
    return result


def _check(
    cap: Capture,
    result: ExportResult,
    in_names: list[str],
    out_names: list[str],
    rtol: float,
    atol: float,
    quantized: bool,
    float_ops: list[str],
) -> None:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = options.inter_op_num_threads = 1  # tiny batches; robust on a busy machine
    try:
        session = ort.InferenceSession(str(result.path), options, providers=["CPUExecutionProvider"])
    except Exception as e:
        hint = f"; layers {float_ops} quantize their inputs in floating-point ops" if float_ops else ""
        error = QuantExportError if float_ops else SlimtuneError
        raise error(
            f"export_onnx: onnxruntime {ort.__version__} cannot load {result.path} ({first_line(e, 400)}){hint}; "
            "the file is kept for inspection"
        ) from e
    feeds_names = [i.name for i in session.get_inputs()]
    comparison = Comparison(rtol, atol)
    for batch in cap.check_batches():
        args = cap.inputs_at(batch)
        arrays = [t.numpy() for t in tensors(args)]
        if len(arrays) != len(in_names):
            raise SlimtuneError(
                f"export_onnx: {result.path} takes {len(in_names)} inputs ({', '.join(in_names)}) but the example "
                f"inputs hold {len(arrays)} tensors (an input the model does not use?); pass check=False"
            )
        feeds = {name: a for name, a in zip(in_names, arrays) if name in feeds_names}
        expected = cap.expected_at(batch, args)
        actual = session.run(None, feeds)
        comparison.add(actual, expected, f"batch {batch}", out_names)
    result.max_abs_diff = comparison.max_abs_diff
    result.rel_l2 = comparison.rel_l2
    result.checked_batches = cap.check_batches()
    result.checked_with = f"onnxruntime {ort.__version__}"
    result.tolerance = (rtol, atol)
    if quantized:
        result.notes.append(quantized_note(comparison, "onnxruntime"))
    if not comparison.passed(quantized):
        raise SlimtuneError(
            f"export_onnx: {result.path} does not reproduce the model in onnxruntime: "
            f"{comparison.summary(quantized)}; the file is kept; check=False skips this check"
        )
