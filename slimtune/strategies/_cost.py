"""One number to minimise per trial, for strategies that compare trials one to one.

Simulated annealing's Metropolis rule and NetAdapt's "keep the best candidate" need a scalar,
whatever the study optimises. :func:`trial_cost` takes it from the study's cost function:

* one value (one objective, or weighted objectives): that value, negated when maximised;
* several objectives: the task's metric (objective ``accuracy``), negated when maximised — the
  strategies hold the resource at their target, so the metric is what is left to compare; a
  study without ``accuracy`` sums its signed values;
* plus the trial's total constraint violation (Optuna constraints, > 0 when violated), so an
  infeasible trial is worse than a feasible one with the same values.

A trial that did not complete costs ``inf``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from optuna.study import StudyDirection
from optuna.trial import TrialState

from slimtune import attributes

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial


def signed_values(study: optuna.Study, values: list[float]) -> list[float]:
    """Values turned into "lower is better" with the study's directions."""
    return [v if d == StudyDirection.MINIMIZE else -v for v, d in zip(values, study.directions)]


def scalar_cost(study: optuna.Study, values: list[float] | None, constraints: dict[str, float] | None = None) -> float:
    """The scalar cost of a result (see the module docstring); ``inf`` without values."""
    if values is None or any(v is None or (isinstance(v, float) and math.isnan(v)) for v in values):
        return math.inf
    signed = signed_values(study, list(values))
    if len(signed) == 1:
        cost = signed[0]
    else:
        objectives = study.user_attrs.get(attributes.Study.OBJECTIVES) or []
        cost = signed[objectives.index("accuracy")] if "accuracy" in objectives else sum(signed)
    violation = sum(max(0.0, float(c)) for c in (constraints or {}).values())
    return float(cost + violation)


def trial_cost(study: optuna.Study, trial: FrozenTrial) -> float:
    """:func:`scalar_cost` of a finished trial (``inf`` unless COMPLETE)."""
    if trial.state != TrialState.COMPLETE:
        return math.inf
    return scalar_cost(study, trial.values, trial.constraints)
