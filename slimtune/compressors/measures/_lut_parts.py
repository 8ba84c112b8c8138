"""Internals of :mod:`slimtune.compressors.measures.lut`: layer specs, table entries, interpolation.

A :class:`LayerSpec` describes a Conv/Linear layer well enough to build a standalone copy at other
channel counts; an :class:`Entry` holds the latencies of one configuration on a grid of
(in, out) counts plus exact points, and interpolates between them. The functions build the
measured callables (standalone layers, plain and hooked whole-model passes) and fit the remainder;
:func:`measure_eager` and :func:`measure_in_runtime` measure a table in eager PyTorch and in
``torch.compile`` / ONNX Runtime.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from torch import nn

from slimtune import devices
from slimtune.compressors.measures._layer_spec import LayerSpec
from slimtune.compressors.measures.latency import make_batch, measurement_context, time_interleaved
from slimtune.compressors.measures.runtimes import LatencySetting, runtime_model
from slimtune.errors import MeasureError

if TYPE_CHECKING:
    from slimtune.compressors.graph import ModelGraph


@dataclass
class Entry:
    """Standalone latencies (ms) of one layer configuration.

    ``ms[i][j]`` is the latency at ``(ins[i], outs[j])``; for depthwise convolutions (one axis,
    in = out) ``outs == ins`` and ``ms[i] == [latency at ins[i]]``. ``exact`` holds latencies
    measured at exact counts, keyed ``"in,out"``.
    """

    spec: LayerSpec
    ins: list[int]
    outs: list[int]
    ms: list[list[float]]
    exact: dict[str, float] = field(default_factory=dict)

    def points(self) -> list[tuple[int, int]]:
        if self.spec.depthwise:
            return [(i, i) for i in self.ins]
        return [(i, o) for i in self.ins for o in self.outs]

    def lookup(self, cin: int, cout: int) -> float:
        hit = self.exact.get(f"{cin},{cout}")
        if hit is not None:
            return hit
        floor = 0.05 * min(v for row in self.ms for v in row)
        if self.spec.depthwise:
            return max(floor, interp1(self.ins, [row[0] for row in self.ms], cout))
        i0, i1, wi = cell(self.ins, cin)
        o0, o1, wo = cell(self.outs, cout)
        v = (
            (1 - wi) * (1 - wo) * self.ms[i0][o0]
            + (1 - wi) * wo * self.ms[i0][o1]
            + wi * (1 - wo) * self.ms[i1][o0]
            + wi * wo * self.ms[i1][o1]
        )
        # an axis measured at one count only (pruning never changes it): scale if asked otherwise
        if len(self.ins) == 1 and cin != self.ins[0]:
            v *= cin / self.ins[0]
        if len(self.outs) == 1 and cout != self.outs[0]:
            v *= cout / self.outs[0]
        return max(floor, v)


@dataclass
class LayerRef:
    """A Conv/Linear layer of the model and where its measurements are."""

    name: str
    key: str  # into LatencyTable.entries
    orig: tuple[int, int]  # (in, out) channels / features
    calls: int
    out_elems: float  # output elements per sample of one call (weights the remainder)
    depthwise: bool
    remainder_ms: float = 0.0  # time of the leaf modules that follow it on its channels (BN, ReLU, pool)


@dataclass
class Settings:
    """How the table was measured (reused for exact points measured later)."""

    warmup: int
    repeats: int
    burst: int
    quantile: float
    clock: str
    min_time_s: float = 0.0


class Measured(NamedTuple):
    """What a build measured besides the grid (which it writes into the entries)."""

    batches: list[int]  # the remainder batch sizes, largest first
    totals: list[float]  # the dense model's ms at each
    layers_ms: list[float]  # its Conv/Linear layers' ms at each (in the model, or standalone in a runtime)
    points: int  # grid points measured
    call_ms: float = 0.0  # a runtime's cost of one call of an almost empty module


def statistic(quantile: float) -> Callable[[Sequence[float]], float]:
    def stat(values: Sequence[float]) -> float:
        return float(np.quantile(np.asarray(values, dtype=float), quantile)) * 1e3

    return stat


def prunable_dims(graph: ModelGraph) -> dict[str, tuple[bool, bool]] | None:
    """Per layer: (input dim prunable, output dim prunable), from the graph's prunable groups."""
    groups = getattr(graph, "groups", None)
    if groups is None:
        return None
    dims: dict[str, list[bool]] = {}
    for g in groups.values():
        if not getattr(g, "prunable", True):
            continue
        for m in g.members:
            d = dims.setdefault(m.layer, [False, False])
            d[0] = d[0] or m.role in ("in", "dw")
            d[1] = d[1] or m.role in ("out", "dw")
    return {k: (v[0], v[1]) for k, v in dims.items()}


def grid_counts(
    n: int, ratios: Sequence[float], multiple: int, rounding: Callable[[int, int, int], int] | None = None
) -> list[int]:
    """Channel counts for the ratios, rounded to ``multiple`` (groups), at least ``multiple``; then
    ``rounding(count, n, multiple)`` when given (the latency table passes a plan's rounding of kept
    channels to ``channel_multiple``, so rounded plans land on the grid)."""
    if n % multiple:
        multiple = 1
    counts = {max(multiple, int(round(r * n / multiple)) * multiple) for r in ratios} | {n}
    if rounding is not None:
        counts = {rounding(c, n, multiple) for c in counts}
    return sorted(counts)


def config_key(spec: LayerSpec, ins: list[int], outs: list[int]) -> str:
    if spec.is_product:
        ops = ",".join("x".join(map(str, o)) + f"/h{a}" for o, a in zip(spec.operands, spec.head_axes))
        return f"{spec.kind}({ops})|heads={ins}"
    if spec.kind == "linear":
        desc = f"Linear({spec.in_ch},{spec.out_ch},bias={spec.bias})"
    else:
        desc = (
            f"Conv{len(spec.kernel)}d({spec.in_ch},{spec.out_ch},k={spec.kernel},s={spec.stride},"
            f"p={spec.padding},d={spec.dilation},g={spec.groups},bias={spec.bias},{spec.padding_mode})"
        )
    shape = "x".join(map(str, spec.in_shape))
    return f"{desc}@{shape}|in={ins}|out={outs}"


def bind(mod: nn.Module, x: torch.Tensor) -> Callable[[], Any]:
    def call() -> Any:
        return mod(x)

    return call


def remainder_batches(batch: int) -> list[int]:
    return sorted({max(1, batch // d) for d in (1, 2, 4, 8)}, reverse=True)


def model_passes(
    model: nn.Module,
    example_inputs: Any,
    names: list[str],
    others: list[str],
    batch: int,
    clock: str,
    device: Any = "cpu",
) -> tuple[list[int], list[Callable[[], Any]], list[list[float]], dict[str, list[float]]]:
    """Plain and hooked forward passes of the dense model at each remainder batch size.

    Returns the batch sizes; the callables (``plain, hooked`` per batch size): the plain passes
    give the total time, the hooked ones append, per pass, the seconds spent inside the
    Conv/Linear modules ``names`` to the returned lists; and, for the full batch size, the
    seconds per pass spent inside each of the ``others`` modules.

    ``example_inputs`` must be on ``device``. On the CPU the hooks read ``clock``; on CUDA they
    record ``torch.cuda.Event(enable_timing=True)`` pairs on the current stream, read after the
    pass (``torch.cuda.synchronize``), so a module's time is the GPU's time between its first and
    its last kernel; on other devices they synchronize the device before reading the wall clock.
    """
    batches = remainder_batches(batch)
    modules = dict(model.named_modules())
    dev = torch.device(device)
    timer = time.thread_time if clock == "cpu" else time.perf_counter
    per_pass: list[list[float]] = [[] for _ in batches]
    other_pass: dict[str, list[float]] = {n: [] for n in others}
    started: dict[int, Any] = {}
    acc = [0.0]
    other_acc: dict[str, float] = {}
    pending: list[tuple[str | None, Any, Any]] = []  # CUDA: (other module or None, start, end) events

    if dev.type == "cuda":

        def pre(module: nn.Module, args: Any) -> None:
            started[id(module)] = _event()

        def post(module: nn.Module, args: Any, output: Any) -> None:
            start = started.pop(id(module), None)
            if start is not None:
                pending.append((None, start, _event()))

        def post_other(name: str) -> Callable[..., None]:
            def hook(module: nn.Module, args: Any, output: Any) -> None:
                start = started.pop(id(module), None)
                if start is not None:
                    pending.append((name, start, _event()))

            return hook

    else:
        sync = dev.type != "cpu"

        def pre(module: nn.Module, args: Any) -> None:
            if sync:
                devices.synchronize(dev)
            started[id(module)] = timer()

        def post(module: nn.Module, args: Any, output: Any) -> None:
            if sync:
                devices.synchronize(dev)
            t = timer()
            acc[0] += t - started.pop(id(module), t)

        def post_other(name: str) -> Callable[..., None]:
            def hook(module: nn.Module, args: Any, output: Any) -> None:
                if sync:
                    devices.synchronize(dev)
                t = timer()
                other_acc[name] = other_acc.get(name, 0.0) + t - started.pop(id(module), t)

            return hook

    def resolve() -> None:
        """CUDA: wait for the pass and add up its events' times (seconds)."""
        if not pending:
            return
        torch.cuda.synchronize(dev)
        for name, start, end in pending:
            dt = start.elapsed_time(end) / 1e3
            if name is None:
                acc[0] += dt
            else:
                other_acc[name] = other_acc.get(name, 0.0) + dt
        pending.clear()

    fns: list[Callable[[], Any]] = []
    for k, b in enumerate(batches):
        args = make_batch(example_inputs, b)

        def plain(args: tuple[Any, ...] = args) -> Any:
            return model(*args)

        def hooked(args: tuple[Any, ...] = args, k: int = k) -> Any:
            handles = []
            for n in names:
                handles.append(modules[n].register_forward_pre_hook(pre))
                handles.append(modules[n].register_forward_hook(post))
            if k == 0:
                for n in others:
                    handles.append(modules[n].register_forward_pre_hook(pre))
                    handles.append(modules[n].register_forward_hook(post_other(n)))
            acc[0] = 0.0
            other_acc.clear()
            pending.clear()
            try:
                return model(*args)
            finally:
                for h in handles:
                    h.remove()
                resolve()
                per_pass[k].append(acc[0])
                if k == 0:
                    for n in others:
                        other_pass[n].append(other_acc.get(n, 0.0))

        fns += [plain, hooked]
    return batches, fns, per_pass, other_pass


def measure_eager(
    entries: Mapping[str, Entry],
    layers: Mapping[str, LayerRef],
    model: nn.Module,
    example_inputs: Any,
    batch: int,
    threads: int,
    settings: Settings,
    device: Any,
    progress: Callable[[str], None] | None = None,
) -> Measured:
    """Measure a table in eager PyTorch: every grid point standalone, the dense model plain and hooked.

    Fills in every entry's ``ms`` and every layer's ``remainder_ms`` (the leaf modules that work on its
    output channels); the layers' time inside the model, and the leaf modules', are timed with hooks.
    """
    warmup, burst, clock = settings.warmup, settings.burst, settings.clock
    fns: list[Callable[[], Any]] = []
    for e in entries.values():
        xs = {cin: e.spec.input(batch, cin, device) for cin in e.ins}
        fns += [bind(e.spec.module(cin, cout, device), xs[cin]) for cin, cout in e.points()]
    n_points = len(fns)
    owners = attribute_leaves(model, example_inputs, list(layers))
    batches, model_fns, in_net_passes, other_passes = model_passes(
        model, example_inputs, list(layers), list(owners), batch, clock, device
    )
    fns += model_fns
    if progress is not None:
        progress(
            f"measuring {len(entries)} layer configurations ({n_points} points) and the model at batch sizes {batches}"
        )
    with measurement_context([model], threads, device):
        samples = time_interleaved(
            fns,
            warmup,
            settings.repeats,
            settings.min_time_s,
            burst=burst,
            burst_warmup=1,
            clock=clock,  # type: ignore[arg-type]
            device=device,
        )

    stat = statistic(settings.quantile)
    pos = 0
    for e in entries.values():
        values = {p: stat(samples[pos + j]) for j, p in enumerate(e.points())}
        pos += len(values)
        if e.spec.depthwise:
            e.ms = [[values[(i, i)]] for i in e.ins]
        else:
            e.ms = [[values[(i, o)] for o in e.outs] for i in e.ins]
    totals = [stat(samples[n_points + 2 * k]) for k in range(len(batches))]

    # hooked passes log every call: drop the warm-up rounds and each turn's untimed first call
    def timed(values: list[float]) -> list[float]:
        return [v for j, v in enumerate(values[warmup:]) if j % (burst + 1)]

    in_net = [stat(timed(p)) for p in in_net_passes]
    for leaf, owner in owners.items():
        if owner is not None:
            layers[owner].remainder_ms += stat(timed(other_passes[leaf]))
    return Measured(batches, totals, in_net, n_points)


def _event() -> Any:
    """A timing CUDA event recorded now on the current stream."""
    event = torch.cuda.Event(enable_timing=True)
    event.record()
    return event


def attribute_leaves(model: nn.Module, example_inputs: Any, names: list[str]) -> dict[str, str | None]:
    """For every other leaf module: the Conv/Linear layer whose channels it works on, or None.

    One forward pass records the call order; a leaf module (BN, activation, pooling ...) is
    attributed to the latest Conv/Linear layer called before it whose output has the shape of the
    leaf's input (batch dimension aside) — the layer whose output channels it processes.
    """
    lut = set(names)
    order: list[tuple[str, tuple[int, ...] | None, tuple[int, ...] | None]] = []
    handles = []

    def shape(value: Any) -> tuple[int, ...] | None:
        if isinstance(value, (tuple, list)):
            value = value[0] if value else None
        return tuple(value.shape[1:]) if isinstance(value, torch.Tensor) else None

    def make(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            order.append((name, shape(args), shape(output)))

        return hook

    for name, m in model.named_modules():
        if name and (name in lut or not any(True for _ in m.children())):
            handles.append(m.register_forward_hook(make(name)))
    try:
        with torch.inference_mode():
            model(*make_batch(example_inputs, None))
    finally:
        for h in handles:
            h.remove()
    owner: dict[str, str | None] = {}
    last: dict[tuple[int, ...], str] = {}  # output shape -> latest layer producing it
    for name, in_shape, out_shape in order:
        if name in lut:
            if out_shape is not None:
                last[out_shape] = name
            continue
        if name in owner:
            continue
        owner[name] = last.get(in_shape) if in_shape is not None else None
    return owner


def inputs_from_graph(graph: ModelGraph, device: Any = None) -> tuple[Any, ...]:
    """The inputs the graph was traced with (random ones of the traced shapes for older graphs), on
    ``device`` (default: the device of the graph's model)."""
    if device is None:
        device = devices.model_device(graph.model)
    kept = getattr(graph, "example_inputs", None)
    if kept is not None:
        return tuple(devices.move(tuple(kept), device))
    gm = getattr(graph, "gm", None)
    if gm is None:
        raise MeasureError(
            "LatencyTable.build needs example_inputs: the graph has no traced input shapes", field="example_inputs"
        )
    out = []
    for node in gm.graph.nodes:
        if node.op != "placeholder":
            continue
        meta = node.meta.get("tensor_meta")
        if meta is None:
            raise MeasureError(
                f"LatencyTable.build needs example_inputs: no shape known for input {node.name!r}",
                field="example_inputs",
            )
        out.append(torch.randn(tuple(meta.shape), device=device).to(meta.dtype))
    return tuple(out)


def interp1(xs: Sequence[float], ys: Sequence[float], x: float) -> float:
    """Piecewise-linear interpolation, linear extrapolation from the end segments."""
    pts = sorted(zip(xs, ys))
    if len(pts) == 1:
        x0, y0 = pts[0]
        return y0 * x / x0 if x0 else y0
    if x <= pts[0][0]:
        (x0, y0), (x1, y1) = pts[0], pts[1]
    elif x >= pts[-1][0]:
        (x0, y0), (x1, y1) = pts[-2], pts[-1]
    else:
        i = next(i for i in range(1, len(pts)) if pts[i][0] >= x)
        (x0, y0), (x1, y1) = pts[i - 1], pts[i]
    if x1 == x0:
        return y0
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


def line_fit(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares ``y = a + k x`` with ``a, k >= 0`` (a per-op constant plus a per-element cost).

    Each remainder value is a difference of two measurements, so single points are noisy; a line
    through all of them is steadier than interpolating between them.
    """
    x = np.asarray(xs, dtype=float)
    y = np.asarray(ys, dtype=float)
    if len(x) == 1 or np.ptp(x) == 0:
        return 0.0, float(y.mean() / x.mean()) if x.mean() > 0 else 0.0
    k, a = np.polyfit(x, y, 1)
    if a < 0 or k < 0:
        if k <= 0:
            return float(max(0.0, y.mean())), 0.0
        k = float((x * y).sum() / (x * x).sum())  # through the origin
        return 0.0, max(0.0, k)
    return float(a), float(k)


def cell(axis: Sequence[int], v: float) -> tuple[int, int, float]:
    """Indices (lo, hi) of the grid cell for ``v`` and the weight of ``hi`` (<0 or >1 outside)."""
    if len(axis) == 1:
        return 0, 0, 0.0
    if v <= axis[0]:
        lo = 0
    elif v >= axis[-1]:
        lo = len(axis) - 2
    else:
        lo = max(i for i in range(len(axis) - 1) if axis[i] <= v)
    return lo, lo + 1, (v - axis[lo]) / (axis[lo + 1] - axis[lo])


# ============================================================================================ runtimes
class _Spread(nn.Module):
    """An attention product taking its operands as separate inputs (what an ONNX export needs)."""

    def __init__(self, product: nn.Module) -> None:
        super().__init__()
        self.product = product

    def forward(self, *operands: torch.Tensor) -> torch.Tensor:
        return self.product(operands)


def measuring_device(runtime: str, device: Any) -> torch.device:
    """Where a runtime runs a model on ``device``: ONNX Runtime (CPU execution provider) on the CPU."""
    return torch.device("cpu") if runtime == "onnxruntime" else torch.device(device)


@contextlib.contextmanager
def compile_limits(runtime: str) -> Iterator[None]:
    """For ``compile``: no recompile limit while the table's modules run.

    ``torch.compile`` keeps the code it compiles per Python function, and every standalone layer
    runs the same ``forward``: past ``recompile_limit`` (8) entries it would silently run the rest
    eagerly. The cache puts the entry it hits first, so a turn's untimed call makes the timed ones
    find theirs at once.
    """
    if runtime != "compile":
        yield
        return
    import torch._dynamo

    with torch._dynamo.config.patch(recompile_limit=1 << 20, accumulated_recompile_limit=1 << 20):
        yield


def runtime_point(
    spec: LayerSpec, cin: int, cout: int, setting: LatencySetting, device: Any, batch: int
) -> Callable[[int], Callable[[], Any]]:
    """``batch → call``: a zero-argument call of the standalone layer at ``(cin, cout)``, as ``setting``'s
    runtime runs it, on a random input of ``batch`` rows.

    ``compile`` compiles at the first call of each batch size; ``onnxruntime`` exports the layer now, at
    ``batch`` rows (one file serves every batch size, or, where the export could not make the batch
    dynamic, another is exported for each other batch size), and runs it on the CPU (``device`` must be
    the CPU).
    """
    module: nn.Module = spec.module(cin, cout, device)
    module = _Spread(module) if spec.is_product else module
    made: dict[int, nn.Module] = {}

    def timed_at(b: int) -> nn.Module:
        first = next(iter(made.values()), None)
        if first is not None and not _static_batch(first):
            return first
        if b not in made:
            made[b] = runtime_model(module, spec.input(max(2, b), cin, device), setting)[0]
        return made[b]

    timed_at(batch)

    def at(b: int) -> Callable[[], Any]:
        timed = timed_at(b)
        x = spec.input(b, cin, device)
        args = x if isinstance(x, tuple) else (x,)

        def call() -> Any:
            return timed(*args)

        return call

    return at


def _static_batch(timed: nn.Module) -> bool:
    """Whether an ONNX Runtime model takes one batch size only (its export could not make it dynamic)."""
    session = getattr(timed, "session", None)
    return session is not None and any(isinstance(i.shape[0], int) for i in session.get_inputs() if i.shape)


def measure_in_runtime(
    entries: Mapping[str, Entry],
    layers: Mapping[str, LayerRef],
    model: nn.Module,
    example_inputs: Any,
    setting: LatencySetting,
    settings: Settings,
    device: Any,
    progress: Callable[[str], None] | None = None,
) -> Measured:
    """Measure a table in a runtime other than eager PyTorch (``compile``, ``onnxruntime``).

    Every grid point of every entry is timed standalone through
    :func:`~slimtune.compressors.measures.runtimes.runtime_model`, the dense point of each layer
    configuration also at the smaller remainder batch sizes, the dense model through ``runtime_model``
    at each remainder batch size, and the runtime's cost of one call (a ``ReLU`` of one element), all
    round-robin in one measurement. Every standalone time is kept less that call cost (``e.ms`` is filled
    in): a layer inside the model does not pay it, the model's one call does (in its remainder).
    Hooks cannot see inside a compiled graph or an ONNX session, so the layers' time in the model is
    taken as their standalone time. ``setting.batch`` is the full batch size; ``example_inputs`` are on
    ``device``.
    """
    batch = int(setting.batch or 1)
    batches = remainder_batches(batch)
    fns: list[Callable[[], Any]] = []
    dense: dict[str, int] = {}  # layer configuration -> index of its dense point at batches[1]
    used = {layer.key for layer in layers.values()}
    with compile_limits(setting.runtime):
        probe = torch.randn(1, 1, device=device)
        empty, _ = runtime_model(nn.ReLU(), probe, setting)
        fns.append(bind(empty, probe))
        for key, e in entries.items():
            for cin, cout in e.points():
                at = runtime_point(e.spec, cin, cout, setting, device, batch)
                fns.append(at(batch))
                if key in used and (cin, cout) == _dense_point(e.spec):
                    dense[key] = len(fns)
                    fns += [at(b) for b in batches[1:]]
        n_points = len(fns) - 1 - len(dense) * (len(batches) - 1)
        _, model_fns = runtime_passes(model, example_inputs, batch, setting, device)
        fns += model_fns
        if progress is not None:
            progress(
                f"measuring {len(entries)} layer configurations ({n_points} points) and the model at batch sizes "
                f"{batches} in {setting.runtime}"
            )
        with measurement_context([model], setting.threads, device):
            samples = time_interleaved(
                fns,
                settings.warmup,
                settings.repeats,
                settings.min_time_s,
                burst=settings.burst,
                burst_warmup=1,
                clock=settings.clock,  # type: ignore[arg-type]
                device=device,
            )
    stat = statistic(settings.quantile)
    call_ms = stat(samples[0])

    def ms(k: int) -> float:
        return max(0.0, stat(samples[k]) - call_ms)

    pos = 1
    at_batch: dict[str, list[float]] = {}
    for key, e in entries.items():
        values = {}
        for cin, cout in e.points():
            values[(cin, cout)] = ms(pos)
            pos += 1
            if dense.get(key) == pos:
                at_batch[key] = [values[(cin, cout)]] + [ms(k) for k in range(pos, pos + len(batches) - 1)]
                pos += len(batches) - 1
        if e.spec.depthwise:
            e.ms = [[values[(i, i)]] for i in e.ins]
        else:
            e.ms = [[values[(i, o)] for o in e.outs] for i in e.ins]
    totals = [stat(s) for s in samples[pos:]]
    # each layer at its own counts (as predict looks it up), scaled to the smaller batches as its dense point
    scale = {key: [_ratio(v, values[0]) for v in values] for key, values in at_batch.items()}
    layers_ms = [
        sum(layer.calls * entries[layer.key].lookup(*layer.orig) * scale[layer.key][k] for layer in layers.values())
        for k in range(len(batches))
    ]
    return Measured(batches, totals, layers_ms, n_points, call_ms)


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else 1.0


def _dense_point(spec: LayerSpec) -> tuple[int, int]:
    return (spec.in_ch, spec.in_ch) if spec.depthwise else (spec.in_ch, spec.out_ch)


def runtime_passes(
    model: nn.Module, example_inputs: Any, batch: int, setting: LatencySetting, device: Any
) -> tuple[list[int], list[Callable[[], Any]]]:
    """The dense model as ``setting``'s runtime runs it, one call per remainder batch size.

    ``example_inputs`` must be on ``device`` (the CPU for ONNX Runtime).
    """
    batches = remainder_batches(batch)
    timed, _ = runtime_model(model, example_inputs, setting)
    fns: list[Callable[[], Any]] = []
    for b in batches:
        args = make_batch(example_inputs, b)

        def plain(args: tuple[Any, ...] = args) -> Any:
            return timed(*args)

        fns.append(plain)
    return batches, fns
