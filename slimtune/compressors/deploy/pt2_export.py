"""``torch.export`` programs saved as ``.pt2`` files: :func:`export_pt2` and :func:`load_pt2`.

A ``.pt2`` file holds the ATen graph and the weights of a CPU eval copy of the model, with a dynamic batch
dimension where the model allows one. It loads without the model's Python code (``torch.export.load``) and is
what AOTInductor, ExecuTorch and ``torch.compile`` take. Fake-quantized layers are saved in QDQ form, as in
ONNX (:mod:`slimtune.compressors.deploy.qdq`): int8 weights and ``quantized_decomposed`` quantize / dequantize
ops, the representation PT2E quantization produces and ExecuTorch's and inductor's int8 lowerings read. To load
such a file without :func:`load_pt2`, ``import torch.ao.quantization.fx._decomposed`` first (it registers the
ops).

Example:
    >>> import tempfile, torch
    >>> from slimtune.examples.models import mlp
    >>> with tempfile.TemporaryDirectory() as d:
    ...     result = export_pt2(mlp(), torch.randn(4, 64), f"{d}/mlp.pt2")
    ...     program = load_pt2(f"{d}/mlp.pt2")
    >>> program.module()(torch.randn(7, 64)).shape, result.max_abs_diff == 0.0
    (torch.Size([7, 10]), True)
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimtune.compressors.deploy.program import (
    Comparison,
    capture,
    check_destination,
    check_tolerance,
    first_line,
    quantized_note,
    quiet,
    tensors,
)
from slimtune.compressors.deploy.qdq import qdq_form, register_qdq_ops
from slimtune.compressors.deploy.result import ExportResult
from slimtune.errors import ArgumentError, ArgumentTypeError, SlimtuneError


def export_pt2(
    model: nn.Module,
    example_inputs: Any,
    path: str | os.PathLike[str],
    dynamic_batch: bool = True,
    check: bool = True,
    rtol: float = 1e-4,
    atol: float = 1e-5,
) -> ExportResult:
    """Capture ``model`` with ``torch.export`` and save the program to ``path`` (``torch.export.save``).

    Args:
        model: Any module, on any device (a CPU copy in eval mode is exported; the model is not modified).
        example_inputs: Its positional inputs (a tensor or a tuple), batch dimension first.
        path: The file to write (``model.pt2``); its directory must exist.
        dynamic_batch: Give the program a dynamic batch dimension (``notes`` say why when the model cannot).
        check: Reload the file with :func:`load_pt2` and compare its outputs with the eager model's at the
            example batch and, for a dynamic batch, another batch size.
        rtol, atol: Tolerances of the check (as in :func:`~slimtune.compressors.deploy.export_onnx`).

    Returns:
        An :class:`~slimtune.compressors.deploy.ExportResult`.

    Raises:
        ArgumentError: ``path`` is a directory or its directory does not exist (names it).
        QuantExportError: A fake-quantized layer is still calibrating (names it).
        SlimtuneError: The model fails on the inputs or ``torch.export`` cannot capture it (with the reason),
            or the reloaded program does not reproduce the model.
    """
    dest = check_destination(path, "export_pt2")
    check_tolerance(rtol, atol)
    start = time.perf_counter()
    cap = capture(model, example_inputs, dynamic_batch, what="export_pt2", transform=qdq_form)
    try:
        with quiet():
            torch.export.save(cap.program, dest)
    except Exception as e:
        name = type(model).__name__
        raise SlimtuneError(f"export_pt2: cannot save the program of {name} to {dest}: {first_line(e)}") from e
    seconds = time.perf_counter() - start
    result = ExportResult(
        path=dest,
        format="pt2",
        size_bytes=dest.stat().st_size,
        export_seconds=seconds,
        inputs=cap.input_specs(),
        outputs=cap.output_specs(),
        dynamic_batch=cap.dynamic,
        files=[dest],
        notes=list(cap.notes),
    )
    if not check:
        return result
    try:
        module = load_pt2(dest).module()
    except SlimtuneError as e:
        cause = e.__cause__ if e.__cause__ is not None else e
        hint = (
            " (the program has data-dependent sizes, e.g. boolean-mask indexing, which this torch cannot load back)"
            if "unbacked" in str(cause)
            else ""
        )
        raise SlimtuneError(
            f"export_pt2: wrote {dest}, but torch.export.load cannot load it back: {first_line(cause)}{hint}; "
            "the file is kept; check=False skips this check, export_onnx may work"
        ) from e
    comparison = Comparison(rtol, atol)
    names = [s.name for s in result.outputs]
    for batch in cap.check_batches():
        args = cap.inputs_at(batch)
        with torch.no_grad():
            actual = tensors(module(*args))
        comparison.add(actual, cap.expected_at(batch, args), f"batch {batch}", names)
    result.max_abs_diff = comparison.max_abs_diff
    result.rel_l2 = comparison.rel_l2
    result.checked_batches = cap.check_batches()
    result.checked_with = "torch.export.load"
    result.tolerance = (rtol, atol)
    if cap.quantized_inputs:
        result.notes.append(quantized_note(comparison, "the reloaded program"))
    if not comparison.passed(cap.quantized_inputs):
        raise SlimtuneError(
            f"export_pt2: the program reloaded from {dest} does not reproduce the model: "
            f"{comparison.summary(cap.quantized_inputs)}; the file is kept; check=False skips this check"
        )
    return result


def load_pt2(path: str | os.PathLike[str]) -> torch.export.ExportedProgram:
    """Load a program saved by :func:`export_pt2` (``torch.export.load``); ``.module()`` runs it.

    Raises:
        ArgumentError: No file at ``path`` (names it).
        SlimtuneError: ``torch.export.load`` fails: not a saved program, or one it cannot load back (names
            the file, with the reason).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise ArgumentTypeError(f"load_pt2: path must be a str or os.PathLike, got {type(path).__name__}", field="path")
    src = Path(path)
    if not src.is_file():
        raise ArgumentError(f"load_pt2: no file {src}", field="path")
    register_qdq_ops()  # quantized models hold quantized_decomposed ops
    try:
        with quiet():
            return torch.export.load(src)
    except Exception as e:
        raise SlimtuneError(
            f"load_pt2: torch.export.load cannot load {src} ({first_line(e)}); is it a file export_pt2 wrote?"
        ) from e
