"""The PT2E int8 path: ``torch.export`` → torchao ``prepare_pt2e``/``convert_pt2e`` (``X86InductorQuantizer``)
→ ``torch.compile`` (inductor, freezing).

The default static int8 path of :func:`~slimtune.compressors.quantization.export_int8` (``method="auto"`` or
``"pt2e"``). Needs ``torchao`` (a dependency of slimtune; torchao 0.18 installs beside torch 2.13 without
touching it).

Steps:

1. ``torch.export.export`` with a dynamic batch dimension (every tensor input's dim 0 is one symbol);
2. ``prepare_pt2e`` with ``X86InductorQuantizer`` and its default static config (int8 per-channel symmetric
   weights, uint8 affine activations; conv-BN is folded and conv-BN-ReLU / linear-ReLU / conv-add patterns
   are annotated as one quantized op), calibration, ``convert_pt2e``: a graph of quantize / dequantize ops
   around float ops whose weights are stored as int8 constants (the *program*, what is saved);
3. ``torch.compile`` of the program with inductor's ``freezing`` on, which fuses each dq → op → q pattern into
   oneDNN int8 kernels (``qconv2d_pointwise``, ``qlinear_pointwise``).

These are CPU kernels: the model, its inputs and the calibration batches are on the CPU (``export_int8`` copies a
GPU model to the CPU first), and so is the result.

The compiled code is static in the input shape (``dynamic=False``): the first call at each new batch size
compiles (seconds; cached on disk by inductor across processes), later calls run the int8 kernels. A
symbolic batch size was tried and rejected: inductor's int8 conv lowering fails on the digits CNN with a
symbolic batch (a stride assertion), and it specialises batch 1, 2-15 and ≥ 16 into separate compiles anyway.
Inductor also specialises kernels on ``torch.get_num_threads()`` at compile time: set the thread count
before the first call (or call ``torch._dynamo.reset()`` after changing it). Lowering without compiling
(inductor's freezing passes on the exported graph) was measured too, in an ad-hoc interleaved run: slower
than compiling (ResNet-20, 1 thread: ×0.84 vs ×0.71 of fp32 at batch 1, ×0.29 vs ×0.27 at batch 32) and it
fails on the digits CNN (``view`` of a channels-last tensor), so the compiled program is the runtime.

Serialization: :func:`save_int8` writes the program with ``torch.export.save`` (int8 weights, dynamic batch);
:func:`load_int8` reads it back into a :class:`PT2EInt8Model`, which compiles again on first use.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from slimtune.errors import QuantExportError

__all__ = ["PT2EInt8Model", "export_pt2e", "fixed_range_observer", "pt2e_available"]


def pt2e_available() -> bool:
    """Whether torchao's PT2E quantization (``prepare_pt2e`` + ``X86InductorQuantizer``) can be imported."""
    # torchao logs a warning for each CUDA-only extension it cannot load on a CPU build, and torch one about an
    # Enum it registers: harmless here, so they are silenced while importing.
    loggers = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e  # noqa: F401
        from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import X86InductorQuantizer  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        return False
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
    return True


def _dynamic_shapes(args: tuple[Any, ...]) -> tuple[Any, ...]:
    batch = torch.export.Dim("batch", min=1)
    return tuple({0: batch} if isinstance(a, torch.Tensor) and a.dim() > 0 else None for a in args)


def _batch_of_two(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """The example inputs with a batch of 2 (export traces a symbolic batch; a batch of 1 would specialise)."""
    return tuple(
        torch.cat([a[:1], a[:1]]) if isinstance(a, torch.Tensor) and a.dim() > 0 and a.shape[0] < 2 else a for a in args
    )


def _drop_unused_attributes(gm: torch.fx.GraphModule) -> None:
    """Delete the parameters and buffers the graph no longer reads (the float weights ``convert_pt2e`` replaced)."""
    gm.graph.eliminate_dead_code()
    used = {str(n.target) for n in gm.graph.nodes if n.op == "get_attr"}
    names = [n for n, _ in gm.named_parameters()] + [n for n, _ in gm.named_buffers()]
    for name in names:
        if name not in used:
            owner, _, leaf = name.rpartition(".")
            delattr(gm.get_submodule(owner) if owner else gm, leaf)
    gm.recompile()


def _layer_of(node: torch.fx.Node) -> str | None:
    """The module path (``features.0``) of the innermost module a node of an exported graph was traced in."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return None
    path = list(stack.values())[-1][0]
    return str(path).removeprefix("L['self'].") if isinstance(path, str) else None


def fixed_range_observer(base: type, like: Any, lo: float, hi: float) -> nn.Module:
    """A min/max observer (a subclass of ``base``: torch.ao's or torchao's ``MinMaxObserver``) with ``like``'s
    dtype and quantization range, fixed at ``[lo, hi]``, that clips its input there."""

    class FixedRangeObserver(base):  # type: ignore[misc,valid-type]
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.clamp(x, float(self.min_val), float(self.max_val))

    fixed = FixedRangeObserver(
        dtype=like.dtype,
        qscheme=like.qscheme,
        reduce_range=like.reduce_range,
        quant_min=like.quant_min,
        quant_max=like.quant_max,
    )
    base.forward(fixed, torch.tensor([lo, hi], device="cpu"))
    return fixed


def _keep_learned_ranges(prepared: torch.fx.GraphModule, ranges: Mapping[str, tuple[float, float]]) -> None:
    """Fix the observer of each listed layer's input at the layer's range, before calibration.

    In the prepared graph each quantized input is an observer module called between the producer and the
    conv / linear. The observer that feeds a listed layer's op is replaced by a min/max observer fixed at the
    range that clips its input there: the calibration of every range after it sees the values the trained model
    produces, and ``convert_pt2e`` quantizes that input over the trained range. An observer feeding several
    layers with different ranges keeps its calibrated range (one input cannot have two grids).
    """
    if not ranges:
        return
    from torchao.quantization.pt2e.observer import MinMaxObserver, ObserverBase

    modules = dict(prepared.named_modules())
    for node in prepared.graph.nodes:
        observer = modules.get(str(node.target)) if node.op == "call_module" else None
        if not isinstance(observer, ObserverBase) or getattr(observer, "qscheme", None) != torch.per_tensor_affine:
            continue
        chosen = {ranges[layer] for user in node.users if (layer := _layer_of(user)) in ranges}
        if len(chosen) != 1:
            continue
        fixed = fixed_range_observer(MinMaxObserver, observer, *chosen.pop())
        setattr(prepared, str(node.target), fixed)


class PT2EInt8Model(nn.Module):
    """An int8 model from the PT2E path: the converted program, run through ``torch.compile``.

    ``program`` (a registered submodule) holds the int8 weights, scales and zero points: its
    ``state_dict`` is what :func:`~slimtune.compressors.quantization.exported_size_bytes` counts. Calls run
    under ``torch.no_grad()`` (inference only) with inductor's ``freezing`` on, compiling once per input
    shape. ``train()`` / ``eval()`` only set the flag (an exported program has no training mode).
    It lives on the CPU (oneDNN's int8 kernels are CPU kernels): call it with CPU tensors.

    Args:
        program: The ``convert_pt2e`` output (a ``torch.fx.GraphModule`` from ``torch.export``).
        example_inputs: Inputs it was exported with (kept to re-export it when saving).
    """

    def __init__(self, program: torch.fx.GraphModule, example_inputs: tuple[Any, ...]) -> None:
        super().__init__()
        self.program = program
        # Not registered as submodules / buffers: they are not part of the model's state.
        object.__setattr__(self, "_example_inputs", tuple(example_inputs))
        object.__setattr__(self, "_compiled", None)

    def train(self, mode: bool = True) -> PT2EInt8Model:
        self.training = mode
        return self

    def forward(self, *args: Any) -> Any:
        import torch._inductor.config as inductor_config

        compiled = self._compiled
        if compiled is None:
            compiled = torch.compile(self.program, dynamic=False)
            object.__setattr__(self, "_compiled", compiled)
        # Freezing must be on while dynamo traces (it is read then, not only by inductor), i.e. at every call
        # that may compile; a plain attribute swap costs ~5 µs.
        old = inductor_config.freezing
        inductor_config.freezing = True
        try:
            with torch.no_grad():
                return compiled(*args)
        finally:
            inductor_config.freezing = old

    def save(self, f: Any) -> None:
        """Write the program with ``torch.export.save`` (dynamic batch); :meth:`load` reads it back."""
        args = _batch_of_two(self._example_inputs)
        exported = torch.export.export(self.program, args, dynamic_shapes=_dynamic_shapes(args))
        torch.export.save(exported, f)

    @classmethod
    def load(cls, f: Any) -> PT2EInt8Model:
        """Read a file written by :meth:`save`."""
        exported = torch.export.load(f)
        example = exported.example_inputs[0] if exported.example_inputs else ()
        return cls(exported.module(), tuple(example))


def export_pt2e(
    model: nn.Module,
    args: tuple[Any, ...],
    calibration: Iterator[tuple[Any, ...]],
    layers: Sequence[str] | None = None,
    ranges: Mapping[str, tuple[float, float]] | None = None,
) -> PT2EInt8Model:
    """Static int8 quantization of a float model through PT2E; see the module docstring.

    ``calibration`` yields the model arguments of each batch. The result is compiled and run once on
    ``args`` before it is returned, so a model inductor cannot compile fails here, not at its first use.
    A CPU path: ``model``, ``args`` and the batches are expected on the CPU (``export_int8`` moves them there).

    ``layers`` (module names) limits quantization to those layers (``X86InductorQuantizer``'s per-module-name
    config; every other op stays float, with quantize / dequantize at the borders); ``None`` quantizes the whole
    model. ``ranges`` maps a layer to the input range it was trained or calibrated with (QAT's frozen range,
    PACT's ``[0, α]``): that input's observer is fixed at the range and clips there, so the calibration of the
    ranges after it sees what the fake-quantized model produced (see :func:`_keep_learned_ranges`).

    Raises:
        QuantExportError: torchao missing, ``torch.export`` failing (naming its reason), empty or failing
            calibration, a compile / run failure.
    """
    if not pt2e_available():
        raise QuantExportError(
            "export_int8: method='pt2e' needs torchao (prepare_pt2e/convert_pt2e, X86InductorQuantizer), which is "
            f"not installed beside torch {torch.__version__}; pip install torchao (a slimtune dependency) "
            "or use method='fx'"
        )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

    model = copy.deepcopy(model).eval()
    ex = _batch_of_two(args)
    try:
        exported = torch.export.export(model, ex, dynamic_shapes=_dynamic_shapes(ex)).module()
    except Exception as exc:  # noqa: BLE001 - reported with its reason
        reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        raise QuantExportError(
            f"export_int8 (pt2e): torch.export with a dynamic batch dimension failed: {type(exc).__name__}: {reason}"
        ) from exc
    config = xiq.get_default_x86_inductor_quantization_config()
    quantizer = xiq.X86InductorQuantizer()
    if layers is None:
        quantizer.set_global(config)
    else:
        for name in layers:
            quantizer.set_module_name_qconfig(name, config)
    prepared = prepare_pt2e(exported, quantizer)
    _keep_learned_ranges(prepared, ranges or {})
    n = 0
    with torch.no_grad():
        for cargs in calibration:
            try:
                prepared(*cargs)
            except Exception as exc:  # noqa: BLE001
                raise QuantExportError(
                    f"export_int8 (pt2e): calibration batch {n} failed in the prepared model: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            n += 1
    if n == 0:
        raise QuantExportError("export_int8: calibration is empty; static quantization needs at least one batch")
    program = convert_pt2e(prepared)
    _drop_unused_attributes(program)
    result = PT2EInt8Model(program, args)
    try:
        result(*args)
    except Exception as exc:  # noqa: BLE001
        reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        raise QuantExportError(
            f"export_int8 (pt2e): the int8 program failed to compile or run: {type(exc).__name__}: {reason}"
        ) from exc
    return result
