"""``ste``: quantization-aware training with straight-through fake quantization.

Weights are fake-quantized per output channel (symmetric), layer inputs affinely over the range
observed during calibration; the rounding is skipped in the backward pass (the straight-through
estimator of Bengio et al. 2013, "Estimating or Propagating Gradients Through Stochastic Neurons";
QAT as in Jacob et al. 2018, "Quantization and Training of Neural Networks for Efficient
Integer-Arithmetic-Only Inference"), clipped to zero outside the activation range. Training then
works with any plain optimizer.

Example:
    >>> import torch
    >>> from slimtune.compressors.quantization import calibrate, freeze, quantize_model
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> q = quantize_model(model, {"0": (8, 8), "2": (4, 8)}, algorithm="ste")
    >>> q = freeze(calibrate(q, [torch.randn(16, 4)]))
    >>> q(torch.randn(3, 4)).sum().backward()
    >>> q[0].layer.weight.grad.shape
    torch.Size([8, 4])
"""

from __future__ import annotations

from slimtune.compressors.quantization.algorithms._base import QuantAlgorithm, register_algorithm


@register_algorithm("ste")
class STE(QuantAlgorithm):
    """QAT with straight-through fake quantization (the defaults of :class:`QuantAlgorithm`)."""

    requires_training = True
