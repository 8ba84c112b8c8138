"""Multiply-accumulates (MACs) and parameters per layer, counted with forward hooks.

:func:`count_flops` runs one forward pass of the example inputs with a hook on every module that
does work and reports one row per such module. Hooks see every module call, so the count works
for any model — also ones ``torch.fx`` cannot trace — and a module called twice is counted twice.
Work done by functional calls outside modules (``F.relu``, ``x + y``, ``torch.cat``) is not seen.

Counting rules (all numbers are **per sample**: the totals of the forward pass are divided by the
first dimension of the first tensor input):

- Conv1d/2d/3d (any ``groups``): ``macs = out.numel × in_channels/groups × prod(kernel)``.
- ConvTranspose1d/2d/3d: ``macs = in.numel × out_channels/groups × prod(kernel)``.
- Linear (any number of leading dims): ``macs = out.numel × in_features``.
- Bilinear: ``macs = out.numel × in1_features × in2_features``.
- BatchNorm, InstanceNorm, LayerNorm, GroupNorm: ``macs = 0``, ``elementwise = out.numel``.
- Activations, Softmax, Upsample: ``macs = 0``, ``elementwise = out.numel``.
- Pooling (max, avg, adaptive, LP): ``macs = 0``, ``elementwise = in.numel``.
- Embedding and other leaf modules with parameters: 0 and 0 (listed for their ``params``).
- Hugging Face ``Conv1D``: as Linear. ``nn.MultiheadAttention``: its four projections
  (``4 × tokens × E²``) plus its two attention products (``2 × tokens × S × E``).
- Products done by functional code outside those layers (``q @ k.transpose(-2, -1)``,
  ``torch.matmul``, ``F.scaled_dot_product_attention``: ``QKᵀ`` and ``AV``) are counted too, in a
  row of the module running them, type ``matmul``: ``mm``/``bmm`` as ``m × k × n`` per product,
  attention as ``heads × L × S × (E + Ev)``.

Layers with a handler (:mod:`slimtune.compressors.handlers`) are counted by it. Biases are not
counted as MACs. Unstructured zeros do not reduce ``macs`` (dense kernels still multiply them);
``sparse_macs`` is ``macs`` × the fraction of non-zero weights, the count an ideal sparse kernel
would do. ``params`` counts the module's own weights (a ``torch.nn.utils.prune`` re-parametrised
layer counts its weight once; a quantized ``torch.ao.nn.quantized`` layer counts its packed weight
and bias). Module types with no work (``Identity``, ``Dropout``, ``Flatten``, containers) get no
row unless they run products themselves.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from slimtune.compressors.measures import count_flops
    >>> df = count_flops(nn.Conv2d(3, 16, 3, padding=1), torch.randn(1, 3, 32, 32))
    >>> int(df["macs"].sum())  # 16*32*32 outputs x 3*3*3 MACs each
    442368
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from slimtune import devices
from slimtune.compressors.handlers import handler_for
from slimtune.compressors.measures.latency import as_tuple, batch_dim
from slimtune.errors import ArgumentTypeError

__all__ = ["count_flops", "COLUMNS"]

COLUMNS = ["layer", "type", "macs", "sparse_macs", "elementwise", "params", "in_shape", "out_shape", "calls"]
"""Columns of the :func:`count_flops` table."""

_NORMS = (
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
)
_POOLS = (
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
    nn.modules.pooling._LPPoolNd,
)
_ELEMENTWISE = (nn.Softmax, nn.LogSoftmax, nn.Softmin, nn.Upsample)
_SKIP = (nn.Identity, nn.Flatten, nn.Unflatten, nn.modules.dropout._DropoutNd)


def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        for v in value:
            t = _first_tensor(v)
            if t is not None:
                return t
    return None


def _tensor_of(value: Any) -> torch.Tensor | None:
    """A tensor attribute, or the tensor returned by a quantized module's ``weight()``/``bias()``."""
    if callable(value) and not isinstance(value, (torch.Tensor, nn.Module)):
        try:
            value = value()
        except Exception:  # noqa: BLE001 - any failure means: no readable tensor
            return None
    return value if isinstance(value, torch.Tensor) else None


def _kind(m: nn.Module) -> str | None:
    """``handler``, ``bilinear``, ``norm``, ``act``, ``pool``, ``param``, ``conv``/``convT``/``linear``
    (duck-typed quantized layers) or None."""
    if isinstance(m, _SKIP):
        return None
    if handler_for(m) is not None:
        return "handler"
    if isinstance(m, nn.Bilinear):
        return "bilinear"
    if isinstance(m, _NORMS):
        return "norm"
    if isinstance(m, _POOLS):
        return "pool"
    if isinstance(m, _ELEMENTWISE) or type(m).__module__ == "torch.nn.modules.activation":
        return "act"
    # quantized / wrapped layers that are not subclasses of the float modules (duck typing)
    if all(hasattr(m, a) for a in ("in_channels", "out_channels", "kernel_size", "groups")):
        return "convT" if "Transpose" in type(m).__name__ else "conv"
    if hasattr(m, "in_features") and hasattr(m, "out_features") and "Linear" in type(m).__name__:
        return "linear"
    if "activation" in type(m).__module__ or type(m).__name__ in ("ReLU6", "Hardswish", "ELU", "LeakyReLU"):
        return "act"
    if any(True for _ in m.children()):
        return None
    if any(True for _ in m.parameters(recurse=False)):
        return "param"
    return None


def _weight(m: nn.Module) -> torch.Tensor | None:
    """The effective weight (prune masks applied)."""
    return _tensor_of(getattr(m, "weight", None))


def _params(m: nn.Module) -> int:
    """Own parameter count; prune re-parametrisation and packed quantized weights handled."""
    total = 0
    counted = set()
    for attr in ("weight", "bias"):
        t = _tensor_of(getattr(m, attr, None))
        if t is not None:
            total += t.numel()
            counted.update({attr, attr + "_orig"})
    for n, p in m.named_parameters(recurse=False):
        if n not in counted:
            total += p.numel()
    return total


def _macs(kind: str, m: nn.Module, x: torch.Tensor | None, y: torch.Tensor | None) -> tuple[int, int]:
    """(MACs, element-wise ops) of one call over the whole batch."""
    if kind == "handler":
        macs, elem = handler_for(m).macs(m, x, y)  # type: ignore[union-attr]
        return int(macs), int(elem)
    if y is None:
        return 0, 0
    if kind == "conv":
        k = math.prod(_pair(m.kernel_size))
        return y.numel() * (int(m.in_channels) // int(m.groups)) * k, 0
    if kind == "convT":
        if x is None:
            return 0, 0
        k = math.prod(_pair(m.kernel_size))
        return x.numel() * (int(m.out_channels) // int(m.groups)) * k, 0
    if kind == "linear":
        return y.numel() * int(m.in_features), 0
    if kind == "bilinear":
        return y.numel() * int(m.in1_features) * int(m.in2_features), 0
    if kind in ("norm", "act"):
        return 0, y.numel()
    if kind == "pool":
        return 0, (x.numel() if x is not None else y.numel())
    return 0, 0


def _weighted(kind: str | None, m: nn.Module) -> bool:
    """Whether the layer's MACs multiply its ``weight`` (so unstructured zeros count as sparse MACs)."""
    if kind in ("conv", "convT", "linear", "bilinear"):
        return True
    h = handler_for(m) if kind == "handler" else None
    return h is not None and h.prunable_weights


_MATMUL_OPS = {"mm", "addmm", "bmm", "baddbmm"}
_SDPA_OPS = {
    "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention",
    "_scaled_dot_product_fused_attention_overrideable",
}


class _Products(TorchDispatchMode):
    """Counts matrix products done outside handled layers, in a row of the module running them."""

    def __init__(self, model: nn.Module, rows: dict[str, dict[str, Any]], wrappers: set[int]) -> None:
        super().__init__()
        self.rows = rows
        self.stack: list[tuple[str, nn.Module, bool]] = []
        self.hooks = []
        for name, m in model.named_modules():
            handled = (
                handler_for(m) is not None or _kind(m) in ("bilinear", "conv", "convT", "linear") or id(m) in wrappers
            )
            self.hooks.append(m.register_forward_pre_hook(self._enter(name or type(m).__name__, m, handled)))
            self.hooks.append(m.register_forward_hook(self._leave))

    def _enter(self, name: str, m: nn.Module, handled: bool) -> Any:
        def hook(module: nn.Module, args: Any) -> None:
            self.stack.append((name, m, handled))

        return hook

    def _leave(self, module: nn.Module, args: Any, output: Any) -> None:
        if self.stack:
            self.stack.pop()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if not self.stack or any(handled for _, _, handled in self.stack):
            return out
        name = func.overloadpacket.__name__
        macs = 0
        if name in _MATMUL_OPS:
            a, b = (args[1], args[2]) if name in ("addmm", "baddbmm") else (args[0], args[1])
            macs = a.numel() * b.shape[-1]
        elif name in _SDPA_OPS:
            q, k, v = args[0], args[1], args[2]
            macs = q.numel() // q.shape[-1] * k.shape[-2] * (q.shape[-1] + v.shape[-1])
        if macs:
            layer, module, _ = self.stack[-1]
            row = self.rows.get(layer)
            if row is None:
                self.rows[layer] = row = {
                    "layer": layer,
                    "type": type(module).__name__,
                    "macs": 0,
                    "sparse_macs": 0.0,
                    "elementwise": 0,
                    "params": _params(module) if not any(True for _ in module.children()) else 0,
                    "in_shape": None,
                    "out_shape": None,
                    "calls": 0,
                    "_density": 1.0,
                }
            row["macs"] += macs
            row["sparse_macs"] += macs
            row["matmul"] = row.get("matmul", 0) + macs
        return out


def _pair(k: Any) -> tuple[int, ...]:
    return tuple(k) if isinstance(k, (tuple, list)) else (int(k),)


def _density(m: nn.Module) -> float:
    w = _weight(m)
    if w is None or w.numel() == 0 or w.is_quantized:
        return 1.0
    return float(torch.count_nonzero(w.detach())) / w.numel()


def count_flops(model: nn.Module, example_inputs: Any) -> pd.DataFrame:
    """Per-layer MACs, element-wise ops and parameters of one forward pass, per sample.

    Args:
        model: Any module, on any device. It runs once in eval mode under ``torch.no_grad()``;
            every submodule's training flag is restored afterwards.
        example_inputs: A tensor or a tuple of positional arguments, on any device (moved to the
            model's: the device of its first parameter or buffer). Counts are divided by the
            first dimension of the first tensor input, so they are **per sample** whatever the
            example's batch size.

    Returns:
        A DataFrame with one row per module that did work, in order of first call, and columns
        ``layer`` (qualified name), ``type`` (class name), ``macs``, ``sparse_macs``,
        ``elementwise``, ``params``, ``in_shape`` and ``out_shape`` (of the first call, batch dim
        included), ``calls`` (calls in the pass; counts are summed over calls). Use
        ``df["macs"].sum()`` for the model's MACs (FLOPs ≈ 2 × MACs).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> mlp = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        >>> df = count_flops(mlp, torch.randn(4, 64))
        >>> df["macs"].tolist()  # 64*32 and 32*10 per sample
        [2048, 0, 320]
    """
    if not isinstance(model, nn.Module):
        raise ArgumentTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}", field="model")
    args = devices.move(as_tuple(example_inputs), devices.model_device(model))
    n = batch_dim(args)
    rows: dict[str, dict[str, Any]] = {}
    handles = []

    def make_hook(name: str, kind: str, target: nn.Module | None = None):  # noqa: ANN202
        def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
            module = target if target is not None else module
            x = _first_tensor(inputs)
            y = _first_tensor(output)
            macs, elem = _macs(kind, module, x, y)
            row = rows.get(name)
            if row is None:
                rows[name] = row = {
                    "layer": name,
                    "type": type(module).__name__,
                    "macs": 0,
                    "sparse_macs": 0.0,
                    "elementwise": 0,
                    "params": _params(module),
                    "in_shape": tuple(x.shape) if x is not None else None,
                    "out_shape": tuple(y.shape) if y is not None else None,
                    "calls": 0,
                    "_density": _density(module) if _weighted(kind, module) else 1.0,
                }
            row["macs"] += macs
            row["sparse_macs"] += macs * row["_density"]
            row["elementwise"] += elem
            row["calls"] += 1

        return hook

    wrapped, wrappers = set(), set()
    for name, m in model.named_modules():
        inner = getattr(m, "layer", None)
        if isinstance(inner, nn.Module) and _weighted(_kind(inner), inner) and _kind(m) is None:
            # a wrapper (e.g. a fake-quantizer) that runs its inner layer's kernel itself: the
            # inner layer's hooks never fire, so count the wrapper's call with the inner layer
            prefix = f"{name}.layer" if name else "layer"
            handles.append(m.register_forward_hook(make_hook(prefix, _kind(inner), target=inner)))
            wrapped.add(id(inner))
            wrappers.add(id(m))
    for name, m in model.named_modules():
        kind = _kind(m)
        if kind is not None and id(m) not in wrapped:
            handles.append(m.register_forward_hook(make_hook(name or type(m).__name__, kind)))
    products = _Products(model, rows, wrappers)
    handles += products.hooks
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad(), products:
            model(*args)
    finally:
        for h in handles:
            h.remove()
        for m, flag in flags:
            m.training = flag

    for row in rows.values():
        del row["_density"]
        row.pop("matmul", None)
        for key in ("macs", "elementwise"):
            row[key] = row[key] // n if row[key] % n == 0 else row[key] / n
        row["sparse_macs"] = row["sparse_macs"] / n
    return pd.DataFrame(list(rows.values()), columns=COLUMNS)
