"""``admm``: per-group pruning targets reached by ADMM training, the targets searched or fixed.

ADMM pruning (Zhang, Ye, Zhang, Tang, Wen, Fardad and Wang, "A Systematic DNN Weight Pruning
Framework using Alternating Direction Methods of Multipliers", ECCV 2018) trains the model toward
a set of per-group sparsity targets with an augmented-Lagrangian penalty, then hard-prunes it to
them exactly (the compressor ``admm``, :mod:`slimtune.compressors.training.admm`). The method
needs the targets from elsewhere; this strategy supplies them and makes every trial's plan an ADMM
plan (``plan.compressor = "admm"``, ``plan.compressor_params``):

* ``allocation: search`` (default): a wrapped Optuna sampler (``sampler``: TPE by default,
  ``nsga2`` or ``random``) proposes the per-group sparsities; with a budget (``resource`` and
  ``target``, or a ``flops``/``params``/``size``/``latency`` constraint of the study) proposals
  over it are raised along one line until they just meet it
  (:class:`~slimtune.strategies._repair.BudgetRepairSampler`; recorded as ``admm.resource``,
  ``admm.repaired``, ``admm.budget_met``), and the space's seeds (uniform and sensitivity-derived
  allocations) are the first proposals;
* ``allocation: uniform`` or ``sensitivity``: one fixed allocation at the budget (default flops
  0.5): every group at one sparsity, or the one-shot-safe allocation of the sensitivity analysis
  (uniform without one) rescaled to the budget. Its sparsities are still recorded as the trial's
  ``sparsity/<group>`` parameters (single-valued).

``tune`` lists ADMM's own knobs searched with the allocation: ``rho`` (the initial penalty ρ,
log-uniform in ``rho_range``, parameter ``admm/rho``) and ``iterations`` (Z/U updates, an integer
in ``iterations_range``, parameter ``admm/iterations``). The rest of the ADMM run comes from
``compressor_params`` (``rho_growth``, ``epochs``/``steps``, ``lr``, ``optimizer``), over the
task's own ``admm`` settings (a spec's ``compressor: {name: admm, ...}``); the trial's fine-tune
afterwards is the masked retrain. Trials need the task's training batches (``Task.train_data``).
With a fixed allocation and nothing tuned, every trial has the same plan: one trial is enough.

Parameters (spec ``strategy`` section):

====================== ============== =================================================
``allocation``         ``search``     ``search``, ``uniform`` or ``sensitivity``
``sampler``            ``tpe``        ``tpe``, ``nsga2`` or ``random`` (the search)
``sampler_params``     ``{}``         parameters of that strategy's sampler
``resource``           from the       ``flops``, ``params``, ``size`` or ``latency``
                       constraints    (else ``flops``; search without a target or a
                                      resource constraint: no repair)
``target``             idem           resource to keep, relative (fixed default 0.5)
``compressor_params``  ``{}``         parameters of the ``admm`` compressor: ``rho`` 0.2,
                                      ``rho_growth`` 2.0, ``iterations`` 4, ``epochs`` /
                                      ``steps``, ``lr``, ``optimizer`` (None: the task's)
``tune``               ``[]``         knobs searched per trial: ``rho``, ``iterations``
``rho_range``          ``[0.001, 1]`` log-uniform bounds of ``admm/rho``
``iterations_range``   ``[1, 8]``     bounds of ``admm/iterations``
====================== ============== =================================================

Example:
    >>> import slimtune, torch
    >>> from slimtune.examples.models import mlp
    >>> _ = torch.manual_seed(0)
    >>> model, x = mlp(16, (32, 24), 4).eval(), torch.randn(64, 16)
    >>> y = model(x).argmax(1)
    >>> task = slimtune.Task(model, x[:1], lambda m: float((m(x).argmax(1) == y).float().mean()),
    ...                      train_data=[(x, y)], finetune_config={"steps": 2})
    >>> study = slimtune.search(task, strategy="admm", n_trials=3, storage="memory", target=0.5, tune=["rho"],
    ...                         compressor_params={"steps": 4}, space={"sensitivity": False}, progress=False,
    ...                         save_models="none")
    >>> [t.user_attrs["plan"]["compressor"] for t in study.trials]
    ['admm', 'admm', 'admm']
    >>> all(t.user_attrs["measures"]["flops"] <= 0.5 and 0.001 <= t.params["admm/rho"] <= 1 for t in study.trials)
    True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import optuna

from slimtune import attributes, optuna_internals
from slimtune.errors import StrategyError
from slimtune.search_spaces.space import SPARSITY_PREFIX
from slimtune.strategies._base import Strategy, get_strategy, register_strategy
from slimtune.strategies._budget import (
    RESOURCES,
    Budget,
    ResourceModel,
    check_budget_params,
    resolve_budget,
    scale_to_target,
)
from slimtune.strategies._repair import BudgetRepairSampler
from slimtune.strategies.bitwidth import check_inner

if TYPE_CHECKING:
    from slimtune.compressors.plan import CompressionPlan
    from slimtune.search_spaces import SearchSpace

RHO = "admm/rho"
ITERATIONS = "admm/iterations"
ALLOCATIONS = ("search", "uniform", "sensitivity")
TUNABLE = {"rho": RHO, "iterations": ITERATIONS}
ATTR_RESOURCE = attributes.ADMM.RESOURCE
ATTR_BUDGET_MET = attributes.ADMM.BUDGET_MET
_BISECTION_STEPS = 40


def check_admm_params(strategy: str, value: Any) -> dict[str, Any]:
    """``strategy.compressor_params``: a mapping of the ``admm`` compressor's parameters (errors name the field)."""
    from slimtune.compressors.training import check_compressor_params

    if not isinstance(value, Mapping):
        raise StrategyError(
            f"strategy {strategy!r}: strategy.compressor_params must be a mapping, got {value!r}",
            field="strategy.compressor_params",
        )
    try:
        check_compressor_params("admm", dict(value))
    except ValueError as e:
        raise StrategyError(
            f"strategy {strategy!r}: strategy.compressor_params: {e}", field="strategy.compressor_params"
        ) from None
    return dict(value)


def admm_plan(
    plan: CompressionPlan, params: Mapping[str, Any], compressor_params: Mapping[str, Any]
) -> CompressionPlan:
    """``plan`` compressed by ADMM: ``compressor_params`` with the trial's tuned ``admm/rho`` and
    ``admm/iterations``."""
    cp = dict(compressor_params)
    if RHO in params:
        cp["rho"] = float(params[RHO])
    if ITERATIONS in params:
        cp["iterations"] = int(params[ITERATIONS])
    return dataclasses.replace(plan, compressor="admm", compressor_params=cp)


def fixed_allocation(
    space: SearchSpace, model: ResourceModel, target: float, kind: str
) -> tuple[dict[str, float], float, bool]:
    """``({group: sparsity}, relative resource, met)``: the ``uniform`` or ``sensitivity`` allocation at ``target``.

    ``uniform``: the smallest single sparsity (capped at each group's upper bound) that meets the
    target; ``sensitivity``: the one-shot-safe levels moved along one line to just meet it
    (:func:`~slimtune.strategies._budget.scale_to_target`), uniform when the space has no table.
    """
    lo = space.options.min_sparsity
    lower = {g: lo for g in space.groups}
    upper = dict(space.upper)
    if kind == "sensitivity" and space.safe:
        x = {g: min(max(space.safe[g], lo), upper[g]) for g in space.groups}
        return scale_to_target(x, lower, upper, model.relative, target)

    def at(s: float) -> dict[str, float]:
        return {g: min(max(s, lo), upper[g]) for g in space.groups}

    hi = max(upper.values())
    r_hi = model.relative(at(hi))
    if r_hi > target:
        return at(hi), r_hi, False
    r_lo = model.relative(at(lo))
    if r_lo <= target:
        return at(lo), r_lo, True
    a, b = lo, hi
    for _ in range(_BISECTION_STEPS):
        mid = 0.5 * (a + b)
        r = model.relative(at(mid))
        if r <= target:
            b, r_hi = mid, r
        else:
            a = mid
    return at(b), r_hi, True


class _Repair(BudgetRepairSampler):
    """The repair of ``allocation: search``: a ``target`` without ``resource`` aims at the study's
    first resource constraint's resource, else at FLOPs (no budget without either)."""

    def budget(self, study: optuna.Study) -> tuple[Budget | None, ResourceModel | None]:
        key = optuna_internals.study_key(study)
        if key not in self._models:
            constraints = attributes.study_constraints(study)
            default = "flops" if self.target is not None else None
            budget = resolve_budget(self.strategy, self.resource, self.target, constraints, default, None, self.allowed)
            self._models[key] = (
                budget,
                ResourceModel(self.space, budget.resource, study) if budget is not None else None,
            )
        return self._models[key]


def _range(strategy: str, key: str, value: Any, integer: bool) -> tuple[float, float]:
    ok = isinstance(value, (list, tuple)) and len(value) == 2
    if ok:
        kinds = (int,) if integer else (int, float)
        ok = all(isinstance(v, kinds) and not isinstance(v, bool) for v in value) and 0 < value[0] <= value[1]
        ok = ok and (not integer or value[0] >= 1) and (integer or value[0] < value[1])
    if not ok:
        what = "two integers 1 <= low <= high" if integer else "two numbers 0 < low < high"
        raise StrategyError(
            f"strategy {strategy!r}: strategy.{key} {value!r} must be [low, high], {what}", field=f"strategy.{key}"
        )
    return value[0], value[1]


@register_strategy
class ADMM(Strategy):
    """ADMM pruning toward searched or fixed per-group targets (module docstring)."""

    name = "admm"
    defaults = {
        "allocation": "search",
        "sampler": "tpe",
        "sampler_params": {},
        "resource": None,
        "target": None,
        "compressor_params": {},
        "tune": [],
        "rho_range": [0.001, 1.0],
        "iterations_range": [1, 8],
    }

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        p = self.params
        check_budget_params(self.name, p)
        check_inner(self.name, p)
        if p["allocation"] not in ALLOCATIONS:
            raise StrategyError(
                f"strategy {self.name!r}: strategy.allocation {p['allocation']!r} must be one of "
                f"{', '.join(ALLOCATIONS)}",
                field="strategy.allocation",
            )
        self.compressor_params = check_admm_params(self.name, p["compressor_params"])
        tune = p["tune"]
        if isinstance(tune, str) or not isinstance(tune, (list, tuple)) or any(k not in TUNABLE for k in tune):
            raise StrategyError(
                f"strategy {self.name!r}: strategy.tune {tune!r} must be a list of {', '.join(TUNABLE)}",
                field="strategy.tune",
            )
        self.tune = list(dict.fromkeys(tune))
        for knob in self.tune:
            if knob in self.compressor_params:
                raise StrategyError(
                    f"strategy {self.name!r}: strategy.compressor_params.{knob} is also tuned (strategy.tune): "
                    "drop one",
                    field=f"strategy.compressor_params.{knob}",
                )
        self.rho_range = _range(self.name, "rho_range", p["rho_range"], integer=False)
        self.iterations_range = _range(self.name, "iterations_range", p["iterations_range"], integer=True)
        self._fixed: dict[int, tuple[dict[str, float], float, bool]] = {}

    def sampler(
        self, space: SearchSpace, n_objectives: int, seed: int, n_trials: int | None
    ) -> optuna.samplers.BaseSampler:
        inner = get_strategy(self.params["sampler"], **self.params["sampler_params"]).sampler(
            space, n_objectives, seed, n_trials
        )
        if self.params["allocation"] != "search":
            return inner  # it searches only the tuned knobs; the allocation is fixed
        names = [k for k in space.distributions() if k.startswith(SPARSITY_PREFIX)]
        p = self.params
        return _Repair(inner, space, names, self.name, p["resource"], p["target"], RESOURCES, space.seeds())

    def allocation(self, study: optuna.Study, space: SearchSpace) -> tuple[dict[str, float], float, bool]:
        """The fixed allocation of this study (``allocation`` uniform or sensitivity): ``({group:
        sparsity}, relative resource, met)`` at the budget (parameters, else constraints, else flops 0.5)."""
        key = optuna_internals.study_key(study)
        if key not in self._fixed:
            budget = resolve_budget(
                self.name,
                self.params["resource"],
                self.params["target"],
                attributes.study_constraints(study),
                "flops",
                0.5,
            )
            assert budget is not None
            model = ResourceModel(space, budget.resource, study)
            self._fixed[key] = fixed_allocation(space, model, budget.target, self.params["allocation"])
        return self._fixed[key]

    def suggest(self, trial: optuna.trial.Trial, space: SearchSpace) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if self.params["allocation"] == "search":
            for k, d in space.distributions().items():
                if k.startswith(SPARSITY_PREFIX):
                    params[k] = trial.suggest_float(k, d.low, d.high)  # type: ignore[attr-defined]
        else:
            sparsities, resource, met = self.allocation(trial.study, space)
            for g, s in sparsities.items():
                params[space.param_name(g)] = trial.suggest_float(space.param_name(g), s, s)
            trial.set_user_attr(ATTR_RESOURCE, resource)
            trial.set_user_attr(ATTR_BUDGET_MET, met)
        if "rho" in self.tune:
            params[RHO] = trial.suggest_float(RHO, *self.rho_range, log=True)
        if "iterations" in self.tune:
            params[ITERATIONS] = trial.suggest_int(ITERATIONS, *self.iterations_range)
        return params

    def plan(self, params: Mapping[str, Any], space: SearchSpace) -> CompressionPlan:
        plan = space.plan({k: v for k, v in params.items() if k.startswith(SPARSITY_PREFIX)})
        return admm_plan(plan, params, self.compressor_params)

    def seeds(self, space: SearchSpace) -> list[dict[str, float]]:
        return []  # the sampler proposes the space's seeds first, repaired to the budget
