"""Convolutions: ``Conv1d/2d/3d`` (grouped and depthwise included, and subclasses that compute their
own padding and call ``F.conv*``) and ``ConvTranspose1d/2d/3d``.

Channel flow: a plain conv consumes its input channels (role ``in``, weight dim 1) and produces
fresh ones (role ``out``, weight dim 0 and bias). A depthwise conv (``groups == in_channels``, any
multiplier ``k``) passes channels through: output ``o`` comes from input ``o // k`` (role ``dw``).
A grouped conv with as many outputs as inputs passes channel ``i`` to output ``i`` and must lose
the same number of channels in every group (a block constraint); one with ``in != out`` consumes
and produces, each side in equal blocks. A transposed conv has its weight the other way round
(``[in, out / groups, *kernel]``); grouped transposed convs are not pruned (their reason says so).

Example:
    >>> import torch
    >>> from slimtune.compressors import trace
    >>> conv = torch.nn.Conv2d
    >>> net = torch.nn.Sequential(conv(3, 8, 3), conv(8, 8, 3, groups=8), conv(8, 4, 1))
    >>> g = trace(net, torch.randn(1, 3, 9, 9))
    >>> [(m.layer, m.role) for m in g.groups["0"].members]
    [('0', 'out'), ('1', 'dw'), ('2', 'in')]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from slimtune.compressors._values import Chan
from slimtune.compressors.handlers._base import Axis, LayerHandler, Removed, keep_indices, register_handler, set_tensor
from slimtune.errors import SlicingError

if TYPE_CHECKING:
    from slimtune.compressors._propagate import Propagation
    from slimtune.compressors._values import LayerCall


def _conv_input(p: Propagation, call: LayerCall, what: str) -> tuple[Chan | None, int, int]:
    """``(input channels or None, channel dim, ndim)`` of a conv call; channels elsewhere are pinned."""
    m = call.module
    ndim = len(call.out_shape) if call.out_shape else len(m.kernel_size) + 2
    cdim = ndim - 1 - len(m.kernel_size)
    x = call.first_chan()
    if x is not None and (x.cdim != cdim or len(x.labels) != m.in_channels):
        p.pin(x.labels, f"{what} {call.name!r} sees channels on an unexpected dim")
        x = None
    return x, cdim, ndim


def _per_group(keep: torch.Tensor, per: int, groups: int, what: str) -> list[torch.Tensor]:
    """Kept indices of each conv group, local to the group; every group must keep as many."""
    local = [keep[(keep >= b * per) & (keep < (b + 1) * per)] - b * per for b in range(groups)]
    if len({len(x) for x in local}) != 1:
        raise SlicingError(f"unequal {what} channels kept per group: {[len(x) for x in local]}")
    return local


class ConvHandler(LayerHandler):
    name = "conv"
    kind = "conv"
    types = (nn.modules.conv._ConvNd,)
    prunable_weights = True
    roles = ("out", "in", "dw")

    def matches(self, module: nn.Module) -> bool:
        return isinstance(module, nn.modules.conv._ConvNd) and not module.transposed

    def propagate(self, p: Propagation, call: LayerCall) -> Any:
        m, name = call.module, call.name
        x, cdim, ndim = _conv_input(p, call, "conv")
        g = m.groups
        if g > 1 and g == m.in_channels:
            if x is None:  # depthwise over a fixed input: its outputs are fixed too
                return None
            labels = np.repeat(x.labels, m.out_channels // m.in_channels)
            p.member(name, "dw", labels)
            chan = Chan(labels, cdim, ndim)
        elif g > 1 and m.in_channels == m.out_channels and x is not None:
            # grouped conv with as many outputs as inputs: channel i in, channel i out, pruned
            # by the same number in every group
            p.member(name, "dw", x.labels)
            p.block(name, x.labels, g)
            chan = Chan(x.labels, cdim, ndim)
        else:
            if x is not None:
                p.member(name, "in", x.labels)
                if g > 1:
                    p.block(name, x.labels, g)
            out = p.layer_source(name, m.out_channels)
            if g > 1:
                p.block(name, out, g)
            p.member(name, "out", out)
            chan = Chan(out, cdim, ndim)
        p.tap(call.node, chan, activation=False)
        return chan

    def axes(self, module: nn.Module, role: str) -> list[Axis]:
        if role in ("out", "dw"):
            return [Axis("weight", 0), Axis("bias", 0, score=False)]
        if role == "in":
            return [Axis("weight", 1)]
        return []

    def mask(
        self, module: nn.Module, role: str, positions: torch.Tensor, mask_of: Callable[[str], torch.Tensor | None]
    ) -> None:
        if role != "in" or module.groups == 1:
            return super().mask(module, role, positions, mask_of)
        # weight dim 1 holds the group's own inputs: input p feeds group p // per_in
        mask = mask_of("weight")
        per_in = module.in_channels // module.groups
        per_out = module.out_channels // module.groups
        for q in positions.tolist():
            b = q // per_in
            mask[b * per_out : (b + 1) * per_out, q - b * per_in] = False  # type: ignore[index]

    def resize(self, module: nn.Module, removed: Removed, cache: dict[int, torch.Tensor]) -> None:
        # the kept indices are worked out on the CPU (bookkeeping, no device sync), then index the
        # weights on their own device
        m = module
        w = m.weight.detach()

        def on(index: torch.Tensor) -> torch.Tensor:
            return index.to(w.device)

        if removed.get("dw") is not None:
            keep = keep_indices(m.out_channels, removed["dw"])
            g = m.groups
            if g == m.in_channels:  # depthwise, multiplier k
                k = m.out_channels // m.in_channels
                new_w = w[on(keep)]
                m.in_channels = len(keep) // k
                m.groups = m.in_channels
            else:  # grouped conv with in == out: same local channels kept inside every group
                per = m.in_channels // g
                blocks = _per_group(keep, per, g, "")
                new_w = torch.cat([w[on(b * per + local)][:, on(local)] for b, local in enumerate(blocks)], dim=0)
                m.in_channels = len(keep)
            m.out_channels = len(keep)
        else:
            keep_out = keep_indices(m.out_channels, removed.get("out"))
            keep_in = keep_indices(m.in_channels, removed.get("in"))
            if m.groups == 1:
                new_w = w[on(keep_out)][:, on(keep_in)]
            else:  # grouped conv: each group keeps its own outputs and its own (local) inputs
                g = m.groups
                per_out = m.out_channels // g
                outs = _per_group(keep_out, per_out, g, "output")
                ins = _per_group(keep_in, m.in_channels // g, g, "input")
                new_w = torch.cat([w[on(b * per_out + o)][:, on(i)] for b, (o, i) in enumerate(zip(outs, ins))])
            m.in_channels, m.out_channels = len(keep_in), len(keep_out)
            keep = keep_out
        set_tensor(m, "weight", new_w, cache)
        if m.bias is not None:
            set_tensor(m, "bias", m.bias.detach()[keep.to(m.bias.device)], cache)

    def macs(self, module: nn.Module, x: torch.Tensor | None, y: torch.Tensor | None) -> tuple[float, float]:
        if y is None:
            return 0.0, 0.0
        return float(y.numel() * (int(module.in_channels) // int(module.groups)) * math.prod(module.kernel_size)), 0.0

    def shapes_after(self, module: nn.Module, lost: Mapping[str, float]) -> dict[str, tuple[int, ...]]:
        cin, cout = self.counts_after(module, lost)
        w = module.weight
        ipg = 1 if (module.groups > 1 and module.groups == module.in_channels) else cin // module.groups
        shapes = {"weight": (cout, ipg, *w.shape[2:])}
        if module.bias is not None:
            shapes["bias"] = (cout,)
        return shapes

    def in_out(self, module: nn.Module) -> tuple[int, int]:
        return int(module.in_channels), int(module.out_channels)

    def counts_after(self, module: nn.Module, lost: Mapping[str, float]) -> tuple[int, int]:
        cin, cout = self.in_out(module)
        if lost.get("dw"):
            cout_new = cout - round(lost["dw"])
            return cout_new * cin // cout, cout_new
        return cin - round(lost.get("in", 0.0)), cout - round(lost.get("out", 0.0))

    def lut_spec(self, module: nn.Module, in_shape: tuple[int, ...]) -> Any:
        from slimtune.compressors.measures._layer_spec import LayerSpec

        return LayerSpec.of(module, in_shape)


class ConvTransposeHandler(LayerHandler):
    name = "conv_transpose"
    kind = "convT"
    types = (nn.modules.conv._ConvTransposeNd,)
    roles = ("out", "in")

    def propagate(self, p: Propagation, call: LayerCall) -> Any:
        m, name = call.module, call.name
        x, cdim, ndim = _conv_input(p, call, "transposed conv")
        if m.groups > 1:
            if x is not None:
                p.pin(x.labels, f"grouped transposed conv {name!r} ({m.groups} groups) is not pruned")
            return None
        if x is not None:
            p.member(name, "in", x.labels)
        out = p.layer_source(name, m.out_channels)
        p.member(name, "out", out)
        chan = Chan(out, cdim, ndim)
        p.tap(call.node, chan, activation=False)
        return chan

    def axes(self, module: nn.Module, role: str) -> list[Axis]:
        if role == "out":
            return [Axis("weight", 1), Axis("bias", 0, score=False)]
        if role == "in":
            return [Axis("weight", 0)]
        return []

    def update_attrs(self, module: nn.Module) -> None:
        module.in_channels = int(module.weight.shape[0])
        module.out_channels = int(module.weight.shape[1]) * module.groups

    def macs(self, module: nn.Module, x: torch.Tensor | None, y: torch.Tensor | None) -> tuple[float, float]:
        if x is None:
            return 0.0, 0.0
        return float(x.numel() * (int(module.out_channels) // int(module.groups)) * math.prod(module.kernel_size)), 0.0

    def in_out(self, module: nn.Module) -> tuple[int, int]:
        return int(module.in_channels), int(module.out_channels)


register_handler(ConvHandler())
register_handler(ConvTransposeHandler())
