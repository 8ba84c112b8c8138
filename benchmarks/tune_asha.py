"""Compute saved by ASHA under Ray Tune, at an equal front, on a weighted digits study.

Every run: the digits CNN, 4 fine-tune epochs per trial (the built-in loop reports the accuracy after each
epoch: 4 Tune iterations), objectives accuracy and FLOPs weighted ``{accuracy: 1, flops: 0.5}`` (one scalar),
strategy ``random`` with one seed per repeat, SQLite storage, ``slimtune.tune.tuner`` with 2 trials at once
on a local Ray (2 CPUs), one thread per trial.

- **fifo ×N**: every trial runs its 4 epochs;
- **asha ×N**: Tune's ASHA (``grace_period`` 1, ``reduction_factor`` 2, ``max_t`` 4) stops trials whose
  ``finetune_objective`` (the weighted value with the accuracy after 1, 2 or 4 epochs and the plan's predicted
  FLOPs) is behind the others' at that rung (PRUNED in the study);
- **asha-accuracy ×N**: the same on ``finetune_metric`` (the accuracy alone);
- **asha ×M**: ASHA (on ``finetune_objective``) with more trials (``--more``, default 2N), to see what the saved
  compute buys.

With one seed the random sampler proposes the same trials in the same order in every run, so ASHA's complete
trials are FIFO's minus the stopped ones: its front can only lose points. Reported per run: fine-tune epochs
run (the compute: intermediate reports in the study), trial time summed and wall time, trials stopped, and the
front of the complete trials: the 2-D hypervolume of (accuracy, FLOPs) against the reference (accuracy 0.9,
FLOPs 1.0), the best weighted value and the best accuracy at ≤ 50 % and ≤ 25 % FLOPs.

Usage: ``python benchmarks/tune_asha.py [--trials 24] [--more 48] [--repeats 2] [--no-write]``; writes
``benchmarks/results/tune_asha.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
WEIGHTS = {"accuracy": 1.0, "flops": 0.5}
EPOCHS = 4
REF = (0.9, 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=24, help="trials of the FIFO run and of the first ASHA run")
    parser.add_argument("--more", type=int, default=None, help="trials of the second ASHA run (default 2× --trials)")
    parser.add_argument("--repeats", type=int, default=2, help="seeds (default 2)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    more = args.more or 2 * args.trials

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import ray
    import torch

    torch.set_num_threads(1)
    before = _uptime()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="slimtune-asha-") as tmp:
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING", _temp_dir=f"{tmp}/ray")
        for seed in range(args.repeats):
            for scheduler, n in (("fifo", args.trials), ("asha", args.trials), ("asha-accuracy", args.trials), ("asha", more)):
                print(f"seed {seed}: {scheduler} ×{n} ...", flush=True)
                run = _run(Path(tmp), scheduler, n, seed)
                runs.append(run)
                print(f"  {run['epochs']} epochs, wall {run['wall_s']:.1f} s, hypervolume {run['hypervolume']:.4f}", flush=True)
        ray.shutdown()
    result = _summarise(runs, args.trials, more, before, _uptime())
    text = _markdown(result)
    print(text)
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "tune_asha.json").write_text(json.dumps(result, indent=2))
        (RESULTS / "tune_asha.md").write_text(text)


def _run(tmp: Path, scheduler: str, n_trials: int, seed: int) -> dict[str, Any]:
    import optuna

    from slimtune.examples.digits import make_task
    from slimtune.tune import tuner

    name = f"{scheduler}-{n_trials}-{seed}"
    url = f"sqlite:///{tmp / name}.db"
    sched: Any = "fifo"
    if scheduler.startswith("asha"):
        metric = "finetune_metric" if scheduler == "asha-accuracy" else "finetune_objective"
        sched = {"name": "asha", "grace_period": 1, "reduction_factor": 2, "max_t": EPOCHS, "metric": metric}
    built = tuner(make_task(finetune_epochs=EPOCHS), strategy="random", weights=WEIGHTS, n_trials=n_trials, seed=seed,
                  storage=url, study_name=name, progress=False, save_models="none", scheduler=sched,
                  max_concurrent_trials=2, storage_path=str(tmp / "tune"))  # fmt: skip
    t = time.perf_counter()
    results = built.fit()
    wall = time.perf_counter() - t
    if results.errors:
        raise SystemExit(f"a Tune trial failed: {results.errors[0]}")
    study = optuna.load_study(study_name=name, storage=url)
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    return {
        "scheduler": scheduler,
        "n_trials": n_trials,
        "seed": seed,
        "epochs": sum(len(t.intermediate_values) for t in trials),
        "pruned": sum(t.state.name == "PRUNED" for t in trials),
        "complete": len(complete),
        "trial_time_s": sum((t.datetime_complete - t.datetime_start).total_seconds() for t in trials),
        "wall_s": wall,
        **_front(complete),
    }


def _front(complete: list[Any]) -> dict[str, Any]:
    from slimtune.dashboard.progress import hypervolume

    points = [(t.user_attrs["measures"]["accuracy"], t.user_attrs["measures"]["flops"]) for t in complete]
    best_at = {}
    for bound in (0.5, 0.25):
        inside = [a for a, f in points if f <= bound]
        best_at[f"best_accuracy_flops_{int(bound * 100)}"] = max(inside) if inside else None
    return {
        "hypervolume": hypervolume(points, ["maximize", "minimize"], REF),
        "best_value": min(t.value for t in complete) if complete else None,
        **best_at,
    }


def _summarise(runs: list[dict[str, Any]], n: int, more: int, before: str, after: str) -> dict[str, Any]:
    import optuna
    import ray
    import torch

    groups: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault(f"{r['scheduler']}-{r['n_trials']}", []).append(r)
    means = {
        key: {k: statistics.fmean(r[k] for r in rs if r[k] is not None) for k in rs[0] if isinstance(rs[0][k], (int, float)) and k != "seed"}
        for key, rs in groups.items()
    }
    fifo, asha, acc = means[f"fifo-{n}"], means[f"asha-{n}"], means[f"asha-accuracy-{n}"]
    return {
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs",
        "load_before": before,
        "load_after": after,
        "versions": {"torch": torch.__version__, "optuna": optuna.__version__, "ray": ray.__version__},
        "settings": {"trials": n, "more": more, "epochs": EPOCHS, "weights": WEIGHTS, "reference": REF, "concurrent": 2},
        "runs": runs,
        "means": means,
        "epochs_saved": 1 - asha["epochs"] / fifo["epochs"],
        "trial_time_saved": 1 - asha["trial_time_s"] / fifo["trial_time_s"],
        "wall_saved": 1 - asha["wall_s"] / fifo["wall_s"],
        "hypervolume_ratio": asha["hypervolume"] / fifo["hypervolume"],
        "best_value": {"fifo": fifo["best_value"], "asha": asha["best_value"], "asha-accuracy": acc["best_value"]},
        "accuracy_epochs_saved": 1 - acc["epochs"] / fifo["epochs"],
        "accuracy_hypervolume_ratio": acc["hypervolume"] / fifo["hypervolume"],
        "more_hypervolume_ratio": means[f"asha-{more}"]["hypervolume"] / fifo["hypervolume"],
        "more_epochs_ratio": means[f"asha-{more}"]["epochs"] / fifo["epochs"],
    }


def _markdown(r: dict[str, Any]) -> str:
    s = r["settings"]
    lines = [
        "# Compute saved by ASHA under Ray Tune (weighted digits study)",
        "",
        f"{r['machine']}; torch {r['versions']['torch']}, optuna {r['versions']['optuna']}, ray {r['versions']['ray']}; "
        f"digits CNN, {s['epochs']} fine-tune epochs per trial, weights {s['weights']}, strategy random, "
        f"{s['concurrent']} trials at once (`slimtune.tune.tuner`), ASHA grace 1, reduction factor 2, max_t {s['epochs']}.",
        f"Load (`uptime`) before: `{r['load_before']}`; after: `{r['load_after']}`.",
        "",
        "| run | seed | fine-tune epochs | trials stopped | complete | trial time (s) | wall (s) | hypervolume | best weighted value "
        "| best accuracy ≤ 50 % FLOPs | ≤ 25 % FLOPs |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    fmt = lambda v: "–" if v is None else f"{v:.4f}"  # noqa: E731
    for run in r["runs"]:
        lines.append(
            f"| {run['scheduler']} ×{run['n_trials']} | {run['seed']} | {run['epochs']} | {run['pruned']} | {run['complete']} | "
            f"{run['trial_time_s']:.1f} | {run['wall_s']:.1f} | {run['hypervolume']:.4f} | {fmt(run['best_value'])} | "
            f"{fmt(run['best_accuracy_flops_50'])} | {fmt(run['best_accuracy_flops_25'])} |"
        )
    lines += [
        "",
        f"- Same {s['trials']} proposals, ASHA against FIFO (means over seeds): **{100 * r['epochs_saved']:.0f} % fewer fine-tune "
        f"epochs**, {100 * r['trial_time_saved']:.0f} % less trial time, {100 * r['wall_saved']:.0f} % less wall time, for "
        f"{100 * r['hypervolume_ratio']:.1f} % of FIFO's hypervolume.",
        f"- ASHA on the accuracy alone (`finetune_metric`): {100 * r['accuracy_epochs_saved']:.0f} % fewer epochs for "
        f"{100 * r['accuracy_hypervolume_ratio']:.1f} % of FIFO's hypervolume. Best weighted value (mean): FIFO "
        f"{r['best_value']['fifo']:.4f}, ASHA {r['best_value']['asha']:.4f}, ASHA on accuracy "
        f"{r['best_value']['asha-accuracy']:.4f}.",
        f"- ASHA with {s['more']} trials: {100 * r['more_epochs_ratio']:.0f} % of FIFO's epochs for "
        f"{100 * r['more_hypervolume_ratio']:.1f} % of its hypervolume.",
        f"- Hypervolume of the complete trials' (accuracy, FLOPs) points against (accuracy {s['reference'][0]}, FLOPs "
        f"{s['reference'][1]}); stopped trials have no measures. One validation set of 360 digits: one sample is 0.28 points.",
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
