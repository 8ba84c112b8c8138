"""The trainable of ``backend: tune``: one slimtune trial inside one Ray Tune trial.

:func:`slimtune_trial` is a Tune function trainable. Its config names the Optuna trial the
:class:`~slimtune.trials.tune_backend` searcher asked for (``slimtune_trial``: the trial's number; its
parameters are already in the study). In the Tune worker it prepares the study once per process
(:func:`~slimtune.trials.study.prepare`, joining it like any worker: cached for the next trials of a
reused actor), then runs slimtune's :class:`~slimtune.trials.objective.Objective` on that trial through
the same :class:`~slimtune.trials.driver.Budgeted` wrapper as the local and Ray workers, and tells the
study the outcome: COMPLETE, PRUNED or FAIL with its reason, with the plan, measures, times, worker,
device and constraints stored as every backend stores them.

While the trial is fine-tuned, each value its fine-tune reports (the Objective's ``report(step,
value)`` path that Optuna's pruners use) also goes to Tune with ``ray.tune.report`` as
:data:`~slimtune.trials.tune_options.SCHEDULER_METRIC`: Tune's scheduler decides whether the trial
goes on (Optuna's own pruner stays out of it). A trial Tune stops there ends in the middle of its
``tune.report`` call; the searcher, which Tune tells first, records it as PRUNED. At the end the
trial reports its measures (:func:`trial_result`), which Tune's callbacks, loggers and
``ResultGrid`` receive.

A Tune trial that starts again (a retry of ``FailureConfig``, a trial resumed by ``Tuner.restore``)
runs the same Optuna trial: a trial still RUNNING in the study is run (from its start), a finished
one reports what the study holds, so nothing runs twice for the budget.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from slimtune import attributes as attrs
from slimtune import optuna_internals
from slimtune.errors import SlimtuneError
from slimtune.trials.config import SearchConfig
from slimtune.trials.driver import Budgeted, worker_identity
from slimtune.trials.study import prepare
from slimtune.trials.tune_options import OBJECTIVE_METRIC, SCHEDULER_METRIC, estimated

if TYPE_CHECKING:
    from slimtune.trials.study import PreparedStudy
    from slimtune.trials.task import Task

#: The key of a Tune trial's config (and of its results) holding the Optuna trial's number.
TRIAL_KEY = "slimtune_trial"
#: The key of a Tune trial's config holding the trial's parameters (as the strategy suggested them).
PARAMS_KEY = "params"
#: The fine-tune step of an intermediate result.
STEP_KEY = "finetune_step"

_CACHE: dict[str, tuple[PreparedStudy, dict[str, Any], Any]] = {}


class TuneTrial(optuna.trial.Trial):
    """An Optuna trial whose intermediate values go to Ray Tune as well; Tune's scheduler, not the
    study's pruner, decides whether it goes on.

    Args:
        study: The study (in the Tune worker).
        trial_id: The storage's id of the trial.
        sign: ``Objective.report_sign``: reported values are ``sign × metric``; Tune gets the metric.
        estimate: ``estimate(plan, metric)``: the study's value with this metric and the plan's predicted
            resources (:func:`objective_estimate`), reported as ``finetune_objective``; None: not reported.
    """

    def __init__(self, study: optuna.Study, trial_id: int, sign: float, estimate: Any = None) -> None:
        super().__init__(study, trial_id)
        self.tune_sign = sign or 1.0
        self.tune_estimate = estimate
        self.tune_plan: Mapping[str, Any] | None = None

    def report(self, value: float, step: int) -> None:
        from ray import tune

        super().report(value, step)  # the study keeps the intermediate values too (dashboard, pruners)
        metric = self.tune_sign * float(value)
        result: dict[str, Any] = {SCHEDULER_METRIC: metric, STEP_KEY: int(step), TRIAL_KEY: self.number}
        if self.tune_estimate is not None:
            if self.tune_plan is None:  # stored before the compression started
                self.tune_plan = self.user_attrs.get(attrs.Trial.PLAN) or {}
            result[OBJECTIVE_METRIC] = self.tune_estimate(self.tune_plan, metric)
        tune.report(result)

    def should_prune(self) -> bool:
        return False


def slimtune_trial(
    config: Mapping[str, Any], task_blob: bytes = b"", payload: Mapping[str, Any] | None = None, settings: Any = None
) -> None:
    """Run the Optuna trial ``config["slimtune_trial"]`` of the study ``payload`` describes (a Tune
    function trainable; :func:`slimtune.tune.tuner` binds ``task_blob``, ``payload`` and ``settings``
    with ``tune.with_parameters``)."""
    from ray import tune

    if payload is None or not task_blob:
        raise SlimtuneError("slimtune_trial runs inside a Tuner built by slimtune.tune.tuner (it needs the task)")
    _apply(settings or {})
    prepared, worker, estimate = _prepared(task_blob, payload)
    study = prepared.study
    number = int(config[TRIAL_KEY])
    try:
        frozen = optuna_internals.study_trial(study, number)
    except KeyError:
        raise SlimtuneError(f"study {study.study_name!r} has no trial {number} (was it deleted?)") from None
    if frozen.state == TrialState.RUNNING:
        context = tune.get_context()
        frozen = _run(prepared, frozen, {**worker, "tune_trial": context.get_trial_id()}, estimate)
    tune.report(trial_result(frozen, len(study.directions) == 1))


def _run(prepared: PreparedStudy, frozen: FrozenTrial, worker: Mapping[str, Any], estimate: Any) -> FrozenTrial:
    """Run the objective on a RUNNING trial and tell the study how it ended."""
    study, objective = prepared.study, prepared.objective
    trial = TuneTrial(study, optuna_internals.trial_id(frozen), objective.report_sign, estimate)
    values: Any = None
    state = TrialState.COMPLETE
    try:
        values = Budgeted(objective, prepared.config.n_trials, worker)(trial)
    except optuna.TrialPruned:
        state = TrialState.PRUNED
    except Exception as e:  # the objective stored the reason; anything before it did not
        state = TrialState.FAIL
        if attrs.fail_reason(optuna_internals.study_trial(study, trial.number)) is None:
            trial.set_user_attr(attrs.Trial.FAIL_REASON, f"{type(e).__name__}: {e}")
    try:
        return study.tell(trial, values if state == TrialState.COMPLETE else None, state=state, skip_if_finished=True)
    except ValueError as e:  # values Optuna refuses
        trial.set_user_attr(attrs.Trial.FAIL_REASON, f"{type(e).__name__}: {e}")
        return study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)


def trial_result(trial: FrozenTrial, single_objective: bool) -> dict[str, Any]:
    """What a finished trial reports to Tune: its number and state, every numeric measure, the value of a
    single-objective study (``objective``), feasibility, and the reason of a failure."""
    measures = attrs.measures(trial)
    out: dict[str, Any] = {TRIAL_KEY: trial.number, "state": trial.state.name}
    for key, value in measures.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = value
    metric = measures.get("accuracy")
    out[SCHEDULER_METRIC] = float(metric) if isinstance(metric, (int, float)) else math.nan
    if single_objective:
        out["objective"] = float(trial.values[0]) if trial.values and trial.state == TrialState.COMPLETE else math.nan
        out[OBJECTIVE_METRIC] = out["objective"]
    feasible = attrs.feasible(trial)
    if feasible is not None:
        out["feasible"] = feasible
    for key, value in (
        ("fail_reason", attrs.fail_reason(trial)),
        ("duplicate_of", attrs.duplicate_of(trial)),
        ("over_budget", attrs.over_budget(trial) or None),
    ):
        if value is not None:
            out[key] = value
    return out


def _prepared(task_blob: bytes, payload: Mapping[str, Any]) -> tuple[PreparedStudy, dict[str, Any], Any]:
    """The study prepared in this worker process (once per task and configuration), where the worker runs, and
    the estimate of a trial's value while it is fine-tuned (:func:`objective_estimate`)."""
    key = hashlib.sha256(task_blob + json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
    if key in _CACHE:
        return _CACHE[key]
    from ray import cloudpickle

    me = {**worker_identity(), "backend": "tune"}
    try:
        task = cloudpickle.loads(task_blob)
    except Exception as e:
        raise SlimtuneError(
            f"the Tune worker on {me.get('node_ip', me['host'])} cannot load the task: {type(e).__name__}: {e} "
            "(the task's modules must be importable on every Ray node: install them there or put them on PYTHONPATH)"
        ) from e
    config = SearchConfig.from_dict(payload)
    config = config.replace(join=True, backend="local", tune=None, progress=False)
    config = config.replace(device=_device(task, config, me))
    prepared = prepare(task, config)
    ignore_stop(prepared.study)
    _CACHE.clear()  # one study per worker process at a time
    _CACHE[key] = (prepared, me, objective_estimate(prepared))
    return _CACHE[key]


def objective_estimate(prepared: PreparedStudy) -> Callable[[Mapping[str, Any], float], float] | None:
    """For a study weighted over the metric and FLOPs, params or size: ``estimate(plan, metric)``, the weighted
    value with ``metric`` and the plan's FLOPs, params and size predicted exactly from its channel counts
    (:class:`~slimtune.compressors.measures.ResourcePredictor`, the model is not built); None for other studies
    (several objectives, latency or memory, one objective: the metric itself says it all)."""
    cost = prepared.cost
    if not estimated(cost.objectives, cost.weights):
        return None
    predictor: list[Any] = []

    def estimate(plan: Mapping[str, Any], metric: float) -> float:
        from slimtune.compressors import CompressionPlan
        from slimtune.compressors.measures import ResourcePredictor

        try:
            if not predictor:
                predictor.append(ResourcePredictor(prepared.objective.graph, prepared.objective.task.example_inputs))
            relative = predictor[0].relative(CompressionPlan.from_dict(plan))
            return float(cost.values({**relative, "accuracy": metric})[0])
        except Exception:  # a plan the predictor cannot read: no estimate (NaN: schedulers skip it)
            return math.nan

    return estimate


def ignore_stop(study: optuna.Study) -> None:
    """Let ``study.stop()`` be a no-op on this study object.

    Slimtune's budget check and strategies call ``study.stop()`` to end an Optuna ``optimize`` loop;
    Tune trials run outside one (Optuna raises there). Under Tune the searcher ends the run: it checks
    the budget and :meth:`~slimtune.strategies.Strategy.finished` before each trial it asks for.
    """
    study.stop = lambda: None  # type: ignore[method-assign]


def _device(task: Task, config: SearchConfig, me: Mapping[str, Any]) -> str | None:
    """A worker given GPUs by Ray runs on the first of them (it sees only its own), unless the CPU is asked."""
    wanted = config.device or task.device
    if me.get("gpus") and wanted != "cpu":
        return "cuda:0"
    return config.device


def _apply(settings: Mapping[str, Any]) -> None:
    """The driver's settings in a Tune worker: SLIMTUNE_* variables, import path, working directory
    (Tune starts trials in their own folder), threads."""
    import torch

    os.environ.update(settings.get("env", {}))
    for path in settings.get("sys_path", ()):
        if os.path.isdir(path) and path not in sys.path:
            sys.path.append(path)
    if os.path.isdir(settings.get("cwd", "")):
        os.chdir(settings["cwd"])
    torch.set_num_threads(int(settings.get("threads", 1)))
    optuna.logging.set_verbosity(optuna.logging.WARNING)


__all__ = [
    "PARAMS_KEY",
    "STEP_KEY",
    "TRIAL_KEY",
    "TuneTrial",
    "ignore_stop",
    "objective_estimate",
    "slimtune_trial",
    "trial_result",
]
