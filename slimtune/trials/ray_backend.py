"""``backend: ray``: a study's trials run on a Ray cluster (local, or ``ray.init(address=...)``).

**Design.** The driver prepares the study exactly as a local run does (baseline, sensitivity
cache, seed trials), then starts long-lived Ray actors — *workers*, one per concurrent trial —
each placed with ``resources_per_trial``. A worker receives the :class:`~slimtune.Task` once
(cloudpickle), joins the study in its storage and runs the local trial loop: the strategy's
sampler asks the storage for parameters, the objective compresses / fine-tunes / evaluates /
measures, heartbeats and every user attribute (plan, measures, constraints, times, saved model)
go to the same storage. So every strategy works unchanged (custom samplers whose state lives in
the study, multi-objective and constrained costs, pruners), and ``slimtune status``, ``pareto``,
``export`` and the dashboard see Ray-run trials exactly like local ones. A worker pays Ray's
start-up (process, imports, task) once, not per trial. Each trial records where it ran in its
``worker`` user attribute: ``backend``, ``host``, ``pid`` and, on Ray, ``node`` (node id),
``node_ip`` and ``actor``.

**Faults.** A worker whose process dies is restarted by Ray (up to ``max_retries`` times) and
resumes its loop; the trial it was running is failed at once and queued again (retried once, with
the same parameters, like any trial whose heartbeat went stale), so the study still reaches its
``n_trials`` finished trials. A driver that dies takes its workers with it; running the same
call or command again resumes the study from the storage (trials left running are failed and
retried after the storage's grace period, ``SLIMTUNE_GRACE_PERIOD``).

**Storage.** Every worker opens the storage URL itself: ``sqlite:///`` and ``journal:`` files
work when the workers share the driver's machine (one or more Ray nodes on it); a cluster of
several machines needs a database server (``postgresql://...``) and, for saved models, the
study's artifacts directory on a shared filesystem (``SLIMTUNE_ARTIFACTS``) or
``save_models="none"``.

Example:
    .. code-block:: python

        import slimtune
        from slimtune.examples.digits import make_task

        study = slimtune.search(make_task(), strategy="nsga2", n_trials=24, storage="sqlite:///slimtune.db",
                                backend="ray", ray={"max_concurrent_trials": 2, "resources_per_trial": {"cpu": 1}})
"""

from __future__ import annotations

import logging
import math
import os
import socket
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

from slimtune.errors import SlimtuneError

if TYPE_CHECKING:
    import optuna

    from slimtune.strategies import Strategy
    from slimtune.trials.task import Task

__all__ = ["RAY_FIELDS", "RayOptions", "release_workers", "worker_identity"]

logger = logging.getLogger("slimtune")

#: Fields of the ``ray`` options (spec section ``ray:``, API argument ``ray=``) and what each holds.
RAY_FIELDS: dict[str, str] = {
    "address": "a running Ray cluster, e.g. 127.0.0.1:6379 (default: $RAY_ADDRESS, else one started with `ray start` on this machine, else a local Ray for the run)",
    "max_concurrent_trials": "trials running at once, one Ray worker each (default: as many as the cluster's resources hold)",
    "resources_per_trial": "Ray resources of one trial: cpu, gpu, memory (bytes) or custom resources (default {cpu: 1})",
    "max_retries": "times Ray restarts a worker whose process died (default 3)",
}

#: The user attribute holding where a trial ran.
ATTR_WORKER = "worker"
#: Seconds an idle Ray worker is kept for this process's next run (``SLIMTUNE_RAY_IDLE``).
IDLE_TIMEOUT_S = float(os.environ.get("SLIMTUNE_RAY_IDLE", "10"))
_POLL_S = 1.0


@dataclass(frozen=True)
class RayOptions:
    """How a study runs on Ray (see :data:`RAY_FIELDS`).

    Args:
        address: A running cluster (``host:port``, ``ray://host:port``, ``auto`` or ``local`` for a
            new local Ray); ``None`` uses ``$RAY_ADDRESS`` when set, else a cluster started with
            ``ray start`` on this machine, else a local Ray for the run (stopped after it).
        max_concurrent_trials: Trials at once (one worker each); ``None``: as many as fit the
            cluster's resources.
        resources_per_trial: ``cpu``, ``gpu``, ``memory`` (bytes) and custom resources of one trial.
        max_retries: Restarts of a worker whose process died.

    Example:
        >>> RayOptions.from_dict({"max_concurrent_trials": 2, "resources_per_trial": {"cpu": 1}}).max_concurrent_trials
        2
        >>> RayOptions.from_dict({"max_retries": -1})
        Traceback (most recent call last):
        ...
        ValueError: ray.max_retries: must be ≥ 0, got -1
    """

    address: str | None = None
    max_concurrent_trials: int | None = None
    resources_per_trial: Mapping[str, float] = field(default_factory=lambda: {"cpu": 1.0})
    max_retries: int = 3

    @classmethod
    def from_value(cls, value: RayOptions | Mapping[str, Any] | None) -> RayOptions:
        """``value`` as options: a :class:`RayOptions`, a mapping (validated) or ``None`` (defaults)."""
        if isinstance(value, RayOptions):
            return value
        return cls.from_dict(value or {})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], prefix: str = "ray.") -> RayOptions:
        """Validate a mapping of :data:`RAY_FIELDS`; a ``ValueError`` names the bad field."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{prefix.rstrip('.')}: expected a mapping of {', '.join(RAY_FIELDS)}, got {type(data).__name__}")
        for key in data:
            if key not in RAY_FIELDS:
                raise ValueError(f"{prefix}{key}: unknown field; known fields: {', '.join(RAY_FIELDS)}")
        address = data.get("address")
        if address is not None and (not isinstance(address, str) or not address.strip()):
            raise ValueError(f"{prefix}address: expected a cluster address such as 127.0.0.1:6379, got {address!r}")
        concurrent = data.get("max_concurrent_trials")
        if concurrent is not None:
            concurrent = _integer(concurrent, f"{prefix}max_concurrent_trials", 1)
        retries = _integer(data.get("max_retries", 3), f"{prefix}max_retries", 0)
        resources = data.get("resources_per_trial", {"cpu": 1.0})
        if not isinstance(resources, Mapping) or not resources:
            raise ValueError(f"{prefix}resources_per_trial: expected a mapping such as {{cpu: 1, gpu: 0}}, got {resources!r}")
        checked: dict[str, float] = {}
        for name, amount in resources.items():
            where = f"{prefix}resources_per_trial.{name}"
            if not isinstance(name, str) or not name:
                raise ValueError(f"{prefix}resources_per_trial: resource names must be strings, got {name!r}")
            if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not math.isfinite(amount) or amount < 0:
                raise ValueError(f"{where}: expected a number ≥ 0, got {amount!r}")
            checked[name.lower() if name.lower() in ("cpu", "gpu", "memory") else name] = float(amount)
        checked.setdefault("cpu", 1.0)
        if not any(v > 0 for v in checked.values()):
            raise ValueError(f"{prefix}resources_per_trial: a trial must need some resource (e.g. cpu: 1)")
        return cls(address.strip() if address else None, concurrent, checked, retries)

    def to_dict(self) -> dict[str, Any]:
        """The options as plain data; ``RayOptions.from_dict(o.to_dict()) == o``."""
        out: dict[str, Any] = {}
        if self.address is not None:
            out["address"] = self.address
        if self.max_concurrent_trials is not None:
            out["max_concurrent_trials"] = self.max_concurrent_trials
        out["resources_per_trial"] = dict(self.resources_per_trial)
        out["max_retries"] = self.max_retries
        return out

    def actor_options(self) -> dict[str, Any]:
        """Options of ``ray.remote(...).options(...)`` for one worker."""
        res = dict(self.resources_per_trial)
        opts: dict[str, Any] = {"num_cpus": res.pop("cpu", 1.0), "num_gpus": res.pop("gpu", 0.0)}
        memory = res.pop("memory", 0.0)
        if memory:
            opts["memory"] = memory
        if res:
            opts["resources"] = res
        return opts


def _integer(value: Any, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where}: expected an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{where}: must be ≥ {minimum}, got {value}")
    return value


def worker_identity() -> dict[str, Any]:
    """Where this process runs trials: host and pid, plus node, node IP and actor on a Ray worker."""
    info: dict[str, Any] = {"backend": "local", "host": socket.gethostname(), "pid": os.getpid()}
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ctx = ray.get_runtime_context()
        actor = ctx.get_actor_id()
        if actor is not None:
            info.update(backend="ray", node=ctx.get_node_id(), node_ip=ray.util.get_node_ip_address(), actor=actor)
    return info


# ---------------------------------------------------------------------- the worker (a Ray actor)
class _Worker:
    """One Ray actor: a ``slimtune worker`` process living on a Ray node.

    Created once per concurrent trial and reused by the later runs of the same driver process
    on the same Ray session; :meth:`run` joins a study and runs trials until the study's budget
    is spent. Ray restarts the actor after its process died and calls :meth:`run` again, which
    first re-queues the trial the dead process left running.
    """

    def run(self, task_blob: bytes, kwargs: dict[str, Any], deadline: float | None, settings: Mapping[str, Any]) -> dict[str, Any]:
        from ray import cloudpickle

        from slimtune.trials import runner

        _apply(settings)
        me = worker_identity()
        try:
            task = cloudpickle.loads(task_blob)
        except Exception as e:
            raise SlimtuneError(
                f"the Ray worker on {me['node_ip']} cannot load the task: {type(e).__name__}: {e} "
                "(the task's modules must be importable on every Ray node: install them there or put them on PYTHONPATH)"
            ) from e
        # this actor runs one trial at a time and none now: a RUNNING trial of its own is one its
        # previous process was running when it died (Ray restarted the actor)
        study = runner.open_study(kwargs["storage"], kwargs["study_name"])
        requeue(study, lambda info: info.get("actor") == me["actor"], "its Ray worker died")
        timeout = None if deadline is None else deadline - time.time()
        if timeout is not None and timeout <= 0:
            return me
        runner.search(task, **kwargs, timeout=timeout, join=True, backend="local", progress=False)
        return me


def _apply(settings: Mapping[str, Any]) -> None:
    """The driver's settings in a worker: heartbeats, SLIMTUNE_* variables, import path, working
    directory, threads."""
    import optuna
    import torch

    from slimtune.trials import runner

    # heartbeat settings of the driver (SLIMTUNE_HEARTBEAT_INTERVAL / _GRACE_PERIOD there)
    runner.HEARTBEAT_INTERVAL = int(settings["heartbeat_interval"])
    runner.GRACE_PERIOD = int(settings["grace_period"])
    os.environ.update(settings["env"])
    for path in settings["sys_path"]:  # where the driver imports the task's modules from
        if os.path.isdir(path) and path not in sys.path:
            sys.path.append(path)
    if os.path.isdir(settings["cwd"]):  # relative paths in the task mean what they mean on the driver
        os.chdir(settings["cwd"])
    torch.set_num_threads(int(settings["threads"]))
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the driver logs one line per trial


class _Pool:
    """Idle workers of this process's Ray session, by placement options, for the next run.

    A worker costs a process start and the imports (seconds); a driver that runs several studies
    in a row reuses its workers. An idle worker still holds its Ray resources, so it is ended
    after :data:`IDLE_TIMEOUT_S` seconds unused (or at ``ray.shutdown()``); workers of another
    placement are ended when a run needs different ones.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.idle: dict[tuple[str, str], list[Any]] = {}

    def take(self, ray: Any, options: RayOptions, count: int) -> list[Any]:
        key = self._key(ray, options)
        with self.lock:
            others = [a for k, v in self.idle.items() if k != key for a in v]  # (dead handles of an ended session too)
            ready = self.idle.pop(key, [])
            taken = ready[:count]
            self.idle = {key: ready[count:]} if ready[count:] else {}
        for actor in others:  # a session that ended, or resources another placement may need
            _kill(ray, actor)
        if len(taken) < count:
            worker_cls = ray.remote(_Worker).options(
                **options.actor_options(),
                max_restarts=options.max_retries,
                max_task_retries=options.max_retries,
                scheduling_strategy="SPREAD",
            )
            taken += [worker_cls.remote() for _ in range(count - len(taken))]
        return taken

    def give_back(self, ray: Any, options: RayOptions, actors: list[Any]) -> None:
        key = self._key(ray, options)
        with self.lock:
            self.idle.setdefault(key, []).extend(actors)
        timer = threading.Timer(IDLE_TIMEOUT_S, self._expire, args=(ray, key, list(actors)))
        timer.daemon = True
        timer.start()

    def _expire(self, ray: Any, key: tuple[str, str], actors: list[Any]) -> None:
        with self.lock:
            idle = self.idle.get(key, [])
            expired = [a for a in actors if any(a is b for b in idle)]
            self.idle[key] = [b for b in idle if not any(a is b for a in expired)]
        for actor in expired:
            _kill(ray, actor)

    @staticmethod
    def _key(ray: Any, options: RayOptions) -> tuple[str, str]:
        ctx = ray.get_runtime_context()  # this session: job and node ids are new for every Ray started
        return f"{ctx.get_job_id()}@{ctx.get_node_id()}", repr((sorted(options.actor_options().items()), options.max_retries))


def _kill(ray: Any, actor: Any) -> None:
    try:
        if ray.is_initialized():
            ray.kill(actor, no_restart=True)
    except Exception:  # already gone with its session
        pass


_POOL = _Pool()


def release_workers() -> int:
    """End the idle Ray workers this process keeps for its next run (frees their resources now).

    Returns how many were ended.
    """
    with _POOL.lock:
        idle = [a for actors in _POOL.idle.values() for a in actors]
        _POOL.idle = {}
    ray = sys.modules.get("ray")
    for actor in idle:
        if ray is not None:
            _kill(ray, actor)
    return len(idle)


def requeue(study: optuna.Study, owned: Any, why: str) -> list[int]:
    """Fail the RUNNING trials whose ``worker`` attribute satisfies ``owned`` and queue them again.

    The same as a stale heartbeat does (the storage's retry callback: a WAITING copy with the same
    parameters, ``failed_trial`` naming the original, retried at most once), without waiting for
    the grace period. Returns the numbers of the trials failed here.
    """
    import copy

    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    storage = study._storage
    callback = getattr(storage, "get_heartbeat_stale_trial_callback", lambda: None)()
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not owned(t.user_attrs.get(ATTR_WORKER) or {}):
            continue
        try:  # (a finished trial's attributes are read-only: the reason first)
            storage.set_trial_user_attr(t._trial_id, "fail_reason", f"WorkerDied: {why}")
            if not storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:  # finished (or failed as stale) meanwhile
            continue
        failed.append(t.number)
        if callback is not None:
            callback(study, copy.deepcopy(storage.get_trial(t._trial_id)))
    if failed:
        logger.warning("study %s: trial(s) %s failed because %s; queued again", study.study_name, failed, why)
    return failed


# ---------------------------------------------------------------------- the driver
def run_on_ray(
    task: Task,
    study: optuna.Study,
    strategy: Strategy,
    options: RayOptions,
    kwargs: dict[str, Any],
    n_trials: int | None,
    timeout: float | None,
    progress: bool,
) -> None:
    """Run ``study``'s trials on Ray workers until ``n_trials`` finished trials or ``timeout``.

    ``kwargs`` are :func:`~slimtune.trials.runner.search`'s arguments each worker joins the study
    with (``storage`` a URL every worker can open).
    """
    ray = _import_ray()
    from ray import cloudpickle

    from slimtune.trials import runner

    url = check_storage(kwargs["storage"])
    kwargs = {**kwargs, "storage": _absolute_url(url)}
    try:
        blob = cloudpickle.dumps(task)
    except Exception as e:
        raise SlimtuneError(
            f"backend 'ray' sends the task to every worker with cloudpickle, which failed: {type(e).__name__}: {e} "
            "(build the Task in a module-level function, without open files, locks or live connections)"
        ) from e
    started = _connect(ray, options)
    actors: list[Any] = []
    deadline = None if timeout is None else time.time() + timeout
    monitor = _Monitor(study, n_trials, progress)
    try:
        _check_storage_reach(ray, url)
        count = _worker_count(ray, options, n_trials, runner._counts(study)["done"])
        settings = {
            "heartbeat_interval": runner.HEARTBEAT_INTERVAL,
            "grace_period": runner.GRACE_PERIOD,
            "env": {k: v for k, v in os.environ.items() if k.startswith("SLIMTUNE_")},
            "sys_path": [os.path.abspath(p or os.curdir) for p in sys.path if _user_path(p)],
            "cwd": os.getcwd(),
            "threads": max(1, int(options.resources_per_trial.get("cpu", 1.0))),
        }
        blob_ref = ray.put(blob)
        actors = _POOL.take(ray, options, count)
        pending = {a.run.remote(blob_ref, kwargs, deadline, settings): a for a in actors}
        logger.info("study %s: %d Ray workers (%s each)", study.study_name, count, _format_resources(options))
        lost, death = 0, ""
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=_POLL_S)
            for ref in ready:
                pending.pop(ref)
                try:
                    ray.get(ref)
                except ray.exceptions.RayActorError as e:
                    lost += 1
                    death = _last_line(e)
                    logger.warning("a Ray worker died %d times and was not restarted again: %s", options.max_retries + 1, death)
                except ray.exceptions.RayTaskError as e:
                    cause = e.cause if isinstance(getattr(e, "cause", None), BaseException) else e
                    if isinstance(cause, SlimtuneError):
                        raise SlimtuneError(f"a Ray worker stopped: {cause}") from cause
                    raise SlimtuneError(f"a Ray worker stopped: {type(cause).__name__}: {cause}") from e
            monitor.poll()
        monitor.poll()
        c = runner._counts(study)
        timed_out = deadline is not None and time.time() >= deadline
        finished = getattr(strategy, "finished", None)  # an iterative strategy may end before the budget
        ended = finished is not None and finished(study) is not None
        if n_trials is not None and c["done"] < n_trials and not timed_out and not ended:
            why = f"{lost} of {count} Ray workers died beyond their restarts (last: {death})" if lost else "the Ray workers stopped"
            raise SlimtuneError(
                f"study {study.study_name!r}: {why} with {c['done']} of {n_trials} trials finished "
                "(they are kept in the storage: run the same command again to resume)"
            )
        if not started and not lost:
            _POOL.give_back(ray, options, actors)  # for this process's next run on this Ray
    except BaseException:
        # stop the workers; their running trials go back to the queue for the next run
        for a in actors:
            _kill(ray, a)
        ids = set()
        for a in actors:
            try:
                ids.add(a._actor_id.hex())
            except Exception:
                pass
        try:
            requeue(study, lambda info: info.get("actor") in ids, "the run was interrupted")
        except Exception:  # the storage itself may be what failed
            pass
        raise
    finally:
        monitor.close()
        if started:
            ray.shutdown()


def check_storage(storage: Any) -> str:
    """The storage's URL, which every Ray worker opens; an error for storages they cannot share
    (``memory``, a storage object without a URL). Also checks that Ray is installed."""
    _import_ray()
    url = storage if isinstance(storage, str) else getattr(storage, "url", storage)  # an RDBStorage knows its URL
    if not isinstance(url, str) or url == "memory" or ":memory:" in url:
        raise SlimtuneError(
            "backend 'ray' needs a storage every Ray worker can open (sqlite:///file.db on one machine, "
            f"postgresql://... on a cluster), got {url if isinstance(url, str) else type(url).__name__!r}"
        )
    return url


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as e:
        raise SlimtuneError("backend 'ray' needs Ray: pip install 'slimtune[ray]' (or pip install ray)") from e
    return ray


def _connect(ray: Any, options: RayOptions) -> bool:
    """Connect to (or start) Ray; True when this call did, so the run disconnects after."""
    if ray.is_initialized():
        if options.address:
            logger.warning("Ray is already initialised in this process; ignoring ray.address=%s", options.address)
        return False
    address = options.address or os.environ.get("RAY_ADDRESS") or None
    try:
        if address:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True)
        else:
            ray.init(include_dashboard=False, logging_level=logging.WARNING)
    except Exception as e:
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        hint = " (is the cluster running? `ray start --head` prints its address; see the token note in the README)" if address else ""
        raise SlimtuneError(f"cannot connect to {where}: {type(e).__name__}: {_first_line(e)}{hint}") from e
    return True


def _worker_count(ray: Any, options: RayOptions, n_trials: int | None, done: int) -> int:
    total = ray.cluster_resources()
    need = options.actor_options()
    fits = []
    for key, amount in (("CPU", need["num_cpus"]), ("GPU", need["num_gpus"]), ("memory", need.get("memory", 0.0))):
        if amount:
            fits.append((key, amount, int(total.get(key, 0.0) // amount)))
    for key, amount in need.get("resources", {}).items():
        if amount:
            fits.append((key, amount, int(total.get(key, 0.0) // amount)))
    limit = min(f[2] for f in fits) if fits else 1
    if limit < 1:
        key, amount, _ = min(fits, key=lambda f: f[2])
        raise SlimtuneError(
            f"ray.resources_per_trial: a trial needs {amount:g} {key} but the Ray cluster has {total.get(key, 0.0):g} "
            f"(cluster resources: {', '.join(f'{k}={v:g}' for k, v in sorted(total.items()) if not k.startswith('node:'))})"
        )
    count = options.max_concurrent_trials or limit
    if options.max_concurrent_trials and options.max_concurrent_trials > limit:
        logger.warning(
            "ray.max_concurrent_trials=%d but the cluster holds %d trials at once; the others wait for resources",
            options.max_concurrent_trials,
            limit,
        )
    if n_trials is not None:
        count = min(count, max(1, n_trials - done))
    return max(1, count)


def _check_storage_reach(ray: Any, url: str) -> None:
    """Warn when a file storage is used by Ray nodes on other machines (they cannot share the file)."""
    if not (url.startswith("sqlite") or url.startswith("journal")):
        return
    ips = {n.get("NodeManagerAddress") for n in ray.nodes() if n.get("Alive")}
    here = ray.util.get_node_ip_address()
    if len(ips - {here}) > 0:
        logger.warning(
            "storage %s is a file on this machine but the Ray cluster has nodes on %s: workers there cannot share it; "
            "use a database server (postgresql://...) for a cluster of several machines",
            url,
            ", ".join(sorted(ips - {here})),
        )


def _absolute_url(url: str) -> str:
    """A relative ``sqlite:///`` or ``journal:`` path made absolute (Ray workers have other working directories)."""
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        path, sep, query = url[len("sqlite:///") :].partition("?")
        if path and path != ":memory:":
            return "sqlite:///" + os.path.abspath(path) + sep + query
    if url.startswith("journal:"):
        from slimtune.trials.runner import _journal_path

        return "journal:///" + os.path.abspath(_journal_path(url)).lstrip("/")
    return url


def _user_path(entry: str) -> bool:
    """A ``sys.path`` entry holding user code (not the interpreter's or site-packages)."""
    path = os.path.abspath(entry or os.curdir)
    if not os.path.isdir(path) or "site-packages" in path or "dist-packages" in path:
        return False
    prefixes = {os.path.abspath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    return not any(path == p or path.startswith(p + os.sep) for p in prefixes)


def _format_resources(options: RayOptions) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in options.resources_per_trial.items())


def _last_line(e: BaseException) -> str:
    """The last line of a Ray error: the original exception of a worker's traceback, where there is one."""
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    return lines[-1][:500] if lines else type(e).__name__


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class _Monitor:
    """The driver's view while workers run: one log line per finished trial, a progress bar,
    and the storage's upkeep (trials of dead workers failed and re-queued)."""

    def __init__(self, study: optuna.Study, n_trials: int | None, progress: bool) -> None:
        from slimtune.trials import runner

        self.study = study
        self.progress = progress
        self.seen = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
        self.adopted: set[int] = set()
        self.upkeep = time.monotonic()
        self.bar = None
        if progress and n_trials is not None:
            from tqdm.auto import tqdm

            done = runner._counts(study)["done"]
            self.bar = tqdm(total=n_trials, initial=min(done, n_trials), desc=study.study_name, unit="trial")

    def poll(self) -> None:
        import optuna

        from slimtune.trials import runner

        for t in self.study.get_trials(deepcopy=False):
            if t.state.is_finished() and t.number not in self.seen:
                self.seen.add(t.number)
                if self.progress:
                    where = t.user_attrs.get(ATTR_WORKER) or {}
                    node = f" on {where.get('node_ip', where.get('host', '?'))} pid {where.get('pid', '?')}" if where else ""
                    logger.info(runner._trial_line(t) + node)
        if self.bar is not None:
            self.bar.n = min(runner._counts(self.study)["done"], self.bar.total)
            self.bar.refresh()
        if time.monotonic() - self.upkeep >= runner.HEARTBEAT_INTERVAL:
            self.upkeep = time.monotonic()
            runner._adopt_orphans(self.study, self.adopted)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(self.study)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
