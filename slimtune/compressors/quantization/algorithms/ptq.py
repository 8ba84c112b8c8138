"""``ptq``: static post-training quantization (calibrate the activation ranges, then freeze).

No training: weights are quantized per output channel as they are, layer inputs over the range
an observer saw on a few calibration batches (Krishnamoorthi 2018, "Quantizing deep
convolutional networks for efficient inference: A whitepaper"). With ``bits_a=None`` it is
weight-only (dynamic) quantization and needs no calibration.

Example:
    >>> import torch
    >>> from slimtune.compressors.quantization.algorithms.ptq import post_training_quantize
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> x = torch.randn(256, 4)
    >>> q = post_training_quantize(model, {"0": (8, 8), "2": (8, 8)}, [x])
    >>> bool((q(x) - model(x)).norm() / model(x).norm() < 0.02)
    True
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from slimtune.compressors.quantization.algorithms._base import QuantAlgorithm, register_algorithm
from slimtune.compressors.quantization.modules import calibrate, freeze, quantize_model

if TYPE_CHECKING:
    from torch import nn

    from slimtune.compressors.quantization.observers import Observer


@register_algorithm("ptq")
class PTQ(QuantAlgorithm):
    """Static post-training quantization: the same fake quantization as ``ste``, without training."""

    requires_training = False


def post_training_quantize(
    model: nn.Module,
    layers: Mapping[str, Any],
    batches: Iterable[Any] | None = None,
    observer: str | Observer = "minmax",
    max_batches: int | None = None,
) -> nn.Module:
    """A quantized copy of ``model``: wrap ``layers``, calibrate on ``batches``, freeze.

    Args:
        model: The float model (left unchanged).
        layers: Layer name → :class:`~slimtune.compressors.QuantSpec` (or ``(bits_w, bits_a)``).
        batches: Calibration batches (Tensors or ``(inputs, targets)``); may be ``None`` when no
            layer quantizes activations.
        observer: Observer name (``minmax``, ``moving_average``, ``percentile``, ``kl``).
        max_batches: Use at most this many batches.
    """
    q = quantize_model(model, layers, observer=observer, algorithm="ptq")
    if batches is not None:
        calibrate(q, batches, max_batches=max_batches)
    return freeze(q)
