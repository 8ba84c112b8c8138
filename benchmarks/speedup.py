#!/usr/bin/env python
"""Channel-pruning speedup benchmark: slimtune vs Torch-Pruning on the reference models.

For every model of :data:`slimtune.examples.models.REFERENCE_MODELS` and every channel sparsity
(default 25 / 50 / 75 %):

1. **slimtune** — ``trace`` → ``CompressionPlan.uniform(graph, s, "l1")`` → ``compress`` (a
   physically smaller model).
2. **Torch-Pruning** (``torch_pruning``, the reference) — a fresh copy of the same model pruned by
   ``tp.pruner.MetaPruner`` with ``MagnitudeImportance(p=1)``, ``pruning_ratio=s``,
   ``global_pruning=False``, the last ``nn.Linear`` ignored, one ``step()``. A failure is recorded
   as ``TP failed: ...`` and the run goes on.
3. **Measures** (slimtune's own): MACs and parameters of the three models, and latency at batch 1
   and batch 32 with one thread, the three models timed *interleaved* by ``compare_latency`` so
   that machine noise hits them alike (half the rounds in each cyclic order of the two pruned
   models, samples pooled — see :func:`compare_balanced`); medians; everything reported as
   ratios to the original.
4. **Speedup efficiency** = (orig latency / pruned latency) / (orig MACs / pruned MACs) at batch 32
   (target ≥ 0.8 at 50 %), and slimtune latency / TP latency (target ≤ 1.0).
5. **Latency lookup table** (``LatencyTable``, NetAdapt-style): built once per model at batch 32,
   ``predict(plan)`` vs the measured batch-32 latency of the slimtune model (target ≤ 15 % error).

Clock: by default latencies are the calling thread's CPU time (``clock="cpu"`` of
``compare_latency``; with one thread it equals the wall-clock latency of an idle machine but
ignores the time other processes on a shared machine hold the core). ``--clock wall`` measures
wall-clock time instead. The lookup table is built with the same clock as the measurements.

Outputs ``benchmarks/results/speedup.md`` (markdown table + header) and
``benchmarks/results/speedup.json`` (raw numbers). ``--merge`` re-runs only the given models and
replaces their rows in existing results (for re-running noise-hit models).

Usage::

    python benchmarks/speedup.py                         # everything (~5-10 min on 2 cores)
    python benchmarks/speedup.py --quick                 # smoke run
    python benchmarks/speedup.py --models resnet20 vgg --sparsities 0.5
    python benchmarks/speedup.py --models densenet --merge   # re-run one model, keep the others
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import importlib.metadata
import json
import math
import os
import platform
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimtune.compressors import CompressionPlan, compress, trace
from slimtune.compressors.measures import LatencyResult, compare_latency, measure

try:  # the lookup table may be missing in older checkouts
    from slimtune.compressors.measures import LatencyTable
except ImportError:  # pragma: no cover - depends on the checkout
    LatencyTable = None  # type: ignore[assignment,misc]

from slimtune.examples.models import REFERENCE_MODELS

RESULTS = Path(__file__).resolve().parent / "results"
EFF_TARGET = 0.8  # speedup efficiency at 50 % sparsity, batch 32
TP_TARGET = 1.0  # slimtune latency / TP latency
TP_NOISE = 1.05  # ratios up to this are reported as "within noise"
LUT_TARGET = 0.15  # |predicted / measured - 1|
SEED = 0


# =============================================================================================== args
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(REFERENCE_MODELS), choices=list(REFERENCE_MODELS),
                   metavar="NAME", help=f"subset of {', '.join(REFERENCE_MODELS)} (default: all)")
    p.add_argument("--sparsities", nargs="+", type=float, default=[0.25, 0.5, 0.75],
                   help="channel sparsities in [0, 1) (default: 0.25 0.5 0.75)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed rounds at batch 32 (default 30; batch 1 gets 10x as many)")
    p.add_argument("--repeats-b1", type=int, default=None, help="timed rounds at batch 1 (default 10 x --repeats)")
    p.add_argument("--min-time", type=float, default=None,
                   help="minimum timed seconds per comparison, all three models together (default 2)")
    p.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                   help="thread CPU time (default; steadier on shared machines) or wall-clock time")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1)")
    p.add_argument("--lut-grid", nargs="+", type=float, default=None,
                   help="kept-channel ratios of the lookup table grid (default: 1 - sparsities, plus 1.0)")
    p.add_argument("--lut-repeats", type=int, default=None, help="timed rounds of the lookup table build (default 8)")
    p.add_argument("--no-lut", action="store_true", help="skip the latency lookup table")
    p.add_argument("--no-tp", action="store_true", help="skip Torch-Pruning")
    p.add_argument("--quick", action="store_true", help="few repeats, for smoke runs (numbers are noisy)")
    p.add_argument("--merge", action="store_true",
                   help="replace only the rows of the models run in existing results files")
    p.add_argument("--out", type=Path, default=RESULTS, help=f"results folder (default {RESULTS})")
    p.add_argument("--no-write", action="store_true", help="print only, write no results files")
    a = p.parse_args(argv)
    for s in a.sparsities:
        if not 0.0 <= s < 1.0:
            p.error(f"sparsity {s} is not in [0, 1)")
    if a.repeats is None:
        a.repeats = 5 if a.quick else 30
    if a.repeats_b1 is None:
        a.repeats_b1 = 30 if a.quick else 10 * a.repeats
    if a.min_time is None:
        a.min_time = 0.0 if a.quick else 2.0
    if a.lut_repeats is None:
        a.lut_repeats = 3 if a.quick else 8
    if a.lut_grid is None:
        a.lut_grid = sorted({round(1.0 - s, 6) for s in a.sparsities if s > 0} | {1.0})
    return a


# =============================================================================================== pruning
def fresh_model(name: str) -> tuple[nn.Module, torch.Tensor]:
    """The reference model (seeded, eval mode) and a batch-1 example input."""
    factory, shape = REFERENCE_MODELS[name]
    torch.manual_seed(SEED)
    model = factory().eval()
    x = torch.randn(1, *shape, generator=torch.Generator().manual_seed(SEED))
    return model, x


def prune_slimtune(model: nn.Module, x: torch.Tensor, s: float, graph: Any) -> nn.Module:
    plan = CompressionPlan.uniform(graph, s, "l1")
    small = compress(model, plan, x)
    return small.eval()


def prune_tp(model: nn.Module, x: torch.Tensor, s: float) -> tuple[nn.Module, list[str]]:
    """Torch-Pruning's magnitude (L1) pruner on a copy of ``model``; returns it and TP's warnings."""
    import torch_pruning as tp

    m = copy.deepcopy(model).eval()
    linears = [mod for mod in m.modules() if isinstance(mod, nn.Linear)]
    ignored = [linears[-1]] if linears else []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pruner = tp.pruner.MetaPruner(
            m, x, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=s,
            global_pruning=False, ignored_layers=ignored,
        )
        pruner.step()
    with torch.no_grad():
        m.eval()(x)  # a model TP broke must fail here, not in the timing loop
    msgs = sorted({f"{w.category.__name__}: {w.message}" for w in caught
                   if "torch_pruning" in str(w.filename)})
    return m.eval(), msgs


def layer_channels(model: nn.Module) -> dict[str, tuple[int, int]]:
    """(in, out) channels / features of every Conv/Linear layer, by qualified name."""
    out = {}
    for n, m in model.named_modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            out[n] = (int(m.in_channels), int(m.out_channels))
        elif isinstance(m, nn.Linear):
            out[n] = (int(m.in_features), int(m.out_features))
    return out


def channel_diff(st: dict[str, tuple[int, int]], tp_: dict[str, tuple[int, int]]) -> list[dict[str, Any]]:
    """Layers whose (in, out) counts differ between the slimtune and the TP model."""
    diffs = []
    for name in sorted(set(st) | set(tp_), key=lambda n: (n not in st, n)):
        a, b = st.get(name), tp_.get(name)
        if a != b:
            diffs.append({"layer": name, "slimtune": a, "tp": b})
    return diffs


def _err(e: BaseException) -> str:
    msg = " ".join(str(e).split())
    return f"{type(e).__name__}: {msg[:240]}"


# =============================================================================================== one model
def run_model(name: str, a: argparse.Namespace) -> list[dict[str, Any]]:
    t_model = time.perf_counter()
    model, x = fresh_model(name)
    base = measure(model, x, latency=False)
    graph = trace(model, x)
    orig_channels = layer_channels(model)

    lut, lut_info = None, {}
    if not a.no_lut:
        if LatencyTable is None:
            lut_info = {"error": "LatencyTable not importable"}
        else:
            try:
                t0 = time.perf_counter()
                lut = LatencyTable.build(graph, x, batch_size=32, threads=a.threads, grid=a.lut_grid,
                                         repeats=a.lut_repeats, clock=a.clock)
                lut_info = {"build_s": time.perf_counter() - t0, "dense_ms": lut.dense_ms, "gamma": lut.gamma,
                            "configs": lut.meta.get("configs"), "points": lut.meta.get("points"),
                            "grid": list(a.lut_grid)}
            except Exception as e:  # noqa: BLE001 - report, never hide
                lut_info = {"error": _err(e)}
                traceback.print_exc()
        if lut_info.get("error"):
            print(f"  [{name}] LUT failed: {lut_info['error']}", flush=True)
        else:
            print(f"  [{name}] LUT built in {lut_info['build_s']:.1f} s ({lut_info['points']} points, "
                  f"dense {lut_info['dense_ms']:.2f} ms)", flush=True)

    rows = []
    for s in a.sparsities:
        t_row = time.perf_counter()
        row: dict[str, Any] = {"model": name, "sparsity": s, "clock": a.clock, "threads": a.threads,
                               "orig": {"macs": base.flops, "params": base.params}, "notes": []}
        models: dict[str, nn.Module] = {"orig": model}
        # --- slimtune
        try:
            t0 = time.perf_counter()
            small = prune_slimtune(model, x, s, graph)
            row["slimtune_prune_s"] = time.perf_counter() - t0
            models["slimtune"] = small
        except Exception as e:  # noqa: BLE001
            row["slimtune_error"] = _err(e)
            row["notes"].append(f"slimtune failed: {row['slimtune_error']}")
            traceback.print_exc()
        # --- Torch-Pruning
        if not a.no_tp:
            try:
                t0 = time.perf_counter()
                tpm, tp_warn = prune_tp(model, x, s)
                row["tp_prune_s"] = time.perf_counter() - t0
                row["tp_warnings"] = tp_warn
                models["tp"] = tpm
            except Exception as e:  # noqa: BLE001
                row["tp_error"] = _err(e)
                row["notes"].append(f"TP failed: {row['tp_error']}")
        # --- FLOPs / params / channels
        for key in ("slimtune", "tp"):
            if key in models:
                ms = measure(models[key], x, latency=False)
                row[key] = {"macs": ms.flops, "params": ms.params,
                            "macs_ratio": ms.flops / base.flops, "params_ratio": ms.params / base.params}
        if "slimtune" in models and "tp" in models:
            st_ch, tp_ch = layer_channels(models["slimtune"]), layer_channels(models["tp"])
            diffs = channel_diff(st_ch, tp_ch)
            row["channel_diffs"] = diffs
            row["kept_out_channels"] = {"orig": sum(v[1] for v in orig_channels.values()),
                                        "slimtune": sum(v[1] for v in st_ch.values()),
                                        "tp": sum(v[1] for v in tp_ch.values())}
            if diffs:
                shown = "; ".join(f"{d['layer']} {_io(d['slimtune'])} vs TP {_io(d['tp'])}" for d in diffs[:2])
                more = f" (+{len(diffs) - 2} more)" if len(diffs) > 2 else ""
                kc = row["kept_out_channels"]
                row["notes"].append(f"channels differ in {len(diffs)} layers (slimtune vs TP, in→out): "
                                    f"{shown}{more}; conv/linear out-channels kept {kc['slimtune']} vs {kc['tp']}")
        # --- latency, interleaved
        for bs, reps in ((1, a.repeats_b1), (32, a.repeats)):
            res, by_order = compare_balanced(models, x, bs, reps, a)
            lat = {k: {"median_ms": r.median_ms, "p10_ms": r.p10_ms, "p90_ms": r.p90_ms,
                       "n": len(r.samples_ms)} for k, r in res.items()}
            row[f"latency_b{bs}"] = lat
            row[f"latency_b{bs}_by_order"] = by_order
            o = lat["orig"]["median_ms"]
            for key in ("slimtune", "tp"):
                if key in lat:
                    row[key][f"lat_ratio_b{bs}"] = lat[key]["median_ms"] / o
                    # speedup efficiency: latency reduction / MACs reduction
                    row[key][f"efficiency_b{bs}"] = (o / lat[key]["median_ms"]) / (base.flops / row[key]["macs"])
            if "slimtune" in lat and "tp" in lat:
                row[f"st_over_tp_b{bs}"] = lat["slimtune"]["median_ms"] / lat["tp"]["median_ms"]
        # --- lookup table
        if lut is not None and "slimtune" in models:
            try:
                t0 = time.perf_counter()
                plan = CompressionPlan.uniform(graph, s, "l1")
                pred = lut.predict(plan)
                meas = row["latency_b32"]["slimtune"]["median_ms"]
                meas_orig = row["latency_b32"]["orig"]["median_ms"]
                row["lut"] = {
                    "predicted_ms": pred, "measured_ms": meas, "rel_error": pred / meas - 1.0,
                    "dense_ms": lut.dense_ms, "measured_orig_ms": meas_orig,
                    # error of the predicted speedup, free of run-to-run drift of the machine
                    "ratio_error": (pred / lut.dense_ms) / (meas / meas_orig) - 1.0,
                    "predict_s": time.perf_counter() - t0,
                }
            except Exception as e:  # noqa: BLE001
                row["lut"] = {"error": _err(e)}
                row["notes"].append(f"LUT predict failed: {row['lut']['error']}")
        elif lut_info.get("error"):
            row["lut"] = {"error": lut_info["error"]}
            row["notes"].append(f"LUT failed: {lut_info['error']}")
        row["lut_build"] = lut_info
        o32 = row["latency_b32"]["orig"]["median_ms"]
        if o32 < 1.0:
            row["notes"].append(f"latency is per-call overhead dominated (orig {o32 * 1e3:.0f} µs at batch 32): "
                                "MACs reductions cannot show in latency; read efficiency and LUT error with care.")
        row["row_s"] = time.perf_counter() - t_row
        print("  " + one_line(row), flush=True)
        rows.append(row)
    print(f"  [{name}] done in {time.perf_counter() - t_model:.1f} s", flush=True)
    return rows


def compare_balanced(
    models: dict[str, nn.Module], x: torch.Tensor, bs: int, reps: int, a: argparse.Namespace
) -> tuple[dict[str, LatencyResult], list[dict[str, Any]]]:
    """``compare_latency`` in both cyclic orders of the pruned models, samples pooled.

    ``compare_latency`` runs the models round-robin with a rotating start, so with three models
    one of the two pruned models follows the original in 2 of 3 turns and finds the caches
    holding the original's data; measured here, that position costs ~1-2 % at batch 1 (st/TP
    1.008 vs 0.995 on ResNet-20, 1.017 vs 0.989 on VGG with the orders swapped). Half the rounds
    run ``orig, slimtune, tp``, half ``orig, tp, slimtune``; the samples of both halves are
    pooled, so neither pruned model is favoured.
    """
    names = list(models)
    orders = [names]
    if len(names) == 3:
        orders.append([names[0], names[2], names[1]])
    pooled: dict[str, list[float]] = {n: [] for n in names}
    by_order = []
    for k, order in enumerate(orders):
        res = compare_latency({n: models[n] for n in order}, x, batch_size=bs, threads=a.threads,
                              warmup=10 if k == 0 else 5, repeats=max(1, math.ceil(reps / len(orders))),
                              min_time_s=a.min_time / len(orders), clock=a.clock)
        by_order.append({"order": order, **{n: res[n].median_ms for n in order}})
        for n in order:
            pooled[n] += res[n].samples_ms
    return {n: LatencyResult.from_samples([v / 1e3 for v in pooled[n]], bs, a.threads) for n in names}, by_order


def _io(c: tuple[int, int] | None) -> str:
    return "absent" if c is None else f"{c[0]}→{c[1]}"


# =============================================================================================== report
def _f(v: Any, fmt: str = "{:.2f}") -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)


def _g(row: dict[str, Any], key: str, field: str) -> Any:
    d = row.get(key)
    return d.get(field) if isinstance(d, dict) else None


def one_line(r: dict[str, Any]) -> str:
    return (f"[{r['model']} s={r['sparsity']:.2f}] MACs st {_f(_g(r, 'slimtune', 'macs_ratio'), '{:.3f}')} "
            f"tp {_f(_g(r, 'tp', 'macs_ratio'), '{:.3f}')} | b32 lat st {_f(_g(r, 'slimtune', 'lat_ratio_b32'), '{:.3f}')} "
            f"tp {_f(_g(r, 'tp', 'lat_ratio_b32'), '{:.3f}')} eff st {_f(_g(r, 'slimtune', 'efficiency_b32'))} "
            f"| st/tp b1 {_f(r.get('st_over_tp_b1'), '{:.3f}')} b32 {_f(r.get('st_over_tp_b32'), '{:.3f}')} "
            f"| LUT err {_f(_g(r, 'lut', 'rel_error'), '{:+.1%}')} | {r['row_s']:.1f} s")


COLUMNS = [
    ("model", "model"), ("s", "sparsity"),
    ("orig b1 ms", None), ("orig b32 ms", None),
    ("MACs st", None), ("MACs TP", None), ("params st", None), ("params TP", None),
    ("lat b1 st", None), ("lat b1 TP", None), ("lat b32 st", None), ("lat b32 TP", None),
    ("eff b32 st", None), ("eff b32 TP", None), ("st/TP b1", None), ("st/TP b32", None),
    ("LUT pred ms", None), ("meas ms", None), ("LUT err", None), ("LUT err (ratio)", None),
]


def table_cells(r: dict[str, Any]) -> list[str]:
    lut = r.get("lut") or {}
    eff = _g(r, "slimtune", "efficiency_b32")
    eff_s = _f(eff)
    if eff is not None and abs(r["sparsity"] - 0.5) < 1e-9:
        eff_s += " ✓" if eff >= EFF_TARGET else " ✗"
    return [
        r["model"], f"{r['sparsity']:.2f}",
        _ms(r.get("latency_b1", {}).get("orig", {}).get("median_ms")),
        _ms(r.get("latency_b32", {}).get("orig", {}).get("median_ms")),
        _f(_g(r, "slimtune", "macs_ratio"), "{:.3f}"), _f(_g(r, "tp", "macs_ratio"), "{:.3f}"),
        _f(_g(r, "slimtune", "params_ratio"), "{:.3f}"), _f(_g(r, "tp", "params_ratio"), "{:.3f}"),
        _f(_g(r, "slimtune", "lat_ratio_b1"), "{:.3f}"), _f(_g(r, "tp", "lat_ratio_b1"), "{:.3f}"),
        _f(_g(r, "slimtune", "lat_ratio_b32"), "{:.3f}"), _f(_g(r, "tp", "lat_ratio_b32"), "{:.3f}"),
        eff_s, _f(_g(r, "tp", "efficiency_b32")),
        _f(r.get("st_over_tp_b1"), "{:.3f}"), _tp_mark(r.get("st_over_tp_b32")),
        _ms(lut.get("predicted_ms")), _ms(lut.get("measured_ms")),
        _lut_mark(lut.get("rel_error")), _f(lut.get("ratio_error"), "{:+.1%}"),
    ]


def _ms(v: float | None) -> str:
    """Milliseconds with 3 significant digits (the MLP runs in tens of microseconds)."""
    if v is None:
        return "—"
    return f"{v:.1f}" if v >= 100 else f"{v:.3g}"


def _tp_mark(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v:.3f}" + (" ✓" if v <= TP_TARGET else " ≈" if v <= TP_NOISE else " ✗")


def _lut_mark(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v:+.1%}" + (" ✓" if abs(v) <= LUT_TARGET else " ✗")


def markdown_table(rows: list[dict[str, Any]]) -> str:
    head = [c for c, _ in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" if i < 2 else "---:" for i in range(len(head))) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(table_cells(r)) + " |")
    return "\n".join(lines)


def text_table(rows: list[dict[str, Any]]) -> str:
    head = [c for c, _ in COLUMNS]
    cells = [head] + [table_cells(r) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    return "\n".join("  ".join(c[i].rjust(widths[i]) if i > 1 else c[i].ljust(widths[i]) for i in range(len(head)))
                     for c in cells)


def targets(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Pass / fail of the three targets."""
    eff = [(r["model"], _g(r, "slimtune", "efficiency_b32")) for r in rows if abs(r["sparsity"] - 0.5) < 1e-9]
    eff = [(m, v) for m, v in eff if v is not None]
    tpr = [(r["model"], r["sparsity"], r.get("st_over_tp_b32"), r.get("st_over_tp_b1")) for r in rows]
    tpr32 = [(m, s, v) for m, s, v, _ in tpr if v is not None]
    tpr1 = [(m, s, v) for m, s, _, v in tpr if v is not None]
    lut = [(r["model"], r["sparsity"], (r.get("lut") or {}).get("rel_error")) for r in rows]
    lut = [(m, s, v) for m, s, v in lut if v is not None]
    return {
        "efficiency_50pct_b32": {
            "target": f">= {EFF_TARGET}", "passed": [m for m, v in eff if v >= EFF_TARGET],
            "failed": {m: round(v, 3) for m, v in eff if v < EFF_TARGET}},
        "slimtune_over_tp_b32": {
            "target": f"<= {TP_TARGET}", "passed": [f"{m}@{s}" for m, s, v in tpr32 if v <= TP_TARGET],
            "within_noise": {f"{m}@{s}": round(v, 3) for m, s, v in tpr32 if TP_TARGET < v <= TP_NOISE},
            "failed": {f"{m}@{s}": round(v, 3) for m, s, v in tpr32 if v > TP_NOISE}},
        "slimtune_over_tp_b1": {
            "target": f"<= {TP_TARGET}", "passed": [f"{m}@{s}" for m, s, v in tpr1 if v <= TP_TARGET],
            "within_noise": {f"{m}@{s}": round(v, 3) for m, s, v in tpr1 if TP_TARGET < v <= TP_NOISE},
            "failed": {f"{m}@{s}": round(v, 3) for m, s, v in tpr1 if v > TP_NOISE}},
        "lut_error_b32": {
            "target": f"<= {LUT_TARGET:.0%}", "passed": [f"{m}@{s}" for m, s, v in lut if abs(v) <= LUT_TARGET],
            "failed": {f"{m}@{s}": f"{v:+.1%}" for m, s, v in lut if abs(v) > LUT_TARGET}},
    }


def _targets_md(t: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    def fmt_fail(d: dict[str, Any]) -> str:
        return ", ".join(f"{k} ({v})" for k, v in d.items()) or "none"

    e, s32, s1, lut = (t["efficiency_50pct_b32"], t["slimtune_over_tp_b32"], t["slimtune_over_tp_b1"],
                       t["lut_error_b32"])
    n_eff = len(e["passed"]) + len(e["failed"])
    n32 = len(s32["passed"]) + len(s32["within_noise"]) + len(s32["failed"])
    n1 = len(s1["passed"]) + len(s1["within_noise"]) + len(s1["failed"])
    n_lut = len(lut["passed"]) + len(lut["failed"])
    return [
        f"- **Speedup efficiency ≥ {EFF_TARGET} at 50 %, batch 32 (slimtune):** {len(e['passed'])}/{n_eff} models pass; "
        f"fail: {fmt_fail(e['failed'])}.",
        f"- **slimtune latency ≤ TP latency, batch 32:** {len(s32['passed'])}/{n32} rows ≤ 1.0; "
        f"within noise (≤ {TP_NOISE}): {fmt_fail(s32['within_noise'])}; above {TP_NOISE}: {fmt_fail(s32['failed'])}.",
        f"- **slimtune latency ≤ TP latency, batch 1:** {len(s1['passed'])}/{n1} rows ≤ 1.0; "
        f"within noise (≤ {TP_NOISE}): {fmt_fail(s1['within_noise'])}; above {TP_NOISE}: {fmt_fail(s1['failed'])}.",
        f"- **LUT prediction error ≤ {LUT_TARGET:.0%}, batch 32:** {len(lut['passed'])}/{n_lut} rows pass; "
        f"fail: {fmt_fail(lut['failed'])}.",
    ]


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        tp_version = importlib.metadata.version("torch-pruning")
    except importlib.metadata.PackageNotFoundError:
        tp_version = None
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "torch_pruning": tp_version, "platform": platform.platform()}


def _load() -> str:
    """The 1 / 5 / 15 minute load averages (other jobs on a shared machine show up here)."""
    try:
        return " / ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def write_results(rows: list[dict[str, Any]], runs: list[dict[str, Any]], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    t = targets(rows)
    payload = {"format": "slimtune.benchmarks.speedup/1", "runs": runs, "targets": t, "rows": rows}
    (out / "speedup.json").write_text(json.dumps(payload, indent=1, default=str) + "\n", encoding="utf-8")
    (out / "speedup.md").write_text(markdown_report(rows, runs, t), encoding="utf-8")


def markdown_report(rows: list[dict[str, Any]], runs: list[dict[str, Any]], t: dict[str, Any]) -> str:
    last = runs[-1]
    m, cfg = last["machine"], last["config"]
    run_lines = [f"- run {i + 1}: {r['date']}, models {', '.join(r['config']['models'])}, "
                 f"{r['total_s'] / 60:.1f} min, load average (1/5/15 min) before {r.get('load_before')}, after {r.get('load_after')}"
                 for i, r in enumerate(runs)]
    notes = [f"- **{r['model']} @ {r['sparsity']:.2f}:** " + " ".join(r["notes"]) for r in rows if r.get("notes")]
    lines = [
        "# Channel-pruning speedup: slimtune vs Torch-Pruning",
        "",
        f"Generated by `benchmarks/speedup.py`. Machine: {m['cpu']}, {m['cores']} cores (shared); "
        f"Python {m['python']}, torch {m['torch']}, torch-pruning {m['torch_pruning']}. "
        f"Threads: {cfg['threads']}. Clock: `{cfg['clock']}`"
        + (" (thread CPU time: the idle-machine latency, ignores preemption by other jobs)" if cfg["clock"] == "cpu" else "")
        + f". Repeats (timed rounds, three models interleaved by `compare_latency`, half the rounds in each cyclic order of the two pruned models, samples pooled, medians): "
        f"batch 1 ≥ {cfg['repeats_b1']}, batch 32 ≥ {cfg['repeats']}, and ≥ {cfg['min_time']} s per comparison. "
        f"LUT: `LatencyTable.build(batch_size=32, grid={cfg['lut_grid']}, repeats={cfg['lut_repeats']})`, "
        "one per model." + (" **Quick (smoke) run — numbers are noisy.**" if cfg.get("quick") else ""),
        "",
        *run_lines,
        "",
        "## Targets",
        "",
        *_targets_md(t, rows),
        "",
        "## Results",
        "",
        "Ratios are pruned / original (MACs, params, median latency); `st` = slimtune "
        "(`CompressionPlan.uniform(graph, s, \"l1\")` + `compress`), `TP` = Torch-Pruning "
        "(`MetaPruner`, `MagnitudeImportance(p=1)`, last Linear ignored). "
        "`eff` = speedup efficiency = (orig latency / pruned latency) / (orig MACs / pruned MACs) at batch 32 "
        f"(target ≥ {EFF_TARGET} at 0.50). `st/TP` = slimtune latency / TP latency (target ≤ {TP_TARGET}; "
        f"≈ marks ≤ {TP_NOISE}, within measurement noise: two copies of one model differ by up to ~1.5 % at batch 1 "
        "here). `LUT pred` = `LatencyTable.predict(plan)` at batch 32, "
        "`meas` = measured slimtune latency at batch 32 (ms), `LUT err` = pred / meas − 1 "
        f"(target within ±{LUT_TARGET:.0%}); `LUT err (ratio)` = error of the predicted speedup "
        "(pred / LUT dense) / (meas / measured orig) − 1, free of drift between the LUT build and the measurement.",
        "",
        markdown_table(rows),
        "",
    ]
    if notes:
        lines += ["## Notes", "", *notes, ""]
    return "\n".join(lines)


# =============================================================================================== main
def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    torch.manual_seed(SEED)
    t_start = time.perf_counter()
    info = machine_info()
    run = {"date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"), "machine": info,
           "config": {"models": a.models, "sparsities": a.sparsities, "repeats": a.repeats,
                      "repeats_b1": a.repeats_b1, "min_time": a.min_time, "clock": a.clock, "threads": a.threads,
                      "lut_grid": a.lut_grid, "lut_repeats": a.lut_repeats, "quick": a.quick,
                      "lut": not a.no_lut, "tp": not a.no_tp},
           "load_before": _load()}
    print(f"slimtune speedup benchmark — torch {info['torch']}, torch-pruning {info['torch_pruning']}, "
          f"{info['cores']} cores, clock {a.clock}, threads {a.threads}", flush=True)
    rows: list[dict[str, Any]] = []
    for name in a.models:
        print(f"{name}:", flush=True)
        try:
            rows += run_model(name, a)
        except Exception as e:  # noqa: BLE001 - one broken model must not lose the others
            traceback.print_exc()
            rows.append({"model": name, "sparsity": float("nan"), "notes": [f"benchmark failed: {_err(e)}"],
                         "row_s": 0.0})
    run["total_s"] = time.perf_counter() - t_start
    run["load_after"] = _load()

    runs = [run]
    if a.merge and (a.out / "speedup.json").exists():
        old = json.loads((a.out / "speedup.json").read_text(encoding="utf-8"))
        done = set(a.models)
        order = list(REFERENCE_MODELS)
        kept = [r for r in old.get("rows", []) if r["model"] not in done]
        rows = sorted(kept + rows, key=lambda r: (order.index(r["model"]) if r["model"] in order else 99,
                                                  r.get("sparsity", 0.0)))
        runs = list(old.get("runs", [])) + [run]

    print()
    print(text_table(rows))
    print()
    for line in _targets_md(targets(rows), rows):
        print(line)
    for r in rows:
        if r.get("notes"):
            print(f"- {r['model']} @ {r['sparsity']}: " + " ".join(r["notes"]))
    print(f"\ntotal {run['total_s'] / 60:.1f} min (load average before {run['load_before']}, after {run['load_after']})")
    if not a.no_write:
        write_results(rows, runs, a.out)
        print(f"wrote {a.out / 'speedup.md'} and {a.out / 'speedup.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
