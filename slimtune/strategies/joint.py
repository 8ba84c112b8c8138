"""``joint``: per-group sparsities and per-layer bit-widths searched together.

Pruning and quantization interact (a pruned layer tolerates fewer bits, or more); searching their
policies jointly finds compressed models neither search finds alone (Wang et al., "APQ: Joint
Search for Network Architecture, Pruning and Quantization Policy", CVPR 2020; Yang et al.,
"Automatic Neural Network Compression by Sparsity-Quantization Joint Learning: A Constrained
Optimization-based Approach", CVPR 2020). Every trial's plan holds both: ``sparsity/<group>``
for every prunable group and ``bits_w/<layer>`` (and ``bits_a/<layer>``) for every quantizable
layer, from one Optuna sampler (``sampler``: ``nsga2`` by default, ``tpe`` or ``random``).

With a budget (a ``flops``, ``params``, ``size`` or ``latency`` constraint, or ``resource`` and
``target``), proposals that break it are repaired (:mod:`slimtune.strategies._repair`):
sparsities are raised along one line until the budget holds; if even every group at its upper
bound misses a size budget, bit-widths are lowered HAQ-style (where the bit sensitivity costs
least per byte saved) and the sparsities lowered again to the least that still meets it. The
first trials are, with a budget, the resource-aware sensitivity allocation
(:meth:`SearchSpace.allocate <slimtune.search_spaces.SearchSpace.allocate>`, rescaled to the
budget, widest bit-widths), then the space's seeds (uniform and sensitivity-derived sparsities;
widest and sensitivity-safe bit-widths), repaired likewise.

Parameters (spec ``strategy`` section): ``resource`` and ``target`` (default: the study's first
``flops``/``params``/``size``/``latency`` constraint; none: no repair), ``sampler`` (``nsga2``)
and ``sampler_params`` (``{}``). The space must list bit-widths (``space.bits_w``) or ranks (``space.ranks``:
the ``rank/<layer>`` parameters of a low-rank factorization, searched with the rest; the budget repair moves
sparsities and bit-widths only, and predicts the budget without the factorization, so it may prune more than a
factorized plan needs — a departure from a budget-exact search, named here).

Example:
    >>> import slimtune, torch
    >>> from slimtune.examples.models import mlp
    >>> model, x = mlp(16, (32, 24), 4).eval(), torch.randn(64, 16)
    >>> ref = model(x).detach()
    >>> task = slimtune.Task(model, x[:1], lambda m: -float((m(x).detach() - ref).square().mean()))
    >>> study = slimtune.search(task, strategy="joint", n_trials=3, storage="memory", objectives=["accuracy", "size"],
    ...                         space={"bits_w": [4, 8, 32], "sensitivity": False}, progress=False, save_models="none")
    >>> sorted({k.split("/")[0] for k in study.trials[0].params})
    ['bits_w', 'sparsity']
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import optuna
from optuna.distributions import CategoricalDistribution

from slimtune.search_spaces.space import BITS_A_PREFIX, BITS_W_PREFIX, RANK_PREFIX, SPARSITY_PREFIX
from slimtune.strategies._base import Strategy, get_strategy, register_strategy
from slimtune.strategies._budget import RESOURCES, check_budget_params
from slimtune.strategies._repair import BudgetRepairSampler
from slimtune.strategies.bitwidth import bit_names, check_inner

if TYPE_CHECKING:
    from slimtune.search_spaces import SearchSpace

BITS_PREFIXES = (BITS_W_PREFIX, BITS_A_PREFIX)


@register_strategy
class Joint(Strategy):
    """Joint pruning and mixed-precision search (module docstring)."""

    name = "joint"
    defaults = {"resource": None, "target": None, "sampler": "nsga2", "sampler_params": {}}

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        check_budget_params(self.name, self.params)
        check_inner(self.name, self.params)

    def sampler(self, space: SearchSpace, n_objectives: int, seed: int, n_trials: int | None) -> BudgetRepairSampler:
        dists = space.distributions()
        ranks = [k for k in dists if k.startswith(RANK_PREFIX)]
        bits = bit_names(space, self.name) if not ranks else [k for k in dists if k.startswith(BITS_PREFIXES)]
        names = [k for k in dists if k.startswith(SPARSITY_PREFIX)] + bits + ranks
        inner = get_strategy(self.params["sampler"], **self.params["sampler_params"]).sampler(
            space, n_objectives, seed, n_trials
        )
        return BudgetRepairSampler(
            inner,
            space,
            names,
            self.name,
            self.params["resource"],
            self.params["target"],
            RESOURCES,
            space.seeds(),
            allocate=True,
        )

    def suggest(self, trial: optuna.trial.Trial, space: SearchSpace) -> dict[str, Any]:
        params: dict[str, Any] = {}
        for k, d in space.distributions().items():
            if isinstance(d, CategoricalDistribution):
                params[k] = trial.suggest_categorical(k, d.choices)
            else:
                params[k] = trial.suggest_float(k, d.low, d.high)  # type: ignore[attr-defined]
        return params

    def seeds(self, space: SearchSpace) -> list[dict[str, float]]:
        return []  # the sampler proposes the space's seeds first, repaired to the budget
