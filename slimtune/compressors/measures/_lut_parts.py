"""Internals of :mod:`slimtune.compressors.measures.lut`: layer specs, table entries, interpolation.

A :class:`LayerSpec` describes a Conv/Linear layer well enough to build a standalone copy at other
channel counts; an :class:`Entry` holds the latencies of one configuration on a grid of
(in, out) counts plus exact points, and interpolates between them. The functions build the
measured callables (standalone layers, plain and hooked whole-model passes) and fit the remainder.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from slimtune import devices
from slimtune.compressors.measures.latency import make_batch
from slimtune.errors import MeasureError

if TYPE_CHECKING:
    from slimtune.compressors.graph import ModelGraph

CONV_TYPES = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


@dataclass(frozen=True)
class LayerSpec:
    """What a standalone copy of a layer needs: its kind, hyper-parameters and input shape."""

    kind: str  # "conv" | "linear" | "matmul" | "sdpa" (attention products: in_ch = out_ch = heads)
    in_ch: int
    out_ch: int
    in_shape: tuple[int, ...]  # without the batch dimension
    bias: bool
    kernel: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    padding: Any = ()  # tuple or "same"/"valid"
    dilation: tuple[int, ...] = ()
    groups: int = 1
    padding_mode: str = "zeros"
    depthwise: bool = False
    operands: tuple[tuple[int, ...], ...] = ()  # products: each operand's shape without the batch dim
    head_axes: tuple[int, ...] = ()  # products: the dim of each operand holding the heads (-1: none)

    @classmethod
    def product(cls, kind: str, heads: int, operands: Sequence[tuple[Sequence[int], int | None]]) -> LayerSpec:
        """A product outside the layers (``matmul`` or ``sdpa``) whose cost scales with ``heads``."""
        shapes = tuple(tuple(int(v) for v in shape[1:]) for shape, _ in operands)
        axes = tuple(-1 if axis is None else int(axis) - 1 for _, axis in operands)
        return cls(kind, heads, heads, shapes[0], False, depthwise=True, operands=shapes, head_axes=axes)

    @property
    def is_product(self) -> bool:
        return self.kind in ("matmul", "sdpa")

    @classmethod
    def of(cls, m: nn.Module, in_shape: tuple[int, ...]) -> LayerSpec:
        if isinstance(m, nn.Linear):
            return cls("linear", int(m.in_features), int(m.out_features), in_shape, m.bias is not None)
        pad = m.padding if isinstance(m.padding, str) else tuple(int(p) for p in m.padding)
        return cls(
            "conv",
            int(m.in_channels),
            int(m.out_channels),
            in_shape,
            m.bias is not None,
            tuple(int(k) for k in m.kernel_size),
            tuple(int(s) for s in m.stride),
            pad,
            tuple(int(d) for d in m.dilation),
            int(m.groups),
            str(m.padding_mode),
            depthwise=m.groups > 1 and m.groups == m.in_channels,
        )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LayerSpec:
        tup = {k: tuple(d[k]) for k in ("in_shape", "kernel", "stride", "dilation")}
        pad = d["padding"] if isinstance(d["padding"], str) else tuple(d["padding"])
        ops = {"operands": tuple(tuple(o) for o in d.get("operands", ())), "head_axes": tuple(d.get("head_axes", ()))}
        return cls(**{**d, **tup, **ops, "padding": pad})

    def groups_for(self, cin: int, cout: int) -> int:
        if self.depthwise:
            return cin
        g = self.groups
        return g if cin % g == 0 and cout % g == 0 else math.gcd(math.gcd(cin, cout), g)

    def module(self, cin: int, cout: int, device: Any = "cpu") -> nn.Module:
        """A standalone layer of this kind at ``(cin, cout)`` channels, created on ``device``."""
        if self.is_product:
            return _Product(self.kind).eval()
        if self.kind == "linear":
            return nn.Linear(cin, cout, bias=self.bias, device=device).eval()
        cls = CONV_TYPES[len(self.kernel)]
        return cls(
            cin,
            cout,
            self.kernel,
            self.stride,
            self.padding,
            self.dilation,
            self.groups_for(cin, cout),
            self.bias,
            self.padding_mode,
            device=device,
        ).eval()

    def input(self, batch: int, cin: int, device: Any = "cpu") -> Any:
        """A random input of ``batch`` rows for :meth:`module` at ``cin`` channels, on ``device``."""
        if self.is_product:  # every operand's heads scaled alike (grouped-query k/v keep their ratio)
            out = []
            for shape, axis in zip(self.operands, self.head_axes):
                shape = list(shape)
                if axis >= 0:
                    shape[axis] = max(1, shape[axis] * cin // self.in_ch)
                out.append(torch.randn(batch, *shape, device=device))
            return tuple(out)
        shape = list(self.in_shape)
        shape[-1 if self.kind == "linear" else 0] = cin
        return torch.randn(batch, *shape, device=device)


class _Product(nn.Module):
    """A standalone attention product: ``a @ b`` or ``scaled_dot_product_attention(q, k, v)``."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def forward(self, operands: tuple[torch.Tensor, ...]) -> torch.Tensor:
        if self.kind == "sdpa":
            q, k, v = operands
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=k.shape[-3] != q.shape[-3])
        return torch.matmul(*operands)


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
