"""The bundled example: prune the digits CNN at several channel sparsities and compare.

Trains (or loads from the cache) a small CNN on scikit-learn's digits, prunes every prunable
channel group uniformly with the chosen criterion, rebuilds each pruned model physically smaller,
fine-tunes it briefly and prints accuracy, FLOPs, parameters, size and measured latency against the
original model. Everything runs offline on a CPU in about a minute.

Run it with ``python -m slimtune.examples.demo`` (``--help`` lists the options).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch

from slimtune.compressors import CompressionPlan, compress, measure, trace
from slimtune.examples.digits import evaluate_accuracy, load_digits_data, pretrained, train


def run(
    arch: str = "cnn",
    sparsities: tuple[float, ...] = (0.25, 0.5, 0.75),
    criterion: str = "l1",
    finetune_epochs: int = 3,
    batch_size: int = 32,
) -> pd.DataFrame:
    """Prune the pretrained digits model at each sparsity; one row per model (the original first)."""
    train_set, val_set = load_digits_data()
    model = pretrained(arch)
    x = train_set.tensors[0][:1]
    graph = trace(model, x)
    calib = [(train_set.tensors[0][i : i + 128], train_set.tensors[1][i : i + 128]) for i in range(0, 512, 128)]

    def row(name: str, m: torch.nn.Module, seconds: float) -> dict[str, object]:
        meas = measure(m, x, latency=True, batch_size=batch_size, threads=1)
        return {
            "model": name,
            "accuracy": evaluate_accuracy(m, val_set),
            "flops": meas.flops,
            "params": meas.params,
            "size_kb": meas.size_bytes / 1024,
            "latency_ms": meas.latency_ms,
            "seconds": seconds,
        }

    rows = [row("original", model, 0.0)]
    print(f"original: {rows[0]['accuracy']:.4f} accuracy, {rows[0]['flops']:,} MACs", flush=True)
    for s in sparsities:
        start = time.perf_counter()
        plan = CompressionPlan.uniform(graph, s, criterion)
        small = compress(model, plan, x, data=calib)
        one_shot = evaluate_accuracy(small, val_set)
        if finetune_epochs:
            train(small, train_set, epochs=finetune_epochs, lr=1e-3)
        r = row(f"{criterion} {s:.0%}", small.eval(), time.perf_counter() - start)
        r["one_shot_accuracy"] = one_shot
        rows.append(r)
        print(
            f"sparsity {s:.0%}: one-shot {one_shot:.4f} -> fine-tuned {r['accuracy']:.4f}, {r['flops']:,} MACs",
            flush=True,
        )
    df = pd.DataFrame(rows)
    base = df.iloc[0]
    for col in ("flops", "params", "size_kb", "latency_ms"):
        df[f"{col}_rel"] = df[col] / base[col]
    return df


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m slimtune.examples.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="cnn", choices=("cnn", "resnet"))
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    parser.add_argument("--criterion", default="l1")
    parser.add_argument("--finetune-epochs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("slimtune-demo.csv"), help="CSV file for the table")
    args = parser.parse_args(argv)
    df = run(args.arch, tuple(args.sparsities), args.criterion, args.finetune_epochs)
    cols = [
        "model",
        "accuracy",
        "one_shot_accuracy",
        "flops_rel",
        "params_rel",
        "size_kb",
        "latency_ms",
        "latency_ms_rel",
    ]
    print()
    print(df[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep="-"))
    df.to_csv(args.out, index=False)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
