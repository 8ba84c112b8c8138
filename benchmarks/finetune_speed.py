"""Fine-tune loop speed on the CPU: slimtune's ``finetune`` against a plain PyTorch loop, and before/after.

Two parts, one thread throughout (``OMP_NUM_THREADS=1``, ``torch.set_num_threads(1)``, the process pinned
to one core with ``os.sched_setaffinity``, ``--core``):

1. **Configurations.** Optimizer steps per second of :func:`slimtune.compressors.training.finetune` on the
   digits CNN (``digits_cnn``, the real digits training set, 1×8×8) and a CIFAR-style ResNet-20
   (``slimtune.examples.models.resnet20``, synthetic 3×32×32 inputs, 10 classes) at batch 64: fp32,
   ``amp="bf16"``, ``amp="fp16"``, fp32 + ``channels_last``, bf16 + ``channels_last`` and ``accumulate=4`` on
   batches of 16 (the same 64 samples per optimizer step), beside a hand-written loop (SGD with momentum,
   cross-entropy, the same model and batches, fp32 and bf16 ``torch.autocast``) as the reference: the
   ratio slimtune / plain at the same precision is the loop's overhead. Each measurement copies the same
   initial model, warms up (one call of 1 step, one of ``--warmup - 1`` steps) and then times one
   ``finetune(..., FinetuneConfig(steps=n))`` call (the plain loop likewise: one call that builds its
   optimizer and runs ``n`` steps). ``n`` is ``--steps-cnn`` / ``--steps-resnet``, fewer (at least 5) where
   the warm-up says one call would take more than ``--max-seconds`` (fp16 on CPUs without native fp16
   convolutions). ``--rounds`` rounds interleave the configurations, every other round in reverse order;
   the medians are reported.
2. **Before/after.** The fp32 loop and the plain fp32 loop, measured the same way in subprocesses that
   import slimtune from a source snapshot of ``--old-rev`` (default ``fc9b453``: ``git archive REV slimtune``)
   and of the current tree (the working-tree copies of ``git ls-files slimtune``), alternating old / new
   ``--compare-runs`` times; per-version medians. ``--compare-old DIR`` / ``--compare-new DIR`` use existing
   snapshots (directories holding ``slimtune/``) instead. The plain loop does not depend on slimtune: its
   old/new ratio shows the drift of the machine between the runs.

The clock (``--clock``) is the thread's CPU time by default (with one thread it is the idle-machine time
and ignores preemption by other jobs); wall-clock rates are kept in the JSON. The header records the CPU,
its SIMD flags and ``uptime`` before and after. One fp16 step of the CNN is profiled to name the kernels
that dominate it.

Usage: ``python benchmarks/finetune_speed.py [--rounds 3] [--steps-cnn 200] [--steps-resnet 30] [--warmup 5]
[--max-seconds 15] [--compare-runs 3] [--old-rev fc9b453] [--no-compare] [--no-write]`` (≈ 9 min on one core);
writes ``benchmarks/results/finetune_speed.md`` and ``.json``.
"""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"  # before torch is imported, here and in the subprocesses

import argparse
import contextlib
import copy
import json
import math
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parent.parent
MODELS = ("cnn", "resnet20")
MODEL_TITLES = {"cnn": "digits CNN (1×8×8, digits data)", "resnet20": "ResNet-20 (3×32×32, synthetic data)"}

# name -> (loop, FinetuneConfig fields or plain-loop precision)
CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "fp32": ("slimtune", {}),
    "bf16": ("slimtune", {"amp": "bf16"}),
    "fp16": ("slimtune", {"amp": "fp16"}),
    "fp32 + channels_last": ("slimtune", {"channels_last": True}),
    "bf16 + channels_last": ("slimtune", {"amp": "bf16", "channels_last": True}),
    "fp32, accumulate 4 × 16": ("slimtune", {"accumulate": 4}),
    "plain fp32": ("plain", {"amp": None}),
    "plain bf16": ("plain", {"amp": "bf16"}),
}
COMPARE_CONFIGS = ("fp32", "plain fp32")
PLAIN_OF = {"fp32": "plain fp32", "bf16": "plain bf16"}


# ---------------------------------------------------------------------------------------------- setup
def set_single_thread(core: int | None) -> None:
    torch.set_num_threads(1)
    if core is not None and core >= 0 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {core})


def build_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name == "cnn":
        from slimtune.examples.digits import digits_cnn

        return digits_cnn()
    from slimtune.examples.models import resnet20

    return resnet20(in_channels=3, num_classes=10)


Batches = list[tuple[torch.Tensor, torch.Tensor]]


def build_data(name: str) -> tuple[Batches, Batches]:
    """Batches of 64 and the same samples in batches of 16 (full batches only)."""
    if name == "cnn":
        from slimtune.examples.digits import load_digits_data

        x, y = load_digits_data()[0].tensors
    else:
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(1024, 3, 32, 32, generator=g), torch.randint(0, 10, (1024,), generator=g)
    n = len(x) // 64 * 64
    x, y = x[:n].contiguous(), y[:n].contiguous()
    return [(x[i : i + 64], y[i : i + 64]) for i in range(0, n, 64)], [
        (x[i : i + 16], y[i : i + 16]) for i in range(0, n, 16)
    ]


# ---------------------------------------------------------------------------------------------- loops
def plain_loop(model: nn.Module, batches: Batches, steps: int, amp: str | None) -> None:
    """The reference: what a user writes by hand (SGD with momentum, cross-entropy, optional bf16 autocast)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    for i in range(steps):
        x, y = batches[i % len(batches)]
        optimizer.zero_grad(set_to_none=True)
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if amp == "bf16" else contextlib.nullcontext()
        with ctx:
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()


def runner(config: str, data64: Batches, data16: Batches) -> Callable[[nn.Module, int], None]:
    loop, fields = CONFIGS[config]
    if loop == "plain":
        return lambda model, n: plain_loop(model, data64, n, fields["amp"])
    from slimtune.compressors.training import FinetuneConfig, finetune

    data = data16 if fields.get("accumulate", 1) > 1 else data64

    def run(model: nn.Module, n: int) -> None:
        finetune(model, data, FinetuneConfig(steps=n, **fields))

    return run


def measure(
    config: str, base: nn.Module, data64: Batches, data16: Batches, steps: int, warmup: int, max_seconds: float
) -> dict[str, Any]:
    """Warm up, then time one call of ``n`` optimizer steps on a copy of ``base``."""
    model = copy.deepcopy(base)
    run = runner(config, data64, data16)
    t0 = time.thread_time()
    run(model, 1)  # one-time costs: oneDNN primitives, allocator, optimizer state
    first = time.thread_time() - t0
    rest = max(1, warmup - 1) if first < 1.0 else 1
    t0 = time.thread_time()
    run(model, rest)
    estimate = (time.thread_time() - t0) / rest
    n = steps if estimate * steps <= max_seconds else max(5, min(steps, math.ceil(max_seconds / estimate)))
    c0, w0 = time.thread_time(), time.perf_counter()
    run(model, n)
    cpu, wall = time.thread_time() - c0, time.perf_counter() - w0
    return {
        "steps": n,
        "warmup_steps": 1 + rest,
        "cpu_s": cpu,
        "wall_s": wall,
        "cpu_sps": n / cpu,
        "wall_sps": n / wall,
    }


def measure_round(
    models: dict[str, tuple[nn.Module, Batches, Batches]],
    configs: list[str],
    steps: dict[str, int],
    warmup: int,
    max_seconds: float,
    log: bool = True,
) -> dict[str, dict[str, dict[str, Any]]]:
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for name, (base, d64, d16) in models.items():
        out[name] = {}
        for config in configs:
            r = measure(config, base, d64, d16, steps[name], warmup, max_seconds)
            out[name][config] = r
            if log:
                print(
                    f"  {name:8s} {config:26s} {r['cpu_sps']:8.2f} steps/s (cpu)  {r['wall_sps']:8.2f} (wall)"
                    f"  [{r['steps']} steps]",
                    flush=True,
                )
    return out


def load_models(names: tuple[str, ...] | list[str]) -> dict[str, tuple[nn.Module, Batches, Batches]]:
    return {name: (build_model(name), *build_data(name)) for name in names}


# ---------------------------------------------------------------------------------------------- before/after
def worker(spec: str) -> None:
    """Subprocess: one round of COMPARE_CONFIGS on every model, printed as one JSON line."""
    args = json.loads(spec)
    set_single_thread(args["core"])
    import slimtune

    models = load_models(args["models"])
    res = measure_round(models, list(COMPARE_CONFIGS), args["steps"], args["warmup"], args["max_seconds"], False)
    print("RESULT " + json.dumps({"slimtune_file": slimtune.__file__, "results": res}), flush=True)


def snapshot_old(rev: str) -> Path:
    root = Path(tempfile.mkdtemp(prefix="ft_old_"))
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "slimtune"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(root)], input=archive.stdout, check=True)
    return root


def snapshot_new() -> Path:
    root = Path(tempfile.mkdtemp(prefix="ft_new_"))
    files = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z", "slimtune"], check=True, capture_output=True
    ).stdout.split(b"\0")
    for f in filter(None, files):
        rel = f.decode()
        if (REPO / rel).is_file():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, root / rel)
    return root


def run_worker(src: Path, spec: dict[str, Any]) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
        env=env,
        cwd=str(src),
        capture_output=True,
        text=True,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"worker on {src} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    out = json.loads(lines[-1][len("RESULT ") :])
    if not out["slimtune_file"].startswith(str(src)):
        raise RuntimeError(f"worker on {src} imported slimtune from {out['slimtune_file']}")
    return out


# ---------------------------------------------------------------------------------------------- machine
def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {"cpu": platform.processor() or platform.machine(), "flags": []}
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
        for key, field in (("model name", "cpu"), ("cpu family", "family"), ("model", "model")):
            m = re.search(rf"^{key}\s*:\s*(.+)$", text, re.M)
            if m:
                info[field] = m.group(1).strip()
        f = re.search(r"^flags\s*:\s*(.+)$", text, re.M)
        flags = set(f.group(1).split()) if f else set()
        info["flags"] = sorted(x for x in flags if x == "avx2" or x.startswith(("avx512", "amx")) or "vnni" in x)
        info["native_fp16"] = bool({"avx512fp16", "amx_fp16"} & flags)
    except OSError:
        pass
    info["logical_cpus"] = os.cpu_count()
    info["torch"] = torch.__version__
    info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    info["python"] = platform.python_version()
    return info


def git_state() -> dict[str, Any]:
    def git(*a: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *a], capture_output=True, text=True).stdout.strip()

    return {
        "head": git("rev-parse", "--short", "HEAD"),
        "dirty_slimtune": bool(git("status", "--porcelain", "slimtune")),
    }


def profile_fp16(base: nn.Module, data64: Batches) -> list[dict[str, Any]]:
    """The kernels that take one plain fp16-autocast step of ``base`` (self CPU time, top 4)."""
    from torch.profiler import profile

    model = copy.deepcopy(base)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = data64[0]

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.float16):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()

    step()
    with profile() as prof:
        step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    return [
        {"op": e.key, "self_ms": e.self_cpu_time_total / 1e3, "share": e.self_cpu_time_total / total}
        for e in events[:4]
    ]


# ---------------------------------------------------------------------------------------------- report
def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def render(r: dict[str, Any]) -> str:
    clock = r["settings"]["clock"]
    key = f"{clock}_sps"
    m, s = r["machine"], r["settings"]
    flags = ", ".join(m["flags"]) or "none"
    lines = [
        "# Fine-tune loop speed on the CPU: slimtune's `finetune` against a plain PyTorch loop",
        "",
        f"{m['cpu']} (family {m.get('family', '?')}, model {m.get('model', '?')}), {m['logical_cpus']} logical CPUs; "
        f"SIMD: {flags}; native fp16 arithmetic: {'yes' if m.get('native_fp16') else 'no'}; "
        f"torch {m['torch']} (CPU capability {m['torch_cpu_capability']}), Python {m['python']}; "
        f"slimtune at {r['git']['head']}{' (slimtune/ modified)' if r['git']['dirty_slimtune'] else ''}.",
        f"One thread (`OMP_NUM_THREADS=1`, `torch.set_num_threads(1)`), pinned to core {s['core']}; "
        f"{s['rounds']} interleaved rounds (every other one reversed), each configuration "
        f"{s['warmup']} warm-up steps then "
        f"{s['steps']['cnn']} (CNN) / {s['steps']['resnet20']} (ResNet-20) timed optimizer steps in one call "
        f"(fewer, at least 5, where that call would take over {s['max_seconds']:g} s); batch 64; "
        f"clock: {'the thread CPU time' if clock == 'cpu' else 'wall'}; medians over the rounds.",
        f"Load (`uptime`) before: `{r['load_before']}`; after: `{r['load_after']}`. Wall time of the run: "
        f"{r['wall_s'] / 60:.1f} min.",
        "",
        "## Configurations (current tree)",
        "",
    ]
    for model in r["models"]:
        rows = r["results"][model]
        ref = median([x[key] for x in rows["fp32"]]) if "fp32" in rows else float("nan")
        lines += [
            f"### {MODEL_TITLES[model]}",
            "",
            "| loop | configuration | steps/s (median) | per round | samples/s | × slimtune fp32 "
            "| slimtune / plain, same precision | timed steps |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for config, runs in rows.items():
            loop = CONFIGS[config][0]
            med = median([x[key] for x in runs])
            per = ", ".join(f"{x[key]:.2f}" for x in runs)
            plain = PLAIN_OF.get(config)
            vs = f"{med / median([x[key] for x in rows[plain]]):.3f}" if plain and plain in rows else "—"
            label = config.removeprefix("plain ") if loop == "plain" else config
            n_steps = sorted({x["steps"] for x in runs})
            lines.append(
                f"| {loop} | {label} | **{med:.2f}** | {per} | {med * 64:.0f} | {med / ref:.2f} | {vs} | "
                f"{'/'.join(map(str, n_steps))} |"
            )
        lines.append("")
    if r.get("compare"):
        c = r["compare"]
        lines += [
            f"## Before / after: commit {c['old_rev']} against the current tree",
            "",
            f"Subprocesses importing slimtune from source snapshots (`PYTHONPATH`), alternating old / new "
            f"{c['runs']} times; one round of the fp32 loop and the plain fp32 loop per run, as above.",
            "",
            "| model | loop | old: steps/s per run | old median | new: steps/s per run | new median | new / old |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for model in r["models"]:
            for config in COMPARE_CONFIGS:
                old = [run["results"][model][config][key] for run in c["old"]]
                new = [run["results"][model][config][key] for run in c["new"]]
                loop = "plain fp32 (control)" if config.startswith("plain") else "slimtune fp32"
                lines.append(
                    f"| {model} | {loop} | {', '.join(f'{v:.2f}' for v in old)} | **{median(old):.2f}** | "
                    f"{', '.join(f'{v:.2f}' for v in new)} | **{median(new):.2f}** | {median(new) / median(old):.3f} |"
                )
        lines.append("")
        for model in r["models"]:
            parts = []
            for version in ("old", "new"):
                ratio = median(
                    [
                        run["results"][model]["fp32"][key] / run["results"][model]["plain fp32"][key]
                        for run in c[version]
                    ]
                )
                parts.append(f"{version} {ratio:.3f}")
            lines.append(f"- {model}: slimtune fp32 / plain fp32 within each run (median): {', '.join(parts)}.")
        lines.append("")
    if r.get("fp16_profile"):
        top = "; ".join(f"`{e['op']}` {e['share'] * 100:.0f} %" for e in r["fp16_profile"][:3])
        lines += [f"One plain fp16-autocast step of the CNN, self CPU time by op: {top}.", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps-cnn", type=int, default=200)
    p.add_argument("--steps-resnet", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--max-seconds", type=float, default=15.0, help="cap on one timed call (slow configurations)")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--core", type=int, default=0, help="CPU to pin to (-1: no pinning)")
    p.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    p.add_argument("--old-rev", default="fc9b453")
    p.add_argument("--compare-old", type=Path, help="existing snapshot of the old version (holds slimtune/)")
    p.add_argument("--compare-new", type=Path, help="existing snapshot of the new version (holds slimtune/)")
    p.add_argument("--compare-runs", type=int, default=3)
    p.add_argument("--no-compare", action="store_true")
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--out", default="finetune_speed")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker(args.worker)
        return
    set_single_thread(args.core)
    start = time.perf_counter()
    steps = {"cnn": args.steps_cnn, "resnet20": args.steps_resnet}
    r: dict[str, Any] = {
        "machine": machine_info(),
        "git": git_state(),
        "load_before": uptime(),
        "models": args.models,
        "settings": {
            "rounds": args.rounds,
            "steps": steps,
            "warmup": args.warmup,
            "max_seconds": args.max_seconds,
            "core": args.core,
            "clock": args.clock,
            "batch": 64,
            "threads": torch.get_num_threads(),
        },
    }
    models = load_models(args.models)
    results: dict[str, dict[str, list[dict[str, Any]]]] = {m: {c: [] for c in args.configs} for m in args.models}
    for i in range(args.rounds):
        order = args.configs if i % 2 == 0 else args.configs[::-1]
        print(f"round {i + 1}/{args.rounds}", flush=True)
        for model, rows in measure_round(models, order, steps, args.warmup, args.max_seconds).items():
            for config, res in rows.items():
                results[model][config].append(res)
    r["results"] = results
    if not args.no_profile and "cnn" in models:
        r["fp16_profile"] = profile_fp16(models["cnn"][0], models["cnn"][1])

    if not args.no_compare:
        old_dir = args.compare_old or snapshot_old(args.old_rev)
        new_dir = args.compare_new or snapshot_new()
        made = [d for d, given in ((old_dir, args.compare_old), (new_dir, args.compare_new)) if given is None]
        spec = {
            "models": args.models,
            "steps": steps,
            "warmup": args.warmup,
            "max_seconds": args.max_seconds,
            "core": args.core,
        }
        compare: dict[str, Any] = {
            "old_rev": args.old_rev if args.compare_old is None else str(args.compare_old),
            "old_dir": str(old_dir),
            "new_dir": str(new_dir),
            "runs": args.compare_runs,
            "old": [],
            "new": [],
        }
        try:
            for i in range(args.compare_runs):
                for version, src in (("old", old_dir), ("new", new_dir)):
                    print(f"compare run {i + 1}/{args.compare_runs}: {version} ({src})", flush=True)
                    out = run_worker(src, spec)
                    compare[version].append(out)
                    for model in args.models:
                        print(
                            f"  {model:8s} "
                            + "  ".join(
                                f"{c} {out['results'][model][c][args.clock + '_sps']:.2f}" for c in COMPARE_CONFIGS
                            ),
                            flush=True,
                        )
        finally:
            for d in made:
                shutil.rmtree(d, ignore_errors=True)
        r["compare"] = compare

    r["load_after"] = uptime()
    r["wall_s"] = time.perf_counter() - start
    text = render(r)
    print(text)
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"{args.out}.md").write_text(text + "\n", encoding="utf-8")
        (RESULTS / f"{args.out}.json").write_text(json.dumps(r, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
