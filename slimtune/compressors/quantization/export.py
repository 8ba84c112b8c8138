"""Export of a model to a real int8 model (quantized kernels), for measured latency and size.

One entry point, :func:`export_int8`, three paths:

- **static, PT2E** (``mode="static"``, ``method="pt2e"`` — the default, what ``method="auto"`` runs):
  ``torch.export`` with a dynamic batch dim → torchao's ``prepare_pt2e``/``convert_pt2e`` with
  ``X86InductorQuantizer`` (conv-BN folded, conv-BN-ReLU / linear-ReLU / conv-add annotated as one op; int8
  per-channel symmetric weights, uint8 affine activations) → ``torch.compile`` with inductor freezing, which
  lowers each dq → op → q pattern to oneDNN int8 kernels; a
  :class:`~slimtune.compressors.quantization.pt2e.PT2EInt8Model`. See :mod:`.pt2e`.
- **static, torch.ao FX** (``method="fx"``, only when chosen): PyTorch's FX graph mode pipeline
  (``prepare_fx`` with ``get_default_qconfig_mapping(backend)`` → calibration → ``convert_fx``), a
  ``torch.fx.GraphModule`` whose layers run the eager ``quantized::conv2d`` / ``quantized::linear`` kernels of
  the chosen backend. ``torch.ao.quantization`` is deprecated for removal (PyTorch warns on every use), so it
  is kept as a fallback for as long as PyTorch ships it: for a model ``torch.export`` cannot capture but
  ``torch.fx`` can trace, for eager int8 kernels without compiling, and for the per-layer int8 latency table
  (:class:`~slimtune.compressors.measures.BitsLatencyTable`, which times int8 layers one by one).
- **dynamic** (``mode="dynamic"``): ``torch.ao.quantization.quantize_dynamic`` of the Linear, LSTM and GRU
  layers: int8 weights per output channel (range ±127, so 8-bit fake-quantized weights carry over exactly),
  activations quantized per batch at run time; no calibration. Conv layers stay float. (For Linear-heavy
  models, torchao's weight-only int8 / int4 is
  :func:`~slimtune.compressors.quantization.quantize_weight_only`.)

``benchmarks/quantization.py`` on the 2-core AMD EPYC (AVX-512 VNNI), 1 thread, CPU time, all variants
interleaved, latency relative to fp32 eager (lower is faster):

================ ============= =============================== =================================
model, batch     torch.ao FX   PT2E + ``torch.compile``        PT2E lowered, not compiled
================ ============= =============================== =================================
digits CNN, 1    ×0.90         ×1.44 (plain torchao: ×1.34)    fails (``view`` of channels-last)
digits CNN, 32   ×0.42         ×0.60 (plain torchao: ×0.58)    fails
ResNet-20, 1     ×0.60         ×0.68 (plain torchao: ×0.70)    ×0.84 (ad-hoc run)
ResNet-20, 32    ×0.30         ×0.29 (plain torchao: ×0.29)    ×0.29 (ad-hoc run)
================ ============= =============================== =================================

PT2E is as fast as FX on ResNet-20 and slower on the small digits CNN (whose layers are too small for the
compiled graph's overheads to pay), its program is ~5 % smaller, and it costs 3-10 s of inductor compilation
per batch size and thread count (cached on disk by inductor across processes). It is the default because
it is the supported path; FX stays one argument away (``method="fx"``) and nothing falls back to it silently:
when PT2E cannot export a model, the error says why and names ``method="fx"``. Latest numbers in
``benchmarks/results/quantization.md`` and ``benchmarks/results/deploy.md``.

The x86 int8 kernels of the FX path adapt a layer's packed weights to the first input shape they run on
(a digits CNN first run at batch 1 ran ~25 % slower at batch 32 than one first run at batch 32), so
``export_int8`` checks an FX model on a copy and returns one that has never run: run it first at the batch
size that matters (``copy.deepcopy`` gives a fresh one). A PT2E model compiles once per input shape.

A model with :class:`~slimtune.compressors.quantization.QuantWrapper` layers (from ``compress`` with a plan's
``quantize`` entries, or :func:`~slimtune.compressors.quantization.quantize_model`) is exported from its
*quantized* weights (:func:`~slimtune.compressors.quantization.unwrap`, e.g. after QAT or SLB): only the wrapped
layers become int8 (with ``mode="static"``, the wrapped Conv/Linear layers; with ``mode="dynamic"``, the
wrapped Linear/LSTM/GRU layers), and ``mode="auto"`` is ``"dynamic"`` when every wrapper uses the ``dynamic``
algorithm, else ``"static"``. Weights fake-quantized below 8 bits are stored in int8 (x86 has no int4 kernels).
On both static paths each wrapped layer's input keeps the range it was trained or calibrated with (QAT's frozen
range, PACT's learned ``[0, α]``): its observer is fixed at that range and clips there, and the calibration
batches set only the other activations' ranges.
A float model is exported whole (or the ``layers`` given), ``mode="auto"`` meaning ``"static"``.

Serialization: :func:`save_int8` / :func:`load_int8`. A PT2E model goes through ``torch.export.save`` (loaded
back as a ``PT2EInt8Model`` that compiles on first use); FX and dynamic models through TorchScript
(``torch.jit.trace`` → ``torch.jit.save``; round-trips exactly). Neither is a pickle. Pickling a whole FX
``GraphModule`` with ``torch.save(model)`` does *not* work in torch 2.13, so don't. :func:`exported_size_bytes`
counts the bytes of the serialized ``state_dict`` (packed int8 weights, scales, zero points), the same measure
for every path and for a float model.

Devices: the int8 kernels of every path are CPU kernels (oneDNN / fbgemm on x86, qnnpack on ARM), so export is
a CPU path whatever device the model trains on. Given a model on a GPU, :func:`export_int8` exports a CPU copy
(parameters and buffers copied straight to host memory, no second copy on the GPU); the model itself is neither
moved nor modified, ``example_inputs`` and every calibration batch are moved to the CPU, and the int8 model it
returns lives on the CPU: run it on CPU tensors.

The ``torch.ao.quantization`` deprecation warnings are silenced inside these functions.
"""

from __future__ import annotations

import copy
import io
import warnings
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch import nn

from slimtune.compressors.quantization.pt2e import PT2EInt8Model, export_pt2e, fixed_range_observer, pt2e_available
from slimtune.devices import model_device, move
from slimtune.errors import ArgumentError, ArgumentTypeError, QuantExportError

__all__ = [
    "AUTO_METHOD",
    "PT2EInt8Model",
    "QuantExportError",
    "export_int8",
    "exported_size_bytes",
    "load_int8",
    "pt2e_available",
    "save_int8",
]

Method = Literal["auto", "fx", "pt2e"]
Mode = Literal["auto", "static", "dynamic"]

AUTO_METHOD = "pt2e"
"""The static path ``method="auto"`` runs: torchao's PT2E (see the module docstring). ``"fx"`` runs only when
asked for."""

_STATIC_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_DYNAMIC_TYPES = (nn.Linear, nn.LSTM, nn.GRU)


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
            f"export_int8: quantized backend {backend!r} is not supported by this torch build (supported: {supported})"
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


def _cpu_copy(model: nn.Module) -> nn.Module:
    """``model`` itself when its parameters and buffers are all on the CPU (export copies it later), else a
    copy on the CPU, made without a second copy on the model's device: each parameter and buffer is copied
    straight to host memory (shared ones once). ``model`` is neither moved nor modified."""
    if all(t.device.type == "cpu" for t in [*model.parameters(), *model.buffers()]):
        return model
    return _host_copy(model)


def _host_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose parameters and buffers are fresh CPU tensors (each copied once, straight
    from wherever it lives, so tied weights stay tied and nothing is copied on the model's own device)."""
    params, buffers = list(model.parameters()), list(model.buffers())
    memo: dict[int, Any] = {}
    for p in params:
        memo[id(p)] = nn.Parameter(p.detach().to("cpu", copy=True), requires_grad=p.requires_grad)
    for b in buffers:
        memo[id(b)] = b.detach().to("cpu", copy=True)
    return copy.deepcopy(model, memo).to("cpu")


def _calibration_args(calibration: Any) -> Iterator[tuple[Any, ...]]:
    """Model arguments of each calibration batch, on the CPU (where the int8 kernels run).

    ``calibration`` is one input tensor (one batch) or an iterable of batches (a list, a DataLoader);
    a batch is an input tensor, or an ``(inputs, targets)`` / ``[inputs, targets]`` pair whose first
    element is the input tensor or a tuple of inputs.
    """
    for args in _calibration_batches(calibration):
        yield move(args, "cpu")


def _calibration_batches(calibration: Any) -> Iterator[tuple[Any, ...]]:
    if isinstance(calibration, torch.Tensor):
        yield (calibration,)
        return
    if not isinstance(calibration, Iterable):
        raise ArgumentTypeError(
            f"export_int8: calibration must be a tensor or an iterable of batches, got {type(calibration).__name__}",
            field="calibration",
        )
    for batch in calibration:
        if isinstance(batch, torch.Tensor):
            yield (batch,)
        elif isinstance(batch, (tuple, list)) and batch:
            yield _as_args(batch[0])
        elif isinstance(batch, dict) and "inputs" in batch:
            yield _as_args(batch["inputs"])
        else:
            raise ArgumentTypeError(
                "export_int8: a calibration batch must be a tensor or an (inputs, targets) pair, "
                f"got {type(batch).__name__}",
                field="calibration",
            )


def _locate_trace_failure(model: nn.Module) -> str | None:
    """Why torch.fx cannot trace ``model``, naming the module (None if it traces)."""
    from slimtune.compressors.frontends import symbolic_trace
    from slimtune.errors import TraceError

    try:
        symbolic_trace(model, handled_leaves=False)
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


def _check_layers(model: nn.Module, layers: Iterable[str], mode: str) -> list[str]:
    modules = dict(model.named_modules())
    kinds, what = (
        (_DYNAMIC_TYPES, "Linear, LSTM and GRU") if mode == "dynamic" else (_STATIC_TYPES, "Conv1d/2d/3d and Linear")
    )
    names = sorted(set(layers))
    for name in names:
        if name not in modules or name == "":
            raise QuantExportError(f"export_int8: layer {name!r} is not a submodule of the model")
        if not isinstance(modules[name], kinds):
            raise QuantExportError(
                f"export_int8: layer {name!r} is a {type(modules[name]).__name__}; only {what} layers can be "
                f"selected for {mode} int8"
            )
    return names


# --------------------------------------------------------------------------------------------------------
# export


def _export_fx(
    model: nn.Module,
    args: tuple[Any, ...],
    calibration: Any,
    backend: str,
    layers: Sequence[str] | None,
    ranges: dict[str, tuple[float, float]] | None = None,
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
    _keep_learned_ranges(prepared, ranges or {})

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
    _clip_learned_inputs(quantized, ranges or {})

    # Checked on a copy: the x86 int8 kernels adapt a layer's packed weights to the first input shape they see
    # (a digits CNN first run at batch 1 ran ~25 % slower at batch 32), so the returned model stays unrun.
    failure = _locate_run_failure(copy.deepcopy(quantized), args)
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


def _export_dynamic(model: nn.Module, args: tuple[Any, ...], layers: Sequence[str] | None) -> nn.Module:
    from torch.ao.quantization import QConfig, quantize_dynamic
    from torch.ao.quantization.observer import (
        default_dynamic_quant_observer,
        per_channel_weight_observer_range_neg_127_to_127,
    )

    # Per-output-channel int8 weights over ±127 — slimtune's 8-bit grid, so fake-quantized weights
    # carry over exactly.
    qconfig = QConfig(
        activation=default_dynamic_quant_observer, weight=per_channel_weight_observer_range_neg_127_to_127
    )
    names = (
        list(layers) if layers is not None else [n for n, m in model.named_modules() if isinstance(m, _DYNAMIC_TYPES)]
    )
    if not names:
        raise QuantExportError(
            "export_int8: mode='dynamic' quantizes Linear, LSTM and GRU layers, and the model has none "
            "(use mode='static' for convolutions)"
        )
    # quantize_dynamic swaps children only: hold the model in a parent so that the model itself can be a layer.
    holder = nn.Module()
    holder.add_module("model", model)
    try:
        spec = {f"model.{name}" if name else "model": qconfig for name in names}
        quantized = quantize_dynamic(holder, spec, dtype=torch.qint8, inplace=True).model
    except Exception as exc:  # noqa: BLE001
        raise QuantExportError(f"export_int8: quantize_dynamic failed: {type(exc).__name__}: {exc}") from exc
    try:
        with torch.no_grad():
            copy.deepcopy(quantized)(*args)  # on a copy, as for FX: the returned model stays unrun
    except Exception as exc:  # noqa: BLE001
        raise QuantExportError(
            f"export_int8: the dynamic int8 model fails on example_inputs: {type(exc).__name__}: {exc}"
        ) from exc
    return quantized


def _keep_learned_ranges(prepared: torch.fx.GraphModule, ranges: dict[str, tuple[float, float]]) -> None:
    """Replace the observer of each listed layer's input by one fixed at the layer's range (QAT's frozen
    range, PACT's ``α``), before calibration: it clips as the fake-quantized layer did, so the ranges
    calibrated after it see the values the trained model produces, and the int8 model quantizes
    that input as the fake-quantized model was trained to."""
    from torch.ao.quantization.observer import ObserverBase

    if not ranges:
        return
    modules = dict(prepared.named_modules())
    for node in prepared.graph.nodes:
        if node.op != "call_module" or node.target not in ranges or not node.args:
            continue
        source = node.args[0]
        observer = (
            modules.get(source.target) if isinstance(source, torch.fx.Node) and source.op == "call_module" else None
        )
        if not isinstance(observer, ObserverBase) or getattr(observer, "qscheme", None) != torch.per_tensor_affine:
            continue
        setattr(prepared, source.target, _fixed_range_observer(observer, *ranges[node.target]))


def _clip_learned_inputs(quantized: torch.fx.GraphModule, ranges: dict[str, tuple[float, float]]) -> None:
    """Clip each listed int8 layer's input to its range (``torch.clamp`` on the quantized tensor): the
    backend's uint8 holds values past the range's top (x86 quantizes activations to 7 bits), which the
    fake-quantized layer clipped."""
    changed = False
    for node in list(quantized.graph.nodes):
        if (
            node.op != "call_module"
            or node.target not in ranges
            or not node.args
            or not isinstance(node.args[0], torch.fx.Node)
        ):
            continue
        lo, hi = ranges[node.target]
        with quantized.graph.inserting_before(node):
            clipped = quantized.graph.call_function(torch.clamp, (node.args[0], lo, hi))
        node.args = (clipped, *node.args[1:])
        changed = True
    if changed:
        quantized.recompile()


def _fixed_range_observer(like: Any, lo: float, hi: float) -> nn.Module:
    """torch.ao's min/max observer fixed at ``[lo, hi]`` (see :func:`.pt2e.fixed_range_observer`)."""
    from torch.ao.quantization.observer import MinMaxObserver

    return fixed_range_observer(MinMaxObserver, like, lo, hi)


def _learned_ranges(model: nn.Module) -> dict[str, tuple[float, float]]:
    """``{layer: (lo, hi)}``: the input range each quantized layer of ``model`` was trained or calibrated with."""
    from slimtune.compressors.quantization.modules import QuantWrapper

    out = {}
    for name, m in model.named_modules():
        if isinstance(m, QuantWrapper):
            r = m.algorithm.export_range(m)
            if r is not None:
                out[name] = r
    return out


def _from_wrappers(model: nn.Module, mode: str) -> tuple[nn.Module, str, list[str] | None]:
    """``(float model, mode, layers)`` for a model with QuantWrappers: unwrapped, auto mode resolved, wrapped layers."""
    from slimtune.compressors.quantization.modules import QuantWrapper, unwrap

    wrappers = {n: m for n, m in model.named_modules() if isinstance(m, QuantWrapper)}
    if not wrappers:
        return model, "static" if mode == "auto" else mode, None
    if mode == "auto":
        mode = "dynamic" if all(w.algorithm.name == "dynamic" for w in wrappers.values()) else "static"
    float_model = unwrap(model)
    kinds = _DYNAMIC_TYPES if mode == "dynamic" else _STATIC_TYPES
    layers = sorted(n for n, w in wrappers.items() if isinstance(w.layer, kinds))
    if not layers:
        raise QuantExportError(
            f"export_int8: mode={mode!r} and none of the quantized layers ({', '.join(sorted(wrappers))}) has "
            f"{'Linear/LSTM/GRU' if mode == 'dynamic' else 'Conv/Linear'} int8 kernels"
        )
    every = sorted(n for n, m in float_model.named_modules() if isinstance(m, kinds))
    return float_model, mode, (None if layers == every else layers)


def export_int8(
    model: nn.Module,
    example_inputs: Any,
    calibration: Any = None,
    backend: str = "x86",
    method: Method = "auto",
    layers: Iterable[str] | None = None,
    mode: Mode = "auto",
) -> nn.Module:
    """A real int8 copy of a model (post-training quantization to int8 kernels), static or dynamic.

    The model is deep-copied and put in eval mode (the original is untouched). Static mode fuses
    conv-BN(-ReLU) and linear(-ReLU), calibrates activation ranges on ``calibration`` and runs int8
    kernels (``quantized::conv2d``/``quantized::linear`` for FX, oneDNN ``qconv``/``qlinear`` for PT2E);
    dynamic mode quantizes the weights of Linear/LSTM/GRU layers and each batch's activations at run
    time. Inputs and outputs stay float. See the module docstring for the paths and the measured choice.

    The int8 kernels are CPU-only (fbgemm / oneDNN, qnnpack), so this is a CPU path: a model on a GPU
    is exported from a CPU copy (made without a second GPU copy; the model is neither moved nor modified),
    ``example_inputs`` and each calibration batch are moved to the CPU, and the result is on the CPU.

    Args:
        model: A float model, or a fake-quantized one (with ``QuantWrapper`` layers: exported from its
            quantized weights, only its wrapped layers become int8). Static FX needs a ``torch.fx``-traceable
            model (PT2E: ``torch.export``-able); channel-pruned, physically smaller models are fine.
        example_inputs: One input tensor, or a tuple of inputs, of any batch size, on any device (moved to
            the CPU).
        calibration: For static mode: one input tensor, or an iterable of batches (tensors or
            ``(inputs, targets)`` pairs, e.g. a DataLoader or a list of tuples), on any device (each batch is
            moved to the CPU as it is used); a few hundred samples are usually enough. Not needed (ignored)
            for dynamic mode.
        backend: Quantized engine for FX and dynamic (``"x86"`` default; ``"fbgemm"``, ``"onednn"``,
            ``"qnnpack"``). The engine is set while exporting; run the model under the same
            ``torch.backends.quantized.engine`` (``x86`` is the default on x86 builds).
        method: Static path: ``"auto"`` or ``"pt2e"`` (:data:`AUTO_METHOD`: torchao PT2E +
            ``torch.compile``), or ``"fx"`` (the deprecated torch.ao FX pipeline, eager int8 kernels).
        layers: Names of the layers to quantize (others stay float); ``None`` = every eligible layer (or,
            for a fake-quantized model, its wrapped layers). Static: Conv/Linear; dynamic: Linear/LSTM/GRU.
        mode: ``"static"``, ``"dynamic"`` or ``"auto"`` (``"dynamic"`` for a model whose quantized layers
            all use the ``dynamic`` algorithm, else ``"static"``).

    Returns:
        The int8 model in eval mode, on the CPU (give it CPU inputs): a
        :class:`~slimtune.compressors.quantization.pt2e.PT2EInt8Model` (PT2E), a ``torch.fx.GraphModule`` (FX) or
        the model with
        ``torch.ao.nn.quantized.dynamic`` layers (dynamic). Save it with :func:`save_int8`, load it with
        :func:`load_int8`; ``torch.save(model)`` does not work for FX models.

    Raises:
        QuantExportError: naming the layer or the reason (unknown / ineligible layer name, a model
            ``torch.export`` (PT2E) or ``torch.fx`` (FX) cannot capture, missing, empty or failing calibration,
            an op the backend cannot run in int8, PT2E without torchao, dynamic mode without Linear/LSTM/GRU
            layers).
        ValueError: ``method`` or ``mode`` not one of the names above.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU()).eval()
        >>> x = torch.randn(4, 3, 16, 16)
        >>> q = export_int8(m, x, [x])
        >>> exported_size_bytes(q) < exported_size_bytes(m)
        True
        >>> rnn = nn.LSTM(16, 32, batch_first=True)
        >>> exported_size_bytes(export_int8(rnn, torch.randn(2, 5, 16), mode="dynamic")) < exported_size_bytes(rnn)
        True
    """
    if method not in ("auto", "fx", "pt2e"):
        raise ArgumentError(f"export_int8: method must be 'auto', 'fx' or 'pt2e', got {method!r}", field="method")
    if mode not in ("auto", "static", "dynamic"):
        raise ArgumentError(f"export_int8: mode must be 'auto', 'static' or 'dynamic', got {mode!r}", field="mode")
    if not isinstance(model, nn.Module):
        raise ArgumentTypeError(
            f"export_int8: model must be a torch.nn.Module, got {type(model).__name__}", field="model"
        )
    model = _cpu_copy(model)
    args = move(_as_args(example_inputs), "cpu")
    ranges = _learned_ranges(model)
    float_model, mode, wrapped = _from_wrappers(model, mode)
    if isinstance(calibration, (list, tuple)) and not calibration and mode == "static":
        raise QuantExportError("export_int8: calibration is empty; static quantization needs at least one batch")
    chosen = None if layers is None else _check_layers(float_model, layers, mode)
    if chosen is None:
        chosen = wrapped
    if chosen is not None and not chosen:
        raise QuantExportError("export_int8: `layers` is empty; nothing to quantize")
    float_model = copy.deepcopy(float_model).eval()

    with _quiet(), _engine(backend):
        if mode == "dynamic":
            if method == "pt2e":
                raise QuantExportError(
                    "export_int8: mode='dynamic' uses torch.ao.quantization.quantize_dynamic; method='pt2e' is "
                    "for static quantization (use method='auto' or 'fx')"
                )
            return _export_dynamic(float_model, args, chosen).eval()
        if calibration is None:
            raise QuantExportError(
                "export_int8: static quantization needs calibration batches (calibration=...); "
                "or use mode='dynamic' for weight-only int8 of Linear/LSTM/GRU layers"
            )
        return _export_static(
            AUTO_METHOD if method == "auto" else method, float_model, args, calibration, backend, chosen, ranges
        )


def _export_static(
    method: str,
    model: nn.Module,
    args: tuple[Any, ...],
    calibration: Any,
    backend: str,
    layers: Sequence[str] | None,
    ranges: dict[str, tuple[float, float]] | None = None,
) -> nn.Module:
    if method == "pt2e":
        try:
            return export_pt2e(model, args, _calibration_args(calibration), layers, ranges).eval()
        except QuantExportError as e:
            raise QuantExportError(f"{e} (the deprecated torch.ao FX path may export it: method='fx')") from e
    return _export_fx(model, args, calibration, backend, layers, ranges).eval()


def exported_size_bytes(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())`` in memory (packed int8 weights count 1 byte each)."""
    buffer = io.BytesIO()
    with _quiet():
        torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def save_int8(model: nn.Module, f: Any, example_inputs: Any) -> None:
    """Save an exported int8 model; :func:`load_int8` reads it back.

    FX and dynamic models (and float ones): TorchScript (``torch.jit.trace`` at ``example_inputs`` →
    ``torch.jit.save``); traced models keep working at other batch sizes. A
    :class:`~slimtune.compressors.quantization.pt2e.PT2EInt8Model`: ``torch.export.save`` of its int8
    program with a dynamic batch dimension (``example_inputs`` unused). ``f`` is a path or a binary file object.
    ``example_inputs`` are moved to the model's device (the CPU for an int8 model).
    """
    with _quiet(), torch.no_grad():
        if isinstance(model, PT2EInt8Model):
            model.save(f)
            return
        example_inputs = move(_as_args(example_inputs), model_device(model))
        # The tracer warns about the shape checks of LSTM/GRU (constant for a given model): expected, harmless.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        scripted = torch.jit.trace(model.eval(), _as_args(example_inputs), check_trace=False)
        torch.jit.save(scripted, f)


def _is_exported_program(f: Any) -> bool:
    """Whether ``f`` holds a ``torch.export.save`` archive (rather than TorchScript); rewinds a file object."""
    start = f.tell() if hasattr(f, "tell") else None
    try:
        with zipfile.ZipFile(f) as archive:
            return any(name.endswith("models/model.json") for name in archive.namelist())
    except zipfile.BadZipFile:
        return False
    finally:
        if start is not None:
            f.seek(start)


def load_int8(f: Any) -> nn.Module:
    """Load a model written by :func:`save_int8` (CPU).

    Returns a ``torch.jit.ScriptModule`` for TorchScript files (FX, dynamic), a
    :class:`~slimtune.compressors.quantization.pt2e.PT2EInt8Model` for PT2E files (compiled on first use).
    """
    with _quiet():
        if _is_exported_program(f):
            return PT2EInt8Model.load(f).eval()
        return torch.jit.load(f, map_location="cpu").eval()
