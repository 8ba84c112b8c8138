"""Exception types of slimtune.

Every error names what is wrong (the field, the layer, the group or the file) and, where it can,
what to do about it.
"""

from __future__ import annotations


class SlimtuneError(Exception):
    """Base class of all errors raised by slimtune."""


class PlanError(SlimtuneError, ValueError):
    """A :class:`~slimtune.compressors.CompressionPlan` is invalid for the model it is applied to."""


class TraceError(SlimtuneError):
    """A model could not be traced into a dependency graph (names the module or op that failed)."""


class CriterionError(SlimtuneError, ValueError):
    """A pruning criterion cannot be computed (unknown name, missing data or gradients)."""
