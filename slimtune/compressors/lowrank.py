"""Low-rank factorization: a Linear or Conv2d layer replaced by a product of smaller layers.

Two decompositions, each exact at full rank:

- **Truncated SVD** (Linear, and Conv2d as in Zhang et al., "Accelerating Very Deep Convolutional Networks for
  Classification and Detection", TPAMI 2016, without their nonlinear response reconstruction): the weight
  reshaped to ``(out, in·k·k)`` is ``U S Vᵀ``; keeping the ``r`` largest singular values gives a layer with
  ``r`` outputs and the layer's kernel, stride, padding and dilation (weight ``√S Vᵀ``) followed by a 1×1 conv /
  Linear with the bias (weight ``U √S``). MACs per output position: ``r·(in·k·k + out)`` instead of
  ``out·in·k·k``.
- **Tucker-2** (Conv2d, Kim et al., "Compression of Deep Convolutional Neural Networks for Fast and Low Power
  Mobile Applications", ICLR 2016): the 4-way kernel is decomposed along its output and input channel modes by
  HOSVD (``U_out``: the ``r_out`` leading left singular vectors of the mode-0 unfolding, ``U_in`` of the
  mode-1 unfolding, core ``W ×₀ U_outᵀ ×₁ U_inᵀ``) into a 1×1 conv ``in → r_in`` (``U_inᵀ``), the core
  ``k×k`` conv ``r_in → r_out`` with the layer's stride, padding and dilation, and a 1×1 conv ``r_out → out``
  (``U_out``) with the bias. Kim et al. choose the ranks by variational Bayesian matrix factorization and
  fine-tune the whole network afterwards; here the ranks are the plan's (searched), and fine-tuning is the
  trial's.

A plan names the layers to factorize and their rank (:class:`~slimtune.compressors.plan.FactorSpec`): an
absolute ``rank`` or a ``rank_ratio`` of the layer's full rank (SVD: ``min(out, in·k·k)``; Tucker-2:
``r_out = ⌈ratio·out⌉`` and ``r_in = ⌈ratio·in⌉``), and a ``method``: ``svd``, ``tucker2`` or ``auto`` (SVD for
Linear and 1×1 convs; for a ``k×k`` conv the one with fewer MACs at that ratio). A factorized layer becomes a
:class:`Factorized` module (an ``nn.Sequential`` of the factors, so FLOPs, parameters, size, quantization and
export see ordinary Conv2d / Linear layers); its factors are named ``<layer>.0``, ``<layer>.1`` (and ``.2``).

Grouped and depthwise convolutions, and layers with fewer than two channels on a side, are not factorized: the
plan is refused with a message naming the layer and why.

Example:
    >>> import torch
    >>> from torch import nn
    >>> layer = nn.Conv2d(16, 32, 3, padding=1)
    >>> full = factorize_layer(layer, rank_ratio=1.0, method="svd")
    >>> x = torch.randn(2, 16, 8, 8)
    >>> bool(torch.allclose(full(x), layer(x), atol=1e-5))
    True
    >>> low = factorize_layer(layer, rank_ratio=0.25, method="tucker2")
    >>> [type(m).__name__ for m in low], low[1].in_channels, low[1].out_channels
    (['Conv2d', 'Conv2d', 'Conv2d'], 4, 8)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from slimtune.errors import PlanError

__all__ = [
    "METHODS",
    "Factorized",
    "FactorShape",
    "energy_rank_ratios",
    "factor_shape",
    "factorizable_layers",
    "factorize",
    "factorize_layer",
    "factorized_macs",
    "factor_sizes",
    "macs_for",
    "shape_for",
    "why_not_factorizable",
]

METHODS = ("auto", "svd", "tucker2")
"""Decompositions a plan may name."""


class Factorized(nn.Sequential):
    """A layer replaced by its factors (``nn.Sequential`` of Conv2d / Linear layers); ``method`` and ``ranks``
    record how it was made."""

    def __init__(self, *factors: nn.Module, method: str, ranks: tuple[int, ...]) -> None:
        super().__init__(*factors)
        self.method = method
        self.ranks = ranks

    def extra_repr(self) -> str:
        return f"method={self.method}, ranks={self.ranks}"


@dataclass(frozen=True)
class FactorShape:
    """The decomposition chosen for one layer: its method and ranks (``(r,)`` for SVD, ``(r_in, r_out)`` for
    Tucker-2)."""

    method: str
    ranks: tuple[int, ...]


def why_not_factorizable(module: nn.Module) -> str | None:
    """Why ``module`` cannot be factorized, or None when it can."""
    if isinstance(module, nn.Linear):
        if min(module.in_features, module.out_features) < 2:
            return "a Linear layer with fewer than 2 inputs or outputs"
        return None
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            return f"a grouped convolution (groups={module.groups})"
        if isinstance(module.padding, str) and module.padding != "valid":
            return f"padding={module.padding!r}"
        if module.padding_mode != "zeros":
            return f"padding_mode={module.padding_mode!r}"
        if min(module.in_channels, module.out_channels) < 2:
            return "a convolution with fewer than 2 input or output channels"
        return None
    return f"a {type(module).__name__} (only Linear and Conv2d layers are factorized)"


def factorizable_layers(model: nn.Module) -> list[str]:
    """Names of the Linear and (ungrouped) Conv2d layers of ``model`` that can be factorized."""
    return [n for n, m in model.named_modules() if n and why_not_factorizable(m) is None]


def _dims(module: nn.Module) -> tuple[int, int, int]:
    """``(out, in, k·k)``."""
    if isinstance(module, nn.Linear):
        return module.out_features, module.in_features, 1
    kh, kw = module.kernel_size
    return module.out_channels, module.in_channels, kh * kw


def _ratio_rank(ratio: float, full: int) -> int:
    return max(1, min(full, math.ceil(ratio * full - 1e-9)))


def factor_shape(
    module: nn.Module, rank: int | None = None, rank_ratio: float | None = None, method: str = "auto"
) -> FactorShape:
    """The method and ranks a plan's entry gives ``module`` (``auto`` resolved; ranks clamped to the full rank).

    Raises:
        PlanError: The module cannot be factorized, or the method does not fit it (Tucker-2 of a Linear).
    """
    why = why_not_factorizable(module)
    if why is not None:
        raise PlanError(f"cannot factorize {why}")
    if method not in METHODS:
        raise PlanError(f"unknown factorization method {method!r}; known: {', '.join(METHODS)}")
    out, inp, kk = _dims(module)
    return shape_for(isinstance(module, nn.Linear), out, inp, kk, rank, rank_ratio, method)


def shape_for(
    linear: bool, out: int, inp: int, kk: int, rank: int | None, rank_ratio: float | None, method: str
) -> FactorShape:
    """:func:`factor_shape` from a layer's kind and sizes: ``out`` and ``inp`` channels, ``kk`` kernel elements
    (what the resource predictor knows of a pruned layer without building it)."""
    if method == "tucker2" and (linear or kk == 1):
        raise PlanError("method 'tucker2' decomposes a k×k convolution; use 'svd' (or 'auto') for this layer")

    def svd() -> FactorShape:
        full = min(out, inp * kk)
        r = min(full, int(rank)) if rank is not None else _ratio_rank(float(rank_ratio), full)
        return FactorShape("svd", (max(1, r),))

    def tucker() -> FactorShape:
        if rank is not None:
            return FactorShape("tucker2", (max(1, min(inp, int(rank))), max(1, min(out, int(rank)))))
        return FactorShape("tucker2", (_ratio_rank(float(rank_ratio), inp), _ratio_rank(float(rank_ratio), out)))

    if method == "svd" or linear or kk == 1:
        return svd()
    if method == "tucker2":
        return tucker()
    a, b = svd(), tucker()
    return a if macs_for(out, inp, kk, a) <= macs_for(out, inp, kk, b) else b


def factorized_macs(module: nn.Module, shape: FactorShape) -> int:
    """MACs per output position (Linear: per sample) of ``module`` factorized as ``shape``."""
    return macs_for(*_dims(module), shape)


def factor_sizes(out: int, inp: int, kk: int, shape: FactorShape) -> list[tuple[int, int]]:
    """``(weight elements, output channels)`` of each factor of a layer of those sizes factorized as ``shape``."""
    if shape.method == "svd":
        (r,) = shape.ranks
        return [(r * inp * kk, r), (out * r, out)]
    r_in, r_out = shape.ranks
    return [(r_in * inp, r_in), (r_out * r_in * kk, r_out), (out * r_out, out)]


def macs_for(out: int, inp: int, kk: int, shape: FactorShape) -> int:
    """MACs per output position of a layer of those sizes factorized as ``shape`` (the sum of its factors')."""
    if shape.method == "svd":
        (r,) = shape.ranks
        return r * (inp * kk + out)
    r_in, r_out = shape.ranks
    return inp * r_in + r_in * r_out * kk + r_out * out


def _svd(weight: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, B)`` with ``B @ A`` the best rank-``r`` approximation of the 2-D ``weight`` (``A``: r×n, ``B``: m×r)."""
    u, s, vh = torch.linalg.svd(weight.detach().to(torch.float64), full_matrices=False)
    root = s[:r].sqrt()
    return (root[:, None] * vh[:r]).to(weight.dtype), (u[:, :r] * root[None, :]).to(weight.dtype)


def _leading(matrix: torch.Tensor, r: int) -> torch.Tensor:
    """The ``r`` leading left singular vectors of ``matrix`` (columns)."""
    u, _, _ = torch.linalg.svd(matrix.to(torch.float64), full_matrices=False)
    return u[:, :r]


def factorize_layer(
    module: nn.Module, rank: int | None = None, rank_ratio: float | None = None, method: str = "auto"
) -> Factorized:
    """``module`` factorized (see the module docstring); the factors are on its device and dtype, and the
    module itself is left alone.

    Give ``rank`` or ``rank_ratio``.

    Raises:
        PlanError: Neither or both of ``rank`` and ``rank_ratio``, a rank below 1 or a ratio outside (0, 1], a
            module that cannot be factorized or a method that does not fit it.
    """
    if (rank is None) == (rank_ratio is None):
        raise PlanError("give one of rank and rank_ratio")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise PlanError(f"rank must be an integer >= 1, got {rank!r}")
    if rank_ratio is not None and (
        isinstance(rank_ratio, bool) or not isinstance(rank_ratio, (int, float)) or not 0 < rank_ratio <= 1
    ):
        raise PlanError(f"rank_ratio must be in (0, 1], got {rank_ratio!r}")
    shape = factor_shape(module, rank, rank_ratio, method)
    weight = module.weight.detach()
    bias = module.bias.detach() if module.bias is not None else None
    out, inp, kk = _dims(module)
    kw = {"device": weight.device, "dtype": weight.dtype}
    with torch.no_grad():
        if isinstance(module, nn.Linear):
            (r,) = shape.ranks
            a, b = _svd(weight, r)
            first = nn.Linear(inp, r, bias=False, **kw)
            second = nn.Linear(r, out, bias=bias is not None, **kw)
            first.weight.copy_(a)
            second.weight.copy_(b)
            if bias is not None:
                second.bias.copy_(bias)
            factors: tuple[nn.Module, ...] = (first, second)
        elif shape.method == "svd":
            (r,) = shape.ranks
            a, b = _svd(weight.reshape(out, inp * kk), r)
            first = nn.Conv2d(
                inp,
                r,
                module.kernel_size,
                module.stride,
                module.padding,
                module.dilation,
                bias=False,
                **kw,
            )
            second = nn.Conv2d(r, out, 1, bias=bias is not None, **kw)
            first.weight.copy_(a.reshape(r, inp, *module.kernel_size))
            second.weight.copy_(b.reshape(out, r, 1, 1))
            if bias is not None:
                second.bias.copy_(bias)
            factors = (first, second)
        else:
            r_in, r_out = shape.ranks
            w = weight.to(torch.float64)
            u_out = _leading(w.reshape(out, -1), r_out)  # out × r_out
            u_in = _leading(w.transpose(0, 1).reshape(inp, -1), r_in)  # in × r_in
            core = torch.einsum("oihw,or,is->rshw", w, u_out, u_in)  # r_out × r_in × k × k
            first = nn.Conv2d(inp, r_in, 1, bias=False, **kw)
            middle = nn.Conv2d(
                r_in,
                r_out,
                module.kernel_size,
                module.stride,
                module.padding,
                module.dilation,
                bias=False,
                **kw,
            )
            last = nn.Conv2d(r_out, out, 1, bias=bias is not None, **kw)
            first.weight.copy_(u_in.t().reshape(r_in, inp, 1, 1).to(weight.dtype))
            middle.weight.copy_(core.to(weight.dtype))
            last.weight.copy_(u_out.reshape(out, r_out, 1, 1).to(weight.dtype))
            if bias is not None:
                last.bias.copy_(bias)
            factors = (first, middle, last)
    result = Factorized(*factors, method=shape.method, ranks=shape.ranks)
    result.train(module.training)
    for p in result.parameters():
        p.requires_grad_(module.weight.requires_grad)
    return result


def factorize(model: nn.Module, specs: Mapping[str, Any]) -> dict[str, FactorShape]:
    """Replace each named layer of ``model`` (in place) by its factors; ``specs`` maps a layer name to a
    :class:`~slimtune.compressors.plan.FactorSpec` (or anything with ``rank``, ``rank_ratio`` and ``method``).

    Returns:
        ``{layer: FactorShape}`` of the layers factorized.

    Raises:
        PlanError: Naming the layer: not a submodule, not factorizable (and why), a bad rank.
    """
    shapes = {}
    modules = dict(model.named_modules())
    for name, spec in specs.items():
        module = modules.get(name)
        if module is None or name == "":
            raise PlanError(f"plan.factorize: {name!r} is not a layer of the model", field="plan.factorize")
        try:
            new = factorize_layer(module, spec.rank, spec.rank_ratio, spec.method)
        except PlanError as e:
            raise PlanError(f"plan.factorize[{name!r}]: {e}", field="plan.factorize") from None
        owner, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(owner) if owner else model, leaf, new)
        shapes[name] = FactorShape(new.method, new.ranks)
    return shapes


def energy_rank_ratios(
    model: nn.Module, energy: float = 0.95, layers: list[str] | None = None, choices: tuple[float, ...] | None = None
) -> dict[str, float]:
    """Per layer, the smallest rank ratio whose leading singular values keep ``energy`` of the squared
    singular values (the Frobenius norm) of the weight reshaped to ``(out, in·k·k)``.

    With ``choices``, the smallest choice at or above that ratio (the largest choice when none is). A seed for a
    rank search: layers with a flat spectrum keep more, layers with a few dominant directions less.

    Example:
        >>> from torch import nn
        >>> layer = nn.Linear(64, 64)
        >>> with torch.no_grad():
        ...     _ = layer.weight.copy_(torch.outer(torch.randn(64), torch.randn(64)))  # rank 1
        >>> energy_rank_ratios(nn.Sequential(layer), 0.95)
        {'0': 0.015625}
    """
    if not 0 < energy <= 1:
        raise PlanError(f"energy must be in (0, 1], got {energy!r}")
    names = layers if layers is not None else factorizable_layers(model)
    out = {}
    for name in names:
        module = model.get_submodule(name)
        o, i, kk = _dims(module)
        s = torch.linalg.svdvals(module.weight.detach().reshape(o, i * kk).to(torch.float64))
        cum = torch.cumsum(s**2, 0) / (s**2).sum().clamp_min(1e-300)
        r = int(torch.searchsorted(cum, torch.tensor(energy - 1e-12, dtype=cum.dtype)).item()) + 1
        ratio = min(r, len(s)) / len(s)
        if choices:
            fits = [c for c in sorted(choices) if c >= ratio - 1e-12]
            ratio = fits[0] if fits else max(choices)
        out[name] = ratio
    return out
