"""Static int8 ONNX files for onnxruntime, in QDQ form: :func:`export_onnx_int8`.

The float model is exported with :func:`~slimtune.compressors.deploy.export_onnx` (``torch.export``, dynamic
batch; BatchNorm already folded into the convolutions), prepared with
``onnxruntime.quantization.quant_pre_process`` (symbolic shape inference and onnxruntime's basic graph
optimizations; if it fails, the exported file is quantized as it is and a note says why), then quantized by
onnxruntime's post-training quantizer, ``quantize_static(quant_format=QuantFormat.QDQ)``: weights int8 (per
output channel by default), activations uint8 with ranges calibrated on a few batches run through the float file
(MinMax by default; Entropy or Percentile histograms), each quantized tensor behind a QuantizeLinear →
DequantizeLinear pair that onnxruntime fuses into its int8 kernels (QLinearConv, MatMulInteger ...). uint8
activations with int8 weights ("U8S8") is what onnxruntime recommends on x86 with VNNI;
``activation_type="int8"`` gives symmetric int8 activations (ARM, GPU execution providers).

The int8 file is then run in ``onnxruntime.InferenceSession`` (CPUExecutionProvider) at the example batch
and, for a dynamic batch, at another batch size, and each output is compared with the eager float model's
by its relative L2 error (at most :data:`ORT_INT8_REL_L2` by default).

Measured on this repository's random-weight models (random inputs; four calibration batches of 16;
onnxruntime 1.32, ``intra_op_num_threads=1``, 2-core AMD EPYC with AVX-512 VNNI; an ad-hoc run, median
latency of ``session.run``, float file vs int8 file, both in onnxruntime):

======================== =========== =========== ======= ================ ================= =================
model                    float ONNX  int8 ONNX   ratio   rel. L2 error    latency batch 1   latency batch 32
======================== =========== =========== ======= ================ ================= =================
ResNet-20                1.11 MB     0.33 MB     0.30    0.015 - 0.021    0.72 → 0.33 ms    22.8 → 9.4 ms
VGG-small                3.08 MB     0.79 MB     0.26    0.013 - 0.024    0.37 → 0.16 ms    11.1 → 4.1 ms
VGG-small, 50 % channels 0.78 MB     0.21 MB     0.27    0.011 - 0.020    0.11 → 0.07 ms    2.9 → 1.8 ms
digits CNN               0.40 MB     0.11 MB     0.28    0.003 - 0.008    0.04 → 0.03 ms    0.79 → 0.35 ms
======================== =========== =========== ======= ================ ================= =================

(Errors over batch sizes 1, 2 and 32 and the three calibration methods, which differ little on random data.)

A model with fake-quantized layers (``QuantWrapper``, from ``compress`` with ``quantize`` entries) already
carries its quantization: :func:`~slimtune.compressors.deploy.export_onnx` writes it in QDQ form with the
learned scales, so this function refuses such a model rather than quantizing it a second time.

Needs ``onnx``, ``onnxscript`` and ``onnxruntime`` (``pip install "slimtune[deploy]"``).

Example:
    >>> import tempfile, torch
    >>> from slimtune.examples.models import mlp
    >>> x = torch.randn(8, 64)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     result = export_onnx_int8(mlp(), x, f"{d}/mlp.onnx", [x])
    >>> result.format, result.dynamic_batch, result.rel_l2 <= ORT_INT8_REL_L2
    ('onnx-int8', True, True)
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from slimtune.compressors.deploy.onnx_export import export_onnx
from slimtune.compressors.deploy.program import (
    Comparison,
    as_args,
    check_destination,
    cpu_eval_copy,
    eager_outputs,
    first_line,
    quiet,
    resize_batch,
    tensors,
)
from slimtune.compressors.deploy.result import ExportResult
from slimtune.errors import ArgumentError, ArgumentTypeError, QuantExportError, SlimtuneError

if TYPE_CHECKING:
    import numpy as np

__all__ = ["ACTIVATION_TYPES", "CALIBRATE_METHODS", "ORT_INT8_REL_L2", "export_onnx_int8"]

ORT_INT8_REL_L2 = 0.1
"""Largest relative L2 error ``‖int8 - eager‖ / ‖eager‖`` of an output that :func:`export_onnx_int8` accepts by
default.

Measured 0.003 to 0.024 on random-weight ResNet-20, VGG-small (whole and 50 %-channel-pruned) and the digits
CNN (see the module docstring): static int8 rounds every weight and activation, so unlike the float export the
outputs are not equal up to float rounding, and trained models with outlier activations do somewhat worse. 0.1
leaves 4× headroom over the worst measured, while a broken quantization (a wrong scale, a range calibrated on
other data, a missing clip) gives errors of order 1."""

CALIBRATE_METHODS = ("minmax", "entropy", "percentile")
"""The calibration methods, as onnxruntime's ``CalibrationMethod`` ``MinMax``, ``Entropy``, ``Percentile``."""

ACTIVATION_TYPES = ("uint8", "int8")
"""Activation types: ``QuantType.QUInt8`` (asymmetric, x86's U8S8 kernels) or ``QuantType.QInt8``."""

_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
_DTYPE_NAMES = {"uint8": "QUInt8", "int8": "QInt8"}
_METHOD_NAMES = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}


def export_onnx_int8(
    model: nn.Module,
    example_inputs: Any,
    path: str | os.PathLike[str],
    calibration: Any,
    *,
    per_channel: bool = True,
    activation_type: str = "uint8",
    calibrate_method: str = "minmax",
    dynamic_batch: bool = True,
    check: bool = True,
    max_rel_l2: float = ORT_INT8_REL_L2,
) -> ExportResult:
    """Export ``model`` to a static int8 ONNX file (QDQ form) with onnxruntime's quantizer, and check it.

    Args:
        model: A float module on any device (a CPU copy in eval mode is exported; the model is neither moved nor
            modified). Pruned models are fine; fake-quantized ones are refused (use ``export_onnx``).
        example_inputs: Its positional inputs (a tensor or a tuple), batch dimension first.
        path: The file to write (``model.int8.onnx``); its directory must exist. The float file is written to a
            temporary folder beside it and removed.
        calibration: The data the activation ranges are calibrated on: one input tensor (one batch), or an
            iterable of batches (a list, a DataLoader), each an input tensor or an ``(inputs, targets)`` /
            ``[inputs, targets]`` pair whose first element is the input tensor or, for a model of several
            inputs, a tuple of them (a dict with an ``"inputs"`` key works too).
            Any batch size when the batch is dynamic; a few hundred samples are usually enough.
        per_channel: Quantize weights per output channel (else one scale per tensor: slightly faster, less
            accurate).
        activation_type: ``"uint8"`` (default; asymmetric, what onnxruntime recommends on x86) or ``"int8"``.
        calibrate_method: ``"minmax"`` (default), ``"entropy"`` or ``"percentile"`` (99.999th percentile,
            symmetric ranges).
        dynamic_batch: Let the file take any batch size (see ``export_onnx``; ``notes`` say why when the model
            cannot).
        check: Run the int8 file in onnxruntime (CPU) at the example batch and, for a dynamic batch, another
            batch size, and compare every output with the eager float model's.
        max_rel_l2: The check passes when every output's relative L2 error ``‖int8 - eager‖ / ‖eager‖`` is at
            most this (default :data:`ORT_INT8_REL_L2`).

    Returns:
        An :class:`~slimtune.compressors.deploy.ExportResult` with ``format="onnx-int8"``; its ``rel_l2`` is the
        error measured, its ``notes`` the calibration (batches, samples, method), the weight and activation
        types, the float file's size and what the export had to do.

    Raises:
        ArgumentError: ``path`` is a directory or its directory does not exist, ``calibration`` is empty or
            holds a batch that does not fit the model's inputs, an unknown ``calibrate_method`` or
            ``activation_type``, a negative ``max_rel_l2`` (the message names the field).
        ArgumentTypeError: ``calibration`` is not a tensor or an iterable of batches, or ``per_channel`` is not
            a bool.
        QuantExportError: The model has fake-quantized layers (export them with ``export_onnx``), or
            onnxruntime's quantizer failed (with its reason).
        SlimtuneError: The packages are missing; the model cannot be exported to ONNX; or the check failed (the
            file is kept; the message gives the error and where).

    Example:
        >>> import tempfile, torch
        >>> from slimtune.examples.models import resnet20
        >>> x = torch.randn(4, 3, 32, 32)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     result = export_onnx_int8(resnet20(), x, f"{d}/resnet20.onnx", [x])
        >>> result.checked_batches, result.rel_l2 < 0.05, result.size_bytes < 400_000
        ((4, 1), True, True)
    """
    dest = check_destination(path, "export_onnx_int8")
    method = _choice(calibrate_method, CALIBRATE_METHODS, "calibrate_method")
    act_type = _choice(activation_type, ACTIVATION_TYPES, "activation_type")
    if not isinstance(per_channel, bool):
        raise ArgumentTypeError(
            f"export_onnx_int8: per_channel must be True or False, got {per_channel!r}", field="per_channel"
        )
    if isinstance(max_rel_l2, bool) or not isinstance(max_rel_l2, (int, float)) or not max_rel_l2 >= 0:
        raise ArgumentError(
            f"export_onnx_int8: max_rel_l2 must be a number >= 0, got {max_rel_l2!r}", field="max_rel_l2"
        )
    _refuse_fake_quantized(model)
    _require()
    batches = _peeked(_calibration_batches(calibration))
    import onnx

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=".slimtune-int8-", dir=dest.parent) as work:
        float_path = Path(work) / "float.onnx"
        float_result = export_onnx(model, example_inputs, float_path, dynamic_batch=dynamic_batch, check=False)
        float_bytes = float_result.size_bytes
        graph = onnx.load(str(float_path), load_external_data=False).graph
        specs = [_InputSpec.of(value) for value in graph.input]
        source, notes = _pre_process(float_path, Path(work) / "prepared.onnx")
        reader = _reader(batches, specs)
        for old in (dest, Path(f"{dest}.data")):
            if old.is_file():
                old.unlink()
        _quantize(source, dest, reader, per_channel, act_type, method)
    seconds = time.perf_counter() - start
    files = [p for p in (dest, Path(f"{dest}.data")) if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    opset = next((o.version for o in onnx.load(str(dest), load_external_data=False).opset_import if not o.domain), None)
    samples = f" ({reader.samples} samples)" if reader.samples else ""
    result = ExportResult(
        path=dest,
        format="onnx-int8",
        size_bytes=size,
        export_seconds=seconds,
        inputs=float_result.inputs,
        outputs=float_result.outputs,
        dynamic_batch=float_result.dynamic_batch,
        opset=opset,
        files=files,
        notes=[
            *float_result.notes,
            *notes,
            f"static int8 (QDQ) by onnxruntime's quantize_static: weights int8 "
            f"{'per output channel' if per_channel else 'per tensor'}, activations {act_type}, "
            f"{method} calibration on {reader.batches} batch{'es' if reader.batches != 1 else ''}{samples}",
            f"{size / max(float_bytes, 1):.2f}× the float ONNX file ({float_bytes} bytes)",
        ],
    )
    if check:
        _check(model, example_inputs, result, [s.name for s in specs], max_rel_l2)
    return result


# ---------------------------------------------------------------------------------------------- arguments
def _choice(value: Any, allowed: tuple[str, ...], name: str) -> str:
    key = value.lower() if isinstance(value, str) else value
    if key not in allowed:
        raise ArgumentError(
            f"export_onnx_int8: {name} must be one of {', '.join(map(repr, allowed))}, got {value!r}", field=name
        )
    return key


def _refuse_fake_quantized(model: nn.Module) -> None:
    from slimtune.compressors.quantization.modules import QuantWrapper

    if not isinstance(model, nn.Module):
        raise ArgumentTypeError(
            f"export_onnx_int8: model must be a torch.nn.Module, got {type(model).__name__}", field="model"
        )
    wrapped = [name for name, m in model.named_modules() if isinstance(m, QuantWrapper)]
    if wrapped:
        shown = ", ".join(wrapped[:4]) + (f" and {len(wrapped) - 4} more" if len(wrapped) > 4 else "")
        raise QuantExportError(
            f"export_onnx_int8: the model is fake-quantized already (QuantWrapper layers {shown}); export it with "
            "export_onnx, which writes those layers in QDQ form with their learned scales (int8 weights), or "
            "quantize the float model (unwrap(model)) here"
        )


def _require() -> None:
    missing = [name for name in _PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise SlimtuneError(
            f"export_onnx_int8 needs {', '.join(missing)}: pip install 'slimtune[deploy]' "
            f"(or pip install {' '.join(missing)})"
        )


def _calibration_batches(calibration: Any) -> Iterator[tuple[Any, ...]]:
    """The model's positional inputs of each calibration batch (see ``calibration`` in :func:`export_onnx_int8`)."""
    if isinstance(calibration, torch.Tensor):
        yield (calibration,)
        return
    if isinstance(calibration, (str, bytes)) or not isinstance(calibration, Iterable):
        raise ArgumentTypeError(
            "export_onnx_int8: calibration must be an input tensor or an iterable of batches (tensors or "
            f"(inputs, targets) pairs), got {type(calibration).__name__}",
            field="calibration",
        )
    for i, batch in enumerate(calibration):
        if isinstance(batch, torch.Tensor):
            yield (batch,)
        elif isinstance(batch, (tuple, list)) and batch:
            yield as_args(batch[0])
        elif isinstance(batch, dict) and "inputs" in batch:
            yield as_args(batch["inputs"])
        else:
            raise ArgumentTypeError(
                f"export_onnx_int8: calibration batch {i} must be a tensor or an (inputs, targets) pair, "
                f"got {type(batch).__name__}",
                field="calibration",
            )


def _peeked(batches: Iterator[tuple[Any, ...]]) -> Iterator[tuple[Any, ...]]:
    """``batches`` after checking that it holds one batch at least (read before the slow float export)."""
    first = next(batches, None)
    if first is None:
        raise ArgumentError(
            "export_onnx_int8: calibration is empty; give at least one batch of inputs (a few hundred samples "
            "are usually enough)",
            field="calibration",
        )

    def chain() -> Iterator[tuple[Any, ...]]:
        yield first
        yield from batches

    return chain()


# ---------------------------------------------------------------------------------------------- calibration
class _InputSpec:
    """A graph input of the float file: name, numpy dtype and sizes (``None`` for a symbolic one)."""

    def __init__(self, name: str, dtype: np.dtype[Any], shape: tuple[int | None, ...]) -> None:
        self.name, self.dtype, self.shape = name, dtype, shape

    @classmethod
    def of(cls, value: Any) -> _InputSpec:
        from onnx.helper import tensor_dtype_to_np_dtype

        tensor_type = value.type.tensor_type
        shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim)
        return cls(value.name, tensor_dtype_to_np_dtype(tensor_type.elem_type), shape)

    def check(self, array: np.ndarray[Any, Any], where: str) -> None:
        if array.ndim != len(self.shape) or any(s is not None and s != a for s, a in zip(self.shape, array.shape)):
            wanted = ", ".join("batch" if s is None else str(s) for s in self.shape)
            raise ArgumentError(
                f"export_onnx_int8: {where}: input {self.name!r} has shape {tuple(array.shape)}, the model takes "
                f"[{wanted}]" + ("" if self.shape and self.shape[0] is None else " (its batch size is fixed)"),
                field="calibration",
            )


def _reader(batches: Iterator[tuple[Any, ...]], specs: list[_InputSpec]) -> Any:
    """An ``onnxruntime.quantization.CalibrationDataReader`` over ``batches``, checking each against ``specs``;
    it counts the batches and samples it hands out."""
    from onnxruntime.quantization import CalibrationDataReader

    class BatchReader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = 0
            self.samples = 0

        def get_next(self) -> dict[str, np.ndarray[Any, Any]] | None:
            args = next(batches, None)
            if args is None:
                return None
            where = f"calibration batch {self.batches}"
            arrays = [t.detach().to("cpu").numpy() for t in tensors(args)]
            if len(arrays) != len(specs):
                raise ArgumentError(
                    f"export_onnx_int8: {where} holds {len(arrays)} input tensors, the model takes {len(specs)} "
                    f"({', '.join(s.name for s in specs)})",
                    field="calibration",
                )
            feeds = {}
            for spec, array in zip(specs, arrays):
                spec.check(array, where)
                feeds[spec.name] = array.astype(spec.dtype, copy=False)
            self.batches += 1
            self.samples += int(arrays[0].shape[0]) if arrays and arrays[0].ndim else 0
            return feeds

    return BatchReader()


# ---------------------------------------------------------------------------------------------- onnxruntime
@contextlib.contextmanager
def _ort_quiet() -> Iterator[None]:
    """Silence onnxruntime's quantization tools: their progress prints, and the root-logger warnings they emit
    with ``logging.warning`` (a handler is put on the root logger first, so that ``logging.warning`` does not
    install one on the silenced stderr)."""
    root = logging.getLogger()
    level, guard = root.level, logging.NullHandler()
    root.addHandler(guard)
    root.setLevel(logging.ERROR)
    try:
        with quiet():
            yield
    finally:
        root.removeHandler(guard)
        root.setLevel(level)


def _pre_process(source: Path, target: Path) -> tuple[Path, list[str]]:
    """``quant_pre_process`` of ``source`` into ``target``: the file to quantize and a note if it failed."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        with _ort_quiet():
            quant_pre_process(str(source), str(target))
    except Exception as e:  # noqa: BLE001 - the unprocessed file still quantizes, less well; say so
        return source, [f"quant_pre_process failed ({first_line(e)}): quantized the exported file as it is"]
    return target, []


def _quantize(source: Path, dest: Path, reader: Any, per_channel: bool, act_type: str, method: str) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    try:
        with _ort_quiet():
            quantize_static(
                str(source),
                str(dest),
                reader,
                quant_format=QuantFormat.QDQ,
                per_channel=per_channel,
                activation_type=getattr(QuantType, _DTYPE_NAMES[act_type]),
                weight_type=QuantType.QInt8,
                calibrate_method=getattr(CalibrationMethod, _METHOD_NAMES[method]),
            )
    except SlimtuneError:
        raise  # a calibration batch that does not fit, from the reader
    except Exception as e:
        import onnxruntime as ort

        raise QuantExportError(
            f"export_onnx_int8: onnxruntime {ort.__version__}'s quantize_static failed on the exported model: "
            f"{first_line(e, 500)}"
        ) from e
    if reader.batches == 0:  # the reader was never read: the quantizer found nothing to calibrate
        raise QuantExportError("export_onnx_int8: onnxruntime's quantize_static read no calibration batch")


def _check(model: nn.Module, example_inputs: Any, result: ExportResult, in_names: list[str], max_rel_l2: float) -> None:
    """Run the int8 file in onnxruntime and compare it with the eager float model (fills ``result``'s check)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(result.path), options, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise SlimtuneError(
            f"export_onnx_int8: onnxruntime {ort.__version__} cannot load {result.path} ({first_line(e, 400)}); "
            "the file is kept for inspection"
        ) from e
    reference = cpu_eval_copy(model)
    args = tuple(t.detach().to("cpu") if isinstance(t, torch.Tensor) else t for t in as_args(example_inputs))
    batch = next(int(t.shape[0]) for t in tensors(args) if t.dim() > 0)
    checked = (batch, 1 if batch > 1 else 3) if result.dynamic_batch else (batch,)
    comparison, where = Comparison(rtol=1e-4, atol=1e-5), ""
    out_names = [s.name for s in result.outputs]
    feed_names = {i.name for i in session.get_inputs()}
    for size in checked:
        inputs = args if size == batch else resize_batch(args, batch, size)
        arrays = [t.numpy() for t in tensors(inputs)]
        feeds = {name: a for name, a in zip(in_names, arrays) if name in feed_names}
        actual, expected = session.run(None, feeds), eager_outputs(reference, inputs)
        if len(actual) != len(expected):
            comparison.add(actual, expected, f"batch {size}", out_names)
            continue
        for i, (a, e) in enumerate(zip(actual, expected)):
            before = comparison.rel_l2
            name = out_names[i] if i < len(out_names) else f"output {i}"
            comparison.add([a], [e], f"batch {size}", [name])
            if comparison.rel_l2 > before:
                where = f"batch {size}, {name}"
    result.max_abs_diff = comparison.max_abs_diff
    result.rel_l2 = comparison.rel_l2
    result.checked_batches = checked
    result.checked_with = f"onnxruntime {ort.__version__}"
    result.notes.append(f"relative L2 error {comparison.rel_l2:.2g} against the float model (at most {max_rel_l2:g})")
    if comparison.problems or not comparison.rel_l2 <= max_rel_l2:
        what = "; ".join(comparison.problems) or (
            f"relative L2 error {comparison.rel_l2:.3g} > max_rel_l2 {max_rel_l2:g} at {where} (max |diff| "
            f"{comparison.max_abs_diff:.3g})"
        )
        raise SlimtuneError(
            f"export_onnx_int8: {result.path} does not reproduce the float model in onnxruntime: {what}; the file "
            "is kept; calibrate on data like the model's (more batches, calibrate_method='percentile'), raise "
            "max_rel_l2, or check=False"
        )
