"""``backend: tune``: a study's trials run as Ray Tune trials, under Tune's schedulers and callbacks.

**Design.** The driver prepares the study exactly as the other backends do (baseline, sensitivity
cache, seed trials), then builds a ``ray.tune.Tuner`` over it:

- the search algorithm is :mod:`~slimtune.trials.tune_searcher`'s ``SlimtuneSearcher``, which asks the
  *study's own* sampler for each trial (``study.ask()`` on the shared storage, then the strategy's
  ``suggest``: seeds and retries queued in the study first, custom samplers, constraints and budget
  repairs included), so every strategy works unchanged; the Tune trial's config names the Optuna trial
  (``slimtune_trial``) and carries its parameters;
- the trainable is :func:`~slimtune.trials.tune_trial.slimtune_trial`, which runs slimtune's
  ``Objective`` on that trial in the Tune worker, reports the fine-tune metric to Tune while it trains
  and the measures at its end, and tells the study how the trial ended;
- Tune's scheduler (``tune.scheduler``) stops trials from the metric they report while fine-tuned; the
  searcher records a trial Tune stopped as PRUNED (with ``tune.stopped_by``), and one whose Tune trial
  errored beyond ``FailureConfig`` retries as FAIL.

The budget is the study's, counted as the other backends count it (:func:`~slimtune.trials.driver.counts`):
the searcher asks while finished plus running trials are below ``n_trials`` and ends the Tune run
(``Searcher.FINISHED``) once ``n_trials`` trials are finished, the ``timeout`` has passed or the strategy
has finished. While Tune holds a trial the driver sends its heartbeats, so other workers of the study
(``slimtune worker``, the Ray backend) see it alive, and a trial of a killed driver goes stale.

**Restore.** Tune saves the searcher (which Optuna trial each Tune trial runs) with its experiment
state. ``Tuner.restore`` (:func:`restore_tuner`, or running the same ``slimtune run`` again) resumes the
unfinished Tune trials on the same Optuna trials; an Optuna trial the interrupted run had asked for but
Tune had not yet recorded is failed and queued again with the same parameters (like a dead worker's), so
no trial is lost and none counts twice.

**Several objectives.** A Pareto study (several objectives, no ``weights``) runs under Tune's FIFO
scheduler only: schedulers compare trials by one reported number, and a trial that is behind on the
metric while fine-tuned may still be on the front for its FLOPs; Optuna keeps no intermediate values in
multi-objective studies either. Asking for a scheduler there is an error naming ``tune.scheduler``.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

from slimtune.errors import ConfigError, SlimtuneError
from slimtune.trials.config import SearchConfig
from slimtune.trials.driver import counts
from slimtune.trials.storage import parse_url, url_of
from slimtune.trials.tune_options import OBJECTIVE_METRIC, PREDICTED, SCHEDULER_METRIC, TuneOptions, estimated
from slimtune.trials.tune_searcher import TUNE_ATTR, searcher_class, tune_driver_config
from slimtune.trials.tune_trial import TRIAL_KEY, slimtune_trial

if TYPE_CHECKING:
    from slimtune.trials.study import PreparedStudy
    from slimtune.trials.task import Task

logger = logging.getLogger("slimtune")


def __getattr__(name: str) -> Any:  # ``SlimtuneSearcher`` exists once asked for (Ray is imported then)
    if name == "SlimtuneSearcher":
        return searcher_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------------- the Tuner
def build_tuner(
    task: Task,
    prepared: PreparedStudy,
    scheduler: Any = None,
    callbacks: Sequence[Any] = (),
    run_config: Any = None,
) -> Any:
    """A ``ray.tune.Tuner`` running the prepared study's trials (connects to Ray first).

    Args:
        task: The task.
        prepared: The study prepared with a ``backend="tune"`` configuration.
        scheduler: A ``TrialScheduler`` object instead of ``tune.scheduler`` (its metric and mode are set
            to the fine-tune metric when it has none).
        callbacks: Tune ``Callback`` objects, added to those ``tune.callbacks`` names.
        run_config: A ``ray.tune.RunConfig`` to use instead of slimtune's (its folder, failure config and
            verbosity are kept; the callbacks ``tune.callbacks`` names are added to its own).
    """
    from ray import tune

    config = prepared.config
    options = _options(config)
    ray = _import_ray()
    connect(ray, options)
    trainable = _trainable(task, config, options)
    if run_config is None:  # (a RunConfig of the user's keeps its own folder, failure config and verbosity)
        path = experiment_dir(config)
        run_config = tune.RunConfig(
            name=path.name,
            storage_path=str(path.parent),
            failure_config=tune.FailureConfig(max_failures=options.max_failures),
            verbose=None if config.progress else 0,
        )
    run_config.name = run_config.name or experiment_dir(config).name
    path = Path(run_config.storage_path).expanduser().resolve() / run_config.name
    searcher = searcher_class()(task, prepared, str(path), _scheduler_name(options, scheduler))
    tune_config = tune.TuneConfig(
        search_alg=searcher,
        scheduler=_scheduler(options, prepared, scheduler),
        num_samples=-1,  # the searcher ends the run at the study's budget
        max_concurrent_trials=_concurrency(ray, options, prepared),
        reuse_actors=options.reuse_actors,
        trial_name_creator=trial_name,
        trial_dirname_creator=trial_dirname,
    )
    run_config.callbacks = [*(run_config.callbacks or []), *build_callbacks(options), *callbacks]
    return tune.Tuner(trainable, tune_config=tune_config, run_config=run_config)


def restore_tuner(path: str | os.PathLike[str], task: Task, config: SearchConfig, **kwargs: Any) -> Any:
    """``ray.tune.Tuner.restore`` of the Tune run in ``path`` (``resume_unfinished`` by default): its trainable
    is built again from ``task`` and ``config`` (the search it was started with)."""
    from ray import tune

    options = _options(config)
    connect(_import_ray(), options)
    return tune.Tuner.restore(str(path), _trainable(task, config, options), **kwargs)


def run_on_tune(task: Task, prepared: PreparedStudy) -> None:
    """Run a prepared study's trials under Ray Tune until its budget or timeout is spent.

    An interrupted Tune run of the same experiment folder that left trials running in the study is
    restored (``Tuner.restore``) instead of starting anew; with budget left after it, a new Tune run
    follows in the same folder.
    """
    config = prepared.config
    options = _options(config)
    ray = _import_ray()
    started = connect(ray, options)
    study = prepared.study
    try:
        path = experiment_dir(config)
        if not config.join and _interrupted(study, path):
            logger.info("study %s: restoring the interrupted Tune run in %s", study.study_name, path)
            results = restore_tuner(path, task, config).fit()
            if _left(prepared) is None:
                _check(results, prepared)
                return
        results = build_tuner(task, prepared).fit()
        _check(results, prepared)
    finally:
        if started:
            ray.shutdown()


def _left(prepared: PreparedStudy) -> int | None:
    """Trials left in the budget (None: nothing left to run, or the strategy ended)."""
    n = prepared.config.n_trials
    if n is None or prepared.strategy.finished(prepared.study) is not None:
        return None
    left = n - counts(prepared.study)["done"]
    return left if left > 0 else None


def _check(results: Any, prepared: PreparedStudy) -> None:
    """An error when the Tune run ended short of the budget (its trials stay in the study)."""
    study, n = prepared.study, prepared.config.n_trials
    done = counts(study)["done"]
    if n is None or done >= n or prepared.strategy.finished(study) is not None or prepared.config.timeout:
        return
    errors = [e for e in getattr(results, "errors", []) if e is not None]
    why = f"; {len(errors)} Tune trial(s) errored, the first: {_first_line(errors[0])}" if errors else ""
    raise SlimtuneError(
        f"study {study.study_name!r}: the Tune run ended with {done} of {n} trials finished{why} (they are kept in "
        "the storage: run the same command again to resume)"
    )


def _interrupted(study: optuna.Study, path: Path) -> bool:
    """A restorable Tune run in ``path`` whose trials are still RUNNING in the study."""
    from ray import tune

    if not (path / "tuner.pkl").is_file() or not tune.Tuner.can_restore(str(path)):
        return False
    return any(
        (t.user_attrs.get(TUNE_ATTR) or {}).get("experiment") == str(path)
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    )


def experiment_dir(config: SearchConfig) -> Path:
    """The Tune experiment's folder: ``tune.storage_path`` / ``tune.name`` (default: ``<stem>-tune/<study>``
    beside a SQLite or journal file, else ``~/ray_results/<study>``)."""
    options = _options(config)
    root = options.storage_path
    if root is None:
        parsed = parse_url(url_of(config.storage) or "")
        if parsed.path is not None:
            file = parsed.path.resolve()
            root = str(file.parent / f"{file.stem}-tune")
        else:
            root = os.path.join(os.path.expanduser("~"), "ray_results")
    name = options.name or re.sub(r"[^\w.-]+", "_", config.study)
    if config.join:  # another driver on the same study: its own experiment
        name = f"{name}-join-{os.getpid()}"
    return Path(root).expanduser().resolve() / name


# ---------------------------------------------------------------------- parts
def trial_name(trial: Any) -> str:
    """A Tune trial's name: the Optuna trial it runs."""
    return f"slimtune_trial_{trial.config.get(TRIAL_KEY)}"


def trial_dirname(trial: Any) -> str:
    return f"trial_{trial.config.get(TRIAL_KEY)}_{trial.trial_id}"


def build_callbacks(options: TuneOptions) -> list[Any]:
    """The Tune callbacks ``tune.callbacks`` names."""
    out = []
    for i, spec in enumerate(options.callbacks):
        name, params = spec["name"], {k: v for k, v in spec.items() if k != "name"}
        if name == "csv":
            from ray.tune.logger import CSVLoggerCallback as cls
        elif name == "json":
            from ray.tune.logger import JsonLoggerCallback as cls
        elif name == "tensorboard":
            from ray.tune.logger import TBXLoggerCallback as cls
        elif name == "mlflow":
            from ray.air.integrations.mlflow import MLflowLoggerCallback as cls
        else:
            from ray.air.integrations.wandb import WandbLoggerCallback as cls
        try:
            out.append(cls(**params))
        except (TypeError, ValueError, ImportError, RuntimeError) as e:
            raise ConfigError(f"{name}: {type(e).__name__}: {e}", field=f"tune.callbacks[{i}]") from e
    return out


def _scheduler_name(options: TuneOptions, given: Any) -> str:
    return type(given).__name__ if given is not None else options.scheduler_name


def _scheduler(options: TuneOptions, prepared: PreparedStudy, given: Any) -> Any:
    """Tune's scheduler: ``given``, or the one ``tune.scheduler`` names, on the fine-tune metric."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule

    if given is None and options.scheduler_name == "fifo" or isinstance(given, FIFOScheduler):
        return given
    name = _scheduler_name(options, given)
    objectives = prepared.cost.objectives
    if len(prepared.cost.directions) > 1:
        raise ConfigError(
            f"{name} stops trials by one number they report while fine-tuned, but this study has {len(objectives)} "
            f"objectives ({', '.join(objectives)}) and no weights: a trial behind on the metric may be on the Pareto "
            "front for its other objectives (and Optuna keeps no intermediate values there). Give weights (one "
            "scalar, e.g. weights: {accuracy: 1, flops: 0.5}) or use scheduler: fifo",
            field="tune.scheduler",
        )
    if not prepared.objective.report_sign:
        raise ConfigError(
            f"{name} stops trials by the task's metric they report while fine-tuned, but the study's objective "
            f"({', '.join(objectives)}) does not include it: include accuracy in the objectives or use scheduler: fifo",
            field="tune.scheduler",
        )
    params = options.scheduler_params()
    metric, mode = scheduler_metric(prepared, params.pop("metric", None))
    if given is not None:
        if getattr(given, "metric", None) is None:
            given.set_search_properties(metric, mode)
        return given
    if options.scheduler_name == "asha":
        if "max_t" in params:  # max_t counts fine-tune reports: the trial's final report (its measures) comes after
            params["max_t"] += 1
        return ASHAScheduler(metric=metric, mode=mode, **params)
    return MedianStoppingRule(metric=metric, mode=mode, **params)


def scheduler_metric(prepared: PreparedStudy, asked: str | None = None) -> tuple[str, str]:
    """What a scheduler stops trials by, and its mode: the weighted value estimated while fine-tuned
    (``finetune_objective``, minimised) where trials report it, else the task's metric (its direction)."""
    cost = prepared.cost
    if asked == OBJECTIVE_METRIC and not estimated(cost.objectives, cost.weights):
        raise ConfigError(
            f"{OBJECTIVE_METRIC} is reported by trials of a study weighted over accuracy and any of "
            f"{', '.join(PREDICTED)}; this study's objectives: {', '.join(cost.objectives)}"
            f"{'' if cost.weights else ' (no weights)'}; use {SCHEDULER_METRIC}",
            field="tune.scheduler.metric",
        )
    if asked == OBJECTIVE_METRIC or (asked is None and estimated(cost.objectives, cost.weights)):
        return OBJECTIVE_METRIC, "min"
    return SCHEDULER_METRIC, "max" if prepared.objective.task.direction == "maximize" else "min"


def _concurrency(ray: Any, options: TuneOptions, prepared: PreparedStudy) -> int:
    """Trials at once: ``max_concurrent_trials``, else as many as the cluster's resources hold; never more than
    the budget left (Tune asks the searcher for as many trials as may run, and each is an Optuna trial)."""
    count = options.max_concurrent_trials
    if count is None:
        total = ray.cluster_resources()
        fits = [int(total.get(_ray_name(k), 0.0) // v) for k, v in options.trial_resources().items() if v > 0]
        count = min(fits) if fits else 1
        if count < 1:
            listed = ", ".join(f"{k}={v:g}" for k, v in sorted(total.items()) if not k.startswith("node:"))
            raise SlimtuneError(
                f"tune.resources_per_trial: a trial needs {dict(options.trial_resources())} but the Ray cluster has "
                f"{listed}"
            )
    n = prepared.config.n_trials
    if n is not None:
        count = min(count, max(1, n - counts(prepared.study)["done"]))
    return max(1, count)


def _ray_name(resource: str) -> str:
    return {"cpu": "CPU", "gpu": "GPU"}.get(resource, resource)


def _trainable(task: Task, config: SearchConfig, options: TuneOptions) -> Any:
    """The function trainable with the task, the search configuration and the driver's settings bound."""
    from ray import cloudpickle, tune

    url = parse_url(url_of(config.storage) or "").absolute()
    payload = config.replace(storage=url).to_dict()
    try:
        blob = cloudpickle.dumps(task)
    except Exception as e:
        raise SlimtuneError(
            f"backend 'tune' sends the task to every worker with cloudpickle, which failed: {type(e).__name__}: {e} "
            "(build the Task in a module-level function, without open files, locks or live connections)"
        ) from e
    settings = {
        "env": {k: v for k, v in os.environ.items() if k.startswith("SLIMTUNE_")},
        "sys_path": [os.path.abspath(p or os.curdir) for p in sys.path if _user_path(p)],
        "cwd": os.getcwd(),
        "threads": max(1, int(options.resources_per_trial.get("cpu", 1.0))),
    }
    bound = tune.with_parameters(slimtune_trial, task_blob=blob, payload=payload, settings=settings)
    return tune.with_resources(bound, options.trial_resources())


def _options(config: SearchConfig) -> TuneOptions:
    return TuneOptions.from_value(config.tune)


def _import_ray() -> Any:
    try:
        import ray
        import ray.tune  # noqa: F401
    except ImportError as e:
        raise SlimtuneError("backend 'tune' needs Ray Tune: pip install 'slimtune[ray]' (or 'ray[tune]')") from e
    return ray


def connect(ray: Any, options: TuneOptions) -> bool:
    """Connect to (or start) Ray; True when this call did."""
    if ray.is_initialized():
        return False
    address = options.address or os.environ.get("RAY_ADDRESS") or None
    try:
        if address:
            ray.init(address=address, logging_level=logging.WARNING)
        else:
            ray.init(include_dashboard=False, logging_level=logging.WARNING)
    except Exception as e:
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        raise SlimtuneError(f"cannot connect to {where}: {type(e).__name__}: {_first_line(e)}") from e
    return True


def _user_path(entry: str) -> bool:
    """A ``sys.path`` entry holding user code (not the interpreter's or site-packages)."""
    path = os.path.abspath(entry or os.curdir)
    if not os.path.isdir(path) or "site-packages" in path or "dist-packages" in path:
        return False
    prefixes = {os.path.abspath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    return not any(path == p or path.startswith(p + os.sep) for p in prefixes)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:500] if text else type(e).__name__


__all__ = [
    "build_callbacks",
    "build_tuner",
    "connect",
    "experiment_dir",
    "restore_tuner",
    "run_on_tune",
    "scheduler_metric",
    "searcher_class",
    "trial_dirname",
    "trial_name",
    "tune_driver_config",
]
