"""``uniform``: the same sparsity for every group, swept over a grid (the baseline to beat).

One parameter, ``sparsity/uniform``, takes ``n_trials`` evenly spaced values between ``low`` and
``high`` (Optuna's ``GridSampler``; several workers share the grid). Sensitivity is not used:
this is plain uniform pruning, the reference every automatic strategy must dominate.

Example:
    >>> from slimtune.strategies import get_strategy
    >>> get_strategy("uniform", low=0.1, high=0.7).params["high"]
    0.7
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna

from slimtune.strategies._base import Strategy, register_strategy

if TYPE_CHECKING:
    from slimtune.compressors.plan import CompressionPlan
    from slimtune.search_spaces import SearchSpace

PARAM = "sparsity/uniform"


@register_strategy
class Uniform(Strategy):
    """Uniform sparsity sweep. Parameters: ``low`` (default 0.1), ``high`` (default: the space's
    ``max_sparsity``), ``points`` (grid size; default: ``n_trials``)."""

    name = "uniform"
    defaults = {"low": 0.1, "high": None, "points": None}
    uses_sensitivity = False

    def _range(self, space: SearchSpace) -> tuple[float, float]:
        high = self.params["high"] if self.params["high"] is not None else space.options.max_sparsity
        return float(self.params["low"]), float(high)

    def sampler(
        self, space: SearchSpace, n_objectives: int, seed: int, n_trials: int | None
    ) -> optuna.samplers.BaseSampler:
        low, high = self._range(space)
        points = int(self.params["points"] or n_trials or 10)
        grid = [round(float(v), 4) for v in np.linspace(low, high, max(points, 1))]
        return optuna.samplers.GridSampler({PARAM: grid}, seed=seed)

    def suggest(self, trial: optuna.trial.Trial, space: SearchSpace) -> dict[str, float]:
        low, high = self._range(space)
        return {PARAM: trial.suggest_float(PARAM, low, high)}

    def plan(self, params: Mapping[str, Any], space: SearchSpace) -> CompressionPlan:
        return space.plan(space.uniform(float(params[PARAM]), clip=False))

    def seeds(self, space: SearchSpace) -> list[dict[str, float]]:
        return []
