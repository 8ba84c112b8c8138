#!/usr/bin/env python
"""Any-model benchmark: every model of the zoo (:mod:`slimtune.examples.zoo`) through slimtune and
Torch-Pruning, side by side.

For each model (random weights, eval mode, batch 2 to trace):

1. **slimtune**: ``trace`` (which frontend captured it), the number of channel groups and of prunable
   ones, coverage (share of the Conv/Linear weights in prunable groups), then
   ``CompressionPlan.uniform(graph, 0.5, "l1")``: is the smaller model exactly the masked one (largest
   relative difference of the outputs on fresh inputs, target ≤ 1e-4), and its MACs and parameter
   ratios to the original.
2. **Torch-Pruning 1.6.1**, the reference: a fresh copy pruned by ``tp.pruner.MetaPruner`` with
   ``MagnitudeImportance(p=1)``, ``pruning_ratio=0.5``, the layers whose outputs are the model's output
   ignored, and, for attention, the q/k/v projections' head counts given with ``prune_num_heads=True``,
   ``head_pruning_ratio=0.5``, ``prune_head_dims=False`` (whole heads, as slimtune prunes them); the head
   counts of Hugging Face attention modules are updated after pruning as its examples do. Whether it
   runs (prunes and the pruned model still runs), its MACs and parameter ratios. A failure is recorded
   with its error and the run goes on.
   Torch-Pruning runs in a forked process with a time limit (``--tp-seconds``, 120 by default): on
   Llama its dependency search does not finish.
3. **Latency** at batch 8, one thread, the original and both pruned models timed interleaved
   (``compare_latency``, CPU clock), medians, as ratios to the original.

MACs are slimtune's ``count_flops`` for all three (it counts attention's QKᵀ and AV products).

Targets: every model exact; coverage ≥ 0.9 everywhere; no model that Torch-Pruning prunes and slimtune
refuses; on the transformers at 50 %, MACs and latency within 5 % of Torch-Pruning's where it runs
(judged one-sided: at most 5 % above; lower is better).

Outputs ``benchmarks/results/zoo.md`` and ``benchmarks/results/zoo.json``.

Usage::

    python benchmarks/zoo.py                 # every model (~2 min on 2 cores)
    python benchmarks/zoo.py --models hf_bert mixnet --quick
    python benchmarks/zoo.py --models hf_t5 --merge    # re-run one model, keep the other rows
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import importlib.metadata
import json
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimtune.compressors import CompressionPlan, compare_latency, compress, count_flops, trace
from slimtune.compressors._outputs import logits
from slimtune.compressors.frontends import output_tensors as _tensors
from slimtune.examples.zoo import ZOO

RESULTS = Path(__file__).resolve().parent / "results"
SPARSITY = 0.5
HEAD_ATTRS = ("num_attention_heads", "num_heads", "n_heads", "n_head")
QKV = ("query", "key", "value", "q_proj", "k_proj", "v_proj", "q", "k", "v", "qkv", "c_attn")


def macs(model: nn.Module, inputs: tuple) -> float:
    return float(count_flops(model, inputs)["macs"].sum())


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def relative_diff(a: Any, b: Any) -> float:
    worst = 0.0
    for x, y in zip(_tensors(a), _tensors(b)):
        if x.is_floating_point():
            if x.shape != y.shape:
                return float("inf")
            worst = max(worst, ((x - y).abs().max() / x.abs().max().clamp_min(1e-6)).item())
    return worst


def output_layers(graph) -> list[str]:
    """Layers producing channels that reach the model output (Torch-Pruning must leave them alone)."""
    out = []
    for g in graph.groups.values():
        if not g.prunable and g.reason and "model output" in g.reason:
            out += [m.layer for m in g.members if m.role == "out"]
    return out


def tp_prune(model: nn.Module, inputs: tuple, graph) -> tuple[nn.Module | None, str]:
    """Torch-Pruning at 50 %: ``(pruned model, "")`` or ``(None, error)``."""
    import torch_pruning as tp

    model = copy.deepcopy(model)
    ignored = [model.get_submodule(n) for n in output_layers(graph)]
    num_heads: dict[nn.Module, int] = {}
    attn: list[tuple[nn.Module, dict[str, nn.Module]]] = []
    for _, m in model.named_modules():
        heads = next((getattr(m, a) for a in HEAD_ATTRS if isinstance(getattr(m, a, None), int)), None)
        config = getattr(m, "config", None)
        if heads is None and config is not None and hasattr(m, "q_proj"):
            heads = getattr(config, "num_attention_heads", None)
        children = {n: c for n, c in m.named_children() if n in QKV}
        if heads is None or not children:
            continue
        kv = getattr(getattr(m, "config", None), "num_key_value_heads", None) or heads
        for n, c in children.items():
            num_heads[c] = kv if n in ("key", "value", "k_proj", "v_proj", "k", "v") else heads
        attn.append((m, children))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pruner = tp.pruner.MetaPruner(
                model, inputs, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=SPARSITY,
                ignored_layers=ignored, num_heads=num_heads, prune_num_heads=bool(num_heads),
                prune_head_dims=not num_heads, head_pruning_ratio=SPARSITY if num_heads else 0.0,
                output_transform=lambda out: logits(out).sum(),
            )
            pruner.step()
        for m, children in attn:  # keep the modules' head counts in step, as Torch-Pruning's examples do
            first = next(iter(children.values()))
            new = pruner.num_heads.get(first)
            for a in HEAD_ATTRS:
                if isinstance(getattr(m, a, None), int) and new is not None:
                    setattr(m, a, new)
            if hasattr(m, "all_head_size") and hasattr(first, "out_features"):
                m.all_head_size = first.out_features
        with torch.no_grad():
            model.eval()(*inputs)
    except Exception as e:  # noqa: BLE001 - the reference's failure is a result
        return None, f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
    return model, ""


def tp_prune_limited(model: nn.Module, inputs: tuple, graph, seconds: float) -> tuple[nn.Module | None, str]:
    """:func:`tp_prune` in a forked process with a time limit (its dependency search can run away)."""
    import multiprocessing as mp
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tp.pt"

        def child() -> None:
            pruned, err = tp_prune(model, inputs, graph)
            torch.save({"model": pruned, "error": err}, path)

        proc = mp.get_context("fork").Process(target=child)
        proc.start()
        proc.join(seconds)
        if proc.is_alive():
            proc.kill()
            proc.join()
            return None, f"timed out after {seconds:.0f} s (its dependency search did not finish)"
        if not path.exists():
            return None, f"crashed (exit code {proc.exitcode})"
        out = torch.load(path, weights_only=False)
        return out["model"], out["error"]


def run_model(name: str, quick: bool, tp_seconds: float = 120.0) -> dict[str, Any]:
    entry = ZOO[name]
    model, inputs = entry.build(batch=2)
    fresh = entry.inputs(3)
    row: dict[str, Any] = {"model": name, "kind": entry.kind}
    t0 = time.perf_counter()
    graph = trace(model, inputs)
    row["trace_s"] = round(time.perf_counter() - t0, 2)
    row.update(frontend=graph.frontend, groups=len(graph.groups), prunable=len(graph.prunable_groups()),
               coverage=round(graph.coverage(), 3))
    base_macs, base_params = macs(model, inputs), params(model)
    models = {"original": model}
    try:
        plan = CompressionPlan.uniform(graph, SPARSITY, "l1")
        masked = compress(model, plan, inputs, speedup=False, graph=graph).eval()
        small = compress(model, plan, inputs, graph=graph).eval()
        with torch.no_grad():
            row["max_rel_diff"] = relative_diff(masked(*fresh), small(*fresh))
        row["exact"] = row["max_rel_diff"] <= 1e-4
        row["macs"] = macs(small, inputs) / base_macs
        row["params"] = params(small) / base_params
        models["slimtune"] = small
    except Exception as e:  # noqa: BLE001
        row.update(exact=False, error=f"{type(e).__name__}: {e}")
    tp_model, err = tp_prune_limited(model, inputs, graph, tp_seconds)
    row["tp_runs"] = tp_model is not None
    row["tp_error"] = err
    if tp_model is not None:
        row["tp_macs"] = macs(tp_model, inputs) / base_macs
        row["tp_params"] = params(tp_model) / base_params
        row["tp_prunes"] = row["tp_macs"] < 0.99
        models["tp"] = tp_model
    res = compare_latency(models, inputs, batch_size=8, threads=1, warmup=5, repeats=20 if quick else 100,
                          min_time_s=0.2 if quick else 1.0, clock="cpu")
    base = res["original"].median_ms
    row["latency_ms"] = base
    if "slimtune" in res:
        row["latency"] = res["slimtune"].median_ms / base
    if "tp" in res:
        row["tp_latency"] = res["tp"].median_ms / base
    return row


def fmt(v: Any, spec: str = ".3f") -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "**no**"
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        "# Any-model benchmark: the zoo through slimtune and Torch-Pruning at 50 %",
        "",
        f"{meta['date']}, {meta['machine']}; torch {meta['torch']}, transformers {meta['transformers']}, "
        f"torch-pruning {meta['torch_pruning']}; {meta['seconds']:.0f} s. Ratios are to the original model; MACs by "
        "slimtune's count_flops (attention products included); latency at batch 8, one thread, interleaved, "
        "CPU clock, medians.",
        "",
        "| model | frontend | groups (prunable) | coverage | exact at 50 % (max rel. diff) | MACs | params | latency "
        "| TP runs | TP MACs | TP params | TP latency |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        tp_runs = "yes" if r.get("tp_runs") else f"no ({r.get('tp_error', '')[:70]})"
        lines.append(
            f"| {r['model']} | {r['frontend']} | {r['groups']} ({r['prunable']}) | {fmt(r['coverage'], '.2f')} "
            f"| {fmt(r.get('exact'))} ({fmt(r.get('max_rel_diff'), '.1e')}) | {fmt(r.get('macs'))} | {fmt(r.get('params'))} "
            f"| {fmt(r.get('latency'))} | {tp_runs} | {fmt(r.get('tp_macs'))} | {fmt(r.get('tp_params'))} "
            f"| {fmt(r.get('tp_latency'))} |"
        )
    lines += ["", "## Against the targets", ""]
    exact = [r["model"] for r in rows if not r.get("exact")]
    low = [r["model"] for r in rows if r["coverage"] < 0.9]
    refused = [r["model"] for r in rows if r.get("tp_prunes") and not (r.get("macs", 1.0) < 0.99)]
    lines.append(f"- every model exact: {'met' if not exact else 'not met: ' + ', '.join(exact)}")
    lines.append(f"- coverage ≥ 0.9 on every model: {'met' if not low else 'not met: ' + ', '.join(low)}")
    lines.append(f"- no model that Torch-Pruning prunes and slimtune refuses: {'met' if not refused else 'not met: ' + ', '.join(refused)}")
    for r in rows:
        if r["kind"] != "transformer" or not r.get("tp_runs"):
            continue
        dm = r["macs"] / r["tp_macs"] - 1
        dl = r["latency"] / r["tp_latency"] - 1
        verdict = "met" if dm <= 0.05 and dl <= 0.05 else "not met"
        if not r.get("tp_prunes"):
            verdict += ", Torch-Pruning does not prune it"
        lines.append(f"- {r['model']}: MACs {dm:+.1%}, latency {dl:+.1%} against Torch-Pruning (at most +5 %: {verdict})")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(ZOO))
    parser.add_argument("--quick", action="store_true", help="fewer latency repeats (smoke run)")
    parser.add_argument("--out", default=str(RESULTS / "zoo"))
    parser.add_argument("--tp-seconds", type=float, default=120.0, help="time limit of Torch-Pruning per model")
    parser.add_argument("--merge", action="store_true", help="replace (or add) these models' rows in the existing results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    rows = []
    for name in args.models:
        print(f"{name} ...", flush=True)
        rows.append(run_model(name, args.quick, args.tp_seconds))
        print("  ", {k: rows[-1].get(k) for k in ("frontend", "coverage", "exact", "macs", "latency", "tp_runs", "tp_macs", "tp_latency")}, flush=True)
    meta = {
        "date": _dt.date.today().isoformat(), "machine": f"{platform.machine()}, {torch.get_num_threads()} thread",
        "torch": torch.__version__, "transformers": importlib.metadata.version("transformers"),
        "torch_pruning": importlib.metadata.version("torch-pruning"), "seconds": time.perf_counter() - t0,
        "python": sys.version.split()[0],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.merge and out.with_suffix(".json").exists():
        old = json.loads(out.with_suffix(".json").read_text())
        mine = {r["model"]: r for r in rows}
        kept = [mine.pop(r["model"], r) for r in old["rows"]]
        rows = kept + list(mine.values())
        meta["seconds"] += float(old["meta"].get("seconds", 0.0))
        meta["merged"] = list(args.models)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=str))
    out.with_suffix(".md").write_text(markdown(rows, meta))
    print(markdown(rows, meta))


if __name__ == "__main__":
    main()
