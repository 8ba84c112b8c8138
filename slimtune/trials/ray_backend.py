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

**Devices.** A worker given GPUs by ``resources_per_trial`` (``{cpu: 4, gpu: 1}``) sees only
those (Ray sets ``CUDA_VISIBLE_DEVICES``) and runs its trials on the first of them, unless the
task or the search names ``cpu``; each trial records the device (``device``) and the worker the
GPU ids Ray gave it (``worker.gpus``). The driver prepares the study (baseline, sensitivity) on
its own device, the CPU when it has no GPU; workers on other hardware measure the original's
latency and memory themselves, so relative measures compare like with like.

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
import os
import sys
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from slimtune import attributes as attrs
from slimtune import optuna_internals
from slimtune.errors import SlimtuneError
from slimtune.trials.config import RAY_FIELDS, RayOptions, SearchConfig
from slimtune.trials.driver import Monitor, counts, drive, worker_identity
from slimtune.trials.storage import open_study, parse_url, url_of
from slimtune.trials.study import prepare

if TYPE_CHECKING:
    import optuna

    from slimtune.trials.study import PreparedStudy
    from slimtune.trials.task import Task

__all__ = [
    "RAY_FIELDS",
    "RayOptions",
    "check_storage",
    "ray_driver_config",
    "release_workers",
    "requeue",
    "run_on_ray",
]

logger = logging.getLogger("slimtune")

#: Seconds an idle Ray worker is kept for this process's next run (``SLIMTUNE_RAY_IDLE``).
IDLE_TIMEOUT_S = float(os.environ.get("SLIMTUNE_RAY_IDLE", "10"))
_POLL_S = 1.0


# ---------------------------------------------------------------------- the worker (a Ray actor)
class _Worker:
    """One Ray actor: a ``slimtune worker`` process living on a Ray node.

    Created once per concurrent trial and reused by the later runs of the same driver process
    on the same Ray session; :meth:`run` joins a study and runs trials until the study's budget
    is spent. Ray restarts the actor after its process died and calls :meth:`run` again, which
    first re-queues the trial the dead process left running.
    """

    def run(
        self, task_blob: bytes, config: dict[str, Any], deadline: float | None, settings: Mapping[str, Any]
    ) -> dict[str, Any]:
        from ray import cloudpickle

        _apply(settings)
        me = worker_identity()
        try:
            task = cloudpickle.loads(task_blob)
        except Exception as e:
            raise SlimtuneError(
                f"the Ray worker on {me['node_ip']} cannot load the task: {type(e).__name__}: {e} "
                "(the task's modules must be importable on every Ray node: install them there or put them on "
                "PYTHONPATH)"
            ) from e
        # this actor runs one trial at a time and none now: a RUNNING trial of its own is one its
        # previous process was running when it died (Ray restarted the actor)
        cfg = SearchConfig.from_dict(config)
        study = open_study(cfg.storage, cfg.study)
        requeue(study, lambda info: info.get("actor") == me["actor"], "its Ray worker died")
        timeout = None if deadline is None else deadline - time.time()
        if timeout is not None and timeout <= 0:
            return me
        cfg = cfg.replace(timeout=timeout, join=True, backend="local", ray=None, progress=False)
        cfg = cfg.replace(device=_worker_device(task, cfg, me))
        prepared = prepare(task, cfg)
        drive(prepared.study, prepared.objective, cfg.n_trials, cfg.timeout, False, cfg.heartbeat, me)
        return me


def _worker_device(task: Task, config: SearchConfig, me: Mapping[str, Any]) -> str | None:
    """The device of a Ray worker's trials: the first GPU Ray assigned to it (``cuda:0``: the worker
    sees only its own GPUs), unless the task or the search asks for the CPU."""
    wanted = config.device or task.device
    if me.get("gpus") and wanted != "cpu":
        return "cuda:0"
    return config.device


def ray_driver_config(task: Task, config: SearchConfig) -> SearchConfig:
    """The configuration the driver prepares a Ray study with, checked before any work: a GPU device
    needs ``gpu`` in ``resources_per_trial``; a driver without a GPU prepares on the CPU while
    its GPU workers run the trials."""
    from slimtune import devices

    options = config.ray if isinstance(config.ray, RayOptions) else RayOptions()
    gpus = float(options.resources_per_trial.get("gpu", 0.0))
    wanted = config.device or task.device
    field = "device" if config.device else "Task.device"
    if wanted not in ("auto", "cpu") and not gpus:
        raise devices.DeviceError(
            f"{wanted!r} asks for a GPU, but ray.resources_per_trial gives a trial none, so its Ray worker would see "
            "no GPU: add gpu: 1 (e.g. resources_per_trial: {cpu: 4, gpu: 1})",
            field=field,
        )
    try:
        devices.resolve(wanted, field=field)
    except devices.DeviceError as e:
        if not gpus:
            raise
        logger.info("the driver has no GPU (%s): it prepares the study on the CPU; trials run on the Ray GPUs", e)
        return config.replace(device="cpu")
    return config


def _apply(settings: Mapping[str, Any]) -> None:
    """The driver's settings in a worker: SLIMTUNE_* variables, import path, working directory,
    threads (the heartbeat settings come with the search configuration)."""
    import optuna
    import torch

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
        return f"{ctx.get_job_id()}@{ctx.get_node_id()}", repr(
            (sorted(options.actor_options().items()), options.max_retries)
        )


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
    from optuna.trial import TrialState

    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if owned(attrs.worker(t)) and optuna_internals.fail_and_retry(
            study, t, attrs.Trial.FAIL_REASON, f"WorkerDied: {why}"
        ):
            failed.append(t.number)
    if failed:
        logger.warning("study %s: trial(s) %s failed because %s; queued again", study.study_name, failed, why)
    return failed


# ---------------------------------------------------------------------- the driver
def run_on_ray(task: Task, prepared: PreparedStudy) -> None:
    """Run a prepared study's trials on Ray workers until its budget or timeout is spent.

    Each worker receives the search configuration (with the storage's absolute URL, which every
    worker opens) and joins the study.
    """
    ray = _import_ray()
    from ray import cloudpickle

    study, config = prepared.study, prepared.config
    options = config.ray if isinstance(config.ray, RayOptions) else RayOptions()
    n_trials, timeout, progress = config.n_trials, config.timeout, config.progress
    url = check_storage(config.storage)
    payload = config.replace(storage=parse_url(url).absolute()).to_dict()
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
    monitor = Monitor(study, n_trials, progress, config.heartbeat)
    try:
        _check_storage_reach(ray, url)
        count = _worker_count(ray, options, n_trials, counts(study)["done"])
        settings = {
            "env": {k: v for k, v in os.environ.items() if k.startswith("SLIMTUNE_")},
            "sys_path": [os.path.abspath(p or os.curdir) for p in sys.path if _user_path(p)],
            "cwd": os.getcwd(),
            "threads": max(1, int(options.resources_per_trial.get("cpu", 1.0))),
        }
        blob_ref = ray.put(blob)
        actors = _POOL.take(ray, options, count)
        pending = {a.run.remote(blob_ref, payload, deadline, settings): a for a in actors}
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
                    logger.warning(
                        "a Ray worker died %d times and was not restarted again: %s", options.max_retries + 1, death
                    )
                except ray.exceptions.RayTaskError as e:
                    cause = e.cause if isinstance(getattr(e, "cause", None), BaseException) else e
                    if isinstance(cause, SlimtuneError):
                        raise SlimtuneError(f"a Ray worker stopped: {cause}") from cause
                    raise SlimtuneError(f"a Ray worker stopped: {type(cause).__name__}: {cause}") from e
            monitor.poll()
        monitor.poll()
        c = counts(study)
        timed_out = deadline is not None and time.time() >= deadline
        ended = prepared.strategy.finished(study) is not None  # an iterative strategy may end before the budget
        if n_trials is not None and c["done"] < n_trials and not timed_out and not ended:
            why = (
                f"{lost} of {count} Ray workers died beyond their restarts (last: {death})"
                if lost
                else "the Ray workers stopped"
            )
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
    url = url_of(storage)  # (an RDBStorage knows its URL)
    if not isinstance(url, str) or not parse_url(url).shareable:
        raise SlimtuneError(
            "backend 'ray' needs a storage every Ray worker can open (sqlite:///file.db on one machine, "
            f"postgresql://... on a cluster), got {url if isinstance(url, str) else type(storage).__name__!r}",
            field="storage",
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
        hint = (
            " (is the cluster running? `ray start --head` prints its address; see the token note in the README)"
            if address
            else ""
        )
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
        listed = ", ".join(f"{k}={v:g}" for k, v in sorted(total.items()) if not k.startswith("node:"))
        raise SlimtuneError(
            f"ray.resources_per_trial: a trial needs {amount:g} {key} but the Ray cluster has {total.get(key, 0.0):g} "
            f"(cluster resources: {listed})"
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
    if not parse_url(url).is_file:
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
