"""Example inputs as the compressors use them: a tuple of positional inputs on the model's device.

A model on a GPU is traced, checked and measured with its example inputs on the same GPU; inputs
given on another device (a CPU batch for a CUDA model) are moved there with
:func:`slimtune.devices.move`, so ``trace(model.cuda(), x)`` works whatever device ``x`` is on.

Example:
    >>> import torch
    >>> from slimtune.compressors._inputs import positional_inputs
    >>> net = torch.nn.Linear(3, 2)
    >>> (x,) = positional_inputs(net, torch.zeros(1, 3))
    >>> x.device == net.weight.device
    True
"""

from __future__ import annotations

from typing import Any

from torch import nn

from slimtune import devices


def positional_inputs(model: nn.Module, example_inputs: Any) -> tuple[Any, ...]:
    """``example_inputs`` as a tuple of positional inputs (a single input becomes a 1-tuple), with
    every tensor in it on the device of ``model``'s first parameter or buffer (unchanged for a model
    without either: such a model runs wherever its inputs are)."""
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    if next(iter(model.parameters()), None) is None and next(iter(model.buffers()), None) is None:
        return inputs
    return devices.move(inputs, devices.model_device(model))
