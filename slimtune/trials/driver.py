"""The local driver: runs a study's trials in this process until its budget is spent.

Several processes may drive one study at once (``slimtune worker``, the Ray backend's workers):
the budget (``n_trials``) counts the study's finished trials over all of them. With an RDB
storage each running trial sends heartbeats; a trial whose worker stopped sending them for the
grace period is failed (its ``fail_reason`` says so) and queued once more, and a driver with
nothing left to ask waits for other workers' trials so a study always ends with its full budget.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from slimtune import attributes as attrs
from slimtune import optuna_internals
from slimtune.trials.storage import Heartbeat

if TYPE_CHECKING:
    from slimtune.trials.objective import Objective

logger = logging.getLogger("slimtune")

WAIT_POLL = 0.5  # seconds between looks at the study while only other workers' trials run


def counts(study: optuna.Study) -> dict[str, int]:
    """The study's trials by what the budget sees: ``done`` (finished, not retried, not over
    budget), ``running``, ``waiting`` and ``complete``."""
    trials = study.get_trials(deepcopy=False)
    retried = {optuna_internals.retried_from(t) for t in trials} - {None}  # the copy counts
    done = sum(1 for t in trials if t.state.is_finished() and t.number not in retried and not attrs.over_budget(t))
    return {
        "done": done,
        "running": sum(1 for t in trials if t.state == TrialState.RUNNING),
        "waiting": sum(1 for t in trials if t.state == TrialState.WAITING),
        "complete": sum(1 for t in trials if t.state == TrialState.COMPLETE),
    }


def worker_identity() -> dict[str, Any]:
    """Where this process runs trials: host and pid, plus node, node IP and actor on a Ray worker."""
    info: dict[str, Any] = {"backend": "local", "host": socket.gethostname(), "pid": os.getpid()}
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ctx = ray.get_runtime_context()
        actor = ctx.get_actor_id()
        if actor is not None:
            info.update(backend="ray", node=ctx.get_node_id(), node_ip=ray.util.get_node_ip_address(), actor=actor)
            gpus = ray.get_gpu_ids()
            if gpus:  # the GPUs Ray assigned to this worker (the only ones it sees, as cuda:0, cuda:1 ...)
                info["gpus"] = [str(g) for g in gpus]
    return info


class Progress:
    """Stops the study at the budget, logs one line per finished trial, drives a progress bar."""

    def __init__(self, study: optuna.Study, n_trials: int | None, progress: bool) -> None:
        self.n_trials = n_trials
        self.progress = progress
        self.bar = None
        if progress and n_trials is not None:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=n_trials, initial=min(counts(study)["done"], n_trials), desc=study.study_name, unit="trial"
            )

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        c = counts(study)
        if self.bar is not None:
            self.bar.n = min(c["done"], self.bar.total)
            self.bar.refresh()
        if self.progress:
            logger.info(trial_line(trial))
        if self.n_trials is not None and (
            c["done"] >= self.n_trials or (c["done"] + c["running"] >= self.n_trials and not c["waiting"])
        ):
            study.stop()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def trial_line(t: FrozenTrial) -> str:
    """One log line for a finished trial: state, measures, the reason of a failure, its time."""
    m = attrs.measures(t)
    parts = [f"trial {t.number:>3} {t.state.name:<8}"]
    for key, fmt in (
        ("accuracy", "{:.4f}"),
        ("flops", "{:.3f}"),
        ("params", "{:.3f}"),
        ("size", "{:.3f}"),
        ("latency", "{:.3f}"),
        ("memory", "{:.3f}"),
    ):
        if m.get(key) is not None:
            parts.append(f"{key}={fmt.format(m[key])}")
    if t.state == TrialState.FAIL:
        parts.append(f"reason: {attrs.fail_reason(t) or 'unknown'}")
    if t.datetime_start and t.datetime_complete:
        parts.append(f"({(t.datetime_complete - t.datetime_start).total_seconds():.1f}s)")
    return " ".join(parts)


class Budgeted:
    """Runs the objective unless the study's budget is already spoken for.

    Two workers can both ask for a trial in the moment between one's last trial ending and the
    budget check; the later trial finds ``n_trials`` earlier trials (finished, running or queued)
    and ends at once as PRUNED, marked ``over_budget`` and not counted.
    """

    def __init__(self, objective: Objective, n_trials: int | None, worker: Mapping[str, Any] | None = None) -> None:
        self.objective = objective
        self.n_trials = n_trials
        self.worker = dict(worker) if worker else None  # where trials run (worker_identity)

    def _run(self, trial: optuna.trial.Trial) -> Any:
        if self.worker is not None:
            trial.set_user_attr(attrs.Trial.WORKER, self.worker)
        return self.objective(trial)

    def __call__(self, trial: optuna.trial.Trial) -> Any:
        if self.n_trials is not None:
            trials = trial.study.get_trials(deepcopy=False)
            me = next((t for t in trials if t.number == trial.number), None)
            if me is not None and optuna_internals.retried_from(me) is not None:
                return self._run(trial)  # a retry of a dead worker's trial: always run
            # every trial numbered before this one uses budget (finished, running or queued), unless it
            # was itself over budget; a dead worker's trial keeps its place, and its copy (numbered later,
            # always run) is counted through it: so a new trial started while a dead trial waits to be
            # retried cannot take that trial's place, and the budget is not overrun once the copy runs
            ahead = sum(
                1
                for t in trials
                if t.number < trial.number and optuna_internals.retried_from(t) is None and not attrs.over_budget(t)
            )
            if ahead >= self.n_trials:
                trial.set_user_attr(attrs.Trial.OVER_BUDGET, True)
                trial.study.stop()
                raise optuna.TrialPruned("the study's budget was already used by other workers")
        return self._run(trial)


def adopt_orphans(study: optuna.Study, adopted: set[int], heartbeat: Heartbeat) -> None:
    """Give a heartbeat to RUNNING trials that never sent one (their worker died at once).

    Optuna only fails trials whose heartbeat went stale; a trial without any heartbeat would stay
    RUNNING forever. One heartbeat on its behalf lets it go stale (and be retried) if nobody runs it.
    """
    now = time.time()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.number in adopted or t.datetime_start is None:
            continue
        if now - t.datetime_start.timestamp() > heartbeat.grace_period:
            if not optuna_internals.record_heartbeat(study, t):
                return
            adopted.add(t.number)


def fail_stale(study: optuna.Study) -> None:
    """Fail (and queue again) the trials whose worker stopped sending heartbeats."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # no-op for storages without heartbeats


def drive(
    study: optuna.Study,
    objective: Objective,
    n_trials: int | None,
    timeout: float | None,
    progress: bool,
    heartbeat: Heartbeat,
    worker: Mapping[str, Any] | None = None,
) -> None:
    """Run trials of ``study`` here until ``n_trials`` finished trials (all workers), ``timeout``
    seconds, or the strategy is finished."""
    deadline = time.monotonic() + timeout if timeout is not None else None
    tracker = Progress(study, n_trials, progress)
    budgeted = Budgeted(objective, n_trials, worker)
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
            c = counts(study)
            if n_trials is not None and c["done"] >= n_trials:
                break
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            if n_trials is None or c["waiting"] or c["done"] + c["running"] < n_trials:
                before = c["done"] + c["running"]
                with quiet_optuna():
                    study.optimize(budgeted, timeout=left, catch=(Exception,), callbacks=[tracker, stop_when_finished])
                if n_trials is None:
                    break
                after = counts(study)
                idle_rounds = idle_rounds + 1 if after["done"] + after["running"] == before else 0
                if idle_rounds >= 3:
                    logger.warning("study %s: the sampler proposes no new trials; stopping", study.study_name)
                    break
            else:
                # Only other workers' trials are in flight: wait for them to finish or, if their
                # worker died, to go stale (then they are failed and re-queued for us to run).
                # (polled every WAIT_POLL seconds: a worker that waits ends soon after the last trial)
                time.sleep(min(WAIT_POLL, left) if left is not None else WAIT_POLL)
                adopt_orphans(study, adopted, heartbeat)
                fail_stale(study)
    finally:
        tracker.close()


class quiet_optuna:
    """Optuna logs every trial (and a traceback for each failed one); slimtune logs its own line
    per trial, failures with their reason, so Optuna is kept at ERROR while trials run."""

    def __enter__(self) -> None:
        self.level = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(max(self.level, optuna.logging.ERROR))

    def __exit__(self, *exc: object) -> None:
        optuna.logging.set_verbosity(self.level)


class Monitor:
    """The view of a process whose workers (Ray actors, ``slimtune worker`` processes) run the trials:
    one log line per finished trial, a progress bar, and the storage's upkeep (trials of dead workers
    failed and re-queued). Call :meth:`poll` every second or so, :meth:`close` at the end."""

    def __init__(self, study: optuna.Study, n_trials: int | None, progress: bool, heartbeat: Heartbeat) -> None:
        self.study = study
        self.progress = progress
        self.heartbeat = heartbeat
        self.seen = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
        self.adopted: set[int] = set()
        self.upkeep = time.monotonic()
        self.bar = None
        if progress and n_trials is not None:
            from tqdm.auto import tqdm

            done = counts(study)["done"]
            self.bar = tqdm(total=n_trials, initial=min(done, n_trials), desc=study.study_name, unit="trial")

    def poll(self) -> None:
        for t in self.study.get_trials(deepcopy=False):
            if t.state.is_finished() and t.number not in self.seen:
                self.seen.add(t.number)
                if self.progress:
                    where = attrs.worker(t)
                    node = (
                        f" on {where.get('node_ip', where.get('host', '?'))} pid {where.get('pid', '?')}"
                        if where
                        else ""
                    )
                    device = attrs.device(t)
                    logger.info(trial_line(t) + node + (f" on {device.split(' ')[0]}" if device else ""))
        if self.bar is not None:
            self.bar.n = min(counts(self.study)["done"], self.bar.total)
            self.bar.refresh()
        if time.monotonic() - self.upkeep >= self.heartbeat.interval:
            self.upkeep = time.monotonic()
            adopt_orphans(self.study, self.adopted, self.heartbeat)
            fail_stale(self.study)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


__all__ = [
    "Monitor",
    "Budgeted",
    "Progress",
    "adopt_orphans",
    "counts",
    "drive",
    "fail_stale",
    "quiet_optuna",
    "trial_line",
    "worker_identity",
]
