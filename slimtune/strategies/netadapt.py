"""``netadapt``: NetAdapt's iterative, resource-driven pruning, one trial per candidate.

NetAdapt (Yang et al., "NetAdapt: Platform-Aware Neural Network Adaptation for Mobile
Applications", ECCV 2018) shrinks a network in iterations. Iteration ``i`` lowers the resource
budget by a step, ``B_i = max(target, R_{i-1} - max(step × step_decay^i, min_step))``; for every
channel group it builds one *candidate*: the current network with that group pruned just enough
(the fewest channels) to meet ``B_i``; each candidate is fine-tuned briefly and evaluated; the
best one becomes the network of the next iteration. When the budget reaches the target, the final
network is fine-tuned long.

Here every candidate is one trial (its parameters the full ``sparsity/<group>`` vector, so the
dashboard and the other strategies see an ordinary plan) and the resource is predicted from the
plan without building it: MACs, parameters or size exactly from channel counts, latency from the
NetAdapt-style lookup table (:class:`~slimtune.compressors.measures.LatencyTable`, measured once
per study and kept in it).

**Progressive, as in the paper** (``inherit_weights: true``, the default): every candidate of
iteration ``i + 1`` starts from the network chosen in iteration ``i`` *with its short-term
fine-tuned weights* (the plan's ``init_from_trial`` names that trial; the objective loads its saved
model and prunes it further), and the long-term fine-tune trains the last adapted network. This
needs the trials' models saved (``save_models: all``); without them the strategy ends after the
first iteration and says why. ``inherit_weights: false`` builds every candidate from the original
model pruned by the cumulative plan instead (a greedy allocation search; the ``benchmarks``
compare both). Other differences from the paper: the channels removed are chosen by the space's
criterion (the paper uses the L2 norm of filters, ``criterion: l2``), and candidates of one
iteration run in parallel on several workers.

**Ending.** Every iteration strictly lowers the predicted resource by at least ``min_step``
(unless no single group can: then the iteration's budget is relaxed to the largest resource the
groups reach at their upper bounds, so each group that can still shrink competes, and at least
one channel goes), so the target is reached after finitely many iterations, or the strategy ends
at the closest network it found when no group can be pruned further (all at ``max_sparsity``).
With ``long_term_finetune`` set, one last trial fine-tunes the final network with those settings
(parameter ``netadapt/phase = long_term``); then the strategy is finished and the runner stops
the study. Each iteration costs one trial per candidate group: when the study's
``n_trials`` is below what the step schedule needs to reach the target (the candidates of every
iteration, plus the long-term trial; estimated by replaying the schedule, each iteration choosing
its least-pruned candidate and counted with every group that can still shrink:
:meth:`NetAdaptSampler.schedule`), the first trial logs a warning saying how many it may take, as
the study would otherwise end above the target. ``step: auto`` avoids that: it picks the smallest
first step (on a 0.01 grid) whose estimated schedule fits the study's ``n_trials`` with one
iteration to spare, once, and keeps it in
the study (attribute ``netadapt.step``) so resumed runs and other workers replay the same schedule.

**Records.** Each trial stores ``netadapt.iteration``, ``netadapt.candidate`` (its group, or
``final``), ``netadapt.budget``, ``netadapt.resource`` (predicted, relative) and
``netadapt.base`` (the trial chosen in the previous iteration, which it builds on); the chosen
candidate of every iteration follows from them (:func:`netadapt_history`); the study's user
attribute ``netadapt.result`` holds the outcome once finished. The state is derived
from these records, so a resumed run or another worker continues the same iteration; a worker
with no candidate left waits for the iteration to end.

Parameters (spec ``strategy`` section):

====================== ============ ==================================================
``resource``           from the     ``flops``, ``params``, ``size`` or ``latency`` (default:
                       constraints  the first such constraint, else ``flops``)
``target``             idem         resource to keep, relative (default: that constraint's
                                    bound, else 0.5)
``step``               0.1          resource removed in the first iteration (relative to
                                    the original), or ``auto``: the smallest that reaches
                                    the target within ``n_trials``
``step_decay``         0.9          factor on the step after each iteration
``min_step``           0.02         smallest step (guarantees the end)
``short_term_finetune`` None        ``plan.finetune`` overrides for candidates (e.g.
                                    ``{steps: 50}``); None: the task's fine-tuning
``long_term_finetune`` None         overrides for one final trial (e.g. ``{epochs: 10}``);
                                    None: no final trial, the last chosen candidate is final
``inherit_weights``    true         candidates start from the previous iteration's chosen
                                    network and its weights (the paper); false: from the
                                    original model
====================== ============ ==================================================

Example:
    >>> import os, tempfile, slimtune, torch
    >>> from slimtune.examples.models import mlp
    >>> model, x = mlp(16, (32, 24), 4).eval(), torch.randn(64, 16)
    >>> ref = model(x).detach()
    >>> task = slimtune.Task(model, x[:1], lambda m: -float((m(x).detach() - ref).square().mean()))
    >>> url = "sqlite:///" + os.path.join(tempfile.mkdtemp(), "na.db")   # trials' models saved: weights carry on
    >>> study = slimtune.search(task, strategy="netadapt", n_trials=50, storage=url, target=0.6, step=0.2,
    ...                         space={"sensitivity": False}, progress=False)
    >>> history = netadapt_history(study)   # one row per candidate trial
    >>> history[history.chosen]["resource"].is_monotonic_decreasing
    True
    >>> study.user_attrs["netadapt.result"]["reason"].startswith("reached flops")
    True
"""

from __future__ import annotations

import logging
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
from slimtune.strategies._budget import Budget, ResourceModel, check_budget_params, resolve_budget
from slimtune.strategies._cost import trial_cost

if TYPE_CHECKING:
    import pandas as pd
    from optuna.trial import FrozenTrial

    from slimtune.compressors.plan import CompressionPlan
    from slimtune.search_spaces import SearchSpace

ATTR_ITERATION = attributes.NetAdapt.ITERATION
ATTR_CANDIDATE = attributes.NetAdapt.CANDIDATE
ATTR_BUDGET = attributes.NetAdapt.BUDGET
ATTR_RESOURCE = attributes.NetAdapt.RESOURCE
ATTR_BASE = attributes.NetAdapt.BASE
PHASE = "netadapt/phase"
SHORT, LONG = "short_term", "long_term"
FINAL = "final"
RESULT_ATTR = attributes.NetAdapt.RESULT
STEP_ATTR = attributes.StrategyState.NETADAPT_STEP
ATTR_SPARE = attributes.NetAdapt.SPARE
INIT_PARAM = "netadapt/init_from_trial"
logger = logging.getLogger("slimtune")
_POLL_S = 0.5
_EPS = 1e-9


@dataclass
class Iteration:
    """One NetAdapt iteration as the study's trials give it.

    Attributes:
        index: Iteration number (0-based).
        budget: The relative resource every candidate must meet.
        base: ``{group: sparsity}`` of the network the iteration starts from.
        base_trial: The trial chosen in the previous iteration (None for the first).
        resource: Predicted relative resource of ``base``.
        candidates: ``{group: (sparsity, predicted relative resource)}``: the group pruned just
            enough to meet ``budget``.
        claims: ``{group: [trials]}``: the trials that ran (or run) each candidate.
        chosen: The best candidate's trial number, once every candidate has finished.
    """

    index: int
    budget: float
    base: dict[str, float]
    base_trial: int | None
    resource: float
    candidates: dict[str, tuple[float, float]]
    claims: dict[str, list[FrozenTrial]] = field(default_factory=dict)
    chosen: int | None = None

    def done(self, group: str) -> bool:
        """A candidate is done when a trial completed it, or all its trials ended otherwise."""
        trials = self.claims.get(group, [])
        if any(t.state == TrialState.COMPLETE for t in trials):
            return True
        return bool(trials) and all(t.state.is_finished() for t in trials)


@dataclass
class NetAdaptState:
    """Completed iterations, the current one, and whether the strategy has finished."""

    iterations: list[Iteration]
    current: Iteration | None
    phase: str  # "iterate" | "final" | "finished"
    final: dict[str, float]
    final_trials: list[FrozenTrial]
    reason: str = ""


class NetAdaptSampler(optuna.samplers.BaseSampler):
    """The Optuna sampler of ``netadapt``: hands each trial an unclaimed candidate of the
    current iteration (or the final network), waiting while other workers finish an iteration."""

    def __init__(
        self,
        space: SearchSpace,
        params: Mapping[str, Any],
        seed: int | None = None,
        wait: bool = True,
        n_trials: int | None = None,
    ) -> None:
        self.space = space
        self.n_trials = n_trials  # the study's budget, for the warning of :meth:`check_budget`
        self._checked: set[int] = set()
        self._auto_steps: dict[int, float] = {}
        # wait=False: a trial finding no free candidate is marked ``netadapt.spare`` at once instead
        # of waiting (for drivers that ask for trials in the process that must also tell results)
        self.wait = wait
        self.params = dict(params)
        self.long_term = params.get("long_term_finetune") is not None
        self.inherit = bool(params.get("inherit_weights", True))
        self.lower = {g: space.options.min_sparsity for g in space.groups}
        self._models: dict[int, tuple[Budget, ResourceModel]] = {}
        self._candidates: dict[tuple[Any, ...], dict[str, tuple[float, float]]] = {}
        self._fallback = optuna.samplers.RandomSampler(seed=seed)

    # ------------------------------------------------------------------ budget and candidates
    def budget(self, study: optuna.Study) -> tuple[Budget, ResourceModel]:
        key = optuna_internals.study_key(study)
        if key not in self._models:
            budget = resolve_budget(
                "netadapt",
                self.params.get("resource"),
                self.params.get("target"),
                attributes.study_constraints(study),
                "flops",
                0.5,
            )
            assert budget is not None
            self._models[key] = (budget, ResourceModel(self.space, budget.resource, study))
        return self._models[key]

    def first_step(self, study: optuna.Study) -> float:
        """The first iteration's step: ``strategy.step``, or with ``step: auto`` the one
        :meth:`auto_step` picks, chosen once and kept in the study (attribute ``netadapt.step``)
        so that resumed runs and other workers replay the same schedule."""
        if self.params["step"] != "auto":
            return float(self.params["step"])
        key = optuna_internals.study_key(study)
        if key not in self._auto_steps:
            stored = study.user_attrs.get(STEP_ATTR)
            if stored is None:
                study.set_user_attr(STEP_ATTR, self.auto_step(study))
                stored = study.user_attrs[STEP_ATTR]  # a racing worker's, if it won
            self._auto_steps[key] = float(stored)
        return self._auto_steps[key]

    def auto_step(self, study: optuna.Study) -> float:
        """The smallest first step on a 0.01 grid whose schedule reaches the target within the
        study's ``n_trials`` with one iteration (a trial per group) to spare (:meth:`schedule`'s
        cautious estimate; the real path depends on which candidates win; found by bisection, the
        trials falling as the step grows); the largest, one iteration to the target, when none does; 0.1
        without a trial budget."""
        if self.n_trials is None:
            return 0.1
        budget, model = self.budget(study)
        room = self.n_trials - len(self.space.groups)  # one iteration spare: the real path may differ
        hi = max(1, int(round((model.relative(self.lower) - budget.target) * 100)))
        if self.schedule(study, hi / 100)[1] > room:
            return hi / 100
        lo = 0  # steps in (lo, hi] / 100: hi fits the budget
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.schedule(study, mid / 100)[1] <= room:
                hi = mid
            else:
                lo = mid
        return hi / 100

    def schedule(self, study: optuna.Study, first_step: float | None = None) -> tuple[int, int]:
        """``(iterations, trials)`` NetAdapt takes from the original network to the target (or to
        where no group can shrink), the long-term trial included. A cautious estimate: the
        iterations are replayed as :meth:`state` would, each choosing its least-pruned candidate
        (accuracy decides in the real run) and counted with every group that can still shrink (a
        group that cannot meet the budget alone now may after other groups shrank)."""
        budget, model = self.budget(study)
        step = self.first_step(study) if first_step is None else first_step
        base = dict(self.lower)
        resource, i, trials = model.relative(base), 0, 0
        while resource > budget.target + _EPS and i < 10_000:
            _, cands = self._iteration(model, base, resource, i, step, budget.target)
            if not cands:
                break
            trials += max(len(cands), len(self.reachable(model, base)))
            g, (sparsity, resource) = max(cands.items(), key=lambda kv: (kv[1][1], kv[0]))
            base = {**base, g: sparsity}
            i += 1
        return i, trials + int(self.long_term)

    def _iteration(
        self, model: ResourceModel, base: dict[str, float], resource: float, i: int, step: float, target: float
    ) -> tuple[float, dict[str, tuple[float, float]]]:
        """Iteration ``i``'s budget and candidates from ``base`` (at ``resource``)."""
        b = max(target, resource - self._step(i, step))
        cands = self.candidates(model, base, b)
        if not cands:
            # no group alone reaches the scheduled budget: relax it to the largest of the
            # groups' most-pruned resources, so every group that can still shrink competes
            reachable = self.reachable(model, base)
            if reachable and max(reachable.values()) < resource - _EPS:
                b = max(target, max(reachable.values()))
                cands = self.candidates(model, base, b)
        return b, cands

    def check_budget(self, study: optuna.Study) -> None:
        """Warn (once per study and process) when the trial budget looks too small to reach the target."""
        if self.n_trials is None or optuna_internals.study_key(study) in self._checked:
            return
        self._checked.add(optuna_internals.study_key(study))
        iterations, needed = self.schedule(study)
        if needed > self.n_trials:
            budget, _ = self.budget(study)
            logger.warning(
                "netadapt: reaching %s %g takes about %d trials (%d iterations%s) but the budget is "
                "n_trials %d: the study may end above the target%s; raise n_trials or strategy.step (or step: auto)",
                budget.resource,
                budget.target,
                needed,
                iterations,
                " + the long-term fine-tune" if self.long_term else "",
                self.n_trials,
                " and without the long-term fine-tune" if self.long_term else "",
            )

    def _step(self, i: int, first: float) -> float:
        p = self.params
        return max(first * float(p["step_decay"]) ** i, float(p["min_step"]))

    def candidates(self, model: ResourceModel, base: dict[str, float], budget: float) -> dict[str, tuple[float, float]]:
        """``{group: (sparsity, resource)}``: each group pruned by the fewest channels meeting ``budget``."""
        key = (model.resource, round(budget, 12), tuple(sorted(base.items())))
        if key in self._candidates:
            return self._candidates[key]
        out = {}
        for g in self.space.groups:
            group = self.space.graph.groups[g]
            per_block = group.size // group.blocks
            k0 = group.n_prune(base[g]) // group.blocks
            kmax = min(per_block - 1, math.floor(self.space.upper[g] * per_block + _EPS))
            if kmax <= k0:
                continue

            def resource(k: int, g: str = g, per_block: int = per_block) -> float:
                return model.relative({**base, g: k / per_block})

            r_max = resource(kmax)
            if r_max > budget + _EPS:
                continue
            lo, hi, r_hi = k0, kmax, r_max  # resource(lo) > budget (the base misses it), resource(hi) <= budget
            while hi - lo > 1:
                mid = (lo + hi) // 2
                r = resource(mid)
                if r <= budget + _EPS:
                    hi, r_hi = mid, r
                else:
                    lo = mid
            out[g] = (hi / per_block, r_hi)
        self._candidates[key] = out
        return out

    def reachable(self, model: ResourceModel, base: dict[str, float]) -> dict[str, float]:
        """``{group: resource}`` with each group that can still shrink pruned to its upper bound."""
        out = {}
        for g in self.space.groups:
            group = self.space.graph.groups[g]
            per_block = group.size // group.blocks
            kmax = min(per_block - 1, math.floor(self.space.upper[g] * per_block + _EPS))
            if kmax > group.n_prune(base[g]) // group.blocks:
                out[g] = model.relative({**base, g: kmax / per_block})
        return out

    # ------------------------------------------------------------------ state
    def state(self, study: optuna.Study, exclude: int | None = None) -> NetAdaptState:
        """Replay the iterations from the study's trials (deterministic: every worker agrees)."""
        budget, model = self.budget(study)
        claims: dict[tuple[int, str], list[FrozenTrial]] = {}
        for t in study.get_trials(deepcopy=False):
            if t.number == exclude or ATTR_ITERATION not in t.user_attrs or t.user_attrs.get(ATTR_CANDIDATE) is None:
                continue
            claims.setdefault((int(t.user_attrs[ATTR_ITERATION]), str(t.user_attrs[ATTR_CANDIDATE])), []).append(t)
        base = dict(self.lower)
        resource = model.relative(base)
        step = self.first_step(study)
        base_trial: int | None = None
        done: list[Iteration] = []
        i = 0
        while True:
            if resource <= budget.target + _EPS:
                reason = f"reached {budget.resource} {resource:.4g} <= target {budget.target:g} in {i} iterations"
                break
            b, cands = self._iteration(model, base, resource, i, step, budget.target)
            if not cands:
                reason = (
                    f"no group can be pruned further (at {budget.resource} {resource:.4g} after {i} iterations; "
                    f"target {budget.target:g})"
                )
                break
            it = Iteration(i, b, dict(base), base_trial, resource, cands, {g: claims.get((i, g), []) for g in cands})
            if not all(it.done(g) for g in cands):
                return NetAdaptState(done, it, "iterate", base, [])
            ranked = sorted(
                (trial_cost(study, t), cands[g][1], t.number, g)
                for g, trials in it.claims.items()
                for t in trials
                if t.state == TrialState.COMPLETE
            )
            if not ranked:
                reason = f"every candidate of iteration {i} failed"
                return NetAdaptState(done + [it], None, "finished", base, [], reason)
            _, resource, it.chosen, g = ranked[0]
            base = {**base, g: cands[g][0]}
            base_trial = it.chosen
            done.append(it)
            i += 1
            chosen = next(t for trials in it.claims.values() for t in trials if t.number == it.chosen)
            if (
                self.inherit
                and attributes.artifact_id(chosen) is None
                and (resource > budget.target + _EPS or self.long_term)
            ):
                reason = (
                    f"iteration {i - 1}'s chosen trial {it.chosen} has no saved model, and the next step starts from "
                    "it: run with save_models='all' (or strategy.inherit_weights: false)"
                )
                return NetAdaptState(done, None, "finished", base, [], reason)
        if not self.long_term:
            return NetAdaptState(done, None, "finished", base, [], reason)
        final = claims.get((i, FINAL), [])
        if any(t.state == TrialState.COMPLETE for t in final) or (final and all(t.state.is_finished() for t in final)):
            return NetAdaptState(done, None, "finished", base, final, reason + "; long-term fine-tune done")
        return NetAdaptState(done, None, "final", base, final, reason)

    # ------------------------------------------------------------------ BaseSampler
    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        dists: dict[str, BaseDistribution] = {
            k: d for k, d in self.space.distributions().items() if k.startswith(SPARSITY_PREFIX)
        }
        dists[PHASE] = CategoricalDistribution([SHORT, LONG])
        return dists

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if not search_space:
            return {}
        self.check_budget(study)
        while True:
            state = self.state(study, exclude=trial.number)
            if state.phase == "finished":
                return self._params(state.final, LONG if self.long_term else SHORT, search_space)
            n = len(state.iterations)
            if state.phase == "final":
                running = [t for t in state.final_trials if t.state == TrialState.RUNNING]
                if not running:
                    claim = {
                        ATTR_ITERATION: n,
                        ATTR_CANDIDATE: FINAL,
                        ATTR_BUDGET: None,
                        ATTR_RESOURCE: self.budget(study)[1].relative(state.final),
                        ATTR_BASE: state.iterations[-1].chosen if state.iterations else None,
                    }
                    if self._claim(study, trial, claim, n, FINAL):
                        return self._params(state.final, LONG, search_space)
                    continue
            else:
                it = state.current
                assert it is not None
                for g, (s, r) in it.candidates.items():
                    if it.done(g) or any(t.state == TrialState.RUNNING for t in it.claims.get(g, [])):
                        continue
                    claim = {
                        ATTR_ITERATION: it.index,
                        ATTR_CANDIDATE: g,
                        ATTR_BUDGET: it.budget,
                        ATTR_RESOURCE: r,
                        ATTR_BASE: it.base_trial,
                    }
                    if self._claim(study, trial, claim, it.index, g):
                        return self._params({**it.base, g: s}, SHORT, search_space)
                    break  # another worker took it: look again
                else:
                    if not self.wait:
                        return self._spare(study, trial, it.base, search_space)
                    self._wait(study, trial)
                continue
            if not self.wait:
                return self._spare(study, trial, state.final, search_space)
            self._wait(study, trial)

    def _spare(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        base: dict[str, float],
        search_space: Mapping[str, BaseDistribution],
    ) -> dict[str, Any]:
        record(study, trial, ATTR_SPARE, True)
        return self._params(base, SHORT, search_space)

    def _claim(
        self, study: optuna.Study, trial: FrozenTrial, claim: dict[str, Any], iteration: int, candidate: str
    ) -> bool:
        """Record the claim on the trial, then check no lower-numbered running trial holds it too."""
        for key, value in claim.items():
            record(study, trial, key, value)
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.COMPLETE)):
            if (
                t.number < trial.number
                and t.user_attrs.get(ATTR_ITERATION) == iteration
                and t.user_attrs.get(ATTR_CANDIDATE) == candidate
            ):
                record(study, trial, ATTR_CANDIDATE, None)
                return False
        return True

    def _wait(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Other workers run the remaining candidates: wait, failing trials whose worker died
        (storages with heartbeats retry them; their candidate is then free again)."""
        record(study, trial, ATTR_CANDIDATE, None)
        time.sleep(_POLL_S)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)

    def _params(
        self, sparsities: Mapping[str, float], phase: str, search_space: Mapping[str, BaseDistribution]
    ) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for g, s in sparsities.items():
            name = self.space.param_name(g)
            if name in search_space:
                d = search_space[name]
                out[name] = min(max(float(s), d.low), d.high)  # type: ignore[attr-defined]
        if PHASE in search_space:
            out[PHASE] = phase
        return out

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self._fallback.sample_independent(study, trial, param_name, param_distribution)


@register_strategy
class NetAdapt(Strategy):
    """NetAdapt (Yang et al. 2018): iterative pruning to a resource target (module docstring)."""

    name = "netadapt"
    defaults = {
        "resource": None,
        "target": None,
        "step": 0.1,
        "step_decay": 0.9,
        "min_step": 0.02,
        "short_term_finetune": None,
        "long_term_finetune": None,
        "inherit_weights": True,
    }
    uses_sensitivity = False  # NetAdapt measures every candidate itself

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        p = self.params
        check_budget_params(self.name, p)
        for key, lo, hi in (("step", 0.0, 1.0), ("step_decay", 0.0, 1.0), ("min_step", 0.0, 1.0)):
            v = p[key]
            if key == "step" and v == "auto":
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo < v <= hi:
                also = " or 'auto'" if key == "step" else ""
                raise StrategyError(
                    f"strategy {self.name!r}: strategy.{key} {v!r} must be in ({lo:g}, {hi:g}]{also}",
                    field=f"strategy.{key}",
                )
        for key in ("short_term_finetune", "long_term_finetune"):
            v = p[key]
            if v is not None:
                if not isinstance(v, Mapping):
                    raise StrategyError(
                        f"strategy {self.name!r}: strategy.{key} must be a mapping of fine-tune settings, got {v!r}",
                        field=f"strategy.{key}",
                    )
                from slimtune.compressors.training import check_finetune_overrides

                try:
                    check_finetune_overrides(v)
                except Exception as e:
                    raise StrategyError(
                        f"strategy {self.name!r}: strategy.{key}: {e}", field=f"strategy.{key}"
                    ) from None
        if not isinstance(p["inherit_weights"], bool):
            raise StrategyError(
                f"strategy {self.name!r}: strategy.inherit_weights {p['inherit_weights']!r} must be true or false",
                field="strategy.inherit_weights",
            )
        self._sampler: NetAdaptSampler | None = None

    def sampler(self, space: SearchSpace, n_objectives: int, seed: int, n_trials: int | None) -> NetAdaptSampler:
        self._sampler = NetAdaptSampler(space, self.params, seed, n_trials=n_trials)
        return self._sampler

    def suggest(self, trial: optuna.trial.Trial, space: SearchSpace) -> dict[str, Any]:
        self._stop_if_finished(trial)
        params: dict[str, Any] = {
            k: trial.suggest_float(k, d.low, d.high)  # type: ignore[attr-defined]
            for k, d in space.distributions().items()
            if k.startswith(SPARSITY_PREFIX)
        }
        params[PHASE] = trial.suggest_categorical(PHASE, [SHORT, LONG])
        if trial.user_attrs.get(ATTR_SPARE):
            raise optuna.TrialPruned("netadapt: no candidate left for this trial (the iteration runs on other workers)")
        if self.params["inherit_weights"]:
            base = trial.user_attrs.get(ATTR_BASE)
            start = -1 if base is None else int(base)
            params[INIT_PARAM] = trial.suggest_int(INIT_PARAM, start, start)  # a record: one value
        return params

    def plan(self, params: Mapping[str, Any], space: SearchSpace) -> CompressionPlan:
        plan = space.plan({k: v for k, v in params.items() if k != INIT_PARAM})
        overrides = self.params["long_term_finetune" if params.get(PHASE) == LONG else "short_term_finetune"]
        if overrides:
            plan.finetune = dict(overrides)
        start = int(params.get(INIT_PARAM, -1))
        if start >= 0:
            plan.init_from_trial = start  # the previous iteration's chosen network, with its weights
        return plan

    def seeds(self, space: SearchSpace) -> list[dict[str, float]]:
        return []  # NetAdapt starts from the original network

    def finished(self, study: optuna.Study) -> str | None:
        if self._sampler is None:
            return None
        state = self._sampler.state(study)
        if state.phase != "finished":
            return None
        if RESULT_ATTR not in study.user_attrs:
            last = state.iterations[-1].chosen if state.iterations else None
            final = next((t.number for t in state.final_trials if t.state == TrialState.COMPLETE), None)
            study.set_user_attr(
                RESULT_ATTR,
                {
                    "trial": last,
                    "final_trial": final,
                    "iterations": len(state.iterations),
                    "reason": state.reason,
                    "sparsities": state.final,
                },
            )
        return state.reason


def netadapt_history(study: optuna.Study) -> pd.DataFrame:
    """The NetAdapt iterations of a study, from its trials' records alone.

    One row per candidate trial: ``iteration``, ``budget``, ``candidate`` (its group, or
    ``final``), ``trial``, ``state``, ``cost`` (lower is better, see
    :mod:`slimtune.strategies._cost`), ``resource`` (predicted, relative) and ``chosen``: whether
    the next iteration (or the final trial, or the study's ``netadapt.result``) built on it.
    """
    import pandas as pd

    tagged = [
        t
        for t in study.get_trials(deepcopy=False)
        if ATTR_ITERATION in t.user_attrs and t.user_attrs.get(ATTR_CANDIDATE) is not None
    ]
    chosen = {t.user_attrs.get(ATTR_BASE) for t in tagged} - {None}
    result = study.user_attrs.get(RESULT_ATTR) or {}
    if result.get("trial") is not None:
        chosen.add(result["trial"])
    rows = [
        {
            "iteration": int(t.user_attrs[ATTR_ITERATION]),
            "budget": t.user_attrs.get(ATTR_BUDGET),
            "candidate": t.user_attrs[ATTR_CANDIDATE],
            "trial": t.number,
            "state": t.state.name,
            "cost": trial_cost(study, t),
            "resource": t.user_attrs.get(ATTR_RESOURCE),
            "chosen": t.user_attrs[ATTR_CANDIDATE] != FINAL and t.number in chosen,
        }
        for t in tagged
    ]
    columns = ["iteration", "budget", "candidate", "trial", "state", "cost", "resource", "chosen"]
    return pd.DataFrame(rows, columns=columns).sort_values(["iteration", "trial"]).reset_index(drop=True)
