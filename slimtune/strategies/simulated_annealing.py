"""``simulated_annealing``: per-group sparsities by simulated annealing at a resource target.

Simulated annealing (Kirkpatrick, Gelatt and Vecchi, "Optimization by Simulated Annealing",
Science 1983) as used for layer-wise pruning rates by AutoCompress (Liu et al., "AutoCompress:
An Automatic DNN Structured Pruning Framework for Ultra-High Compression Rates", AAAI 2020) and
NNI's SimulatedAnnealingPruner. Each trial:

1. perturbs the *current* sparsity vector: every group moves by ``U(-m, m)`` with
   ``m = perturbation_magnitude × T / start_temperature`` (big moves while hot, small when cold);
2. rescales the vector along one line until its predicted resource — FLOPs, parameters, size or
   latency (lookup table), not only the weight count — just meets the target
   (:func:`~slimtune.strategies._budget.scale_to_target`: a bisection of fixed length, so it ends
   for any target; one that cannot be reached gives every group its upper bound and records
   ``sa.target_met = false``);
3. is compressed, fine-tuned and evaluated like any trial, and is accepted as the new current
   point by the Metropolis rule on its cost (:func:`metropolis`: always when not worse, else with
   probability ``exp(-Δ / T)``);
4. cools the temperature geometrically, ``T = start_temperature × cool_down_rate ** k``, where ``k``
   counts the *accepted* moves (``cooling: accepted``, the default: NNI's SimulatedAnnealingPruner,
   whose loop AutoCompress follows, keeps proposing at one temperature until a move is accepted,
   then cools), or every ``moves_per_temperature`` decided moves (``cooling: moves``: Kirkpatrick
   et al.'s several moves per temperature; ``moves_per_temperature: 1``, cooling after every move
   accepted or not, was slimtune's rule before). When ``T`` falls below ``stop_temperature`` the
   strategy is finished and the runner stops the study (whatever budget is left).

The cost is the study's (:mod:`slimtune.strategies._cost`): the metric, negated when maximised,
plus any constraint violation; temperatures are in its units (accuracy as a fraction: 0.01 is one
point). The first trial is the starting point, rescaled to the target: by default (``initial:
greedy``) the sensitivity table read resource-aware (:meth:`SearchSpace.allocate
<slimtune.search_spaces.SearchSpace.allocate>`: each step prunes where one-shot accuracy costs
least per unit of the resource saved); or each group at its one-shot-safe level
(``sensitivity``); or one sparsity for every group (``uniform``). Without a sensitivity table
``greedy`` and ``sensitivity`` start uniform.

**State lives in the study.** Each trial records ``sa.step``, ``sa.temperature``, ``sa.base``
(the trial it perturbed), ``sa.resource`` (predicted, relative) and ``sa.target_met`` when it is
proposed, and ``sa.accepted``, ``sa.cost`` and ``sa.decided_at`` when it ends. The current point
and the temperature are folded from those records in decision order, so a resumed run or another
worker continues the same chain; several workers perturb the current point in parallel. Random
numbers come from the study's seed (kept in the study) and the trial number.

Parameters (spec ``strategy`` section):

========================= ========== =====================================================
``resource``              from the   ``flops``, ``params``, ``size`` or ``latency``
                          study's    (default: the first such constraint, else ``flops``)
                          constraints
``target``                idem       resource to keep, relative (default: that
                                     constraint's bound, else 0.5; 0.05 removes 95 %)
``start_temperature``     0.05       initial temperature
``stop_temperature``      0.002      finished below this temperature
``cool_down_rate``        0.85       temperature factor per cooling step (20 by default)
``cooling``               accepted   cool after each accepted move (``accepted``) or every
                                     ``moves_per_temperature`` moves (``moves``)
``moves_per_temperature`` 1          moves per temperature with ``cooling: moves``
``perturbation_magnitude`` 0.35      largest move of a group's sparsity at the start
``initial``               greedy     ``greedy``, ``sensitivity`` or ``uniform`` start
========================= ========== =====================================================

Example:
    >>> import slimtune, torch
    >>> from slimtune.examples.models import mlp
    >>> model, x = mlp(16, (32, 24), 4).eval(), torch.randn(64, 16)
    >>> ref = model(x).detach()
    >>> task = slimtune.Task(model, x[:1], lambda m: -float((m(x).detach() - ref).square().mean()))
    >>> study = slimtune.search(task, strategy="simulated_annealing", n_trials=3, storage="memory",
    ...                         space={"sensitivity": False}, target=0.4, progress=False, save_models="none")
    >>> [t.user_attrs["sa.step"] for t in study.trials]
    [0, 1, 2]
    >>> all(t.user_attrs["measures"]["flops"] <= 0.4 for t in study.trials)
    True
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, FloatDistribution
from optuna.trial import TrialState

from slimtune import attributes, optuna_internals
from slimtune.errors import StrategyError
from slimtune.search_spaces.space import SPARSITY_PREFIX
from slimtune.strategies._base import Strategy, record, register_strategy
from slimtune.strategies._budget import Budget, ResourceModel, check_budget_params, resolve_budget, scale_to_target
from slimtune.strategies._cost import scalar_cost

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

    from slimtune.search_spaces import SearchSpace

ATTR_STEP = attributes.SA.STEP
ATTR_TEMPERATURE = attributes.SA.TEMPERATURE
ATTR_BASE = attributes.SA.BASE
ATTR_RESOURCE = attributes.SA.RESOURCE
ATTR_TARGET_MET = attributes.SA.TARGET_MET
ATTR_ACCEPTED = attributes.SA.ACCEPTED
ATTR_COST = attributes.SA.COST
ATTR_DECIDED = attributes.SA.DECIDED
ATTR_CHAIN = attributes.SA.CHAIN
_SEED_ATTR = attributes.StrategyState.SA_SEED


def metropolis(delta: float, temperature: float, u: float) -> bool:
    """The Metropolis rule: accept a step that changes the cost by ``delta`` (lower is better)
    when it is not worse, else when ``u < exp(-delta / temperature)`` (``u`` uniform in [0, 1)).

    Example:
        >>> metropolis(-0.1, 0.01, 0.99), metropolis(0.01, 0.01, 0.3), metropolis(0.01, 0.01, 0.4)
        (True, True, False)
    """
    if delta <= 0:
        return True
    if not math.isfinite(delta) or temperature <= 0:
        return False
    return u < math.exp(-delta / temperature)


COOLING = ("accepted", "moves")


@dataclass(frozen=True)
class Schedule:
    """Geometric cooling: ``T_k = start × rate ** k``; finished once ``T_k < stop``.

    ``k`` counts cooling steps: with ``cooling="accepted"`` (NNI's SimulatedAnnealingPruner, which
    AutoCompress's implementation follows) one per *accepted* move after the starting point, so the
    chain keeps proposing at a temperature until a move is accepted; with ``cooling="moves"``
    (Kirkpatrick et al.) one every ``moves`` decided moves, the starting point included
    (``moves=1``: cool after every move, accepted or rejected).
    """

    start: float
    stop: float
    rate: float
    cooling: str = "moves"
    moves: int = 1

    def temperature(self, level: int) -> float:
        return self.start * self.rate**level

    def level(self, decided: int, accepted: int) -> int:
        """The cooling steps done after ``decided`` moves of which ``accepted`` were accepted."""
        if self.cooling == "accepted":
            return max(0, accepted - 1)  # the starting point is accepted without a move
        return decided // max(1, self.moves)

    @property
    def steps(self) -> int:
        """Number of cooling steps until the temperature falls below ``stop`` (the smallest ``k`` with
        ``T_k < stop``)."""
        return max(1, math.floor(math.log(self.stop / self.start) / math.log(self.rate) + 1e-9) + 1)


@dataclass
class AnnealingState:
    """The chain as the study's decided trials give it.

    Attributes:
        steps: Decided steps (accepted or rejected trials).
        temperature: The temperature of the next step.
        current: Trial number of the current point (None before the first accepted step).
        current_params: Its ``sparsity/<group>`` parameters.
        current_cost: Its cost.
        finished: The temperature fell below the stop temperature.
        accepted: Numbers of the accepted trials, in order.
    """

    steps: int = 0
    temperature: float = 0.0
    current: int | None = None
    current_params: dict[str, float] | None = None
    current_cost: float = math.inf
    finished: bool = False
    accepted: list[int] = field(default_factory=list)


def annealing_state(
    study: optuna.Study, schedule: Schedule, exclude: int | None = None, chain: str | None = None
) -> AnnealingState:
    """Fold the study's decided trials (in decision order) into the chain's state.

    ``chain`` selects the trials of one named chain (``sa.chain``), for drivers that run several
    annealing chains in one study (e.g. one per AutoCompress round); None folds the unnamed chain.
    """
    decided = [
        t
        for t in study.get_trials(deepcopy=False)
        if ATTR_ACCEPTED in t.user_attrs and t.number != exclude and t.user_attrs.get(ATTR_CHAIN) == chain
    ]
    decided.sort(key=lambda t: (float(t.user_attrs.get(ATTR_DECIDED, 0.0)), t.number))
    state = AnnealingState()
    for t in decided:
        if t.user_attrs[ATTR_ACCEPTED]:
            state.current = t.number
            state.current_params = {k: float(v) for k, v in t.params.items() if k.startswith(SPARSITY_PREFIX)}
            state.current_cost = float(t.user_attrs.get(ATTR_COST, math.inf))
            state.accepted.append(t.number)
    state.steps = len(decided)
    level = schedule.level(state.steps, len(state.accepted))
    state.temperature = schedule.temperature(level)
    state.finished = level >= schedule.steps
    return state


class SimulatedAnnealingSampler(optuna.samplers.BaseSampler):
    """The Optuna sampler of ``simulated_annealing`` (see the module docstring).

    Args:
        space: The search space (its ``sparsity/<group>`` parameters are annealed).
        schedule: The cooling :class:`Schedule`.
        perturbation_magnitude: Largest move of one group's sparsity at the start temperature.
        resource, target: The budget (None: from the study's constraints, else flops 0.5).
        initial: ``"greedy"``, ``"sensitivity"`` or ``"uniform"`` starting point, or ``{group: sparsity}``.
        seed: Seed used when the study has none yet (the first sampler stores its seed in the study).
        chain: Name of this chain (``sa.chain``), when a driver runs several in one study.
    """

    def __init__(
        self,
        space: SearchSpace,
        schedule: Schedule,
        perturbation_magnitude: float = 0.35,
        resource: str | None = None,
        target: float | None = None,
        initial: str | Mapping[str, float] = "greedy",
        seed: int | None = None,
        chain: str | None = None,
    ) -> None:
        self.space = space
        self.chain = chain
        self.schedule = schedule
        self.magnitude = float(perturbation_magnitude)
        self.resource = resource
        self.target = target
        self.initial = initial
        self._seed = int(seed) if seed is not None else int(np.random.SeedSequence().entropy % (2**31))
        self._fallback = optuna.samplers.RandomSampler(seed=seed)
        self._models: dict[int, tuple[Budget, ResourceModel]] = {}
        opt = space.options
        self.lower = {g: opt.min_sparsity for g in space.groups}
        self.upper = dict(space.upper)

    # ------------------------------------------------------------------ study-derived state
    def budget(self, study: optuna.Study) -> tuple[Budget, ResourceModel]:
        """The budget (parameters, else the study's constraints, else flops 0.5) and its model."""
        key = optuna_internals.study_key(study)
        if key not in self._models:
            budget = resolve_budget(
                "simulated_annealing", self.resource, self.target, attributes.study_constraints(study), "flops", 0.5
            )
            assert budget is not None
            self._models[key] = (budget, ResourceModel(self.space, budget.resource, study))
        return self._models[key]

    def study_seed(self, study: optuna.Study) -> int:
        stored = study.user_attrs.get(_SEED_ATTR)
        if stored is None:
            study.set_user_attr(_SEED_ATTR, self._seed)
            stored = study.user_attrs[_SEED_ATTR]  # a racing worker's, if it won
        return int(stored)

    def state(self, study: optuna.Study, exclude: int | None = None) -> AnnealingState:
        return annealing_state(study, self.schedule, exclude, self.chain)

    def initial_point(
        self, relative: Callable[[dict[str, float]], float] | None = None, target: float | None = None
    ) -> dict[str, float]:
        """The chain's start, before it is rescaled to the target (``relative``: the resource model)."""
        if isinstance(self.initial, Mapping):
            return {
                g: min(max(float(self.initial.get(g, self.lower[g])), self.lower[g]), self.upper[g])
                for g in self.space.groups
            }
        if self.initial == "greedy" and relative is not None and target is not None:
            x = self.space.allocate(relative, target)
            if x is not None:
                return {g: min(max(x[g], self.lower[g]), self.upper[g]) for g in self.space.groups}
        if self.initial == "sensitivity" and self.space.safe:
            return {g: min(max(self.space.safe[g], self.lower[g]), self.upper[g]) for g in self.space.groups}
        mid = 0.5 * (self.space.options.min_sparsity + self.space.options.max_sparsity)
        return {g: min(max(mid, self.lower[g]), self.upper[g]) for g in self.space.groups}

    # ------------------------------------------------------------------ BaseSampler
    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {k: d for k, d in self.space.distributions().items() if k.startswith(SPARSITY_PREFIX)}

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if not search_space:
            return {}
        state = self.state(study, exclude=trial.number)
        if state.finished and state.current_params is not None:
            return {k: v for k, v in state.current_params.items() if k in search_space}
        budget, model = self.budget(study)
        seed = self.study_seed(study)
        if state.current_params is None:
            x = self.initial_point(model.relative, budget.target)
        else:
            rng = np.random.default_rng([seed, trial.number])
            m = self.magnitude * state.temperature / self.schedule.start
            x = {}
            for g in self.space.groups:
                v = state.current_params.get(self.space.param_name(g), self.lower[g]) + rng.uniform(-m, m)
                x[g] = min(max(v, self.lower[g]), self.upper[g])
        x, resource, met = scale_to_target(x, self.lower, self.upper, model.relative, budget.target)
        for key, value in (
            (ATTR_STEP, state.steps),
            (ATTR_TEMPERATURE, state.temperature),
            (ATTR_BASE, state.current),
            (ATTR_RESOURCE, resource),
            (ATTR_TARGET_MET, met),
        ):
            record(study, trial, key, value)
        if self.chain is not None:
            record(study, trial, ATTR_CHAIN, self.chain)
        params = {self.space.param_name(g): v for g, v in x.items()}
        return {k: _inside(v, search_space[k]) for k, v in params.items() if k in search_space}

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self._fallback.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: list[float] | None
    ) -> None:
        """Decide the step by the Metropolis rule and record it on the trial."""
        if ATTR_TEMPERATURE not in trial.user_attrs or ATTR_ACCEPTED in trial.user_attrs:
            return
        if trial.user_attrs.get(ATTR_CHAIN) != self.chain:
            return  # another chain's trial
        chain = self.state(study, exclude=trial.number)
        cost = scalar_cost(study, values, trial.constraints) if state == TrialState.COMPLETE else math.inf
        if chain.current is None:
            accepted = math.isfinite(cost)
        else:
            u = float(np.random.default_rng([self.study_seed(study), trial.number, 1]).random())
            accepted = metropolis(cost - chain.current_cost, float(trial.user_attrs[ATTR_TEMPERATURE]), u)
        record(study, trial, ATTR_COST, cost if math.isfinite(cost) else None)
        record(study, trial, ATTR_DECIDED, time.time())
        record(study, trial, ATTR_ACCEPTED, bool(accepted))

    def reseed_rng(self) -> None:
        self._fallback.reseed_rng()


def _inside(value: float, dist: BaseDistribution) -> float:
    if isinstance(dist, FloatDistribution):
        return min(max(float(value), dist.low), dist.high)
    return value


_INITIAL = ("greedy", "sensitivity", "uniform")


@register_strategy
class SimulatedAnnealing(Strategy):
    """Simulated annealing over per-group sparsities at a resource target (module docstring)."""

    name = "simulated_annealing"
    defaults = {
        "resource": None,
        "target": None,
        "start_temperature": 0.05,
        "stop_temperature": 0.002,
        "cool_down_rate": 0.85,
        "perturbation_magnitude": 0.35,
        "initial": "greedy",
        "cooling": "accepted",
        "moves_per_temperature": 1,
    }

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        p = self.params
        check_budget_params(self.name, p)
        for key in ("start_temperature", "stop_temperature", "perturbation_magnitude"):
            v = p[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise StrategyError(
                    f"strategy {self.name!r}: strategy.{key} {v!r} must be a number > 0", field=f"strategy.{key}"
                )
        if p["stop_temperature"] >= p["start_temperature"]:
            raise StrategyError(
                f"strategy {self.name!r}: strategy.stop_temperature {p['stop_temperature']!r} must be below "
                f"start_temperature {p['start_temperature']!r}",
                field="strategy.stop_temperature",
            )
        rate = p["cool_down_rate"]
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 < rate < 1.0:
            raise StrategyError(
                f"strategy {self.name!r}: strategy.cool_down_rate {rate!r} must be in (0, 1)",
                field="strategy.cool_down_rate",
            )
        if p["initial"] not in _INITIAL:
            raise StrategyError(
                f"strategy {self.name!r}: strategy.initial {p['initial']!r} must be one of {', '.join(_INITIAL)}",
                field="strategy.initial",
            )
        if p["cooling"] not in COOLING:
            raise StrategyError(
                f"strategy {self.name!r}: strategy.cooling {p['cooling']!r} must be one of {', '.join(COOLING)}",
                field="strategy.cooling",
            )
        moves = p["moves_per_temperature"]
        if isinstance(moves, bool) or not isinstance(moves, int) or moves < 1:
            raise StrategyError(
                f"strategy {self.name!r}: strategy.moves_per_temperature {moves!r} must be an integer >= 1",
                field="strategy.moves_per_temperature",
            )
        self.schedule = Schedule(
            float(p["start_temperature"]), float(p["stop_temperature"]), float(rate), p["cooling"], moves
        )

    def sampler(
        self, space: SearchSpace, n_objectives: int, seed: int, n_trials: int | None
    ) -> SimulatedAnnealingSampler:
        return SimulatedAnnealingSampler(
            space,
            self.schedule,
            perturbation_magnitude=float(self.params["perturbation_magnitude"]),
            resource=self.params["resource"],
            target=self.params["target"],
            initial=self.params["initial"],
            seed=seed,
        )

    def suggest(self, trial: optuna.trial.Trial, space: SearchSpace) -> dict[str, float]:
        self._stop_if_finished(trial)
        return {
            k: trial.suggest_float(k, d.low, d.high)  # type: ignore[attr-defined]
            for k, d in space.distributions().items()
            if k.startswith(SPARSITY_PREFIX)
        }

    def seeds(self, space: SearchSpace) -> list[dict[str, float]]:
        return []  # the first proposal is the starting point, rescaled to the target

    def finished(self, study: optuna.Study) -> str | None:
        state = annealing_state(study, self.schedule)
        if state.finished:
            return (
                f"cooled to {state.temperature:.3g} < stop_temperature {self.schedule.stop:g} "
                f"after {state.steps} steps ({len(state.accepted)} accepted)"
            )
        return None
