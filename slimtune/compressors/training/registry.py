"""The registry of compressors by name, and the check of a plan's compressor parameters.

Kept out of :mod:`~slimtune.compressors.training._base` (which re-exports it) so that
:meth:`CompressionPlan.validate <slimtune.compressors.CompressionPlan.validate>` can check a plan's
``compressor`` and ``compressor_params`` without importing the compressors (which import the plan).
The compressors register themselves when :mod:`slimtune.compressors.training` imports them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from slimtune.errors import PlanConfigError, UnknownCompressorError
from slimtune.registry import Registry

if TYPE_CHECKING:
    from torch import nn

    from slimtune.compressors.plan import CompressionPlan
    from slimtune.compressors.training._base import TrainingContext


class Compressor(Protocol):
    """``compressor(model, plan, example_inputs, context, **params) -> compressed model``."""

    def __call__(
        self, model: nn.Module, plan: CompressionPlan, example_inputs: Any, context: TrainingContext, **params: Any
    ) -> nn.Module: ...


@dataclass(frozen=True)
class CompressorEntry:
    """A registered compressor: its function, its parameters with defaults, whether it trains."""

    name: str
    fn: Compressor
    defaults: Mapping[str, Any]
    trains: bool


COMPRESSORS: Registry[CompressorEntry] = Registry(
    "compressor", unknown_error=UnknownCompressorError, field="plan.compressor", identity=lambda entry: entry.fn
)
"""Every compressor by the name a plan's ``compressor`` field (and a spec) uses."""


def register_compressor(
    name: str, defaults: Mapping[str, Any] | None = None, trains: bool = False
) -> Callable[[Compressor], Compressor]:
    """Decorator registering a compressor under ``name``; ``defaults`` lists its parameters (a plan's
    ``compressor_params`` may set only these); ``trains`` marks compressors that need training data."""

    def deco(fn: Compressor) -> Compressor:
        COMPRESSORS.register(name, CompressorEntry(name, fn, dict(defaults or {}), trains))
        return fn

    return deco


def get_compressor(name: str) -> CompressorEntry:
    """The compressor registered as ``name``; an unknown name raises
    :class:`~slimtune.errors.UnknownCompressorError` (a :class:`~slimtune.errors.PlanError` naming
    ``plan.compressor``, the closest known name and the known ones)."""
    return COMPRESSORS.get(name)


def check_compressor_params(name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` over the compressor's defaults; unknown parameters raise a
    :class:`~slimtune.errors.PlanConfigError` (field ``plan.compressor_params``) naming them."""
    entry = get_compressor(name)
    unknown = sorted(set(params) - set(entry.defaults))
    if unknown:
        known = ", ".join(sorted(entry.defaults)) or "none"
        raise PlanConfigError(
            f"unknown parameter(s) {unknown} of compressor {name!r}; known: {known}", field="plan.compressor_params"
        )
    return {**entry.defaults, **params}
