"""Fake-quantized layers: :class:`QuantWrapper`, and wrapping, calibrating and freezing a model.

A :class:`QuantWrapper` holds a Conv/Linear layer (or an ``nn.LSTM`` / ``nn.GRU``). In the forward
pass its weight is fake-quantized at ``bits_w`` and its *input* at ``bits_a`` by the wrapper's
algorithm (see :mod:`slimtune.compressors.quantization.algorithms`). A recurrent layer has several
weight matrices (``weight_ih_l0``, ``weight_hh_l0``, ... per layer and direction): each is quantized
per output row (gate unit); biases, the input and the hidden state stay float (weight-only, the
``dynamic`` quantization of recurrent layers), so ``bits_a`` must be ``None`` for them.
:func:`unwrap` turns a wrapped model back into a plain float model computing with the quantized
weights (what :func:`~slimtune.compressors.quantization.export_int8` starts from). The wrapper has
two modes:

- ``"calibrating"``: the input is passed to the observer and not quantized;
- ``"frozen"``: the input is quantized with the range fixed by :meth:`QuantWrapper.freeze`.

Example:
    >>> import torch
    >>> from slimtune.compressors.quantization import calibrate, freeze, quantize_model
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3))
    >>> q = quantize_model(model, {"0": (8, 8), "2": (8, 8)}, observer="minmax")
    >>> q = freeze(calibrate(q, [torch.randn(4, 3, 16, 16) for _ in range(2)]))
    >>> x = torch.randn(2, 3, 16, 16)
    >>> bool(((q(x) - model(x)).norm() / model(x).norm()) < 0.05)
    True
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F

# (from _base, not the algorithms package, which imports ptq and slb, which import this module; the
# algorithms are registered by the quantization package, which imports them before this module)
from slimtune.compressors.quantization.algorithms._base import QuantAlgorithm, get_algorithm
from slimtune.compressors.quantization.functional import check_bits, is_float
from slimtune.compressors.quantization.observers import Observer, make_observer
from slimtune.devices import model_device, move
from slimtune.errors import ArgumentTypeError, QuantizationError

Mode = Literal["calibrating", "frozen"]
_MODES = ("calibrating", "frozen")
QUANTIZABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
"""Single-weight layer types :class:`QuantWrapper` accepts (weights and inputs quantized)."""
RECURRENT_TYPES: tuple[type[nn.Module], ...] = (nn.LSTM, nn.GRU)
"""Recurrent layer types :class:`QuantWrapper` accepts (weights only: every ``weight_*`` matrix)."""
_KINDS = "Conv1d/2d/3d, Linear, LSTM and GRU"


def _layer_bits(value: object, name: str, attr: str) -> int | None:
    if is_float(value):  # type: ignore[arg-type]
        return None
    try:
        return check_bits(value, 1, 8, attr)
    except QuantizationError as e:
        raise QuantizationError(f"layer {name!r}: {e}") from None


class QuantWrapper(nn.Module):
    """A Conv/Linear layer with fake-quantized weight and input (or an LSTM/GRU with fake-quantized weights).

    Args:
        layer: An ``nn.Conv1d/2d/3d`` or ``nn.Linear`` (kept as ``self.layer``; its parameters
            are trained through the straight-through estimator), or an ``nn.LSTM`` / ``nn.GRU``
            (every ``weight_*`` matrix quantized per row; weight-only).
        bits_w: Weight bits, 1-8 (per-output-channel symmetric), or ``None``/32 for float.
        bits_a: Input activation bits, 1-8 (1 only with ``bnn``), or ``None``/32 for float; must be
            ``None``/32 for recurrent layers.
        observer: Observer name or instance tracking the input range while calibrating.
        mode: ``"calibrating"`` (default) or ``"frozen"`` (use :meth:`freeze` to enter it with a range).
        algorithm: Algorithm name or instance (``ste``, ``ptq``, ``pact``, ``dorefa``, ``bnn``).
        name: The layer's name in the model, used in error messages.

    The tensors the wrapper and its algorithm add (the frozen input range ``act_lo``/``act_hi``,
    PACT's ``alpha``, SLB's logits and temperature ...) are registered buffers and parameters created
    on the layer's device, so they move with ``model.to(device)`` and are saved in its ``state_dict``.
    The observer keeps its statistics on the CPU (Python floats, or CPU tensors for ``percentile`` and
    ``kl``), whatever the layer's device.

    Raises:
        QuantizationError: Not a Conv/Linear/LSTM/GRU layer, bits out of range, activation bits on
            a recurrent layer, unknown observer or algorithm; the message names the layer.

    Example:
        >>> import torch
        >>> w = QuantWrapper(torch.nn.Linear(4, 2), bits_w=4, bits_a=8, name="fc")
        >>> _ = w(torch.randn(8, 4))          # calibrating: observes the input
        >>> w.freeze().mode
        'frozen'
        >>> w(torch.randn(3, 4)).shape
        torch.Size([3, 2])
    """

    act_lo: torch.Tensor
    act_hi: torch.Tensor

    def __init__(
        self,
        layer: nn.Module,
        bits_w: int | None = None,
        bits_a: int | None = None,
        observer: str | Observer = "minmax",
        mode: Mode = "calibrating",
        algorithm: str | QuantAlgorithm = "ste",
        name: str = "",
    ) -> None:
        super().__init__()
        if not isinstance(layer, QUANTIZABLE_TYPES + RECURRENT_TYPES):
            raise QuantizationError(
                f"layer {name!r} is a {type(layer).__name__}; only {_KINDS} layers can be quantized"
            )
        if mode not in _MODES:
            raise QuantizationError(f"layer {name!r}: mode {mode!r} must be one of {_MODES}")
        self.layer = layer
        self.name = name
        self.bits_w = _layer_bits(bits_w, name, "bits_w")
        self.bits_a = _layer_bits(bits_a, name, "bits_a")
        if self.recurrent and self.bits_a is not None:
            raise QuantizationError(
                f"layer {name!r} is a {type(layer).__name__}: recurrent layers are quantized weights-only "
                f"(the hidden state stays float); set bits_a=None instead of {self.bits_a}"
            )
        self.algorithm = get_algorithm(algorithm)
        self.observer = make_observer(observer)
        # On the layer's device (and moved with the wrapper by ``.to``), as is every tensor an algorithm adds.
        device = model_device(layer)
        self.register_buffer("act_lo", torch.zeros((), device=device))
        self.register_buffer("act_hi", torch.zeros((), device=device))
        self.algorithm.setup(self)
        self.mode: Mode = "calibrating"
        if mode == "frozen":
            self.freeze()

    @property
    def recurrent(self) -> bool:
        """Whether the wrapped layer is an LSTM/GRU (several weight matrices, weight-only quantization)."""
        return isinstance(self.layer, RECURRENT_TYPES)

    @property
    def weight(self) -> torch.Tensor | None:
        """The wrapped layer's float weight, for code that reads ``layer.weight`` from outside (e.g.
        ``nn.TransformerEncoderLayer`` checking its linears before its fast path)."""
        return getattr(self.layer, "weight", None)

    @property
    def bias(self) -> torch.Tensor | None:
        """The wrapped layer's bias (see :attr:`weight`)."""
        return getattr(self.layer, "bias", None)

    # ------------------------------------------------------------------ state
    def calibrate_mode(self) -> QuantWrapper:
        """Enter ``"calibrating"`` mode (observe inputs, do not quantize them)."""
        self.mode = "calibrating"
        return self

    def freeze(self) -> QuantWrapper:
        """Fix the activation range from the observer and enter ``"frozen"`` mode.

        Raises:
            QuantizationError: Activations are quantized but nothing was observed (naming the layer).
        """
        with torch.no_grad():
            self.algorithm.freeze(self)
        self.mode = "frozen"
        return self

    # ------------------------------------------------------------------ forward
    def quantized_weight(self) -> torch.Tensor:
        """The weight as the forward pass uses it (fake-quantized, with STE gradient).

        Raises:
            QuantizationError: The layer is recurrent (several weights): use :meth:`quantized_weights`.
        """
        if self.recurrent:
            raise QuantizationError(
                f"layer {self.name!r} is a {type(self.layer).__name__} with several weight matrices; "
                "use quantized_weights()"
            )
        return self.algorithm.weight(self, self.layer.weight)

    def quantized_weights(self) -> dict[str, torch.Tensor]:
        """``{parameter name: tensor}`` of every weight the forward pass uses, fake-quantized.

        ``{"weight": ...}`` for Conv/Linear; ``weight_ih_l0``, ``weight_hh_l0``, ... for LSTM/GRU.
        """
        if not self.recurrent:
            return {"weight": self.quantized_weight()}
        return {n: self.algorithm.weight(self, p) for n, p in self.layer.named_parameters() if n.startswith("weight")}

    def forward(self, x: torch.Tensor, *rest: Any) -> Any:
        if self.recurrent:
            params = dict(self.layer.named_parameters())
            params.update(self.quantized_weights())
            return torch.func.functional_call(self.layer, params, (x, *rest))
        if rest:
            raise ArgumentTypeError(
                f"layer {self.name!r} ({type(self.layer).__name__}) takes one input, got {1 + len(rest)}"
            )
        if self.mode == "calibrating" and self.algorithm.needs_range(self):
            self.observer.observe(x)
        else:
            x = self.algorithm.activation(self, x)
        w = self.quantized_weight()
        if isinstance(self.layer, nn.Linear):
            return F.linear(x, w, self.layer.bias)
        return self.layer._conv_forward(x, w, self.layer.bias)

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, bits_w={self.bits_w}, bits_a={self.bits_a}, algorithm={self.algorithm.name!r}, "
            f"observer={self.observer.name!r}, mode={self.mode!r}"
        )


# ---------------------------------------------------------------------- model-level helpers
def _spec_bits(name: str, spec: Any) -> tuple[int | None, int | None]:
    if hasattr(spec, "bits_w") and hasattr(spec, "bits_a"):
        return spec.bits_w, spec.bits_a
    if isinstance(spec, Mapping):
        unknown = set(spec) - {"bits_w", "bits_a"}
        if unknown:
            raise QuantizationError(f"layer {name!r}: unknown field(s) {sorted(unknown)}; expected bits_w, bits_a")
        return spec.get("bits_w"), spec.get("bits_a")
    if isinstance(spec, (tuple, list)) and len(spec) == 2:
        return spec[0], spec[1]
    raise QuantizationError(
        f"layer {name!r}: quantization spec {spec!r} must be a QuantSpec, a mapping or a (bits_w, bits_a) pair"
    )


def quantizable_layers(model: nn.Module) -> list[str]:
    """Names of the Conv/Linear/LSTM/GRU layers of ``model`` that :func:`quantize_model` can wrap."""
    return [n for n, m in model.named_modules() if isinstance(m, QUANTIZABLE_TYPES + RECURRENT_TYPES)]


def quantize_model(
    model: nn.Module,
    layers: Mapping[str, Any],
    observer: str | Observer = "minmax",
    algorithm: str | QuantAlgorithm = "ste",
    inplace: bool = False,
) -> nn.Module:
    """A copy of ``model`` with the listed layers wrapped in :class:`QuantWrapper`.

    Args:
        model: The float model (copied unless ``inplace``).
        layers: Layer name → :class:`~slimtune.compressors.QuantSpec`, ``{"bits_w": .., "bits_a": ..}``
            or ``(bits_w, bits_a)``. Layers whose bits are both float stay unwrapped. ``""``
            names the model itself (when it is a single Conv/Linear). LSTM/GRU layers take
            weight bits only (``bits_a=None``).
        observer: Observer name (``minmax``, ``moving_average``, ``percentile``, ``kl``); each
            layer gets its own instance (an instance given here is deep-copied per layer).
        algorithm: Algorithm name or instance (``ste``, ``ptq``, ``pact``, ``dorefa``, ``bnn``,
            ``dynamic``, ``slb``; see :data:`~slimtune.compressors.quantization.ALGORITHMS`).
        inplace: Modify ``model`` itself instead of a copy.

    Returns:
        The model with wrapped layers, in ``"calibrating"`` mode: run :func:`calibrate` and
        :func:`freeze` next.

    Raises:
        QuantizationError: Unknown layer name, a layer that is not Conv/Linear/LSTM/GRU, bad bits,
            unknown observer or algorithm; the message names the layer.
    """
    algo = get_algorithm(algorithm)
    make_observer(observer)  # fail early on unknown names
    target = model if inplace else copy.deepcopy(model)
    modules = dict(target.named_modules())
    for name, spec in layers.items():
        bits_w, bits_a = _spec_bits(name, spec)
        if name not in modules:
            known = quantizable_layers(target)
            raise QuantizationError(
                f"unknown layer {name!r}; quantizable layers are: {', '.join(known[:12])}"
                + (f", ... ({len(known)} in all)" if len(known) > 12 else "")
            )
        layer = modules[name]
        if isinstance(layer, QuantWrapper):
            raise QuantizationError(f"layer {name!r} is already quantized")
        if is_float(bits_w) and is_float(bits_a):
            if not isinstance(layer, QUANTIZABLE_TYPES + RECURRENT_TYPES):
                raise QuantizationError(
                    f"layer {name!r} is a {type(layer).__name__}; only {_KINDS} layers can be quantized"
                )
            continue
        obs = copy.deepcopy(observer) if isinstance(observer, Observer) else observer
        wrapper = QuantWrapper(layer, bits_w, bits_a, observer=obs, algorithm=algo, name=name)
        if name == "":
            target = wrapper
            continue
        parent_name, _, child = name.rpartition(".")
        setattr(target.get_submodule(parent_name), child, wrapper)
    return target


def quant_wrappers(model: nn.Module) -> dict[str, QuantWrapper]:
    """The model's :class:`QuantWrapper` modules by the name of the layer they wrap."""
    return {w.name or n: w for n, w in model.named_modules() if isinstance(w, QuantWrapper)}


def _as_args(batch: Any) -> tuple[Any, ...]:
    if isinstance(batch, torch.Tensor):
        return (batch,)
    if isinstance(batch, (tuple, list)) and batch:
        inputs = batch[0]
        return tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    raise QuantizationError(
        f"calibration batch of type {type(batch).__name__} is not a Tensor or an (inputs, targets) pair"
    )


def calibrate(model: nn.Module, batches: Iterable[Any], max_batches: int | None = None) -> nn.Module:
    """Put every wrapper in ``"calibrating"`` mode and run ``batches`` (eval mode, no grad).

    Args:
        model: A model from :func:`quantize_model`.
        batches: Tensors, or ``(inputs, targets)`` pairs where ``inputs`` is a Tensor or a tuple (e.g. a
            DataLoader); each batch's inputs are moved to the model's device (that of its first parameter),
            so CPU batches calibrate a model on a GPU.
        max_batches: Use at most this many batches.

    Returns:
        ``model`` (still calibrating: call :func:`freeze` next). Observers keep accumulating
        over repeated calls.
    """
    wrappers = quant_wrappers(model)
    if not wrappers:
        raise QuantizationError("model has no quantized layers; wrap some with quantize_model first")
    for w in wrappers.values():
        w.calibrate_mode()
    device = model_device(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i, batch in enumerate(batches):
                if max_batches is not None and i >= max_batches:
                    break
                model(*move(_as_args(batch), device))
    finally:
        model.train(was_training)
    return model


def freeze(model: nn.Module) -> nn.Module:
    """Freeze every wrapper's activation range (see :meth:`QuantWrapper.freeze`). Returns ``model``."""
    for w in quant_wrappers(model).values():
        w.freeze()
    return model


def weight_bits(model: nn.Module) -> dict[str, int]:
    """``{module name: weight bits}`` of the layers inside the model's wrappers (for size measures).

    Keys name the wrapped Conv/Linear itself (``<wrapper>.layer``), which owns the weight; layers
    with float weights are left out, and so are recurrent layers, whose ``weight_*`` matrices
    :func:`~slimtune.compressors.measures.model_size_bytes` does not take bit-widths for (it counts
    them at 32 bits; measure an exported model with ``exported_size_bytes`` instead).
    """
    out = {}
    for name, w in quant_wrappers(model).items():
        if w.recurrent:
            continue
        if w.bits_w is not None and w.bits_w < 32:
            out[f"{name}.layer" if name else "layer"] = int(w.bits_w)
    return out


def unwrap(model: nn.Module) -> nn.Module:
    """A float copy of ``model`` that computes with the quantized weights, without wrappers.

    Every :class:`QuantWrapper` is replaced by (a copy of) its layer whose weights are set to the
    wrapper's :meth:`~QuantWrapper.quantized_weights` in eval mode (for ``slb``: the most probable
    candidate of each weight). Activation quantization is dropped: the result is the float model an
    int8 exporter starts from (see :func:`~slimtune.compressors.quantization.export_int8`).
    The model itself is not modified.

    Example:
        >>> import torch
        >>> q = quantize_model(torch.nn.Sequential(torch.nn.Linear(4, 3)), {"0": (4, None)})
        >>> f = unwrap(q)
        >>> type(f[0]).__name__, bool(torch.equal(f[0].weight, q[0].quantized_weight()))
        ('Linear', True)
    """
    target = copy.deepcopy(model)
    wrappers = [(n, m) for n, m in target.named_modules() if isinstance(m, QuantWrapper)]
    if isinstance(target, QuantWrapper):
        wrappers = [("", target)]
    for name, wrapper in wrappers:
        was_training = wrapper.training
        wrapper.eval()
        with torch.no_grad():
            for pname, value in wrapper.quantized_weights().items():
                getattr(wrapper.layer, pname).copy_(value)
        wrapper.train(was_training)
        layer = wrapper.layer
        if name == "":
            return layer
        parent_name, _, child = name.rpartition(".")
        setattr(target.get_submodule(parent_name), child, layer)
    return target
