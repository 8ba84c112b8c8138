#!/usr/bin/env python
"""int8 export benchmark: slimtune's ``export_int8`` vs fp32 (eager, ``torch.compile``) and torch.ao FX directly.

Models: the digits CNN (``pretrained("cnn")``, trained on first use) and ``resnet20()`` (random init,
3×32×32 inputs; no accuracy). Variants per model:

1. **fp32 eager** — the float model.
2. **fp32 compile** — ``torch.compile(model)`` (inductor), warmed up at both batch sizes before timing
   (``--no-compile`` skips it; a failure is recorded and the run goes on).
3. **slimtune int8** — ``slimtune.compressors.quantization.export.export_int8(model, x, calibration)``.
4. **torch.ao FX int8** — the reference pipeline run directly: ``prepare_fx(model,
   get_default_qconfig_mapping("x86"), example_inputs)`` → calibration → ``convert_fx``.

Measures: latency at batch 1 and 32 with 1 and 2 threads, the four variants timed *interleaved* by
``compare_latency`` (wall clock, medians; ratios to fp32 eager); serialized size
(``exported_size_bytes``: ``torch.save(state_dict)`` bytes) and its ratio; digits validation accuracy via
``evaluate_accuracy``. Calibration: 512 training images (digits), 4 × 32 random images (resnet20).

The header names the CPU and its SIMD flags (avx2, avx512*, vnni, amx): int8 speed depends on them.

Outputs ``benchmarks/results/quantization.md`` and ``benchmarks/results/quantization.json``.
``python benchmarks/quantization.py [--no-compile] [--repeats N] [--no-write]`` (~3–5 min on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimtune.compressors.measures import compare_latency
from slimtune.compressors.quantization.export import export_int8, exported_size_bytes
from slimtune.examples.digits import evaluate_accuracy, load_digits_data, pretrained
from slimtune.examples.models import resnet20

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = ("fp32", "fp32_compile", "int8_slimtune", "int8_torchao_fx")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    p.add_argument("--repeats", type=int, default=40, help="timed rounds at batch 32 (batch 1 gets 10×)")
    p.add_argument("--min-time", type=float, default=1.0, help="minimum seconds per latency comparison")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--no-write", action="store_true")
    return p.parse_args(argv)


def machine_info() -> dict[str, Any]:
    name, flags = platform.processor() or platform.machine(), []
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
        m = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
        name = m.group(1).strip() if m else name
        f = re.search(r"^flags\s*:\s*(.+)$", text, re.M)
        all_flags = set(f.group(1).split()) if f else set()
        flags = sorted(x for x in all_flags if x == "avx2" or x.startswith(("avx512", "amx")) or "vnni" in x)
    except OSError:
        pass
    return {
        "cpu": name,
        "cores": os.cpu_count(),
        "simd_flags": flags,
        "vnni": any("vnni" in x for x in flags),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "quantized_engine": torch.backends.quantized.engine,
        "platform": platform.platform(),
    }


def torchao_fx_int8(model: nn.Module, x: torch.Tensor, calibration: list[torch.Tensor]) -> nn.Module:
    """The torch.ao FX x86 static-PTQ pipeline, as its documentation shows it."""
    import copy

    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_fx(copy.deepcopy(model).eval(), get_default_qconfig_mapping("x86"), example_inputs=(x,))
        with torch.no_grad():
            for batch in calibration:
                prepared(batch)
        return convert_fx(prepared).eval()


def compiled(model: nn.Module, x: torch.Tensor, batches: list[int]) -> tuple[nn.Module | None, float, str | None]:
    start = time.perf_counter()
    try:
        c = torch.compile(model)
        with torch.inference_mode():
            for b in batches:
                for _ in range(2):
                    c(x[:1].expand(b, *x.shape[1:]).contiguous())
    except Exception as exc:  # noqa: BLE001 - recorded, the run goes on
        return None, time.perf_counter() - start, f"{type(exc).__name__}: {str(exc)[:200]}"
    return c, time.perf_counter() - start, None


def run_model(name: str, a: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    val_set = None
    if name == "digits_cnn":
        model = pretrained("cnn").eval()
        train_set, val_set = load_digits_data()
        calibration = [train_set.tensors[0][i : i + 64] for i in range(0, 512, 64)]
    else:
        model = resnet20().eval()
        calibration = [torch.randn(32, 3, 32, 32) for _ in range(4)]
    x = calibration[0][:1]

    row: dict[str, Any] = {"model": name, "notes": []}
    t = time.perf_counter()
    q_slim = export_int8(model, x, calibration)
    row["export_s"] = time.perf_counter() - t
    t = time.perf_counter()
    q_ref = torchao_fx_int8(model, x, calibration)
    row["torchao_fx_s"] = time.perf_counter() - t
    models: dict[str, nn.Module] = {"fp32": model, "int8_slimtune": q_slim, "int8_torchao_fx": q_ref}
    if not a.no_compile:
        c, secs, err = compiled(model, calibration[0], a.batches)
        row["compile_s"] = secs
        if c is None:
            row["notes"].append(f"torch.compile failed: {err}")
        else:
            models = {"fp32": model, "fp32_compile": c, "int8_slimtune": q_slim, "int8_torchao_fx": q_ref}
    else:
        row["notes"].append("torch.compile skipped (--no-compile)")

    sizes = {k: exported_size_bytes(m) for k, m in models.items() if k != "fp32_compile"}
    row["size_bytes"] = sizes
    row["size_ratio"] = {k: v / sizes["fp32"] for k, v in sizes.items()}
    if val_set is not None:
        row["accuracy"] = {k: evaluate_accuracy(m, val_set) for k, m in models.items()}
    with torch.no_grad():
        xs = calibration[1] if len(calibration) > 1 else calibration[0]
        ref = model(xs)
        row["rel_l2_vs_fp32"] = {
            k: float((models[k](xs) - ref).norm() / ref.norm()) for k in ("int8_slimtune", "int8_torchao_fx")
        }

    row["latency"] = {}
    for threads in a.threads:
        for batch in a.batches:
            repeats = a.repeats * (10 if batch == 1 else 1)
            res = compare_latency(
                models, x, batch_size=batch, threads=threads, repeats=repeats, min_time_s=a.min_time, warmup=10
            )
            key = f"b{batch}_t{threads}"
            base = res["fp32"].median_ms
            row["latency"][key] = {
                k: {"median_ms": r.median_ms, "p10_ms": r.p10_ms, "p90_ms": r.p90_ms, "n": len(r.samples_ms),
                    "ratio_vs_fp32": r.median_ms / base}
                for k, r in res.items()
            }
            print(f"  {name} {key}: " + ", ".join(f"{k} {r.median_ms:.3f} ms (×{r.median_ms / base:.2f})"
                                                   for k, r in res.items()), flush=True)
    return row


def _f(v: Any, fmt: str = "{:.2f}") -> str:
    return "—" if v is None else fmt.format(v)


def markdown_report(rows: list[dict[str, Any]], info: dict[str, Any], a: argparse.Namespace, secs: float) -> str:
    lines = [
        "# int8 export benchmark",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores; SIMD flags: {', '.join(info['simd_flags']) or 'none'} "
        f"(VNNI: {'yes' if info['vnni'] else 'no'}); torch {info['torch']}, quantized engine "
        f"`{info['quantized_engine']}`; Python {info['python']}.",
        f"Settings: batches {a.batches}, threads {a.threads}, {a.repeats} rounds at batch 32 (10× at batch 1), "
        f"≥ {a.min_time} s per comparison, wall clock, variants timed interleaved (`compare_latency`), medians. "
        f"Total run time {secs:.0f} s.",
        "",
        "Latency = median ms per call of the whole batch; ×r = ratio to fp32 eager in the same interleaved run "
        "(< 1 is faster). Latency on this shared machine varies ±20 % between runs: compare ratios within a row.",
        "",
        "| model | batch | threads | fp32 ms | fp32 compile | int8 slimtune | int8 torch.ao FX |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        for key, lat in r["latency"].items():
            b, t = key[1:].split("_t")

            def cell(k: str) -> str:
                if k not in lat:
                    return "—"
                return f"{lat[k]['median_ms']:.3f} (×{lat[k]['ratio_vs_fp32']:.2f})"

            lines.append(f"| {r['model']} | {b} | {t} | {lat['fp32']['median_ms']:.3f} | {cell('fp32_compile')} | "
                         f"{cell('int8_slimtune')} | {cell('int8_torchao_fx')} |")
    lines += ["", "| model | fp32 bytes | int8 slimtune bytes (ratio) | torch.ao FX bytes (ratio) | "
              "accuracy fp32 → slimtune / FX | rel. L2 err slimtune / FX | export s | compile s |",
              "|---|---:|---:|---:|---|---|---:|---:|"]
    for r in rows:
        s, sr = r["size_bytes"], r["size_ratio"]
        acc = r.get("accuracy")
        acc_s = (f"{acc['fp32']:.4f} → {acc['int8_slimtune']:.4f} / {acc['int8_torchao_fx']:.4f}" if acc else "— (random init)")
        e = r["rel_l2_vs_fp32"]
        lines.append(
            f"| {r['model']} | {s['fp32']} | {s['int8_slimtune']} ({sr['int8_slimtune']:.3f}) | "
            f"{s['int8_torchao_fx']} ({sr['int8_torchao_fx']:.3f}) | {acc_s} | "
            f"{100 * e['int8_slimtune']:.2f} % / {100 * e['int8_torchao_fx']:.2f} % | {r['export_s']:.1f} | "
            f"{_f(r.get('compile_s'), '{:.1f}')} |"
        )
    notes = [f"- {r['model']}: {n}" for r in rows for n in r["notes"]]
    b32 = [(r["model"], k, v["int8_slimtune"]["ratio_vs_fp32"]) for r in rows for k, v in r["latency"].items()
           if k.startswith("b32")]
    lines += [
        "",
        "Design targets (DESIGN.md quality bars): int8 ≥ 2× faster than fp32 at batch 32 → "
        + ", ".join(f"{m} {k}: {1 / ratio:.2f}× {'PASS' if ratio <= 0.5 else 'FAIL'}" for m, k, ratio in b32)
        + "; size ≤ 0.3× → "
        + ", ".join(f"{r['model']}: {r['size_ratio']['int8_slimtune']:.3f} "
                    f"{'PASS' if r['size_ratio']['int8_slimtune'] <= 0.3 else 'FAIL'}" for r in rows)
        + ".",
    ]
    if notes:
        lines += ["", "Notes:", *notes]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    info = machine_info()
    print(f"{info['cpu']} ({info['cores']} cores) flags: {' '.join(info['simd_flags'])}; torch {info['torch']}")
    start = time.perf_counter()
    rows = []
    for name in ("digits_cnn", "resnet20"):
        print(f"{name} ...", flush=True)
        rows.append(run_model(name, a))
    secs = time.perf_counter() - start
    md = markdown_report(rows, info, a, secs)
    print(md)
    if not a.no_write:
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "quantization.md").write_text(md, encoding="utf-8")
        payload = {"machine": info, "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
                   "total_s": secs, "rows": rows}
        (a.out / "quantization.json").write_text(json.dumps(payload, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
