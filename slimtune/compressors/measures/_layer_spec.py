"""The standalone copy of a layer the latency table measures (:class:`LayerSpec`): what layer handlers describe.

A leaf module (it imports no other part of slimtune), so that the layer handlers can describe their layers to
the latency table without depending on how, or in which runtime, the table measures them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["CONV_TYPES", "LayerSpec"]

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
