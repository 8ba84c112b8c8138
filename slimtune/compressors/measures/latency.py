"""Wall-clock latency of a model's forward pass, on the device the model lives on.

Latency is measured, never guessed: the model runs in eval mode under :func:`torch.inference_mode`
after ``warmup`` untimed calls, for at least ``repeats`` timed calls (and at least ``min_time_s``
seconds). The result reports the median and the 10th/90th percentiles of the per-call times and
the device they were measured on. Latency on shared machines varies by ±20 % from run to run, so
compare models with :func:`compare_latency`, which runs them *interleaved* (round-robin, one call
of each model per round) so that machine noise hits every model alike, and use the ratio of medians.

The measurement runs where the models' parameters are (all models compared must be on one device;
a model without parameters or buffers runs where the example inputs are); the example inputs are
moved there.

* **CPU** — a fixed number of intra-op threads (``threads``), each call timed with
  :func:`time.perf_counter` (or the thread's CPU time, ``clock="cpu"``).
* **CUDA** — each timed call starts on an idle device (``torch.cuda.synchronize``) and is timed by
  a pair of ``torch.cuda.Event(enable_timing=True)`` recorded around it on the current stream; the
  measurement waits for the end event (``Event.synchronize``) and reads ``start.elapsed_time(end)``.
  So a call's time is from the moment the GPU could start it until its last kernel finished,
  kernel-launch overhead included — the latency of one request. ``torch.backends.cudnn.benchmark``
  is set to True during the measurement (restored afterwards), so cuDNN picks its fastest algorithm
  for the batch shape, as a deployed model with fixed shapes does; the warm-up calls absorb that
  autotuning, and every model compared runs with the same setting. ``threads`` and ``clock="cpu"``
  concern the CPU only (``threads`` is not applied on a GPU). Batch sizes typical for GPUs are
  larger than for CPUs (64 rather than 32): ``batch_size`` is the caller's choice.
* **Other devices** (``mps``) — :func:`time.perf_counter` around each call, with the device
  synchronized before and after it.

The batch is built from the example inputs: every tensor whose first dimension equals the batch
dimension of the first tensor input is tiled along that dimension to ``batch_size`` rows (use
``batch_size=None`` to run the example inputs as they are).

Example:
    >>> import torch
    >>> from torch import nn
    >>> from slimtune.compressors.measures import measure_latency, compare_latency
    >>> model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    >>> r = measure_latency(model, torch.randn(1, 64), batch_size=8, repeats=20, min_time_s=0)
    >>> r.median_ms > 0 and r.batch_size == 8
    True
    >>> small = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    >>> res = compare_latency({"big": model, "small": small}, torch.randn(1, 64), repeats=20, min_time_s=0)
    >>> sorted(res)
    ['big', 'small']
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import nn

from slimtune import devices
from slimtune.errors import ArgumentTypeError, MeasureError

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["LatencyResult", "measure_latency", "compare_latency", "stabilize_allocator", "run_device"]

Clock = Literal["wall", "cpu"]


@dataclass
class LatencyResult:
    """Latency statistics of one model, in milliseconds per forward call of the whole batch.

    Args:
        median_ms: Median of the timed calls.
        p10_ms: 10th percentile.
        p90_ms: 90th percentile.
        samples_ms: Every timed call, in the order measured.
        batch_size: Rows per call (``None`` when the example inputs were used unchanged).
        threads: Intra-op threads used on the CPU (on a GPU: the argument as given, not applied).
        device: The device the calls ran on (``"cpu"``, ``"cuda:0"`` ...).
    """

    median_ms: float
    p10_ms: float
    p90_ms: float
    samples_ms: list[float] = field(repr=False)
    batch_size: int | None
    threads: int
    device: str = "cpu"

    @property
    def per_sample_ms(self) -> float:
        """Median latency divided by the batch size."""
        return self.median_ms / (self.batch_size or 1)

    @classmethod
    def from_samples(
        cls, samples_s: Sequence[float], batch_size: int | None, threads: int, device: str = "cpu"
    ) -> LatencyResult:
        """Summarise per-call times given in seconds."""
        ms = [float(s) * 1e3 for s in samples_s]
        arr = np.asarray(ms)
        return cls(
            median_ms=float(np.median(arr)),
            p10_ms=float(np.percentile(arr, 10)),
            p90_ms=float(np.percentile(arr, 90)),
            samples_ms=ms,
            batch_size=batch_size,
            threads=threads,
            device=str(device),
        )


# ---------------------------------------------------------------------------------------------- inputs
def as_tuple(example_inputs: Any) -> tuple[Any, ...]:
    """The example inputs as a tuple of positional arguments."""
    if isinstance(example_inputs, tuple):
        return example_inputs
    if isinstance(example_inputs, list):
        return tuple(example_inputs)
    return (example_inputs,)


def batch_dim(example_inputs: Any) -> int:
    """Size of the first dimension of the first tensor input (1 when there is none)."""
    for x in as_tuple(example_inputs):
        if isinstance(x, torch.Tensor) and x.dim() > 0:
            return int(x.shape[0])
    return 1


def make_batch(example_inputs: Any, batch_size: int | None) -> tuple[Any, ...]:
    """Tile the example inputs along the batch dimension to ``batch_size`` rows.

    Every tensor whose first dimension equals the batch dimension of the first tensor input is
    tiled (``repeat`` then cut to ``batch_size``); other arguments are passed through unchanged.

    Args:
        example_inputs: A tensor or a tuple/list of positional arguments.
        batch_size: Rows wanted; ``None`` returns the inputs unchanged.
    """
    args = as_tuple(example_inputs)
    if batch_size is None:
        return args
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise MeasureError(f"batch_size must be a positive int or None, got {batch_size!r}", field="batch_size")
    n = batch_dim(args)
    out = []
    for x in args:
        if isinstance(x, torch.Tensor) and x.dim() > 0 and x.shape[0] == n:
            reps = math.ceil(batch_size / n)
            x = x.repeat(reps, *([1] * (x.dim() - 1)))[:batch_size].contiguous()
        out.append(x)
    return tuple(out)


def run_device(models: Mapping[str, nn.Module], example_inputs: Any = None) -> torch.device:
    """The one device the models' parameters and buffers are on: where they are measured.

    A model without parameters or buffers runs anywhere: when no model has any, the device of the
    first tensor of ``example_inputs`` (else the CPU).

    Raises:
        MeasureError: A model's tensors are spread over several devices, or the models are on
            different devices (the message names each model and its device).
    """
    found: dict[str, torch.device] = {}
    for name, model in models.items():
        on = {t.device for t in model.parameters()} | {t.device for t in model.buffers()}
        if len(on) > 1:
            raise MeasureError(
                f"model {name!r} has parameters or buffers on several devices ({', '.join(sorted(map(str, on)))}); "
                "it is measured on one device: move it there with model.to(device)",
                field="models",
            )
        if on:
            found[name] = on.pop()
    if len(set(found.values())) > 1:
        where = ", ".join(f"{name!r} on {dev}" for name, dev in found.items())
        raise MeasureError(
            f"the models compared are on different devices ({where}); move them to one device with model.to(device)",
            field="models",
        )
    if found:
        return next(iter(found.values()))
    for x in as_tuple(example_inputs):
        if isinstance(x, torch.Tensor):
            return x.device
    return torch.device("cpu")


# ---------------------------------------------------------------------------------------------- allocator
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_allocator_state: list[bool] = []


def stabilize_allocator() -> bool:
    """Make glibc's ``malloc`` keep freed memory, so that timed calls do not page-fault.

    With glibc's default dynamic thresholds, a large tensor freed by one call is often returned to
    the operating system and the next call's allocation page-faults its memory back in: on the
    reference machines a ResNet-20 forward pass at batch 32 took 49-57 ms with ~5,300 page faults
    per call, and 35 ms with ~80 once freed memory was kept — and which of the two a measurement
    sees depends on what the process allocated before. This sets ``M_TRIM_THRESHOLD`` to 1 GiB
    and ``M_MMAP_THRESHOLD`` to 32 MiB (the largest glibc accepts) with ``mallopt``, the
    steady-state behaviour of the allocators (jemalloc, tcmalloc) that inference servers use.

    It is a process-wide, one-way switch: freed heap memory is kept for reuse rather than given
    back (the resident size stays at its peak). Allocations above 32 MiB still use ``mmap``. Does
    nothing (returns False) where the C library is not glibc.

    Returns:
        True when the allocator is (now or already) configured.
    """
    if _allocator_state:
        return _allocator_state[0]
    ok = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
            ok = bool(mallopt(_M_TRIM_THRESHOLD, 1 << 30)) and bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20))
        except (OSError, AttributeError):
            ok = False
    _allocator_state.append(ok)
    return ok


# ---------------------------------------------------------------------------------------------- context
@contextlib.contextmanager
def measurement_context(models: Sequence[nn.Module], threads: int | None, device: Any = None) -> Iterator[None]:
    """Eval mode, inference mode and no garbage collector; on the CPU ``threads`` intra-op threads, on
    CUDA ``device`` as the current device and ``torch.backends.cudnn.benchmark = True``.

    Everything is restored on exit: every module's own training flag, the thread count, cuDNN's
    benchmark flag, the current CUDA device and the garbage collector's state.

    Args:
        models: Put in eval mode.
        threads: Intra-op threads on the CPU (None: unchanged; not applied on other devices).
        device: Where the measurement runs (None: the CPU).
    """
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise MeasureError(f"threads must be a positive int or None, got {threads!r}", field="threads")
    dev = torch.device("cpu") if device is None else torch.device(device)
    flags = [(m, m.training) for model in models for m in model.modules()]
    old_threads = torch.get_num_threads()
    old_benchmark = torch.backends.cudnn.benchmark
    gc_was_enabled = gc.isenabled()
    try:
        for model in models:
            model.eval()
        if threads is not None and dev.type == "cpu":
            torch.set_num_threads(threads)
        gc.collect()
        gc.disable()
        with contextlib.ExitStack() as stack:
            if dev.type == "cuda":
                stack.enter_context(torch.cuda.device(dev))
                torch.backends.cudnn.benchmark = True
            stack.enter_context(torch.inference_mode())
            yield
    finally:
        torch.backends.cudnn.benchmark = old_benchmark
        if gc_was_enabled:
            gc.enable()
        torch.set_num_threads(old_threads)
        for m, flag in flags:
            m.training = flag


def time_interleaved(
    fns: Sequence[Callable[[], Any]],
    warmup: int = 10,
    repeats: int = 50,
    min_time_s: float = 0.0,
    max_repeats: int | None = None,
    burst: int = 1,
    burst_warmup: int = 0,
    clock: Clock = "wall",
    device: Any = None,
) -> list[list[float]]:
    """Time several callables round-robin; returns per-callable lists of seconds per call.

    Each round gives every callable one turn; the order rotates every two rounds and every other
    round runs backwards, so each callable runs right after each other one equally often. A turn is
    ``burst_warmup`` untimed calls, which bring the callable's weights and activations back into the caches, then
    ``burst`` timed calls. Rounds continue until ``repeats`` rounds are done and the timed calls
    took at least ``min_time_s`` seconds in all, or ``max_repeats`` rounds are done.

    Args:
        fns: Zero-argument callables.
        warmup: Untimed rounds first.
        repeats: Minimum number of timed rounds.
        min_time_s: Minimum total timed seconds (over all callables).
        max_repeats: Upper bound on timed rounds (default ``20 * repeats``).
        burst: Timed calls per turn.
        burst_warmup: Untimed calls at the start of each turn.
        clock: ``"wall"`` (:func:`time.perf_counter`; CUDA events on a CUDA device) or ``"cpu"``
            (:func:`time.thread_time`, CPU only; see :func:`measure_latency`).
        device: Where the callables run (None: the CPU); on CUDA each timed call is timed with CUDA
            events on an idle device (see the module docstring).
    """
    if repeats < 1:
        raise MeasureError(f"repeats must be >= 1, got {repeats!r}", field="repeats")
    if warmup < 0:
        raise MeasureError(f"warmup must be >= 0, got {warmup!r}", field="warmup")
    if burst < 1 or burst_warmup < 0:
        raise MeasureError(f"burst must be >= 1 and burst_warmup >= 0, got {burst!r}, {burst_warmup!r}", field="burst")
    dev = torch.device("cpu") if device is None else torch.device(device)
    if max_repeats is None:
        max_repeats = 20 * repeats
    max_repeats = max(max_repeats, repeats)
    k = len(fns)
    with torch.cuda.device(dev) if dev.type == "cuda" else contextlib.nullcontext():
        for _ in range(warmup):
            for fn in fns:
                fn()
        samples: list[list[float]] = [[] for _ in fns]
        timed = _call_timer(clock, dev)
        total = 0.0
        r = 0
        while r < repeats or (total < min_time_s and r < max_repeats):
            # rotate the start every two rounds and run every other round backwards: over 2k rounds
            # each callable follows each other one equally often
            order = [((j + r // 2) % k) for j in range(k)]
            if r % 2:
                order.reverse()
            for i in order:
                fn = fns[i]
                for _ in range(burst_warmup):
                    fn()
                for _ in range(burst):
                    dt = timed(fn)
                    samples[i].append(dt)
                    total += dt
            r += 1
    return samples


def _call_timer(clock: str, dev: torch.device) -> Callable[[Callable[[], Any]], float]:
    """A function that calls ``fn`` and returns the seconds the call took on ``dev``."""
    timer = _timer(clock)
    if dev.type == "cuda":
        if clock != "wall":
            raise MeasureError(
                f"clock={clock!r} times the calling CPU thread; on {dev} calls are timed with CUDA events: "
                "use clock='wall'",
                field="clock",
            )
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)

        def cuda_call(fn: Callable[[], Any]) -> float:
            torch.cuda.synchronize(dev)  # the call starts on an idle device: its launches are timed too
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3  # elapsed_time is in milliseconds

        return cuda_call
    if dev.type != "cpu":
        if clock != "wall":
            raise MeasureError(
                f"clock={clock!r} times the calling CPU thread; on {dev} use clock='wall'", field="clock"
            )

        def synced_call(fn: Callable[[], Any]) -> float:
            devices.synchronize(dev)
            t0 = timer()
            fn()
            devices.synchronize(dev)
            return timer() - t0

        return synced_call

    def call(fn: Callable[[], Any]) -> float:
        t0 = timer()
        fn()
        return timer() - t0

    return call


def _timer(clock: str) -> Callable[[], float]:
    if clock == "wall":
        return time.perf_counter
    if clock == "cpu":
        return time.thread_time
    raise MeasureError(f"clock must be 'wall' or 'cpu', got {clock!r}", field="clock")


def _check_threads(threads: int) -> None:
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise MeasureError(f"threads must be a positive int, got {threads!r}", field="threads")


# ---------------------------------------------------------------------------------------------- public
def measure_latency(
    model: nn.Module,
    example_inputs: Any,
    batch_size: int | None = 32,
    threads: int = 1,
    warmup: int = 10,
    repeats: int = 50,
    min_time_s: float = 0.5,
    max_repeats: int | None = None,
    clock: Clock = "wall",
    stable_allocator: bool = True,
) -> LatencyResult:
    """Measure the forward latency of ``model`` on a batch built from ``example_inputs``.

    Args:
        model: Any module, measured on the device its parameters are on; put in eval mode for the
            measurement, each submodule's training flag is restored afterwards.
        example_inputs: A tensor or a tuple of positional arguments, on any device (moved to the
            model's); tiled to ``batch_size`` rows (see :func:`make_batch`).
        batch_size: Rows per call; ``None`` uses the example inputs unchanged. The default 32 suits
            a CPU; on a GPU, where larger batches fill the device, 64 is typical.
        threads: Intra-op threads (``torch.set_num_threads``) during a CPU measurement; the previous
            value is restored afterwards. Not applied on a GPU.
        warmup: Untimed calls first.
        repeats: Minimum number of timed calls.
        min_time_s: Keep timing until the timed calls took this long in all (up to
            ``max_repeats`` calls) — fast models get more repeats.
        max_repeats: Upper bound on timed calls (default ``20 * repeats``).
        clock: ``"wall"``: wall-clock time (:func:`time.perf_counter`), the latency. ``"cpu"``:
            the calling thread's CPU time (:func:`time.thread_time`); with ``threads=1`` all the
            work runs on the calling thread, so this equals the wall-clock latency of an idle
            machine while ignoring the time other processes hold the core — steadier on shared
            machines. Only meaningful with ``threads=1``, and on the CPU only (a GPU's calls are
            timed with CUDA events: use ``"wall"`` there).
        stable_allocator: On the CPU, call :func:`stabilize_allocator` first (process-wide,
            one-way), so that repeated calls do not page-fault their activations back in; without
            it the same model can measure 40 % slower or faster depending on the process's history.

    Returns:
        A :class:`LatencyResult` (milliseconds per call of the whole batch, and the device).

    Raises:
        MeasureError: Bad arguments (naming the argument), ``clock="cpu"`` with several threads or
            on a GPU, a model spread over several devices.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> r = measure_latency(nn.Conv2d(3, 8, 3), torch.randn(1, 3, 16, 16), batch_size=4,
        ...                     repeats=10, min_time_s=0)
        >>> r.p10_ms <= r.median_ms <= r.p90_ms
        True
    """
    return compare_latency(
        {"model": model},
        example_inputs,
        batch_size=batch_size,
        threads=threads,
        warmup=warmup,
        repeats=repeats,
        min_time_s=min_time_s,
        max_repeats=max_repeats,
        clock=clock,
        stable_allocator=stable_allocator,
    )["model"]


def compare_latency(
    models: Mapping[str, nn.Module],
    example_inputs: Any,
    batch_size: int | None = 32,
    threads: int = 1,
    warmup: int = 10,
    repeats: int = 50,
    min_time_s: float = 0.5,
    max_repeats: int | None = None,
    clock: Clock = "wall",
    stable_allocator: bool = True,
) -> dict[str, LatencyResult]:
    """Measure several models on the same batch, interleaved, for fair ratios.

    One timed call of every model per round (round-robin, rotating start), so slow phases of the
    machine hit all models alike; report ratios of the medians. ``min_time_s`` counts the time of
    all models together. Arguments as in :func:`measure_latency`.

    The models must be on one device (a model without parameters or buffers goes with the others),
    where the example inputs are moved; on CUDA every model runs with the same cuDNN settings
    (``torch.backends.cudnn.benchmark = True``, restored afterwards).

    Raises:
        MeasureError: No models, bad arguments, or models on different devices (the message names
            each model and its device).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> models = {"wide": nn.Linear(256, 256), "narrow": nn.Linear(256, 64)}
        >>> res = compare_latency(models, torch.randn(1, 256), repeats=10, min_time_s=0)
        >>> ratio = res["narrow"].median_ms / res["wide"].median_ms
    """
    if not models:
        raise MeasureError("compare_latency needs at least one model", field="models")
    _check_threads(threads)
    _timer(clock)
    if clock == "cpu" and threads != 1:
        raise MeasureError(
            f"clock='cpu' measures the calling thread only; it needs threads=1, got threads={threads}", field="clock"
        )
    names = list(models)
    for name in names:
        if not isinstance(models[name], nn.Module):
            raise ArgumentTypeError(
                f"models[{name!r}] is a {type(models[name]).__name__}, not a torch.nn.Module", field="models"
            )
    device = run_device(models, example_inputs)
    if device.type != "cpu" and clock != "wall":
        raise MeasureError(
            f"clock={clock!r} times the calling CPU thread; the models are on {device}: use clock='wall'",
            field="clock",
        )
    if stable_allocator and device.type == "cpu":
        stabilize_allocator()
    args = make_batch(devices.move(as_tuple(example_inputs), device), batch_size)
    fns = [_caller(models[n], args) for n in names]
    with measurement_context([models[n] for n in names], threads, device):
        samples = time_interleaved(fns, warmup, repeats, min_time_s, max_repeats, clock=clock, device=device)
    return {n: LatencyResult.from_samples(s, batch_size, threads, str(device)) for n, s in zip(names, samples)}


def _caller(model: nn.Module, args: tuple[Any, ...]) -> Callable[[], Any]:
    def call() -> Any:
        return model(*args)

    return call
