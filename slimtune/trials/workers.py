"""Several local workers on one study, one per device: ``slimtune run SPEC --workers N --devices 0,1``.

This process prepares the study (creates it, measures the original model, computes the sensitivity
tables, queues the strategy's seed trials) on the first device, then starts ``N`` processes
``slimtune worker SPEC --device D`` — worker ``i`` on device ``devices[i % len(devices)]`` — which
join the study through its storage, as workers started by hand do. It shows one line per finished
trial (with the device it ran on) and a progress bar until every worker has ended, and keeps the
storage's upkeep (a trial whose worker died is failed and queued again). Each worker process sees
only what the spec builds, so the task must come from a spec file.

Stopping this process (Ctrl-C) stops the workers; their finished trials stay in the study, and the
same command resumes it.

Example:
    .. code-block:: bash

        slimtune run examples/imagefolder.yaml --workers 2 --devices 0,1     # one worker per GPU
        slimtune run examples/digits.yaml --workers 2 --devices cpu,cpu      # two CPU workers
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from slimtune.errors import ConfigError, SlimtuneError
from slimtune.trials.driver import Monitor, counts
from slimtune.trials.study import prepare

if TYPE_CHECKING:
    import optuna

    from slimtune.trials.spec import Spec

logger = logging.getLogger("slimtune")

_POLL_S = 1.0


@dataclass(frozen=True)
class WorkerProcess:
    """One started worker: its device and process."""

    index: int
    device: str
    process: subprocess.Popen[bytes]


def assign(n_workers: int, device_list: Sequence[str] | None) -> list[str | None]:
    """The device of each of ``n_workers`` workers: the list round-robin (None: the spec's or task's).

    Example:
        >>> assign(4, ["cuda:0", "cuda:1"])
        ['cuda:0', 'cuda:1', 'cuda:0', 'cuda:1']
        >>> assign(2, None)
        [None, None]
    """
    if isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1:
        raise ConfigError(f"must be an integer >= 1, got {n_workers!r}", field="--workers")
    if not device_list:
        return [None] * n_workers
    if len(device_list) > n_workers:
        raise ConfigError(
            f"{len(device_list)} devices for {n_workers} worker{'s' if n_workers != 1 else ''}: "
            f"give --workers {len(device_list)} (one worker per device) or fewer devices",
            field="--devices",
        )
    return [device_list[i % len(device_list)] for i in range(n_workers)]


def run_workers(
    spec: Spec,
    n_workers: int,
    device_list: Sequence[str] | None = None,
    progress: bool = True,
    extra_args: Sequence[str] = (),
) -> optuna.Study:
    """Prepare ``spec``'s study here, run its trials in ``n_workers`` ``slimtune worker`` processes
    (worker ``i`` on ``device_list[i % len]``), wait for them; returns the study.

    Every device is checked on this machine before anything starts (a missing GPU is an error here,
    not in a worker). ``extra_args`` are passed to each worker's command line (the CLI's overrides:
    ``--storage``, ``--study``, ``--n-trials``, ``--timeout``).

    Raises:
        SlimtuneError: A worker failed (its exit status and device are named) before the budget was spent.
    """
    from slimtune import devices

    if spec.path is None:
        raise SlimtuneError("several workers need the spec as a file: each worker process loads it")
    if spec.backend != "local":
        raise ConfigError(
            f"--workers starts local worker processes; the spec's backend is {spec.backend!r} (use --backend local, "
            "or the Ray options for Ray workers)",
            field="--workers",
        )
    plan = assign(n_workers, device_list)
    for dev in dict.fromkeys(d for d in plan if d is not None):
        devices.resolve(dev, field="--devices")
    config = spec.search_config(progress=progress)
    task = spec.make_task()
    prepared = prepare(task, config.replace(device=plan[0] or config.device))
    study = prepared.study
    del prepared, task  # the workers build their own; free this process's copy (and its GPU memory)
    _free_gpu_memory()
    if config.n_trials is not None and counts(study)["done"] >= config.n_trials:
        logger.info("study %s: nothing to run: %d trials already finished", study.study_name, counts(study)["done"])
        return study
    workers = [_start(i, spec, dev, extra_args) for i, dev in enumerate(plan)]
    logger.info("study %s: %d workers (%s)", study.study_name, len(workers), ", ".join(f"{w.device}" for w in workers))
    monitor = Monitor(study, config.n_trials, progress, config.heartbeat)
    failed: list[str] = []
    try:
        running = list(workers)
        while running:
            time.sleep(_POLL_S)
            monitor.poll()
            for w in list(running):
                code = w.process.poll()
                if code is None:
                    continue
                running.remove(w)
                if code != 0:
                    failed.append(f"worker {w.index} on {w.device} exited with status {code}")
                    logger.warning("study %s: %s", study.study_name, failed[-1])
        monitor.poll()
    except BaseException:
        _stop(workers)
        raise
    finally:
        monitor.close()
    done = counts(study)["done"]
    if failed and (config.n_trials is None or done < config.n_trials):
        raise SlimtuneError(
            f"study {study.study_name!r}: {'; '.join(failed)}, with {done} trials finished (they are kept: run the "
            "same command again to resume; the worker's error is printed above)"
        )
    return study


def _start(index: int, spec: Spec, device: str | None, extra_args: Sequence[str]) -> WorkerProcess:
    cmd = [sys.executable, "-m", "slimtune", "worker", str(spec.path), "--quiet", *extra_args]
    if device is not None:
        cmd += ["--device", device]
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    process = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    return WorkerProcess(index, device or spec.device or "the task's device", process)


def _stop(workers: Sequence[WorkerProcess], grace_s: float = 10.0) -> None:
    for w in workers:
        if w.process.poll() is None:
            w.process.terminate()
    deadline = time.monotonic() + grace_s
    for w in workers:
        try:
            w.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            w.process.kill()


def _free_gpu_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


__all__ = ["WorkerProcess", "assign", "run_workers"]
