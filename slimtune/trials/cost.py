"""The cost of a trial: objectives and constraints over its measures.

Measures of a trial (all stored, whatever is optimised):

============== =====================================================================
``accuracy``   the task's metric (whatever its name), absolute
``accuracy_drop``  original metric − metric (for a minimised metric: metric − original)
``flops``      MACs per sample relative to the original model (``flops_abs``: absolute)
``params``     parameters, relative (``params_abs``)
``size``       bytes, relative (``size_abs``)
``latency``    measured latency, relative (``latency_abs``: milliseconds), in the runtime ``latency`` names
``memory``     peak memory of a forward at the measured batch size, relative (``memory_abs``: bytes)
============== =====================================================================

Latency and memory are measured on the trial's device and relative to the original model measured
on the same device. Latency is measured in one runtime for the whole study (``Cost(latency=...)``, the
spec's ``latency:``): eager PyTorch by default, ``torch.compile`` or ONNX Runtime, at a batch size and a
thread count (:class:`~slimtune.compressors.measures.runtimes.LatencySetting`).

Objectives are chosen from ``accuracy``, ``flops``, ``params``, ``latency``, ``size`` and ``memory``
(resources are minimised as ratios to the original, so objectives of different scales compare).
Several objectives give a Pareto search; ``weights`` turn them into one weighted scalar to
minimise. Constraints are strings ``"<measure> <= value"`` or ``">="``, passed to Optuna as
``trial.set_constraint`` so the front holds feasible trials only.

Example:
    >>> cost = Cost(["accuracy", "flops"], constraints=["accuracy_drop <= 0.01"])
    >>> cost.directions
    ['maximize', 'minimize']
    >>> m = {"accuracy": 0.97, "accuracy_drop": 0.02, "flops": 0.4}
    >>> cost.values(m), cost.constraint_values(m)
    ([0.97, 0.4], {'accuracy_drop <= 0.01': 0.01})
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from slimtune.errors import ConfigError, did_you_mean

OBJECTIVES: dict[str, str | None] = {
    "accuracy": None,  # the task's direction
    "flops": "minimize",
    "params": "minimize",
    "latency": "minimize",
    "size": "minimize",
    "memory": "minimize",
}
"""Objective names and their direction (``None``: the task's metric direction)."""

CONSTRAINT_MEASURES = (
    "accuracy",
    "accuracy_drop",
    "flops",
    "params",
    "size",
    "latency",
    "memory",
    "flops_abs",
    "params_abs",
    "size_abs",
    "latency_abs",
    "memory_abs",
)

_CONSTRAINT_RE = re.compile(r"^\s*([a-z_]+)\s*(<=|>=)\s*([-+0-9.eE]+)\s*$")


@dataclass(frozen=True)
class Constraint:
    """``measure op bound``; :meth:`value` is ≤ 0 when satisfied (Optuna's convention)."""

    measure: str
    op: str
    bound: float

    @property
    def text(self) -> str:
        return f"{self.measure} {self.op} {self.bound:g}"

    def value(self, measures: Mapping[str, Any]) -> float:
        v = measures.get(self.measure)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return math.inf
        return float(v) - self.bound if self.op == "<=" else self.bound - float(v)


def parse_constraint(text: str) -> Constraint:
    """Parse ``"flops <= 0.5"``; errors say what is wrong and list the measures."""
    if isinstance(text, Constraint):
        return text
    m = _CONSTRAINT_RE.match(str(text))
    if not m:
        raise ConfigError(
            f"constraint {text!r} must look like '<measure> <= <number>' or '<measure> >= <number>'",
            field="constraints",
        )
    measure, op, bound = m.group(1), m.group(2), m.group(3)
    if measure not in CONSTRAINT_MEASURES:
        raise ConfigError(
            f"constraint {text!r}: unknown measure {measure!r}{did_you_mean(measure, CONSTRAINT_MEASURES)}; "
            f"known: {', '.join(CONSTRAINT_MEASURES)}",
            field="constraints",
        )
    try:
        value = float(bound)
    except ValueError:
        raise ConfigError(f"constraint {text!r}: {bound!r} is not a number", field="constraints") from None
    return Constraint(measure, op, value)


def check_objectives(objectives: str | Sequence[str]) -> list[str]:
    """The objectives as a list; a :class:`~slimtune.errors.ConfigError` names a bad one."""
    names = [objectives] if isinstance(objectives, str) else list(objectives or ())
    if not names:
        raise ConfigError(f"must list at least one objective; known: {', '.join(OBJECTIVES)}", field="objectives")
    for i, name in enumerate(names):
        if name not in OBJECTIVES:
            raise ConfigError(
                f"unknown objective {name!r}{did_you_mean(str(name), OBJECTIVES)}; known: {', '.join(OBJECTIVES)}",
                field=f"objectives[{i}]",
            )
        if name in names[:i]:
            raise ConfigError(f"objective {name!r} is listed twice", field=f"objectives[{i}]")
    return names


def check_weights(weights: Mapping[str, float], objectives: Sequence[str]) -> dict[str, float]:
    """One finite weight >= 0 per objective."""
    if not isinstance(weights, Mapping):
        raise ConfigError(f"expected a mapping of objective: weight, got {weights!r}", field="weights")
    missing, extra = set(objectives) - set(weights), set(weights) - set(objectives)
    if missing or extra:
        raise ConfigError(
            f"must give exactly one weight per objective; missing {sorted(missing)}, extra {sorted(extra)}",
            field="weights",
        )
    for name, w in weights.items():
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ConfigError(f"expected a finite number >= 0, got {w!r}", field=f"weights.{name}")
    return {name: float(w) for name, w in weights.items()}


class Cost:
    """Objectives, optional weights and constraints.

    Args:
        objectives: Names from :data:`OBJECTIVES`.
        metric_direction: The task's metric direction (``accuracy``'s direction).
        weights: Optional ``{objective: weight}``: one scalar ``Σ w·v`` (maximised objectives
            enter with a minus sign) is minimised instead of a Pareto search.
        constraints: Strings (see :func:`parse_constraint`) or :class:`Constraint`.
        latency: How the ``latency`` measure is taken, for objectives and constraints alike: a
            :class:`~slimtune.compressors.measures.runtimes.LatencySetting` or what its ``parse`` reads
            (``"onnxruntime"``, ``{"runtime": "compile", "batch": 1, "threads": 1}``); None: eager PyTorch, one
            thread, at the study's measure batch.
    """

    def __init__(
        self,
        objectives: Sequence[str] = ("accuracy", "flops"),
        metric_direction: str = "maximize",
        weights: Mapping[str, float] | None = None,
        constraints: Sequence[str | Constraint] | None = None,
        latency: Any = None,
    ) -> None:
        from slimtune.compressors.measures.runtimes import LatencySetting

        objectives = check_objectives(objectives)
        if weights is not None:
            weights = check_weights(weights, objectives)
        self.objectives = objectives
        self.metric_direction = metric_direction
        self.weights = dict(weights) if weights is not None else None
        self.constraints = [parse_constraint(c) for c in (constraints or [])]
        self.latency = LatencySetting.parse(latency)

    def direction_of(self, objective: str) -> str:
        return OBJECTIVES[objective] or self.metric_direction

    @property
    def directions(self) -> list[str]:
        if self.weights is not None:
            return ["minimize"]
        return [self.direction_of(o) for o in self.objectives]

    @property
    def needs_latency(self) -> bool:
        return self._needs("latency")

    @property
    def needs_memory(self) -> bool:
        return self._needs("memory")

    def _needs(self, measure: str) -> bool:
        return measure in self.objectives or any(c.measure.startswith(measure) for c in self.constraints)

    def values(self, measures: Mapping[str, Any]) -> list[float]:
        vals = [float(measures[o]) for o in self.objectives]
        if self.weights is None:
            return vals
        total = 0.0
        for o, v in zip(self.objectives, vals):
            sign = 1.0 if self.direction_of(o) == "minimize" else -1.0
            total += sign * self.weights[o] * v
        return [total]

    def constraint_values(self, measures: Mapping[str, Any]) -> dict[str, float]:
        return {c.text: c.value(measures) for c in self.constraints}

    def check(self, baseline: Mapping[str, Any], metric_direction: str | None = None) -> list[str]:
        """What is wrong before any trial runs, given the original model's measures: a metric that is
        finite but absurd, and constraints no compressed model can meet. One sentence each."""
        problems = []
        metric = baseline.get("accuracy")
        if metric is not None and math.isfinite(float(metric)) and abs(float(metric)) > ABSURD_METRIC:
            problems.append(
                f"task.evaluate returns {float(metric):g} on the original model: a metric that large is likely a bug "
                "(a sum instead of a mean, an uninitialised value); trials compare against it"
            )
        for c in self.constraints:
            why = _impossible(c, baseline, metric_direction or self.metric_direction)
            if why:
                problems.append(f"constraint '{c.text}' cannot be met: {why}; every trial will be infeasible")
        return problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "objectives": self.objectives,
            "directions": self.directions,
            "weights": self.weights,
            "constraints": [c.text for c in self.constraints],
            "latency": self.latency.to_dict(),
        }


#: the measures of a model besides its metric (each also stored relative to the original model)
MEASURED = ("flops", "params", "size", "latency", "memory")
#: measures that depend on the device they are measured on
DEVICE_MEASURES = ("latency", "memory")
#: a metric of larger magnitude on the original model gets a warning
ABSURD_METRIC = 1e12
#: measures that compression can only lower: relative to the original, in (0, 1]
_SHRINKING = ("flops", "params", "size")


def _impossible(c: Constraint, baseline: Mapping[str, Any], direction: str) -> str | None:
    """Why constraint ``c`` holds for no compressed model, or None."""
    if c.measure in _SHRINKING:
        if c.op == ">=" and c.bound > 1:
            return f"{c.measure} is relative to the original model, and compression does not make it larger than 1"
        if c.op == "<=" and c.bound <= 0:
            return f"{c.measure} is relative to the original model and always above 0"
    always_positive = ("latency", "latency_abs", "memory", "memory_abs", "flops_abs", "params_abs", "size_abs")
    if c.measure in always_positive and c.op == "<=" and c.bound <= 0:
        return f"{c.measure} is always above 0"
    metric = baseline.get("accuracy")
    if c.measure == "accuracy_drop" and metric is not None and 0 <= float(metric) <= 1:
        # a metric in [0, 1] (accuracy, F1, AUC ...) drops by at most its original value (or rises to 1)
        low, high = (
            (float(metric) - 1, float(metric)) if direction == "maximize" else (-float(metric), 1 - float(metric))
        )
        if c.op == ">=" and c.bound > high:
            return f"the metric is {float(metric):g} on the original model, so it cannot drop by more than {high:g}"
        if c.op == "<=" and c.bound < low:
            return f"the drop of a metric in [0, 1] from {float(metric):g} is at least {low:g}"
    return None


def relative_measures(
    measures: Mapping[str, Any], baseline: Mapping[str, Any], metric_direction: str
) -> dict[str, Any]:
    """All measures of a trial: absolute (``*_abs``), relative to ``baseline`` and the metric drop."""
    out: dict[str, Any] = {"accuracy": measures["accuracy"]}
    sign = 1.0 if metric_direction == "maximize" else -1.0
    out["accuracy_drop"] = sign * (float(baseline["accuracy"]) - float(measures["accuracy"]))
    for key in MEASURED:
        v, b = measures.get(key), baseline.get(key)
        out[f"{key}_abs"] = v
        out[key] = (float(v) / float(b)) if v is not None and b not in (None, 0) else None
    return out
