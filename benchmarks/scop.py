"""SCOP against the weight criteria on the digits CNN: one-shot pruning, then the same short fine-tune.

For each seed (the digits CNN trained with that seed by ``slimtune.examples.digits.pretrained``, the fine-tune's
batch order and SCOP's knockoff draws), every prunable group is pruned to 50 % and 75 % of its channels
(``CompressionPlan.uniform(graph, s, criterion)``) by each criterion, on the digits task's calibration data
(4 training batches of 128, with targets, the task's label-smoothed cross-entropy), and fine-tuned with the
digits task's recipe (AdamW lr 1e-3, cosine, warm-up, label smoothing 0.1, one thread) for ``--epochs``
passes over the training set. The table gives the validation accuracy (360 held-out digits) right after
pruning and after the fine-tune, mean ± std over seeds, and the wall time of the criterion (the whole
``compress`` call; SCOP's includes fitting the knockoff generator and learning the control scales).

``python benchmarks/scop.py [--seeds 3] [--epochs 2] [--criteria l1 fpgm taylor scop scop:lr=0.05 scop_vae]
[--no-write]``; ``scop:lr=0.05`` (or ``:epochs=5``) passes an option to the criterion;
results go to ``benchmarks/results/scop.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from slimtune.compressors import CRITERIA, CompressionPlan, compress, trace
from slimtune.compressors.criteria.scop import scop
from slimtune.compressors.training import FinetuneConfig, finetune
from slimtune.examples.digits import evaluate_accuracy, load_digits_data, pretrained, train_batches

RESULTS = Path(__file__).parent / "results"


def run(seeds: int, epochs: int, criteria: list[str], sparsities: list[float]) -> list[dict]:
    torch.set_num_threads(1)
    train_set, val_set = load_digits_data()
    images, labels = train_set.tensors
    calibration = [(images[i : i + 128], labels[i : i + 128]) for i in range(0, 512, 128)]
    batches = train_batches(train_set)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    rows = []
    for seed in range(seeds):
        model = pretrained("cnn", seed=seed)
        base = evaluate_accuracy(model, val_set)
        graph = trace(model, images[:1])
        for criterion in criteria:
            name = criterion
            if criterion.startswith("scop"):  # this seed's knockoff draws; "scop:lr=0.05" sets an option
                kind, _, option = criterion.partition(":")
                kwargs = {"generator": "vae" if kind == "scop_vae" else "gaussian", "seed": seed}
                if option:
                    key, _, value = option.partition("=")
                    kwargs[key] = float(value) if key == "lr" else int(value)
                name = f"_bench_{len(rows)}_{seed}"
                CRITERIA.register(name)(functools.partial(scop, **kwargs))
            try:
                for sparsity in sparsities:
                    plan = CompressionPlan.uniform(graph, sparsity, name)
                    start = time.perf_counter()
                    small = compress(model, plan, images[:1], data=calibration, loss_fn=loss_fn, graph=graph)
                    seconds = time.perf_counter() - start
                    before = evaluate_accuracy(small, val_set)
                    config = FinetuneConfig(
                        epochs=epochs,
                        optimizer="adamw",
                        lr=1e-3,
                        weight_decay=1e-4,
                        schedule="cosine",
                        warmup_steps=min(len(batches), epochs * len(batches) // 10),
                        num_threads=1,
                        seed=seed,
                    )
                    finetune(small, batches, config, loss_fn)
                    after = evaluate_accuracy(small, val_set)
                    row = dict(seed=seed, criterion=criterion, sparsity=sparsity, base=base, before=before,
                               after=after, seconds=seconds)  # fmt: skip
                    print(json.dumps(row), flush=True)
                    rows.append(row)
            finally:
                if name != criterion:
                    CRITERIA.unregister(name)
    return rows


def _ms(values: list[float], scale: float = 100.0, digits: int = 2) -> str:
    mean = statistics.fmean(values) * scale
    std = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def render(rows: list[dict], epochs: int) -> str:
    seeds = sorted({r["seed"] for r in rows})
    bases = [next(r["base"] for r in rows if r["seed"] == s) for s in seeds]
    lines = [
        "# SCOP vs weight criteria on the digits CNN",
        "",
        f"Machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, one thread; "
        f"{len(seeds)} seeds; fine-tune {epochs} epochs. Unpruned: {_ms(bases)} %.",
        "",
        "| criterion | sparsity | accuracy after pruning (%) | after fine-tune (%) | criterion wall time (s) |",
        "|---|---:|---:|---:|---:|",
    ]
    for sparsity in sorted({r["sparsity"] for r in rows}):
        for criterion in dict.fromkeys(r["criterion"] for r in rows):
            sel = [r for r in rows if r["criterion"] == criterion and r["sparsity"] == sparsity]
            if sel:
                lines.append(
                    f"| `{criterion}` | {sparsity:.0%} | {_ms([r['before'] for r in sel])} | "
                    f"{_ms([r['after'] for r in sel])} | {_ms([r['seconds'] for r in sel], 1.0)} |"
                )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--criteria", nargs="+", default=["l1", "fpgm", "taylor", "scop", "scop:lr=0.05", "scop_vae"])
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.5, 0.75])
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = run(args.seeds, args.epochs, args.criteria, args.sparsities)
    text = render(rows, args.epochs)
    print(text)
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "scop.md").write_text(text)
        (RESULTS / "scop.json").write_text(json.dumps({"epochs": args.epochs, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
