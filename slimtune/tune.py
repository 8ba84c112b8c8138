"""Ray Tune users: a slimtune study inside a ``ray.tune.Tuner``, with Tune's schedulers and callbacks.

:func:`tuner` builds a ready ``Tuner`` from a spec file (or a :class:`~slimtune.trials.spec.Spec`) or
from a :class:`~slimtune.Task` and the arguments of :func:`slimtune.search`. Its search algorithm asks
the study's own strategy on the study's storage (:class:`SlimtuneSearcher`: seeds, custom samplers and
constraints work as in the other backends), its trainable runs one slimtune trial (plan → compress →
fine-tune → evaluate → measures) and reports the fine-tune metric to Tune while it trains
(:data:`SCHEDULER_METRIC`) and the measures at its end. Results land in the study exactly as the local
and Ray backends write them, so ``slimtune status``, ``pareto``, ``export`` and the dashboard see
Tune-run trials like the others; Tune's ``ResultGrid`` holds the measures too.

- **Schedulers**: ``scheduler="asha"`` (or ``{"name": "asha", "reduction_factor": 2}``, or a
  ``TrialScheduler`` object) stops trials from the metric they report while fine-tuned; a stopped trial
  is PRUNED in the study. With one objective or ``weights`` only: a Pareto study (several objectives)
  runs FIFO, and asking for a scheduler there is an error.
- **Callbacks**: ``callbacks=["csv", "tensorboard"]`` (also ``json``, ``mlflow``, ``wandb``, or Tune
  ``Callback`` objects); every trial's measures reach them.
- **Faults and restore**: ``max_failures`` retries a trial whose worker died (the same Optuna trial runs
  again); :func:`restore` (``Tuner.restore``) resumes an interrupted run without losing or repeating a
  study trial.

Example:
    .. code-block:: python

        from slimtune.tune import tuner

        results = tuner("examples/digits.yaml", scheduler="asha", weights={"accuracy": 1, "flops": 0.5},
                        n_trials=24, callbacks=["csv", "tensorboard"]).fit()
        results.get_dataframe()[["slimtune_trial", "state", "accuracy", "flops", "objective"]]
        results.get_best_result("objective", "min")        # weights: one scalar, minimised
        # after an interruption: slimtune.tune.restore("examples/digits.yaml").fit()
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from slimtune.trials.config import SearchConfig
from slimtune.trials.study import prepare
from slimtune.trials.tune_backend import build_tuner, experiment_dir, restore_tuner
from slimtune.trials.tune_options import OBJECTIVE_METRIC, SCHEDULER_METRIC, TUNE_FIELDS, TuneOptions
from slimtune.trials.tune_searcher import tune_driver_config
from slimtune.trials.tune_trial import slimtune_trial, trial_result

if TYPE_CHECKING:
    from slimtune.trials.spec import Spec
    from slimtune.trials.task import Task

_OPTION_ARGS = ("max_concurrent_trials", "resources_per_trial", "max_failures", "address", "storage_path", "name")


def tuner(
    spec_or_task: str | os.PathLike[str] | Spec | Task,
    *,
    scheduler: str | Mapping[str, Any] | Any = None,
    callbacks: Sequence[str | Mapping[str, Any] | Any] = (),
    run_config: Any = None,
    max_concurrent_trials: int | None = None,
    resources_per_trial: Mapping[str, float] | None = None,
    max_failures: int | None = None,
    address: str | None = None,
    storage_path: str | None = None,
    name: str | None = None,
    reuse_actors: bool | None = None,
    **search: Any,
) -> Any:
    """A ``ray.tune.Tuner`` that runs a slimtune study's trials; call ``.fit()`` on it.

    The study is created (or resumed) first: baseline, sensitivity, seed trials, as ``slimtune run``
    does. Ray is started here when it is not running (``address``: a cluster's).

    Args:
        spec_or_task: A spec file, a :class:`~slimtune.trials.spec.Spec`, or a :class:`~slimtune.Task`.
        scheduler: ``fifo`` (default), ``asha``, ``median_stopping``, a mapping with ``name`` and the
            scheduler's parameters, or a Tune ``TrialScheduler`` (its metric and mode are set when it has none).
        callbacks: Names (``csv``, ``json``, ``tensorboard``, ``mlflow``, ``wandb``), mappings with ``name``
            and parameters, or Tune ``Callback`` objects.
        run_config: A ``ray.tune.RunConfig`` to start from.
        max_concurrent_trials: Trials at once (default: as many as the cluster's resources hold).
        resources_per_trial: Ray resources of one trial (default ``{"cpu": 1}``).
        max_failures: Tune's retries of a trial whose worker died (default 1).
        address: A running Ray cluster.
        storage_path: The folder of Tune's experiments (default beside a SQLite or journal storage file).
        name: The experiment's name (default: the study's).
        reuse_actors: One Ray actor runs several trials in a row (default true).
        **search: The arguments of :func:`slimtune.search` (``strategy``, ``objectives``, ``weights``,
            ``n_trials``, ``storage``, ``study_name``, ``space`` ... and the strategy's parameters); with a
            spec they override its fields.

    Raises:
        ConfigError: A bad option; ``field`` names it (``tune.scheduler``, ``n_trials`` ...).
    """
    task, config, scheduler_obj, callback_objs = _resolve(spec_or_task, locals(), search)
    prepared = dataclasses.replace(prepare(task, tune_driver_config(task, config)), config=config)
    return build_tuner(task, prepared, scheduler=scheduler_obj, callbacks=callback_objs, run_config=run_config)


def restore(
    spec_or_task: str | os.PathLike[str] | Spec | Task,
    path: str | os.PathLike[str] | None = None,
    *,
    resume_unfinished: bool = True,
    resume_errored: bool = False,
    restart_errored: bool = False,
    **search: Any,
) -> Any:
    """``ray.tune.Tuner.restore`` of an interrupted run of :func:`tuner`; call ``.fit()`` on it.

    Unfinished Tune trials run their Optuna trials again (a trial the study holds as finished reports its
    result at once); a trial the interrupted run had asked for but Tune had not recorded is failed and
    queued again with the same parameters. So the study ends with its budget, no trial lost or repeated.

    Args:
        spec_or_task: What :func:`tuner` was given (the trainable is built again from it).
        path: The experiment's folder (default: the one :func:`tuner` chose for this study).
        resume_unfinished: Tune's flag (default True).
        resume_errored: Tune's flag.
        restart_errored: Tune's flag.
        **search: The arguments :func:`tuner` was given (they find the study and its folder; the scheduler,
            callbacks and the other Tune settings are those the interrupted run saved).
    """
    given = {k: search.pop(k) for k in (*_OPTION_ARGS, "reuse_actors", "scheduler", "callbacks") if k in search}
    task, config, _, _ = _resolve(spec_or_task, given, search)
    where = os.fspath(path) if path is not None else str(experiment_dir(config))
    return restore_tuner(
        where,
        task,
        config,
        resume_unfinished=resume_unfinished,
        resume_errored=resume_errored,
        restart_errored=restart_errored,
    )


def _resolve(
    spec_or_task: Any, given: Mapping[str, Any], search: dict[str, Any]
) -> tuple[Task, SearchConfig, Any, list[Any]]:
    """The task, the search configuration (``backend="tune"``) and the scheduler and callback objects."""
    from slimtune.trials.spec import Spec, load_spec
    from slimtune.trials.task import Task

    options: dict[str, Any] = {k: given[k] for k in _OPTION_ARGS if given.get(k) is not None}
    if given.get("reuse_actors") is not None:
        options["reuse_actors"] = given["reuse_actors"]
    scheduler = given.get("scheduler")
    scheduler_obj = None
    if isinstance(scheduler, (str, Mapping)):
        options["scheduler"] = scheduler
    elif scheduler is not None:
        scheduler_obj = scheduler
    named = [c for c in given.get("callbacks", ()) if isinstance(c, (str, Mapping))]
    callback_objs = [c for c in given.get("callbacks", ()) if not isinstance(c, (str, Mapping))]
    if named:
        options["callbacks"] = named
    # "tune" is left to the strategy (admm's tune: [rho]); Tune options come as search()'s tune_options
    fields = {k: search.pop(k) for k in list(search) if k in SearchConfig.__dataclass_fields__ and k != "tune"}
    given_tune = search.pop("tune_options", None)
    options = {**(given_tune.to_dict() if isinstance(given_tune, TuneOptions) else given_tune or {}), **options}
    for key in ("backend", "ray"):
        fields.pop(key, None)
    if isinstance(spec_or_task, Task):
        config = SearchConfig(**fields, strategy_params=search, backend="tune", tune=options)
        return spec_or_task, config, scheduler_obj, callback_objs
    spec = spec_or_task if isinstance(spec_or_task, Spec) else load_spec(spec_or_task)
    task = spec.make_task()
    params = {**spec.strategy_params, **search}
    config = spec.search_config(
        backend="tune", ray=None, tune={**(spec.tune or {}), **options}, strategy_params=params, **fields
    )
    return task, config, scheduler_obj, callback_objs


def __getattr__(name: str) -> Any:  # the searcher class exists once asked for (Ray is imported then)
    if name == "SlimtuneSearcher":
        from slimtune.trials.tune_searcher import searcher_class

        return searcher_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "OBJECTIVE_METRIC",
    "SCHEDULER_METRIC",
    "TUNE_FIELDS",
    "SlimtuneSearcher",  # noqa: F822 - created on first access (module __getattr__)
    "TuneOptions",
    "experiment_dir",
    "restore",
    "slimtune_trial",
    "trial_result",
    "tuner",
]
