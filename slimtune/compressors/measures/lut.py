"""A NetAdapt-style latency lookup table: predict a channel-pruned model's latency without building it.

NetAdapt (Yang et al., "NetAdapt: Platform-Aware Neural Network Adaptation for Mobile
Applications", ECCV 2018) predicts the latency of a candidate network as the sum of per-layer
latencies looked up in a table measured beforehand. :class:`LatencyTable` does the same for the
channel counts a :class:`~slimtune.compressors.CompressionPlan` gives, and adds what the
convolutions do not explain, so that the prediction is for the *whole* model:

``predict(plan) = Σ_layers calls × γ × lut_layer(in', out') + remainder(batch × s)``

* ``lut_layer`` — every Conv/Linear layer is measured as a standalone module of the same kind,
  kernel, stride, padding, dilation, bias and input size, at a grid of kept channel ratios
  (``grid``) of its prunable dimensions (input channels when a prunable group feeds them, output
  channels when it produces a prunable group; depthwise convolutions on one axis, with
  ``groups = channels``; grouped convolutions keep their groups, counts rounded to multiples).
  Values between grid points are interpolated bilinearly in (in', out') — exact for costs of the
  form ``a + b·in + c·out + d·in·out`` — and extrapolated linearly from the nearest cell below the
  smallest ratio. Identical configurations are measured once.
* ``γ`` — the ratio of the convolutions' time *inside* the dense model (timed with module hooks)
  to their standalone time; it carries cache and memory effects of the real network into the
  table.
* ``remainder`` — batch norm, activations, pooling, additions, concatenations and per-op overhead:
  the dense model's time minus its Conv/Linear time, measured at batch sizes ``B``, ``B/2``,
  ``B/4``, ``B/8``. Their cost is proportional to the number of activation elements (plus a
  constant per op), and shrinking the kept channels by a factor ``s`` shrinks the elements as
  shrinking the batch by ``s`` does, so the remainder of a plan is read off that curve at
  ``B × s``, where ``s`` is the kept fraction of the Conv/Linear output elements.

Only channel pruning changes the prediction (quantization settings and unstructured sparsity are
ignored). Measurements are valid for the machine, thread count and batch size they were taken
with; save a table with :meth:`LatencyTable.save` and reload it on the same machine.

Example:
    .. code-block:: python

        import torch
        from slimtune.compressors import trace, CompressionPlan
        from slimtune.compressors.measures import LatencyTable
        from slimtune.examples.models import resnet20

        model = resnet20()
        x = torch.randn(1, 3, 32, 32)
        graph = trace(model, x)
        table = LatencyTable.build(graph, x, batch_size=32, threads=1)
        table.predict(CompressionPlan.uniform(graph, 0.5))   # ms per batch of 32
        table.save("resnet20.lut.json")
        table = LatencyTable.load("resnet20.lut.json", graph)
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from slimtune.compressors.measures.latency import (
    make_batch,
    measurement_context,
    time_interleaved,
)

if TYPE_CHECKING:
    from slimtune.compressors.graph import ModelGraph
    from slimtune.compressors.plan import CompressionPlan

__all__ = ["LatencyTable"]

_FORMAT = "slimtune.latency_table/1"


@dataclass
class _Layer:
    """A Conv/Linear layer of the model and where its measurements are."""

    name: str
    key: str  # configuration key into LatencyTable.entries
    orig: tuple[int, int]  # (in, out) channels / features
    calls: int
    out_elems: float  # output elements per sample of one call (remainder weighting)
    depthwise: bool


@dataclass
class _Entry:
    """Standalone latencies (ms) of one layer configuration on a grid of channel counts."""

    ins: list[int]
    outs: list[int]
    ms: list[list[float]]  # ms[i][j] for (ins[i], outs[j]); depthwise: outs == ins, ms[i][i] used


@dataclass
class LatencyTable:
    """Per-layer latency lookup table of one model; predicts the latency of channel-pruned versions.

    Build it with :meth:`LatencyTable.build`; predict with :meth:`predict`; cache it with
    :meth:`to_json`/:meth:`from_json` or :meth:`save`/:meth:`load`. See the module docstring for
    the latency model.

    Attributes:
        batch_size: Batch size of the measurements (predictions are ms per batch).
        threads: Intra-op threads of the measurements.
        dense_ms: Measured latency of the unpruned model.
        gamma: In-network / standalone time ratio of the Conv/Linear layers.
        remainder_batches: Batch sizes at which the non-Conv/Linear time was measured.
        remainder_ms: That time at each of those batch sizes.
        layers: Per layer: configuration key, original counts, calls, output elements.
        entries: Per configuration: the grid and its latencies.
        graph: The model graph (for predicting from plans); not serialised.
        meta: Free-form information (torch version, build time, grid ...).
    """

    batch_size: int
    threads: int
    dense_ms: float
    gamma: float
    remainder_batches: list[float]
    remainder_ms: list[float]
    layers: dict[str, _Layer]
    entries: dict[str, _Entry]
    graph: ModelGraph | None = field(default=None, repr=False, compare=False)
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    # ------------------------------------------------------------------------------------- build
    @classmethod
    def build(
        cls,
        graph: ModelGraph,
        example_inputs: Any = None,
        batch_size: int = 32,
        threads: int = 1,
        grid: Sequence[float] = (0.25, 0.5, 0.75, 1.0),
        warmup: int = 3,
        repeats: int = 15,
        min_time_s: float = 0.0,
        quantile: float = 0.5,
        progress: Callable[[str], None] | None = None,
    ) -> LatencyTable:
        """Measure the table for ``graph``'s model.

        Args:
            graph: From :func:`slimtune.compressors.trace`; ``graph.layers`` gives the Conv/Linear
                layers and their input shapes, ``graph.groups`` which of their dimensions
                pruning can change (without groups both dimensions are measured).
            example_inputs: Model inputs (a tensor or tuple); tiled to ``batch_size``. When None,
                random inputs of the traced placeholder shapes are used.
            batch_size: Batch size to predict for.
            threads: Intra-op threads (restored afterwards).
            grid: Kept-channel ratios in (0, 1] to measure; 1.0 is always added.
            warmup: Untimed rounds first.
            repeats: Timed rounds. One round times every grid point of every layer
                configuration and the whole model at each remainder batch size once
                (round-robin), so machine noise hits all measurements alike.
            min_time_s: Minimum timed seconds of all rounds together.
            quantile: Statistic kept of each measurement's timed calls: 0.5 is the median (what
                :func:`measure_latency` reports); a low quantile such as 0.1 is steadier on a
                busy machine.
            progress: Optional callback receiving one line per measured configuration.

        Returns:
            The table; ``table.graph`` is set to ``graph``.

        Raises:
            ValueError: A grid value is outside (0, 1], or ``batch_size``/``threads`` are not
                positive.
        """
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
            raise ValueError(f"threads must be a positive int, got {threads!r}")
        if not 0.0 < quantile < 1.0:
            raise ValueError(f"quantile must be in (0, 1), got {quantile!r}")
        ratios = sorted({float(r) for r in grid} | {1.0})
        for r in ratios:
            if not 0.0 < r <= 1.0:
                raise ValueError(f"grid ratio {r!r} is outside (0, 1]")
        t_start = time.perf_counter()
        model = graph.model
        inputs = example_inputs if example_inputs is not None else _inputs_from_graph(graph)
        modules = dict(model.named_modules())
        prunable_dims = _prunable_dims(graph)

        layers: dict[str, _Layer] = {}
        configs: dict[str, tuple[nn.Module, tuple[int, ...], list[int], list[int], bool]] = {}
        for name, info in graph.layers.items():
            m = modules.get(name)
            if not _supported(m) or info.in_shape is None or info.out_shape is None:
                continue
            cin, cout = _counts_of(m)
            depthwise = isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1 and m.groups == cin
            din, dout = (True, True) if prunable_dims is None else prunable_dims.get(name, (False, False))
            if depthwise:
                din = dout = din or dout
            g = m.groups if isinstance(m, nn.modules.conv._ConvNd) and not depthwise else 1
            ins = _grid_counts(cin, ratios if din else [1.0], g)
            outs = ins if depthwise else _grid_counts(cout, ratios if dout else [1.0], g)
            in_shape = tuple(int(s) for s in info.in_shape[1:])
            key = _config_key(m, in_shape, batch_size, ins, outs, depthwise)
            configs.setdefault(key, (m, in_shape, ins, outs, depthwise))
            out_elems = float(math.prod(info.out_shape[1:]))
            layers[name] = _Layer(name, key, (cin, cout), max(1, int(info.calls)), out_elems, depthwise)

        fns: list[Callable[[], Any]] = []
        slots: dict[str, list[tuple[int, int]]] = {}
        for key, (m, in_shape, ins, outs, depthwise) in configs.items():
            points = [(i, i) for i in ins] if depthwise else [(i, o) for i in ins for o in outs]
            slots[key] = points
            xs = {cin: _input_for(m, in_shape, batch_size, cin) for cin in ins}
            fns += [_bind(_standalone(m, cin, cout, depthwise).eval(), xs[cin]) for cin, cout in points]
        n_layer_fns = len(fns)
        batches, model_fns, in_net_passes = _model_passes(model, inputs, list(layers), batch_size)
        fns += model_fns
        with measurement_context([model], threads):
            samples = time_interleaved(fns, warmup, repeats, min_time_s)
        stat = lambda values: float(np.quantile(np.asarray(values), quantile)) * 1e3  # noqa: E731
        entries: dict[str, _Entry] = {}
        pos = 0
        for key, points in slots.items():
            m, in_shape, ins, outs, depthwise = configs[key]
            med = {p: stat(samples[pos + j]) for j, p in enumerate(points)}
            pos += len(points)
            if depthwise:
                ms = [[med[(i, i)] if i == o else float("nan") for o in ins] for i in ins]
                entries[key] = _Entry(list(ins), list(ins), ms)
            else:
                entries[key] = _Entry(list(ins), list(outs), [[med[(i, o)] for o in outs] for i in ins])
        totals = [stat(samples[n_layer_fns + 2 * k]) for k in range(len(batches))]
        in_net = [stat(p[warmup:] if len(p) > warmup else p) for p in in_net_passes]
        if progress is not None:
            progress(f"measured {len(configs)} layer configurations, {n_layer_fns} points, {len(samples[0])} rounds")

        standalone = sum(
            layers[n].calls * entries[layers[n].key].ms[-1][-1] for n in layers
        )
        conv_in_net = in_net[0]  # at the full batch size
        gamma = conv_in_net / standalone if standalone > 0 else 1.0
        remainder = [max(0.0, t - c) for t, c in zip(totals, in_net)]
        table = cls(
            batch_size=batch_size,
            threads=threads,
            dense_ms=totals[0],
            gamma=gamma,
            remainder_batches=[float(b) for b in batches],
            remainder_ms=remainder,
            layers=layers,
            entries=entries,
            graph=graph,
            meta={
                "torch": torch.__version__,
                "grid": ratios,
                "build_s": round(time.perf_counter() - t_start, 3),
                "configs": len(entries),
                "quantile": quantile,
                "conv_ms_in_network": conv_in_net,
                "conv_ms_standalone": standalone,
            },
        )
        return table

    # ------------------------------------------------------------------------------------- predict
    def predict(
        self,
        plan_or_counts: CompressionPlan | Mapping[str, tuple[int, int]] | None = None,
        graph: ModelGraph | None = None,
    ) -> float:
        """Predicted latency in ms per batch of :attr:`batch_size`.

        Args:
            plan_or_counts: A :class:`~slimtune.compressors.CompressionPlan` (channel counts from
                ``graph.channel_counts``), or ``{layer: (in_channels, out_channels)}`` (layers not
                listed keep their original counts), or None for the unpruned model.
            graph: The model graph, needed for a plan when the table was loaded from JSON and
                has no :attr:`graph`.

        Raises:
            ValueError: A layer name is not in the table, or a count is not positive.
        """
        return self.explain(plan_or_counts, graph)["total"]

    def explain(
        self,
        plan_or_counts: CompressionPlan | Mapping[str, tuple[int, int]] | None = None,
        graph: ModelGraph | None = None,
    ) -> dict[str, float]:
        """The prediction broken down: ms per Conv/Linear layer, ``remainder`` and ``total``."""
        counts = self._counts(plan_or_counts, graph)
        out: dict[str, float] = {}
        kept_elems = total_elems = 0.0
        for name, layer in self.layers.items():
            cin, cout = counts.get(name, layer.orig)
            if layer.depthwise:
                cin = cout
            ms = _interpolate(self.entries[layer.key], cin, cout, layer.depthwise)
            out[name] = layer.calls * self.gamma * ms
            w = layer.out_elems * layer.calls
            total_elems += w
            kept_elems += w * cout / layer.orig[1]
        s = kept_elems / total_elems if total_elems > 0 else 1.0
        out["remainder"] = max(0.0, _interp1(self.remainder_batches, self.remainder_ms, self.batch_size * s))
        out["total"] = sum(out.values())
        return out

    def _counts(self, plan_or_counts: Any, graph: ModelGraph | None) -> dict[str, tuple[int, int]]:
        if plan_or_counts is None:
            return {}
        if isinstance(plan_or_counts, Mapping):
            counts = {}
            for name, value in plan_or_counts.items():
                if name not in self.layers:
                    raise ValueError(
                        f"layer {name!r} is not in the latency table; its Conv/Linear layers are: "
                        f"{_preview(list(self.layers))}"
                    )
                try:
                    cin, cout = (int(v) for v in value)
                except (TypeError, ValueError):
                    raise ValueError(f"counts[{name!r}] must be (in_channels, out_channels), got {value!r}") from None
                if cin < 1 or cout < 1:
                    raise ValueError(f"counts[{name!r}] = {value!r}: channel counts must be >= 1")
                counts[name] = (cin, cout)
            return counts
        graph = graph if graph is not None else self.graph
        if graph is None:
            raise ValueError("predicting from a plan needs the model graph: pass graph= (the table was loaded "
                             "without one), or pass {layer: (in, out)} counts")
        all_counts = graph.channel_counts(plan_or_counts)
        return {n: c for n, c in all_counts.items() if n in self.layers}

    # ------------------------------------------------------------------------------------- json
    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (without the graph)."""
        return {
            "format": _FORMAT,
            "batch_size": self.batch_size,
            "threads": self.threads,
            "dense_ms": self.dense_ms,
            "gamma": self.gamma,
            "remainder_batches": list(self.remainder_batches),
            "remainder_ms": list(self.remainder_ms),
            "layers": {
                n: {"key": l.key, "orig": list(l.orig), "calls": l.calls, "out_elems": l.out_elems,
                    "depthwise": l.depthwise}
                for n, l in self.layers.items()
            },
            "entries": {k: {"ins": e.ins, "outs": e.outs, "ms": e.ms} for k, e in self.entries.items()},
            "meta": self.meta,
        }

    def to_json(self, **kwargs: Any) -> str:
        """The table as a JSON string (``kwargs`` go to :func:`json.dumps`)."""
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], graph: ModelGraph | None = None) -> LatencyTable:
        """Rebuild a table from :meth:`to_dict` output; ``graph`` is attached for plan predictions."""
        if not isinstance(data, Mapping) or data.get("format") != _FORMAT:
            raise ValueError(f"not a slimtune latency table (expected format {_FORMAT!r})")
        try:
            layers = {
                n: _Layer(n, d["key"], (int(d["orig"][0]), int(d["orig"][1])), int(d["calls"]), float(d["out_elems"]),
                          bool(d["depthwise"]))
                for n, d in data["layers"].items()
            }
            entries = {
                k: _Entry([int(v) for v in e["ins"]], [int(v) for v in e["outs"]],
                          [[float(v) for v in row] for row in e["ms"]])
                for k, e in data["entries"].items()
            }
            table = cls(
                batch_size=int(data["batch_size"]),
                threads=int(data["threads"]),
                dense_ms=float(data["dense_ms"]),
                gamma=float(data["gamma"]),
                remainder_batches=[float(v) for v in data["remainder_batches"]],
                remainder_ms=[float(v) for v in data["remainder_ms"]],
                layers=layers,
                entries=entries,
                graph=graph,
                meta=dict(data.get("meta") or {}),
            )
        except (KeyError, TypeError, IndexError) as e:
            raise ValueError(f"latency table is malformed: missing or invalid field {e}") from None
        missing = {l.key for l in layers.values()} - set(entries)
        if missing:
            raise ValueError(f"latency table is malformed: no entries for configuration(s) {sorted(missing)}")
        if graph is not None:
            unknown = [n for n in layers if n not in graph.layers]
            if unknown:
                raise ValueError(f"latency table does not match the graph: layer(s) {_preview(unknown)} "
                                 "are not in the model; rebuild the table")
        return table

    @classmethod
    def from_json(cls, text: str, graph: ModelGraph | None = None) -> LatencyTable:
        """Rebuild a table from :meth:`to_json` output."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"latency table is not valid JSON: {e}") from None
        return cls.from_dict(data, graph)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the table as JSON to ``path``."""
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.to_json(indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike[str], graph: ModelGraph | None = None) -> LatencyTable:
        """Read a table written by :meth:`save`."""
        with open(path, encoding="utf-8") as f:
            return cls.from_json(f.read(), graph)


# ============================================================================================ helpers
def _preview(names: list[str], n: int = 8) -> str:
    return ", ".join(names[:n]) + (f", ... ({len(names)} in all)" if len(names) > n else "")


def _supported(m: nn.Module | None) -> bool:
    return isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))


def _counts_of(m: nn.Module) -> tuple[int, int]:
    if isinstance(m, nn.Linear):
        return int(m.in_features), int(m.out_features)
    return int(m.in_channels), int(m.out_channels)


def _prunable_dims(graph: ModelGraph) -> dict[str, tuple[bool, bool]] | None:
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
            if m.role in ("in", "dw"):
                d[0] = True
            if m.role in ("out", "dw"):
                d[1] = True
    return {k: (v[0], v[1]) for k, v in dims.items()}


def _grid_counts(n: int, ratios: Sequence[float], multiple: int) -> list[int]:
    """Channel counts for the ratios, rounded to ``multiple`` (groups), at least ``multiple``."""
    if n % multiple:
        multiple = 1
    out = sorted({max(multiple, int(round(r * n / multiple)) * multiple) for r in ratios} | {n})
    return out


def _config_key(m: nn.Module, in_shape: tuple[int, ...], batch: int, ins: list[int], outs: list[int],
                depthwise: bool) -> str:
    if isinstance(m, nn.Linear):
        desc = f"Linear(in={m.in_features},out={m.out_features},bias={m.bias is not None})"
    else:
        desc = (f"{type(m).__name__}(in={m.in_channels},out={m.out_channels},k={tuple(m.kernel_size)},"
                f"s={tuple(m.stride)},p={m.padding},d={tuple(m.dilation)},g={m.groups},dw={depthwise},"
                f"bias={m.bias is not None},pm={m.padding_mode})")
    return f"{desc}@{batch}x{'x'.join(map(str, in_shape))}|in={ins}|out={outs}"


def _standalone(m: nn.Module, cin: int, cout: int, depthwise: bool) -> nn.Module:
    """A fresh module like ``m`` with ``cin``/``cout`` channels (float32, random weights)."""
    if isinstance(m, nn.Linear):
        return nn.Linear(cin, cout, bias=m.bias is not None)
    cls = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[len(m.kernel_size)]
    if depthwise:
        groups = cin
    else:
        groups = m.groups if (cin % m.groups == 0 and cout % m.groups == 0) else math.gcd(math.gcd(cin, cout), m.groups)
    return cls(cin, cout, m.kernel_size, m.stride, m.padding, m.dilation, groups, m.bias is not None, m.padding_mode)


def _input_for(m: nn.Module, in_shape: tuple[int, ...], batch: int, cin: int) -> torch.Tensor:
    shape = list(in_shape)
    if isinstance(m, nn.Linear):
        shape[-1] = cin
    else:
        shape[0] = cin
    return torch.randn(batch, *shape)


def _bind(mod: nn.Module, x: torch.Tensor) -> Callable[[], Any]:
    def call() -> Any:
        return mod(x)

    return call


def _remainder_batches(batch: int) -> list[int]:
    return sorted({max(1, batch // d) for d in (1, 2, 4, 8)}, reverse=True)


def _model_passes(model: nn.Module, example_inputs: Any, names: list[str], batch: int
                  ) -> tuple[list[int], list[Callable[[], Any]], list[list[float]]]:
    """Plain and hooked forward passes of the dense model at each remainder batch size.

    Returns the batch sizes, the callables (``plain, hooked`` per batch size: the plain passes
    give the total time, the hooked ones record, per pass, the seconds spent inside the
    Conv/Linear modules ``names``) and the lists the hooked passes append to.
    """
    batches = _remainder_batches(batch)
    modules = dict(model.named_modules())
    clock = time.perf_counter
    per_pass: list[list[float]] = [[] for _ in batches]
    current: dict[int, float] = {}
    acc = [0.0]

    def pre(module: nn.Module, args: Any) -> None:
        current[id(module)] = clock()

    def post(module: nn.Module, args: Any, output: Any) -> None:
        acc[0] += clock() - current.pop(id(module), clock())

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
            acc[0] = 0.0
            try:
                return model(*args)
            finally:
                for h in handles:
                    h.remove()
                per_pass[k].append(acc[0])

        fns += [plain, hooked]
    return batches, fns, per_pass


def _inputs_from_graph(graph: ModelGraph) -> tuple[torch.Tensor, ...]:
    gm = getattr(graph, "gm", None)
    if gm is None:
        raise ValueError("LatencyTable.build needs example_inputs: the graph has no traced placeholders")
    out = []
    for node in gm.graph.nodes:
        if node.op != "placeholder":
            continue
        meta = node.meta.get("tensor_meta")
        if meta is None:
            raise ValueError(f"LatencyTable.build needs example_inputs: no shape known for input {node.name!r}")
        out.append(torch.randn(tuple(meta.shape)).to(meta.dtype))
    return tuple(out)


def _interp1(xs: Sequence[float], ys: Sequence[float], x: float) -> float:
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


def _cell(axis: Sequence[int], v: float) -> tuple[int, int, float]:
    """Indices (lo, hi) of the grid cell for ``v`` and the weight of ``hi`` (may be <0 or >1)."""
    if len(axis) == 1:
        return 0, 0, 0.0
    if v <= axis[0]:
        lo = 0
    elif v >= axis[-1]:
        lo = len(axis) - 2
    else:
        lo = max(i for i in range(len(axis) - 1) if axis[i] <= v)
    hi = lo + 1
    return lo, hi, (v - axis[lo]) / (axis[hi] - axis[lo])


def _interpolate(e: _Entry, cin: float, cout: float, depthwise: bool) -> float:
    """Bilinear (depthwise: linear) interpolation/extrapolation of the table at (cin, cout)."""
    floor = 0.05 * min(v for row in e.ms for v in row if not math.isnan(v))
    if depthwise:
        diag = [e.ms[i][i] for i in range(len(e.ins))]
        return max(floor, _scale_single(e.ins, diag, cout))
    i0, i1, wi = _cell(e.ins, cin)
    o0, o1, wo = _cell(e.outs, cout)
    v = ((1 - wi) * (1 - wo) * e.ms[i0][o0] + (1 - wi) * wo * e.ms[i0][o1]
         + wi * (1 - wo) * e.ms[i1][o0] + wi * wo * e.ms[i1][o1])
    # an axis measured at one count only (not prunable): scale proportionally if asked otherwise
    if len(e.ins) == 1 and cin != e.ins[0]:
        v *= cin / e.ins[0]
    if len(e.outs) == 1 and cout != e.outs[0]:
        v *= cout / e.outs[0]
    return max(floor, v)


def _scale_single(axis: Sequence[int], values: Sequence[float], v: float) -> float:
    if len(axis) == 1:
        return values[0] * v / axis[0]
    return _interp1(axis, values, v)
