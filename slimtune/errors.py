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


class SpecError(SlimtuneError, ValueError):
    """A spec file is invalid or its task cannot be built.

    The message names the file and the field as a dotted path, e.g.
    ``examples/digits.yaml: strategy.name: unknown strategy 'foo'; known: nsga2, random, tpe, uniform``.

    Attributes:
        problem: What is wrong (and, where possible, what to do about it).
        source: The spec file (or ``"<string>"`` for a spec given as data).
        field: The dotted path of the offending field (``None`` for the whole file).
    """

    def __init__(self, problem: str, *, source: str | None = None, field: str | None = None) -> None:
        self.problem = problem
        self.source = source
        self.field = field
        super().__init__(": ".join([part for part in (source, field) if part] + [problem]))
