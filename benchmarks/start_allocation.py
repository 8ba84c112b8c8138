"""Where should a targeted search start? Three starting allocations at one FLOPs target, fine-tuned and compared.

Simulated annealing and AutoCompress begin their chain at one allocation rescaled to the FLOPs target
(``initial``); ``joint`` proposes one first under a budget. This benchmark compares the candidates on their
own, on the digits CNN (``examples/digits.yaml``) and the digits ResNet (``benchmarks/specs/digits_resnet.yaml``):

- ``greedy`` (the default): the sensitivity table read resource-aware
  (:meth:`slimtune.search_spaces.SearchSpace.allocate`: each step prunes where one-shot accuracy costs least
  per FLOP saved);
- ``uniform``: one sparsity for every group;
- ``sensitivity``: each group at its one-shot-safe level (the earlier default).

Each is the first trial of a one-trial ``simulated_annealing`` study at the target (so it is exactly the
chain's start), then compressed and fine-tuned again with ``--seeds`` fresh fine-tune seeds (default 5) as
``search_quality.py`` re-evaluates trials; the table gives the mean validation accuracy and its range.

``python benchmarks/start_allocation.py [--targets 0.5,0.25] [--seeds 5]``; results go to
``benchmarks/results/start_allocation.md`` and ``.json`` (≈ 6 min on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import pandas as pd

import slimtune
from search_quality import RESULTS, ROOT, reevaluate, strategy_run
from slimtune.trials.spec import load_spec

SPECS = {"cnn": ROOT / "examples" / "digits.yaml", "resnet": ROOT / "benchmarks" / "specs" / "digits_resnet.yaml"}
STARTS = ("greedy", "uniform", "sensitivity")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="0.5,0.25", help="FLOPs targets (relative)")
    parser.add_argument("--seeds", type=int, default=5, help="fresh fine-tune seeds per allocation")
    parser.add_argument("--models", default="cnn,resnet", help="cnn, resnet or both")
    args = parser.parse_args()
    targets = [float(t) for t in args.targets.split(",") if t.strip()]
    rows = []
    for model in [m for m in args.models.split(",") if m]:
        spec = load_spec(SPECS[model])
        with tempfile.TemporaryDirectory() as tmp:
            cwd = os.getcwd()
            os.chdir(tmp)
            try:
                task = spec.make_task()
                kwargs = spec.search_kwargs()
                seeds = [task.effective_finetune_config().seed + 1 + i for i in range(args.seeds)]
                for target in targets:
                    for start in STARTS:
                        t0 = time.perf_counter()
                        run = strategy_run("simulated_annealing", kwargs, 1, target)
                        study = slimtune.search(task, **{**run, "initial": start, "study_name": f"start-{start}-{target:g}"})
                        trial = study.trials[0]
                        accs = reevaluate(task, study, 0, seeds)
                        rows.append({
                            "model": model, "target": target, "start": start,
                            "flops_rel": trial.user_attrs["measures"]["flops"],
                            "mean_acc": sum(accs) / len(accs), "min_acc": min(accs), "max_acc": max(accs),
                            "accuracies": accs,
                            "sparsities": {k.split("/", 1)[1]: round(v, 3) for k, v in trial.params.items()},
                            "seconds": time.perf_counter() - t0,
                        })  # fmt: skip
                        r = rows[-1]
                        print(f"{model} @{target:g} {start:>11}: flops {r['flops_rel']:.3f}, mean {r['mean_acc']:.4f} "
                              f"[{r['min_acc']:.4f}, {r['max_acc']:.4f}]", flush=True)  # fmt: skip
            finally:
                os.chdir(cwd)
    table = pd.DataFrame(rows)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "start_allocation.json").write_text(json.dumps({"seeds": args.seeds, "rows": rows}, indent=2))
    shown = table[["model", "target", "start", "flops_rel", "mean_acc", "min_acc", "max_acc"]]
    lines = [
        "# Starting allocations at a FLOPs target",
        "",
        f"Each allocation rescaled to the target, compressed and fine-tuned with {args.seeds} fresh fine-tune seeds "
        "(the task's fine-tune); mean, lowest and highest validation accuracy.",
        "",
        shown.to_string(index=False, float_format=lambda v: f"{v:.4f}"),
        "",
        "## Allocations",
        "",
        *(f"- {r['model']} @{r['target']:g} {r['start']}: {r['sparsities']}" for r in rows),
        "",
    ]
    (RESULTS / "start_allocation.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
