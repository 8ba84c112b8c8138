"""Trials: the task, one trial's objective, the cost, and running studies on a storage.

Where each concern lives:

- :mod:`~slimtune.trials.task` — the user's :class:`Task`;
- :mod:`~slimtune.trials.config` — :class:`SearchConfig` (what a search is asked to do) and
  :class:`RayOptions`;
- :mod:`~slimtune.trials.storage` — storage URLs, opening storages, heartbeats, artifacts folder;
- :mod:`~slimtune.trials.search` — :func:`search`, the entry point;
- :mod:`~slimtune.trials.study` — preparing a study (trace, sensitivity, space, sampler, objective);
- :mod:`~slimtune.trials.driver` — the local trial loop and the budget over several workers;
- :mod:`~slimtune.trials.ray_backend` — the same loop in Ray workers;
- :mod:`~slimtune.trials.objective` — one trial: plan → compress → fine-tune → evaluate → measures;
- :mod:`~slimtune.trials.cost` — objectives and constraints;
- :mod:`~slimtune.trials.sensitivity` — the cached sensitivity tables;
- :mod:`~slimtune.trials.results` — trials tables, Pareto fronts, saved models;
- :mod:`~slimtune.trials.spec` — YAML specs.

Attribute names live in :mod:`slimtune.attributes`, the Optuna internals slimtune uses in
:mod:`slimtune.optuna_internals`, exceptions in :mod:`slimtune.errors`.
"""

from __future__ import annotations

from slimtune.errors import TrialFailure
from slimtune.trials.config import RayOptions, SearchConfig
from slimtune.trials.cost import OBJECTIVES, Constraint, Cost, parse_constraint
from slimtune.trials.objective import Objective
from slimtune.trials.results import export_model, load_model, pareto_front, studies_summary, trials_table
from slimtune.trials.search import run, run_study, search
from slimtune.trials.sensitivity import bit_sensitivity_table, sensitivity_table
from slimtune.trials.storage import DEFAULT_STORAGE, Heartbeat, make_storage, open_study
from slimtune.trials.task import Task

__all__ = [
    "DEFAULT_STORAGE",
    "OBJECTIVES",
    "Constraint",
    "Cost",
    "Heartbeat",
    "Objective",
    "RayOptions",
    "SearchConfig",
    "Task",
    "TrialFailure",
    "bit_sensitivity_table",
    "export_model",
    "load_model",
    "make_storage",
    "open_study",
    "pareto_front",
    "parse_constraint",
    "run",
    "run_study",
    "search",
    "sensitivity_table",
    "studies_summary",
    "trials_table",
]
