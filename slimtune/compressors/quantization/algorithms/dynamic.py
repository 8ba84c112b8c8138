"""``dynamic``: dynamic post-training quantization — weights only, per output channel, no calibration.

Weights of Linear, Conv and recurrent (``nn.LSTM`` / ``nn.GRU``) layers are quantized per output
channel (per gate row for recurrent layers) at the plan's ``bits_w``, symmetrically; activations
stay float in the fake-quantized model, so nothing needs calibrating and nothing is trained
(Krishnamoorthi 2018, "Quantizing deep convolutional networks for efficient inference: A
whitepaper", §3: weight-only and dynamic quantization). Real int8 kernels for this mode come from
:func:`~slimtune.compressors.quantization.export_int8` with ``mode="dynamic"`` (the mode chosen
automatically for models quantized with this algorithm): PyTorch's dynamic quantization
(``torch.ao.quantization.quantize_dynamic``) of the Linear, LSTM and GRU layers, which quantizes
each batch's activations to uint8 at run time from its own range — a rounding the fake-quantized
model does not emulate, so the exported model differs from it by that (small) error.

Unlike ``ptq`` with ``bits_a=None``, a layer given activation bits is an error here, so a plan
cannot silently ask for static activation ranges that this algorithm would ignore.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from slimtune.compressors.quantization import quantize_model
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> q = quantize_model(model, {"0": (8, None), "2": (4, None)}, algorithm="dynamic")
    >>> w = q[2].quantized_weight()
    >>> levels = w / (w.abs().amax(dim=1, keepdim=True) / 7)
    >>> bool(torch.allclose(levels, levels.round(), atol=1e-4))
    True
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from slimtune.compressors.quantization.algorithms._base import QuantAlgorithm, register_algorithm
from slimtune.compressors.quantization.functional import is_float
from slimtune.errors import QuantizationError

if TYPE_CHECKING:
    from slimtune.compressors.quantization.modules import QuantWrapper


@register_algorithm("dynamic")
class DynamicPTQ(QuantAlgorithm):
    """Weight-only post-training quantization (per-channel weights at ``bits_w``, float activations)."""

    requires_training = False

    def setup(self, wrapper: QuantWrapper) -> None:
        if not is_float(wrapper.bits_a):
            raise QuantizationError(
                f"layer {wrapper.name!r}: algorithm 'dynamic' quantizes weights only (activations are quantized "
                f"per batch at run time by the int8 kernels); set bits_a=None instead of {wrapper.bits_a}, "
                "or use algorithm='ptq' for static activation ranges"
            )

    def needs_range(self, wrapper: QuantWrapper) -> bool:
        return False
