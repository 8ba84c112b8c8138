"""``random``: independent uniform sampling of every group's sparsity (Optuna's RandomSampler)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import optuna

from slimtune.strategies._base import Strategy, register_strategy

if TYPE_CHECKING:
    from slimtune.search_spaces import SearchSpace


@register_strategy
class Random(Strategy):
    """Random search over per-group sparsities; no parameters."""

    name = "random"

    def sampler(
        self, space: SearchSpace, n_objectives: int, seed: int, n_trials: int | None
    ) -> optuna.samplers.BaseSampler:
        return optuna.samplers.RandomSampler(seed=seed)
