"""The quantization-algorithm interface and the registry of algorithms by name."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import torch

from slimtune.compressors.quantization.functional import fake_quantize_activation, fake_quantize_weight, is_float
from slimtune.errors import QuantizationError, UnknownQuantizationNameError
from slimtune.registry import Registry

if TYPE_CHECKING:
    from slimtune.compressors.quantization.modules import QuantWrapper


class QuantAlgorithm:
    """How a :class:`~slimtune.compressors.quantization.modules.QuantWrapper` fake-quantizes.

    The defaults are plain fake quantization: per-channel symmetric weights and affine activations
    over the observed range, both with straight-through gradients. Subclasses override what
    their paper changes. An algorithm object holds no per-layer state: learnable values live on
    the wrapper (added in :meth:`setup`) so that they are saved with the model and trained by any
    optimizer over ``model.parameters()``.

    Attributes:
        name: The registered name.
        requires_training: Whether the algorithm is meant to be followed by training (QAT).
        max_bits_w: The widest weight bit-width it accepts (plans and search spaces are checked
            against it before anything runs).
    """

    name = ""
    requires_training = True
    max_bits_w = 8

    def setup(self, wrapper: QuantWrapper) -> None:
        """Check the wrapper's bit-widths and add learnable parameters or buffers to it."""
        if wrapper.bits_a == 1:
            raise QuantizationError(
                f"layer {wrapper.name!r}: 1-bit activations are not supported by algorithm {self.name!r}; "
                "use algorithm='bnn' or bits_a 2-8"
            )

    def needs_range(self, wrapper: QuantWrapper) -> bool:
        """Whether activations need an observed range (the wrapper observes while calibrating)."""
        return not is_float(wrapper.bits_a)

    def freeze(self, wrapper: QuantWrapper) -> None:
        """Fix the activation range from the observer (called by ``wrapper.freeze()``)."""
        if not self.needs_range(wrapper):
            return
        if not wrapper.observer.initialized:
            raise QuantizationError(
                f"layer {wrapper.name!r}: its {wrapper.observer.name} observer has seen no data; "
                "run calibrate(model, batches) before freeze(model)"
            )
        lo, hi = wrapper.observer.range(wrapper.bits_a)
        wrapper.act_lo.fill_(lo)
        wrapper.act_hi.fill_(hi)

    def export_range(self, wrapper: QuantWrapper) -> tuple[float, float] | None:
        """The input range the layer was trained or calibrated with, which an int8 export keeps
        (``export_int8``, FX path): the frozen ``[act_lo, act_hi]``; None when its inputs stay float
        or no range was fixed (the export then calibrates one)."""
        if is_float(wrapper.bits_a) or not self.needs_range(wrapper):
            return None
        lo, hi = float(wrapper.act_lo), float(wrapper.act_hi)
        return (lo, hi) if hi > lo else None

    def weight(self, wrapper: QuantWrapper, w: torch.Tensor) -> torch.Tensor:
        """The fake-quantized weight used in the forward pass."""
        return fake_quantize_weight(w, wrapper.bits_w)

    def activation(self, wrapper: QuantWrapper, x: torch.Tensor) -> torch.Tensor:
        """The fake-quantized layer input (called once the wrapper is frozen)."""
        return fake_quantize_activation(x, wrapper.bits_a, wrapper.act_lo, wrapper.act_hi)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


ALGORITHMS: Registry[type[QuantAlgorithm]] = Registry(
    "quantization algorithm", unknown_error=UnknownQuantizationNameError, duplicate_error=QuantizationError
)
"""Registered quantization algorithms by name (the name a spec writes)."""

_A = TypeVar("_A", bound="type[QuantAlgorithm]")


def register_algorithm(name: str) -> Callable[[_A], _A]:
    """Class decorator registering a :class:`QuantAlgorithm` subclass under ``name``."""

    def deco(cls: _A) -> _A:
        ALGORITHMS.register(name, cls)
        cls.name = name
        return cls

    return deco


def get_algorithm(algorithm: str | QuantAlgorithm) -> QuantAlgorithm:
    """An instance of the registered algorithm (an instance is returned as is).

    Raises:
        UnknownQuantizationNameError: Unknown name (a :class:`~slimtune.errors.QuantizationError`); the
            message suggests the closest known name and lists the known ones.
    """
    if isinstance(algorithm, QuantAlgorithm):
        return algorithm
    return ALGORITHMS.get(algorithm)()
