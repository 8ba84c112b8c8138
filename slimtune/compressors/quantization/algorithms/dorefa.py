"""``dorefa``: DoReFa-Net weight quantization (Zhou et al. 2016, "DoReFa-Net: Training Low
Bitwidth Convolutional Neural Networks with Low Bitwidth Gradients").

Weights are normalised through ``tanh`` to ``[0, 1]``, ``w' = tanh(w) / (2 max|tanh(w)|) + 1/2``,
quantized to ``k = bits_w`` bits, ``round((2^k - 1) w') / (2^k - 1)``, and mapped back to
``[-1, 1]`` by ``2 q - 1``; the rounding is straight-through, the ``tanh`` is differentiated. The
result is multiplied by the layer's ``max|w|`` (detached) so the quantized layer keeps the float
layer's scale (the paper's networks absorb it in BatchNorm). At 1 bit the paper binarizes instead:
``sign(w) · E(|w|)``, one scalar per layer (the mean absolute weight, detached), with the gradient
passed straight through to ``w`` (no ``tanh``). Activations use the default affine fake
quantization over the calibrated range.

Example:
    >>> import torch
    >>> from slimtune.compressors.quantization import quantize_model
    >>> q = quantize_model(torch.nn.Linear(4, 3), {"": (2, None)}, algorithm="dorefa")
    >>> w = q.quantized_weight() / q.layer.weight.abs().max()
    >>> {round(v, 4) for v in w.flatten().tolist()} <= {-1.0, -0.3333, 0.3333, 1.0}
    True
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from slimtune.compressors.quantization.algorithms._base import QuantAlgorithm, register_algorithm
from slimtune.compressors.quantization.functional import check_bits, is_float, ste

if TYPE_CHECKING:
    from slimtune.compressors.quantization.modules import QuantWrapper


def dorefa_weight(w: torch.Tensor, bits: int) -> torch.Tensor:
    """DoReFa's ``k``-bit weight on the grid ``{-1 + 2j / (2^k - 1)}`` ⊂ [-1, 1] (before scaling)."""
    bits = check_bits(bits, 1, 8, "weight bits")
    t = torch.tanh(w)
    wn = t / (2 * t.detach().abs().max().clamp_min(1e-12)) + 0.5
    levels = 2**bits - 1
    q = ste(wn, torch.round(wn.detach() * levels) / levels)
    return 2 * q - 1


@register_algorithm("dorefa")
class DoReFa(QuantAlgorithm):
    """DoReFa-Net ``tanh``-normalised weight quantization, scaled by the layer's ``max|w|``;
    ``sign(w) · mean|w|`` at 1 bit."""

    requires_training = True

    def weight(self, wrapper: QuantWrapper, w: torch.Tensor) -> torch.Tensor:
        if is_float(wrapper.bits_w):
            return w
        if wrapper.bits_w == 1:
            return ste(w, torch.sign(w.detach()) * w.detach().abs().mean())
        return dorefa_weight(w, wrapper.bits_w) * w.detach().abs().max()
