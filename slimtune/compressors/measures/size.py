"""Storage size of a model in bytes, counting bit-widths and unstructured sparsity.

Every parameter and every persistent buffer (what ``state_dict`` saves) is counted once (tied
tensors once). The rules, tensor by tensor:

* **Width.** A tensor is stored at its dtype's width (32 bits for ``float32``, 64 for ``int64``
  ...). A layer listed in ``bits`` stores its ``weight`` at that many bits, packed
  (``ceil(numel * bits / 8)`` bytes), plus its quantization parameters: one fp32 scale per
  output channel (``4 * weight.shape[0]`` bytes) and, when ``symmetric=False``, one zero point per
  output channel packed at the same bit-width (``ceil(out * bits / 8)`` bytes). ``bits`` of 16 or
  more means a float format (no scales). The layer's bias and other tensors stay as they are.
  Weights of real quantized layers (``torch.ao.nn.quantized``) are counted the same way from the
  quantized tensor (its integer width, its per-channel or per-tensor scales, zero points when any
  is non-zero), plus 8 bytes for the layer's output scale and zero point.
* **Sparsity** (``sparse_format="bitmap"``). A weight tensor with two or more dimensions that
  contains zeros is stored in the cheaper of *dense* (``ceil(numel * bits / 8)`` bytes) and
  *bitmap* format: one bit per element saying whether it is non-zero, followed by the non-zero
  values packed at ``bits`` each — ``ceil(numel / 8) + ceil(nonzero * bits / 8)`` bytes. One-
  dimensional tensors (biases, norm parameters) and buffers are always dense. With
  ``sparse_format="dense"`` every tensor is dense.
* **Pruning re-parametrisation.** A layer pruned with ``torch.nn.utils.prune`` carries
  ``weight_orig`` (parameter) and ``weight_mask`` (buffer); it is counted as one tensor, the
  effective ``weight_orig * weight_mask``, named ``<layer>.weight``. Layers parametrised with
  ``torch.nn.utils.parametrize`` are counted by their effective tensors likewise.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from slimtune.compressors.measures import model_size_bytes, count_params
    >>> model = nn.Sequential()
    >>> model.add_module("fc", nn.Linear(100, 10))
    >>> model_size_bytes(model).total_bytes  # (1000 + 10) * 4
    4040
    >>> model_size_bytes(model, bits={"fc": 8}).total_bytes  # 1000 + 10 * 4 (scales) + 10 * 4 (bias)
    1080
    >>> count_params(model)[0]
    1010
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd
import torch
from torch import nn

from slimtune.errors import ArgumentTypeError, MeasureError

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["SizeReport", "model_size_bytes", "count_params", "SIZE_COLUMNS"]

SparseFormat = Literal["bitmap", "dense"]
SIZE_COLUMNS = ["tensor", "layer", "kind", "numel", "nonzero", "bits", "format", "bytes"]
"""Columns of :attr:`SizeReport.breakdown`."""


@dataclass
class SizeReport:
    """Bytes needed to store a model.

    Args:
        total_bytes: Sum of ``breakdown["bytes"]``.
        breakdown: One row per stored tensor, columns ``tensor`` (qualified name), ``layer``
            (module name), ``kind`` (``param``, ``buffer``, ``qparams``, ``quantized``), ``numel``,
            ``nonzero``, ``bits`` (per stored value), ``format`` (``dense`` or ``bitmap``),
            ``bytes``.
    """

    total_bytes: int
    breakdown: pd.DataFrame = field(repr=False)

    @property
    def megabytes(self) -> float:
        """``total_bytes`` in MiB."""
        return self.total_bytes / 2**20

    def per_layer(self) -> pd.Series:
        """Bytes per module name (the sum of its tensors' rows)."""
        return self.breakdown.groupby("layer", sort=False)["bytes"].sum()


@dataclass
class _Entry:
    name: str
    layer: str
    kind: str  # param | buffer | quantized
    tensor: torch.Tensor


def _dtype_bits(t: torch.Tensor) -> int:
    if t.dtype == torch.bool:
        return 8
    return t.element_size() * 8


def _is_parametrized(m: nn.Module) -> bool:
    return isinstance(getattr(m, "parametrizations", None), nn.ModuleDict)


def _iter_tensors(model: nn.Module) -> Iterator[_Entry]:
    """Every stored tensor once, with prune/parametrize re-parametrisations resolved."""
    seen: set[int] = set()
    skip_prefixes: list[str] = []
    for mname, m in model.named_modules():
        if any(mname == p or mname.startswith(p + ".") for p in skip_prefixes):
            continue
        prefix = mname + "." if mname else ""
        own_params = dict(m.named_parameters(recurse=False))
        own_buffers = {
            n: b for n, b in m.named_buffers(recurse=False) if n not in getattr(m, "_non_persistent_buffers_set", ())
        }
        done: set[str] = set()
        # torch.nn.utils.prune: X_orig (param) + X_mask (buffer) -> effective X
        for n in list(own_params):
            if n.endswith("_orig") and n[: -len("_orig")] + "_mask" in own_buffers:
                base = n[: -len("_orig")]
                with torch.no_grad():
                    eff = own_params[n] * own_buffers[base + "_mask"]
                if id(own_params[n]) not in seen:
                    seen.add(id(own_params[n]))
                    yield _Entry(prefix + base, mname, "param", eff)
                done.update({n, base + "_mask"})
        # torch.nn.utils.parametrize: effective tensors, skip the parametrization modules
        if _is_parametrized(m):
            skip_prefixes.append(prefix + "parametrizations")
            for base in m.parametrizations:
                original = getattr(m.parametrizations[base], "original", None)
                key = id(original) if original is not None else id(m.parametrizations[base])
                if key in seen:
                    continue
                seen.add(key)
                with torch.no_grad():
                    eff = getattr(m, base).detach()
                kind = "param" if isinstance(original, nn.Parameter) else "buffer"
                yield _Entry(prefix + base, mname, kind, eff)
        # real quantized layers (torch.ao.nn.quantized): packed weight()/bias() methods
        if callable(getattr(m, "weight", None)) and not isinstance(
            getattr(m, "weight", None), (torch.Tensor, nn.Module)
        ):
            try:
                w = m.weight()
            except Exception:  # noqa: BLE001 - not a quantized layer after all
                w = None
            if isinstance(w, torch.Tensor):
                yield _Entry(prefix + "weight", mname, "quantized" if w.is_quantized else "param", w.detach())
                b = m.bias() if callable(getattr(m, "bias", None)) else None
                if isinstance(b, torch.Tensor):
                    yield _Entry(prefix + "bias", mname, "param", b.detach())
                if isinstance(getattr(m, "scale", None), (float, int)):
                    qparams = torch.zeros(2, dtype=torch.float32, device=w.device)  # counted, never computed with
                    yield _Entry(prefix + "output_qparams", mname, "qparams", qparams)
        for n, p in own_params.items():
            if n in done or id(p) in seen:
                continue
            seen.add(id(p))
            yield _Entry(prefix + n, mname, "param", p.detach())
        for n, b in own_buffers.items():
            if n in done or id(b) in seen:
                continue
            seen.add(id(b))
            yield _Entry(prefix + n, mname, "buffer", b.detach())


def _nonzero(t: torch.Tensor) -> int:
    if t.is_quantized:
        return int(torch.count_nonzero(t.int_repr()))
    return int(torch.count_nonzero(t))


def _packed_bytes(n: int, bits: int) -> int:
    return math.ceil(n * bits / 8)


def _storage(numel: int, nonzero: int, bits: int, sparse_ok: bool) -> tuple[str, int]:
    dense = _packed_bytes(numel, bits)
    if sparse_ok and nonzero < numel:
        bitmap = math.ceil(numel / 8) + _packed_bytes(nonzero, bits)
        if bitmap < dense:
            return "bitmap", bitmap
    return "dense", dense


def _check_bits(bits: Mapping[str, int] | None, model: nn.Module) -> dict[str, int]:
    if bits is None:
        return {}
    if not hasattr(bits, "items"):
        raise ArgumentTypeError(
            f"bits must be a mapping from layer name to bit-width, got {type(bits).__name__}", field="bits"
        )
    modules = dict(model.named_modules())
    out = {}
    for layer, b in bits.items():
        if layer not in modules:
            raise MeasureError(f"bits: unknown layer {layer!r}; it is not a module name of the model", field="bits")
        m = modules[layer]
        if not (hasattr(m, "weight_orig") or isinstance(getattr(m, "weight", None), torch.Tensor)):
            raise MeasureError(
                f"bits: layer {layer!r} ({type(m).__name__}) has no weight tensor to quantize", field="bits"
            )
        if b is None:
            continue
        if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= 32:
            raise MeasureError(f"bits[{layer!r}] = {b!r}; a bit-width must be an int in 1..32 (or None)", field="bits")
        out[layer] = b
    return out


def model_size_bytes(
    model: nn.Module,
    bits: Mapping[str, int | None] | None = None,
    sparse_format: SparseFormat = "bitmap",
    symmetric: bool = True,
) -> SizeReport:
    """Bytes needed to store ``model``'s parameters and persistent buffers.

    Args:
        model: Any module; float, fake-quantized, pruned (masks or re-parametrised) or converted
            to ``torch.ao`` quantized layers.
        bits: Module name → weight bit-width (1–32; ``None`` or a float width of 16/32 means no
            quantization parameters). See the module docstring for the exact rule.
        sparse_format: ``"bitmap"`` stores a ≥2-D weight with zeros in the cheaper of dense and
            bitmap format; ``"dense"`` never uses a sparse format.
        symmetric: Weight quantization is symmetric (no zero points stored); ``False`` adds one
            zero point per output channel.

    Returns:
        A :class:`SizeReport`.

    Raises:
        ValueError: ``bits`` names a module the model lacks or one without a weight, or gives an
            invalid width; ``sparse_format`` is unknown.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> conv = nn.Conv2d(8, 16, 3, bias=False)
        >>> model_size_bytes(conv).total_bytes  # 16*8*3*3 * 4
        4608
        >>> with torch.no_grad():
        ...     conv.weight[:, :4] = 0  # half the weights
        >>> model_size_bytes(conv).total_bytes  # bitmap 1152/8 + 576 * 4
        2448
    """
    if sparse_format not in ("bitmap", "dense"):
        raise MeasureError(f"sparse_format must be 'bitmap' or 'dense', got {sparse_format!r}", field="sparse_format")
    layer_bits = _check_bits(bits, model)
    rows: list[dict[str, Any]] = []
    for e in _iter_tensors(model):
        t = e.tensor
        numel = t.numel()
        nz = _nonzero(t) if numel else 0
        base = e.name.rsplit(".", 1)[-1]
        if e.kind == "qparams":  # output scale (fp32) + zero point (int32) of a quantized layer
            rows.append(_row(e, numel, numel, 32, "dense", 8))
            continue
        if e.kind == "quantized":
            b = _dtype_bits(t.int_repr())
            fmt, nbytes = _storage(numel, nz, b, sparse_format == "bitmap" and t.dim() >= 2)
            rows.append(_row(e, numel, nz, b, fmt, nbytes))
            scales, zps = _quantized_qparams(t)
            rows.append(
                _row(
                    _Entry(e.name + ".qparams", e.layer, "qparams", t),
                    scales + zps,
                    scales + zps,
                    32,
                    "dense",
                    4 * scales + _packed_bytes(zps, b),
                )
            )
            continue
        if base == "weight" and e.layer in layer_bits and layer_bits[e.layer] < 16:
            b = layer_bits[e.layer]
            fmt, nbytes = _storage(numel, nz, b, sparse_format == "bitmap" and t.dim() >= 2)
            rows.append(_row(e, numel, nz, b, fmt, nbytes))
            out = int(t.shape[0]) if t.dim() > 0 else 1
            qbytes = 4 * out + (0 if symmetric else _packed_bytes(out, b))
            rows.append(_row(_Entry(e.name + ".qparams", e.layer, "qparams", t), out, out, 32, "dense", qbytes))
            continue
        if base == "weight" and e.layer in layer_bits:
            b = layer_bits[e.layer]
        else:
            b = _dtype_bits(t)
        sparse_ok = sparse_format == "bitmap" and e.kind == "param" and t.dim() >= 2 and t.is_floating_point()
        fmt, nbytes = _storage(numel, nz, b, sparse_ok)
        rows.append(_row(e, numel, nz, b, fmt, nbytes))
    df = pd.DataFrame(rows, columns=SIZE_COLUMNS)
    return SizeReport(int(df["bytes"].sum()) if len(df) else 0, df)


def _row(e: _Entry, numel: int, nz: int, bits: int, fmt: str, nbytes: int) -> dict[str, Any]:
    return {
        "tensor": e.name,
        "layer": e.layer,
        "kind": e.kind,
        "numel": numel,
        "nonzero": nz,
        "bits": bits,
        "format": fmt,
        "bytes": int(nbytes),
    }


def _quantized_qparams(t: torch.Tensor) -> tuple[int, int]:
    """(number of scales, number of non-trivial zero points) of a quantized tensor."""
    if t.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric, torch.per_channel_affine_float_qparams):
        n = int(t.q_per_channel_scales().numel())
        zps = n if bool(torch.any(t.q_per_channel_zero_points() != 0)) else 0
        return n, zps
    return 1, (1 if int(t.q_zero_point()) != 0 else 0)


def count_params(model: nn.Module) -> tuple[int, int]:
    """(total, non-zero) number of parameters, prune-aware.

    Parameters are counted once each (tied ones once); a ``torch.nn.utils.prune`` re-parametrised
    weight counts as its effective ``weight_orig * weight_mask`` (the mask is a buffer, not a
    parameter), and a quantized ``torch.ao`` layer counts its packed weight and bias.

    Args:
        model: Any module.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from torch.nn.utils import prune
        >>> fc = prune.l1_unstructured(nn.Linear(10, 10), "weight", amount=0.5)
        >>> count_params(fc)  # 100 weights (50 zero) + 10 biases
        (110, 60)
    """
    total = nonzero = 0
    for e in _iter_tensors(model):
        if e.kind in ("param", "quantized"):
            total += e.tensor.numel()
            nonzero += _nonzero(e.tensor)
    return total, nonzero
