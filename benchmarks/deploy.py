"""Deployable results: latency per runtime, the int8 paths, file sizes and export times, and a search on ORT latency.

Four parts, one run (results in ``benchmarks/results/deploy.md`` and ``deploy.json``):

1. **Pruning per runtime.** Each model (the reference models ``resnet20``, ``vgg``, ``mobilenetv2`` and the
   digits CNN) and its 50 % channel-pruned copy (``CompressionPlan.uniform(graph, 0.5, "l1")`` + ``compress``)
   are timed interleaved (:func:`~slimtune.compressors.compare_latency`, one thread, the thread's CPU clock,
   medians) in each runtime as :func:`~slimtune.compressors.measures.runtimes.runtime_model` runs them: eager
   PyTorch, ``torch.compile`` and ONNX Runtime (CPU execution provider, one intra-op thread), at batch 1 and 32.
   Reported: the pruned / original latency ratio per runtime and the *speedup efficiency*
   ``(original latency / pruned latency) / (original MACs / pruned MACs)`` (1 = the latency falls as the
   MACs do), and each runtime's original latency relative to eager.
2. **int8 paths.** fp32 eager, fp32 ONNX Runtime, slimtune's default int8 (``export_int8``: torchao PT2E,
   compiled), the deprecated torch.ao FX int8 (``method="fx"``) and ONNX Runtime static int8 in QDQ form
   (:func:`~slimtune.compressors.deploy.export_onnx_int8`), all interleaved at batch 1 and 32, on ResNet-20 and
   the digits CNN (calibrated on 256 samples: digits' training set, random images for ResNet-20), plus the
   50 %-pruned ResNet-20 through the default int8 path. Latency relative to fp32 eager, the relative L2 error
   of the outputs against fp32, and the digits accuracy of each.
3. **Files.** The 50 %-pruned model of each model written in each format: ``state`` (safetensors + plan,
   :func:`slimtune.save`), ``onnx``, ``pt2``, int8 (the PT2E program, ``save_int8``) and ONNX int8: bytes and
   seconds to export (checks included where the exporter checks).
4. **A search on ORT latency.** Two digits studies with equal budgets (``nsga2``, ``--trials`` trials, one
   fine-tune epochs, the same seed), objectives accuracy and latency at batch 32 on one thread: one measures
   latency eager (the default), the other in ONNX Runtime. From each study's complete trials within 0.5 pt of
   the best accuracy either study found, the model its own study ranks fastest is picked; the two picks are
   rebuilt and timed interleaved in ONNX Runtime (and eager, for reference).

Targets (issue 21): the default int8 path ≥ 2.5× faster than fp32 eager on ResNet-20 at batch 32; the
ORT-latency study's pick runs faster in ONNX Runtime than the eager-latency study's; channel rounding never
slower than unrounded at equal FLOPs in the runtime measured (``benchmarks/rounding.py --runtime ...``).

``python benchmarks/deploy.py [--models resnet20,vgg] [--repeats 30] [--trials 16] [--skip study] [--quick]
[--no-write]`` (≈ 20-30 min on 2 cores: compiling and exporting take most of it).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from slimtune import devices
from slimtune.compressors import CompressionPlan, compare_latency, compress, count_flops, trace
from slimtune.compressors.measures.runtimes import RUNTIMES, OrtModel, runtime_model
from slimtune.examples.digits import digits_cnn, load_digits_data, train
from slimtune.examples.models import REFERENCE_MODELS

RESULTS = Path(__file__).resolve().parent / "results"
MODELS: dict[str, tuple[Any, tuple[int, ...]]] = {
    "resnet20": REFERENCE_MODELS["resnet20"],
    "vgg": REFERENCE_MODELS["vgg"],
    "mobilenetv2": REFERENCE_MODELS["mobilenetv2"],
    "digits_cnn": (digits_cnn, (1, 8, 8)),
}
SPARSITY = 0.5
RUNTIME_NAMES = {"torch": "eager", "compile": "torch.compile", "onnxruntime": "ONNX Runtime"}
#: the accuracy margin of the study comparison: trials within this of the best accuracy seen qualify
ACCURACY_MARGIN = 0.005


def _log(msg: str) -> None:
    print(msg, flush=True)


def _digits() -> tuple[torch.nn.Module, Any, Any]:
    torch.manual_seed(0)
    train_set, val_set = load_digits_data()
    model = train(digits_cnn(), train_set, epochs=4, seed=0).eval()
    return model, train_set, val_set


def _model(name: str, digits: tuple[Any, Any, Any]) -> tuple[torch.nn.Module, torch.Tensor, list[torch.Tensor]]:
    """The model, one example input and calibration batches (digits: its training images)."""
    if name == "digits_cnn":
        model, train_set, _ = digits
        images = train_set.tensors[0]
        return model, images[:1], [images[i : i + 64] for i in range(0, 256, 64)]
    factory, shape = MODELS[name]
    torch.manual_seed(0)
    model = factory().eval()
    gen = torch.Generator().manual_seed(1)
    return model, torch.randn(1, *shape, generator=gen), [torch.randn(64, *shape, generator=gen) for _ in range(4)]


def _pruned(model: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module:
    return compress(model, CompressionPlan.uniform(trace(model, x), SPARSITY, "l1"), x).eval()


def _macs(model: torch.nn.Module, x: torch.Tensor) -> float:
    return float(count_flops(model, x)["macs"].sum())


def _time(models: dict[str, torch.nn.Module], x: torch.Tensor, batch: int, repeats: int) -> dict[str, float]:
    with torch.no_grad():
        res = compare_latency(
            models, x, batch_size=batch, threads=1, warmup=5, repeats=repeats, min_time_s=0.0, clock="cpu"
        )
    return {k: r.median_ms for k, r in res.items()}


# ------------------------------------------------------------------------------------------------ part 1
def pruning_per_runtime(name: str, digits: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    model, x, _ = _model(name, digits)
    small = _pruned(model, x)
    macs = _macs(small, x) / _macs(model, x)
    rows = []
    t0 = time.perf_counter()
    timed: dict[str, torch.nn.Module] = {}
    for runtime in RUNTIMES:
        timed[f"{runtime}/original"] = runtime_model(model, x, runtime)[0]
        timed[f"{runtime}/pruned"] = runtime_model(small, x, runtime)[0]
    build = time.perf_counter() - t0
    for batch, repeats in ((1, args.repeats * 5), (32, args.repeats)):
        # OrtModels take CPU inputs and have no parameters: every model here is on the CPU
        ms = _time(timed, x, batch, repeats)
        eager = ms["torch/original"]
        for runtime in RUNTIMES:
            ratio = ms[f"{runtime}/pruned"] / ms[f"{runtime}/original"]
            rows.append(
                {
                    "model": name,
                    "batch": batch,
                    "runtime": runtime,
                    "original_ms": ms[f"{runtime}/original"],
                    "pruned_ms": ms[f"{runtime}/pruned"],
                    "ratio": ratio,
                    "macs_ratio": macs,
                    "efficiency": (1 / ratio) / (1 / macs),
                    "original_vs_eager": ms[f"{runtime}/original"] / eager,
                }
            )
    row32 = {r["runtime"]: r["ratio"] for r in rows if r["batch"] == 32}
    _log(
        f"[runtimes] {name:>11}: MACs ×{macs:.2f}; pruned/original at batch 32: "
        + ", ".join(f"{RUNTIME_NAMES[k]} ×{v:.2f}" for k, v in row32.items())
        + f" ({build:.0f} s to compile/export, {time.perf_counter() - t0:.0f} s in all)"
    )
    return rows


# ------------------------------------------------------------------------------------------------ part 2
def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def int8_paths(name: str, digits: Any, args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    from slimtune.compressors.deploy import export_onnx_int8
    from slimtune.compressors.quantization import export_int8

    model, x, calib = _model(name, digits)
    variants: dict[str, torch.nn.Module] = {"fp32 eager": model}
    seconds: dict[str, float] = {}

    def timed(label: str, make: Any) -> None:
        t = time.perf_counter()
        variants[label] = make()
        seconds[label] = time.perf_counter() - t

    timed("fp32 ORT", lambda: runtime_model(model, x, "onnxruntime")[0])
    timed("int8 default (PT2E)", lambda: export_int8(model, x, calib))
    timed("int8 torch.ao FX", lambda: export_int8(model, x, calib, method="fx"))
    timed(
        "int8 ORT QDQ",
        lambda: OrtModel(export_onnx_int8(model, x, workdir / f"{name}-int8.onnx", calib).path),
    )
    if name == "resnet20":
        small = _pruned(model, x)
        timed("pruned 50 % + int8 default", lambda: export_int8(small, x, calib))
    # the FX kernels adapt to the first shape they run: a fresh copy per batch size
    fx = variants.pop("int8 torch.ao FX")
    rows = []
    for batch, repeats in ((1, args.repeats * 5), (32, args.repeats)):
        models = {**variants, "int8 torch.ao FX": copy.deepcopy(fx)}
        ms = _time(models, x, batch, repeats)
        for label, value in ms.items():
            rows.append(
                {
                    "model": name,
                    "batch": batch,
                    "variant": label,
                    "ms": value,
                    "vs_fp32_eager": value / ms["fp32 eager"],
                    "export_s": seconds.get(label),
                }
            )
    variants["int8 torch.ao FX"] = fx
    quality: dict[str, dict[str, float]] = {}
    check = digits[2].tensors[0] if name == "digits_cnn" else torch.cat(calib)[:128]
    with torch.no_grad():
        ref = model(check)
        for label, m in variants.items():
            if label.startswith("pruned"):
                continue
            out = m(check)
            q = {"rel_l2": _rel(out, ref)}
            if name == "digits_cnn":
                q["accuracy"] = float((out.argmax(1) == digits[2].tensors[1]).float().mean())
            quality[label] = q
    for r in rows:
        r.update(quality.get(r["variant"], {}))
    b32 = {r["variant"]: r["vs_fp32_eager"] for r in rows if r["batch"] == 32}
    _log(f"[int8] {name:>11} batch 32 vs fp32 eager: " + ", ".join(f"{k} ×{v:.2f}" for k, v in b32.items()))
    return rows


# ------------------------------------------------------------------------------------------------ part 3
def files(name: str, digits: Any, workdir: Path) -> list[dict[str, Any]]:
    import slimtune
    from slimtune.compressors.deploy import export_onnx, export_onnx_int8, export_pt2
    from slimtune.compressors.quantization import export_int8, save_int8

    model, x, calib = _model(name, digits)
    plan = CompressionPlan.uniform(trace(model, x), SPARSITY, "l1")
    small = compress(model, plan, x).eval()
    rows = []

    def record(fmt: str, path: Path, make: Any) -> None:
        t = time.perf_counter()
        make()
        rows.append({"model": name, "format": fmt, "bytes": path.stat().st_size, "seconds": time.perf_counter() - t})

    d = workdir / name
    d.mkdir(exist_ok=True)
    record(
        "state (safetensors + plan)",
        d / "m.safetensors",
        lambda: slimtune.save(small, plan, model, x, d / "m.safetensors"),
    )
    record("onnx (checked)", d / "m.onnx", lambda: export_onnx(small, x, d / "m.onnx"))
    record("pt2 (checked)", d / "m.pt2", lambda: export_pt2(small, x, d / "m.pt2"))
    record("int8 PT2E program", d / "m-int8.pt2", lambda: save_int8(export_int8(small, x, calib), d / "m-int8.pt2", x))
    record("onnx int8 QDQ (checked)", d / "m-int8.onnx", lambda: export_onnx_int8(small, x, d / "m-int8.onnx", calib))
    _log(f"[files] {name:>11}: " + ", ".join(f"{r['format'].split(' (')[0]} {r['bytes'] / 1e3:.0f} kB" for r in rows))
    return rows


# ------------------------------------------------------------------------------------------------ part 4
def study_comparison(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from optuna.trial import TrialState

    from slimtune.examples.digits import make_task
    from slimtune.trials import load_model, search

    task = make_task(finetune_epochs=2)
    x = task.example_inputs
    base_acc = task.evaluate(task.model)
    out: dict[str, Any] = {"trials": args.trials, "original_accuracy": base_acc}
    studies = {}
    for label, latency in (("eager", None), ("onnxruntime", {"runtime": "onnxruntime", "batch": 32, "threads": 1})):
        t0 = time.perf_counter()
        studies[label] = search(
            task,
            strategy="nsga2",
            objectives=("accuracy", "latency"),
            n_trials=args.trials,
            storage=f"sqlite:///{workdir / 'study.db'}",
            study_name=f"digits-{label}",
            seed=0,
            progress=False,
            latency=latency,
            measure_batch=32,
        )
        out[f"{label}_seconds"] = time.perf_counter() - t0
        _log(f"[study] {label}: {args.trials} trials in {out[f'{label}_seconds']:.0f} s")
    complete = {k: [t for t in s.get_trials() if t.state == TrialState.COMPLETE] for k, s in studies.items()}
    # the best accuracy either search found (the original's is reported beside it)
    best = max(t.user_attrs["measures"]["accuracy"] for ts in complete.values() for t in ts)
    picks = {}
    for label, trials in complete.items():
        ok = [t for t in trials if t.user_attrs["measures"]["accuracy"] >= best - ACCURACY_MARGIN]
        if not ok:
            out[f"{label}_pick"] = None
            continue
        t = min(ok, key=lambda t: t.user_attrs["measures"]["latency_abs"])
        picks[label] = (t, load_model(studies[label], t.number, task.model).eval())
        out[f"{label}_pick"] = {
            "trial": t.number,
            "accuracy": t.user_attrs["measures"]["accuracy"],
            "flops": t.user_attrs["measures"]["flops"],
            "own_latency_ms": t.user_attrs["measures"]["latency_abs"],
            "qualifying_trials": len(ok),
        }
    out["best_accuracy"] = best
    if len(picks) == 2:
        timed = {k: runtime_model(m, x, "onnxruntime")[0] for k, (_, m) in picks.items()}
        timed["original"] = runtime_model(task.model, x, "onnxruntime")[0]
        eager = {f"eager/{k}": m for k, (_, m) in picks.items()}
        ms = _time({**timed, **eager}, x, 32, args.repeats * 2)
        out["ort_ms"] = {k: ms[k] for k in timed}
        out["eager_ms"] = {k.split("/")[1]: ms[k] for k in eager}
        _log(
            f"[study] ORT latency of the picks at batch 32: eager-latency study {ms['eager']:.3f} ms, "
            f"ORT-latency study {ms['onnxruntime']:.3f} ms (original {ms['original']:.3f} ms)"
        )
    return out


# ------------------------------------------------------------------------------------------------ report
def _simd() -> str:
    try:
        flags = Path("/proc/cpuinfo").read_text().split("flags", 2)[1].split("\n", 1)[0].split()
    except (OSError, IndexError):
        return "SIMD unknown"
    has = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile") if f in flags]
    return ", ".join(has) or "no AVX2"


def report(data: dict[str, Any], args: argparse.Namespace, seconds: float) -> str:
    import onnxruntime
    import torchao

    lines = [
        "# Deployable results: latency per runtime, int8 paths, files, and a search on ORT latency",
        "",
        f"{devices.hardware('cpu')} ({platform.machine()}, {_simd()}); torch {torch.__version__}, torchao "
        f"{torchao.__version__}, onnxruntime {onnxruntime.__version__}; 1 thread, thread CPU clock, interleaved "
        f"medians of {args.repeats * 5} (batch 1) / {args.repeats} (batch 32) calls; load average at start "
        f"{data['load'][0]}, at end {data['load'][1]}; run {time.strftime('%Y-%m-%d')}, {seconds / 60:.1f} min.",
        "",
    ]
    rows = data.get("runtimes") or []
    if rows:
        lines += [
            f"## 1. {SPARSITY:.0%} channel pruning in each runtime",
            "",
            "Ratio: pruned / original latency in that runtime (lower is faster). Efficiency: (original / pruned "
            "latency) / (original / pruned MACs). *vs eager*: the original's latency in that runtime / eager.",
            "",
            "| model | batch | MACs ratio | "
            + " | ".join(f"{RUNTIME_NAMES[r]} ratio (eff.) | {RUNTIME_NAMES[r]} ms (vs eager)" for r in RUNTIMES)
            + " |",
            "|---|---:|---:|" + "---:|---:|" * len(RUNTIMES),
        ]
        keys = sorted({(r["model"], r["batch"]) for r in rows}, key=lambda k: (list(MODELS).index(k[0]), k[1]))
        for model, batch in keys:
            by = {r["runtime"]: r for r in rows if r["model"] == model and r["batch"] == batch}
            cells = [
                f"×{by[rt]['ratio']:.2f} ({by[rt]['efficiency']:.2f}) | {by[rt]['original_ms']:.3f} "
                f"(×{by[rt]['original_vs_eager']:.2f})"
                for rt in RUNTIMES
            ]
            lines.append(f"| {model} | {batch} | {by['torch']['macs_ratio']:.2f} | " + " | ".join(cells) + " |")
        lines.append("")
    rows = data.get("int8") or []
    if rows:
        lines += [
            "## 2. int8 paths against fp32 eager",
            "",
            "Latency relative to fp32 eager in the same interleaved run; rel. L2: output error against fp32 "
            "(digits: its validation set; ResNet-20: 128 random images); export: seconds to build (PT2E: "
            "including its first compile).",
            "",
            "| model | variant | batch 1 ms (vs fp32) | batch 32 ms (vs fp32) | rel. L2 | accuracy | export s |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for model in dict.fromkeys(r["model"] for r in rows):
            for variant in dict.fromkeys(r["variant"] for r in rows if r["model"] == model):
                by = {r["batch"]: r for r in rows if r["model"] == model and r["variant"] == variant}
                r1, r32 = by[1], by[32]
                acc = f"{r32['accuracy']:.4f}" if "accuracy" in r32 else "—"
                rel = f"{r32['rel_l2'] * 100:.2f} %" if "rel_l2" in r32 else "—"
                exp = f"{r32['export_s']:.1f}" if r32.get("export_s") is not None else "—"
                lines.append(
                    f"| {model} | {variant} | {r1['ms']:.3f} (×{r1['vs_fp32_eager']:.2f}) | {r32['ms']:.3f} "
                    f"(×{r32['vs_fp32_eager']:.2f}) | {rel} | {acc} | {exp} |"
                )
        lines.append("")
    rows = data.get("files") or []
    if rows:
        formats = list(dict.fromkeys(r["format"] for r in rows))
        lines += [
            f"## 3. Files of the {SPARSITY:.0%}-pruned models: bytes (seconds to write)",
            "",
            "| model | " + " | ".join(formats) + " |",
            "|---|" + "---:|" * len(formats),
        ]
        for model in dict.fromkeys(r["model"] for r in rows):
            by = {r["format"]: r for r in rows if r["model"] == model}
            lines.append(
                f"| {model} | " + " | ".join(f"{by[f]['bytes']:,} ({by[f]['seconds']:.1f} s)" for f in formats) + " |"
            )
        lines.append("")
    study = data.get("study")
    if study:
        lines += [
            "## 4. Searching on ORT latency against eager latency (digits, equal budgets)",
            "",
            f"`nsga2`, {study['trials']} trials each (2 fine-tune epochs), objectives accuracy and latency "
            "(batch 32, 1 thread), seed 0; "
            f"best accuracy found {study['best_accuracy']:.4f} (original {study['original_accuracy']:.4f}); each "
            f"study's pick: its fastest trial (by its own latency) within {ACCURACY_MARGIN * 100:.1f} pt of it.",
            "",
            "| study | pick | accuracy | FLOPs | its own latency ms | ORT ms (batch 32) | eager ms | search s |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for label in ("eager", "onnxruntime"):
            p = study.get(f"{label}_pick")
            if p is None:
                lines.append(f"| {label} latency | no qualifying trial | | | | | | {study[f'{label}_seconds']:.0f} |")
                continue
            ort = study.get("ort_ms", {}).get(label)
            eager = study.get("eager_ms", {}).get(label)
            lines.append(
                f"| {label} latency | {p['trial']} | {p['accuracy']:.4f} | {p['flops']:.3f} | "
                f"{p['own_latency_ms']:.3f} | {ort:.3f} | {eager:.3f} | {study[f'{label}_seconds']:.0f} |"
                if ort is not None
                else f"| {label} latency | {p['trial']} | {p['accuracy']:.4f} | {p['flops']:.3f} | "
                f"{p['own_latency_ms']:.3f} | — | — | {study[f'{label}_seconds']:.0f} |"
            )
        if "ort_ms" in study:
            lines.append(
                f"| original | — | {study['original_accuracy']:.4f} | 1.000 | — | "
                f"{study['ort_ms']['original']:.3f} | — | — |"
            )
        lines.append("")
    lines += ["## Targets", ""] + [f"- {t}" for t in targets(data)]
    return "\n".join(lines) + "\n"


def targets(data: dict[str, Any]) -> list[str]:
    out = []
    for r in data.get("int8") or []:
        if r["model"] == "resnet20" and r["batch"] == 32 and r["variant"] == "int8 default (PT2E)":
            speed = 1 / r["vs_fp32_eager"]
            out.append(
                f"default int8 (PT2E) on ResNet-20 at batch 32: {speed:.2f}× faster than fp32 eager "
                f"({'PASS' if speed >= 2.5 else 'FAIL'}, target ≥ 2.5×)"
            )
    study = data.get("study") or {}
    if "ort_ms" in study:
        e, o = study["ort_ms"]["eager"], study["ort_ms"]["onnxruntime"]
        out.append(
            f"ORT-latency study's pick {o:.3f} ms vs eager-latency study's {e:.3f} ms in ONNX Runtime "
            f"(×{o / e:.2f}; {'PASS' if o < e else 'FAIL'}, target: lower)"
        )
    elif study:
        out.append("study comparison: a study had no trial within the accuracy margin (see the table)")
    out.append(
        "channel rounding at equal FLOPs per runtime: `benchmarks/rounding.py --runtime onnxruntime|compile` "
        "(results/rounding_<runtime>.md)"
    )
    return out


def _load() -> list[float]:
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated: " + ", ".join(MODELS))
    parser.add_argument("--repeats", type=int, default=30, help="timed rounds at batch 32 (batch 1 gets 5x)")
    parser.add_argument("--trials", type=int, default=24, help="trials of each study in part 4")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: runtimes, int8, files, study")
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 repeats, 4 trials, two models")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.trials = 3, 4
        args.models = "digits_cnn,resnet20"
    skip = set(filter(None, args.skip.split(",")))
    torch._dynamo.config.recompile_limit = 64  # several compiled models of a class are timed together
    t0 = time.perf_counter()
    names = [m for m in args.models.split(",") if m]
    digits = _digits()
    data: dict[str, Any] = {"load": [_load(), None]}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if "runtimes" not in skip:
            data["runtimes"] = [r for n in names for r in pruning_per_runtime(n, digits, args)]
        if "int8" not in skip:
            data["int8"] = [
                r for n in names if n in ("resnet20", "digits_cnn") for r in int8_paths(n, digits, args, work)
            ]
        if "files" not in skip:
            data["files"] = [r for n in names for r in files(n, digits, work)]
        if "study" not in skip:
            data["study"] = study_comparison(args, work)
    data["load"][1] = _load()
    seconds = time.perf_counter() - t0
    text = report(data, args, seconds)
    print(text)
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "deploy.md").write_text(text)
        meta = {
            "hardware": devices.hardware("cpu"),
            "torch": torch.__version__,
            "repeats": args.repeats,
            "seconds": seconds,
            "median_load": statistics.fmean(data["load"][0]) if data["load"][0] else None,
        }
        (RESULTS / "deploy.json").write_text(json.dumps({"meta": meta, **data}, indent=1, default=str))


if __name__ == "__main__":
    main()
