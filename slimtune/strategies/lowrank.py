"""``lowrank``: per-layer ranks of a low-rank factorization, searched alone or with the per-group sparsities.

Each factorizable layer (Linear, ungrouped Conv2d; ``space.factorize_layers`` restricts them) gets a parameter
``rank/<layer>`` choosing its kept rank ratio from ``space.ranks`` (1.0 keeps the layer whole); a trial
factorizes the chosen layers (truncated SVD or Tucker-2, :mod:`slimtune.compressors.lowrank`), fine-tunes and
is measured like any other, and FLOPs, parameters, size and the resource predictor count the factors. The
rank of each layer is a hyperparameter, as in rank-selection searches (e.g. Kim et al. 2016 choose ranks per
layer; here an Optuna sampler does, against the study's objectives).

With ``prune: true`` the sparsities of the prunable groups are searched too (pruning first, then factorizing
the smaller layers): the same sampler proposes both, as ``joint`` does for bit-widths and sparsities (``joint``
itself also searches ranks when the space lists them, with its budget repair acting on the sparsities and
bit-widths only).

The first trials are the space's rank seeds: every layer whole (the original, or with ``prune: true`` the
space's sparsity seeds), the singular-value energy allocation (each layer at the smallest choice of
``space.ranks`` keeping ``space.rank_energy`` of its squared singular values) and, with sensitivity
(``space.sensitivity``, the default), each layer at its lowest rank ratio whose one-shot metric drop alone is
within ``space.tolerance`` (:func:`~slimtune.trials.sensitivity.rank_sensitivity_table`, cached in the storage).

Parameters (spec ``strategy`` section): ``sampler`` (the inner strategy whose sampler proposes: ``nsga2`` by
default, ``tpe`` or ``random``), ``sampler_params`` (``{}``), ``prune`` (``false``).

Example:
    >>> import slimtune, torch
    >>> from slimtune.examples.models import mlp
    >>> model, x = mlp(16, (32, 24), 4).eval(), torch.randn(64, 16)
    >>> ref = model(x).detach()
    >>> task = slimtune.Task(model, x[:1], lambda m: -float((m(x).detach() - ref).square().mean()))
    >>> space = {"ranks": [0.25, 0.5, 1.0], "sensitivity": False}
    >>> study = slimtune.search(task, strategy="lowrank", n_trials=3, storage="memory",
    ...                         objectives=["accuracy", "flops"], space=space, progress=False, save_models="none")
    >>> sorted({k.split("/")[0] for k in study.trials[0].params})
    ['rank']
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import optuna

from slimtune.errors import StrategyError
from slimtune.search_spaces.space import RANK_PREFIX, SPARSITY_PREFIX
from slimtune.strategies._base import Strategy, get_strategy, register_strategy
from slimtune.strategies.bitwidth import check_inner

if TYPE_CHECKING:
    from slimtune.search_spaces import SearchSpace


def rank_names(space: SearchSpace, strategy: str) -> list[str]:
    """The space's ``rank/`` parameters; an error naming ``space.ranks`` without any."""
    names = [k for k in space.distributions() if k.startswith(RANK_PREFIX)]
    if not names:
        raise StrategyError(
            f"strategy {strategy!r} searches ranks but the space has none: set space.ranks "
            "(e.g. ranks: [0.25, 0.5, 1.0]; 1.0 keeps a layer whole)",
            field="space.ranks",
        )
    return names


@register_strategy
class LowRank(Strategy):
    """Rank search for low-rank factorization (module docstring)."""

    name = "lowrank"
    defaults = {"sampler": "nsga2", "sampler_params": {}, "prune": False}

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        check_inner(self.name, self.params)
        if not isinstance(self.params["prune"], bool):
            raise StrategyError(
                f"strategy 'lowrank': prune must be true or false, got {self.params['prune']!r}",
                field="strategy.prune",
            )

    def sampler(
        self, space: SearchSpace, n_objectives: int, seed: int, n_trials: int | None
    ) -> optuna.samplers.BaseSampler:
        rank_names(space, self.name)
        return get_strategy(self.params["sampler"], **self.params["sampler_params"]).sampler(
            space, n_objectives, seed, n_trials
        )

    def _searched(self, name: str) -> bool:
        return name.startswith(RANK_PREFIX) or (self.params["prune"] and name.startswith(SPARSITY_PREFIX))

    def suggest(self, trial: optuna.trial.Trial, space: SearchSpace) -> dict[str, Any]:
        params: dict[str, Any] = {}
        for k, d in space.distributions().items():
            if not self._searched(k):
                continue
            if isinstance(d, optuna.distributions.CategoricalDistribution):
                params[k] = trial.suggest_categorical(k, d.choices)
            else:
                params[k] = trial.suggest_float(k, d.low, d.high)  # type: ignore[attr-defined]
        return params

    def seeds(self, space: SearchSpace) -> list[dict[str, float]]:
        names = rank_names(space, self.name)
        whole = {k: max(space.options.ranks or (1.0,)) for k in names}
        energy = space.energy_ranks()
        safe = {RANK_PREFIX + layer: r for layer, r in getattr(space, "safe_ranks", {}).items()}
        if not self.params["prune"]:
            return [p for i, p in enumerate([whole, energy, safe]) if p and p not in [whole, energy, safe][:i]]
        out = []
        for seed in space.seeds():
            sparsities = {k: v for k, v in seed.items() if k.startswith(SPARSITY_PREFIX)}
            ranks = {k: v for k, v in seed.items() if k.startswith(RANK_PREFIX)}
            out.append({**sparsities, **(ranks or whole)})
        return out
