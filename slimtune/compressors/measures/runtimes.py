"""Latency in the runtime a model ships on: eager PyTorch, ``torch.compile`` or ONNX Runtime.

The same pruning buys different speedups in different runtimes (measured here, batch 32, one thread: 50 %
channel pruning makes MobileNetV2 ×0.35 of its latency in eager PyTorch, ×0.62 in ONNX Runtime and ×0.71
under ``torch.compile``), so a search that ranks models by eager latency misjudges a model shipped on ONNX
Runtime. :class:`LatencySetting` names where and how latency is measured — the runtime, the batch size and
the threads — and :func:`runtime_model` turns a model into what that runtime runs:

========================= ==================================================================================
runtime                   what is timed
========================= ==================================================================================
``torch`` (default)       the module itself, eager, under ``torch.inference_mode``; fake-quantized layers as
                          their int8 export (:func:`~slimtune.compressors.quantization.export_int8`, PT2E)
``compile``               ``torch.compile(model)`` (inductor, static shapes: one compile per batch size,
                          done in the warm-up calls, with the measurement's thread count); fake-quantized
                          layers as their PT2E int8 export, which is itself compiled
``onnxruntime``           the model exported by :func:`~slimtune.compressors.deploy.export_onnx` (dynamic
                          batch; fake-quantized layers in QDQ form with their learned weights and ranges,
                          which ONNX Runtime 1.32 runs partly as float ops: the note says so), in an
                          ``onnxruntime.InferenceSession`` on the CPU execution provider with ``threads``
                          intra-op threads and one inter-op thread
========================= ==================================================================================

Each is measured by :func:`~slimtune.compressors.measures.measure_latency` (warm-up calls, then timed calls,
median), so eager, compiled and ONNX Runtime latencies are comparable, and relative latencies compare a
model with the original measured in the same runtime. With one thread, ONNX Runtime runs its kernels on the
calling thread, so the CPU-time clock applies to it too.

Devices: ``torch`` and ``compile`` run on the model's device. ONNX Runtime's CPU execution provider runs on
the CPU: a model on a GPU is exported from a CPU copy and timed on the CPU (``onnxruntime-gpu`` is not a
dependency). int8 kernels are CPU kernels in every runtime.

Compiling: ``torch.compile`` caches compiled code per Python function and recompiles for each new model
instance or shape, up to a limit past which it silently runs eager; so :func:`runtime_model` resets
dynamo's caches (``torch._dynamo.reset()``) before compiling a new model. Code compiled earlier in the
process recompiles on its next call.

Example:
    >>> import torch
    >>> from torch import nn
    >>> setting = LatencySetting.parse({"runtime": "onnxruntime", "batch": 1, "threads": 1})
    >>> setting.describe()
    'onnxruntime, batch 1, 1 thread'
    >>> LatencySetting.parse("compile").runtime
    'compile'
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimtune import devices
from slimtune.compressors.measures.latency import as_tuple, make_batch, measure_latency
from slimtune.errors import ConfigError, MeasureError, did_you_mean

__all__ = [
    "RUNTIMES",
    "LatencySetting",
    "OrtModel",
    "measure_runtime_latency",
    "runtime_model",
]

RUNTIMES = ("torch", "compile", "onnxruntime")
"""The runtimes latency can be measured in."""

_KEYS = ("runtime", "batch", "threads")


@dataclass(frozen=True)
class LatencySetting:
    """Where and how a model's latency is measured.

    Args:
        runtime: ``"torch"`` (eager PyTorch), ``"compile"`` (``torch.compile``) or ``"onnxruntime"`` (ONNX
            Runtime, CPU execution provider).
        batch: Rows per timed call; ``None``: the caller's default (a study's ``measure_batch``).
        threads: Intra-op threads on the CPU (PyTorch's ``set_num_threads``, ONNX Runtime's
            ``intra_op_num_threads``).

    Raises:
        ConfigError: A value out of range (the field is ``latency.runtime``, ``latency.batch`` or
            ``latency.threads``).
    """

    runtime: str = "torch"
    batch: int | None = None
    threads: int = 1

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise ConfigError(
                f"unknown runtime {self.runtime!r}{did_you_mean(self.runtime, RUNTIMES)}; "
                f"choose one of {', '.join(RUNTIMES)}",
                field="latency.runtime",
            )
        if self.batch is not None and (
            isinstance(self.batch, bool) or not isinstance(self.batch, int) or self.batch < 1
        ):
            raise ConfigError(f"must be an integer >= 1, got {self.batch!r}", field="latency.batch")
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1:
            raise ConfigError(f"must be an integer >= 1, got {self.threads!r}", field="latency.threads")

    @classmethod
    def parse(cls, value: Any, field: str = "latency") -> LatencySetting:
        """A setting from a spec value: ``None`` (the default: eager, one thread), a runtime name, a mapping with
        ``runtime``, ``batch`` and ``threads`` (each optional), or a setting.

        Raises:
            ConfigError: An unknown key or a bad value (naming ``field`` and the key).
        """
        if value is None:
            return cls()
        if isinstance(value, LatencySetting):
            return value
        if isinstance(value, str):
            return cls._make(field, runtime=value)
        if isinstance(value, Mapping):
            unknown = [k for k in value if k not in _KEYS]
            if unknown:
                raise ConfigError(
                    f"unknown key {unknown[0]!r}{did_you_mean(unknown[0], _KEYS)}; a latency setting has "
                    f"{', '.join(_KEYS)}",
                    field=field,
                )
            return cls._make(field, **{str(k): v for k, v in value.items()})
        raise ConfigError(
            f"must be a runtime name ({', '.join(RUNTIMES)}) or a mapping with {', '.join(_KEYS)}, "
            f"got {type(value).__name__}",
            field=field,
        )

    @classmethod
    def _make(cls, field: str, **kwargs: Any) -> LatencySetting:
        try:
            return cls(**kwargs)
        except ConfigError as e:
            raise ConfigError(e.problem, field=field + str(e.field).removeprefix("latency")) from None

    def to_dict(self) -> dict[str, Any]:
        """``{"runtime", "batch", "threads"}`` (JSON-ready; :meth:`parse` reads it back)."""
        return {"runtime": self.runtime, "batch": self.batch, "threads": self.threads}

    def describe(self) -> str:
        """``"onnxruntime, batch 1, 1 thread"``."""
        batch = "" if self.batch is None else f", batch {self.batch}"
        return f"{self.runtime}{batch}, {self.threads} thread{'s' if self.threads != 1 else ''}"

    def with_batch(self, batch: int) -> LatencySetting:
        """This setting with ``batch`` filled in where it is ``None``."""
        return self if self.batch is not None else LatencySetting(self.runtime, batch, self.threads)


class OrtModel(nn.Module):
    """An ONNX file run by an ``onnxruntime.InferenceSession`` (CPU execution provider), called like the model.

    Inputs are tensors (moved to the CPU and passed as numpy arrays without a copy where possible); outputs
    come back as CPU tensors sharing ONNX Runtime's buffers: one tensor for a model with one output, else a
    tuple. It has no parameters; :func:`~slimtune.compressors.measures.measure_latency` times it on the CPU.

    Args:
        path: The ``.onnx`` file.
        threads: ``intra_op_num_threads`` (one inter-op thread, sequential execution, all graph optimizations).
    """

    def __init__(self, path: str | Path, threads: int = 1) -> None:
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - reported with the file
            raise MeasureError(f"onnxruntime cannot load {path}: {type(e).__name__}: {e}") from e
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.threads = threads

    def forward(self, *args: Any) -> Any:
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        feed = {name: t.detach().cpu().numpy() for name, t in zip(self.input_names, tensors)}
        outputs = [torch.from_numpy(o) for o in self.session.run(None, feed)]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)


@contextlib.contextmanager
def _quiet_torchao() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree", "torch.onnx")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def runtime_model(
    model: nn.Module,
    example_inputs: Any,
    runtime: str | LatencySetting = "torch",
    workdir: str | Path | None = None,
) -> tuple[nn.Module, str | None]:
    """``(callable module, note)``: ``model`` as ``runtime`` runs it (see the module docstring).

    ``torch`` returns the model itself; ``compile`` a ``torch.compile`` wrapper sharing its weights (compiled
    at its first call); ``onnxruntime`` an :class:`OrtModel` of the exported file with the setting's threads
    (written to ``workdir``, or to a temporary directory removed when the :class:`OrtModel` is collected).
    Fake-quantized layers (``≤ 8`` weight bits) become int8: for ``torch`` and ``compile`` through
    :func:`~slimtune.compressors.quantization.export_int8` (PT2E, on the CPU; if that export fails, the
    fake-quantized model is timed and the note says why), for ONNX Runtime in QDQ form. The note says what is
    timed when it is not the model on its own device, else it is None.

    Raises:
        MeasureError: ONNX Runtime cannot run the model (``onnxruntime`` not installed, the export failed:
            with its reason).
    """
    setting = LatencySetting.parse(runtime)
    device = devices.model_device(model)
    if setting.runtime == "onnxruntime":
        notes = []
        if device.type != "cpu":
            notes.append(f"timed in onnxruntime on the CPU (CPU execution provider); the model itself is on {device}")
        if _int8_layers(model):
            notes.append(
                "the quantized layers are timed in their QDQ form (the learned int8 weights and ranges), which "
                "onnxruntime runs partly as float ops; export_onnx_int8 gives ONNX Runtime's int8 kernels"
            )
        return _ort_model(model, example_inputs, setting.threads, workdir), "; ".join(notes) or None
    layers = _int8_layers(model)
    if layers:
        return _int8_model(model, example_inputs, layers, device)
    if setting.runtime == "compile":
        torch._dynamo.reset()  # a fresh cache: no silent eager fallback after the recompile limit
        return torch.compile(model, dynamic=False), None
    return model, None


def _int8_layers(model: nn.Module) -> list[str]:
    from slimtune.compressors.measures.bits_latency import INT8_MAX_BITS
    from slimtune.compressors.quantization import QuantWrapper

    return sorted(
        name
        for name, w in model.named_modules()
        if isinstance(w, QuantWrapper) and not w.recurrent and w.bits_w is not None and w.bits_w <= INT8_MAX_BITS
    )


def _int8_model(
    model: nn.Module, example_inputs: Any, layers: list[str], device: torch.device
) -> tuple[nn.Module, str | None]:
    """The int8 export of ``layers`` on the CPU and a note, or (the export failed) ``model`` and why."""
    from slimtune.compressors.quantization import export_int8

    inputs = devices.move(as_tuple(example_inputs), "cpu")
    try:
        with _quiet_torchao():
            int8 = export_int8(model, inputs, [(make_batch(inputs, 8),)], layers=layers)
    except Exception as e:  # noqa: BLE001 - any export failure: time the fake-quantized model, say why
        return (
            model,
            f"latency of the fake-quantized model: int8 export of {', '.join(layers)} failed: {type(e).__name__}: {e}",
        )
    note = None
    if device.type != "cpu":
        note = (
            f"latency of the int8 export of {', '.join(layers)}, timed on the CPU (int8 kernels run on the CPU "
            f"only); the model itself is on {device}"
        )
    return int8, note


def _ort_model(model: nn.Module, example_inputs: Any, threads: int, workdir: str | Path | None) -> OrtModel:
    from slimtune.compressors.deploy import export_onnx, onnx_available

    if not onnx_available():
        raise MeasureError(
            "latency in runtime 'onnxruntime' needs onnx, onnxscript and onnxruntime: pip install 'slimtune[deploy]'",
            field="latency.runtime",
        )
    own = workdir is None
    folder = Path(tempfile.mkdtemp(prefix="slimtune-ort-")) if own else Path(workdir)  # type: ignore[arg-type]
    path = folder / "model.onnx"
    try:
        with _quiet_torchao():
            export_onnx(model, example_inputs, path, check=False)
        ort_model = OrtModel(path, threads)
    except Exception as e:
        if own:
            _remove(folder)
        if isinstance(e, MeasureError):
            raise
        raise MeasureError(
            f"latency in runtime 'onnxruntime': the ONNX export of {type(model).__name__} failed: {e}",
            field="latency.runtime",
        ) from e
    if own:
        import weakref

        weakref.finalize(ort_model, _remove, folder)
    return ort_model


def _remove(folder: Path) -> None:
    import shutil

    shutil.rmtree(folder, ignore_errors=True)


def measure_runtime_latency(
    model: nn.Module,
    example_inputs: Any,
    setting: LatencySetting | str | Mapping[str, Any] | None = None,
    batch_size: int = 32,
    warmup: int = 3,
    repeats: int = 20,
    min_time_s: float = 0.5,
    clock: str = "wall",
) -> tuple[Any, str | None]:
    """``(LatencyResult, note)``: the latency of ``model`` in the setting's runtime, at the setting's batch
    (else ``batch_size``) with its threads; the note as in :func:`runtime_model`.

    ``compile`` compiles during the warm-up calls (at least one warm-up call is made), so compile time is
    not timed.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> m = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
        >>> r, note = measure_runtime_latency(m, torch.randn(1, 16), "torch", batch_size=8, repeats=5, min_time_s=0)
        >>> r.batch_size, r.median_ms > 0, note
        (8, True, None)
    """
    s = LatencySetting.parse(setting).with_batch(batch_size)
    timed, note = runtime_model(model, example_inputs, s)
    # an OrtModel has no parameters: measure_latency runs it where the inputs are, which must be the CPU
    inputs = devices.move(as_tuple(example_inputs), "cpu") if isinstance(timed, OrtModel) else example_inputs
    result = measure_latency(
        timed,
        inputs,
        batch_size=s.batch,
        threads=s.threads,
        warmup=max(1, warmup),
        repeats=repeats,
        min_time_s=min_time_s,
        clock=clock,  # type: ignore[arg-type]
    )
    return result, note
