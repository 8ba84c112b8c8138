"""Accuracy recovery after channel pruning: one-shot, fine-tune, KD and the training-time compressors.

On the digits CNN and the digits ResNet (``slimtune.examples.digits``, pretrained and cached), every prunable
group is pruned to 50 % and 75 % of its channels (``CompressionPlan.uniform(graph, s, "l1")``) by:

- ``one-shot``: :func:`~slimtune.compressors.compress`, no training;
- ``one-shot + FT``: then the digits task's built-in fine-tune (AdamW lr 1e-3, cosine, label smoothing) for
  the whole training budget;
- ``one-shot + FT + KD``: the same with response-based KD from the original model (alpha 0.5, T 4);
- ``AGP``: gradual pruning over the whole budget (cubic schedule, targets reached at 75 % of the run);
- ``ADMM + FT``: ADMM for two thirds of the budget (the task's AdamW at lr 1e-2, rho 0.2 doubling at each of 4
  updates), hard prune, masked retrain (the task's fine-tune) for the last third;
- ``lottery + FT``: two rounds of train / prune / rewind to the pretrained weights (one third of the budget
  each), then the ticket is retrained for the last third;
- ``slimming + FT``: L1 on BN scales (SGD lr 0.02, lambda 0.1) for two thirds, ``bn_scale`` pruning, retrain;
- ``one-shot + FT + online KD`` / ``+ self KD`` / ``+ born-again KD``: the fine-tune with the ``kd`` modes
  ``online`` (deep mutual learning with a copy of the original), ``self`` (BYOT exits) and ``born_again``, each
  at its paper's defaults;
- ``SCOP + FT``: the channels chosen by the ``scop`` criterion (knockoff-controlled scaling factors learned on
  the calibration batches, Tang et al. 2020) instead of ``l1``, then the fine-tune.

A second table compares, **at equal FLOPs** (50 % and 25 % of the original's MACs, matched by bisection on the
resource predictor; its MACs column is what was built, within 3 % of the target except where one rank ratio for
every layer cannot land closer), uniform channel pruning (``l1``), low-rank factorization of every layer but the
classifier (one rank ratio, ``auto``: SVD or Tucker-2 per layer, :mod:`slimtune.compressors.lowrank`) and
both (pruning to the square root of the target, then factorizing to the target), each followed by the same
fine-tune.

Every method gets the same number of training steps in all (``--epochs`` passes over the 23 training
batches of 64), one thread, and is run with ``--seeds`` seeds (the fine-tune seed: batch order); the table
gives the mean validation accuracy (360 held-out digits), the range over seeds, and the median wall time of
compression + training. ``python benchmarks/recovery.py [--epochs 3] [--seeds 3] [--models cnn resnet]
[--sparsities 0.5 0.75] [--no-write] [--render]``; results go to ``benchmarks/results/recovery.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from slimtune.compressors import CompressionPlan, FactorSpec, PruneSpec, compress, count_flops, trace
from slimtune.compressors.lowrank import factorizable_layers
from slimtune.compressors.measures import ResourcePredictor
from slimtune.compressors.training import run_compressor
from slimtune.examples.digits import make_task

RESULTS = Path(__file__).parent / "results"


def methods(steps: int) -> dict[str, Callable[[Any, Any, CompressionPlan, int], torch.nn.Module]]:
    """Name → ``method(task, graph, plan, seed)`` returning the compressed, trained model."""
    third = steps // 3
    rest = steps - 2 * third

    def oneshot(task, graph, plan, seed):
        return compress(task.model, plan, task.example_inputs, graph=graph)

    def finetuned(kd: dict | None) -> Callable:
        def run(task, graph, plan, seed):
            model = oneshot(task, graph, plan, seed)
            task.run_finetune(model, None, {"steps": steps, "seed": seed, "kd": kd})
            return model

        return run

    def trained(compressor: str, params: dict, retrain: int) -> Callable:
        def run(task, graph, plan, seed):
            p = CompressionPlan(plan.prune, plan.quantize, plan.granularity, compressor, params)
            ctx = task.training_context({"seed": seed}, graph=graph)
            model = run_compressor(task.model, p, task.example_inputs, ctx)
            if retrain:
                task.run_finetune(model, None, {"steps": retrain, "seed": seed})
            return model

        return run

    return {
        "one-shot": oneshot,
        "one-shot + FT": finetuned(None),
        "one-shot + FT + KD": finetuned({"alpha": 0.5, "temperature": 4.0}),
        "AGP": trained("agp", {"steps": steps, "end": 0.75}, 0),
        "ADMM + FT": trained("admm", {"steps": 2 * third, "lr": 0.01}, rest),
        "lottery + FT": trained("lottery", {"steps": third, "rounds": 2}, rest),
        "slimming + FT": trained("slimming", {"steps": 2 * third, "penalty": 0.1, "lr": 0.02, "optimizer": "sgd"}, rest),
        "one-shot + FT + online KD": finetuned({"mode": "online"}),
        "one-shot + FT + self KD": finetuned({"mode": "self"}),
        "one-shot + FT + born-again KD": finetuned({"mode": "born_again"}),
        "SCOP + FT": scop_finetuned,
    }


def _rescored(plan: CompressionPlan, criterion: str) -> CompressionPlan:
    return CompressionPlan({g: PruneSpec(p.sparsity, criterion) for g, p in plan.prune.items()}, plan.quantize)


def scop_finetuned(task, graph, plan, seed, steps=None):
    torch.manual_seed(seed)  # SCOP's knockoff draws and control-scale initialisation
    model = compress(task.model, _rescored(plan, "scop"), task.example_inputs, graph=graph, data=task.calibration,
                     loss_fn=task.loss_fn)  # fmt: skip
    task.run_finetune(model, None, {"steps": steps or scop_finetuned.steps, "seed": seed})
    return model


def equal_flops_plans(task, graph, target: float) -> dict[str, CompressionPlan]:
    """Uniform pruning, factorization and both, each at ``target`` of the original's MACs (bisection on the
    resource predictor)."""
    predictor = ResourcePredictor(graph, task.example_inputs)
    layers = factorizable_layers(task.model)[:-1]  # the classifier stays whole

    def bisect(make: Callable[[float], CompressionPlan], goal: float, lo: float, hi: float, up: bool) -> CompressionPlan:
        for _ in range(40):  # flops falls as the sparsity rises (up) or as the rank ratio falls
            mid = (lo + hi) / 2
            above = predictor.relative(make(mid))["flops"] > goal
            lo, hi = (mid, hi) if above == up else (lo, mid)
        return make(hi if up else lo)

    def pruned(s: float) -> CompressionPlan:
        return CompressionPlan.uniform(graph, s, "l1")

    def factorized(base: CompressionPlan) -> Callable[[float], CompressionPlan]:
        def make(r: float) -> CompressionPlan:
            p = CompressionPlan(dict(base.prune), factorize={n: FactorSpec(rank_ratio=max(r, 1e-3)) for n in layers})
            return p

        return make

    prune = bisect(pruned, target, 0.0, 0.95, up=True)
    factor = bisect(factorized(CompressionPlan()), target, 0.0, 1.0, up=False)
    half = bisect(pruned, target**0.5, 0.0, 0.95, up=True)
    both = bisect(factorized(half), target, 0.0, 1.0, up=False)
    return {"uniform pruning": prune, "factorization": factor, "pruning + factorization": both}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["cnn", "resnet"])
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.75])
    parser.add_argument("--epochs", type=int, default=3, help="training budget of every method, in epochs")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--render", action="store_true", help="only rewrite recovery.md from recovery.json")
    parser.add_argument("--flops", type=float, nargs="+", default=[0.5, 0.25], help="targets of the equal-FLOPs table")
    parser.add_argument("--methods", nargs="+", default=None, help="run only these methods (others kept from the json)")
    args = parser.parse_args()
    if args.render:
        data = json.loads((RESULTS / "recovery.json").read_text())
        args.epochs, args.seeds = data["meta"]["epochs"], data["meta"]["seeds"]
        args.models = list(dict.fromkeys(r["model"] for r in data["rows"]))
        args.sparsities = list(dict.fromkeys(r["sparsity"] for r in data["rows"]))
        (RESULTS / "recovery.md").write_text(text := table(data["rows"], args) + flops_table(data.get("flops_rows", []), args))
        print(text)
        return
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")  # bn_scale falls back to l1 on the Linear group, torch deprecations
    rows, flops_rows = [], []
    old = json.loads((RESULTS / "recovery.json").read_text()) if args.methods and (RESULTS / "recovery.json").exists() else {}
    for arch in args.models:
        task = make_task(arch)
        graph = trace(task.model, task.example_inputs)
        steps = args.epochs * len(task.train_data)
        scop_finetuned.steps = steps
        original = task.evaluate(task.model)
        for sparsity in args.sparsities:
            plan = CompressionPlan.uniform(graph, sparsity, "l1")
            for name, method in methods(steps).items():
                if args.methods and name not in args.methods:
                    kept = [r for r in old.get("rows", []) if (r["model"], r["sparsity"], r["method"]) == (arch, sparsity, name)]
                    rows += kept
                    continue
                accs, secs = [], []
                for seed in range(args.seeds):
                    t = time.perf_counter()
                    model = method(task, graph, plan, seed)
                    secs.append(time.perf_counter() - t)
                    accs.append(task.evaluate(model))
                row = {
                    "model": arch, "sparsity": sparsity, "method": name, "original": original, "steps": steps,
                    "accuracy": statistics.mean(accs), "min": min(accs), "max": max(accs), "accuracies": accs,
                    "seconds": statistics.median(secs),
                }  # fmt: skip
                rows.append(row)
                print(f"{arch:6s} {sparsity:.2f} {name:20s} {row['accuracy']:.4f} [{row['min']:.4f}-{row['max']:.4f}] {row['seconds']:.2f} s", flush=True)
        for target in args.flops:
            for name, plan in equal_flops_plans(task, graph, target).items():
                accs, secs, oneshot = [], [], None
                for seed in range(args.seeds):
                    t = time.perf_counter()
                    model = compress(task.model, plan, task.example_inputs, graph=graph)
                    oneshot = task.evaluate(model) if oneshot is None else oneshot
                    task.run_finetune(model, None, {"steps": steps, "seed": seed})
                    secs.append(time.perf_counter() - t)
                    accs.append(task.evaluate(model))
                x = task.example_inputs
                macs = float(count_flops(model, x)["macs"].sum() / count_flops(task.model, x)["macs"].sum())
                row = {
                    "model": arch, "target": target, "method": name, "flops": macs, "original": original,
                    "one_shot": oneshot, "accuracy": statistics.mean(accs), "min": min(accs), "max": max(accs),
                    "accuracies": accs, "seconds": statistics.median(secs), "plan": plan.to_dict(),
                }  # fmt: skip
                flops_rows.append(row)
                print(f"{arch:6s} FLOPs {target:.2f} {name:24s} (×{macs:.3f}) one-shot {oneshot:.4f} → {row['accuracy']:.4f} [{row['min']:.4f}-{row['max']:.4f}] {row['seconds']:.2f} s", flush=True)
    if args.methods and not flops_rows:
        flops_rows = old.get("flops_rows", [])
    text = table(rows, args) + flops_table(flops_rows, args)
    print(text)
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        meta = {"torch": torch.__version__, "machine": platform.processor() or platform.machine(), "epochs": args.epochs,
                "seeds": args.seeds}  # fmt: skip
        (RESULTS / "recovery.json").write_text(json.dumps({"meta": meta, "rows": rows, "flops_rows": flops_rows}, indent=2))
        (RESULTS / "recovery.md").write_text(text)


def table(rows: list[dict], args: argparse.Namespace) -> str:
    """The markdown table: one row per method, one column per model and sparsity."""
    cols = [(m, s) for m in args.models for s in args.sparsities]
    names = list(dict.fromkeys(r["method"] for r in rows))
    by = {(r["model"], r["sparsity"], r["method"]): r for r in rows}
    head = "| method | " + " | ".join(f"{m} {int(s * 100)} %" for m, s in cols) + " |"
    lines = [
        f"# Accuracy recovery after channel pruning (digits, {args.epochs} epochs of training per method)",
        "",
        f"Validation accuracy, mean over {args.seeds} seeds [min-max], and median wall time of compression + "
        f"training (1 thread, torch {torch.__version__}, 2-core CPU). Original accuracy: "
        + ", ".join(f"{m} {by[(m, args.sparsities[0], names[0])]['original']:.4f}" for m in args.models)
        + f"; every method trains {rows[0]['steps'] if rows else 0} steps in all ({args.epochs} epochs of 23 "
        "batches of 64). Wall times vary by ±50 % on these shared machines (other jobs): compare them within a "
        "column only roughly.",
        "",
        head,
        "| --- |" + " --- |" * len(cols),
    ]
    for name in names:
        cells = []
        for m, s in cols:
            r = by.get((m, s, name))
            cells.append(f"{r['accuracy']:.3f} [{r['min']:.3f}-{r['max']:.3f}], {r['seconds']:.1f} s" if r else "")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def flops_table(rows: list[dict], args: argparse.Namespace) -> str:
    """The equal-FLOPs table: pruning, factorization and both at each target."""
    if not rows:
        return ""
    lines = [
        "",
        "## At equal FLOPs: channel pruning, low-rank factorization, both",
        "",
        "MACs relative to the original (matched by the resource predictor, counted on the built model), one-shot "
        f"accuracy (seed 0), accuracy after the same fine-tune (mean over {args.seeds} seeds [min-max]) and median "
        "wall time of compression + fine-tune.",
        "",
        "| model | target | method | MACs | one-shot | fine-tuned | wall |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['target']:.2f} | {r['method']} | ×{r['flops']:.3f} | {r['one_shot']:.3f} | "
            f"{r['accuracy']:.3f} [{r['min']:.3f}-{r['max']:.3f}] | {r['seconds']:.1f} s |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
