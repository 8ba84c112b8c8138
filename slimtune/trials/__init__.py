"""Trials: the task, the objective, the cost function, and running studies on a storage."""

from __future__ import annotations

from slimtune.trials.cost import OBJECTIVES, Constraint, Cost, parse_constraint
from slimtune.trials.objective import Objective, TrialFailure
from slimtune.trials.runner import (
    DEFAULT_STORAGE,
    bit_sensitivity_table,
    export_model,
    load_model,
    make_storage,
    open_study,
    pareto_front,
    search,
    sensitivity_table,
    studies_summary,
    trials_table,
)
from slimtune.trials.task import Task

__all__ = [
    "DEFAULT_STORAGE",
    "OBJECTIVES",
    "Constraint",
    "Cost",
    "Objective",
    "Task",
    "TrialFailure",
    "bit_sensitivity_table",
    "export_model",
    "load_model",
    "make_storage",
    "open_study",
    "pareto_front",
    "parse_constraint",
    "search",
    "sensitivity_table",
    "studies_summary",
    "trials_table",
]
