"""Weight-only int8 / int4 quantization of Linear layers with torchao: :func:`quantize_weight_only`.

For Linear-heavy models (transformers, MLPs) the weights are most of the memory, and weight-only quantization
shrinks them without calibration data: each selected ``nn.Linear`` keeps its module, but its ``weight``
becomes a torchao quantized tensor (``torchao.quantization.quantize_``), which ``F.linear`` dispatches to
torchao's kernels; activations stay float, so the model runs as before on the same inputs.

- **int8** (``Int8WeightOnlyConfig``): symmetric int8 per output channel (``PerRow``), an ``Int8Tensor``, on any
  device. torchao's eager linear casts the int8 weight to the activations' dtype on each call.
- **int4** (groups of ``group_size`` input features, asymmetric 4-bit with a float scale and zero point per
  group): on the CPU torchao 0.18's ``PrototypeInt4WeightOnlyConfig`` (an ``Int4OpaqueTensor`` packed for
  ``torch.ops.aten._weight_int4pack_mm_for_cpu``); on CUDA ``Int4WeightOnlyConfig(int4_packing_format=
  "tile_packed_to_4d")`` (tinygemm, bfloat16 weights only). Whether the kernels run here is probed once per
  device (:func:`int4_available`). A layer whose ``in_features`` is not a multiple of ``group_size``, or, on
  the CPU, whose ``out_features`` is not a multiple of 16 (the kernel's packing), stays float.

Layers that stay float are never dropped silently: they are listed with the reason in the returned model's
:class:`WeightOnlyInfo` (attribute ``slimtune_weight_only``, see :func:`weight_only_info`) and in a warning.

Measured on this machine (2-core AMD EPYC with AVX-512 VNNI and BF16, torch 2.13 CPU, torchao 0.18, 1 thread,
median latency of eager forwards, ad-hoc runs on a shared machine: ±10 %, the bfloat16 int4 row ±30 %) on a tiny
BERT built from ``BertConfig(hidden_size=256, num_hidden_layers=2, num_attention_heads=4, intermediate_size=1024,
vocab_size=1000)`` → ``BertForSequenceClassification`` (sequences of 64 tokens; int4 ``group_size=128``, its
2-class head stays float) and ``slimtune.examples.models.mlp()`` (64-128-64-10; int4 ``group_size=32``, its
10-output head stays float). Size: :func:`~slimtune.compressors.quantization.exported_size_bytes` (``torch.save``
of the ``state_dict``: the torchao tensors' int data, scales and zero points, and the float rest — the BERT's
0.4 M embedding parameters). Error: relative L2 error of the logits against the float32 model, the range over
3 random models × batches 1 and 32 (bfloat16 rows: one model, 2-3 runs):

=================== ============ ================= ================= ==================
model, variant       state_dict   rel. L2 error     latency batch 1   latency batch 32
=================== ============ ================= ================= ==================
BERT float32         8.15 MB      —                 3.3 ms            88 ms
BERT int8            3.27 MB      0.007 - 0.024     3.8 ms            93 ms
BERT int4            2.53 MB      0.014 - 0.16      177 ms            6.0 s
BERT bfloat16        4.08 MB      0.006 - 0.009     2.6 ms            43 ms
BERT bf16 int8       2.48 MB      0.008 - 0.016     3.2 - 3.3 ms      46 ms
BERT bf16 int4       1.68 MB      0.05 - 0.10       3.9 - 6.1 ms      92 - 139 ms
mlp float32          72 kB        —                 0.027 ms          0.040 ms
mlp int8             23 kB        0.005 - 0.008     0.072 ms          0.088 ms
mlp int4             19 kB        0.048 - 0.15      0.094 ms          0.98 ms
mlp bfloat16         37 kB        0.003 - 0.005     0.071 ms          0.095 ms
mlp bf16 int8        23 kB        0.006 - 0.009     0.138 ms          0.170 ms
mlp bf16 int4        16 kB        0.04 - 0.12       0.070 ms          0.130 ms
=================== ============ ================= ================= ==================

So on this CPU weight-only quantization makes these models 2.5-4.5× smaller but not faster in eager mode: int8 costs
5-170 % more time (torchao casts the int8 weight to the activations' dtype on every call), and int4 with float32
activations is up to 70× slower (BERT: 54-68×), since torch's CPU int4 kernel is fast for bfloat16 only — convert
the model to bfloat16 first (``model.to(torch.bfloat16)``: int4 then costs 1-3× bfloat16's time). Its value is
memory (large models; GPUs, where loading the weights dominates a batch-1 decoding step), not CPU latency; for CPU
speed use :func:`~slimtune.compressors.quantization.export_int8` (int8 kernels) or
:func:`~slimtune.compressors.deploy.export_onnx_int8`. The tests bound the errors by :data:`WEIGHT_ONLY_INT8_REL_L2`
and :data:`WEIGHT_ONLY_INT4_REL_L2`.

Needs ``torchao`` (a dependency of slimtune).

Example:
    >>> import torch
    >>> from slimtune.examples.models import mlp
    >>> model = mlp()
    >>> q = quantize_weight_only(model, bits=8)
    >>> type(q.fc.weight).__name__, type(model.fc.weight).__name__
    ('Int8Tensor', 'Parameter')
    >>> x = torch.randn(4, 64)
    >>> with torch.no_grad():
    ...     bool((q(x) - model(x)).norm() <= WEIGHT_ONLY_INT8_REL_L2 * model(x).norm())
    True
    >>> weight_only_info(q).layers
    ('features.0', 'features.2', 'fc')
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from slimtune.errors import ArgumentError, ArgumentTypeError, QuantExportError, did_you_mean

__all__ = [
    "GROUP_SIZES",
    "WEIGHT_ONLY_ATTR",
    "WEIGHT_ONLY_INT4_REL_L2",
    "WEIGHT_ONLY_INT8_REL_L2",
    "WeightOnlyInfo",
    "int4_available",
    "quantize_weight_only",
    "weight_only_available",
    "weight_only_info",
]

WEIGHT_ONLY_INT8_REL_L2 = 0.05
"""Bound on the relative L2 error ``‖quantized - float‖ / ‖float‖`` of the outputs of a model with int8
weight-only Linear layers, as the tests check it: measured 0.005-0.024 on the tiny BERT and the MLP of the module
docstring (random weights, batches 1 and 32); 2× headroom."""

WEIGHT_ONLY_INT4_REL_L2 = 0.25
"""Bound on the relative L2 error of the outputs with int4 weight-only Linear layers (groups of 32-128): measured
0.014-0.16 on the tiny BERT and the MLP (16 levels per group of uniformly spread random weights; trained weights
with outliers can do worse); 1.5× headroom."""

GROUP_SIZES = (32, 64, 128)
"""The int4 group sizes the CPU kernels take (torchao 0.18's ``Int4OpaqueTensor``)."""

WEIGHT_ONLY_ATTR = "slimtune_weight_only"
"""The attribute of a model from :func:`quantize_weight_only` that holds its :class:`WeightOnlyInfo`."""

_CPU_INT4_MULTIPLE = 16  # aten._convert_weight_to_int4pack_for_cpu packs output channels in blocks of 16


@dataclass(frozen=True)
class WeightOnlyInfo:
    """What :func:`quantize_weight_only` did, on its result as ``model.slimtune_weight_only``.

    Attributes:
        bits: 8 or 4.
        group_size: Input features per int4 scale; ``None`` for int8 (one scale per output channel).
        layers: The Linear layers whose weights are now torchao quantized tensors, in model order.
        skipped: ``{layer: reason}`` of the selected Linear layers that stay float.
        notes: What else to know (e.g. int4 with float32 activations on the CPU is slow).
    """

    bits: int
    group_size: int | None
    layers: tuple[str, ...]
    skipped: dict[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()


def weight_only_info(model: nn.Module) -> WeightOnlyInfo | None:
    """The :class:`WeightOnlyInfo` of a model from :func:`quantize_weight_only` (``None`` for any other)."""
    info = getattr(model, WEIGHT_ONLY_ATTR, None)
    return info if isinstance(info, WeightOnlyInfo) else None


# ---------------------------------------------------------------------------------------------- torchao
@contextlib.contextmanager
def _quiet_torchao() -> Iterator[None]:
    """Silence torchao's import-time messages (each CUDA-only extension it cannot load on a CPU build, an Enum
    registration of torch) and its info lines about skipped layers (reported here instead)."""
    loggers = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def weight_only_available() -> bool:
    """Whether torchao's ``quantize_`` and weight-only configs can be imported (torchao is a dependency of slimtune)."""
    try:
        _torchao()
    except QuantExportError:
        return False
    return True


def _torchao() -> Any:
    try:
        with _quiet_torchao():
            import torchao.quantization as tq
    except Exception as e:
        raise QuantExportError(
            f"quantize_weight_only needs torchao ({type(e).__name__}: {e}): pip install torchao"
        ) from e
    return tq


def _config(bits: int, group_size: int, device_type: str) -> Any:
    """torchao's config for ``bits`` on ``device_type`` (``set_inductor_config=False``: it would change global
    ``torch._inductor`` settings)."""
    tq = _torchao()
    if bits == 8:
        return tq.Int8WeightOnlyConfig(set_inductor_config=False)
    if device_type == "cpu":
        with _quiet_torchao():
            from torchao.prototype.quantization.int4 import PrototypeInt4WeightOnlyConfig
        return PrototypeInt4WeightOnlyConfig(group_size=group_size, set_inductor_config=False)
    if device_type == "cuda":
        return tq.Int4WeightOnlyConfig(
            group_size=group_size, int4_packing_format="tile_packed_to_4d", set_inductor_config=False
        )
    raise QuantExportError(
        f"quantize_weight_only: no int4 weight-only kernels for {device_type} layers in torchao (CPU and CUDA "
        "only); use bits=8"
    )


@functools.cache
def _int4_problem(device: str) -> str | None:
    """Why int4 weight-only linears do not run on ``device`` here (``None`` when they do): quantizes and runs a
    tiny Linear once per device."""
    device_type = torch.device(device).type
    dtype = torch.bfloat16 if device_type == "cuda" else torch.float32
    try:
        torch.empty(0, device=device)
        config = _config(4, GROUP_SIZES[0], device_type)
        generator = torch.Generator().manual_seed(0)
        probe = nn.Sequential(nn.Linear(2 * GROUP_SIZES[0], _CPU_INT4_MULTIPLE))
        with torch.no_grad():
            probe[0].weight.copy_(torch.randn(probe[0].weight.shape, generator=generator))
        probe = probe.to(device=device, dtype=dtype)
        x = torch.randn(3, 2 * GROUP_SIZES[0], generator=generator).to(device=device, dtype=dtype)
        with torch.no_grad():
            expected = probe(x).float()
            with _quiet_torchao():
                _torchao().quantize_(probe, config)
            out = probe(x).float()
    except QuantExportError as e:
        return str(e)
    except Exception as e:  # noqa: BLE001 - any failure means "not available", with its reason
        text = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
        return f"{type(e).__name__}: {text[:300]}"
    if out.shape != expected.shape or not torch.isfinite(out).all():
        return "the int4 kernel gives wrong results"
    if float((out - expected).norm() / expected.norm()) > WEIGHT_ONLY_INT4_REL_L2:
        return "the int4 kernel gives wrong results"
    return None


def int4_available(device: str | torch.device = "cpu") -> bool:
    """Whether int4 weight-only linears run on ``device`` with this torch and torchao (probed once per device:
    a tiny Linear is quantized and run; CUDA needs bfloat16 and the tinygemm kernels, compute capability 8.0+).

    Example:
        >>> int4_available("cpu") in (True, False)
        True
    """
    return _int4_problem(str(torch.device(device))) is None


# ---------------------------------------------------------------------------------------------- layers
def _is_quantized(weight: Any) -> bool:
    try:
        from torchao.utils import TorchAOBaseTensor
    except Exception:  # noqa: BLE001 - without torchao nothing is quantized by it
        return False
    return isinstance(weight, TorchAOBaseTensor)


def _selected(model: nn.Module, layers: Iterable[str] | str | None) -> list[str]:
    """The names of the Linear layers to quantize (all of them for ``layers=None``), checked."""
    modules = dict(model.named_modules())
    linears = [name for name, m in modules.items() if isinstance(m, nn.Linear)]
    what = type(model).__name__
    shown = ", ".join(repr(n) for n in linears[:8]) + (f" and {len(linears) - 8} more" if len(linears) > 8 else "")
    if layers is None:
        if not linears:
            raise QuantExportError(
                f"quantize_weight_only: {what} has no nn.Linear layer; weight-only quantization here is for "
                "Linear layers (for convolutions use export_int8 or export_onnx_int8)"
            )
        return linears
    if isinstance(layers, str):
        layers = [layers]
    if not isinstance(layers, Iterable):
        raise ArgumentTypeError(
            f"quantize_weight_only: layers must be layer names (str) or None, got {type(layers).__name__}",
            field="layers",
        )
    names: list[str] = []
    for name in layers:
        if not isinstance(name, str):
            raise ArgumentTypeError(
                f"quantize_weight_only: layers must hold layer names (str), got {name!r}", field="layers"
            )
        if name not in modules:
            raise QuantExportError(
                f"quantize_weight_only: no layer {name!r} in {what}{did_you_mean(name, linears)}; its Linear "
                f"layers: {shown or 'none'}",
                field="layers",
            )
        if not isinstance(modules[name], nn.Linear):
            raise QuantExportError(
                f"quantize_weight_only: layer {name!r} is a {type(modules[name]).__name__}, not an nn.Linear; "
                f"weight-only quantization here is for Linear layers ({what}'s: {shown or 'none'})",
                field="layers",
            )
        if name not in names:
            names.append(name)
    if not names:
        raise QuantExportError("quantize_weight_only: `layers` is empty; nothing to quantize", field="layers")
    return names


def _skip_reason(name: str, layer: nn.Linear, bits: int, group_size: int, owners: dict[int, list[str]]) -> str | None:
    """Why the Linear layer ``name`` stays float (``None``: it is quantized)."""
    weight = layer.weight
    if _is_quantized(weight):
        return f"already quantized by torchao ({type(weight).__name__})"
    if isinstance(layer, nn.modules.linear.NonDynamicallyQuantizableLinear):
        return "the output projection of an nn.MultiheadAttention, which reads its weight directly, not via F.linear"
    if not weight.is_floating_point():
        return f"its weight is {weight.dtype}, not floating point"
    shared = [other for other in owners.get(id(weight), []) if other != f"{name}.weight"]
    if shared:
        return f"its weight is shared with {', '.join(shared[:3])} (quantizing it would untie them)"
    if bits == 4:
        if layer.in_features % group_size:
            return f"in_features {layer.in_features} is not a multiple of group_size {group_size}"
        device_type = weight.device.type
        if device_type == "cpu" and layer.out_features % _CPU_INT4_MULTIPLE:
            return (
                f"out_features {layer.out_features} is not a multiple of {_CPU_INT4_MULTIPLE} (the CPU int4 "
                "kernel's packing)"
            )
        if device_type == "cuda" and weight.dtype != torch.bfloat16:
            return (
                f"int4 on CUDA (tinygemm) needs bfloat16 weights, this one is {weight.dtype}: model.to(torch.bfloat16)"
            )
    return None


def _owners(model: nn.Module) -> dict[int, list[str]]:
    """``{id(parameter): [its names]}`` over the whole model (tied weights have several)."""
    owners: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(p), []).append(name)
    return owners


# ---------------------------------------------------------------------------------------------- entry point
def quantize_weight_only(
    model: nn.Module,
    bits: int = 8,
    group_size: int = 128,
    layers: Iterable[str] | None = None,
) -> nn.Module:
    """A copy of ``model`` whose Linear weights are int8 or int4 torchao tensors (weight-only quantization).

    The model is deep-copied (it is not modified) and the copy stays on the model's device, in eval mode.
    Activations stay float; no calibration data is needed. See the module docstring for the kernels and what
    they cost on a CPU (int4 wants a bfloat16 model there).

    Args:
        model: Any module with ``nn.Linear`` layers, on the CPU or a CUDA GPU (int8 works on any device torch
            runs ``mm`` on). Fake-quantized models (``QuantWrapper``) are refused.
        bits: 8 (symmetric int8 per output channel) or 4 (asymmetric int4 per group of ``group_size`` input
            features).
        group_size: Input features per int4 scale and zero point: 32, 64 or 128 (smaller: more accurate,
            larger scales overhead). Unused for ``bits=8``.
        layers: Names of the Linear layers to quantize (as in ``model.named_modules()``; one name or several);
            ``None``: every Linear layer.

    Returns:
        The quantized copy. Its :class:`WeightOnlyInfo` (``weight_only_info(q)`` or ``q.slimtune_weight_only``)
        lists the quantized layers and, with the reason, the selected ones that stay float (a ``UserWarning``
        lists those too). Its size: :func:`~slimtune.compressors.quantization.exported_size_bytes`.

    Raises:
        ArgumentError: ``bits`` not 4 or 8, or (for int4) ``group_size`` not 32, 64 or 128 (names the field).
        ArgumentTypeError: ``model`` is not a module, ``layers`` not names.
        QuantExportError: torchao missing; a name in ``layers`` that is not a layer of the model or not an
            ``nn.Linear`` (names it, lists the Linear layers); a model without Linear layers; a fake-quantized
            model; int4 kernels that do not run on the layers' device here (with the reason); or no selected
            layer that can be quantized (lists why each stays float).

    Example:
        >>> import torch
        >>> from slimtune.compressors.quantization import exported_size_bytes
        >>> model = torch.nn.Sequential(torch.nn.Linear(128, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
        >>> q = quantize_weight_only(model, bits=8, layers=["0"])
        >>> weight_only_info(q).layers, exported_size_bytes(q) < exported_size_bytes(model) / 2
        (('0',), True)
    """
    if isinstance(bits, bool) or bits not in (4, 8):
        raise ArgumentError(f"quantize_weight_only: bits must be 4 or 8, got {bits!r}", field="bits")
    if bits == 4 and (isinstance(group_size, bool) or group_size not in GROUP_SIZES):
        raise ArgumentError(
            f"quantize_weight_only: group_size must be one of {', '.join(map(str, GROUP_SIZES))} for int4, "
            f"got {group_size!r}",
            field="group_size",
        )
    if not isinstance(model, nn.Module):
        raise ArgumentTypeError(
            f"quantize_weight_only: model must be a torch.nn.Module, got {type(model).__name__}", field="model"
        )
    _refuse_fake_quantized(model)
    tq = _torchao()
    chosen = _selected(model, layers)
    modules, owners = dict(model.named_modules()), _owners(model)
    skipped = {n: r for n in chosen if (r := _skip_reason(n, modules[n], bits, group_size, owners)) is not None}
    targets = [n for n in chosen if n not in skipped]
    if not targets:
        reasons = "; ".join(f"{n}: {r}" for n, r in list(skipped.items())[:6])
        raise QuantExportError(
            f"quantize_weight_only: no selected Linear layer can be quantized to int{bits} ({reasons})"
        )
    devices = sorted({str(modules[n].weight.device) for n in targets})
    if bits == 4:
        for device in devices:
            problem = _int4_problem(device)
            if problem is not None:
                raise QuantExportError(
                    f"quantize_weight_only: int4 weight-only kernels do not run on {device} with torch "
                    f"{torch.__version__} and torchao {_torchao_version()} ({problem}); use bits=8"
                )

    quantized = copy.deepcopy(model)
    for device in devices:
        group = {n for n in targets if str(modules[n].weight.device) == device}
        config = _config(bits, group_size, torch.device(device).type)
        with _quiet_torchao(), torch.no_grad():
            tq.quantize_(quantized, config, filter_fn=lambda module, fqn, group=group: fqn in group)
    new_modules = dict(quantized.named_modules())
    for name in targets:
        if not _is_quantized(new_modules[name].weight):  # torchao declined it (its own shape rules)
            skipped[name] = "torchao left it float (a shape its kernels do not take)"
    done = tuple(n for n in targets if n not in skipped)
    notes = _notes(bits, [new_modules[n] for n in done])
    info = WeightOnlyInfo(bits, group_size if bits == 4 else None, done, skipped, tuple(notes))
    setattr(quantized, WEIGHT_ONLY_ATTR, info)
    if skipped:
        listed = "; ".join(f"{n}: {r}" for n, r in list(skipped.items())[:6])
        more = f" and {len(skipped) - 6} more" if len(skipped) > 6 else ""
        warnings.warn(
            f"quantize_weight_only: {len(skipped)} Linear layer(s) stay float ({listed}{more}); see "
            f"{WEIGHT_ONLY_ATTR}.skipped",
            stacklevel=2,
        )
    for note in notes:
        warnings.warn(f"quantize_weight_only: {note}", stacklevel=2)
    return quantized.eval()


def _notes(bits: int, layers: list[nn.Module]) -> list[str]:
    slow = [m for m in layers if m.weight.device.type == "cpu" and m.weight.dtype == torch.float32]
    if bits == 4 and slow:
        return [
            "int4 on the CPU with float32 weights and activations runs torch's int4 kernel on its slow path "
            "(a tiny BERT: 54-68× slower than float on a 2-core AVX-512 EPYC): convert the model to "
            "bfloat16 first (model.to(torch.bfloat16)) for 1-3× bfloat16's time"
        ]
    return []


def _torchao_version() -> str:
    try:
        import torchao

        return str(torchao.__version__)
    except Exception:  # noqa: BLE001
        return "?"


def _refuse_fake_quantized(model: nn.Module) -> None:
    from slimtune.compressors.quantization.modules import QuantWrapper

    wrapped = [name for name, m in model.named_modules() if isinstance(m, QuantWrapper)]
    if wrapped:
        raise QuantExportError(
            f"quantize_weight_only: the model is fake-quantized (QuantWrapper layers {', '.join(wrapped[:4])}"
            f"{' ...' if len(wrapped) > 4 else ''}); quantize the float model, or export this one with "
            "export_int8(model, x, mode='dynamic') (int8 weights from the learned quantization)"
        )
