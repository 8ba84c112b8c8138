"""Wall-clock latency of a model's forward pass on the CPU.

Latency is measured, never guessed: the model runs in eval mode under :func:`torch.inference_mode`
with a fixed number of intra-op threads, after ``warmup`` untimed calls, for at least ``repeats``
timed calls (and at least ``min_time_s`` seconds), each timed with :func:`time.perf_counter`. The
result reports the median and the 10th/90th percentiles of the per-call times. Latency on shared
machines varies by ±20 % from run to run, so compare models with :func:`compare_latency`, which
runs them *interleaved* (round-robin, one call of each model per round) so that machine noise hits
every model alike, and use the ratio of medians.

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

from slimtune.errors import ArgumentTypeError, MeasureError

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["LatencyResult", "measure_latency", "compare_latency", "stabilize_allocator"]

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
        threads: Intra-op threads used.
    """

    median_ms: float
    p10_ms: float
    p90_ms: float
    samples_ms: list[float] = field(repr=False)
    batch_size: int | None
    threads: int

    @property
    def per_sample_ms(self) -> float:
        """Median latency divided by the batch size."""
        return self.median_ms / (self.batch_size or 1)

    @classmethod
    def from_samples(cls, samples_s: Sequence[float], batch_size: int | None, threads: int) -> LatencyResult:
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
def measurement_context(models: Sequence[nn.Module], threads: int | None) -> Iterator[None]:
    """Eval mode, ``threads`` intra-op threads, inference mode and no garbage collector.

    Everything is restored on exit: every module's own training flag, the thread count and the
    garbage collector's state.
    """
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise MeasureError(f"threads must be a positive int or None, got {threads!r}", field="threads")
    flags = [(m, m.training) for model in models for m in model.modules()]
    old_threads = torch.get_num_threads()
    gc_was_enabled = gc.isenabled()
    try:
        for model in models:
            model.eval()
        if threads is not None:
            torch.set_num_threads(threads)
        gc.collect()
        gc.disable()
        with torch.inference_mode():
            yield
    finally:
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
        clock: ``"wall"`` (:func:`time.perf_counter`) or ``"cpu"`` (:func:`time.thread_time`, see
            :func:`measure_latency`).
    """
    if repeats < 1:
        raise MeasureError(f"repeats must be >= 1, got {repeats!r}", field="repeats")
    if warmup < 0:
        raise MeasureError(f"warmup must be >= 0, got {warmup!r}", field="warmup")
    if burst < 1 or burst_warmup < 0:
        raise MeasureError(f"burst must be >= 1 and burst_warmup >= 0, got {burst!r}, {burst_warmup!r}", field="burst")
    if max_repeats is None:
        max_repeats = 20 * repeats
    max_repeats = max(max_repeats, repeats)
    k = len(fns)
    for _ in range(warmup):
        for fn in fns:
            fn()
    samples: list[list[float]] = [[] for _ in fns]
    timer = _timer(clock)
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
                t0 = timer()
                fn()
                dt = timer() - t0
                samples[i].append(dt)
                total += dt
        r += 1
    return samples


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
        model: Any module; put in eval mode for the measurement, each submodule's training flag is
            restored afterwards.
        example_inputs: A tensor or a tuple of positional arguments; tiled to ``batch_size`` rows
            (see :func:`make_batch`).
        batch_size: Rows per call; ``None`` uses the example inputs unchanged.
        threads: Intra-op threads (``torch.set_num_threads``) during the measurement; the previous
            value is restored afterwards.
        warmup: Untimed calls first.
        repeats: Minimum number of timed calls.
        min_time_s: Keep timing until the timed calls took this long in all (up to
            ``max_repeats`` calls) — fast models get more repeats.
        max_repeats: Upper bound on timed calls (default ``20 * repeats``).
        clock: ``"wall"``: wall-clock time (:func:`time.perf_counter`), the latency. ``"cpu"``:
            the calling thread's CPU time (:func:`time.thread_time`); with ``threads=1`` all the
            work runs on the calling thread, so this equals the wall-clock latency of an idle
            machine while ignoring the time other processes hold the core — steadier on shared
            machines. Only meaningful with ``threads=1``.
        stable_allocator: Call :func:`stabilize_allocator` first (process-wide, one-way), so
            that repeated calls do not page-fault their activations back in; without it the
            same model can measure 40 % slower or faster depending on the process's history.

    Returns:
        A :class:`LatencyResult` (milliseconds per call of the whole batch).

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
    if stable_allocator:
        stabilize_allocator()
    names = list(models)
    for name in names:
        if not isinstance(models[name], nn.Module):
            raise ArgumentTypeError(
                f"models[{name!r}] is a {type(models[name]).__name__}, not a torch.nn.Module", field="models"
            )
    args = make_batch(example_inputs, batch_size)
    fns = [_caller(models[n], args) for n in names]
    with measurement_context([models[n] for n in names], threads):
        samples = time_interleaved(fns, warmup, repeats, min_time_s, max_repeats, clock=clock)
    return {n: LatencyResult.from_samples(s, batch_size, threads) for n, s in zip(names, samples)}


def _caller(model: nn.Module, args: tuple[Any, ...]) -> Callable[[], Any]:
    def call() -> Any:
        return model(*args)

    return call
