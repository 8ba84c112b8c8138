"""``slb``: Searching for Low-Bit weights (Yang et al. 2020, "Searching for Low-Bit Weights in
Quantized Neural Networks", NeurIPS 2020).

Instead of rounding a latent float weight, SLB treats each weight as a discrete choice among the
``K = 2^b`` values of its bit-width and learns a distribution over them. Here the candidates of
output channel ``c`` are the ``2^b`` evenly spaced, symmetric values ``v_k = s_c · (-1 + 2k / (2^b - 1))``,
``k = 0 … 2^b - 1`` (the paper's uniform set in ``[-1, 1]``, scaled per channel): ``s_c = max|w_c|``
for ``b ≥ 2`` (the extreme candidates are ``±max|w_c|``), ``s_c = mean|w_c|`` for ``b = 1``
(``±α`` of XNOR-Net). Zero is not a candidate, as in the paper. Each weight holds ``K`` learnable
logits ``a``; the forward weight is the expectation under ``softmax(a / T)``::

    w = Σ_k softmax(a / T)_k · v_k

so gradients reach the logits through the softmax (no straight-through estimate). The scales are
fixed when the layer is wrapped; the wrapped layer's own float weight is no longer used.

Initialisation: ``a_k = -((w - v_k) / Δ_c)²`` with ``Δ_c`` the gap between neighbouring candidates,
so the candidate nearest to the float weight has the largest logit and, at ``T = 1``, the soft
weight starts close to the float weight.

Temperature schedule: ``T`` starts at ``temperature`` (default 1) and is driven by the fine-tune
loop. slimtune's own loop (:func:`~slimtune.compressors.training.finetune`, so every trial) does it:
``T`` falls geometrically, once per step, to ``finetune.slb_final_temperature`` (default 0.01) at the
end of the run, and is then set to 0, so training mode and evaluation use the same discrete
weights. In a loop of your own, call :func:`anneal` (``T ← max(T · factor, min_temperature)``) once
per epoch or every few steps, or :func:`set_temperature` for any other schedule. A geometric schedule from ``T0`` to
``T1`` over ``n`` calls uses ``factor = (T1 / T0) ** (1 / n)``; ending around ``T1 = 1e-2`` makes
almost every distribution one-hot. As ``T → 0`` each weight's distribution concentrates on its
most likely candidate and the soft weight becomes that grid value (the paper's argument for
annealing: training then sees the network that is deployed).

Freezing to the discrete network: in **eval mode** (and at ``T = 0``) the forward weight is the
argmax candidate of each weight — the quantized network that is evaluated and exported
(:func:`~slimtune.compressors.quantization.unwrap` and
:func:`~slimtune.compressors.quantization.export_int8` write these values into the float layer).
``wrapper.freeze()`` keeps its usual meaning (fix the activation range before training). Inputs
use the default affine fake quantization; the paper's state batch normalization is not
implemented.

Cost: ``K`` logits per weight (16× the weight's memory at 4 bits), so ``bits_w`` is limited to 1-4;
use ``ste`` for 5-8 bits. Recurrent layers are not supported.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from slimtune.compressors.quantization import quantize_model
    >>> from slimtune.compressors.quantization.algorithms.slb import anneal, slb_candidates
    >>> _ = torch.manual_seed(0)
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> q = quantize_model(model, {"0": (2, None), "2": (2, None)}, algorithm="slb").train()
    >>> opt = torch.optim.Adam(q.parameters(), lr=0.05)
    >>> x, y = torch.randn(64, 4), torch.randn(64, 2)
    >>> for epoch in range(5):
    ...     opt.zero_grad(); nn.functional.mse_loss(q(x), y).backward(); opt.step()
    ...     t = anneal(q, factor=0.4)               # once per epoch: 0.4, 0.16, ... → 0.01
    >>> round(t, 4)
    0.0102
    >>> w = q.eval()[0].quantized_weight()         # eval mode: each weight's argmax candidate
    >>> bool(((w.unsqueeze(-1) - slb_candidates(q[0]).unsqueeze(1)).abs().amin(-1) < 1e-6).all())
    True
"""

from __future__ import annotations

import torch
from torch import nn

from slimtune.compressors.quantization.algorithms._base import QuantAlgorithm, register_algorithm
from slimtune.compressors.quantization.functional import is_float
from slimtune.compressors.quantization.modules import QuantWrapper
from slimtune.errors import QuantizationError

MAX_BITS = 4
"""Largest weight bit-width SLB accepts (``2^b`` logits per weight)."""
_EPS = 1e-12


def _check_temperature(value: object, what: str = "temperature") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise QuantizationError(f"slb: {what} must be a number ≥ 0, got {value!r}")
    return float(value)


@register_algorithm("slb")
class SLB(QuantAlgorithm):
    """Learned distributions over the ``2^b`` candidate values of every weight (see the module docstring).

    Args:
        temperature: The initial softmax temperature ``T`` (≥ 0; 0 means hard argmax).
    """

    requires_training = True
    max_bits_w = MAX_BITS

    def __init__(self, temperature: float = 1.0) -> None:
        self.temperature = _check_temperature(temperature)

    def setup(self, wrapper: QuantWrapper) -> None:
        super().setup(wrapper)
        if wrapper.recurrent:
            raise QuantizationError(
                f"layer {wrapper.name!r} is a {type(wrapper.layer).__name__}: algorithm 'slb' supports Conv/Linear "
                "layers only; use 'dynamic' or 'ste' for recurrent layers"
            )
        if is_float(wrapper.bits_w):
            return
        bits = wrapper.bits_w
        if bits > MAX_BITS:
            raise QuantizationError(
                f"layer {wrapper.name!r}: algorithm 'slb' keeps 2^bits logits per weight, "
                f"so bits_w must be 1-{MAX_BITS} "
                f"(got {bits}); use algorithm 'ste' for 5-8 bits"
            )
        w = wrapper.layer.weight.detach()
        flat = w.reshape(w.shape[0], -1)
        scale = (flat.abs().mean(dim=1) if bits == 1 else flat.abs().amax(dim=1)).clamp_min(_EPS)
        levels = torch.linspace(-1.0, 1.0, 2**bits, dtype=w.dtype, device=w.device)
        gap = 2.0 / (2**bits - 1)  # between neighbouring levels, in units of the channel scale
        view = (-1,) + (1,) * (w.dim() - 1) + (1,)
        dist = (w.unsqueeze(-1) - levels * scale.reshape(view)) / (gap * scale.reshape(view))
        wrapper.slb_logits = nn.Parameter(-(dist**2))
        wrapper.register_buffer("slb_scale", scale.clone())
        wrapper.register_buffer("slb_levels", levels)
        wrapper.register_buffer("slb_temperature", torch.tensor(self.temperature, dtype=w.dtype, device=w.device))

    def weight(self, wrapper: QuantWrapper, w: torch.Tensor) -> torch.Tensor:
        if is_float(wrapper.bits_w):
            return w
        values = wrapper.slb_levels * wrapper.slb_scale.reshape((-1,) + (1,) * (w.dim() - 1) + (1,))
        return (slb_probabilities(wrapper) * values).sum(dim=-1).to(w.dtype)


# ---------------------------------------------------------------------- helpers
def slb_layers(model: nn.Module) -> list[QuantWrapper]:
    """The layers of ``model`` whose weights are quantized by ``slb`` (empty when none)."""
    return [
        m
        for m in model.modules()
        if isinstance(m, QuantWrapper) and isinstance(m.algorithm, SLB) and hasattr(m, "slb_logits")
    ]


def _slb_wrappers(model: nn.Module) -> list[QuantWrapper]:
    found = slb_layers(model)
    if not found:
        raise QuantizationError("model has no layer quantized with algorithm 'slb' (and weight bits 1-4)")
    return found


def slb_probabilities(wrapper: QuantWrapper) -> torch.Tensor:
    """The candidate distribution of every weight, shape ``weight.shape + (2^b,)``.

    ``softmax(logits / T)`` in training mode with ``T > 0``; one-hot at the argmax in eval mode or at ``T = 0``.
    """
    logits = wrapper.slb_logits
    t = float(wrapper.slb_temperature)
    if wrapper.training and t > 0:
        return torch.softmax(logits / t, dim=-1)
    return nn.functional.one_hot(logits.argmax(dim=-1), logits.shape[-1]).to(logits.dtype)


def slb_candidates(wrapper: QuantWrapper) -> torch.Tensor:
    """The candidate values of each output channel, shape ``(out_channels, 2^b)``."""
    return wrapper.slb_scale.unsqueeze(1) * wrapper.slb_levels


def set_temperature(model: nn.Module, temperature: float) -> nn.Module:
    """Set the softmax temperature of every ``slb`` layer of ``model`` (0 = hard argmax). Returns ``model``.

    Raises:
        QuantizationError: ``temperature`` is negative or not a number, or the model has no ``slb`` layer.
    """
    t = _check_temperature(temperature)
    for w in _slb_wrappers(model):
        w.slb_temperature.fill_(t)
    return model


def anneal(model: nn.Module, factor: float = 0.9, min_temperature: float = 1e-4) -> float:
    """One cooling step: ``T ← max(T · factor, min_temperature)`` on every ``slb`` layer; returns the new ``T``.

    Call it from the fine-tune loop (once per epoch, or every few steps). With several layers
    at different temperatures, the largest new temperature is returned.

    Raises:
        QuantizationError: ``factor`` outside ``(0, 1]``, a negative ``min_temperature``, or no ``slb`` layer.
    """
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0 < factor <= 1:
        raise QuantizationError(f"slb: anneal factor must be in (0, 1], got {factor!r}")
    floor = _check_temperature(min_temperature, "min_temperature")
    new = 0.0
    for w in _slb_wrappers(model):
        t = max(float(w.slb_temperature) * factor, floor)
        w.slb_temperature.fill_(t)
        new = max(new, t)
    return new
