"""A measured per-layer latency table for bit-widths: predict a mixed-precision plan's CPU latency.

HAQ (Wang et al., "HAQ: Hardware-Aware Automated Quantization with Mixed Precision", CVPR 2019)
puts the hardware in the loop: the latency of a bit-width policy comes from measurements on the
target, not from a proxy such as bit-operations. On a CPU the kernels decide: a Conv/Linear layer
whose weights have at most 8 bits runs as an int8 kernel (``quantized::conv2d`` /
``quantized::linear`` of the x86 backend, from
:func:`~slimtune.compressors.quantization.export_int8`); there are no faster kernels below 8 bits,
so a 2- or 4-bit layer costs what an 8-bit one does, and a layer above 8 bits runs in fp32.

:class:`BitsLatencyTable` measures, at one batch size and thread count:

* ``fp32[layer]`` — each layer of the float model, on the input it receives in that model;
* ``int8[layer]`` — each layer's converted int8 module (fused with the BN and ReLU that follow it)
  of the model exported with every table layer in int8, on the *quantized* input it receives
  there (inputs captured with forward hooks; a layer called several times counts every call);
* ``fp32_ms`` and ``int8_ms`` — the whole float model and the whole int8 model.

All of these run round-robin in one measurement, so machine noise hits them alike. What the
per-layer entries do not explain is the *remainder*: batch norm, activations and pooling in the
float model; quantize / dequantize, pooling and the unfused ops in the int8 one:
``R32 = fp32_ms - Σ fp32``, ``R8 = int8_ms - Σ int8`` (negative when the layers run faster inside
the model than alone). A plan quantizes the set ``Q`` of layers whose weight bits are at most 8:

``predict(Q) = R32 + s·(R8 - R32) + Σ_{l∈Q} int8[l] + Σ_{l∉Q} fp32[l]``,
with ``s = Σ_{l∈Q} fp32[l] / Σ_l fp32[l]``

the remainder interpolated by the share of layer time that is quantized (the BN/ReLU a quantized
layer absorbs, and the quantize/dequantize ops around it, follow the layers that go to int8).
``predict`` of no quantized layer is ``fp32_ms`` and of every layer ``int8_ms``, exactly.
Activation bit-widths do not enter: an int8 layer's activations are 8-bit whatever the plan says.

*The CPU only.* The int8 kernels exist on the CPU only (fbgemm / oneDNN), so the table is always
measured on the CPU, whatever device the model is on: :meth:`~BitsLatencyTable.build` measures a
CPU copy of the model (the model itself is neither moved nor modified) on CPU copies of the inputs,
and records ``device = "cpu"`` and the CPU model (``meta["hardware"]``). Its predictions are CPU
latencies, to compare with CPU measurements (a trial's latency of a quantized model is timed on
the CPU too: see :func:`~slimtune.compressors.measures.measure_deployable`).

*Eager PyTorch only.* The table times eager kernels (the int8 modules of the torch.ao export), so it
predicts latency in the ``torch`` runtime (:class:`~slimtune.compressors.measures.LatencySetting`) and
records it (:attr:`~BitsLatencyTable.runtime`); ``torch.compile`` and ONNX Runtime run int8 layers with
other kernels and fuse them with their neighbours, which a per-layer eager table does not see.

A table is valid for the machine, thread count and batch size it was measured with; it is small
and JSON-safe (:meth:`~BitsLatencyTable.to_dict`, :meth:`~BitsLatencyTable.from_dict`), so a study
can cache it.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from slimtune.compressors.measures import BitsLatencyTable
    >>> model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 14 * 14, 10)).eval()
    >>> table = BitsLatencyTable.build(model, torch.randn(1, 3, 16, 16), batch_size=8, repeats=3)
    >>> sorted(table.fp32)
    ['0', '3']
    >>> fp32, int8 = table.predict({"0": 32, "3": 32}), table.predict({"0": 4, "3": 8})
    >>> abs(fp32 - table.fp32_ms) < 1e-9, abs(int8 - table.int8_ms) < 1e-9
    (True, True)
    >>> BitsLatencyTable.from_dict(table.to_dict()) == table
    True
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from slimtune import devices
from slimtune.compressors.measures.latency import (
    Clock,
    as_tuple,
    make_batch,
    measurement_context,
    stabilize_allocator,
    time_interleaved,
)
from slimtune.errors import MeasureError

if TYPE_CHECKING:
    from slimtune.compressors.plan import CompressionPlan

__all__ = ["BitsLatencyTable", "INT8_MAX_BITS"]

_FORMAT = "slimtune.bits_latency_table/1"
_LAYER_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_QUANTIZED_PACKAGES = ("torch.ao.nn.quantized", "torch.ao.nn.intrinsic.quantized")

INT8_MAX_BITS = 8
"""Weight bit-widths up to this run as int8 kernels (no sub-8-bit kernels on the CPU); wider ones in fp32."""


@dataclass
class BitsLatencyTable:
    """Measured fp32 and int8 latency of each quantizable layer; predicts a bit-width plan's latency.

    Build it with :meth:`build`, predict with :meth:`predict` / :meth:`relative`, cache it with
    :meth:`to_dict` / :meth:`from_dict`. See the module docstring for the latency model.

    Attributes:
        batch_size: Batch size of the measurements (predictions are ms per batch).
        threads: Intra-op threads of the measurements.
        fp32_ms: Measured latency of the float model.
        int8_ms: Measured latency of the model with every table layer in int8.
        fp32: Per layer: its time in the float model (ms per batch, all its calls).
        int8: Per layer: its int8 module's time on its quantized input (ms per batch, all calls).
        meta: Free-form information (torch version, clock, build time, CPU model ...); not compared.
        device: Where the table was measured: always ``"cpu"`` (int8 kernels are CPU-only).
        runtime: The runtime its times hold for: always ``"torch"`` (eager kernels).
    """

    batch_size: int
    threads: int
    fp32_ms: float
    int8_ms: float
    fp32: dict[str, float]
    int8: dict[str, float]
    meta: dict[str, Any] = field(default_factory=dict, compare=False)
    device: str = "cpu"
    runtime: str = "torch"

    # ------------------------------------------------------------------------------------- build
    @classmethod
    def build(
        cls,
        model: nn.Module,
        example_inputs: Any,
        layers: Sequence[str] | None = None,
        batch_size: int = 32,
        threads: int = 1,
        calibration: Any = None,
        warmup: int = 3,
        repeats: int = 10,
        burst: int = 3,
        clock: Clock | None = None,
        backend: str = "x86",
    ) -> BitsLatencyTable:
        """Measure the table for ``model``, on the CPU (int8 kernels are CPU-only).

        Args:
            model: The float model, on any device: a CPU copy is measured (the model is neither
                moved nor modified). It must export to int8 with
                :func:`~slimtune.compressors.quantization.export_int8` (torch.fx-traceable).
            example_inputs: Model inputs (a tensor or tuple, on any device: copied to the CPU),
                tiled to ``batch_size`` rows.
            layers: The Conv/Linear layers to tabulate (default: every one of the model).
            batch_size: Batch size to predict for.
            threads: Intra-op threads (restored afterwards).
            calibration: Calibration batches of the int8 export, on any device (default: the
                measurement batch; activation ranges do not change kernel time).
            warmup: Untimed rounds first.
            repeats: Timed rounds; a round gives every layer (fp32 and int8) and both whole models
                one turn: an untimed call, then ``burst`` timed calls. Medians are kept.
            burst: Timed calls per turn.
            clock: ``"cpu"`` (thread CPU time, default with one thread) or ``"wall"`` (see
                :func:`~slimtune.compressors.measures.measure_latency`).
            backend: Quantized engine of the export (``"x86"``).

        Returns:
            The table.

        Raises:
            QuantExportError: A layer is not a Conv/Linear submodule of the model, or cannot be
                exported to int8; the message names the layer(s) and the reason.
            ValueError: ``batch_size``/``threads``/``repeats`` are not positive, ``clock="cpu"``
                with several threads.
        """
        from slimtune.compressors.quantization import QuantExportError

        for key, value in (("batch_size", batch_size), ("threads", threads), ("repeats", repeats), ("burst", burst)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise MeasureError(f"BitsLatencyTable.build: {key} must be a positive int, got {value!r}", field=key)
        clock = clock or ("cpu" if threads == 1 else "wall")
        if clock == "cpu" and threads != 1:
            raise MeasureError(
                f"BitsLatencyTable.build: clock='cpu' measures one thread; it needs threads=1, got {threads}",
                field="clock",
            )
        t_start = time.perf_counter()
        float_model = _cpu_copy(model).eval()
        modules = dict(float_model.named_modules())
        names = [n for n, m in modules.items() if n and isinstance(m, _LAYER_TYPES)] if layers is None else list(layers)
        if not names:
            raise QuantExportError("BitsLatencyTable: the model has no Conv/Linear layer to run in int8")
        for name in names:
            if not name or name not in modules:
                raise QuantExportError(f"BitsLatencyTable: layer {name!r} is not a submodule of the model")
            if not isinstance(modules[name], _LAYER_TYPES):
                raise QuantExportError(
                    f"BitsLatencyTable: layer {name!r} is a {type(modules[name]).__name__}; only Conv1d/2d/3d and "
                    "Linear layers have int8 kernels"
                )
        stabilize_allocator()
        args = make_batch(devices.move(as_tuple(example_inputs), "cpu"), batch_size)
        calib = calibration if calibration is not None else [(args,)]
        int8_model = _export(float_model, args, calib, names, backend)
        int8_modules = dict(int8_model.named_modules())
        for name in names:
            m = int8_modules.get(name)
            if m is None or not type(m).__module__.startswith(_QUANTIZED_PACKAGES):
                raise QuantExportError(
                    f"BitsLatencyTable: layer {name!r} has no int8 module in the exported model "
                    f"(found {type(m).__name__ if m is not None else 'nothing'}); leave it out of `layers`"
                )

        # the inputs each layer really receives (the int8 model's first run is at batch_size, as the
        # x86 kernels adapt their packed weights to the first shape they see)
        fp32_in, fp32_calls = _capture(float_model, args, names, modules)
        int8_in, int8_calls = _capture(int8_model, args, names, int8_modules)
        fns: list[Callable[[], Any]] = [_call(modules[n], fp32_in[n]) for n in names]
        fns += [_call(int8_modules[n], int8_in[n]) for n in names]
        fns += [_call(float_model, args), _call(int8_model, args)]
        with measurement_context([float_model, int8_model], threads, "cpu"):
            samples = time_interleaved(fns, warmup, repeats, burst=burst, burst_warmup=1, clock=clock, device="cpu")
        ms = [float(np.median(s)) * 1e3 for s in samples]
        k = len(names)
        table = cls(
            batch_size=batch_size,
            threads=threads,
            fp32_ms=ms[2 * k],
            int8_ms=ms[2 * k + 1],
            fp32={n: ms[i] * fp32_calls[n] for i, n in enumerate(names)},
            int8={n: ms[k + i] * int8_calls[n] for i, n in enumerate(names)},
            meta={
                "torch": torch.__version__,
                "clock": clock,
                "backend": backend,
                "repeats": repeats,
                "burst": burst,
                "build_s": round(time.perf_counter() - t_start, 3),
                "hardware": devices.hardware("cpu"),
                "model_device": str(devices.model_device(model)),
            },
            device="cpu",
        )
        return table

    # ------------------------------------------------------------------------------------- predict
    @property
    def layers(self) -> list[str]:
        """The tabulated layers."""
        return list(self.fp32)

    @property
    def remainder_fp32_ms(self) -> float:
        """The float model's time outside the tabulated layers (BN, activations, pooling ...)."""
        return self.fp32_ms - sum(self.fp32.values())

    @property
    def remainder_int8_ms(self) -> float:
        """The int8 model's time outside the tabulated layers (quantize / dequantize, pooling ...)."""
        return self.int8_ms - sum(self.int8.values())

    def quantized_layers(self, bits: Mapping[str, int | None] | CompressionPlan) -> list[str]:
        """The layers ``bits`` puts at most at :data:`INT8_MAX_BITS` weight bits (they run in int8).

        ``bits`` maps a layer to its weight bit-width (``None`` or 32: float; layers not listed stay
        float) or is a :class:`~slimtune.compressors.CompressionPlan` (its ``quantize`` entries).

        Raises:
            ValueError: ``bits`` names a layer the table does not hold.
        """
        if hasattr(bits, "quantize"):
            bits = {layer: spec.bits_w for layer, spec in bits.quantize.items()}  # type: ignore[union-attr]
        unknown = [layer for layer in bits if layer not in self.fp32]
        if unknown:
            raise MeasureError(
                f"bit-width latency table: layer(s) {', '.join(map(repr, unknown))} are not in the table "
                f"(tabulated: {', '.join(self.fp32)}); rebuild it for this model"
            )
        low = [layer for layer in self.fp32 if bits.get(layer) is not None]
        return [layer for layer in low if int(bits[layer]) <= INT8_MAX_BITS]  # type: ignore[arg-type]

    def predict(self, bits: Mapping[str, int | None] | CompressionPlan) -> float:
        """Predicted latency in ms per batch of :attr:`batch_size` (formula in the module docstring).

        Args:
            bits: Layer → weight bit-width (``None`` or above 8: fp32; not listed: fp32), or a plan.
        """
        quantized = set(self.quantized_layers(bits))
        total = sum(self.fp32.values())
        share = sum(self.fp32[n] for n in quantized) / total if total > 0 else len(quantized) / max(1, len(self.fp32))
        remainder = self.remainder_fp32_ms + share * (self.remainder_int8_ms - self.remainder_fp32_ms)
        return remainder + sum(self.int8[n] if n in quantized else self.fp32[n] for n in self.fp32)

    def relative(self, bits: Mapping[str, int | None] | CompressionPlan) -> float:
        """:meth:`predict` relative to the float model (1.0: no layer in int8)."""
        return self.predict(bits) / self.fp32_ms

    # ------------------------------------------------------------------------------------- json
    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        return {
            "format": _FORMAT,
            "batch_size": self.batch_size,
            "threads": self.threads,
            "fp32_ms": self.fp32_ms,
            "int8_ms": self.int8_ms,
            "fp32": dict(self.fp32),
            "int8": dict(self.int8),
            "device": self.device,
            "runtime": self.runtime,
            "meta": dict(self.meta),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BitsLatencyTable:
        """Rebuild a table from :meth:`to_dict` output (one saved without ``device`` is a CPU table,
        as every bit-width table is; one saved without ``runtime`` a ``"torch"`` one, as every one is).

        Raises:
            MeasureError: ``data`` is not a bit-width latency table, is malformed, or names a device
                other than the CPU or a runtime other than ``"torch"``.
        """
        if not isinstance(data, Mapping) or data.get("format") != _FORMAT:
            raise MeasureError(f"not a slimtune bit-width latency table (expected format {_FORMAT!r})")
        device = str(data.get("device") or "cpu")
        if device != "cpu":
            raise MeasureError(
                f"bit-width latency table measured on {device!r}: int8 kernels run on the CPU only, so a table "
                "is measured there; rebuild it (BitsLatencyTable.build)",
                field="device",
            )
        runtime = str(data.get("runtime") or "torch")
        if runtime != "torch":
            raise MeasureError(
                f"bit-width latency table of runtime {runtime!r}: a bit-width table times eager int8 kernels, "
                "runtime 'torch'; rebuild it (BitsLatencyTable.build)",
                field="runtime",
            )
        try:
            table = cls(
                batch_size=int(data["batch_size"]),
                threads=int(data["threads"]),
                fp32_ms=float(data["fp32_ms"]),
                int8_ms=float(data["int8_ms"]),
                fp32={str(k): float(v) for k, v in data["fp32"].items()},
                int8={str(k): float(v) for k, v in data["int8"].items()},
                meta=dict(data.get("meta") or {}),
            )
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            raise MeasureError(f"bit-width latency table is malformed: missing or invalid field {e}") from None
        if set(table.fp32) != set(table.int8):
            raise MeasureError("bit-width latency table is malformed: the fp32 and int8 entries name different layers")
        return table


# ============================================================================================ helpers
def _cpu_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` on the CPU, made without a second copy on the model's device (each parameter
    and buffer is copied straight to host memory, shared ones once); ``model`` is left as it is."""
    tensors = list(model.parameters()) + list(model.buffers())
    memo: dict[int, Any] = {}
    if any(t.device.type != "cpu" for t in tensors):
        for p in model.parameters():
            memo[id(p)] = nn.Parameter(p.detach().to("cpu", copy=True), requires_grad=p.requires_grad)
        for b in model.buffers():
            memo[id(b)] = b.detach().to("cpu", copy=True)
    return copy.deepcopy(model, memo).to("cpu")


def _export(model: nn.Module, args: tuple[Any, ...], calibration: Any, names: list[str], backend: str) -> nn.Module:
    """``export_int8`` of ``names``; on failure, find the layers that cannot be exported and name them."""
    from slimtune.compressors.quantization import QuantExportError, export_int8

    try:
        return export_int8(model, args, calibration, backend=backend, method="fx", layers=names)
    except QuantExportError as whole:
        failing: list[tuple[str, str]] = []
        for name in names:  # one layer at a time: which of them is it?
            try:
                export_int8(model, args, calibration, backend=backend, method="fx", layers=[name])
            except QuantExportError as e:
                failing.append((name, str(e)))
        if failing:
            which = ", ".join(repr(n) for n, _ in failing)
            raise QuantExportError(
                f"BitsLatencyTable: layer(s) {which} cannot be exported to int8: {failing[0][1]} "
                "(leave them out of `layers`, or search them at 32 bits only)"
            ) from whole
        raise QuantExportError(f"BitsLatencyTable: the model cannot be exported to int8: {whole}") from whole


def _capture(
    model: nn.Module, args: tuple[Any, ...], names: list[str], modules: Mapping[str, nn.Module]
) -> tuple[dict[str, tuple[Any, ...]], dict[str, int]]:
    """Each layer's first positional inputs in one forward pass of ``model``, and its number of calls."""
    inputs: dict[str, tuple[Any, ...]] = {}
    calls = dict.fromkeys(names, 0)

    def make(name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, layer_args: tuple[Any, ...]) -> None:
            calls[name] += 1
            if name not in inputs:
                inputs[name] = tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in layer_args)

        return hook

    handles = [modules[n].register_forward_pre_hook(make(n)) for n in names]
    try:
        with torch.inference_mode():
            model(*as_tuple(args))
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in names if n not in inputs]
    if missing:
        raise MeasureError(
            f"BitsLatencyTable: layer(s) {', '.join(map(repr, missing))} did not run in the model's forward pass"
        )
    return inputs, calls


def _call(module: nn.Module, args: tuple[Any, ...]) -> Callable[[], Any]:
    def call() -> Any:
        return module(*args)

    return call
