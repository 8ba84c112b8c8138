"""Search strategies: each an Optuna sampler over the shared search space, registered by name.

========== ============================================================
name       algorithm
========== ============================================================
uniform    one sparsity for every group, swept over a grid (baseline)
random     random search (Optuna RandomSampler)
tpe        TPE / MOTPE (Optuna TPESampler, constant liar)
nsga2      NSGA-II (Optuna NSGAIISampler), the default
========== ============================================================

A new strategy is one module with a :class:`Strategy` subclass decorated with
:func:`register_strategy`, imported below.
"""

from __future__ import annotations

from slimtune.strategies._base import STRATEGIES, Strategy, get_strategy, register_strategy
from slimtune.strategies import nsga2, random_search, tpe, uniform  # noqa: F401  (registration)

__all__ = ["STRATEGIES", "Strategy", "get_strategy", "register_strategy"]
