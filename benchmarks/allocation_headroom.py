"""How much can any per-group allocation win over uniform at one FLOPs target? The room a search has.

``search_quality.py`` asks every automatic strategy to beat ``uniform`` at a FLOPs bound. A strategy
can only win what the allocation itself is worth there; this benchmark measures that, free of any
search: at each target it draws ``--allocations`` random per-group sparsity vectors (each group
uniform between the space's lower and upper bounds, the same bounds the strategies search), moves
each along one line to just meet the target (:func:`slimtune.strategies._budget.scale_to_target`,
as the targeted strategies do), and compresses and fine-tunes every one with ``--seeds`` fine-tune
seeds (the task's fine-tune, as ``search_quality.py`` re-evaluates a trial). Alongside: the uniform
allocation at the target and the greedy sensitivity allocation
(:meth:`slimtune.search_spaces.SearchSpace.allocate`).

Per model and target it reports the uniform mean, the random allocations' median and best mean, how
many beat uniform, and the best one again on ``--seeds`` fresh seeds (the best of many means is the
luckiest of them). **Headroom** is that re-evaluated best minus uniform: what a perfect search could
gain at this target, in accuracy points. It is set beside the noise a search sees in one trial: the
standard deviation of one fine-tune run's accuracy over seeds (pooled over the allocations) and the
validation set's granularity (one sample). Where the headroom is below one trial's noise, no search
judged on one run per trial can tell a better allocation from a luckier one.

``python benchmarks/allocation_headroom.py [--models cnn,resnet] [--targets 0.5,0.25] [--allocations 24]
[--seeds 5]``; results go to ``benchmarks/results/allocation_headroom.md`` and ``.json`` (≈ 10 min on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
import pandas as pd

from search_quality import RESULTS, ROOT
from slimtune.compressors import trace
from slimtune.compressors.training import run_compressor
from slimtune.search_spaces import SearchSpace, SpaceOptions
from slimtune.strategies._budget import ResourceModel, scale_to_target
from slimtune.strategies.admm import fixed_allocation
from slimtune.trials import make_storage, sensitivity_table
from slimtune.trials.spec import load_spec

SPECS = {"cnn": ROOT / "examples" / "digits.yaml", "resnet": ROOT / "benchmarks" / "specs" / "digits_resnet.yaml"}


def accuracies(task, space: SearchSpace, graph, sparsities: dict[str, float], seeds: list[int]) -> list[float]:
    """The allocation compressed and fine-tuned once per fine-tune seed: its validation accuracies."""
    plan = space.plan({space.param_name(g): s for g, s in sparsities.items()})
    out = []
    for seed in seeds:
        overrides = {"seed": seed}
        model = run_compressor(task.model, plan, task.example_inputs, task.training_context(overrides, None, graph))
        task.run_finetune(model, None, overrides)
        out.append(float(task.evaluate(model)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="cnn,resnet", help="cnn, resnet or both")
    parser.add_argument("--targets", default="0.5,0.25", help="FLOPs targets (relative)")
    parser.add_argument("--allocations", type=int, default=24, help="random allocations per target")
    parser.add_argument("--seeds", type=int, default=5, help="fine-tune seeds per allocation")
    args = parser.parse_args()
    targets = [float(t) for t in args.targets.split(",") if t.strip()]
    summary, details = [], []
    for name in [m for m in args.models.split(",") if m]:
        spec = load_spec(SPECS[name])
        with tempfile.TemporaryDirectory() as tmp:
            cwd = os.getcwd()
            os.chdir(tmp)
            try:
                task = spec.make_task()
                options = SpaceOptions.from_dict(spec.search_kwargs().get("space"))
                graph = trace(task.model, task.example_inputs)
                table = sensitivity_table(task, make_storage("memory"), options, progress=False)
                space = SearchSpace(graph, options, table)
                flops = ResourceModel(space, "flops")
                lower = {g: options.min_sparsity for g in space.groups}
                upper = dict(space.upper)
                base = task.effective_finetune_config().seed
                seeds = [base + 1 + i for i in range(args.seeds)]
                fresh = [base + 1 + args.seeds + i for i in range(args.seeds)]
                rng = np.random.default_rng(0)
                for target in targets:
                    t0 = time.perf_counter()
                    x, rel, _ = fixed_allocation(space, flops, target, "uniform")  # one sparsity, capped at each bound
                    candidates = [("uniform", x, rel)]
                    greedy = space.allocate(flops.relative, target)
                    if greedy is not None:
                        candidates.append(("greedy", *scale_to_target(greedy, lower, upper, flops.relative, target)[:2]))
                    for i in range(args.allocations):
                        x = {g: float(rng.uniform(lower[g], upper[g])) for g in space.groups}
                        candidates.append((f"random {i}", *scale_to_target(x, lower, upper, flops.relative, target)[:2]))
                    rows = []
                    for label, x, rel in candidates:
                        accs = accuracies(task, space, graph, x, seeds)
                        rows.append({"model": name, "target": target, "allocation": label, "flops_rel": rel,
                                     "mean": float(np.mean(accs)), "accuracies": accs,
                                     "sparsities": dict(x)})  # fmt: skip
                        print(f"{name} @{target:g} {label:>10}: flops {rel:.3f}, mean {rows[-1]['mean']:.4f} "
                              f"{[round(a, 4) for a in accs]}", flush=True)  # fmt: skip
                    details += rows
                    uniform = rows[0]
                    randoms = [r for r in rows if r["allocation"].startswith("random")]
                    best = max(randoms, key=lambda r: r["mean"])
                    again = accuracies(task, space, graph, best["sparsities"], fresh)
                    best["fresh_accuracies"] = again
                    noise = float(np.sqrt(np.mean([np.var(r["accuracies"], ddof=1) for r in rows])))
                    seen = sorted({a for r in rows for a in r["accuracies"]})
                    step = min((b - a for a, b in zip(seen, seen[1:])), default=float("nan"))  # one validation sample
                    g_row = next((r for r in rows if r["allocation"] == "greedy"), None)
                    summary.append({
                        "model": name, "target": target,
                        "uniform": uniform["mean"],
                        "greedy": g_row["mean"] if g_row else float("nan"),
                        "random_median": float(np.median([r["mean"] for r in randoms])),
                        "random_best": best["mean"],
                        "beat_uniform": f"{sum(r['mean'] > uniform['mean'] + 1e-12 for r in randoms)}/{len(randoms)}",
                        "best_fresh": float(np.mean(again)),
                        "headroom_pts": 100 * (float(np.mean(again)) - uniform["mean"]),
                        "trial_noise_pts": 100 * noise,
                        "one_sample_pts": 100 * step,
                        "seconds": time.perf_counter() - t0,
                        "best_allocation": best["sparsities"],
                    })  # fmt: skip
                    s = summary[-1]
                    print(f"{name} @{target:g}: uniform {s['uniform']:.4f}, best random {s['random_best']:.4f} "
                          f"(fresh seeds {s['best_fresh']:.4f}), headroom {s['headroom_pts']:+.2f} pts, "
                          f"one trial's noise {s['trial_noise_pts']:.2f} pts", flush=True)  # fmt: skip
            finally:
                os.chdir(cwd)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "allocation_headroom.json").write_text(
        json.dumps({"allocations": args.allocations, "seeds": args.seeds, "summary": summary, "rows": details}, indent=2)
    )
    shown = pd.DataFrame(summary).drop(columns=["best_allocation"])
    lines = [
        "# Allocation headroom at a FLOPs target",
        "",
        f"{args.allocations} random per-group allocations per target (each group uniform within the space's bounds, "
        f"moved along one line to the target), each compressed and fine-tuned with {args.seeds} fine-tune seeds; "
        f"mean validation accuracy. `best_fresh`: the best random allocation again on {args.seeds} fresh seeds; "
        "`headroom_pts` = best_fresh − uniform, in points; `trial_noise_pts`: the standard deviation of one fine-tune "
        "run's accuracy (pooled over the allocations); `one_sample_pts`: one validation sample.",
        "",
        shown.to_string(index=False, float_format=lambda v: f"{v:.4f}"),
        "",
        "## Best random allocations",
        "",
        *(f"- {s['model']} @{s['target']:g}: {({g: round(v, 3) for g, v in s['best_allocation'].items()})}" for s in summary),
        "",
    ]
    (RESULTS / "allocation_headroom.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
