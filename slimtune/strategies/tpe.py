"""``tpe``: Tree-structured Parzen Estimator (Bergstra et al. 2011; Optuna's TPESampler).

Multivariate, with the constant liar so that parallel workers do not propose the same point;
handles several objectives (MOTPE) and Optuna constraints.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import optuna

from slimtune.strategies._base import Strategy, register_strategy

if TYPE_CHECKING:
    from slimtune.search_spaces import SearchSpace


@register_strategy
class TPE(Strategy):
    """TPE over per-group sparsities. Parameters: ``n_startup_trials`` (default 6),
    ``multivariate`` (default True)."""

    name = "tpe"
    defaults = {"n_startup_trials": 6, "multivariate": True}

    def sampler(
        self, space: SearchSpace, n_objectives: int, seed: int, n_trials: int | None
    ) -> optuna.samplers.BaseSampler:
        return optuna.samplers.TPESampler(
            seed=seed,
            n_startup_trials=int(self.params["n_startup_trials"]),
            multivariate=bool(self.params["multivariate"]),
            constant_liar=True,
        )
