"""Fake-quantized layers in QDQ form: int8 weights and quantize → dequantize pairs (ONNX QuantizeLinear /
DequantizeLinear; ``quantized_decomposed`` ops in a ``.pt2`` program).

A model from ``compress`` with a plan's ``quantize`` entries holds
:class:`~slimtune.compressors.quantization.QuantWrapper` layers, which quantize → dequantize in floating
point. For export each wrapper becomes a :class:`QDQLayer` that computes the same thing in the form ONNX
runtimes and PT2E-based lowerings (ExecuTorch, inductor) read:

- **weights**: the int8 values and the per-output-channel scale the wrapper computes with, stored as int8
  (a quarter of the float file) behind a ``DequantizeLinear`` node. Weights that are not ``int8 × a
  per-channel scale`` (8-bit DoReFa's ±255 levels, grids that no weight of a channel reaches the end of) are stored
  as their quantized float values, and a note says so;
- **inputs**: clipped to the representable range, then ``QuantizeLinear`` → ``DequantizeLinear`` with the
  frozen scale and zero point: uint8 for affine ranges (``ste``, ``ptq``, ``slb``, ``dorefa`` and ``bnn`` with
  2-8 bits), uint8 over ``[0, α]`` or int8 over ``[-α, α]`` for PACT. Fewer than 8 bits stay on their grid
  (the clip keeps the values in ``0 … 2^bits - 1``) and run as 8-bit codes.
- inputs quantized otherwise (``bnn``'s 1-bit ``sign(x)``) keep the wrapper's own floating-point ops, as
  do recurrent layers (weights written into the float LSTM/GRU, like
  :func:`~slimtune.compressors.quantization.unwrap`).

onnxruntime runs the result with the weights dequantized and the inputs rounded as the wrapper rounds them;
its outputs match the fake-quantized model's up to rounding at quantization boundaries (see
:data:`~slimtune.compressors.deploy.program.QUANT_REL_L2`). The ops come from
``torch.ao.quantization.fx._decomposed`` (the ``quantized_decomposed`` namespace the ONNX exporter translates).

Example:
    >>> import torch
    >>> from slimtune.compressors.quantization import calibrate, freeze, quantize_model
    >>> q = freeze(calibrate(quantize_model(torch.nn.Sequential(torch.nn.Linear(4, 3)), {"0": (4, 8)}),
    ...                      [torch.randn(16, 4)]))
    >>> form, notes, quantized_inputs = qdq_form(q.eval())
    >>> type(form[0]).__name__, form[0].weight_int8.dtype, quantized_inputs
    ('QDQLayer', torch.int8, True)
    >>> x = torch.randn(5, 4)
    >>> bool(torch.allclose(form(x), q(x), atol=1e-6))
    True
"""

from __future__ import annotations

import copy
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from slimtune.compressors.quantization import QuantAlgorithm, QuantWrapper, affine_qparams, quantize_weight_per_channel
from slimtune.compressors.quantization.algorithms.pact import PACT
from slimtune.compressors.quantization.functional import is_float
from slimtune.errors import QuantExportError


def register_qdq_ops() -> None:
    """Register the ``quantized_decomposed`` ops (quantize / dequantize per tensor and per channel)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import torch.ao.quantization.fx._decomposed  # noqa: F401


def _int8_weight(wrapper: QuantWrapper, wq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(q, scale)`` with ``q`` int8 in ±127 and ``q * scale`` (per output channel) equal to the quantized
    weight ``wq``, or None when ``wq`` is not of that form."""
    bits = wrapper.bits_w
    flat = wq.reshape(wq.shape[0], -1).double()
    tol = 1e-6 * float(flat.abs().max().clamp_min(1e-30))
    candidates = []
    try:  # the wrapper's own codes (ste, ptq, pact, bnn: the default per-channel symmetric weights)
        q, scale = quantize_weight_per_channel(wrapper.layer.weight.detach(), bits)
        candidates.append((q.reshape(q.shape[0], -1).double(), scale.double()))
    except Exception:  # noqa: BLE001 - only a shortcut; the levels below are tried anyway
        pass
    # symmetric grids with an odd or even number of levels, scaled per channel or per tensor (DoReFa)
    for amax in (flat.abs().amax(1), flat.abs().amax().expand(flat.shape[0])):
        for levels in (2 ** (bits - 1) - 1, 2**bits - 1) if bits > 1 else (1,):
            if levels <= 127:
                scale = torch.where(amax > 0, amax / levels, torch.ones_like(amax))
                candidates.append((torch.round(flat / scale[:, None]), scale))
    for q, scale in candidates:
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        if q.abs().max() <= 127 and float((q * scale[:, None] - flat).abs().max()) <= tol:
            return q.to(torch.int8).reshape(wq.shape), scale.float()
    return None


class QDQLayer(nn.Module):
    """A :class:`~slimtune.compressors.quantization.QuantWrapper`'s Conv/Linear in QDQ form (see the module
    docstring). Built from a frozen wrapper in eval mode; the wrapper is not modified.

    Args:
        wrapper: A non-recurrent wrapper whose input quantization, if any, is affine or PACT.
    """

    weight_int8: torch.Tensor | None
    weight_scale: torch.Tensor | None
    weight_zero_point: torch.Tensor | None
    weight_float: torch.Tensor | None

    def __init__(self, wrapper: QuantWrapper) -> None:
        super().__init__()
        self.name = wrapper.name
        layer = copy.deepcopy(wrapper.layer)
        with torch.no_grad():
            wq = wrapper.quantized_weight().detach().clone()
        del layer.weight
        layer.register_parameter("weight", None)
        self.layer = layer
        codes = None if is_float(wrapper.bits_w) else _int8_weight(wrapper, wq)
        self.int8_weight = codes is not None
        zero_point = torch.zeros(wq.shape[0], dtype=torch.int64)
        self.register_buffer("weight_int8", codes[0] if codes else None)
        self.register_buffer("weight_scale", codes[1] if codes else None)
        self.register_buffer("weight_zero_point", zero_point if codes else None)
        self.register_buffer("weight_float", None if codes else wq)
        self.act = _input_qparams(wrapper)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act is not None:
            scale, zero_point, qmin, qmax, dtype, lo, hi = self.act
            x = torch.clamp(x, lo, hi)
            ops = torch.ops.quantized_decomposed
            x = ops.quantize_per_tensor(x, scale, zero_point, qmin, qmax, dtype)
            x = ops.dequantize_per_tensor(x, scale, zero_point, qmin, qmax, dtype)
        if self.int8_weight:
            w = torch.ops.quantized_decomposed.dequantize_per_channel(
                self.weight_int8, self.weight_scale, self.weight_zero_point, 0, -127, 127, torch.int8
            )
        else:
            w = self.weight_float
        if isinstance(self.layer, nn.Linear):
            return F.linear(x, w, self.layer.bias)
        return self.layer._conv_forward(x, w, self.layer.bias)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, int8_weight={self.int8_weight}, quantized_input={self.act is not None}"


_Act = tuple[float, int, int, int, torch.dtype, float, float]


def _input_qparams(wrapper: QuantWrapper) -> _Act | None:
    """``(scale, zero_point, qmin, qmax, dtype, lo, hi)`` of the wrapper's input quantization, None if float."""
    bits = wrapper.bits_a
    if is_float(bits):
        return None
    if isinstance(wrapper.algorithm, PACT):
        alpha = max(float(wrapper.alpha.detach()), 1e-3)
        if bool(wrapper.act_signed):
            levels = 2 ** (bits - 1) - 1
            return alpha / levels, 0, -128, 127, torch.int8, -alpha, alpha
        levels = 2**bits - 1
        return alpha / levels, 0, 0, 255, torch.uint8, 0.0, alpha
    scale_t, zp_t = affine_qparams(wrapper.act_lo.cpu(), wrapper.act_hi.cpu(), bits)
    scale, zp, levels = float(scale_t), int(zp_t), 2**bits - 1
    return scale, zp, 0, 255, torch.uint8, -zp * scale, (levels - zp) * scale


def _kind(wrapper: QuantWrapper) -> str:
    """``"qdq"``, ``"recurrent"`` or ``"float-ops"`` (the wrapper's own ops), checking it can be exported."""
    algorithm = wrapper.algorithm
    if wrapper.mode == "calibrating" and algorithm.needs_range(wrapper):
        raise QuantExportError(
            f"layer {wrapper.name!r} is still calibrating (its input range is not fixed): run "
            "calibrate(model, batches) and freeze(model) (slimtune.compressors.quantization) before exporting"
        )
    if isinstance(algorithm, PACT) and not is_float(wrapper.bits_a) and not bool(wrapper.act_sign_known):
        raise QuantExportError(
            f"layer {wrapper.name!r} (pact) has seen no input, so whether its inputs are signed is unknown: "
            "calibrate the model or run it on one batch before exporting"
        )
    if wrapper.recurrent:
        return "recurrent"
    default_input = type(algorithm).activation is QuantAlgorithm.activation
    if is_float(wrapper.bits_a) or default_input or isinstance(algorithm, PACT):
        return "qdq"
    return "float-ops"


def check_exportable(model: nn.Module) -> dict[str, str]:
    """``{layer: kind}`` of every wrapper of ``model`` (see :func:`_kind`).

    Raises:
        QuantExportError: A wrapper that is still calibrating, or a PACT layer that never saw data.
    """
    return {w.name or n: _kind(w) for n, w in model.named_modules() if isinstance(w, QuantWrapper)}


def has_quantized_inputs(model: nn.Module) -> bool:
    """Whether any wrapper of ``model`` quantizes its input (then outputs are compared as a whole)."""
    return any(isinstance(m, QuantWrapper) and not is_float(m.bits_a) for m in model.modules())


def _recurrent_float(wrapper: QuantWrapper) -> nn.Module:
    layer = copy.deepcopy(wrapper.layer)
    with torch.no_grad():
        for name, value in wrapper.quantized_weights().items():
            getattr(layer, name).copy_(value)
    return layer


def qdq_form(model: nn.Module) -> tuple[nn.Module, list[str], bool]:
    """A copy of ``model`` (in eval mode) with every wrapper in QDQ form.

    Returns:
        ``(copy, notes, quantized_inputs)``: the notes say which layers became what; ``quantized_inputs``
        whether any layer quantizes its input.

    Raises:
        QuantExportError: A wrapper that is still calibrating, or a PACT layer that never saw data
            (the message names the layer).
    """
    kinds = check_exportable(model)
    if not kinds:
        return model, [], False
    register_qdq_ops()
    target = copy.deepcopy(model).eval()
    wrappers = [(n, m) for n, m in target.named_modules() if isinstance(m, QuantWrapper)]
    built: dict[str, list[str]] = {"int8": [], "inputs only": [], "float weights": [], "float-ops": [], "recurrent": []}
    for name, wrapper in wrappers:
        label = wrapper.name or name
        kind = kinds[label]
        if kind == "float-ops":
            built["float-ops"].append(label)
            continue
        new = _recurrent_float(wrapper) if kind == "recurrent" else QDQLayer(wrapper)
        if kind == "recurrent":
            built["recurrent"].append(label)
        else:
            bucket = "inputs only" if is_float(wrapper.bits_w) else "int8" if new.int8_weight else "float weights"
            built[bucket].append(label)
        if name == "":
            return new, _notes(built), has_quantized_inputs(model)
        parent, _, child = name.rpartition(".")
        setattr(target.get_submodule(parent), child, new)
    return target, _notes(built), has_quantized_inputs(model)


def _names(layers: list[str], limit: int = 6) -> str:
    shown = ", ".join(layers[:limit])
    return shown + (f" and {len(layers) - limit} more" if len(layers) > limit else "")


def _notes(built: dict[str, list[str]]) -> list[str]:
    notes = []
    if built["int8"]:
        notes.append(
            f"{len(built['int8'])} quantized layers in QDQ form (int8 weights; quantize -> dequantize on "
            f"quantized inputs): {_names(built['int8'])}"
        )
    if built["inputs only"]:
        notes.append(
            f"{len(built['inputs only'])} layers quantize only their inputs (float weights): "
            f"{_names(built['inputs only'])}"
        )
    if built["float weights"]:
        notes.append(
            f"{len(built['float weights'])} quantized layers keep float weights (their quantized values are "
            f"not int8 × a per-channel scale): {_names(built['float weights'])}"
        )
    if built["float-ops"]:
        notes.append(
            f"{len(built['float-ops'])} layers quantize their inputs in floating-point ops (no QuantizeLinear "
            f"form, e.g. bnn's 1-bit sign): {_names(built['float-ops'])}"
        )
    if built["recurrent"]:
        notes.append(f"recurrent layers with quantized float weights: {_names(built['recurrent'])}")
    return notes
