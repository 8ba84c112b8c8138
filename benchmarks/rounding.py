"""Hardware-friendly widths: does rounding kept channels to multiples of 8 or 16 buy CPU latency?

``CompressionPlan(channel_multiple=m)`` keeps a multiple of ``m`` channels in every group (AVX-512 holds
16 fp32 lanes; oneDNN's blocked CPU layouts work in blocks of 8 or 16 channels). This benchmark asks
whether, *at equal FLOPs*, such a model runs faster than one with arbitrary channel counts.

For each model (``resnet20``, ``vgg``, ``mobilenetv2`` of :data:`slimtune.examples.models.REFERENCE_MODELS`
and the digits CNN) and each *unrounded* plan (uniform sparsity 0.3 and 0.6, and two per-group random
plans in [0.15, 0.75], like those a search proposes), the rounded plans for ``m = 8`` and ``16`` keep the
unrounded kept counts scaled by one factor and rounded as the plan rounds them (:func:`round_kept`; the
factor whose MACs come closest to the unrounded plan's), then move groups one multiple at a time (greedy)
until the MACs are within 2 % or no move brings them closer; MACs come from
:class:`~slimtune.compressors.measures.ResourcePredictor` and are checked against
:func:`~slimtune.compressors.count_flops` on the compressed models. The three models are timed
interleaved (:func:`~slimtune.compressors.compare_latency`, one thread, the thread's CPU clock, medians)
at batch 1 and 32, eager PyTorch (``--runtime compile|onnxruntime``: as that runtime runs them, see
:func:`~slimtune.compressors.measures.runtimes.runtime_model`), NCHW, with a second copy of the unrounded
model as the noise control.

Reported per row: the rounded model's MACs and latency relative to the unrounded one, and latency per
MAC relative to it (``latency ratio / MACs ratio``: below 1, the rounded widths run faster per FLOP).

``python benchmarks/rounding.py [--models resnet20,vgg] [--repeats 80] [--quick] [--no-write]``; results
go to ``benchmarks/results/rounding.md`` and ``.json`` (``rounding_<runtime>.*`` for another runtime; ≈ 2 min
on 2 cores eager, more with compiling or exporting).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from slimtune import devices
from slimtune.compressors import CompressionPlan, PruneSpec, compare_latency, compress, count_flops, trace
from slimtune.compressors.measures import ResourcePredictor
from slimtune.compressors.measures.runtimes import RUNTIMES, runtime_model
from slimtune.compressors.plan import round_kept
from slimtune.examples.digits import digits_cnn
from slimtune.examples.models import REFERENCE_MODELS

RESULTS = Path(__file__).resolve().parent / "results"
MODELS: dict[str, tuple[Any, tuple[int, ...]]] = {
    "resnet20": REFERENCE_MODELS["resnet20"],
    "vgg": REFERENCE_MODELS["vgg"],
    "mobilenetv2": REFERENCE_MODELS["mobilenetv2"],
    "digits_cnn": (digits_cnn, (1, 8, 8)),
}
MULTIPLES = (8, 16)
#: a rounded model at most this much slower per MAC than the unrounded one counts as "not slower"
#: (interleaved medians on a shared 2-core machine move by about this much between runs)
NOISE = 0.03
#: a rounded plan whose MACs are further than this from the unrounded plan's is not at equal FLOPs
#: (a group of 16 channels cannot shrink under ×16): shown, left out of the verdict
MATCH = 0.05


def unrounded_plans(graph: Any, quick: bool) -> dict[str, dict[str, float]]:
    groups = [g.name for g in graph.prunable_groups()]
    plans = {"uniform 0.3": dict.fromkeys(groups, 0.3), "uniform 0.6": dict.fromkeys(groups, 0.6)}
    for seed in (0, 1)[: 1 if quick else 2]:
        rng = random.Random(seed)
        plans[f"random {seed}"] = {g: round(rng.uniform(0.15, 0.75), 3) for g in groups}
    return plans


def matched(graph: Any, predictor: ResourcePredictor, sparsities: dict[str, float], multiple: int) -> dict[str, int]:
    """Kept channels per group, counts the plan keeps with ``channel_multiple=multiple``, MACs closest to
    the unrounded plan's while keeping its shape: every group's unrounded kept count scaled by one factor
    and rounded by the plan (the factor whose MACs come closest), then single-group moves of one multiple
    while they bring the MACs closer and the gap is above 2 %."""
    target = predictor.predict(CompressionPlan.from_sparsities(sparsities)).flops
    plain = CompressionPlan.from_sparsities(sparsities)
    groups = {name: graph.groups[name] for name in sparsities}
    unrounded = {n: g.size - plain.n_prune(g) for n, g in groups.items()}
    choices = {
        n: sorted({round_kept(k, g.size, multiple, g.blocks) for k in range(g.blocks, g.size + 1, g.blocks)})
        for n, g in groups.items()
    }

    def error(kept: dict[str, int]) -> float:
        return abs(predictor.predict(as_sparsities(graph, kept)).flops / target - 1.0)

    def scaled(factor: float) -> dict[str, int]:
        out = {}
        for n, g in groups.items():
            k = min(g.size, max(g.blocks, round(factor * unrounded[n] / g.blocks) * g.blocks))
            out[n] = round_kept(k, g.size, multiple, g.blocks)
        return out

    candidates = [scaled(f / 200) for f in range(100, 401)]  # factors 0.5 ... 2.0
    kept = min(candidates, key=lambda k: (error(k), sum(abs(k[n] - unrounded[n]) for n in k)))
    best = error(kept)
    while best > 0.02:
        moves = []
        for n in groups:
            i = choices[n].index(kept[n])
            moves += [{**kept, n: choices[n][i + d]} for d in (-1, 1) if 0 <= i + d < len(choices[n])]
        if not moves:
            break
        move = min(moves, key=error)
        if error(move) >= best - 1e-12:
            break
        kept, best = move, error(move)
    return kept


def as_sparsities(graph: Any, kept: dict[str, int]) -> dict[str, float]:
    """``{group: sparsity}`` that ``Group.n_prune`` maps to exactly these kept counts."""
    out = {}
    for name, k in kept.items():
        g = graph.groups[name]
        per_block = g.size // g.blocks
        out[name] = (g.size - k) // g.blocks / per_block
    return out


def run_model(name: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    factory, shape = MODELS[name]
    torch.manual_seed(0)
    model = factory().eval()
    x = torch.randn(1, *shape)
    graph = trace(model, x)
    predictor = ResourcePredictor(graph, x)
    rows = []
    for label, sparsities in unrounded_plans(graph, args.quick).items():
        t0 = time.perf_counter()
        variants: dict[str, CompressionPlan] = {"unrounded": CompressionPlan.from_sparsities(sparsities)}
        for m in MULTIPLES:
            kept = matched(graph, predictor, sparsities, m)
            plan = CompressionPlan({g: PruneSpec(s) for g, s in as_sparsities(graph, kept).items()}, channel_multiple=m)
            assert plan.rounded(graph).prune == plan.prune, "the matched counts are counts the plan keeps"
            variants[f"x{m}"] = plan
        small = {v: compress(model, p, x, graph=graph).eval() for v, p in variants.items()}
        macs = {v: float(count_flops(mod, x)["macs"].sum()) for v, mod in small.items()}
        # the noise floor: a second copy of the unrounded model, timed in the same rounds
        small["control"] = compress(model, variants["unrounded"], x, graph=graph).eval()
        for v, p in variants.items():
            assert predictor.predict(p).flops == macs[v], f"{name} {label} {v}: predicted MACs differ from counted"
        kept = {v: {g.name: g.size - p.n_prune(g) for g in graph.prunable_groups()} for v, p in variants.items()}
        latency = {}
        # the models as the runtime runs them (eager: themselves; compile / onnxruntime: see runtime_model)
        timed = {v: runtime_model(mod, x, args.runtime)[0] for v, mod in small.items()}
        for batch, repeats in ((1, args.repeats * 5), (32, args.repeats)):
            with torch.no_grad():
                res = compare_latency(
                    timed, x, batch_size=batch, threads=1, warmup=5, repeats=repeats, min_time_s=0.0, clock="cpu"
                )
            latency[batch] = {
                v: {"median_ms": r.median_ms, "p10_ms": r.p10_ms, "p90_ms": r.p90_ms} for v, r in res.items()
            }
        for batch in latency:
            base = latency[batch]["unrounded"]["median_ms"]
            row: dict[str, Any] = {
                "model": name,
                "plan": label,
                "batch": batch,
                "dense_macs": predictor.dense.flops,
                "macs_rel_dense": macs["unrounded"] / predictor.dense.flops,
                "unrounded_ms": base,
                "control": latency[batch]["control"]["median_ms"] / base,
            }
            for m in MULTIPLES:
                v = f"x{m}"
                lat = latency[batch][v]["median_ms"] / base
                row[f"{v}_macs"] = macs[v] / macs["unrounded"]
                row[f"{v}_latency"] = lat
                row[f"{v}_per_mac"] = lat / row[f"{v}_macs"]
            row["latency_ms"] = latency[batch]
            row["kept"] = kept
            row["seconds"] = time.perf_counter() - t0
            rows.append(row)
        r1, r32 = rows[-2], rows[-1]
        print(
            f"{name:>11} {label:<11} MACs x8 {r32['x8_macs']:.3f} x16 {r32['x16_macs']:.3f} | per-MAC latency "
            f"b1: x8 {r1['x8_per_mac']:.3f} x16 {r1['x16_per_mac']:.3f}  b32: x8 {r32['x8_per_mac']:.3f} "
            f"x16 {r32['x16_per_mac']:.3f}  ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
    return rows


def is_slower(row: dict[str, Any], m: int) -> bool:
    """Slower than the unrounded model beyond the noise and beyond what any extra MACs explain."""
    return row[f"x{m}_latency"] > max(1.0, row[f"x{m}_macs"]) + NOISE


def gmean(values: list[float]) -> float:
    return math.exp(statistics.fmean(math.log(v) for v in values))


def report(rows: list[dict[str, Any]], args: argparse.Namespace, seconds: float) -> str:
    head = (
        "| model | plan | batch | MACs (of dense) | unrounded ms | control | ×8 MACs | ×8 latency | ×8 latency/MAC "
        "| ×16 MACs | ×16 latency | ×16 latency/MAC |"
    )
    lines = [
        "# Hardware-friendly widths: rounded vs unrounded channels at equal MACs",
        "",
        f"{devices.hardware('cpu')} ({platform.machine()}, {torch.get_num_threads()} threads available, "
        f"{_simd()}); torch {torch.__version__}; runtime {args.runtime}, NCHW, fp32, 1 thread, thread CPU clock, "
        "medians of "
        f"{args.repeats * 5} (batch 1) / {args.repeats} (batch 32) interleaved calls; run {time.strftime('%Y-%m-%d')}, "
        f"{seconds / 60:.1f} min.",
        "",
        "Ratios are rounded / unrounded. *latency/MAC* = latency ratio / MACs ratio (below 1: the rounded "
        "widths run faster per MAC). *control*: a second copy of the unrounded model timed in the same rounds "
        f"(its ratio is the noise of the row). A rounded model counts as *slower* when its latency ratio is "
        f"above max(1, its MACs ratio) + {NOISE:g}.",
        "",
        head,
        "|" + "---|" * (head.count("|") - 1),
    ]
    for r in rows:
        cells = []
        for m in MULTIPLES:
            off = "" if abs(r[f"x{m}_macs"] - 1) <= MATCH else " †"
            cells.append(f"{r[f'x{m}_macs']:.3f}{off} | {r[f'x{m}_latency']:.3f} | {r[f'x{m}_per_mac']:.3f}")
        lines.append(
            f"| {r['model']} | {r['plan']} | {r['batch']} | {r['macs_rel_dense']:.3f} | {r['unrounded_ms']:.3f} | "
            f"{r['control']:.3f} | " + " | ".join(cells) + " |"
        )
    lines += [
        "",
        f"† MACs more than {MATCH:.0%} away from the unrounded plan's: no plan of that multiple reaches them "
        "(groups at or below the multiple cannot shrink); not at equal FLOPs, left out of the summary.",
        "",
        "## Summary (rows at equal MACs)",
        "",
    ]
    for m in MULTIPLES:
        for batch in (1, 32):
            sel = [r for r in rows if r["batch"] == batch and abs(r[f"x{m}_macs"] - 1) <= MATCH]
            if not sel:
                lines.append(f"- ×{m}, batch {batch}: no row at equal MACs")
                continue
            per_mac = [r[f"x{m}_per_mac"] for r in sel]
            lat = [r[f"x{m}_latency"] for r in sel]
            slower = [f"{r['model']} {r['plan']} ({r[f'x{m}_latency']:.3f})" for r in sel if is_slower(r, m)]
            macs = [abs(r[f"x{m}_macs"] - 1) for r in sel]
            lines.append(
                f"- ×{m}, batch {batch}: {len(sel)} rows, MACs within {max(macs) * 100:.1f} % of the unrounded "
                f"plan's; latency geometric mean {gmean(lat):.3f} (range {min(lat):.3f}–{max(lat):.3f}), per MAC "
                f"{gmean(per_mac):.3f} ({min(per_mac):.3f}–{max(per_mac):.3f}); slower: "
                f"{', '.join(slower) if slower else 'none'}"
            )
    for batch in (1, 32):
        noise = [abs(r["control"] - 1) for r in rows if r["batch"] == batch]
        lines.append(
            f"- control (identical models), batch {batch}: |ratio − 1| median {statistics.median(noise):.3f}, "
            f"largest {max(noise):.3f}"
        )
    lines += ["", "## Kept channels", ""]
    for r in rows:
        if r["batch"] != 32:
            continue
        for v, kept in r["kept"].items():
            lines.append(f"- {r['model']} {r['plan']} {v}: {list(kept.values())}")
    return "\n".join(lines) + "\n"


def _simd() -> str:
    try:
        flags = Path("/proc/cpuinfo").read_text().split("flags", 2)[1].split("\n", 1)[0].split()
    except (OSError, IndexError):
        return "SIMD unknown"
    has = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f in flags]
    return ", ".join(has) or "no AVX2"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated: " + ", ".join(MODELS))
    parser.add_argument("--repeats", type=int, default=80, help="timed rounds at batch 32 (batch 1 gets 5x)")
    parser.add_argument("--quick", action="store_true", help="one random plan per model, 8 repeats")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument(
        "--runtime", default="torch", choices=RUNTIMES, help="where latency is measured (default: eager torch)"
    )
    args = parser.parse_args()
    if args.quick:
        args.repeats = 8
    # several compiled models of one class are timed together: room for all their shapes in dynamo's cache
    torch._dynamo.config.recompile_limit = 64
    t0 = time.perf_counter()
    rows = []
    for name in [m for m in args.models.split(",") if m]:
        rows += run_model(name, args)
    text = report(rows, args, time.perf_counter() - t0)
    print(text)
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        stem = "rounding" if args.runtime == "torch" else f"rounding_{args.runtime}"
        (RESULTS / f"{stem}.md").write_text(text)
        meta = {
            "hardware": devices.hardware("cpu"),
            "torch": torch.__version__,
            "repeats": args.repeats,
            "runtime": args.runtime,
        }
        (RESULTS / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
