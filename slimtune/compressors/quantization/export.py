"""Export of a float model to a real int8 model (quantized kernels), for measured latency and size.

:func:`export_int8` runs static post-training quantization with PyTorch's own ``torch.ao`` FX graph
mode pipeline (``prepare_fx`` with ``get_default_qconfig_mapping(backend)`` → calibration →
``convert_fx``): conv-BN(-ReLU) and linear-ReLU are fused, weights are int8 per-channel symmetric,
activations uint8 affine (histogram observer), and the result is a ``torch.fx.GraphModule`` whose
layers run the ``quantized::conv2d`` / ``quantized::linear`` kernels of the chosen backend (``x86``:
fbgemm/oneDNN). It works on physically smaller (channel-pruned) models like on any other float model.

Serialization: through TorchScript — :func:`save_int8` (``torch.jit.trace`` → ``torch.jit.save``) and
:func:`load_int8` (``torch.jit.load``), which round-trips exactly; ``torch.jit.script`` works too. The
weights alone round-trip with ``torch.save(model.state_dict(), f)`` → ``load_state_dict`` into a fresh
export of the same float model. Pickling the whole ``GraphModule`` with ``torch.save(model)`` does *not*
work in torch 2.13 (saving or unpickling the quantized fused modules fails), so don't.
:func:`exported_size_bytes` counts the bytes of the serialized ``state_dict`` (packed int8
weights, scales, zero points), the same measure for a float and an int8 model.

PT2E (``torch.export`` → ``prepare_pt2e``/``convert_pt2e`` with ``X86InductorQuantizer``) is not part
of torch 2.13 itself (it moved to the separate ``torchao`` package, which is not a dependency);
``method="pt2e"`` is accepted only when ``torchao`` is importable and raises a clear error otherwise,
and ``method="auto"`` uses FX.

The ``torch.ao.quantization`` deprecation warnings are silenced inside these functions.
"""

from __future__ import annotations

import copy
import io
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch import nn

from slimtune.compressors.quantization._errors import QuantizationError

__all__ = ["QuantExportError", "export_int8", "exported_size_bytes", "load_int8", "pt2e_available", "save_int8"]

Method = Literal["auto", "fx", "pt2e"]


class QuantExportError(QuantizationError, RuntimeError):
    """A model could not be exported to int8 (names the layer or the reason); a :class:`QuantizationError`."""


# --------------------------------------------------------------------------------------------------------
# helpers


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence the torch.ao deprecation / user warnings raised by the FX quantization pipeline."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.ao\..*")
        warnings.filterwarnings("ignore", message=r".*torch\.ao\.quantization.*")
        yield


@contextmanager
def _engine(backend: str) -> Iterator[None]:
    supported = list(torch.backends.quantized.supported_engines)
    if backend not in supported:
        raise QuantExportError(
            f"export_int8: quantized backend {backend!r} is not supported by this torch build "
            f"(supported: {supported})"
        )
    old = torch.backends.quantized.engine
    torch.backends.quantized.engine = backend
    try:
        yield
    finally:
        torch.backends.quantized.engine = old


def _as_args(inputs: Any) -> tuple[Any, ...]:
    if isinstance(inputs, tuple):
        return inputs
    if isinstance(inputs, list):
        return tuple(inputs)
    return (inputs,)


def _calibration_args(calibration: Any) -> Iterator[tuple[Any, ...]]:
    """Model arguments of each calibration batch.

    ``calibration`` is one input tensor (one batch) or an iterable of batches (a list, a DataLoader);
    a batch is an input tensor, or an ``(inputs, targets)`` / ``[inputs, targets]`` pair whose first
    element is the input tensor or a tuple of inputs.
    """
    if isinstance(calibration, torch.Tensor):
        yield (calibration,)
        return
    if not isinstance(calibration, Iterable):
        raise TypeError(
            f"export_int8: calibration must be a tensor or an iterable of batches, got {type(calibration).__name__}"
        )
    for batch in calibration:
        if isinstance(batch, torch.Tensor):
            yield (batch,)
        elif isinstance(batch, (tuple, list)) and batch:
            yield _as_args(batch[0])
        elif isinstance(batch, dict) and "inputs" in batch:
            yield _as_args(batch["inputs"])
        else:
            raise TypeError(
                "export_int8: a calibration batch must be a tensor or an (inputs, targets) pair, "
                f"got {type(batch).__name__}"
            )


def _locate_trace_failure(model: nn.Module) -> str | None:
    """Why torch.fx cannot trace ``model``, naming the module (None if it traces)."""
    from slimtune.compressors.graph import _symbolic_trace
    from slimtune.errors import TraceError

    try:
        _symbolic_trace(model)
    except TraceError as e:
        return str(e)
    return None


def _locate_run_failure(gm: torch.fx.GraphModule, args: tuple[Any, ...]) -> tuple[str, BaseException] | None:
    """Run the exported graph node by node; the first node that fails and its exception."""

    class _Interp(torch.fx.Interpreter):
        def run_node(self, n: torch.fx.Node) -> Any:
            try:
                return super().run_node(n)
            except Exception as exc:
                where = f"module {n.target!r}" if n.op == "call_module" else f"op {n.name!r} ({n.target})"
                raise _NodeFailure(where, exc) from exc

    try:
        with torch.no_grad():
            _Interp(gm).run(*args)
    except _NodeFailure as f:
        return f.where, f.exc
    except Exception as exc:  # noqa: BLE001
        return "<graph>", exc
    return None


class _NodeFailure(Exception):
    def __init__(self, where: str, exc: BaseException) -> None:
        super().__init__(where)
        self.where, self.exc = where, exc


def _check_layers(model: nn.Module, layers: Iterable[str]) -> list[str]:
    modules = dict(model.named_modules())
    names = sorted(set(layers))
    for name in names:
        if name not in modules or name == "":
            raise QuantExportError(f"export_int8: layer {name!r} is not a submodule of the model")
        if not isinstance(modules[name], (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            raise QuantExportError(
                f"export_int8: layer {name!r} is a {type(modules[name]).__name__}; only Conv1d/2d/3d and "
                "Linear layers can be selected for int8"
            )
    return names


def pt2e_available() -> bool:
    """Whether a PT2E quantization path (``prepare_pt2e`` + ``X86InductorQuantizer``) can be imported.

    Not in torch 2.13 itself (``torch.ao.quantization.quantize_pt2e`` is gone); only with ``torchao``.
    """
    try:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e  # noqa: F401
        from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import X86InductorQuantizer  # noqa: F401
    except Exception:  # noqa: BLE001
        return False
    return True


# --------------------------------------------------------------------------------------------------------
# export


def _export_fx(
    model: nn.Module, args: tuple[Any, ...], calibration: Any, backend: str, layers: Sequence[str] | None
) -> torch.fx.GraphModule:
    from torch.ao.quantization import QConfigMapping, get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    default = get_default_qconfig_mapping(backend)
    if layers is None:
        mapping = default
    else:
        # Only the chosen layers (and the conv-BN-ReLU patterns fused into them) get a qconfig; every other
        # op stays float, with quantize/dequantize at the borders.
        qconfig = default.global_qconfig
        mapping = QConfigMapping().set_global(None)
        for name in layers:
            mapping.set_module_name(name, qconfig)

    try:
        prepared = prepare_fx(model, mapping, example_inputs=args)
    except Exception as exc:  # noqa: BLE001
        where = _locate_trace_failure(model)
        if where is not None:
            raise QuantExportError(
                f"export_int8: {where}; make that module traceable (no data-dependent control flow) "
                "or leave it out of `layers`"
            ) from exc
        raise QuantExportError(f"export_int8: prepare_fx failed: {type(exc).__name__}: {exc}") from exc

    n = 0
    with torch.no_grad():
        for cargs in _calibration_args(calibration):
            try:
                prepared(*cargs)
            except Exception as exc:  # noqa: BLE001
                raise QuantExportError(
                    f"export_int8: calibration batch {n} failed in the prepared model: {type(exc).__name__}: {exc}"
                ) from exc
            n += 1
    if n == 0:
        raise QuantExportError("export_int8: calibration is empty; static quantization needs at least one batch")

    try:
        quantized = convert_fx(prepared)
    except Exception as exc:  # noqa: BLE001
        raise QuantExportError(f"export_int8: convert_fx failed: {type(exc).__name__}: {exc}") from exc

    failure = _locate_run_failure(quantized, args)
    if failure is not None:
        where, exc = failure
        raise QuantExportError(
            f"export_int8: the int8 model fails at {where}: {type(exc).__name__}: {exc} "
            "(an op without a quantized kernel on this backend? leave that layer out of `layers`)"
        ) from exc
    # Drop the placeholder/output type annotations (``_torch_Tensor_``), which torch.jit.script cannot resolve.
    for node in quantized.graph.nodes:
        node.type = None
    quantized.recompile()
    return quantized


def _export_pt2e(model: nn.Module, args: tuple[Any, ...], calibration: Any) -> nn.Module:
    if not pt2e_available():
        raise QuantExportError(
            "export_int8: method='pt2e' needs prepare_pt2e/convert_pt2e and X86InductorQuantizer, which are not in "
            f"torch {torch.__version__} itself (they live in the `torchao` package, not installed); use method='fx'"
        )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

    batch = torch.export.Dim("batch", min=1, max=4096)
    dynamic = tuple({0: batch} if isinstance(a, torch.Tensor) else None for a in args)
    try:
        exported = torch.export.export(model, args, dynamic_shapes=dynamic).module()
    except Exception as exc:  # noqa: BLE001
        raise QuantExportError(f"export_int8: torch.export failed: {type(exc).__name__}: {exc}") from exc
    quantizer = xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(exported, quantizer)
    with torch.no_grad():
        for cargs in _calibration_args(calibration):
            prepared(*cargs)
    return convert_pt2e(prepared)


def _quick_latency(model: nn.Module, args: tuple[Any, ...], repeats: int = 20) -> float:
    with torch.no_grad():
        for _ in range(3):
            model(*args)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            model(*args)
            times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2]


def export_int8(
    model: nn.Module,
    example_inputs: Any,
    calibration: Any,
    backend: str = "x86",
    method: Method = "auto",
    layers: Iterable[str] | None = None,
) -> nn.Module:
    """A real int8 copy of a float model (static post-training quantization, quantized kernels).

    The model is deep-copied and put in eval mode (the original is untouched); conv-BN(-ReLU) and
    linear(-ReLU) are fused; observers are calibrated on ``calibration``; the result runs int8 kernels
    (``quantized::conv2d``, ``quantized::linear``) of ``backend``. Inputs and outputs stay float.

    Args:
        model: A float model, torch.fx-traceable (channel-pruned, physically smaller models are fine).
        example_inputs: One input tensor, or a tuple of inputs, of any batch size.
        calibration: One input tensor, or an iterable of batches (tensors or ``(inputs, targets)``
            pairs, e.g. a DataLoader); a few hundred samples are usually enough.
        backend: Quantized engine (``"x86"`` default; ``"fbgemm"``, ``"onednn"``, ``"qnnpack"``). The engine
            is set while exporting; run the model under the same ``torch.backends.quantized.engine``
            (``x86`` is the default on x86 builds).
        method: ``"fx"`` (torch.ao FX graph mode), ``"pt2e"`` (only with ``torchao`` installed — not in
            torch 2.13 itself) or ``"auto"`` (FX; or, when PT2E is available, whichever of the two is faster
            on a quick timing at ``example_inputs``).
        layers: Names of the Conv/Linear layers to quantize (others stay float); ``None`` = every layer.

    Returns:
        The int8 model (a ``torch.fx.GraphModule`` for FX), in eval mode. Save it with :func:`save_int8`
        (TorchScript) and load it with :func:`load_int8`; ``torch.save(model)`` does not work for it.

    Raises:
        QuantExportError: naming the layer or the reason (unknown / non-quantizable layer name, a module
            torch.fx cannot trace, an empty or failing calibration, an op the backend cannot run in int8).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU()).eval()
        >>> x = torch.randn(4, 3, 16, 16)
        >>> q = export_int8(m, x, [x])
        >>> exported_size_bytes(q) < exported_size_bytes(m)
        True
    """
    if method not in ("auto", "fx", "pt2e"):
        raise ValueError(f"export_int8: method must be 'auto', 'fx' or 'pt2e', got {method!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"export_int8: model must be a torch.nn.Module, got {type(model).__name__}")
    args = _as_args(example_inputs)
    chosen = None if layers is None else _check_layers(model, layers)
    if chosen is not None and method == "pt2e":
        raise QuantExportError("export_int8: `layers` (partial quantization) is only supported with method='fx'")
    if chosen is not None and not chosen:
        raise QuantExportError("export_int8: `layers` is empty; nothing to quantize")

    float_model = copy.deepcopy(model).eval()
    if isinstance(calibration, Iterator) and method == "auto" and pt2e_available():
        calibration = list(calibration)  # consumed twice when both paths are tried
    with _quiet(), _engine(backend):
        if method == "fx" or (method == "auto" and (chosen is not None or not pt2e_available())):
            result: nn.Module = _export_fx(float_model, args, calibration, backend, chosen)
        elif method == "pt2e":
            result = _export_pt2e(float_model, args, calibration)
        else:
            fx_model = _export_fx(float_model, args, calibration, backend, chosen)
            try:
                pt2e_model = _export_pt2e(copy.deepcopy(model).eval(), args, calibration)
            except QuantExportError:
                result = fx_model
            else:
                faster_pt2e = _quick_latency(pt2e_model, args) < _quick_latency(fx_model, args)
                result = pt2e_model if faster_pt2e else fx_model
    return result.eval()


def exported_size_bytes(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())`` in memory (packed int8 weights count 1 byte each)."""
    buffer = io.BytesIO()
    with _quiet():
        torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def save_int8(model: nn.Module, f: Any, example_inputs: Any) -> None:
    """Save an exported int8 model as TorchScript (``torch.jit.trace`` at ``example_inputs`` → ``torch.jit.save``).

    ``f`` is a path or a binary file object. Traced models keep working at other batch sizes.
    """
    with _quiet(), torch.no_grad():
        scripted = torch.jit.trace(model.eval(), _as_args(example_inputs), check_trace=False)
        torch.jit.save(scripted, f)


def load_int8(f: Any) -> torch.jit.ScriptModule:
    """Load a model written by :func:`save_int8` (``torch.jit.load``, CPU)."""
    with _quiet():
        return torch.jit.load(f, map_location="cpu").eval()
