"""Scaling: trials per minute with 1 and 2 workers, local processes, Ray and Ray Tune, on the digits task.

One run measures six configurations of the same study (digits CNN, ``finetune_epochs`` of
fine-tuning per trial, strategy ``random`` by default, SQLite storage, every worker one thread):

- **local ×1 / ×2**: one or two ``slimtune worker``-like processes (``search(join=True)``) started
  together on a study initialised beforehand (baseline, seeds);
- **ray ×1 / ×2**: ``search(backend="ray", ray={"max_concurrent_trials": k})`` from this process on
  a local Ray (``ray.init(num_cpus=2)``, started once); the Ray workers start fresh for each
  configuration (their start-up is part of the wall time);
- **tune ×1 / ×2**: ``slimtune.tune.tuner(..., max_concurrent_trials=k).fit()`` on the same local Ray: a Tune
  searcher asks the study's sampler, each Tune trial runs one slimtune trial (actors reused). A trial's
  span starts when the searcher asks for it, so Tune's scheduling of the trial (and, for an actor's first
  trial, the actor's start) is part of the trial.

Throughput is trials per minute in the workers' steady state: each worker's trials over its own
span (its first trial's start to its last trial's end), summed over the workers; start-up is
excluded and reported apart. The whole-span rate (all trials over the first start to the last
end) is reported too: it also counts the seconds where only one worker runs trials (Ray starts its
workers one after the other; a short run ends unevenly). The speedup of 2 workers over 1 is the
ratio of steady throughputs (target ≥ 1.7× on 2 cores). Every configuration runs ``--repeats``
times in ABBA order (a drift in the load of a shared machine falls on all alike) and the means are
reported. The Ray path's cost against the local path is reported
per trial in the steady state (difference of seconds per trial at 1 worker; the Tune path against both
the local and the Ray paths alike) and once per run
(worker start-up: from launching the workers to the first trial's start, against a local worker
process's: interpreter, imports, task), then amortised over the run's trials (target: Ray adds ≤ 0.5 s per trial).

Usage: ``python benchmarks/scaling.py [--trials 24] [--repeats 2] [--finetune-epochs 2] [--strategy random]``;
writes ``benchmarks/results/scaling.md`` and ``.json``. The header records the machine's load
(``uptime``) before and after: other jobs on a shared machine lower the 2-worker speedup.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
STUDY = "scaling"

WORKER = r"""
import os, sys, time
import torch
torch.set_num_threads(1)
import slimtune
from slimtune.examples.digits import make_task

url, study, n_trials, epochs, strategy, barrier, count = sys.argv[1:8]
task = make_task(finetune_epochs=int(epochs))
open(os.path.join(barrier, str(os.getpid())), "w").close()
while len(os.listdir(barrier)) < int(count):  # the workers start their trials together
    time.sleep(0.01)
slimtune.search(task, strategy=strategy, n_trials=int(n_trials), storage=url, study_name=study, join=True,
                progress=False, save_models="all")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=24, help="trials per configuration (default 24)")
    parser.add_argument("--finetune-epochs", type=int, default=2, help="fine-tuning of each trial (default 2)")
    parser.add_argument("--strategy", default="random")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each configuration, in ABBA order (default 2)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    load_before = _uptime()
    configs = [(backend, workers) for backend in ("local", "ray", "tune") for workers in (1, 2)]
    order = [c for k in range(args.repeats) for c in (configs if k % 2 == 0 else configs[::-1])]  # ABBA: drifts in
    # the machine's load (other jobs) fall on every configuration alike
    with tempfile.TemporaryDirectory(prefix="slimtune-scaling-") as tmp:
        done: dict[str, list[dict[str, Any]]] = {}
        for k, (backend, workers) in enumerate(order):
            name = f"{backend}-{workers}"
            url = f"sqlite:///{tmp}/{name}-{k}.db"
            print(f"{name}: {args.trials} trials ...", flush=True)
            run = {"local": _local, "ray": _ray, "tune": _tune}[backend](url, workers, args, Path(tmp))
            done.setdefault(name, []).append(run)
            print(f"  {run['trials_per_min']:.1f} trials/min ({run['steady_trials_per_min']:.1f} steady), wall {run['wall_s']:.1f} s", flush=True)
        _stop_ray()
        runs = [{"config": f"{b}-{w}", "backend": b, "workers": w, **_mean(done[f"{b}-{w}"])} for b, w in configs]
    load_after = _uptime()
    result = _summarise(runs, args, load_before, load_after)
    text = _markdown(result)
    print(text)
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "scaling.json").write_text(json.dumps(result, indent=2))
        (RESULTS / "scaling.md").write_text(text)


# ---------------------------------------------------------------------- the four configurations
def _task(epochs: int) -> Any:
    from slimtune.examples.digits import make_task

    return make_task(finetune_epochs=epochs)


def _init_study(url: str, args: argparse.Namespace) -> float:
    """Create and initialise the study (sensitivity, baseline, seeds) without running a trial."""
    import slimtune

    t = time.perf_counter()
    slimtune.search(_task(args.finetune_epochs), strategy=args.strategy, n_trials=args.trials, storage=url,
                    study_name=STUDY, timeout=1e-6, progress=False)  # fmt: skip
    return time.perf_counter() - t


def _local(url: str, workers: int, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    setup = _init_study(url, args)
    barrier = Path(tempfile.mkdtemp(dir=tmp))
    script = tmp / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(script), url, STUDY, str(args.trials), str(args.finetune_epochs), args.strategy, str(barrier), str(workers)]
    t = time.perf_counter()
    t_wall = time.time()
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(workers)]
    outs = [p.communicate()[0] for p in procs]
    wall = time.perf_counter() - t
    for p, out in zip(procs, outs):
        if p.returncode != 0:
            raise SystemExit(f"a local worker failed:\n{out[-3000:]}")
    out = _throughput(url)
    return {"setup_s": setup, "wall_s": wall, "worker_startup_s": out.pop("first_start") - t_wall, **out}


def _ray(url: str, workers: int, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    import ray

    import slimtune
    from slimtune.trials.ray_backend import release_workers

    init_s = 0.0
    if not ray.is_initialized():
        t = time.perf_counter()
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING", _temp_dir=str(tmp / "ray"))
        init_s = time.perf_counter() - t
    release_workers()  # fresh workers: their start-up is measured
    setup = _init_study(url, args)
    task = _task(args.finetune_epochs)
    t = time.perf_counter()
    t_wall = time.time()
    slimtune.search(task, strategy=args.strategy, n_trials=args.trials, storage=url, study_name=STUDY, join=True,
                    progress=False, backend="ray", ray={"max_concurrent_trials": workers})  # fmt: skip
    wall = time.perf_counter() - t
    out = _throughput(url)
    return {"setup_s": setup, "ray_init_s": init_s, "wall_s": wall, "worker_startup_s": out.pop("first_start") - t_wall, **out}


def _tune(url: str, workers: int, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    import ray

    from slimtune.tune import tuner

    init_s = 0.0
    if not ray.is_initialized():
        t = time.perf_counter()
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING", _temp_dir=str(tmp / "ray"))
        init_s = time.perf_counter() - t
    setup = _init_study(url, args)
    task = _task(args.finetune_epochs)
    t = time.perf_counter()
    t_wall = time.time()
    built = tuner(task, strategy=args.strategy, n_trials=args.trials, storage=url, study_name=STUDY, progress=False,
                  max_concurrent_trials=workers, storage_path=str(tmp / f"tune-{time.time_ns()}"))  # fmt: skip
    results = built.fit()
    wall = time.perf_counter() - t
    if results.errors:
        raise SystemExit(f"a Tune trial failed: {results.errors[0]}")
    out = _throughput(url)
    return {"setup_s": setup, "ray_init_s": init_s, "wall_s": wall, "worker_startup_s": out.pop("first_start") - t_wall, **out}


def _mean(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The runs of one configuration: each number averaged, the runs themselves kept."""
    out: dict[str, Any] = {k: statistics.fmean(r[k] for r in runs) for k, v in runs[0].items() if isinstance(v, (int, float))}
    out["repeats"] = runs
    return out


def _stop_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def _throughput(url: str) -> dict[str, Any]:
    import optuna

    trials = [t for t in optuna.load_study(study_name=STUDY, storage=url).get_trials() if t.state.name == "COMPLETE"]
    starts = [t.datetime_start.timestamp() for t in trials]
    ends = [t.datetime_complete.timestamp() for t in trials]
    span = max(ends) - min(starts)
    durations = [e - s for s, e in zip(starts, ends)]
    by_pid: dict[int, list[tuple[float, float]]] = {}
    for t, s, e in zip(trials, starts, ends):
        by_pid.setdefault(t.user_attrs["worker"]["pid"], []).append((s, e))
    gaps = []  # a worker's time between one trial's end and its next trial's start (sampler, storage)
    for spans in by_pid.values():
        spans.sort()
        gaps += [b[0] - a[1] for a, b in zip(spans, spans[1:])]
    inside = [t.user_attrs["times"] for t in trials]
    firsts = sorted(min(a for a, _ in spans) for spans in by_pid.values())
    lasts = sorted(max(b for _, b in spans) for spans in by_pid.values())
    # each worker's own rate between its first trial's start and its last trial's end, summed: the
    # steady state, without the minutes' tails where one worker starts (or finishes) before the other
    per_worker = sum(60 * len(spans) / (max(b for _, b in spans) - min(a for a, _ in spans)) for spans in by_pid.values())
    # the same without each worker's first trial (from its end on): a worker's start-up (a Tune actor's start
    # and the study's preparation in it fall inside its first trial) left out
    after_first = sum(60 * (len(spans) - 1) / (spans[-1][1] - spans[0][1]) for spans in by_pid.values() if len(spans) > 1)
    first_extra = statistics.fmean(spans[0][1] - spans[0][0] for spans in by_pid.values()) - statistics.median(durations)
    return {
        "trials": len(trials),
        "span_s": span,
        "trials_per_min": 60 * len(trials) / span,
        "median_trial_s": statistics.median(durations),
        "median_gap_s": statistics.median(gaps) if gaps else 0.0,
        "parallelism": sum(durations) / span,  # trials running at once on average: ~workers when none waits
        "median_finetune_evaluate_s": statistics.median(x.get("finetune", 0.0) + x.get("evaluate", 0.0) for x in inside),
        "workers_seen": len(by_pid),
        "steady_trials_per_min": per_worker,
        "after_first_trials_per_min": after_first,
        "first_trial_extra_s": first_extra,
        "start_stagger_s": firsts[-1] - firsts[0],
        "end_stagger_s": lasts[-1] - lasts[0],
        "first_start": min(starts),
    }


# ---------------------------------------------------------------------- report
def _summarise(runs: list[dict[str, Any]], args: argparse.Namespace, before: str, after: str) -> dict[str, Any]:
    import optuna
    import ray
    import torch

    by = {r["config"]: r for r in runs}
    for r in runs:
        r.pop("first_start", None)
    local_speedup = by["local-2"]["steady_trials_per_min"] / by["local-1"]["steady_trials_per_min"]
    ray_speedup = by["ray-2"]["steady_trials_per_min"] / by["ray-1"]["steady_trials_per_min"]
    local_span = by["local-2"]["trials_per_min"] / by["local-1"]["trials_per_min"]
    ray_span = by["ray-2"]["trials_per_min"] / by["ray-1"]["trials_per_min"]
    steady = 60 / by["ray-1"]["trials_per_min"] - 60 / by["local-1"]["trials_per_min"]
    startup_extra = by["ray-1"]["worker_startup_s"] - by["local-1"]["worker_startup_s"]
    amortised = steady + max(0.0, by["ray-1"]["worker_startup_s"]) / args.trials
    tune_speedup = by["tune-2"]["steady_trials_per_min"] / by["tune-1"]["steady_trials_per_min"]
    tune_vs_local = 60 / by["tune-1"]["after_first_trials_per_min"] - 60 / by["local-1"]["after_first_trials_per_min"]
    tune_vs_ray = 60 / by["tune-1"]["after_first_trials_per_min"] - 60 / by["ray-1"]["after_first_trials_per_min"]
    tune_in_trial = by["tune-1"]["median_trial_s"] - by["local-1"]["median_trial_s"]
    return {
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs",
        "load_before": before,
        "load_after": after,
        "versions": {"torch": torch.__version__, "optuna": optuna.__version__, "ray": ray.__version__, "python": platform.python_version()},
        "settings": {"trials": args.trials, "repeats": args.repeats, "finetune_epochs": args.finetune_epochs, "strategy": args.strategy, "storage": "sqlite", "threads_per_worker": 1},
        "runs": runs,
        "speedup_local": local_speedup,
        "speedup_ray": ray_speedup,
        "speedup_local_span": local_span,
        "speedup_ray_span": ray_span,
        "ray_steady_overhead_s_per_trial": steady,
        "ray_worker_startup_s": by["ray-1"]["worker_startup_s"],
        "ray_startup_vs_local_process_s": startup_extra,
        "ray_overhead_s_per_trial_amortised": amortised,
        "ray_init_s": by["ray-1"].get("ray_init_s", 0.0),
        "speedup_tune": tune_speedup,
        "speedup_tune_span": by["tune-2"]["trials_per_min"] / by["tune-1"]["trials_per_min"],
        "tune_overhead_s_per_trial_vs_local": tune_vs_local,
        "tune_overhead_s_per_trial_vs_ray": tune_vs_ray,
        "tune_median_trial_extra_s": tune_in_trial,
        "tune_worker_startup_s": by["tune-1"]["worker_startup_s"],
        "tune_first_trial_extra_s": by["tune-1"]["first_trial_extra_s"],
        "ray_first_trial_extra_s": by["ray-1"]["first_trial_extra_s"],
        "tune_wall_s_vs_ray_1": by["tune-1"]["wall_s"] - by["ray-1"]["wall_s"],
        "targets": {"speedup": 1.7, "ray_overhead_s_per_trial": 0.5},
    }


def _markdown(r: dict[str, Any]) -> str:
    s = r["settings"]
    lines = [
        "# Scaling: trials per minute with 1 and 2 workers, local processes, Ray and Ray Tune (digits CNN)",
        "",
        f"{r['machine']}; torch {r['versions']['torch']}, optuna {r['versions']['optuna']}, ray {r['versions']['ray']}; "
        f"{s['trials']} trials per configuration, {s['finetune_epochs']} fine-tune epochs per trial, strategy {s['strategy']}, "
        f"SQLite storage, 1 thread per worker.",
        f"Load (`uptime`) before: `{r['load_before']}`; after: `{r['load_after']}` (other jobs on the machine lower the speedups).",
        "",
        "| configuration | trials/min, steady | trials/min, whole span | trials at once (mean) | median trial (s) "
        "| median gap between a worker's trials (s) | workers' first trials apart (s) | worker start-up (s) | wall (s) "
        "| trials/min after each worker's first trial | first trial's extra (s) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for run in r["runs"]:
        lines.append(
            f"| {run['backend']} ×{run['workers']} | {run['steady_trials_per_min']:.1f} | {run['trials_per_min']:.1f} | "
            f"{run['parallelism']:.2f} | {run['median_trial_s']:.2f} | {run['median_gap_s']:.3f} | {run['start_stagger_s']:.2f} | "
            f"{run['worker_startup_s']:.1f} | {run['wall_s']:.1f} | {run['after_first_trials_per_min']:.1f} | "
            f"{run['first_trial_extra_s']:.2f} |"
        )
    ok = lambda v, target: "pass" if v >= target else "FAIL"  # noqa: E731
    lines += [
        "",
        f"- Speedup with 2 workers, steady state: local **{r['speedup_local']:.2f}×**, Ray **{r['speedup_ray']:.2f}×** "
        f"(target ≥ 1.7×: local {ok(r['speedup_local'], 1.7)}, Ray {ok(r['speedup_ray'], 1.7)}). Over the whole span, "
        f"tails included: local {r['speedup_local_span']:.2f}×, Ray {r['speedup_ray_span']:.2f}×.",
        "- *Steady*: each worker's trials over its own span (its first trial's start to its last trial's end), summed over "
        "the workers. *Whole span*: all trials over the first start to the last end, which also counts the seconds where "
        "one worker already (or still) runs trials and the other does not: Ray starts its workers one after the other "
        "(*first trials apart*), and a short run ends unevenly; both weigh less the longer a study runs. "
        f"Each configuration ran {s['repeats']}× in ABBA order; the table gives the means.",
        f"- Ray path against the local path, 1 worker: {r['ray_steady_overhead_s_per_trial']:+.3f} s per trial in the steady "
        f"state; worker start-up {r['ray_worker_startup_s']:.1f} s once per run ({r['ray_startup_vs_local_process_s']:+.1f} s "
        f"against a local worker process's own start-up), i.e. {r['ray_overhead_s_per_trial_amortised']:.2f} s per trial "
        f"over {s['trials']} trials (target ≤ 0.5 s: "
        f"{'pass' if r['ray_overhead_s_per_trial_amortised'] <= 0.5 else 'FAIL'}). `ray.init` itself: {r['ray_init_s']:.1f} s, once per driver.",
        f"- Ray Tune path (`slimtune.tune.tuner`, Tune actors reused), 1 worker: {r['tune_overhead_s_per_trial_vs_local']:+.3f} s "
        f"per trial against the local path and {r['tune_overhead_s_per_trial_vs_ray']:+.3f} s against the Ray path (seconds per "
        "trial after the worker's first trial); the first trial of a Tune actor takes "
        f"{r['tune_first_trial_extra_s']:.1f} s more than the median trial (actor start, imports, the study prepared in it; a Ray "
        f"worker's: {r['ray_first_trial_extra_s']:.1f} s, its actor started before); its median trial is {r['tune_median_trial_extra_s']:+.3f} s longer "
        "than a local one (a Tune trial's span starts when the searcher asks for it: Tune's scheduling round trip, the "
        "reports' round trips, the telling in the worker); whole run "
        f"{r['tune_wall_s_vs_ray_1']:+.1f} s against the Ray backend's (Tune's controller start, trial actor start). With 2 "
        f"workers: {r['speedup_tune']:.2f}× steady ({r['speedup_tune_span']:.2f}× over the whole span).",
        "- *Trials at once* is the sum of trial durations over the span: near the number of workers when no worker waits "
        "(for the storage, the sampler or the other worker); with fewer free cores than workers the trials themselves slow "
        "down (median trial) and the speedup falls below it.",
        "- Workers are reused: a Ray worker is one long-lived actor per concurrent trial (start-up paid once); "
        "a plain Ray Tune trial pays about 3–4 s of actor start and imports per trial on this machine.",
        "",
    ]
    return "\n".join(lines)


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"


if __name__ == "__main__":
    main()
