"""Per-trial overhead of slimtune: everything but the user's fine-tune and evaluate.

Runs a study on the digits task (fine-tune enabled) on a temporary SQLite storage and splits each
trial's wall time (from the sampler's ask to the storage's tell, measured around the whole
``study.optimize`` loop) into the user's part (fine-tune + evaluate, timed inside the objective)
and slimtune's part (sampling, compress + speedup, measures, saving the model, storage). The
user's part is also timed *directly* — the same fine-tune and evaluate called on the same
compressed models outside slimtune — to check the split. Target: overhead ≤ 5 % of a trial.

Usage: ``python benchmarks/overhead.py [--trials 12] [--finetune-epochs 2 10]`` (one study per
fine-tune budget: slimtune's cost per trial is fixed, so its share falls as trials get longer);
results are printed and written to ``benchmarks/results/overhead.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

import slimtune
from slimtune.compressors import CompressionPlan, compress
from slimtune.examples.digits import make_task

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--finetune-epochs", type=int, nargs="+", default=[2, 10])
    parser.add_argument("--strategy", default="nsga2")
    args = parser.parse_args()
    results, texts = [], []
    for epochs in args.finetune_epochs:
        result, text = run(args.trials, epochs, args.strategy)
        results.append(result)
        texts.append(text)
        print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "overhead.json").write_text(json.dumps(results, indent=2))
    (RESULTS / "overhead.md").write_text("\n".join(texts))


def run(n_trials: int, epochs: int, strategy: str) -> tuple[dict, str]:
    """One study of ``n_trials`` trials with ``epochs`` of fine-tuning each; (numbers, markdown)."""
    torch.manual_seed(0)
    task = make_task(finetune_epochs=epochs)
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/overhead.db"
        # set-up (sensitivity, baseline, study creation) is once per study: measured apart
        t0 = time.perf_counter()
        study = slimtune.search(task, strategy=strategy, n_trials=1, storage=url, study_name="o", progress=False)
        setup_s = time.perf_counter() - t0
        before = {t.number for t in study.trials if t.state.is_finished()}
        t0 = time.perf_counter()
        study = slimtune.search(task, strategy=strategy, n_trials=n_trials + 1, storage=url, study_name="o", progress=False)
        loop_s = time.perf_counter() - t0
        trials = [t for t in study.trials if t.number not in before and t.state.name == "COMPLETE"]
        # a trial repeating an earlier one's parameters reuses its result (no fine-tune, no evaluate):
        # its time is slimtune's, counted in the loop; the direct check below re-runs fresh trials only
        reused = sum(1 for t in trials if "duplicate_of" in t.user_attrs)
        trials = [t for t in trials if "duplicate_of" not in t.user_attrs]
        times = [t.user_attrs["times"] for t in trials]
        user_s = sum(t["finetune"] + t["evaluate"] for t in times)
        parts = {k: sum(t.get(k, 0.0) for t in times) for k in ("compress", "measure", "save", "finetune", "evaluate", "total")}
        outside_objective = loop_s - parts["total"]

        # the user's work called directly on the same compressed models, outside slimtune
        direct = []
        for t in trials:
            model = compress(task.model, CompressionPlan.from_dict(t.user_attrs["plan"]), task.example_inputs)
            s = time.perf_counter()
            task.run_finetune(model)
            task.evaluate(model)
            direct.append(time.perf_counter() - s)

    n = len(trials)
    per_trial = loop_s / n
    overhead = (loop_s - user_s) / loop_s
    overhead_direct = (loop_s - sum(direct)) / loop_s
    result = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "torch": torch.__version__,
        "trials": n,
        "reused_trials": reused,
        "finetune_epochs": epochs,
        "setup_s": setup_s,
        "loop_s": loop_s,
        "per_trial_s": per_trial,
        "user_s_in_trials": user_s,
        "user_s_direct": sum(direct),
        "median_user_trial_s": statistics.median(t["finetune"] + t["evaluate"] for t in times),
        "slimtune_parts_s": {
            "compress": parts["compress"],
            "measure": parts["measure"],
            "save_model": parts["save"],
            "sampler_and_storage": outside_objective,
        },
        "overhead_fraction": overhead,
        "overhead_fraction_vs_direct": overhead_direct,
        "target": 0.05,
    }
    lines = [
        f"# Per-trial overhead of slimtune (digits CNN, {epochs} fine-tune epochs)",
        "",
        f"{n} trials (+{reused} that repeated an earlier trial's parameters and reused its result; their time "
        "is in the loop, counted as slimtune's), "
        f"strategy {strategy}, torch {torch.__version__}, 2-core CPU, SQLite storage. "
        f"Study set-up (sensitivity analysis, baseline, study creation) once: {setup_s:.1f} s.",
        "",
        "| part | seconds (all trials) | per trial | share of trial time |",
        "| --- | --- | --- | --- |",
    ]
    for name, seconds in [("user: fine-tune + evaluate (in trials)", user_s), *result["slimtune_parts_s"].items()]:
        lines.append(f"| {name} | {seconds:.2f} | {seconds / n:.3f} | {seconds / loop_s:.1%} |")
    lines += [
        f"| **trial loop (wall)** | {loop_s:.2f} | {per_trial:.3f} | 100% |",
        "",
        f"Overhead (everything but the user's fine-tune and evaluate): **{overhead:.1%}** of trial time, "
        f"{(loop_s - user_s) / n * 1000:.0f} ms per trial (target ≤ 5 %: {'pass' if overhead <= 0.05 else 'FAIL'}).",
        f"Against the same fine-tune + evaluate called directly outside slimtune ({sum(direct):.2f} s): "
        f"{overhead_direct:.1%}.",
        "",
    ]
    return result, "\n".join(lines)


if __name__ == "__main__":
    main()
