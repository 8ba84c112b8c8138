"""``nsga2``: NSGA-II (Deb et al. 2002; Optuna's NSGAIISampler), the default multi-objective search.

Honours Optuna constraints (constrained domination), so the front holds feasible trials.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import optuna

from slimtune.strategies._base import Strategy, register_strategy

if TYPE_CHECKING:
    from slimtune.search_spaces import SearchSpace


@register_strategy
class NSGA2(Strategy):
    """NSGA-II over per-group sparsities. Parameters: ``population_size`` (default 8),
    ``mutation_prob`` (default None: 1 / number of groups), ``crossover_prob`` (default 0.9)."""

    name = "nsga2"
    defaults = {"population_size": 8, "mutation_prob": None, "crossover_prob": 0.9}

    def sampler(
        self, space: SearchSpace, n_objectives: int, seed: int, n_trials: int | None
    ) -> optuna.samplers.BaseSampler:
        return optuna.samplers.NSGAIISampler(
            population_size=int(self.params["population_size"]),
            mutation_prob=self.params["mutation_prob"],
            crossover_prob=float(self.params["crossover_prob"]),
            seed=seed,
        )
