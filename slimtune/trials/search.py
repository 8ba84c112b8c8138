"""The search entry point: :func:`search` runs a study of compressed versions of a task's model.

A study lives in an Optuna storage (default ``sqlite:///slimtune.db`` in the working
directory; see :mod:`slimtune.trials.storage`). Running the same call or command again resumes
it: the trial budget counts the study's finished trials. Several processes can work on one study
(``slimtune worker``, :mod:`slimtune.trials.driver`); ``backend="ray"`` runs the same loop in Ray
workers (:mod:`slimtune.trials.ray_backend`); every trial records where it ran (``worker``).

Example:
    >>> import slimtune, tempfile, os
    >>> from slimtune.examples.digits import make_task
    >>> task = make_task(finetune_epochs=0)
    >>> url = "sqlite:///" + os.path.join(tempfile.mkdtemp(), "doc.db")
    >>> study = slimtune.search(task, strategy="random", n_trials=2, storage=url, study_name="doc",
    ...                         space={"sensitivity": False}, progress=False)
    >>> len(slimtune.pareto_front(study)) >= 1
    True
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import optuna

from slimtune.trials.config import RayOptions, SearchConfig
from slimtune.trials.driver import counts, drive, worker_identity
from slimtune.trials.ray_backend import check_storage, ray_driver_config, run_on_ray
from slimtune.trials.study import prepare
from slimtune.trials.tune_backend import run_on_tune, tune_driver_config

if TYPE_CHECKING:
    from optuna.storages import BaseStorage

    from slimtune.search_spaces import SpaceOptions
    from slimtune.trials.task import Task

logger = logging.getLogger("slimtune")


def search(
    task: Task,
    strategy: str = "nsga2",
    objectives: Sequence[str] = ("accuracy", "flops"),
    constraints: Sequence[str] | None = None,
    n_trials: int | None = 20,
    timeout: float | None = None,
    storage: str | BaseStorage | None = None,
    study_name: str | None = None,
    space: SpaceOptions | Mapping[str, Any] | None = None,
    seed: int = 0,
    save_models: str = "all",
    join: bool = False,
    progress: bool = True,
    weights: Mapping[str, float] | None = None,
    backend: str = "local",
    ray: RayOptions | Mapping[str, Any] | None = None,
    device: str | None = None,
    measure_batch: int | None = None,
    latency: Any = None,
    tune_options: Mapping[str, Any] | None = None,
    **strategy_params: Any,
) -> optuna.Study:
    """Search for compressed versions of ``task.model``; returns the Optuna study.

    The arguments are those of :class:`~slimtune.trials.config.SearchConfig` (checked there; a
    bad one raises :class:`~slimtune.errors.ConfigError` naming it), with the strategy's own
    parameters as keyword arguments (e.g. ``population_size=8``). :func:`run` takes a ready
    ``SearchConfig``.

    Args:
        task: The :class:`~slimtune.Task`.
        strategy: A registered strategy name (``nsga2``, ``tpe``, ``netadapt`` ...).
        objectives: From ``accuracy``, ``flops``, ``params``, ``latency``, ``size``.
        constraints: Strings such as ``"flops <= 0.5"`` or ``"accuracy_drop <= 0.01"``.
        n_trials: Budget of finished trials of the study (counted over every worker and
            earlier runs); None runs until ``timeout``.
        timeout: Seconds this call may run.
        storage: Optuna storage URL (default ``sqlite:///slimtune.db``) or storage object.
        study_name: The study's name (default ``slimtune-<strategy>``); an existing study of that
            name is resumed.
        space: Search-space options (:class:`~slimtune.search_spaces.SpaceOptions` or a dict).
        seed: Seed of the sampler.
        save_models: ``"all"`` saves every completed trial's model as an artifact, ``"none"``.
        join: Join an existing study as an extra worker (error if it does not exist).
        progress: Progress bar and per-trial log lines.
        weights: Optional ``{objective: weight}`` for one weighted scalar instead of a Pareto search.
        backend: ``"local"`` (trials run in this process) or ``"ray"`` (trials run on Ray workers,
            one per concurrent trial, writing to the same storage).
        ray: Options of the Ray backend (:class:`~slimtune.trials.config.RayOptions` or a dict of
            ``address``, ``max_concurrent_trials``, ``resources_per_trial``, ``max_retries``).
        tune_options: Options of ``backend="tune"`` (trials run as Ray Tune trials: :mod:`slimtune.tune`), a
            :class:`~slimtune.trials.tune_options.TuneOptions` or a dict (``scheduler``, ``callbacks`` ...).
        device: Where the trials run (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``); None: the
            task's ``device``. On Ray, each worker uses the GPU Ray assigned to it
            (``ray={"resources_per_trial": {"cpu": 4, "gpu": 1}}``).
        measure_batch: Batch size of the latency and memory measures (None: 32 on the CPU, 64 on a GPU).
        latency: Where latency is measured, for objectives and constraints: a runtime (``"torch"``, the default
            eager PyTorch; ``"compile"``; ``"onnxruntime"``) or ``{"runtime", "batch", "threads"}`` (see
            :class:`~slimtune.compressors.measures.runtimes.LatencySetting`).
        **strategy_params: Parameters of the strategy.

    Returns:
        The ``optuna.Study`` (see :func:`~slimtune.pareto_front`, :func:`~slimtune.load_model`).
    """
    config = SearchConfig(
        strategy=strategy,
        strategy_params=strategy_params,
        objectives=objectives,
        constraints=constraints or (),
        weights=weights,
        n_trials=n_trials,
        timeout=timeout,
        storage=storage,
        study_name=study_name,
        space=space,
        seed=seed,
        save_models=save_models,
        join=join,
        progress=progress,
        backend=backend,
        ray=ray,
        tune=tune_options,
        device=device,
        measure_batch=measure_batch,
        latency=latency,
    )
    return run(task, config)


def run(task: Task, config: SearchConfig) -> optuna.Study:
    """Run the search ``config`` describes on ``task``; returns the study."""
    driver_config = config
    if config.backend == "ray":
        check_storage(config.storage)  # before any work
        driver_config = ray_driver_config(task, config)
    elif config.backend == "tune":
        driver_config = tune_driver_config(task, config)
    prepared = prepare(task, driver_config)
    study = prepared.study
    if config.n_trials is not None and not config.join:
        done = counts(study)["done"]
        if done >= config.n_trials:
            logger.info(
                "study %s: nothing to run: %d of %d trials already finished (raise n_trials to run more)",
                study.study_name,
                done,
                config.n_trials,
            )
            return study
    if config.backend == "ray":
        run_on_ray(task, dataclasses.replace(prepared, config=config))
    elif config.backend == "tune":
        run_on_tune(task, dataclasses.replace(prepared, config=config))
    else:
        drive(
            study,
            prepared.objective,
            config.n_trials,
            config.timeout,
            config.progress,
            config.heartbeat,
            worker_identity(),
        )
    return study


def run_study(task: Task, *args: Any, **kwargs: Any) -> optuna.Study:
    """Deprecated name of :func:`search` (removed in a later release)."""
    warnings.warn(
        "slimtune.run_study is deprecated; use slimtune.search (the same function)", DeprecationWarning, stacklevel=2
    )
    return search(task, *args, **kwargs)


__all__ = ["run", "run_study", "search"]
