"""``pact``: Parameterized Clipping Activation (Choi et al. 2018, "PACT: Parameterized Clipping
Activation for Quantized Neural Networks").

Each wrapped layer learns its activation clip ``α``: the input is clipped to ``[0, α]`` as in the
paper (PACT replaces the ReLU before the layer), or to ``[-α, α]`` when the inputs take negative
values, and quantized uniformly on ``bits_a`` bits. Whether they do is read from calibration, or,
without calibration, from the first batch the layer sees (so post-ReLU inputs keep the full
``2^bits`` levels on ``[0, α]``). The rounding is straight-through, so ``∂y/∂α = 1`` where the input
is clipped at ``α`` (``-1`` at ``-α``) and 0 elsewhere: ``α`` trains with the other parameters
(add weight decay to it, as the paper does, through the optimizer). ``α`` starts at the
calibrated range when there is one, else at ``alpha_init``. Weights use the default per-channel
fake quantization. The int8 export (``export_int8``, FX path) quantizes the layer's input over the
learned ``[0, α]`` (or ``[-α, α]``), not over a freshly calibrated range.

Example:
    >>> import torch
    >>> from slimtune.compressors.quantization import freeze, quantize_model
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> q = freeze(quantize_model(model, {"2": (8, 4)}, algorithm="pact"))
    >>> q(torch.randn(3, 4)).sum().backward()
    >>> q[2].alpha.grad is not None
    True
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from slimtune.compressors.quantization.algorithms._base import QuantAlgorithm, register_algorithm
from slimtune.compressors.quantization.functional import is_float

if TYPE_CHECKING:
    from slimtune.compressors.quantization.modules import QuantWrapper

_MIN_ALPHA = 1e-4


@register_algorithm("pact")
class PACT(QuantAlgorithm):
    """Learned activation clipping ``α`` per layer.

    Args:
        alpha_init: Initial ``α`` for layers frozen without calibration (the paper uses 10).
    """

    requires_training = True

    def __init__(self, alpha_init: float = 10.0) -> None:
        self.alpha_init = float(alpha_init)

    def setup(self, wrapper: QuantWrapper) -> None:
        super().setup(wrapper)
        if not is_float(wrapper.bits_a):
            device = wrapper.act_lo.device  # the wrapped layer's
            wrapper.alpha = nn.Parameter(torch.tensor(self.alpha_init, device=device))
            wrapper.register_buffer("act_signed", torch.tensor(False, device=device))
            # set by calibration or the first batch
            wrapper.register_buffer("act_sign_known", torch.tensor(False, device=device))

    def freeze(self, wrapper: QuantWrapper) -> None:
        if is_float(wrapper.bits_a) or not wrapper.observer.initialized:
            return
        lo, hi = wrapper.observer.range(wrapper.bits_a)
        with torch.no_grad():
            wrapper.alpha.fill_(max(hi, -lo, _MIN_ALPHA))
            wrapper.act_signed.fill_(lo < 0)
            wrapper.act_sign_known.fill_(True)

    def export_range(self, wrapper: QuantWrapper) -> tuple[float, float] | None:
        if is_float(wrapper.bits_a):
            return None
        alpha = max(float(wrapper.alpha.detach()), _MIN_ALPHA)
        return (-alpha if bool(wrapper.act_signed) else 0.0, alpha)

    def activation(self, wrapper: QuantWrapper, x: torch.Tensor) -> torch.Tensor:
        bits = wrapper.bits_a
        if is_float(bits):
            return x
        # Without calibration the first batch tells whether inputs are signed. Decided on the device, with
        # no host read of the flags (which would wait for the GPU at every forward).
        with torch.no_grad():
            signed = torch.where(wrapper.act_sign_known, wrapper.act_signed, (x < 0).any())
            wrapper.act_signed.copy_(signed)
            wrapper.act_sign_known.fill_(True)
        alpha = wrapper.alpha.clamp_min(_MIN_ALPHA).to(x.dtype)
        y = torch.where(signed, torch.minimum(torch.maximum(x, -alpha), alpha), torch.minimum(torch.relu(x), alpha))
        levels = torch.where(signed, 2 ** (bits - 1) - 1, 2**bits - 1)
        step = alpha.detach() / levels
        yq = torch.round(y.detach() / step) * step
        return yq + (y - y.detach())
