"""Running studies: storage, the study driver, the sensitivity cache, fronts and saved models.

A study lives in an Optuna storage (default ``sqlite:///slimtune.db`` in the working
directory). Running the same call or command again resumes it: the trial budget counts the
study's finished trials. Several processes can work on one study (``slimtune worker``); with an
RDB storage (SQLite, PostgreSQL) each running trial writes heartbeats, a trial whose worker died
is marked failed after ``grace_period`` seconds and retried once, and the driver waits for such
trials so that a study always ends with its full budget. ``backend="ray"`` runs the same loop in
Ray workers (:mod:`slimtune.trials.ray_backend`); every trial records where it ran (``worker``).

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

import hashlib
import json
import logging
import math
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import optuna
import pandas as pd
import torch
import torch.nn as nn
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

import slimtune
from slimtune.compressors import trace
from slimtune.compressors.plan import CompressionPlan
from slimtune.compressors.sensitivity import analyze_bit_sensitivity, analyze_sensitivity
from slimtune.errors import SlimtuneError
from slimtune.search_spaces import SearchSpace, SpaceOptions
from slimtune.strategies import get_strategy
from slimtune.trials.cost import Cost
from slimtune.trials.objective import (
    ATTR_ARTIFACT,
    ATTR_CONSTRAINTS,
    ATTR_FAIL,
    ATTR_MEASURES,
    ATTR_PLAN,
    Objective,
    measure_model,
)
from slimtune.trials.ray_backend import ATTR_WORKER, RayOptions, check_storage, run_on_ray, worker_identity

if TYPE_CHECKING:
    from optuna.storages import BaseStorage

    from slimtune.trials.task import Task

logger = logging.getLogger("slimtune")

DEFAULT_STORAGE = "sqlite:///slimtune.db"
BACKENDS = ("local", "ray")
SENSITIVITY_PREFIX = "slimtune-sensitivity-"
#: bit-width tables share the prefix, so listings that skip caches skip both
BIT_SENSITIVITY_PREFIX = SENSITIVITY_PREFIX + "bits-"
HEARTBEAT_INTERVAL = int(os.environ.get("SLIMTUNE_HEARTBEAT_INTERVAL", "5"))
GRACE_PERIOD = int(os.environ.get("SLIMTUNE_GRACE_PERIOD", "20"))
MAX_RETRY = 1
WAIT_POLL = 0.5  # seconds between looks at the study while only other workers' trials run


# ---------------------------------------------------------------------- storage
def make_storage(url: str | BaseStorage | None = None) -> BaseStorage:
    """An Optuna storage for ``url``.

    ``sqlite:///file.db`` (default ``sqlite:///slimtune.db``), ``postgresql://...`` and other
    SQLAlchemy URLs give an RDB storage with heartbeats (dead workers' trials are retried);
    ``journal:///path/file.log`` a journal file storage (no heartbeats); ``memory`` an in-memory
    storage for one process.
    """
    if url is None:
        url = DEFAULT_STORAGE
    if not isinstance(url, str):
        return url
    if url == "memory":
        return optuna.storages.InMemoryStorage()
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(_journal_path(url)))
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        engine_kwargs = {"connect_args": {"timeout": 60}}
    sqlite = url.startswith("sqlite") and ":memory:" not in url
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = (_SQLiteStorage if sqlite else optuna.storages.RDBStorage)(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=HEARTBEAT_INTERVAL,
                grace_period=GRACE_PERIOD,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY),
            )
    except Exception as e:
        raise SlimtuneError(f"storage {url!r} cannot be opened: {type(e).__name__}: {e}") from e
    if sqlite:
        _sqlite_wal(storage)
    return storage


class _SQLiteStorage(optuna.storages.RDBStorage):
    """Optuna's RDB storage on a SQLite file, with an atomic pop of a queued trial.

    Optuna moves a WAITING trial (a seed, a retry, an enqueued point) to RUNNING by reading its
    state with ``SELECT ... FOR UPDATE`` and then writing it. SQLite has no row locks and its
    Python driver opens the transaction only at the write, so two workers asking at the same
    moment could both read WAITING and both run the trial (the second then crashes with "Cannot
    tell a COMPLETE trial"). Here the move is one conditional ``UPDATE``: exactly one worker gets
    the trial, the others go on to the next. (PostgreSQL's row locks already make Optuna's read
    and write atomic.)
    """

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        if state != TrialState.RUNNING or values is not None:
            return super().set_trial_state_values(trial_id, state, values)
        from datetime import datetime, timezone

        from optuna.storages._rdb.models import TrialModel

        table = TrialModel.__table__
        now = datetime.now(timezone.utc).replace(tzinfo=None)  # Optuna stores naive UTC
        query = table.update().where(table.c.trial_id == trial_id, table.c.state == TrialState.WAITING)
        with self.engine.begin() as connection:
            won = connection.execute(query.values(state=TrialState.RUNNING, datetime_start=now)).rowcount == 1
        # lost: running elsewhere (False), finished (UpdateFinishedTrialError) or unknown (KeyError)
        return won or super().set_trial_state_values(trial_id, state)


def _sqlite_wal(storage: optuna.storages.RDBStorage) -> None:
    """Write-ahead logging with ``synchronous=NORMAL`` on every connection to a SQLite file.

    Halves the cost of a trial's storage writes (each attribute is a commit) and lets readers
    (the dashboard, ``slimtune status``) work while workers write. A killed process loses no
    committed transaction in this mode; only an operating-system crash may lose the last ones.
    """
    from sqlalchemy import event

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    event.listen(storage.engine, "connect", on_connect)
    storage.engine.dispose()  # connections opened while creating the schema get the pragmas too


def artifacts_dir(url: str | None) -> Path:
    """Where a storage's compressed models go: beside a SQLite/journal file, else ``./slimtune-artifacts``."""
    env = os.environ.get("SLIMTUNE_ARTIFACTS")
    if env:
        return Path(env).resolve()
    url = url or DEFAULT_STORAGE
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///") :]).resolve()
    elif url.startswith("journal:"):
        path = Path(_journal_path(url)).resolve()
    else:
        return Path("slimtune-artifacts").resolve()
    return path.parent / (path.stem + "-artifacts")


def _journal_path(url: str) -> str:
    rest = url[len("journal:") :]
    return rest[2:] if rest.startswith("//") else rest


def open_study(storage: str | BaseStorage | None, study_name: str) -> optuna.Study:
    """Load an existing study; the error names it and lists the studies the storage holds."""
    st = make_storage(storage)
    try:
        return optuna.load_study(study_name=study_name, storage=st)
    except KeyError:
        names = [n for n in optuna.get_all_study_names(st) if not n.startswith(SENSITIVITY_PREFIX)]
        raise SlimtuneError(
            f"study {study_name!r} does not exist in {storage or DEFAULT_STORAGE}; studies there: {names or 'none'}"
        ) from None


def evaluate_original(task: Task) -> float:
    """``task.evaluate(task.model)``, with a clear error when it fails or is not a finite number."""
    try:
        value = float(task.evaluate(task.model))
    except Exception as e:
        raise SlimtuneError(f"task.evaluate fails on the original model: {type(e).__name__}: {e}") from e
    if not math.isfinite(value):
        raise SlimtuneError(f"task.evaluate returns {value} on the original model; it must return a finite number")
    return value


# ---------------------------------------------------------------------- sensitivity cache
def sensitivity_table(
    task: Task,
    storage: str | BaseStorage | None = None,
    space: SpaceOptions | Mapping[str, Any] | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """The task's per-group sensitivity table, computed once per task and storage.

    The table is cached in the storage (a study named ``slimtune-sensitivity-<key>``), keyed by
    the model's weights, the metric, the criterion and the levels, so resuming a study or starting
    another one on the same task reuses it.
    """
    options = space if isinstance(space, SpaceOptions) else SpaceOptions.from_dict(space)
    key = f"{task.fingerprint()}-{options.criterion}-{'_'.join(f'{v:g}' for v in options.levels)}"

    def compute(baseline: float) -> pd.DataFrame:
        logger.info("sensitivity analysis: %s levels x prunable groups (computed once, cached in the storage)", len(options.levels))
        return analyze_sensitivity(
            task.model, task.example_inputs, task.evaluate, levels=options.levels, criterion=options.criterion,
            data=task.calibration, direction=task.direction, baseline=baseline, progress=progress,
        )

    table = _cached_table(task, storage, SENSITIVITY_PREFIX + key, compute)
    table.attrs.setdefault("criterion", options.criterion)
    return table


def bit_sensitivity_table(
    task: Task,
    storage: str | BaseStorage | None = None,
    space: SpaceOptions | Mapping[str, Any] | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """The task's per-layer weight bit-width sensitivity table, computed once per task and storage.

    One row per (layer, bit-width) of ``space.bits_w`` (32 excluded) for the space's quantizable
    layers: static PTQ of that layer alone, weights only. Cached like :func:`sensitivity_table`
    (study ``slimtune-sensitivity-bits-<key>``).
    """
    options = space if isinstance(space, SpaceOptions) else SpaceOptions.from_dict(space)
    bits = tuple(b for b in (options.bits_w or ()) if b != 32)
    if not bits:
        raise SlimtuneError("space.bits_w has no bit-width below 32 to analyse (e.g. bits_w: [4, 8, 32])")
    layers = options.quantize_layers
    key = f"{task.fingerprint()}-w{'_'.join(map(str, bits))}" + (f"-{hashlib.sha1(','.join(layers).encode()).hexdigest()[:12]}" if layers else "")

    def compute(baseline: float) -> pd.DataFrame:
        logger.info("bit-width sensitivity: %s bit-widths x quantizable layers (computed once, cached)", len(bits))
        return analyze_bit_sensitivity(
            task.model, task.example_inputs, task.evaluate, bits=bits, layers=layers, data=task.calibration,
            direction=task.direction, baseline=baseline, progress=progress,
        )

    return _cached_table(task, storage, BIT_SENSITIVITY_PREFIX + key, compute)


def _cached_table(
    task: Task, storage: str | BaseStorage | None, name: str, compute: Callable[[float], pd.DataFrame]
) -> pd.DataFrame:
    """The table cached in study ``name`` of the storage, or ``compute(baseline)`` stored there."""
    cache = optuna.create_study(study_name=name, storage=make_storage(storage), load_if_exists=True)
    cached = cache.user_attrs.get("table")
    if cached is not None:
        table = pd.DataFrame(cached)
        for key in ("baseline", "criterion", "direction"):
            if key in cache.user_attrs:
                table.attrs[key] = cache.user_attrs[key]
        table.attrs.setdefault("direction", task.direction)
        table.attrs["cached"] = True
        return table
    table = compute(evaluate_original(task))
    cache.set_user_attr("table", json.loads(table.to_json(orient="records", double_precision=15)))
    cache.set_user_attr("direction", task.direction)
    for key in ("baseline", "criterion"):
        if key in table.attrs:
            cache.set_user_attr(key, table.attrs[key])
    table.attrs["cached"] = False
    return table


# ---------------------------------------------------------------------- search
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
    **strategy_params: Any,
) -> optuna.Study:
    """Search for compressed versions of ``task.model``; returns the Optuna study.

    Args:
        task: The :class:`~slimtune.Task`.
        strategy: A registered strategy name (``uniform``, ``random``, ``tpe``, ``nsga2``).
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
            one per concurrent trial, writing to the same storage; see
            :mod:`slimtune.trials.ray_backend`).
        ray: Options of the Ray backend (:class:`~slimtune.trials.ray_backend.RayOptions` or a
            dict of ``address``, ``max_concurrent_trials``, ``resources_per_trial``, ``max_retries``).
        **strategy_params: Parameters of the strategy (e.g. ``population_size=8``).

    Returns:
        The ``optuna.Study`` (see :func:`pareto_front`, :func:`load_model`).
    """
    if n_trials is None and timeout is None:
        raise ValueError("give n_trials or timeout (or both)")
    if n_trials is not None and n_trials < 1:
        raise ValueError(f"n_trials must be >= 1, got {n_trials}")
    if save_models not in ("all", "none"):
        raise ValueError(f"save_models must be 'all' or 'none', got {save_models!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if ray is not None and backend != "ray":
        raise ValueError("ray options are given but backend is 'local': pass backend='ray'")
    ray_options = RayOptions.from_value(ray) if backend == "ray" else None
    if ray_options is not None:
        check_storage(storage if storage is not None else DEFAULT_STORAGE)  # before any work
    options = space if isinstance(space, SpaceOptions) else SpaceOptions.from_dict(space)
    strat = get_strategy(strategy, **strategy_params)
    cost = Cost(objectives, task.direction, weights=weights, constraints=constraints)
    study_name = study_name or f"slimtune-{strategy}"
    url = storage if isinstance(storage, str) or storage is None else None
    st = make_storage(storage)

    existing = study_name in optuna.get_all_study_names(st)
    if join and not existing:
        raise SlimtuneError(f"study {study_name!r} does not exist yet in {url or 'the storage'}: start it with `slimtune run` first")

    if options.bits_a and task.calibration is None:
        raise SlimtuneError("space.bits_a searches activation bit-widths: the task needs calibration batches (Task.calibration)")
    graph = trace(task.model, task.example_inputs)
    for line in graph.explain():
        logger.info(line)
    table = bit_table = None
    if options.sensitivity and strat.uses_sensitivity:
        table = sensitivity_table(task, st, options, progress=progress)
        if any(b != 32 for b in options.bits_w or ()):
            bit_table = bit_sensitivity_table(task, st, options, progress=progress)
    sspace = SearchSpace(graph, options, table, bit_table)
    # a new study samples from `seed` (reproducible); a resumed run or a joining worker must not
    # replay the proposals already made, so it draws from a seed of its own
    sampler_seed = seed if not existing else _fresh_seed(seed)
    sampler = strat.sampler(sspace, len(cost.directions), sampler_seed, n_trials)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=4) if len(cost.directions) == 1 else None
    study = optuna.create_study(
        study_name=study_name, storage=st, directions=cost.directions, sampler=sampler, pruner=pruner, load_if_exists=True
    )
    baseline = _init_study(study, task, strat, cost, sspace, url, n_trials, seed)
    store = None
    if save_models == "all":
        from optuna.artifacts import FileSystemArtifactStore

        adir = Path(study.user_attrs.get("artifacts_dir") or artifacts_dir(url))
        adir.mkdir(parents=True, exist_ok=True)
        store = FileSystemArtifactStore(str(adir))
    objective = Objective(task, sspace, strat, cost, baseline, artifact_store=store, graph=graph)
    if ray_options is not None:
        # each Ray worker joins the study with these arguments and runs the local loop (_drive)
        worker_args = {
            "strategy": strategy, "objectives": tuple(objectives), "constraints": constraints, "n_trials": n_trials,
            "storage": storage if storage is not None else DEFAULT_STORAGE, "study_name": study_name, "space": options,
            "seed": seed, "save_models": save_models, "weights": weights, **strategy_params,
        }  # fmt: skip
        run_on_ray(task, study, strat, ray_options, worker_args, n_trials, timeout, progress)
    else:
        _drive(study, objective, n_trials, timeout, progress)
    return study


def _fresh_seed(seed: int) -> int:
    return (hash((seed, os.getpid(), time.time_ns())) & 0x7FFFFFFF) or 1


def _init_study(
    study: optuna.Study, task: Task, strat: Any, cost: Cost, space: SearchSpace, url: str | None, n_trials: int | None, seed: int
) -> dict[str, Any]:
    attrs = study.user_attrs
    if "slimtune" in attrs:
        mismatch = []
        if attrs.get("strategy") != strat.name:
            mismatch.append(f"strategy {attrs.get('strategy')!r} (asked: {strat.name!r})")
        if attrs.get("objectives") != cost.objectives:
            mismatch.append(f"objectives {attrs.get('objectives')} (asked: {cost.objectives})")
        if attrs.get("constraints") != [c.text for c in cost.constraints]:
            mismatch.append(f"constraints {attrs.get('constraints')} (asked: {[c.text for c in cost.constraints]})")
        if attrs.get("weights") != cost.weights:
            mismatch.append(f"weights {attrs.get('weights')} (asked: {cost.weights})")
        if attrs.get("directions") != cost.directions:
            mismatch.append(f"directions {attrs.get('directions')} (asked: {cost.directions})")
        if mismatch:
            raise SlimtuneError(
                f"study {study.study_name!r} was created with {', '.join(mismatch)}; "
                "use another study name or the same settings"
            )
        baseline = dict(attrs["baseline"])
        if cost.needs_latency and baseline.get("latency") is None:
            baseline["latency"] = measure_model(task.model, task.example_inputs, True)["latency"]
            study.set_user_attr("baseline", baseline)
        return baseline
    metric = evaluate_original(task)
    baseline = measure_model(task.model, task.example_inputs, cost.needs_latency)
    baseline["accuracy"] = metric
    for key, value in {
        "strategy": strat.name,
        "strategy_params": strat.params,
        "objectives": cost.objectives,
        "directions": cost.directions,
        "weights": cost.weights,
        "constraints": [c.text for c in cost.constraints],
        "space": space.to_dict(),
        "task": task.name or type(task.model).__name__,
        "metric_name": task.metric_name,
        "metric_direction": task.direction,
        "baseline": baseline,
        "n_trials": n_trials,
        "seed": seed,
        "artifacts_dir": str(artifacts_dir(url)),
    }.items():
        study.set_user_attr(key, value)
    for params in strat.seeds(space):
        study.enqueue_trial(params, skip_if_exists=True)
    study.set_user_attr("slimtune", slimtune.__version__)  # last: marks the study as initialised
    return baseline


# ---------------------------------------------------------------------- the driver
def _counts(study: optuna.Study) -> dict[str, int]:
    trials = study.get_trials(deepcopy=False)
    # a retried trial's copy names the original (RetryHeartbeatStaleTrialCallback.retried_trial_number)
    retried = {t.system_attrs.get("failed_trial") for t in trials} - {None}
    done = sum(1 for t in trials if t.state.is_finished() and t.number not in retried and ATTR_OVER not in t.user_attrs)
    return {
        "done": done,
        "running": sum(1 for t in trials if t.state == TrialState.RUNNING),
        "waiting": sum(1 for t in trials if t.state == TrialState.WAITING),
        "complete": sum(1 for t in trials if t.state == TrialState.COMPLETE),
    }


class _Progress:
    """Stops the study at the budget, logs one line per finished trial, drives a progress bar."""

    def __init__(self, study: optuna.Study, n_trials: int | None, progress: bool) -> None:
        self.n_trials = n_trials
        self.progress = progress
        self.bar = None
        if progress and n_trials is not None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=n_trials, initial=min(_counts(study)["done"], n_trials), desc=study.study_name, unit="trial")

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        c = _counts(study)
        if self.bar is not None:
            self.bar.n = min(c["done"], self.bar.total)
            self.bar.refresh()
        if self.progress:
            logger.info(_trial_line(trial))
        if self.n_trials is not None and (c["done"] >= self.n_trials or (c["done"] + c["running"] >= self.n_trials and not c["waiting"])):
            study.stop()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _trial_line(t: FrozenTrial) -> str:
    m = t.user_attrs.get(ATTR_MEASURES) or {}
    parts = [f"trial {t.number:>3} {t.state.name:<8}"]
    for key, fmt in (("accuracy", "{:.4f}"), ("flops", "{:.3f}"), ("params", "{:.3f}"), ("size", "{:.3f}"), ("latency", "{:.3f}")):
        if m.get(key) is not None:
            parts.append(f"{key}={fmt.format(m[key])}")
    if t.state == TrialState.FAIL:
        parts.append(f"reason: {t.user_attrs.get(ATTR_FAIL, 'unknown')}")
    if t.datetime_start and t.datetime_complete:
        parts.append(f"({(t.datetime_complete - t.datetime_start).total_seconds():.1f}s)")
    return " ".join(parts)


ATTR_OVER = "over_budget"


class _Budgeted:
    """Runs the objective unless the study's budget is already spoken for.

    Two workers can both ask for a trial in the moment between one's last trial ending and the
    budget check; the later trial finds ``n_trials`` earlier trials (finished, running or queued)
    and ends at once as PRUNED, marked ``over_budget`` and not counted.
    """

    def __init__(self, objective: Objective, n_trials: int | None, worker: Mapping[str, Any] | None = None) -> None:
        self.objective = objective
        self.n_trials = n_trials
        self.worker = dict(worker) if worker else None  # where trials run (ray_backend.worker_identity)

    def _run(self, trial: optuna.trial.Trial) -> Any:
        if self.worker is not None:
            trial.set_user_attr(ATTR_WORKER, self.worker)
        return self.objective(trial)

    def __call__(self, trial: optuna.trial.Trial) -> Any:
        if self.n_trials is not None:
            trials = trial.study.get_trials(deepcopy=False)
            me = next((t for t in trials if t.number == trial.number), None)
            if me is not None and me.system_attrs.get("failed_trial") is not None:
                return self._run(trial)  # a retry of a dead worker's trial: always run
            retried = {t.system_attrs.get("failed_trial") for t in trials} - {None}
            # every trial numbered before this one uses budget (finished, running or queued),
            # unless it was retried (its copy counts) or was itself over budget
            ahead = sum(
                1 for t in trials if t.number < trial.number and t.number not in retried and ATTR_OVER not in t.user_attrs
            )
            if ahead >= self.n_trials:
                trial.set_user_attr(ATTR_OVER, True)
                trial.study.stop()
                raise optuna.TrialPruned("the study's budget was already used by other workers")
        return self._run(trial)


def _adopt_orphans(study: optuna.Study, adopted: set[int]) -> None:
    """Give a heartbeat to RUNNING trials that never sent one (their worker died at once).

    Optuna only fails trials whose heartbeat went stale; a trial without any heartbeat would stay
    RUNNING forever. One heartbeat on its behalf lets it go stale (and be retried) if nobody runs it.
    """
    storage = study._storage
    if not hasattr(storage, "record_heartbeat"):
        return
    now = time.time()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.number in adopted or t.datetime_start is None:
            continue
        if now - t.datetime_start.timestamp() > GRACE_PERIOD:
            storage.record_heartbeat(t._trial_id)
            adopted.add(t.number)


def _drive(study: optuna.Study, objective: Objective, n_trials: int | None, timeout: float | None, progress: bool) -> None:
    deadline = time.monotonic() + timeout if timeout is not None else None
    tracker = _Progress(study, n_trials, progress)
    budgeted = _Budgeted(objective, n_trials, worker_identity())
    adopted: set[int] = set()
    idle_rounds = 0
    # an iterative strategy (annealing, NetAdapt) may end before the budget: Strategy.finished
    finished = objective.strategy.finished

    def stop_when_finished(study: optuna.Study, trial: FrozenTrial) -> None:
        if finished(study) is not None:
            study.stop()

    try:
        while True:
            reason = finished(study)
            if reason is not None:
                logger.info("study %s: strategy %s finished: %s", study.study_name, objective.strategy.name, reason)
                break
            c = _counts(study)
            if n_trials is not None and c["done"] >= n_trials:
                break
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            if n_trials is None or c["waiting"] or c["done"] + c["running"] < n_trials:
                before = c["done"] + c["running"]
                with _quiet_optuna():
                    study.optimize(budgeted, timeout=left, catch=(Exception,), callbacks=[tracker, stop_when_finished])
                if n_trials is None:
                    break
                after = _counts(study)
                idle_rounds = idle_rounds + 1 if after["done"] + after["running"] == before else 0
                if idle_rounds >= 3:
                    logger.warning("study %s: the sampler proposes no new trials; stopping", study.study_name)
                    break
            else:
                # Only other workers' trials are in flight: wait for them to finish or, if their
                # worker died, to go stale (then they are failed and re-queued for us to run).
                # (polled every WAIT_POLL seconds: a worker that waits ends soon after the last trial)
                time.sleep(min(WAIT_POLL, left) if left is not None else WAIT_POLL)
                _adopt_orphans(study, adopted)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    optuna.storages.fail_stale_trials(study)  # no-op for storages without heartbeats
    finally:
        tracker.close()


class _quiet_optuna:
    """Optuna logs every trial (and a traceback for each failed one); slimtune logs its own line
    per trial, failures with their reason, so Optuna is kept at ERROR while trials run."""

    def __enter__(self) -> None:
        self.level = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(max(self.level, optuna.logging.ERROR))

    def __exit__(self, *exc: object) -> None:
        optuna.logging.set_verbosity(self.level)


# ---------------------------------------------------------------------- results
_FRONT_COLUMNS = {
    "accuracy": "accuracy",
    "accuracy_drop": "accuracy_drop",
    "flops_abs": "flops",
    "flops": "flops_rel",
    "params_abs": "params",
    "params": "params_rel",
    "size_abs": "size_bytes",
    "size": "size_rel",
    "latency_abs": "latency_ms",
    "latency": "latency_rel",
}


def trials_table(study: optuna.Study, states: Sequence[TrialState] = (TrialState.COMPLETE,)) -> pd.DataFrame:
    """One row per trial in ``states``: number, state, objective values, measures and plan."""
    objectives = study.user_attrs.get("objectives") or [f"value_{i}" for i in range(len(study.directions))]
    weighted = study.user_attrs.get("weights") is not None
    rows = []
    for t in study.get_trials(deepcopy=False, states=tuple(states)):
        row: dict[str, Any] = {"trial": t.number, "state": t.state.name}
        if t.values is not None:
            if weighted:
                row["cost"] = t.values[0]
            else:
                row.update({f"objective:{o}": v for o, v in zip(objectives, t.values)})
        measures = t.user_attrs.get(ATTR_MEASURES) or {}
        for key, col in _FRONT_COLUMNS.items():
            row[col] = measures.get(key)
        constraints = t.user_attrs.get(ATTR_CONSTRAINTS)
        row["feasible"] = None if constraints is None else all(v <= 0 for v in constraints.values())
        plan = t.user_attrs.get(ATTR_PLAN)
        row["plan"] = CompressionPlan.from_dict(plan).summary() if plan else None
        row["plan_json"] = json.dumps(plan) if plan else None
        if t.state == TrialState.FAIL:
            row["fail_reason"] = t.user_attrs.get(ATTR_FAIL)
        rows.append(row)
    return pd.DataFrame(rows)


def pareto_front(study: optuna.Study) -> pd.DataFrame:
    """The study's best feasible trials: the Pareto front (one best trial if single-objective).

    One row per front trial with the objective values, every measure absolute and relative
    (``flops`` MACs per sample and ``flops_rel``, ``params``/``params_rel``, ``size_bytes``/
    ``size_rel``, ``latency_ms``/``latency_rel``), ``accuracy``/``accuracy_drop``, a plan summary
    and the plan as JSON; sorted by the first objective.
    """
    if len(study.directions) > 1:
        best = study.best_trials
    else:
        try:
            best = [study.best_trial]
        except ValueError:
            best = []
    numbers = {t.number for t in best}
    table = trials_table(study)
    if table.empty:
        return table
    front = table[table["trial"].isin(numbers)].drop(columns=["state"])
    first = next((c for c in front.columns if c.startswith("objective:") or c == "cost"), "trial")
    return front.sort_values(first, ascending=study.directions[0] == optuna.study.StudyDirection.MINIMIZE).reset_index(drop=True)


def load_model(study: optuna.Study, trial_number: int) -> nn.Module:
    """The compressed model of a completed trial (saved as an artifact when it ran)."""
    from optuna.artifacts import FileSystemArtifactStore, download_artifact

    trial = _get_trial(study, trial_number)
    artifact_id = trial.user_attrs.get(ATTR_ARTIFACT)
    if artifact_id is None:
        why = trial.user_attrs.get(ATTR_FAIL) or "saving was off (save_models='none')"
        raise SlimtuneError(f"trial {trial_number} of study {study.study_name!r} has no saved model: {why}")
    adir = study.user_attrs.get("artifacts_dir")
    store = FileSystemArtifactStore(adir)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.pt")
        try:
            download_artifact(artifact_store=store, file_path=path, artifact_id=artifact_id)
        except Exception as e:
            raise SlimtuneError(f"the saved model of trial {trial_number} is missing from {adir}: {e}") from e
        return torch.load(path, weights_only=False)


def export_model(study: optuna.Study, trial_number: int, path: str | os.PathLike[str]) -> Path:
    """Write the compressed model of a trial to ``path`` (``torch.save`` of the module)."""
    model = load_model(study, trial_number)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model, out)
    return out


def _get_trial(study: optuna.Study, number: int) -> FrozenTrial:
    for t in study.get_trials(deepcopy=False):
        if t.number == number:
            return t
    raise SlimtuneError(f"study {study.study_name!r} has no trial {number} (it has {len(study.trials)} trials)")


def studies_summary(storage: str | BaseStorage | None = None) -> pd.DataFrame:
    """One row per study of the storage: strategy, objectives, trials by state, front size, best."""
    st = make_storage(storage)
    rows = []
    for name in optuna.get_all_study_names(st):
        if name.startswith(SENSITIVITY_PREFIX):
            continue
        study = optuna.load_study(study_name=name, storage=st)
        trials = study.get_trials(deepcopy=False)
        count = {s: sum(1 for t in trials if t.state == s) for s in TrialState}
        try:
            front = pareto_front(study)
        except Exception:  # a foreign study without slimtune attributes
            front = pd.DataFrame()
        best = ""
        if not front.empty and "accuracy" in front:
            top = front.sort_values("accuracy", ascending=study.user_attrs.get("metric_direction") == "minimize").iloc[0]
            best = f"accuracy {top['accuracy']:.4f} at flops_rel {top['flops_rel']:.3f}" if top["flops_rel"] is not None else ""
        rows.append(
            {
                "study": name,
                "strategy": study.user_attrs.get("strategy", "?"),
                "objectives": ",".join(study.user_attrs.get("objectives", [])),
                "complete": count[TrialState.COMPLETE],
                "pruned": count[TrialState.PRUNED],
                "fail": count[TrialState.FAIL],
                "running": count[TrialState.RUNNING],
                "waiting": count[TrialState.WAITING],
                "n_trials": study.user_attrs.get("n_trials"),
                "front_size": len(front),
                "best": best,
            }
        )
    return pd.DataFrame(rows)


__all__ = [
    "DEFAULT_STORAGE",
    "artifacts_dir",
    "export_model",
    "load_model",
    "make_storage",
    "open_study",
    "pareto_front",
    "search",
    "sensitivity_table",
    "studies_summary",
    "trials_table",
]
