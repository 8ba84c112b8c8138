#!/usr/bin/env python
"""GPU check: slimtune's pruned models, searches, mixed-precision fine-tuning and memory on one CUDA GPU.

One script for a machine with a CUDA GPU; it writes ``benchmarks/results/gpu.md`` and ``gpu.json``
naming the GPU (``torch.cuda.get_device_name``), the torch, CUDA and cuDNN versions, and measures:

1. **Pruned models against Torch-Pruning** (``torch-pruning==1.6.1``, the ``bench`` extra): every
   reference model of :data:`slimtune.examples.models.REFERENCE_MODELS`, the largest ResNet there
   (the CIFAR ResNet class with 9 blocks per stage and widths 64/128/256: ``resnet56_w64``, the
   compute-bound one; the module has no ResNet-50) and three transformers of the zoo
   (``vit_timm_style``, ``hf_bert``, ``hf_vit``), each pruned at 50 % by slimtune
   (``CompressionPlan.uniform(graph, 0.5, "l1")`` + ``compress``) and by Torch-Pruning (``MetaPruner``,
   ``MagnitudeImportance(p=1)``), built and pruned on the CPU by the code of ``benchmarks/speedup.py``
   and ``benchmarks/zoo.py``, then moved to the GPU. MACs (slimtune's ``count_flops``) and GPU latency
   at batch 1 and 64: CUDA events (``torch.cuda.Event(enable_timing=True)``) around each forward pass,
   the three models interleaved round by round (the order alternating), after a warm-up, with
   ``torch.backends.cudnn.benchmark = True``; medians. **Speedup efficiency** = latency speedup / MACs
   reduction, beside Torch-Pruning's paper anchor (ResNet-50 on ImageNet: 2.04× fewer MACs, 1.35×
   faster on a GPU, efficiency 0.66). A cross-check times the original models with slimtune's own
   ``measure_latency`` too.
2. **A 16-trial digits study** (``slimtune.examples.digits``, strategy ``random``, the task's 2
   fine-tune epochs per trial) on the GPU and on the CPU: wall time and trials per minute.
3. **Mixed-precision fine-tuning**: slimtune's ``finetune`` loop on ``resnet56_w64`` and ``resnet20``
   at batch 64 in fp32, bf16 and fp16 (``FinetuneConfig(amp=..., channels_last=...)``), steps per
   second, beside a plain PyTorch loop (``torch.autocast`` + ``torch.amp.GradScaler("cuda")``) as the
   reference.
4. **Peak memory** (``slimtune.compressors.measures.measure_memory``) of the original and pruned
   models at batch 64.

Targets printed with met / not met: "slimtune's pruned models at least as fast as Torch-Pruning's at
equal MACs" (slimtune latency / TP latency ≤ 1.05 × slimtune MACs / TP MACs, at batch 1 and 64, every
model; 5 % is the run-to-run noise of two copies of one model) and "speedup efficiency at batch 64 ≥ 0.7"
(every model; the launch-bound ones, whose original batch-64 pass takes under 1 ms, are listed apart:
there the GPU waits on kernel launches, not on arithmetic, and fewer MACs barely help).

Usage on a GPU machine (about 4 minutes on one H100 after the installs, 8 in all)::

    pip install -e ".[dev,bench]"       # torch-pruning 1.6.1, transformers (a CUDA build of torch must be installed)
    python benchmarks/gpu_check.py      # writes benchmarks/results/gpu.md and gpu.json
    python benchmarks/gpu_check.py --sections pruning memory --models resnet20 resnet56_w64

Without a CUDA GPU the script stops with a message saying why. ``--cpu-dry-run`` runs every section
on the CPU at tiny sizes (a check of the code paths, not a measurement) and writes
``benchmarks/results/gpu_dryrun.md`` / ``.json`` (not to be kept).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as _dt
import importlib.metadata
import json
import math
import platform
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the building code of speedup.py and zoo.py

import speedup as speedup_bench  # noqa: E402

from slimtune.compressors import CompressionPlan, compress, count_flops, trace  # noqa: E402
from slimtune.examples.models import REFERENCE_MODELS, ResNet20, randomize_batchnorm_  # noqa: E402
from slimtune.examples.zoo import ZOO  # noqa: E402

try:  # Torch-Pruning on the transformers, as zoo.py runs it
    import zoo as zoo_bench
except ImportError as _e:  # pragma: no cover - depends on the checkout
    zoo_bench = None
    ZOO_IMPORT_ERROR = f"benchmarks/zoo.py does not import ({type(_e).__name__}: {_e})"

RESULTS = HERE / "results"
SPARSITY = 0.5
EFF_TARGET = 0.7
TP_NOISE = 1.05
LAUNCH_BOUND_MS = 1.0
#: Torch-Pruning's paper (Fang et al., "DepGraph: Towards Any Structural Pruning", CVPR 2023): ResNet-50.
ANCHOR = {"model": "ResNet-50 (ImageNet)", "macs_reduction": 2.04, "gpu_speedup": 1.35}
BIG_RESNET = "resnet56_w64"
ZOO_MODELS = ["vit_timm_style", "hf_bert", "hf_vit"]
SECTIONS = ["pruning", "digits", "amp", "memory"]


# =============================================================================================== setup
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu-dry-run", action="store_true", help="every section on the CPU at tiny sizes (code paths)")
    p.add_argument("--sections", nargs="+", default=SECTIONS, choices=SECTIONS, help="default: all")
    p.add_argument("--models", nargs="+", default=None, help="pruning/memory models (default: all; see the docstring)")
    p.add_argument("--batch", type=int, default=None, help="the large batch (default 64; dry run 4)")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds per batch size (default 100; dry run 3)")
    p.add_argument("--digits-trials", type=int, default=None, help="trials of each digits study (default 16)")
    p.add_argument("--amp-steps", type=int, default=None, help="timed fine-tune steps per variant (default 40)")
    p.add_argument("--out", type=Path, default=None, help="results stem (default results/gpu or gpu_dryrun)")
    a = p.parse_args(argv)
    dry = a.cpu_dry_run
    all_models = [*REFERENCE_MODELS, BIG_RESNET, *ZOO_MODELS]
    if a.models is None:
        a.models = ["mlp", "resnet20", BIG_RESNET, "vit_timm_style", "hf_bert"] if dry else all_models
    unknown = [m for m in a.models if m not in all_models]
    if unknown:
        p.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(all_models)}")
    a.batch = a.batch or (4 if dry else 64)
    a.repeats = a.repeats or (3 if dry else 100)
    a.digits_trials = a.digits_trials or (2 if dry else 16)
    a.amp_steps = a.amp_steps or (2 if dry else 40)
    a.out = a.out or (RESULTS / ("gpu_dryrun" if dry else "gpu"))
    return a


def require_cuda() -> torch.device:
    """The CUDA device, or exit with a message saying why there is none."""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    if torch.version.cuda is None:
        why = f"this PyTorch ({torch.__version__}) is a CPU-only build; install a CUDA build of torch"
    else:
        why = f"PyTorch (CUDA {torch.version.cuda}) sees no CUDA device (no driver, or CUDA_VISIBLE_DEVICES hides it)"
    sys.exit(
        f"gpu_check.py needs a CUDA GPU: {why}.\n"
        "Run it on a GPU machine, or with --cpu-dry-run to check its code paths on the CPU (numbers meaningless)."
    )


def environment(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "device": str(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "cpu": speedup_bench.machine_info()["cpu"],
    }
    for package in ("torch-pruning", "transformers"):
        try:
            info[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            info[package] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            gpu=torch.cuda.get_device_name(device),
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            compute_capability=f"{props.major}.{props.minor}",
            cudnn=torch.backends.cudnn.version(),
            cudnn_benchmark=torch.backends.cudnn.benchmark,
            cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
            matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
            bf16_supported=torch.cuda.is_bf16_supported(),
        )
    else:
        info["gpu"] = "none (CPU dry run)"
    return info


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _err(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"


# =============================================================================================== models
def build(name: str, dry: bool) -> tuple[nn.Module, Callable[[int], tuple[Any, ...]]]:
    """A model (CPU, eval mode, seeded) and ``inputs(batch)`` building its inputs on the CPU."""
    if name in REFERENCE_MODELS:
        model, x = speedup_bench.fresh_model(name)
        shape = tuple(x.shape[1:])
        return model, lambda b: (torch.randn(b, *shape, generator=torch.Generator().manual_seed(b)),)
    if name == BIG_RESNET:
        torch.manual_seed(speedup_bench.SEED)
        width, blocks = (8, 2) if dry else (64, 9)
        model = randomize_batchnorm_(ResNet20(3, 10, width=width, blocks_per_stage=blocks)).eval()
        return model, lambda b: (torch.randn(b, 3, 32, 32, generator=torch.Generator().manual_seed(b)),)
    entry = ZOO[name]
    model, _ = entry.build(batch=2)

    def inputs(b: int) -> tuple[Any, ...]:
        torch.manual_seed(b)
        return entry.inputs(b)

    return model, inputs


def prune_both(name: str, model: nn.Module, inputs: tuple[Any, ...]) -> tuple[dict[str, nn.Module], list[str]]:
    """``{"orig", "slimtune", "tp"}`` (on the CPU; a failed pruner is left out) and notes."""
    models: dict[str, nn.Module] = {"orig": model}
    notes: list[str] = []
    graph = trace(model, inputs)
    try:
        plan = CompressionPlan.uniform(graph, SPARSITY, "l1")
        models["slimtune"] = compress(model, plan, inputs, graph=graph).eval()
    except Exception as e:  # noqa: BLE001 - a result, not a crash
        notes.append(f"slimtune failed: {_err(e)}")
    try:
        if name in ZOO:
            if zoo_bench is None:
                raise RuntimeError(f"not run: {ZOO_IMPORT_ERROR}")
            tp_model, error = zoo_bench.tp_prune(model, inputs, graph)
            if tp_model is None:
                raise RuntimeError(error)
            models["tp"] = tp_model.eval()
        else:
            models["tp"], _ = speedup_bench.prune_tp(model, inputs[0], SPARSITY)
    except Exception as e:  # noqa: BLE001
        notes.append(f"Torch-Pruning failed: {_err(e)}")
    return models, notes


def macs(model: nn.Module, inputs: tuple[Any, ...]) -> float:
    """MACs per sample (slimtune's ``count_flops``, attention products included)."""
    return float(count_flops(model, inputs)["macs"].sum())


# =============================================================================================== timing
def time_interleaved(
    models: dict[str, nn.Module], inputs: tuple[Any, ...], device: torch.device, warmup: int, repeats: int
) -> dict[str, float]:
    """Median milliseconds per forward pass of each model, round-robin, the order alternating.

    On a GPU each pass is bracketed by CUDA events and the stream is drained after it, so the next
    pass starts on an idle GPU: the time is what a caller waits, launch overhead included.
    """
    names = list(models)
    cuda = device.type == "cuda"
    samples: dict[str, list[float]] = {n: [] for n in names}
    with torch.inference_mode():
        for _ in range(warmup):
            for n in names:
                models[n](*inputs)
        synchronize(device)
        for r in range(repeats):
            order = names[r % len(names) :] + names[: r % len(names)]
            if r % 2:
                order.reverse()
            for n in order:
                if cuda:
                    start = torch.cuda.Event(enable_timing=True)
                    end = torch.cuda.Event(enable_timing=True)
                    start.record()
                    models[n](*inputs)
                    end.record()
                    end.synchronize()
                    samples[n].append(start.elapsed_time(end))
                else:
                    t0 = time.perf_counter()
                    models[n](*inputs)
                    samples[n].append((time.perf_counter() - t0) * 1e3)
    return {n: statistics.median(s) for n, s in samples.items()}


# =============================================================================================== 1. pruning
def section_pruning(a: argparse.Namespace, device: torch.device, out: dict[str, Any]) -> None:
    from slimtune.compressors.measures import measure_latency

    rows = out.setdefault("pruning", [])
    for name in a.models:
        t0 = time.perf_counter()
        row: dict[str, Any] = {"model": name, "notes": []}
        rows.append(row)
        try:
            model, make_inputs = build(name, a.cpu_dry_run)
            cpu_inputs = make_inputs(2)
            models, notes = prune_both(name, model, cpu_inputs)
            row["notes"] += notes
            row["macs"] = {k: macs(m, cpu_inputs) for k, m in models.items()}  # per sample
            row["params"] = {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()}
            on_device = {k: m.to(device) for k, m in models.items()}
            for bs in (1, a.batch):
                inputs = tuple(x.to(device) if isinstance(x, torch.Tensor) else x for x in make_inputs(bs))
                reps = a.repeats * (2 if bs == 1 else 1)
                row[f"latency_b{bs}"] = time_interleaved(on_device, inputs, device, 3 if a.cpu_dry_run else 20, reps)
            try:  # slimtune's own latency measure on the device, for the original model
                res = measure_latency(
                    on_device["orig"],
                    tuple(x.to(device) if isinstance(x, torch.Tensor) else x for x in make_inputs(1)),
                    batch_size=a.batch,
                    warmup=3 if a.cpu_dry_run else 10,
                    repeats=a.repeats // 2 or 1,
                    min_time_s=0.0,
                )
                row["slimtune_measure_latency_ms"] = res.median_ms
            except Exception as e:  # noqa: BLE001
                row["notes"].append(f"measure_latency failed: {_err(e)}")
            derive(row, a.batch)
            out["_models"][name] = (models, make_inputs)
        except Exception as e:  # noqa: BLE001 - one model must not lose the others
            traceback.print_exc()
            row["notes"].append(f"benchmark failed: {_err(e)}")
        row["seconds"] = round(time.perf_counter() - t0, 1)
        print("  " + pruning_line(row, a.batch), flush=True)


def derive(row: dict[str, Any], batch: int) -> None:
    """Ratios, speedup efficiencies and slimtune / TP comparisons of one pruning row."""
    macs = row["macs"]
    for bs in (1, batch):
        lat = row[f"latency_b{bs}"]
        for k in ("slimtune", "tp"):
            if k in lat:
                speedup = lat["orig"] / lat[k]
                reduction = macs["orig"] / macs[k]
                row.setdefault(k, {})[f"speedup_b{bs}"] = speedup
                row[k][f"efficiency_b{bs}"] = speedup / reduction
                row[k]["macs_ratio"] = macs[k] / macs["orig"]
        if "slimtune" in lat and "tp" in lat:
            # latency ratio against the ratio it would have at equal work: <= 1 means as fast per MAC
            row[f"st_over_tp_b{bs}"] = lat["slimtune"] / lat["tp"]
            row[f"st_over_tp_per_mac_b{bs}"] = (lat["slimtune"] / lat["tp"]) / (macs["slimtune"] / macs["tp"])


def pruning_line(row: dict[str, Any], batch: int) -> str:
    st, tp = row.get("slimtune", {}), row.get("tp", {})
    return (
        f"[{row['model']}] MACs st {_f(st.get('macs_ratio'))} tp {_f(tp.get('macs_ratio'))} | "
        f"speedup b1 st {_f(st.get('speedup_b1'))} tp {_f(tp.get('speedup_b1'))} | b{batch} st "
        f"{_f(st.get(f'speedup_b{batch}'))} tp {_f(tp.get(f'speedup_b{batch}'))} | eff b{batch} st "
        f"{_f(st.get(f'efficiency_b{batch}'))} tp {_f(tp.get(f'efficiency_b{batch}'))} | st/TP per MAC b1 "
        f"{_f(row.get('st_over_tp_per_mac_b1'))} b{batch} {_f(row.get(f'st_over_tp_per_mac_b{batch}'))} | "
        f"{row.get('seconds', 0):.1f} s" + (f" | {'; '.join(row['notes'])}" if row["notes"] else "")
    )


# =============================================================================================== 2. digits
def section_digits(a: argparse.Namespace, device: torch.device, out: dict[str, Any]) -> None:
    import slimtune
    from slimtune.examples.digits import load_digits_data, make_task

    epochs = 1 if a.cpu_dry_run else 2
    result: dict[str, Any] = {"trials": a.digits_trials, "strategy": "random", "finetune_epochs": epochs, "runs": {}}
    out["digits"] = result
    with tempfile.TemporaryDirectory() as tmp:
        task = make_task("cnn", finetune_epochs=epochs, cache_dir=Path(tmp) / "cache")
        task.evaluate = evaluate_on_model_device(load_digits_data()[1])
        for label, dev in (("gpu", device), ("cpu", torch.device("cpu"))):
            if label == "gpu" and device.type != "cuda":
                label = "device (dry run: cpu)"
            t0 = time.perf_counter()
            try:
                study = slimtune.search(
                    task,
                    strategy="random",
                    n_trials=a.digits_trials,
                    storage=f"sqlite:///{tmp}/{label.split()[0]}.db",
                    study_name=f"digits-{label.split()[0]}",
                    progress=False,
                    save_models="none",
                    device=str(dev),
                )
                wall = time.perf_counter() - t0
                done = [t for t in study.trials if t.state.name == "COMPLETE"]
                starts = [t.datetime_start for t in done if t.datetime_start]
                ends = [t.datetime_complete for t in done if t.datetime_complete]
                span = (max(ends) - min(starts)).total_seconds() if starts and ends else math.nan
                best = max((t.values[0] for t in done if t.values), default=math.nan)
                result["runs"][label] = {
                    "device": str(dev),
                    "complete": len(done),
                    "failed": sum(t.state.name == "FAIL" for t in study.trials),
                    "wall_s": wall,
                    "trials_span_s": span,
                    "trials_per_min": len(done) / span * 60 if span and span > 0 else math.nan,
                    "trials_per_min_wall": len(done) / wall * 60,
                    "best_accuracy": best,
                }
            except Exception as e:  # noqa: BLE001
                traceback.print_exc()
                result["runs"][label] = {"device": str(dev), "error": _err(e), "wall_s": time.perf_counter() - t0}
            print(f"  digits on {label}: {result['runs'][label]}", flush=True)


def evaluate_on_model_device(val_set: Any) -> Callable[[nn.Module], float]:
    """Digits' validation accuracy with the validation tensors on the evaluated model's device
    (``digits.evaluate_accuracy`` iterates CPU tensors), copied there once per device."""
    from torch.utils.data import TensorDataset

    from slimtune import devices
    from slimtune.examples.digits import evaluate_accuracy

    copies: dict[str, Any] = {}

    def evaluate(model: nn.Module) -> float:
        dev = devices.model_device(model)
        if str(dev) not in copies:
            copies[str(dev)] = TensorDataset(*(t.to(dev) for t in val_set.tensors))
        return evaluate_accuracy(model, copies[str(dev)])

    return evaluate


# =============================================================================================== 3. AMP
def section_amp(a: argparse.Namespace, device: torch.device, out: dict[str, Any]) -> None:
    from slimtune.compressors.training import FinetuneConfig, finetune

    rows = out.setdefault("amp", [])
    bs = a.batch
    cuda = device.type == "cuda"
    variants = [
        ("fp32", None, False),
        ("bf16", "bf16", False),
        ("fp16", "fp16", False),
        ("bf16 + channels_last", "bf16", True),
        ("fp16 + channels_last", "fp16", True),
    ]
    for name in ["resnet20", BIG_RESNET]:
        model, make_inputs = build(name, a.cpu_dry_run)
        g = torch.Generator().manual_seed(0)
        batches = [
            (make_inputs(bs)[0].to(device), torch.randint(0, 10, (bs,), generator=g).to(device)) for _ in range(8)
        ]
        for label, amp, channels_last in variants:
            row: dict[str, Any] = {"model": name, "batch": bs, "variant": label}
            rows.append(row)
            try:
                config = {"steps": a.amp_steps, "optimizer": "sgd", "lr": 0.01, "amp": amp}
                config["channels_last"] = channels_last
                m = copy.deepcopy(model).to(device)
                finetune(m, batches, FinetuneConfig(**{**config, "steps": 3}))  # warm-up (cuDNN autotuning)
                synchronize(device)
                t0 = time.perf_counter()
                res = finetune(m, batches, FinetuneConfig(**config))
                synchronize(device)
                row["slimtune_steps_per_s"] = res.steps / (time.perf_counter() - t0)
                row["final_loss"] = res.losses[-1] if res.losses else None
            except Exception as e:  # noqa: BLE001
                row["slimtune_error"] = _err(e)
            if not channels_last:
                try:
                    row["plain_steps_per_s"] = plain_loop(
                        copy.deepcopy(model).to(device), batches, amp, a.amp_steps, cuda
                    )
                except Exception as e:  # noqa: BLE001
                    row["plain_error"] = _err(e)
            print(f"  amp {row}", flush=True)
    for name in ["resnet20", BIG_RESNET]:
        base = next((r for r in rows if r["model"] == name and r["variant"] == "fp32"), {})
        for r in rows:
            if r["model"] == name and base.get("slimtune_steps_per_s") and r.get("slimtune_steps_per_s"):
                r["slimtune_speedup"] = r["slimtune_steps_per_s"] / base["slimtune_steps_per_s"]
            if r["model"] == name and base.get("plain_steps_per_s") and r.get("plain_steps_per_s"):
                r["plain_speedup"] = r["plain_steps_per_s"] / base["plain_steps_per_s"]


def plain_loop(model: nn.Module, batches: list[Any], amp: str | None, steps: int, cuda: bool) -> float:
    """Steps per second of a hand-written SGD loop (the reference for slimtune's loop)."""
    device_type = "cuda" if cuda else "cpu"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp or "")
    scaler = torch.amp.GradScaler(device_type, enabled=amp == "fp16")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    model.train()

    def run(n: int) -> None:
        for i in range(n):
            x, y = batches[i % len(batches)]
            with torch.autocast(device_type, dtype=dtype, enabled=dtype is not None):
                loss = loss_fn(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

    run(3)
    device = torch.device(device_type)
    synchronize(device)
    t0 = time.perf_counter()
    run(steps)
    synchronize(device)
    return steps / (time.perf_counter() - t0)


# =============================================================================================== 4. memory
def section_memory(a: argparse.Namespace, device: torch.device, out: dict[str, Any]) -> None:
    from slimtune.compressors.measures import measure_memory

    rows = out.setdefault("memory", [])
    for name in a.models:
        row: dict[str, Any] = {"model": name, "batch": a.batch}
        rows.append(row)
        try:
            if name not in out["_models"]:
                model, make_inputs = build(name, a.cpu_dry_run)
                out["_models"][name] = (prune_both(name, model, make_inputs(2))[0], make_inputs)
            models, make_inputs = out["_models"][name]
            inputs = make_inputs(1)
            for k, m in models.items():
                res = measure_memory(m.to(device), inputs, batch_size=a.batch)
                row[k] = {"peak_mib": res.peak_bytes / 2**20, "weights_mib": res.weights_bytes / 2**20}
            for k in ("slimtune", "tp"):
                if k in row:
                    row[k]["ratio"] = row[k]["peak_mib"] / row["orig"]["peak_mib"]
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            row["error"] = _err(e)
        print(f"  memory {row}", flush=True)


# =============================================================================================== targets, report
def targets(out: dict[str, Any], batch: int) -> dict[str, Any]:
    rows = [r for r in out.get("pruning", []) if "latency_b1" in r]
    per_mac = {
        f"b{bs}": {r["model"]: r[f"st_over_tp_per_mac_b{bs}"] for r in rows if f"st_over_tp_per_mac_b{bs}" in r}
        for bs in (1, batch)
    }
    slower = {f"{m}@{b}": round(v, 3) for b, d in per_mac.items() for m, v in d.items() if v > TP_NOISE}
    compared = sum(len(d) for d in per_mac.values())
    eff = {
        r["model"]: r["slimtune"][f"efficiency_b{batch}"]
        for r in rows
        if f"efficiency_b{batch}" in r.get("slimtune", {})
    }
    bound = {r["model"] for r in rows if r[f"latency_b{batch}"]["orig"] < LAUNCH_BOUND_MS}
    below = {m: round(v, 3) for m, v in eff.items() if v < EFF_TARGET}
    busy = {m: v for m, v in eff.items() if m not in bound}
    return {
        "st_vs_tp": {
            "line": "slimtune's pruned models at least as fast as Torch-Pruning's at equal MACs",
            "met": compared > 0 and not slower,
            "compared": compared,
            "slower_than_noise": slower,
        },
        "efficiency": {
            "line": f"speedup efficiency at batch {batch} ≥ {EFF_TARGET}",
            "met": bool(eff) and not below,
            "below": below,
            "compute_bound_met": bool(busy) and all(v >= EFF_TARGET for v in busy.values()),
            "launch_bound": sorted(bound & set(eff)),
            "anchor": ANCHOR["gpu_speedup"] / ANCHOR["macs_reduction"],
        },
    }


def target_lines(t: dict[str, Any]) -> list[str]:
    s, e = t["st_vs_tp"], t["efficiency"]
    fmt = lambda d: ", ".join(f"{k} ({v})" for k, v in d.items()) or "none"  # noqa: E731
    if not s["compared"]:
        return [f"- {s['line']}: **not measured**", f"- {e['line']}: **not measured**"]
    return [
        f"- {s['line']}: **{'met' if s['met'] else 'not met'}** ({s['compared']} comparisons; slimtune / TP latency "
        f"per MAC above {TP_NOISE}: {fmt(s['slower_than_noise'])})",
        f"- {e['line']}: **{'met' if e['met'] else 'not met'}** (below: {fmt(e['below'])}); on the compute-bound "
        f"models (original ≥ {LAUNCH_BOUND_MS} ms): **{'met' if e['compute_bound_met'] else 'not met'}**; "
        f"launch-bound: {', '.join(e['launch_bound']) or 'none'}. Torch-Pruning's anchor, {ANCHOR['model']}: "
        f"{ANCHOR['macs_reduction']}× fewer MACs, {ANCHOR['gpu_speedup']}× faster, efficiency {e['anchor']:.2f}",
    ]


def _f(v: Any, spec: str = ".3f") -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def _row(*cells: Any) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def markdown(out: dict[str, Any], a: argparse.Namespace) -> str:
    env, b = out["environment"], a.batch
    dry = " --cpu-dry-run (code paths only: NOT a measurement)" if a.cpu_dry_run else ""
    gpu = f"**{env['gpu']}**"
    if "cudnn" in env:
        gpu += f" ({env['gpu_memory_gib']} GiB, compute capability {env['compute_capability']})"
    lines = [
        "# GPU check: pruned-model speed, searches, mixed precision and memory",
        "",
        f"Generated by `benchmarks/gpu_check.py`{dry} on {env['date']}. GPU: {gpu}; torch {env['torch']}, "
        f"CUDA {env['cuda']}, cuDNN {env.get('cudnn')}, torch-pruning {env['torch-pruning']}, transformers "
        f"{env['transformers']}, Python {env['python']}; host CPU {env['cpu']}. cuDNN benchmark mode on; TF32 for "
        f"convolutions {env.get('cudnn_allow_tf32')}, for matmuls {env.get('matmul_allow_tf32')} (PyTorch's "
        f"defaults). {out['total_s'] / 60:.1f} min.",
        "",
        "## Targets",
        "",
        *target_lines(out["targets"]),
        "",
    ]
    if out.get("pruning"):
        lines += _pruning_md(out["pruning"], a)
    if out.get("digits"):
        lines += _digits_md(out["digits"])
    if out.get("amp"):
        lines += _amp_md(out["amp"], b)
    if out.get("memory"):
        lines += _memory_md(out["memory"], b)
    if out["errors"]:
        lines += ["## Sections that failed", "", *[f"- {e}" for e in out["errors"]], ""]
    return "\n".join(lines)


def _pruning_md(rows: list[dict[str, Any]], a: argparse.Namespace) -> list[str]:
    b = a.batch
    anchor = ANCHOR["gpu_speedup"] / ANCHOR["macs_reduction"]
    lines = [
        "## Pruned at 50 %: slimtune (st) and Torch-Pruning (TP)",
        "",
        "MACs per sample relative to the original; latency = median ms per forward pass (CUDA events, "
        f"interleaved, {a.repeats * 2} rounds at batch 1, {a.repeats} at batch {b}); speedup = original / pruned "
        "latency; eff = speedup / MACs reduction; st/TP per MAC = (st latency / TP latency) / (st MACs / TP MACs) "
        f"(≤ {TP_NOISE}: as fast at equal MACs); `measure_latency` = slimtune's measure of the original at "
        f"batch {b} (ms), beside this script's timer.",
        "",
        _row(
            "model",
            "MACs orig (M)",
            "MACs st",
            "MACs TP",
            "orig b1 ms",
            "speedup b1 st",
            "TP",
            f"orig b{b} ms",
            f"speedup b{b} st",
            "TP",
            f"eff b{b} st",
            "TP",
            "st/TP per MAC b1",
            f"b{b}",
            f"measure_latency b{b}",
        ),
        "|---|" + "---:|" * 14,
    ]
    for r in rows:
        if "latency_b1" not in r:
            lines.append(_row(r["model"], "failed: " + "; ".join(r["notes"])))
            continue
        st, tp = r.get("slimtune", {}), r.get("tp", {})
        lines.append(
            _row(
                r["model"],
                f"{r['macs']['orig'] / 1e6:.3g}",
                _f(st.get("macs_ratio")),
                _f(tp.get("macs_ratio")),
                f"{r['latency_b1']['orig']:.3f}",
                _f(st.get("speedup_b1"), ".2f"),
                _f(tp.get("speedup_b1"), ".2f"),
                f"{r[f'latency_b{b}']['orig']:.3f}",
                _f(st.get(f"speedup_b{b}"), ".2f"),
                _f(tp.get(f"speedup_b{b}"), ".2f"),
                _f(st.get(f"efficiency_b{b}"), ".2f"),
                _f(tp.get(f"efficiency_b{b}"), ".2f"),
                _f(r.get("st_over_tp_per_mac_b1")),
                _f(r.get(f"st_over_tp_per_mac_b{b}")),
                _f(r.get("slimtune_measure_latency_ms")),
            )
        )
    notes = [f"- {r['model']}: {'; '.join(r['notes'])}" for r in rows if r["notes"]]
    lines += [
        "",
        f"Anchor (Torch-Pruning's paper, {ANCHOR['model']}): {ANCHOR['macs_reduction']}× fewer MACs, "
        f"{ANCHOR['gpu_speedup']}× faster on a GPU: efficiency {anchor:.2f}.",
        *([""] + notes if notes else []),
        "",
    ]
    return lines


def _digits_md(d: dict[str, Any]) -> list[str]:
    lines = [
        f"## Digits study: {d['trials']} trials (`{d['strategy']}`, {d['finetune_epochs']} fine-tune epochs each), "
        "GPU against CPU",
        "",
        _row(
            "where",
            "complete",
            "failed",
            "wall s (with the sensitivity analysis)",
            "trials / min (first start to last end)",
            "trials / min (wall)",
            "best accuracy",
        ),
        "|---|" + "---:|" * 6,
    ]
    for label, r in d["runs"].items():
        where = f"{label} ({r['device']})"
        if "error" in r:
            lines.append(_row(where, f"failed: {r['error']}"))
            continue
        lines.append(
            _row(
                where,
                r["complete"],
                r["failed"],
                f"{r['wall_s']:.1f}",
                _f(r["trials_per_min"], ".1f"),
                _f(r["trials_per_min_wall"], ".1f"),
                _f(r["best_accuracy"], ".4f"),
            )
        )
    return [*lines, ""]


def _amp_md(rows: list[dict[str, Any]], b: int) -> list[str]:
    lines = [
        f"## Mixed-precision fine-tuning, batch {b}: steps per second",
        "",
        "slimtune = `finetune(model, batches, FinetuneConfig(steps, amp, channels_last))` on batches already on "
        "the device; plain = a hand-written loop (`torch.autocast`, `GradScaler` for fp16). Speedup against fp32.",
        "",
        _row("model", "variant", "slimtune steps/s", "speedup", "plain steps/s", "speedup", "notes"),
        "|---|---|" + "---:|" * 4 + "---|",
    ]
    for r in rows:
        errors = "; ".join(v for k, v in r.items() if k.endswith("error"))
        lines.append(
            _row(
                r["model"],
                r["variant"],
                _f(r.get("slimtune_steps_per_s"), ".1f"),
                _f(r.get("slimtune_speedup"), ".2f"),
                _f(r.get("plain_steps_per_s"), ".1f"),
                _f(r.get("plain_speedup"), ".2f"),
                errors,
            )
        )
    return [*lines, ""]


def _memory_md(rows: list[dict[str, Any]], b: int) -> list[str]:
    lines = [
        f"## Peak memory of a forward pass at batch {b} (`measure_memory`), MiB",
        "",
        _row("model", "original", "slimtune", "ratio", "TP", "ratio"),
        "|---|" + "---:|" * 5,
    ]
    for r in rows:
        if "error" in r:
            lines.append(_row(r["model"], f"failed: {r['error']}"))
            continue
        st, tp = r.get("slimtune", {}), r.get("tp", {})
        lines.append(
            _row(
                r["model"],
                f"{r['orig']['peak_mib']:.1f}",
                _f(st.get("peak_mib"), ".1f"),
                _f(st.get("ratio")),
                _f(tp.get("peak_mib"), ".1f"),
                _f(tp.get("ratio")),
            )
        )
    return [*lines, ""]


@contextlib.contextmanager
def _section(name: str, out: dict[str, Any]) -> Iterator[None]:
    t0 = time.perf_counter()
    print(f"{name} ...", flush=True)
    try:
        yield
    except Exception as e:  # noqa: BLE001 - report and go on with the next section
        traceback.print_exc()
        out["errors"].append(f"{name}: {_err(e)}")
    print(f"{name}: {time.perf_counter() - t0:.1f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    device = torch.device("cpu") if a.cpu_dry_run else require_cuda()
    if a.cpu_dry_run:
        torch.set_num_threads(1)  # a code-path check: steady on a shared machine
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    t_start = time.perf_counter()
    out: dict[str, Any] = {"environment": environment(device), "errors": [], "_models": {}}
    print(
        f"gpu_check on {out['environment']['gpu']} — torch {torch.__version__}, CUDA {torch.version.cuda}", flush=True
    )
    for name, fn in (
        ("pruning", section_pruning),
        ("digits", section_digits),
        ("amp", section_amp),
        ("memory", section_memory),
    ):
        if name in a.sections:
            with _section(name, out):
                fn(a, device, out)
    out.pop("_models")
    out["total_s"] = time.perf_counter() - t_start
    out["targets"] = targets(out, a.batch)
    out["config"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()}
    text = markdown(out, a)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".json").write_text(json.dumps(out, indent=1, default=str) + "\n", encoding="utf-8")
    a.out.with_suffix(".md").write_text(text, encoding="utf-8")
    print()
    print(text)
    print(f"wrote {a.out.with_suffix('.md')} and {a.out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
