"""``bnn``: binary weights (and activations) with straight-through gradients.

Weights are ``sign(w) · α_c`` with ``α_c = mean|w_c|`` per output channel (XNOR-Net, Rastegari
et al. 2016, "XNOR-Net: ImageNet Classification Using Binary Convolutional Neural Networks"), the
gradient passed straight through. With ``bits_a == 1`` the layer input is ``sign(x)`` with the
clipped straight-through gradient ``1_{|x| ≤ 1}`` of Courbariaux et al. 2016 ("Binarized Neural
Networks"); ``bits_a`` 2-8 uses the default affine fake quantization. ``bits_w`` must be 1 (or
None/32 to keep float weights).

Example:
    >>> import torch
    >>> from slimtune.compressors.quantization import quantize_model
    >>> q = quantize_model(torch.nn.Linear(4, 3), {"": (1, 1)}, algorithm="bnn")
    >>> w = q.quantized_weight()
    >>> bool((w.abs() == q.layer.weight.abs().mean(dim=1, keepdim=True)).all())
    True
    >>> q(torch.randn(2, 4)).shape
    torch.Size([2, 3])
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from slimtune.compressors.quantization.algorithms._base import QuantAlgorithm, register_algorithm
from slimtune.compressors.quantization.functional import fake_quantize_weight, is_float
from slimtune.errors import QuantizationError

if TYPE_CHECKING:
    from slimtune.compressors.quantization.modules import QuantWrapper


def binarize_activation(x: torch.Tensor) -> torch.Tensor:
    """``sign(x)`` (0 → +1) forward; gradient 1 where ``|x| ≤ 1``, 0 elsewhere."""
    xd = x.detach()
    s = torch.where(xd >= 0, 1.0, -1.0).to(x.dtype)
    return s + (x - xd) * (xd.abs() <= 1).to(x.dtype)


@register_algorithm("bnn")
class BNN(QuantAlgorithm):
    """Binary weights ``sign(w)·α`` per channel; binary activations when ``bits_a == 1``."""

    requires_training = True
    max_bits_w = 1

    def setup(self, wrapper: QuantWrapper) -> None:
        if not is_float(wrapper.bits_w) and wrapper.bits_w != 1:
            raise QuantizationError(
                f"layer {wrapper.name!r}: algorithm 'bnn' binarizes weights, so bits_w must be 1 "
                f"(or None/32), got {wrapper.bits_w!r}"
            )

    def needs_range(self, wrapper: QuantWrapper) -> bool:
        return not is_float(wrapper.bits_a) and wrapper.bits_a != 1

    def weight(self, wrapper: QuantWrapper, w: torch.Tensor) -> torch.Tensor:
        return fake_quantize_weight(w, wrapper.bits_w)

    def activation(self, wrapper: QuantWrapper, x: torch.Tensor) -> torch.Tensor:
        if wrapper.bits_a == 1:
            return binarize_activation(x)
        return super().activation(wrapper, x)
