"""A NetAdapt-style latency lookup table: predict a channel-pruned model's latency without building it.

NetAdapt (Yang et al., "NetAdapt: Platform-Aware Neural Network Adaptation for Mobile
Applications", ECCV 2018) predicts the latency of a candidate network as the sum of per-layer
latencies looked up in a table measured beforehand. :class:`LatencyTable` does the same for the
channel counts a :class:`~slimtune.compressors.CompressionPlan` gives, and adds what the
convolutions do not explain, so that the prediction is for the *whole* model:

``predict(plan) = Σ_layers calls × γ × lut_layer(in', out') + remainder(B × s)``

* ``lut_layer`` — every Conv/Linear layer is measured as a standalone module of the same kind,
  kernel, stride, padding, dilation, bias and input size, at a grid of kept-channel ratios
  (``grid``) of its prunable dimensions (input channels when a prunable group feeds them, output
  channels when it produces a prunable group; depthwise convolutions on one axis, with
  ``groups = channels``; grouped convolutions keep their groups, counts rounded to multiples).
  Between grid points the table interpolates bilinearly in (in', out') — exact for costs of the
  form ``a + b·in + c·out + d·in·out`` — and extrapolates linearly from the nearest cell below the
  smallest ratio. Identical configurations are measured once.
* *exact points* — CPU convolution kernels (oneDNN) switch algorithms with the channel counts, so
  a count between two grid points can cost much more (or less) than the interpolation says
  (measured: ``Conv2d(16→32, 3×3)`` on 32×32 maps at batch 32 took 4 ms, ``Conv2d(17→32)``
  14 ms). The grid holds the counts of uniform plans; for other counts :meth:`predict` by default
  measures the exact ``(in', out')`` of each such layer once (standalone, ~0.1 s) and keeps it
  in the table, where it takes precedence over the interpolation (``measure_missing=False``
  interpolates only).
* ``γ`` — the ratio of the layers' time *inside* the dense model (timed with module hooks) to
  their standalone time; it carries the network's cache and memory effects into the table.
* *attention products* — the ``QKᵀ`` and ``AV`` products (or the fused
  ``scaled_dot_product_attention``) that attention runs outside any layer are measured standalone at a
  grid of kept heads (grouped-query key/value heads scaled alike) and looked up at the heads a plan
  keeps; their dense standalone time is taken out of the remainder.
* ``remainder`` — batch norm, activations, pooling, additions, concatenations and per-op
  overhead: the dense model's time minus its Conv/Linear time, measured at batch sizes ``B``,
  ``B/2``, ``B/4`` and ``B/8``. Its cost is a constant per op plus a cost per activation element;
  keeping a fraction ``s`` of the channels shrinks the elements as shrinking the batch to
  ``B × s`` does. The remainder of a plan is the measured one at ``B`` minus the slope of a
  least-squares line through all those points (slope ≥ 0) times ``B × (1 - s)``. ``s`` weighs
  each layer's kept fraction of output channels by the time of the leaf modules that work on its
  output (BN, activations, pooling: timed with hooks in the dense model and attributed to the
  latest Conv/Linear layer whose output shape they take as input), and the rest of the
  remainder (functional ops) by the layers' output elements. A slow ``MaxPool2d`` after a wide
  first layer, for instance, then follows that layer's channels.

All measurements of a build run round-robin (each grid point and each whole-model pass gets one
turn per round: an untimed call that warms the caches, then ``burst`` timed calls), so machine
noise hits them alike. With one thread the default clock is the thread's CPU time
(:func:`time.thread_time`), which equals the wall-clock latency of an idle machine and ignores
other processes preempting the measurement.

Channel pruning and low-rank factorization change the prediction (quantization settings and unstructured
sparsity are ignored): a layer in the plan's ``factorize`` is timed as its factors (a
:class:`~slimtune.compressors.lowrank.Factorized` module at the pruned counts, measured standalone once per
configuration and kept among the exact points under ``"in,out|method:ranks"``; without measuring, the
layer's looked-up time scaled by the factors' share of its MACs). Measured at batch 32, one thread, eager:
three VGG convs or six ResNet-20 convs at rank ratio 1/4 or 1/2, alone or after 30-50 % pruning, predicted
within −7 % … +1 % of the built models' latency.
A plan's channel counts are those ``compress`` gives it, kept channels rounded to its
``channel_multiple`` (:meth:`CompressionPlan.rounded <slimtune.compressors.CompressionPlan.rounded>`);
``build(channel_multiple=8)`` puts the grid on such counts. A table is valid for the machine,
runtime, thread count and batch size it was measured with; save it with :meth:`LatencyTable.save` and
reload it with :meth:`LatencyTable.load`.

*Devices.* The table is measured on the device of ``graph.model`` (standalone layers, their inputs
and the model passes all run there; example inputs are moved there) and records it:
:attr:`LatencyTable.device` (``"cpu"``, ``"cuda:0"``) and :attr:`LatencyTable.hardware` (the CPU
or GPU model). On CUDA every call is timed with CUDA events and the hooked passes record an event
pair around each layer (see :mod:`~slimtune.compressors.measures.latency`); the default clock is
then ``"wall"``, ``threads`` is not applied and cuDNN autotunes (``cudnn.benchmark``). A table is
refused (:class:`~slimtune.errors.MeasureError` naming both devices) for a device of another kind
— another device type, or a GPU of another model — by :meth:`LatencyTable.use_on` and by
:meth:`LatencyTable.from_dict` given a graph whose model is there (or ``device=``); a GPU index
does not matter (a table built on ``cuda:0`` serves ``cuda:1`` of the same model, and measures
its exact points there). :meth:`LatencyTable.load_or_build` rebuilds instead. Tables saved
before devices were recorded load as CPU tables.

*Runtimes.* A table predicts latency in the runtime it was measured in
(``build(runtime=...)``, a :class:`~slimtune.compressors.measures.LatencySetting`: ``"torch"``,
eager, the default; ``"compile"``; ``"onnxruntime"``) and records it (:attr:`LatencyTable.runtime`;
tables saved before runtimes load as ``"torch"``). In ``compile`` and ``onnxruntime`` every grid
point, every exact point and the dense model at each remainder batch size are timed through
:func:`~slimtune.compressors.measures.runtimes.runtime_model`: each standalone layer compiled
(inductor, static shapes) or exported to ONNX and run in an ONNX Runtime session on the CPU, with
the setting's threads. Module hooks cannot see inside a compiled graph or an ONNX session, so ``γ``
is 1 there, the layers' time in the model is their standalone time less the runtime's cost of one
call (:attr:`LatencyTable.call_ms`: a session run or a compiled call of a one-element ``ReLU``,
~12 µs in ONNX Runtime, ~30 µs compiled), and the remainder at each batch size is the dense model's
time minus the layers' (clamped at 0); the leaf-module attribution of the remainder is skipped.
Building costs what each point costs to prepare: about 1 s per grid point in ONNX Runtime (the
dynamo export; ResNet-20, 120 points: 140 s; VGG-small, 72 points: 90 s) and 1-4 s per compiled
graph (ResNet-20: 75 s with inductor's cache warm, VGG-small 23 s warm, 120 s cold); an exact point
costs as much. The table is refused (:class:`~slimtune.errors.MeasureError` naming both runtimes) by
:meth:`LatencyTable.use_on` / :meth:`LatencyTable.from_dict` given ``runtime=`` of another
runtime, and :meth:`LatencyTable.load_or_build` rebuilds it.

How well that predicts (uniform plans, batch 32, one thread, the default grid, ``compress``-ed
models timed with the dense one in one interleaved measurement, CPU clock; a shared 2-core AMD EPYC
VM, so ±3 % is noise) — predicted vs measured latency at sparsity 0.25 / 0.4 (off the grid: exact
points) / 0.5 / 0.75:

=============== ============= ================================ =====================================
model           runtime       dense (table vs measured)        error at 0.25 / 0.4 / 0.5 / 0.75
=============== ============= ================================ =====================================
VGG-small       onnxruntime   11.40 vs 11.39 ms                -2 % / -9 % / +2 % / -5 %
ResNet-20       onnxruntime   22.75 vs 22.89 ms                +2 % / -4 % / -1 % / -4 %
VGG-small       compile       12.70 vs 13.00 ms                -7 % / -13 % / -9 % / -19 %
ResNet-20       compile       26.29 vs 26.65 ms                -8 % / -8 % / -15 % / -26 %
VGG-small       torch         17.03 vs 17.05 ms                -1 % / -1 % / +4 % / +8 %
ResNet-20       torch         33.21 vs 32.69 ms                -1 % / -1 % / +0 % / +4 %
=============== ============= ================================ =====================================

ONNX Runtime fuses batch norm and activations into its convolutions, so its remainder is small and
the layers explain the model. ``compile`` under-predicts, the more the more is pruned: a standalone
compiled convolution takes as long as it does inside the compiled model or longer (its layout
conversions), which hides the remainder of the dense model (measured 0-0.1 ms, where the profiler
shows inductor's fused batch-norm/ReLU/add kernels taking 6-10 % of ResNet-20), and those kernels do
not shrink with the channels (ResNet-20 with a quarter of its channels: 3.8 ms per batch against
3.1 ms dense). Use a ``compile`` table to rank plans by their layers; check its chosen plans by measuring.

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
        table.predict({"conv1": (3, 12)})                     # measures conv1 at (3, 12) once
        table.save("resnet20.lut.json")
        table = LatencyTable.load("resnet20.lut.json", graph)
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from slimtune import devices
from slimtune.compressors.handlers import handler_for
from slimtune.compressors.measures._lut_parts import (
    Entry,
    LayerRef,
    LayerSpec,
    Settings,
    bind,
    compile_limits,
    config_key,
    grid_counts,
    inputs_from_graph,
    line_fit,
    measure_eager,
    measure_in_runtime,
    measuring_device,
    prunable_dims,
    runtime_point,
    statistic,
)
from slimtune.compressors.measures.latency import (
    Clock,
    as_tuple,
    measurement_context,
    run_device,
    stabilize_allocator,
    time_interleaved,
)
from slimtune.compressors.measures.runtimes import LatencySetting
from slimtune.compressors.plan import round_kept
from slimtune.errors import MeasureError

if TYPE_CHECKING:
    from slimtune.compressors.graph import ModelGraph
    from slimtune.compressors.plan import CompressionPlan, FactorSpec

__all__ = ["LatencyTable"]

_FORMAT = "slimtune.latency_table/1"


# ============================================================================================ table
@dataclass
class LatencyTable:
    """Per-layer latency lookup table of one model; predicts the latency of channel-pruned versions.

    Build it with :meth:`LatencyTable.build`; predict with :meth:`predict` (or :meth:`explain` for
    a per-layer breakdown); cache it with :meth:`to_json`/:meth:`from_json` or
    :meth:`save`/:meth:`load`. See the module docstring for the latency model.

    Attributes:
        batch_size: Batch size of the measurements (predictions are ms per batch).
        threads: Intra-op threads of the measurements.
        dense_ms: Measured latency of the unpruned model (``predict()`` of no plan returns it).
        gamma: In-network / standalone time ratio of the Conv/Linear layers.
        remainder_batches: Batch sizes at which the non-Conv/Linear time was measured.
        remainder_ms: That time at each of those batch sizes.
        layers: Per layer: configuration key, original counts, calls, output elements.
        entries: Per configuration: the grid, its latencies and any exact points.
        settings: Measurement settings (reused for exact points).
        graph: The model graph (for predictions from plans); not serialised.
        meta: Free-form information (torch version, build time, grid ...).
        products: Per attention product outside the layers (``QKᵀ``, ``AV``, fused attention; by graph
            node): its configuration key and original head count.
        products_ms: Their standalone time in the dense model (taken out of the remainder).
        device: The device the table was measured on, where its exact points are measured
            (``"cpu"``, ``"cuda:0"``; see :meth:`use_on`).
        hardware: What that device is (``"NVIDIA H100 80GB HBM3"``, ``"cpu: AMD EPYC 9B14"``;
            empty for tables saved before it was recorded).
        runtime: The runtime the table was measured in: ``"torch"`` (eager; tables saved before
            runtimes were recorded), ``"compile"`` or ``"onnxruntime"`` (see :attr:`latency`).
        call_ms: The runtime's cost of one call of an almost empty module (``compile``, ``onnxruntime``),
            taken out of every standalone time; 0 in eager PyTorch.

    Example:
        .. code-block:: python

            table = LatencyTable.build(graph, x, batch_size=32)
            plan = CompressionPlan.uniform(graph, 0.5)
            ms = table.predict(plan)
            speedup = table.dense_ms / ms
    """

    batch_size: int
    threads: int
    dense_ms: float
    gamma: float
    remainder_batches: list[float]
    remainder_ms: list[float]
    layers: dict[str, LayerRef]
    entries: dict[str, Entry]
    settings: Settings
    graph: ModelGraph | None = field(default=None, repr=False, compare=False)
    meta: dict[str, Any] = field(default_factory=dict, compare=False)
    products: dict[str, LayerRef] = field(default_factory=dict)
    products_ms: float = 0.0
    device: str = "cpu"
    hardware: str = field(default="", compare=False)
    runtime: str = "torch"
    call_ms: float = 0.0

    @property
    def latency(self) -> LatencySetting:
        """The runtime, batch size and threads of the table's measurements."""
        return LatencySetting(self.runtime, self.batch_size, self.threads)

    # ------------------------------------------------------------------------------------- build
    @classmethod
    def build(
        cls,
        graph: ModelGraph,
        example_inputs: Any = None,
        batch_size: int | None = None,
        threads: int | None = None,
        grid: Sequence[float] = (0.25, 0.5, 0.75, 1.0),
        warmup: int = 2,
        repeats: int = 8,
        burst: int = 3,
        quantile: float = 0.5,
        clock: Clock | None = None,
        min_time_s: float = 0.0,
        stable_allocator: bool = True,
        progress: Callable[[str], None] | None = None,
        channel_multiple: int | None = None,
        runtime: LatencySetting | str | Mapping[str, Any] | None = None,
    ) -> LatencyTable:
        """Measure the table for ``graph``'s model, on the device the model is on, in ``runtime``.

        Args:
            graph: From :func:`slimtune.compressors.trace`: ``graph.layers`` gives the
                Conv/Linear layers and their input shapes, ``graph.groups`` which of their
                dimensions pruning can change (without ``groups`` both dimensions are measured).
            example_inputs: Model inputs (a tensor or tuple, on any device: moved to the model's),
                tiled to ``batch_size``. When None, the inputs the graph was traced with.
            batch_size: Batch size to predict for (on a GPU, 64 is typical); default: the batch of
                ``runtime``, else 32.
            threads: Intra-op threads on the CPU (restored afterwards; not applied on a GPU); default: the
                threads of ``runtime`` (1).
            grid: Kept-channel ratios in (0, 1] to measure; 1.0 is always added.
            warmup: Untimed rounds first.
            repeats: Timed rounds. A round gives every grid point of every layer configuration,
                and the whole model at each remainder batch size (plain and hooked), one turn:
                an untimed call that warms the caches, then ``burst`` timed calls.
            burst: Timed calls per turn.
            quantile: Statistic kept of each measurement's timed calls: 0.5 is the median (what
                :func:`~slimtune.compressors.measures.measure_latency` reports); a low quantile
                such as 0.2 is steadier on a busy machine.
            clock: ``"cpu"`` (thread CPU time) or ``"wall"``; default ``"cpu"`` with one thread on
                the CPU, ``"wall"`` otherwise (on CUDA: CUDA events; see
                :func:`~slimtune.compressors.measures.measure_latency`).
            min_time_s: Minimum timed seconds of all rounds together.
            stable_allocator: On the CPU, call
                :func:`~slimtune.compressors.measures.latency.stabilize_allocator`
                first (process-wide): without it, page faults that depend on the process's
                allocation history dominate small standalone layers. Measure the models you
                compare predictions with the same way (``measure_latency`` does by default).
            progress: Optional callback receiving a line of progress.
            channel_multiple: Round the grid's channel counts as plans with this
                ``channel_multiple`` round their kept channels (multiples of 8 or 16), so that their
                layers land on grid points: ``predict(..., measure_missing=False)`` then needs no
                interpolation for uniform rounded plans. Any table predicts any plan.
            runtime: Where the latency is measured and predicted: a
                :class:`~slimtune.compressors.measures.LatencySetting` or what its ``parse`` reads
                (``"compile"``, ``{"runtime": "onnxruntime", "batch": 1}``); None: eager PyTorch
                (``"torch"``). Its batch and threads are the defaults of ``batch_size`` and ``threads``.
                ``compile`` and ``onnxruntime`` time every grid point and the model through
                :func:`~slimtune.compressors.measures.runtimes.runtime_model` (see the module docstring;
                ONNX Runtime on the CPU whatever the model's device).

        Returns:
            The table; ``table.graph`` is ``graph``.

        Raises:
            MeasureError: A grid value is outside (0, 1], ``batch_size``/``threads``/``channel_multiple``
                are not positive or differ from ``runtime``'s batch/threads, ``quantile`` is outside (0, 1),
                ``clock="cpu"`` with several threads or on a GPU, the model is spread over several devices,
                ONNX Runtime cannot run a layer or the model.
            ConfigError: ``runtime`` is not a latency setting.
        """
        setting = _setting(runtime, batch_size, threads)
        batch_size, threads = int(setting.batch or 32), setting.threads
        if not 0.0 < quantile < 1.0:
            raise MeasureError(f"quantile must be in (0, 1), got {quantile!r}", field="quantile")
        ratios = sorted({float(r) for r in grid} | {1.0})
        for r in ratios:
            if not 0.0 < r <= 1.0:
                raise MeasureError(f"grid ratio {r!r} is outside (0, 1]", field="grid")
        if channel_multiple is not None and (
            isinstance(channel_multiple, bool) or not isinstance(channel_multiple, int) or channel_multiple < 1
        ):
            raise MeasureError(
                f"channel_multiple must be a positive int or None, got {channel_multiple!r}", field="channel_multiple"
            )
        model = graph.model
        device = measuring_device(setting.runtime, run_device({"graph.model": model}))
        clock = clock or ("cpu" if threads == 1 and device.type == "cpu" else "wall")
        if clock == "cpu" and threads != 1:
            raise MeasureError(
                f"clock='cpu' measures one thread; it needs threads=1, got threads={threads}", field="clock"
            )
        if clock == "cpu" and device.type != "cpu":
            raise MeasureError(
                f"clock='cpu' times the calling CPU thread; the model is on {device}: use clock='wall'", field="clock"
            )
        settings = Settings(warmup, repeats, burst, quantile, clock, min_time_s)
        if stable_allocator and device.type == "cpu":
            stabilize_allocator()
        t_start = time.perf_counter()
        if example_inputs is None:
            inputs = inputs_from_graph(graph, device)
        else:
            inputs = devices.move(as_tuple(example_inputs), device)
        modules = dict(model.named_modules())
        dims = prunable_dims(graph)
        rounding = _kept_rounding(channel_multiple)

        layers: dict[str, LayerRef] = {}
        entries: dict[str, Entry] = {}
        for name, info in graph.layers.items():
            m = modules.get(name)
            h = handler_for(m) if m is not None else None
            if h is None or not info.in_shape or not info.out_shape:
                continue
            spec = h.lut_spec(m, tuple(int(s) for s in info.in_shape[1:]))
            if spec is None:
                continue
            din, dout = (True, True) if dims is None else dims.get(name, (False, False))
            if spec.depthwise:
                din = dout = din or dout
            multiple = spec.groups if spec.kind == "conv" and not spec.depthwise else 1
            ins = grid_counts(spec.in_ch, ratios if din else [1.0], multiple, rounding)
            outs = ins if spec.depthwise else grid_counts(spec.out_ch, ratios if dout else [1.0], multiple, rounding)
            key = config_key(spec, ins, outs)
            entries.setdefault(key, Entry(spec, ins, outs, []))
            layers[name] = LayerRef(
                name,
                key,
                (spec.in_ch, spec.out_ch),
                max(1, int(info.calls)),
                float(math.prod(info.out_shape[1:])),
                spec.depthwise,
            )

        products: dict[str, LayerRef] = {}
        for node, info in (getattr(graph, "products", None) or {}).items():
            spec = LayerSpec.product(info["kind"], int(info["heads"]), info["operands"])
            sizes = [shape[axis] for shape, axis in info["operands"] if axis is not None]
            multiple = spec.in_ch // min(sizes) if sizes and min(sizes) and spec.in_ch % min(sizes) == 0 else 1
            ins = grid_counts(spec.in_ch, ratios, multiple)
            key = config_key(spec, ins, ins)
            entries.setdefault(key, Entry(spec, ins, ins, []))
            products[node] = LayerRef(node, key, (spec.in_ch, spec.in_ch), 1, 0.0, True)

        if setting.runtime == "torch":
            measured = measure_eager(entries, layers, model, inputs, batch_size, threads, settings, device, progress)
            standalone = sum(e.calls * entries[e.key].lookup(*e.orig) for e in layers.values())
        else:  # no hooks inside a compiled graph or an ONNX session: gamma = 1
            measured = measure_in_runtime(entries, layers, model, inputs, setting, settings, device, progress)
            standalone = measured.layers_ms[0]
        batches, totals, in_net, n_points = measured.batches, measured.totals, measured.layers_ms, measured.points
        gamma = in_net[0] / standalone if standalone > 0 and in_net[0] > 0 else 1.0
        remainder_ms = [max(0.0, t - c) for t, c in zip(totals, in_net)]
        products_ms = sum(entries[r.key].lookup(*r.orig) for r in products.values())
        table = cls(
            batch_size=batch_size,
            threads=threads,
            dense_ms=totals[0],
            gamma=gamma,
            remainder_batches=[float(b) for b in batches],
            remainder_ms=remainder_ms,
            layers=layers,
            entries=entries,
            settings=settings,
            graph=graph,
            products=products,
            products_ms=products_ms,
            device=str(device),
            hardware=devices.hardware(device),
            runtime=setting.runtime,
            call_ms=measured.call_ms,
            meta={
                "torch": torch.__version__,
                "grid": ratios,
                "channel_multiple": channel_multiple,
                "build_s": round(time.perf_counter() - t_start, 3),
                "configs": len(entries),
                "points": n_points,
                "layers_ms_in_network": in_net[0],
                "layers_ms_standalone": standalone,
            },
        )
        if progress is not None:
            progress(
                f"built on {table.device}{'' if table.runtime == 'torch' else ' in ' + table.runtime} in "
                f"{table.meta['build_s']:.1f} s: dense {table.dense_ms:.2f} ms, gamma {gamma:.3f}"
            )
        return table

    # ------------------------------------------------------------------------------------- predict
    def predict(
        self,
        plan_or_counts: CompressionPlan | Mapping[str, tuple[int, int]] | None = None,
        graph: ModelGraph | None = None,
        measure_missing: bool = True,
    ) -> float:
        """Predicted latency in ms per batch of :attr:`batch_size`.

        Args:
            plan_or_counts: A :class:`~slimtune.compressors.CompressionPlan` (channel counts from
                ``graph.channel_counts``), or ``{layer: (in_channels, out_channels)}`` (layers not
                listed keep their original counts), or None for the unpruned model.
            graph: The model graph, needed for a plan when the table has no :attr:`graph`
                (loaded from JSON without one).
            measure_missing: First measure (and keep) the exact counts of every layer whose
                counts are neither a grid point nor measured yet (see :meth:`measure`): about
                0.1 s per new layer configuration, once (in ``compile`` and ``onnxruntime`` about
                1-4 s: each is compiled or exported first); counts on the grid (uniform plans) cost
                nothing. False interpolates on the grid only — instant, but off the grid CPU
                kernels' algorithm switches make it err by up to ~20-35 % (see the module
                docstring). Exact points are measured on :attr:`device` of the current machine:
                use a loaded table on the kind of machine it was built on.

        Raises:
            ValueError: A layer name is not in the table, or a count is not positive.
        """
        counts = self._counts(plan_or_counts, graph)
        everything = {**self.layers, **self.products}
        factorizes = bool(getattr(plan_or_counts, "factorize", None))
        if not factorizes and all(counts.get(name, layer.orig) == layer.orig for name, layer in everything.items()):
            return self.dense_ms  # nothing pruned: the measured latency itself
        return self.explain(plan_or_counts if factorizes else counts, graph, measure_missing)["total"]

    def explain(
        self,
        plan_or_counts: CompressionPlan | Mapping[str, tuple[int, int]] | None = None,
        graph: ModelGraph | None = None,
        measure_missing: bool = True,
    ) -> dict[str, float]:
        """The prediction broken down: ms per Conv/Linear layer and attention product (by node),
        ``"remainder"`` and ``"total"``.

        Arguments as in :meth:`predict`.
        """
        counts = self._counts(plan_or_counts, graph)
        factored = self._factored(plan_or_counts, counts)
        if measure_missing:
            self.measure(counts)
            if factored:
                self._measure_factored(factored)
        out: dict[str, float] = {}
        kept = total = attributed = attributed_kept = 0.0
        for name, layer in self.layers.items():
            cin, cout = self._effective(layer, counts.get(name, layer.orig))
            e = self.entries[layer.key]
            if name in factored:  # the factors' standalone time, or the layer's scaled by their MACs
                fkey, _, share = factored[name]
                ms = e.exact[fkey] if fkey in e.exact else e.lookup(cin, cout) * share
                out[name] = layer.calls * self.gamma * ms
            else:
                out[name] = layer.calls * self.gamma * e.lookup(cin, cout)
            keep = cout / layer.orig[1]
            w = layer.out_elems * layer.calls
            total += w
            kept += w * keep
            attributed += layer.remainder_ms
            attributed_kept += layer.remainder_ms * keep
        for name, ref in self.products.items():
            heads = counts.get(name, ref.orig)[0]
            out[name] = self.entries[ref.key].lookup(heads, heads)
        # kept fraction of the remainder: leaf modules (BN, activations, pooling) by the channels
        # of the layer they follow, the rest (functional ops, overhead) by kept output elements;
        # the attention products are predicted above, so their dense time leaves the remainder
        s_elems = kept / total if total > 0 else 1.0
        full = max(0.0, self.remainder_ms[self.remainder_batches.index(float(self.batch_size))] - self.products_ms)
        rest = max(0.0, full - attributed)
        s = (attributed_kept + rest * s_elems) / (attributed + rest) if attributed + rest > 0 else s_elems
        # slope from a line through all batch sizes, anchored at the measured full batch
        _, k = line_fit(self.remainder_batches, self.remainder_ms)
        out["remainder"] = max(0.0, full - k * self.batch_size * (1.0 - s))
        out["total"] = sum(out.values())
        return out

    def measure(
        self,
        plan_or_counts: CompressionPlan | Mapping[str, tuple[int, int]],
        graph: ModelGraph | None = None,
    ) -> int:
        """Measure the exact ``(in', out')`` of every layer not measured at those counts yet.

        The points are measured standalone like the grid (same clock, quantile, turns, runtime), on
        :attr:`device`, and kept in the table (and its JSON); later predictions use them instead of
        interpolating. In ``compile`` each point is compiled first (seconds), in ``onnxruntime``
        exported first (about half a second).

        Returns:
            The number of points measured.

        Raises:
            MeasureError: The table's device is not on this machine, or is a device of another kind
                than the one the table was measured on.
        """
        counts = self._counts(plan_or_counts, graph)
        todo: dict[tuple[str, int, int], Entry] = {}
        for name, layer in {**self.layers, **self.products}.items():
            cin, cout = self._effective(layer, counts.get(name, layer.orig))
            e = self.entries[layer.key]
            on_grid = cin in e.ins and cout in e.outs and (not e.spec.depthwise or cin == cout)
            if f"{cin},{cout}" in e.exact or on_grid:
                continue
            todo[(layer.key, cin, cout)] = e
        if not todo:
            return 0
        device = self._here()
        if self.runtime == "torch":
            fns = [
                bind(e.spec.module(cin, cout, device), e.spec.input(self.batch_size, cin, device))
                for (_, cin, cout), e in todo.items()
            ]
        else:
            fns = [
                runtime_point(e.spec, cin, cout, self.latency, device, self.batch_size)(self.batch_size)
                for (_, cin, cout), e in todo.items()
            ]
        for ((_, cin, cout), e), ms in zip(todo.items(), self._time_points(fns, device)):
            e.exact[f"{cin},{cout}"] = ms
        return len(todo)

    def _time_points(self, fns: list[Callable[[], Any]], device: torch.device) -> list[float]:
        """Standalone ms of each call, measured like the grid (the table's settings, interleaved), less the
        runtime's per-call cost."""
        st = self.settings
        with compile_limits(self.runtime), measurement_context([], self.threads, device):
            samples = time_interleaved(
                fns,
                max(1, st.warmup // 2),
                st.repeats,
                st.min_time_s,
                burst=st.burst,
                burst_warmup=1,
                clock=st.clock,
                device=device,
            )
        stat = statistic(st.quantile)
        return [stat(s) if self.runtime == "torch" else max(0.0, stat(s) - self.call_ms) for s in samples]

    def _factored(self, plan: Any, counts: Mapping[str, tuple[int, int]]) -> dict[str, tuple[str, FactorSpec, float]]:
        """``{layer: (exact key, its FactorSpec, factors' MACs / the layer's)}`` for the plan's factorized layers
        (at the pruned counts); empty for counts or a plan without ``factorize``."""
        from slimtune.compressors.lowrank import macs_for, shape_for

        out = {}
        for name, spec in (getattr(plan, "factorize", None) or {}).items():
            layer = self.layers.get(name)
            if layer is None:
                raise MeasureError(f"factorized layer {name!r} is not in the latency table", field="plan.factorize")
            cin, cout = self._effective(layer, counts.get(name, layer.orig))
            ls = self.entries[layer.key].spec
            kk = math.prod(ls.kernel) if ls.kernel else 1
            shape = shape_for(ls.kind == "linear", cout, cin, kk, spec.rank, spec.rank_ratio, spec.method)
            key = f"{cin},{cout}|{shape.method}:{','.join(map(str, shape.ranks))}"
            out[name] = (key, spec, macs_for(cout, cin, kk, shape) / (cout * cin * kk))
        return out

    def _measure_factored(self, factored: Mapping[str, tuple[str, FactorSpec, float]]) -> int:
        """Measure (standalone, like the grid) every factorized configuration not measured yet; kept in
        :attr:`Entry.exact` under ``"in,out|method:ranks"``."""
        from slimtune.compressors.lowrank import factorize_layer
        from slimtune.compressors.measures.runtimes import runtime_model

        todo: dict[tuple[str, str], tuple[Entry, FactorSpec]] = {}
        for name, (fkey, spec, _) in factored.items():
            e = self.entries[self.layers[name].key]
            if fkey not in e.exact:
                todo[(self.layers[name].key, fkey)] = (e, spec)
        if not todo:
            return 0
        device = self._here()
        fns = []
        for (_, fkey), (e, spec) in todo.items():
            cin, cout = (int(v) for v in fkey.split("|")[0].split(","))
            layer = factorize_layer(e.spec.module(cin, cout, device), spec.rank, spec.rank_ratio, spec.method).eval()
            x = e.spec.input(self.batch_size, cin, device)
            timed = layer if self.runtime == "torch" else runtime_model(layer, x, self.latency)[0]
            fns.append(bind(timed, x))
        for ((_, fkey), (e, _)), ms in zip(todo.items(), self._time_points(fns, device)):
            e.exact[fkey] = ms
        return len(todo)

    # ------------------------------------------------------------------------------------- devices
    def mismatch(self, device: Any, runtime: LatencySetting | str | Mapping[str, Any] | None = None) -> str | None:
        """Why the table does not hold on ``device`` (or in ``runtime``, when given); None when it does.

        It holds in the runtime it was measured in, on a device of the same type and, for a GPU, of
        the same model (the index does not matter); a CPU table holds on any CPU (its thread count
        is :attr:`threads`). An ``onnxruntime`` table runs on the CPU whatever ``device`` is.
        """
        why = self._other_runtime(runtime)
        if why is not None:
            return why
        dev = measuring_device(self.runtime, device)
        mine = torch.device(self.device)
        if dev.type != mine.type:
            return f"the latency table was measured on {self._described()}, not on {dev}"
        if dev.type != "cpu" and self.hardware:
            try:
                here = devices.hardware(dev)
            except (RuntimeError, AssertionError, ValueError):  # no such device here
                return f"the latency table was measured on {self._described()}; this machine has no {dev}"
            if here != self.hardware:
                return f"the latency table was measured on {self._described()}, not on {dev} ({here})"
        return None

    def use_on(self, device: Any, runtime: LatencySetting | str | Mapping[str, Any] | None = None) -> LatencyTable:
        """Use the table for ``device`` (its exact points are measured there from now on).

        Args:
            device: Where the model runs (an ``onnxruntime`` table measures on the CPU whatever it is).
            runtime: The runtime the table is used for (a name or a setting); None: not checked.

        Returns:
            The table itself, with :attr:`device` set to ``device`` (the CPU for ``onnxruntime``).

        Raises:
            MeasureError: The table was measured in another runtime than ``runtime`` (the message
                names both runtimes), or ``device`` is of another kind than the table's (another
                device type, or a GPU of another model; the message names both devices). Rebuild the
                table (:meth:`build` with the model on ``device`` and ``runtime=``, or :meth:`load_or_build`).
        """
        why = self._other_runtime(runtime)
        if why is not None:
            asked = LatencySetting.parse(runtime).runtime
            raise MeasureError(
                f"{why}: latencies do not carry over between runtimes; rebuild the table in {asked!r} "
                f"(LatencyTable.build(..., runtime={asked!r}) or LatencyTable.load_or_build)",
                field="runtime",
            )
        why = self.mismatch(device)
        if why is not None:
            raise MeasureError(
                f"{why}: latencies do not carry over between devices; rebuild the table with the model on "
                f"{torch.device(device)} (LatencyTable.build or LatencyTable.load_or_build)",
                field="device",
            )
        self.device = str(measuring_device(self.runtime, device))
        return self

    def _other_runtime(self, runtime: LatencySetting | str | Mapping[str, Any] | None) -> str | None:
        if runtime is None:
            return None
        asked = LatencySetting.parse(runtime).runtime
        if asked == self.runtime:
            return None
        return f"the latency table was measured in runtime {self.runtime!r}, not in {asked!r}"

    def _described(self) -> str:
        return f"{self.device} ({self.hardware})" if self.hardware else self.device

    def _here(self) -> torch.device:
        """:attr:`device` on this machine, checked to be of the kind the table was measured on."""
        try:
            dev = devices.resolve(self.device)
        except devices.DeviceError as e:
            raise MeasureError(
                f"the latency table was measured on {self._described()}, which this machine lacks ({e}); "
                "predict with measure_missing=False, or rebuild the table here",
                field="device",
            ) from None
        self.use_on(dev)
        return dev

    @staticmethod
    def _effective(layer: LayerRef, counts: tuple[int, int]) -> tuple[int, int]:
        cin, cout = counts
        return (cout, cout) if layer.depthwise else (cin, cout)

    def _counts(self, plan_or_counts: Any, graph: ModelGraph | None) -> dict[str, tuple[int, int]]:
        if plan_or_counts is None:
            return {}
        if isinstance(plan_or_counts, Mapping):
            counts = {}
            for name, value in plan_or_counts.items():
                if name not in self.layers and name not in self.products:
                    raise MeasureError(
                        f"layer {name!r} is not in the latency table; its Conv/Linear layers are: "
                        f"{_preview(list(self.layers))}"
                        + (f"; its attention products: {_preview(list(self.products))}" if self.products else "")
                    )
                try:
                    cin, cout = (int(v) for v in value)
                except (TypeError, ValueError):
                    raise MeasureError(
                        f"counts[{name!r}] must be (in_channels, out_channels), got {value!r}", field="counts"
                    ) from None
                if cin < 1 or cout < 1:
                    raise MeasureError(f"counts[{name!r}] = {value!r}: channel counts must be >= 1", field="counts")
                counts[name] = (cin, cout)
            return counts
        graph = graph if graph is not None else self.graph
        if graph is None:
            raise MeasureError(
                "predicting from a plan needs the model graph: pass graph= (the table was loaded without one), "
                "or pass {layer: (in, out)} counts",
                field="graph",
            )
        plan = plan_or_counts.rounded(graph)  # counts as compress does: kept channels to the plan's multiple
        counts = {n: c for n, c in graph.channel_counts(plan).items() if n in self.layers}
        if self.products:
            heads = graph.product_heads(plan) if hasattr(graph, "product_heads") else {}
            counts.update({n: (h, h) for n, h in heads.items() if n in self.products})
        return counts

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
            "settings": asdict(self.settings),
            "layers": {
                n: {
                    "key": layer.key,
                    "orig": list(layer.orig),
                    "calls": layer.calls,
                    "out_elems": layer.out_elems,
                    "depthwise": layer.depthwise,
                    "remainder_ms": layer.remainder_ms,
                }
                for n, layer in self.layers.items()
            },
            "entries": {
                k: {"spec": asdict(e.spec), "ins": e.ins, "outs": e.outs, "ms": e.ms, "exact": e.exact}
                for k, e in self.entries.items()
            },
            "products": {n: {"key": r.key, "heads": r.orig[0]} for n, r in self.products.items()},
            "products_ms": self.products_ms,
            "device": self.device,
            "hardware": self.hardware,
            "runtime": self.runtime,
            "call_ms": self.call_ms,
            "meta": self.meta,
        }

    def to_json(self, **kwargs: Any) -> str:
        """The table as a JSON string (``kwargs`` go to :func:`json.dumps`)."""
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(
        cls,
        data: Mapping[str, Any],
        graph: ModelGraph | None = None,
        device: Any = None,
        runtime: LatencySetting | str | Mapping[str, Any] | None = None,
    ) -> LatencyTable:
        """Rebuild a table from :meth:`to_dict` output; ``graph`` is attached for plan predictions.

        Args:
            data: :meth:`to_dict` output; without ``device`` (tables saved before devices were
                recorded) it is a CPU table, without ``runtime`` (saved before runtimes were
                recorded) an eager ``"torch"`` one.
            graph: The model's graph (for predictions from plans).
            device: The device the table is used for (default: the device of ``graph.model``;
                none checked without a graph): see :meth:`use_on`.
            runtime: The runtime the table is used for (a name or a setting); None: any.

        Raises:
            MeasureError: ``data`` is not a latency table, is malformed, names layers that
                ``graph`` lacks (the table belongs to another model: rebuild it), or was measured
                on a device of another kind (the message names both devices) or in another runtime
                than ``runtime`` (the message names both runtimes).
        """
        if not isinstance(data, Mapping) or data.get("format") != _FORMAT:
            raise MeasureError(f"not a slimtune latency table (expected format {_FORMAT!r})")
        try:
            layers = {
                n: LayerRef(
                    n,
                    d["key"],
                    (int(d["orig"][0]), int(d["orig"][1])),
                    int(d["calls"]),
                    float(d["out_elems"]),
                    bool(d["depthwise"]),
                    float(d.get("remainder_ms", 0.0)),
                )
                for n, d in data["layers"].items()
            }
            entries = {
                k: Entry(
                    LayerSpec.from_dict(e["spec"]),
                    [int(v) for v in e["ins"]],
                    [int(v) for v in e["outs"]],
                    [[float(v) for v in row] for row in e["ms"]],
                    {str(p): float(v) for p, v in (e.get("exact") or {}).items()},
                )
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
                settings=Settings(**data["settings"]),
                graph=graph,
                meta=dict(data.get("meta") or {}),
                products={
                    n: LayerRef(n, d["key"], (int(d["heads"]), int(d["heads"])), 1, 0.0, True)
                    for n, d in (data.get("products") or {}).items()
                },
                products_ms=float(data.get("products_ms", 0.0)),
                device=str(torch.device(data.get("device") or "cpu")),
                hardware=str(data.get("hardware") or ""),
                runtime=LatencySetting.parse(data.get("runtime") or "torch").runtime,
                call_ms=float(data.get("call_ms", 0.0)),
            )
        except (KeyError, TypeError, IndexError, ValueError, RuntimeError) as e:  # ConfigError is a ValueError
            raise MeasureError(f"latency table is malformed: missing or invalid field {e}") from None
        missing = {e.key for e in list(layers.values()) + list(table.products.values())} - set(entries)
        if missing:
            raise MeasureError(f"latency table is malformed: no entries for configuration(s) {sorted(missing)}")
        if graph is not None:
            unknown = [n for n in layers if n not in graph.layers]
            if unknown:
                raise MeasureError(
                    f"latency table does not match the graph: layer(s) {_preview(unknown)} "
                    "are not in the model; rebuild the table"
                )
        if device is None and graph is not None:
            device = run_device({"graph.model": graph.model})
        if device is not None or runtime is not None:
            table.use_on(table.device if device is None else device, runtime)
        return table

    @classmethod
    def load_or_build(
        cls,
        cached: Mapping[str, Any] | None,
        graph: ModelGraph,
        example_inputs: Any = None,
        runtime: LatencySetting | str | Mapping[str, Any] | None = None,
        **build_kwargs: Any,
    ) -> LatencyTable:
        """The cached table when it holds for ``graph.model``'s device and the settings asked, else a new one.

        The cached table is used when it was measured in ``runtime`` and holds on the model's device
        (:meth:`mismatch`), and has the ``batch_size`` asked and, on the CPU, the ``threads`` asked
        (defaults as in :meth:`build`); otherwise (or when ``cached`` is None or not a valid table of
        this graph) the table is built. Store ``table.to_dict()`` as the new cache.

        Args:
            cached: :meth:`to_dict` output, or None.
            graph: The model's graph; the model is on the device the table is for.
            example_inputs: As in :meth:`build`.
            runtime: As in :meth:`build` (None: eager ``"torch"``; a cached table of another runtime is
                rebuilt).
            **build_kwargs: Passed to :meth:`build` (``batch_size``, ``threads``, ``grid`` ...).

        Example:
            .. code-block:: python

                table = LatencyTable.load_or_build(study.user_attrs.get("lut"), graph, batch_size=32)
                study.set_user_attr("lut", table.to_dict())
        """
        asked = _setting(runtime, build_kwargs.get("batch_size"), build_kwargs.get("threads"))
        device = run_device({"graph.model": graph.model})
        if cached is not None:
            try:
                table = cls.from_dict(cached, graph, device=None)
            except MeasureError:
                table = None
            if (
                table is not None
                and table.mismatch(device, asked) is None
                and table.batch_size == (asked.batch or 32)
                and (measuring_device(asked.runtime, device).type != "cpu" or table.threads == asked.threads)
            ):
                return table.use_on(device, asked)
        return cls.build(graph, example_inputs, runtime=runtime, **build_kwargs)

    @classmethod
    def from_json(
        cls,
        text: str,
        graph: ModelGraph | None = None,
        device: Any = None,
        runtime: LatencySetting | str | Mapping[str, Any] | None = None,
    ) -> LatencyTable:
        """Rebuild a table from :meth:`to_json` output (see :meth:`from_dict`)."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise MeasureError(f"latency table is not valid JSON: {e}") from None
        return cls.from_dict(data, graph, device, runtime)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the table as JSON to ``path``."""
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.to_json(indent=1))

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        graph: ModelGraph | None = None,
        device: Any = None,
        runtime: LatencySetting | str | Mapping[str, Any] | None = None,
    ) -> LatencyTable:
        """Read a table written by :meth:`save`; ``graph`` is attached for plan predictions (see
        :meth:`from_dict` for ``device`` and ``runtime``)."""
        with open(path, encoding="utf-8") as f:
            return cls.from_json(f.read(), graph, device, runtime)


def _setting(runtime: Any, batch_size: int | None, threads: int | None) -> LatencySetting:
    """``runtime`` as a setting, with ``batch_size`` and ``threads`` (where given) filled in.

    Raises:
        MeasureError: ``batch_size``/``threads`` are not positive ints, or differ from a batch/thread count
            ``runtime`` sets.
    """
    setting = LatencySetting.parse(runtime)
    for name, value, own, default in (
        ("batch_size", batch_size, setting.batch, None),
        ("threads", threads, setting.threads, 1),
    ):
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise MeasureError(f"{name} must be a positive int, got {value!r}", field=name)
        if own != default and own != value:
            raise MeasureError(
                f"{name}={value} differs from the {name.removesuffix('_size')} of runtime {setting.describe()!r}: "
                "give one of them",
                field=name,
            )
    batch = batch_size if batch_size is not None else setting.batch
    return LatencySetting(setting.runtime, batch, threads if threads is not None else setting.threads)


def _kept_rounding(multiple: int | None) -> Callable[[int, int, int], int] | None:
    """``(count, size, blocks) → count`` rounded as a plan with ``channel_multiple=multiple`` keeps channels."""
    if multiple in (None, 1):
        return None

    def rounding(count: int, size: int, blocks: int) -> int:
        return round_kept(count, size, multiple, blocks)

    return rounding


def _preview(names: list[str], n: int = 8) -> str:
    return ", ".join(names[:n]) + (f", ... ({len(names)} in all)" if len(names) > n else "")
