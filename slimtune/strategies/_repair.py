"""A sampler that wraps an Optuna sampler and repairs proposals that break a resource budget.

Used by ``bitwidth`` and ``joint``: an inner sampler (TPE, NSGA-II or random, any of the
registered strategies' samplers) proposes bit-widths (and sparsities); a proposal whose predicted
resource exceeds the budget is *repaired* before the trial runs, the way HAQ enforces its
constraint: bit-widths are lowered one step at a time, each time in the layer where the bit
sensitivity table says it costs least metric per unit of resource saved, until the budget is met
(a step goes to the next narrower choice that saves anything: under a bit-width latency budget
2 and 4 bits run in int8 as 8 do, so a layer at 8 bits is not lowered further); sparsities,
where searched, are raised along one line to just meet it first
(:func:`~slimtune.strategies._budget.scale_to_target`). Proposals within the budget are left
alone, so a Pareto search still spreads over the feasible region.

The first trials are the sensitivity priors (each layer at its lowest safe bit-width, every layer
at its widest, and for ``joint`` the space's sparsity seeds), repaired like any proposal; with a
budget, ``joint`` first tries the resource-aware allocation read off the sensitivity table
(:meth:`SearchSpace.allocate <slimtune.search_spaces.SearchSpace.allocate>`, rescaled to just meet
the budget, every layer at its widest bit-width).
Everything is recorded on the trial (``<strategy>.prior``, ``.resource``, ``.repaired``,
``.budget_met``) and derived from the study, so runs resume and workers share the work.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution

from slimtune import attributes, optuna_internals
from slimtune.search_spaces.space import BITS_W_PREFIX, SPARSITY_PREFIX
from slimtune.strategies._base import record
from slimtune.strategies._budget import Budget, ResourceModel, resolve_budget, scale_to_target

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial, TrialState

    from slimtune.search_spaces import SearchSpace


class BudgetRepairSampler(optuna.samplers.BaseSampler):
    """Inner sampler's proposals, repaired to a resource budget (see the module docstring).

    Args:
        inner: The sampler that proposes.
        space: The search space.
        names: The parameters this strategy searches (a subset of ``space.distributions()``).
        strategy: The strategy's name (attribute prefix, error messages).
        resource, target: The budget (None: from the study's constraints; no budget without one).
        allowed: Resources the budget may use.
        priors: Parameter sets proposed (repaired) as the first trials.
        latency: What a ``latency`` budget's model predicts from: ``"channels"`` (the channel
            pruning lookup table) or ``"bits"`` (the bit-width table: int8 / fp32 per layer); see
            :class:`~slimtune.strategies._budget.ResourceModel`.
        allocate: With a budget, propose the resource-aware sensitivity allocation of the
            sparsities first (before ``priors``).
    """

    def __init__(
        self,
        inner: optuna.samplers.BaseSampler,
        space: SearchSpace,
        names: Sequence[str],
        strategy: str,
        resource: str | None,
        target: float | None,
        allowed: Sequence[str],
        priors: Sequence[Mapping[str, Any]] = (),
        latency: str = "channels",
        allocate: bool = False,
    ) -> None:
        self.inner = inner
        self.space = space
        dists = space.distributions()
        self.dists = {n: dists[n] for n in names}
        self.strategy = strategy
        self.resource = resource
        self.target = target
        self.allowed = tuple(allowed)
        self.priors = [dict(p) for p in priors]
        self.latency = latency
        self.allocate = allocate
        self._models: dict[int, tuple[Budget | None, ResourceModel | None]] = {}
        self._drops = _bit_drops(space)
        self._allocations: dict[int, dict[str, Any] | None] = {}  # by study: the budget's allocation prior

    def attr(self, key: str) -> str:
        return f"{self.strategy}.{key}"

    def budget(self, study: optuna.Study) -> tuple[Budget | None, ResourceModel | None]:
        key = optuna_internals.study_key(study)
        if key not in self._models:
            budget = resolve_budget(
                self.strategy, self.resource, self.target, attributes.study_constraints(study), None, None, self.allowed
            )
            model = ResourceModel(self.space, budget.resource, study, self.latency) if budget is not None else None
            self._models[key] = (budget, model)
        return self._models[key]

    # ------------------------------------------------------------------ BaseSampler
    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return dict(self.dists)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if not search_space:
            return {}
        inner_space = {
            k: d for k, d in self.inner.infer_relative_search_space(study, trial).items() if k in search_space
        }
        x = dict(self.inner.sample_relative(study, trial, inner_space)) if inner_space else {}
        priors = self._priors(study)
        prior = self._next_prior(study, trial, len(priors))
        if prior is not None:
            x = {k: v for k, v in priors[prior].items() if k in search_space}
            record(study, trial, self.attr("prior"), prior)
        for name, dist in search_space.items():
            if name not in x:
                x[name] = self.inner.sample_independent(study, trial, name, dist)
        budget, model = self.budget(study)
        if budget is not None and model is not None:
            x, resource, repaired, met = self.repair(x, model, budget.target)
            for key, value in (("resource", resource), ("repaired", repaired), ("budget_met", met)):
                record(study, trial, self.attr(key), value)
        return {k: _inside(v, search_space[k]) for k, v in x.items() if k in search_space}

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self.inner.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.inner.before_trial(study, trial)

    def after_trial(
        self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        self.inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.inner.reseed_rng()

    # ------------------------------------------------------------------ priors
    def _priors(self, study: optuna.Study) -> list[dict[str, Any]]:
        """The priors in the order they are proposed: the budget's sensitivity allocation (with
        ``allocate``), then ``priors``."""
        budget, model = self.budget(study)
        if not self.allocate or budget is None or model is None:
            return self.priors
        key = optuna_internals.study_key(study)
        if key not in self._allocations:
            groups = [n[len(SPARSITY_PREFIX) :] for n in self.dists if n.startswith(SPARSITY_PREFIX)]
            bits = {
                k: v
                for k, v in self.space.uniform(0.0).items()
                if not k.startswith(SPARSITY_PREFIX) and k in self.dists
            }

            def relative(sp: dict[str, float]) -> float:
                return model.relative(self.space.plan({**bits, **{self.space.param_name(g): v for g, v in sp.items()}}))

            x = self.space.allocate(relative, budget.target) if groups else None
            prior: dict[str, Any] | None = None
            if x is not None:
                lower = {g: self.space.options.min_sparsity for g in groups}
                x, _, _ = scale_to_target(
                    {g: x[g] for g in groups}, lower, {g: self.space.upper[g] for g in groups}, relative, budget.target
                )
                prior = {**bits, **{self.space.param_name(g): v for g, v in x.items()}}
            self._allocations[key] = prior
        prior = self._allocations[key]
        return self.priors if prior is None else [prior, *self.priors]

    def _next_prior(self, study: optuna.Study, trial: FrozenTrial, n_priors: int) -> int | None:
        """The first prior no other trial has taken (recorded as ``<strategy>.prior``)."""
        if not n_priors:
            return None
        taken = {
            t.user_attrs.get(self.attr("prior")) for t in study.get_trials(deepcopy=False) if t.number != trial.number
        }
        return next((i for i in range(n_priors) if i not in taken), None)

    # ------------------------------------------------------------------ repair
    def repair(
        self, x: dict[str, Any], model: ResourceModel, target: float
    ) -> tuple[dict[str, Any], float, bool, bool]:
        """``(params, relative resource, repaired, met)``: sparsities raised, then bit-widths
        lowered, until the predicted resource meets ``target``."""
        rel = lambda p: model.relative(self.space.plan(p))  # noqa: E731
        r = rel(x)
        if r <= target:
            return x, r, False, True
        groups = [k[len(SPARSITY_PREFIX) :] for k in x if k.startswith(SPARSITY_PREFIX)]
        if groups:
            x, r, met = self._raise_sparsity(x, groups, rel, target)
            if met:
                return x, r, True, True
        y = dict(x)
        for g in groups:  # most sparsity, then fewer bits; afterwards as little sparsity as needed
            y[self.space.param_name(g)] = self.space.upper[g]
        y, r, met = self._lower_bits(y, rel, target)
        if groups and met:
            y = {**x, **{k: v for k, v in y.items() if not k.startswith(SPARSITY_PREFIX)}}
            y, r, met = self._raise_sparsity(y, groups, rel, target)
        return y, r, True, met

    def _raise_sparsity(
        self, x: dict[str, Any], groups: list[str], rel: Callable[[dict[str, Any]], float], target: float
    ) -> tuple[dict[str, Any], float, bool]:
        lower = {g: self.space.options.min_sparsity for g in groups}
        upper = {g: self.space.upper[g] for g in groups}
        rest = {k: v for k, v in x.items() if not k.startswith(SPARSITY_PREFIX)}

        def relative(sp: dict[str, float]) -> float:
            return rel({**rest, **{self.space.param_name(g): s for g, s in sp.items()}})

        sp = {g: float(x[self.space.param_name(g)]) for g in groups}
        sp, r, met = scale_to_target(sp, lower, upper, relative, target)
        return {**rest, **{self.space.param_name(g): s for g, s in sp.items()}}, r, met

    def _lower_bits(
        self, x: dict[str, Any], rel: Callable[[dict[str, Any]], float], target: float
    ) -> tuple[dict[str, Any], float, bool]:
        """HAQ's rule: lower one layer's weight bits a step at a time until the budget is met, each
        time where the bit sensitivity costs least per unit of resource saved. A step goes to the
        widest narrower choice that saves anything (choices that save nothing are skipped)."""
        choices = sorted(self.space.options.bits_w or ())
        r = rel(x)
        while r > target:
            best: tuple[float, float, str, int, float] | None = None
            for key, bits in x.items():
                if not key.startswith(BITS_W_PREFIX) or int(bits) not in choices:
                    continue
                layer = key[len(BITS_W_PREFIX) :]
                for lower in reversed(choices[: choices.index(int(bits))]):
                    r_new = rel({**x, key: lower})
                    saved = r - r_new
                    if saved <= 0:
                        continue
                    cost = max(0.0, self._drop(layer, lower) - self._drop(layer, int(bits)))
                    rank = (cost / saved, -saved, key, lower, r_new)
                    if best is None or rank < best:
                        best = rank
                    break
            if best is None:
                return x, r, False
            _, _, key, lower, r = best
            x = {**x, key: lower}
        return x, r, True

    def _drop(self, layer: str, bits: int) -> float:
        if bits >= 32:
            return 0.0
        return self._drops.get((layer, bits), 0.0)


def _bit_drops(space: SearchSpace) -> dict[tuple[str, int], float]:
    """``{(layer, bits): metric drop}`` from the space's bit sensitivity table (empty without one)."""
    table = getattr(space, "bit_sensitivity", None)
    if table is None or len(table) == 0:
        return {}
    out = {}
    for layer, bits, drop in zip(table["layer"], table["bits_w"], table["drop"]):
        d = float(drop)
        out[(str(layer), int(bits))] = d if math.isfinite(d) else 1e9
    return out


def _inside(value: Any, dist: BaseDistribution) -> Any:
    if isinstance(dist, FloatDistribution):
        return min(max(float(value), dist.low), dist.high)
    if isinstance(dist, CategoricalDistribution) and value not in dist.choices:
        return min(dist.choices, key=lambda c: abs(float(c) - float(value)))  # type: ignore[arg-type]
    return value
