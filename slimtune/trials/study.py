"""Preparing a study for its trials: everything a worker needs before it asks for the first one.

:func:`prepare` opens the storage, traces the model, computes (or reads) the sensitivity tables,
builds the search space, the strategy's sampler and the objective, and creates the study (or
checks that an existing one was created with the same settings, and resumes it). The local
driver (:mod:`slimtune.trials.driver`) and every Ray worker (:mod:`slimtune.trials.ray_backend`)
start from it.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna

from slimtune import attributes as attrs
from slimtune import devices
from slimtune.compressors import trace
from slimtune.compressors.measures import measure_deployable
from slimtune.compressors.measures.runtimes import LatencySetting
from slimtune.errors import SlimtuneError
from slimtune.search_spaces import SearchSpace
from slimtune.strategies import get_strategy
from slimtune.trials.config import SearchConfig
from slimtune.trials.cost import DEVICE_MEASURES, Cost
from slimtune.trials.driver import quiet_optuna
from slimtune.trials.objective import Objective
from slimtune.trials.results import remember_base_model
from slimtune.trials.sensitivity import bit_sensitivity_table, rank_sensitivity_table, sensitivity_table
from slimtune.trials.storage import artifacts_dir, make_storage, url_of
from slimtune.trials.task import evaluate_original
from slimtune.version import __version__

if TYPE_CHECKING:
    from slimtune.strategies import Strategy
    from slimtune.trials.task import Task

logger = logging.getLogger("slimtune")


@dataclass
class PreparedStudy:
    """A study ready for trials, and what its trials run with."""

    study: optuna.Study
    objective: Objective
    strategy: Strategy
    cost: Cost
    space: SearchSpace
    baseline: dict[str, Any]
    config: SearchConfig


def prepare(task: Task, config: SearchConfig) -> PreparedStudy:
    """Create (or resume, or join) the study ``config`` names and build its objective.

    The trials run on ``config.device`` (else the task's device): the task's model, example inputs
    and calibration batches are put there first; a device this machine lacks is an error here.
    """
    device = devices.resolve(config.device or task.device, field="device" if config.device else "Task.device")
    original = task.model
    task = task.on_device(device)
    measure_batch = config.measure_batch or (DEFAULT_MEASURE_BATCH_GPU if device.type == "cuda" else 32)
    strat = get_strategy(config.strategy, **config.strategy_params)
    cost = Cost(
        config.objectives,
        task.direction,
        weights=config.weights,
        constraints=list(config.constraints) or None,
        latency=config.latency,
    )
    url = url_of(config.storage)
    st = make_storage(config.storage, config.heartbeat)
    options = config.space
    existing = config.study in optuna.get_all_study_names(st)
    if config.join and not existing:
        raise SlimtuneError(
            f"study {config.study!r} does not exist yet in {url or 'the storage'}: start it with `slimtune run` first",
            field="study_name",
        )
    if options.bits_a and task.calibration is None:
        raise SlimtuneError(
            "space.bits_a searches activation bit-widths: the task needs calibration batches (Task.calibration)",
            field="space.bits_a",
        )
    logger.info("study %s: trials run on %s", config.study, devices.describe(device))
    graph = trace(task.model, task.example_inputs)
    for line in graph.explain():
        logger.info(line)
    table = bit_table = rank_table = None
    if options.sensitivity and strat.uses_sensitivity:
        table = sensitivity_table(task, st, options, progress=config.progress)
        if any(b != 32 for b in options.bits_w or ()):
            bit_table = bit_sensitivity_table(task, st, options, progress=config.progress)
        if any(r < 1.0 for r in options.ranks or ()):
            rank_table = rank_sensitivity_table(task, st, options, progress=config.progress)
    space = SearchSpace(graph, options, table, bit_table, rank_table)
    # a new study samples from `seed` (reproducible); a resumed run or a joining worker must not
    # replay the proposals already made, so it draws from a seed of its own
    sampler_seed = config.seed if not existing else _fresh_seed(config.seed)
    sampler = strat.sampler(space, len(cost.directions), sampler_seed, config.n_trials)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=4) if len(cost.directions) == 1 else None
    with quiet_optuna():  # Optuna's "A new study created ..." line: slimtune logs its own
        study = optuna.create_study(
            study_name=config.study,
            storage=st,
            directions=cost.directions,
            sampler=sampler,
            pruner=pruner,
            load_if_exists=True,
        )
    baseline = _init_study(study, task, strat, cost, space, url, config, measure_batch)
    remember_base_model(study, original)  # load_model(study, n) in this process rebuilds from it
    store = None
    if config.save_models == "all":
        from optuna.artifacts import FileSystemArtifactStore

        adir = Path(attrs.artifacts_dir(study) or artifacts_dir(url))
        adir.mkdir(parents=True, exist_ok=True)
        store = FileSystemArtifactStore(str(adir))
    objective = Objective(
        task, space, strat, cost, baseline, artifact_store=store, latency_batch=measure_batch, graph=graph
    )
    return PreparedStudy(study, objective, strat, cost, space, baseline, config)


#: the latency and memory batch size on a GPU (32 on the CPU), unless ``measure_batch`` says otherwise
DEFAULT_MEASURE_BATCH_GPU = 64


def _measure_original(task: Task, cost: Cost, batch: int) -> dict[str, Any]:
    return measure_deployable(
        task.model,
        task.example_inputs,
        cost.needs_latency,
        latency_batch=batch,
        memory=cost.needs_memory,
        memory_batch=batch,
        runtime=cost.latency,
    )


def _fresh_seed(seed: int) -> int:
    return (hash((seed, os.getpid(), time.time_ns())) & 0x7FFFFFFF) or 1


def _init_study(
    study: optuna.Study,
    task: Task,
    strat: Strategy,
    cost: Cost,
    space: SearchSpace,
    url: str | None,
    config: SearchConfig,
    measure_batch: int,
) -> dict[str, Any]:
    """The original's metric and measures; on a new study also its settings and seed trials,
    on an existing one a check that it was created with the same settings.

    Latency and memory depend on the hardware: a worker on other hardware than the study's baseline
    (or asked for another measure batch) measures the original's latency and memory itself and
    compares its trials with those (kept in memory; the stored baseline stays as it is)."""
    S = attrs.Study
    stored = study.user_attrs
    if attrs.initialised(study):
        asked = {
            S.STRATEGY: strat.name,
            S.OBJECTIVES: cost.objectives,
            S.CONSTRAINTS: [c.text for c in cost.constraints],
            S.WEIGHTS: cost.weights,
            S.DIRECTIONS: cost.directions,
        }
        if cost.needs_latency:  # a study from before runtimes measured eager latency
            asked[S.LATENCY] = cost.latency.to_dict()
            stored = {**stored, S.LATENCY: stored.get(S.LATENCY) or LatencySetting().to_dict()}
        mismatch = [
            f"{key} {stored.get(key)!r} (asked: {value!r})" for key, value in asked.items() if stored.get(key) != value
        ]
        if mismatch:
            raise SlimtuneError(
                f"study {study.study_name!r} was created with {', '.join(mismatch)}; "
                "use another study name or the same settings"
            )
        baseline = attrs.baseline(study)
        hardware = devices.hardware(task.device)
        stored_hardware, stored_batch = attrs.baseline_device(study)
        if stored_hardware is None:  # a study from before devices: its baseline was measured on this machine's CPU
            stored_hardware = devices.hardware("cpu")
        if (cost.needs_latency or cost.needs_memory) and (stored_hardware, stored_batch) != (hardware, measure_batch):
            logger.info(
                "study %s: the original's latency and memory were measured on %s at batch %d; this worker runs on "
                "%s at batch %d and measures them here to compare its trials with",
                study.study_name,
                stored_hardware,
                stored_batch,
                hardware,
                measure_batch,
            )
            local = _measure_original(task, cost, measure_batch)
            baseline.update({k: local.get(k) for k in DEVICE_MEASURES})
        elif (cost.needs_latency and baseline.get("latency") is None) or (
            cost.needs_memory and baseline.get("memory") is None
        ):
            local = _measure_original(task, cost, measure_batch)
            baseline.update({k: local[k] for k in DEVICE_MEASURES if baseline.get(k) is None and local.get(k)})
            study.set_user_attr(S.BASELINE, baseline)
        if not config.join and config.n_trials is not None and config.n_trials != attrs.n_trials(study):
            study.set_user_attr(S.N_TRIALS, config.n_trials)  # the budget this run asks for
        return baseline
    metric = evaluate_original(task)
    baseline = _measure_original(task, cost, measure_batch)
    baseline["accuracy"] = metric
    for line in cost.check(baseline, task.direction):
        logger.warning("study %s: %s", study.study_name, line)
    for key, value in {
        S.STRATEGY: strat.name,
        S.STRATEGY_PARAMS: strat.params,
        S.OBJECTIVES: cost.objectives,
        S.DIRECTIONS: cost.directions,
        S.WEIGHTS: cost.weights,
        S.CONSTRAINTS: [c.text for c in cost.constraints],
        S.SPACE: space.to_dict(),
        S.TASK: task.name or type(task.model).__name__,
        S.METRIC_NAME: task.metric_name,
        S.METRIC_DIRECTION: task.direction,
        S.BASELINE: baseline,
        S.BASELINE_DEVICE: devices.hardware(task.device),
        S.MEASURE_BATCH: measure_batch,
        S.LATENCY: cost.latency.to_dict(),
        S.N_TRIALS: config.n_trials,
        S.SEED: config.seed,
        S.ARTIFACTS_DIR: str(artifacts_dir(url)),
    }.items():
        study.set_user_attr(key, value)
    for params in strat.seeds(space):
        study.enqueue_trial(params, skip_if_exists=True)
    study.set_user_attr(S.VERSION, __version__)  # last: marks the study as initialised
    return baseline


__all__ = ["PreparedStudy", "prepare"]
