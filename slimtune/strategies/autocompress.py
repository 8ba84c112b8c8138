"""``autocompress``: rounds of simulated annealing over per-group targets, ADMM on each round's choice.

AutoCompress (Liu, Zhang, Wang, Yang, Xu, Lin and Ye, "AutoCompress: An Automatic DNN Structured
Pruning Framework for Ultra-High Compression Rates", AAAI 2020) reaches high compression in
*rounds*. Round ``k`` aims at a resource target between the original model and the final target,
``target ** ((k + 1) / rounds)`` (geometric: 0.5 in three rounds is 0.79, 0.63, 0.5). As in the paper
(and NNI's AutoCompressPruner), each round

1. searches the per-group sparsities at the round's target by simulated annealing, scoring each
   *proposal* quickly: one-shot pruning of the round's starting model and a short fine-tune
   (``proposal_finetune``);
2. runs ADMM once, on the chosen proposal (one trial, ``autocompress/phase = admm``), from the
   round's starting model, with ``compressor_params``;
3. *purifies* the ADMM result: the channels whose weights ADMM drove to (near) zero are removed
   beyond the round's target (``purify``, see :mod:`slimtune.compressors.training.admm`; the trial
   records how many in ``compressor_info.purified``);

and the purified, fine-tuned model is where the next round starts: its proposals compress *that*
model further, not the original. ``proposals: admm`` runs a full ADMM and fine-tune for every
proposal instead (slimtune's earlier way: it may rank proposals better, at far more cost; the
benchmarks compare both); the round's best proposal is then its result.

Here each round is one annealing chain (:class:`~slimtune.strategies.simulated_annealing.SimulatedAnnealingSampler`,
chain ``round-<k>``) of ``trials_per_round`` proposals (the temperature falls geometrically from
``start_temperature`` to ``stop_temperature`` within the round). Its starting point is the
previous round's result, which is also every group's lower bound (pruned channels do not come back;
purified ones count as pruned); round 0 starts from the sensitivity table read resource-aware
(``initial: greedy``, :meth:`SearchSpace.allocate <slimtune.search_spaces.SearchSpace.allocate>`).
Every trial's plan names in ``init_from_trial`` the previous round's result (also the trial
parameter ``autocompress/init_from_trial``, -1 in round 0): the objective loads that trial's saved
model, converts the plan's sparsities — always relative to the *original* model's groups — for it
(:func:`slimtune.trials.objective.rebase_plan`) and measures the result against the original
model, so all rounds lie on one front. Carrying the weights needs the models saved
(``save_models: all``); without them the strategy ends after the first round and says why
(``carry_weights: false`` starts every round from the original model instead).

A round's best proposal is, among its first ``trials_per_round`` decided proposals, the one with the
lowest cost (the study's, :mod:`slimtune.strategies._cost`) among those meeting the round's target.
When the last round ends the strategy is finished (the runner stops the study) and the study's
user attribute ``autocompress.result`` names the last round's result.

**Records and state.** Each trial stores ``autocompress.round``, ``autocompress.phase``
(``proposal`` or ``admm``), ``autocompress.target`` and ``autocompress.base`` (the trial it starts
from) when proposed, the annealing records of its chain for proposals (``sa.step``,
``sa.temperature``, ``sa.resource``, ``sa.accepted``, ``sa.cost`` ...), the objective's ``init_from``
(the model it loaded: trial, artifact, digest, rebased sparsities) and, when it ends,
``autocompress.admm``: what it reached (the measured resource against the round's target, the
metric). Rounds are folded from these records (:func:`autocompress_state`), so a resumed run or
another worker continues the same round (a worker waits while another runs the round's ADMM
trial); :func:`autocompress_history` lists them.

Parameters (spec ``strategy`` section):

========================= =========== ==================================================
``resource``              from the    ``flops``, ``params``, ``size`` or ``latency``
                          constraints (default: the first such constraint, else ``flops``)
``target``                idem        final resource to keep, relative (default: that
                                      constraint's bound, else 0.5)
``rounds``                3           rounds (targets geometric from 1.0 to ``target``)
``trials_per_round``      6           annealing proposals per round
``proposals``             oneshot     ``oneshot``: quick proposals, ADMM once per round (the
                                      paper); ``admm``: ADMM for every proposal
``proposal_finetune``     None        ``plan.finetune`` overrides of the proposals' short
                                      fine-tune (e.g. ``{steps: 50}``); None: the task's
``purify``                0.01        purification threshold after ADMM (0: off)
``start_temperature``     0.05        temperature of a round's first step
``stop_temperature``      0.002       temperature after its last step
``perturbation_magnitude`` 0.2        largest move of a group's sparsity at the start
``initial``               greedy      round 0's start: ``greedy``, ``sensitivity`` or
                                      ``uniform`` (as ``simulated_annealing``'s)
``compressor_params``     ``{}``      parameters of the ``admm`` compressor (``rho``,
                                      ``rho_growth``, ``iterations``, ``epochs``/``steps``,
                                      ``lr``, ``optimizer``)
``carry_weights``         true        rounds start from the previous round's result
========================= =========== ==================================================

Example:
    >>> import os, tempfile, slimtune, torch
    >>> from slimtune.examples.models import mlp
    >>> _ = torch.manual_seed(0)
    >>> model, x = mlp(16, (32, 24), 4).eval(), torch.randn(64, 16)
    >>> y = model(x).argmax(1)
    >>> task = slimtune.Task(model, x[:1], lambda m: float((m(x).argmax(1) == y).float().mean()),
    ...                      train_data=[(x, y)], finetune_config={"steps": 2})
    >>> url = "sqlite:///" + os.path.join(tempfile.mkdtemp(), "ac.db")
    >>> study = slimtune.search(task, strategy="autocompress", n_trials=20, storage=url, study_name="ac", target=0.3,
    ...                         rounds=2, trials_per_round=2, compressor_params={"steps": 4},
    ...                         space={"sensitivity": False}, progress=False)
    >>> history = autocompress_history(study)
    >>> [(int(r), p, b) for r, p, b in zip(history["round"], history["phase"], history["base"])]
    ... # doctest: +NORMALIZE_WHITESPACE
    [(0, 'proposal', None), (0, 'proposal', None), (0, 'admm', None),
     (1, 'proposal', 2), (1, 'proposal', 2), (1, 'admm', 2)]
    >>> admm = history[history.phase == "admm"]   # each round's ADMM trial meets the round's target
    >>> bool((admm["measured"] <= admm["target"] + 1e-9).all())
    True
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import TrialState

from slimtune import attributes, optuna_internals
from slimtune.errors import StrategyError
from slimtune.search_spaces.space import SPARSITY_PREFIX
from slimtune.strategies._base import Strategy, record, register_strategy
from slimtune.strategies._budget import Budget, check_budget_params, resolve_budget
from slimtune.strategies.admm import admm_plan, check_admm_params
from slimtune.strategies.simulated_annealing import (
    ATTR_ACCEPTED,
    ATTR_CHAIN,
    ATTR_COST,
    ATTR_DECIDED,
    ATTR_TARGET_MET,
    Schedule,
    SimulatedAnnealingSampler,
)

if TYPE_CHECKING:
    import pandas as pd
    from optuna.trial import FrozenTrial

    from slimtune.compressors.plan import CompressionPlan
    from slimtune.search_spaces import SearchSpace

ATTR_ROUND = attributes.AutoCompress.ROUND
ATTR_TARGET = attributes.AutoCompress.TARGET
ATTR_BASE = attributes.AutoCompress.BASE
ATTR_OUTCOME = attributes.AutoCompress.OUTCOME
ATTR_PHASE = attributes.AutoCompress.PHASE
RESULT_ATTR = attributes.AutoCompress.RESULT
INIT_PARAM = "autocompress/init_from_trial"
PHASE_PARAM = "autocompress/phase"
PROPOSAL, ADMM = "proposal", "admm"
_INITIAL = ("greedy", "sensitivity", "uniform")
_PROPOSALS = ("oneshot", "admm")
_POLL_S = 0.5


def chain_name(k: int) -> str:
    """The annealing chain of round ``k`` (``sa.chain``)."""
    return f"round-{k}"


def round_targets(target: float, rounds: int) -> list[float]:
    """Resource targets of the rounds, geometric from 1.0 to ``target``.

    Example:
        >>> [round(t, 3) for t in round_targets(0.125, 3)]
        [0.5, 0.25, 0.125]
    """
    return [float(target) ** ((k + 1) / rounds) for k in range(rounds)]


def round_schedule(start: float, stop: float, steps: int) -> Schedule:
    """Geometric cooling from ``start`` that falls below ``stop`` after exactly ``steps`` steps.

    Example:
        >>> round_schedule(0.05, 0.002, 6).steps
        6
    """
    return Schedule(float(start), float(stop), (float(stop) / float(start)) ** (1.0 / (steps - 0.5)))


@dataclass
class Round:
    """A finished round: its decided proposals (the first ``trials_per_round``), its best proposal, its
    result (the trial whose model the next round starts from: the ADMM trial, or with ``proposals: admm``
    the best proposal itself) with that trial's ``sparsity/<group>`` parameters (raised by what
    purification removed), and the trial the round started from."""

    index: int
    trials: list[int]
    best: int
    best_params: dict[str, float]
    base: int | None
    proposal: int | None = None


@dataclass
class AutoCompressState:
    """The rounds as the study's trials give them.

    Attributes:
        done: Finished rounds, in order.
        current: The round being searched (None once finished).
        steps: Decided proposals of the current round.
        phase: ``proposal`` while the current round searches, ``admm`` once its proposals are decided.
        pending: With ``phase == "admm"``: the chosen proposal (trial, parameters).
        running: With ``phase == "admm"``: the round's ADMM trials still running.
        reason: Why the strategy finished (None while rounds remain).
    """

    done: list[Round] = field(default_factory=list)
    current: int | None = 0
    steps: int = 0
    phase: str = PROPOSAL
    pending: tuple[int, dict[str, float]] | None = None
    running: list[int] = field(default_factory=list)
    reason: str | None = None

    @property
    def base(self) -> Round | None:
        """The round the current one starts from (None in round 0)."""
        return self.done[-1] if self.done else None


def autocompress_state(
    study: optuna.Study,
    rounds: int,
    steps: int,
    carry_weights: bool = True,
    exclude: int | None = None,
    proposals: str = "oneshot",
    space: SearchSpace | None = None,
) -> AutoCompressState:
    """Fold the study's trials into rounds (deterministic: every worker agrees).

    Round ``k``'s proposals are decided when its chain has ``steps`` decided trials; its best proposal
    is chosen among those (later stragglers of other workers are not counted), by recorded cost,
    target-meeting trials first. With ``proposals="oneshot"`` the round ends when its ADMM trial
    completes; that trial is the round's result. ``space`` converts purified channels into higher
    sparsities of the result (the next round's lower bounds).
    """
    everything = [t for t in study.get_trials(deepcopy=False) if t.number != exclude]
    trials = [t for t in everything if ATTR_ACCEPTED in t.user_attrs]
    state = AutoCompressState()
    for k in range(rounds):
        decided = [t for t in trials if t.user_attrs.get(ATTR_CHAIN) == chain_name(k)]
        decided.sort(key=lambda t: (float(t.user_attrs.get(ATTR_DECIDED, 0.0)), t.number))
        if len(decided) < steps:
            state.current, state.steps = k, len(decided)
            return state
        counted = decided[:steps]
        scored = [t for t in counted if t.user_attrs.get(ATTR_COST) is not None]
        if not scored:
            state.current, state.reason = None, f"every trial of round {k} failed"
            return state
        best = min(
            scored,
            key=lambda t: (not t.user_attrs.get(ATTR_TARGET_MET, False), float(t.user_attrs[ATTR_COST]), t.number),
        )
        params = {n: float(v) for n, v in best.params.items() if n.startswith(SPARSITY_PREFIX)}
        base = state.base.best if state.base is not None else None
        result = best
        if proposals == "oneshot":
            admm = [t for t in everything if t.user_attrs.get(ATTR_ROUND) == k and t.user_attrs.get(ATTR_PHASE) == ADMM]
            complete = [t for t in admm if t.state == TrialState.COMPLETE]
            if not complete:
                running = [t.number for t in admm if not t.state.is_finished()]
                failed = [t for t in admm if t.state.is_finished()]
                if failed and not running:
                    why = attributes.fail_reason(failed[-1]) or failed[-1].state.name.lower()
                    state.current, state.reason = None, f"round {k}'s ADMM trial {failed[-1].number} failed: {why}"
                    return state
                state.current, state.steps, state.phase = k, len(decided), ADMM
                state.pending, state.running = (best.number, params), running
                return state
            result = min(complete, key=lambda t: t.number)
        if space is not None:
            params = purified_params(result, space)
        state.done.append(Round(k, [t.number for t in counted], result.number, params, base, best.number))
        if carry_weights and k + 1 < rounds and attributes.artifact_id(result) is None:
            state.current = None
            state.reason = (
                f"round {k}'s result, trial {result.number}, has no saved model, and the next round starts from it: "
                "run with save_models='all' (or strategy.carry_weights: false)"
            )
            return state
    state.current = None
    state.reason = f"{rounds} rounds done; result of the last round: trial {state.done[-1].best}"
    return state


def purified_params(trial: FrozenTrial, space: SearchSpace) -> dict[str, float]:
    """A trial's ``sparsity/<group>`` parameters with the channels purification removed counted as pruned."""
    params = {n: float(v) for n, v in trial.params.items() if n.startswith(SPARSITY_PREFIX)}
    purified = attributes.compressor_info(trial).get("purified") or {}
    for group, extra in purified.items():
        name = space.param_name(group)
        g = space.graph.groups.get(group)
        if name not in params or g is None or not extra:
            continue
        removed = g.n_prune(params[name]) + int(extra)
        params[name] = min(removed / g.size, (g.size - 1) / g.size)
    return params


class AutoCompressSampler(optuna.samplers.BaseSampler):
    """The Optuna sampler of ``autocompress``: hands each trial to the annealing chain of the
    current round (see the module docstring).

    Args:
        space: The search space.
        rounds: Number of rounds.
        schedule: The cooling of every round (its ``steps`` are the round's trials).
        perturbation_magnitude: Largest move of a group's sparsity at the start temperature.
        resource, target: The final budget (None: from the study's constraints, else flops 0.5).
        initial: Round 0's starting point, ``"greedy"``, ``"sensitivity"`` or ``"uniform"``.
        carry_weights: Rounds start from the previous round's result.
        seed: Seed used when the study has none yet (kept in the study).
        proposals: ``"oneshot"`` (quick proposals, one ADMM trial per round) or ``"admm"``.
        wait: A trial finding the round's ADMM trial running on another worker waits for it.
    """

    def __init__(
        self,
        space: SearchSpace,
        rounds: int,
        schedule: Schedule,
        perturbation_magnitude: float = 0.2,
        resource: str | None = None,
        target: float | None = None,
        initial: str = "greedy",
        carry_weights: bool = True,
        seed: int | None = None,
        proposals: str = "oneshot",
        wait: bool = True,
    ) -> None:
        self.space = space
        self.proposals = proposals
        self.wait = wait
        self.rounds = int(rounds)
        self.schedule = schedule
        self.magnitude = float(perturbation_magnitude)
        self.resource = resource
        self.target = target
        self.initial = initial
        self.carry_weights = carry_weights
        self._seed = seed
        self._budgets: dict[int, Budget] = {}
        self._chains: dict[tuple[int, int, int | None], SimulatedAnnealingSampler] = {}
        self._fallback = optuna.samplers.RandomSampler(seed=seed)

    # ------------------------------------------------------------------ study-derived state
    def budget(self, study: optuna.Study) -> Budget:
        """The final budget: parameters, else the study's constraints, else flops 0.5."""
        key = optuna_internals.study_key(study)
        if key not in self._budgets:
            budget = resolve_budget(
                "autocompress", self.resource, self.target, attributes.study_constraints(study), "flops", 0.5
            )
            assert budget is not None
            self._budgets[key] = budget
        return self._budgets[key]

    def targets(self, study: optuna.Study) -> list[float]:
        return round_targets(self.budget(study).target, self.rounds)

    def state(self, study: optuna.Study, exclude: int | None = None) -> AutoCompressState:
        return autocompress_state(
            study, self.rounds, self.schedule.steps, self.carry_weights, exclude, self.proposals, self.space
        )

    def chain(self, study: optuna.Study, k: int, base: Round | None) -> SimulatedAnnealingSampler:
        """Round ``k``'s annealing sampler: at the round's target, starting from (and bounded
        below by) the previous round's best allocation."""
        key = (optuna_internals.study_key(study), k, base.best if base is not None else None)
        if key not in self._chains:
            start: str | dict[str, float] = self.initial
            if base is not None:
                start = {g: base.best_params.get(self.space.param_name(g), 0.0) for g in self.space.groups}
            sa = SimulatedAnnealingSampler(
                self.space,
                self.schedule,
                self.magnitude,
                self.budget(study).resource,
                self.targets(study)[k],
                initial=start,
                seed=self._seed,
                chain=chain_name(k),
            )
            if isinstance(start, dict):  # pruned channels do not come back: no group below its last sparsity
                sa.lower = {g: max(sa.lower[g], start[g]) for g in self.space.groups}
                sa.upper = {g: max(sa.upper[g], sa.lower[g]) for g in self.space.groups}
            self._chains[key] = sa
        return self._chains[key]

    # ------------------------------------------------------------------ BaseSampler
    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        dists: dict[str, BaseDistribution] = {
            k: d for k, d in self.space.distributions().items() if k.startswith(SPARSITY_PREFIX)
        }
        dists[PHASE_PARAM] = CategoricalDistribution([PROPOSAL, ADMM])
        return dists

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if not search_space:
            return {}
        while True:
            state = self.state(study, exclude=trial.number)
            if state.current is None:  # finished: the trial is not run (Strategy.suggest stops it)
                last = state.done[-1].best_params if state.done else {}
                return self._with_phase({k: v for k, v in last.items() if k in search_space}, PROPOSAL, search_space)
            k, base = state.current, state.base
            if state.phase == ADMM:
                if state.running and self.wait:  # another worker runs this round's ADMM trial
                    self._wait(study)
                    continue
                assert state.pending is not None
                proposal, params = state.pending
                self._record(study, trial, k, base, ADMM)
                record(study, trial, "autocompress.proposal", proposal)
                return self._with_phase({n: v for n, v in params.items() if n in search_space}, ADMM, search_space)
            params = self.chain(study, k, base).sample_relative(study, trial, search_space)
            self._record(study, trial, k, base, PROPOSAL)
            return self._with_phase(params, PROPOSAL, search_space)

    def _record(self, study: optuna.Study, trial: FrozenTrial, k: int, base: Round | None, phase: str) -> None:
        for key, value in (
            (ATTR_ROUND, k),
            (ATTR_PHASE, phase),
            (ATTR_TARGET, self.targets(study)[k]),
            (ATTR_BASE, base.best if base is not None else None),
        ):
            record(study, trial, key, value)

    @staticmethod
    def _with_phase(params: dict[str, Any], phase: str, search_space: Mapping[str, BaseDistribution]) -> dict[str, Any]:
        if PHASE_PARAM in search_space:
            params[PHASE_PARAM] = phase
        return params

    def _wait(self, study: optuna.Study) -> None:
        """Wait for the round's ADMM trial on another worker, failing trials whose worker died."""
        time.sleep(_POLL_S)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self._fallback.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: list[float] | None
    ) -> None:
        """The annealing decision of the trial's round, then what ADMM reached (``autocompress.admm``)."""
        k = trial.user_attrs.get(ATTR_ROUND)
        if k is None or ATTR_OUTCOME in trial.user_attrs:
            return
        decider = next(
            (c for (s, r, _), c in self._chains.items() if s == optuna_internals.study_key(study) and r == k), None
        )
        if decider is None:  # another process proposed it: any sampler of the chain decides alike
            decider = SimulatedAnnealingSampler(self.space, self.schedule, seed=self._seed, chain=chain_name(int(k)))
        decider.after_trial(study, trial, state, values)
        outcome: dict[str, Any] = {"state": state.name, "target": trial.user_attrs.get(ATTR_TARGET)}
        measures = trial.user_attrs.get(attributes.Trial.MEASURES)
        if state == TrialState.COMPLETE and measures:
            resource = self.budget(study).resource
            measured = measures.get(resource)
            outcome.update(resource=resource, measured=measured, accuracy=measures.get("accuracy"))
            outcome["met"] = (
                measured is not None and outcome["target"] is not None and measured <= outcome["target"] + 1e-9
            )
        elif attributes.fail_reason(trial):
            outcome["reason"] = attributes.fail_reason(trial)
        record(study, trial, ATTR_OUTCOME, outcome)

    def reseed_rng(self) -> None:
        self._fallback.reseed_rng()


@register_strategy
class AutoCompress(Strategy):
    """AutoCompress (Liu et al. 2020): annealing rounds at falling targets, ADMM on each round's choice
    (see the module docstring)."""

    name = "autocompress"
    defaults = {
        "resource": None,
        "target": None,
        "rounds": 3,
        "trials_per_round": 6,
        "start_temperature": 0.05,
        "stop_temperature": 0.002,
        "perturbation_magnitude": 0.2,
        "initial": "greedy",
        "compressor_params": {},
        "carry_weights": True,
        "proposals": "oneshot",
        "proposal_finetune": None,
        "purify": 0.01,
    }

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        p = self.params
        check_budget_params(self.name, p)
        for key in ("rounds", "trials_per_round"):
            v = p[key]
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise StrategyError(
                    f"strategy {self.name!r}: strategy.{key} {v!r} must be an integer >= 1", field=f"strategy.{key}"
                )
        for key in ("start_temperature", "stop_temperature", "perturbation_magnitude"):
            v = p[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 or not math.isfinite(v):
                raise StrategyError(
                    f"strategy {self.name!r}: strategy.{key} {v!r} must be a number > 0", field=f"strategy.{key}"
                )
        if p["stop_temperature"] >= p["start_temperature"]:
            raise StrategyError(
                f"strategy {self.name!r}: strategy.stop_temperature {p['stop_temperature']!r} must be below "
                f"start_temperature {p['start_temperature']!r}",
                field="strategy.stop_temperature",
            )
        if p["initial"] not in _INITIAL:
            raise StrategyError(
                f"strategy {self.name!r}: strategy.initial {p['initial']!r} must be one of {', '.join(_INITIAL)}",
                field="strategy.initial",
            )
        if not isinstance(p["carry_weights"], bool):
            raise StrategyError(
                f"strategy {self.name!r}: strategy.carry_weights {p['carry_weights']!r} must be true or false",
                field="strategy.carry_weights",
            )
        if p["proposals"] not in _PROPOSALS:
            raise StrategyError(
                f"strategy {self.name!r}: strategy.proposals {p['proposals']!r} must be one of {', '.join(_PROPOSALS)}",
                field="strategy.proposals",
            )
        purify = p["purify"]
        if isinstance(purify, bool) or not isinstance(purify, (int, float)) or not purify >= 0:
            raise StrategyError(
                f"strategy {self.name!r}: strategy.purify {purify!r} must be a number >= 0 (0: off)",
                field="strategy.purify",
            )
        if p["proposal_finetune"] is not None:
            if not isinstance(p["proposal_finetune"], Mapping):
                raise StrategyError(
                    f"strategy {self.name!r}: strategy.proposal_finetune must be a mapping of fine-tune settings",
                    field="strategy.proposal_finetune",
                )
            from slimtune.compressors.training import check_finetune_overrides

            try:
                check_finetune_overrides(p["proposal_finetune"])
            except Exception as e:
                raise StrategyError(
                    f"strategy {self.name!r}: strategy.proposal_finetune: {e}", field="strategy.proposal_finetune"
                ) from None
        self.compressor_params = {"purify": float(purify), **check_admm_params(self.name, p["compressor_params"])}
        self.schedule = round_schedule(p["start_temperature"], p["stop_temperature"], p["trials_per_round"])

    def sampler(self, space: SearchSpace, n_objectives: int, seed: int, n_trials: int | None) -> AutoCompressSampler:
        p = self.params
        return AutoCompressSampler(
            space,
            p["rounds"],
            self.schedule,
            p["perturbation_magnitude"],
            p["resource"],
            p["target"],
            p["initial"],
            p["carry_weights"],
            seed,
            p["proposals"],
        )

    def suggest(self, trial: optuna.trial.Trial, space: SearchSpace) -> dict[str, Any]:
        self._stop_if_finished(trial)
        params: dict[str, Any] = {
            k: trial.suggest_float(k, d.low, d.high)  # type: ignore[attr-defined]
            for k, d in space.distributions().items()
            if k.startswith(SPARSITY_PREFIX)
        }
        params[PHASE_PARAM] = trial.suggest_categorical(PHASE_PARAM, [PROPOSAL, ADMM])
        if self.params["carry_weights"]:
            base = trial.user_attrs.get(ATTR_BASE)
            start = -1 if base is None else int(base)
            params[INIT_PARAM] = trial.suggest_int(INIT_PARAM, start, start)  # a record: one value
        return params

    def plan(self, params: Mapping[str, Any], space: SearchSpace) -> CompressionPlan:
        sparsities = space.plan({k: v for k, v in params.items() if k.startswith(SPARSITY_PREFIX)})
        if self.params["proposals"] == "admm" or params.get(PHASE_PARAM) == ADMM:
            plan = admm_plan(sparsities, {}, self.compressor_params)
        else:  # a quick proposal: one-shot pruning and the short fine-tune
            plan = sparsities
            if self.params["proposal_finetune"]:
                plan.finetune = dict(self.params["proposal_finetune"])
        start = int(params.get(INIT_PARAM, -1))
        if start >= 0:
            plan.init_from_trial = start
        return plan

    def seeds(self, space: SearchSpace) -> list[dict[str, float]]:
        return []  # round 0's first proposal is the starting point, rescaled to its target

    def finished(self, study: optuna.Study) -> str | None:
        p = self.params
        state = autocompress_state(
            study, p["rounds"], self.schedule.steps, p["carry_weights"], proposals=p["proposals"]
        )
        if state.reason is None:
            return None
        if RESULT_ATTR not in study.user_attrs:
            study.set_user_attr(
                RESULT_ATTR,
                {
                    "trial": state.done[-1].best if state.done else None,
                    "rounds": len(state.done),
                    "reason": state.reason,
                    "bests": [r.best for r in state.done],
                },
            )
        return state.reason


def autocompress_history(study: optuna.Study) -> pd.DataFrame:
    """The rounds of an ``autocompress`` study, from its trials' records alone.

    One row per trial: ``round``, ``phase`` (``proposal`` or ``admm``), ``step`` (annealing step in
    the round), ``trial``, ``state``, ``target`` (the round's), ``base`` (the trial whose model it
    started from), ``predicted`` and ``measured`` (relative resource), ``cost``, ``accepted``,
    ``purified`` (channels removed beyond the target after ADMM) and ``best`` (whether it is its
    round's result, the start of the next round).
    """
    import pandas as pd

    rows = []
    tagged = [t for t in study.get_trials(deepcopy=False) if ATTR_ROUND in t.user_attrs]
    for t in tagged:
        outcome = t.user_attrs.get(ATTR_OUTCOME) or {}
        purified = attributes.compressor_info(t).get("purified") or {}
        rows.append(
            {
                "round": int(t.user_attrs[ATTR_ROUND]),
                "phase": t.user_attrs.get(ATTR_PHASE, PROPOSAL),
                "step": t.user_attrs.get(attributes.SA.STEP),
                "trial": t.number,
                "state": t.state.name,
                "target": t.user_attrs.get(ATTR_TARGET),
                "base": t.user_attrs.get(ATTR_BASE),
                "predicted": t.user_attrs.get(attributes.SA.RESOURCE),
                "measured": outcome.get("measured"),
                "cost": t.user_attrs.get(ATTR_COST),
                "accepted": t.user_attrs.get(ATTR_ACCEPTED),
                "purified": int(sum(purified.values())),
            }
        )
    rows.sort(key=lambda r: (r["round"], r["phase"] == ADMM, r["trial"]))
    columns = [
        "round",
        "phase",
        "step",
        "trial",
        "state",
        "target",
        "base",
        "predicted",
        "measured",
        "cost",
        "accepted",
        "purified",
    ]
    df = pd.DataFrame(rows, columns=columns)
    df["base"] = pd.Series([r["base"] for r in rows], dtype=object)  # None in round 0, not NaN
    bests = {t.user_attrs.get(ATTR_BASE) for t in tagged} | {(study.user_attrs.get(RESULT_ATTR) or {}).get("trial")}
    df["best"] = df["trial"].isin(bests - {None})
    return df
