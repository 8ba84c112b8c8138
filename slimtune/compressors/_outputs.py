"""What the built-in losses read from a model's output: a tensor, or the ``logits`` of a Hugging Face
``ModelOutput`` (or the first element of a tuple), so models that return structured outputs train and
are scored without a custom ``loss_fn``.

Example:
    >>> import torch
    >>> from slimtune.compressors._outputs import default_loss, logits
    >>> out = {"logits": torch.zeros(2, 3)}
    >>> logits(out).shape, round(float(default_loss(out, torch.tensor([0, 2]))), 4)
    (torch.Size([2, 3]), 1.0986)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from slimtune.errors import ArgumentTypeError


def logits(outputs: Any) -> torch.Tensor:
    """The tensor a classification loss applies to."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    value = outputs.get("logits") if isinstance(outputs, dict) else getattr(outputs, "logits", None)
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(outputs, (tuple, list)) and outputs and isinstance(outputs[0], torch.Tensor):
        return outputs[0]
    raise ArgumentTypeError(
        f"the model returns {type(outputs).__name__}, with no tensor or 'logits' to compute a loss on; "
        "give the task a loss_fn(outputs, targets)"
    )


def default_loss(outputs: Any, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on :func:`logits`; token-level (``[B, S, V]`` logits, ``[B, S]`` targets) too.

    Targets on another device than the logits (CPU labels of a GPU model) are moved to it."""
    z = logits(outputs)
    if isinstance(targets, torch.Tensor) and targets.device != z.device:
        targets = targets.to(z.device)
    if z.ndim == targets.ndim + 1 and z.ndim > 2:
        return F.cross_entropy(z.reshape(-1, z.shape[-1]), targets.reshape(-1))
    return F.cross_entropy(z, targets)
