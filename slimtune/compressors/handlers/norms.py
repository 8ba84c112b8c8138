"""Normalisation layers: batch / instance norms, layer norms (``nn.LayerNorm``, ``nn.RMSNorm`` and the
RMS norms of model zoos such as Llama's or T5's), group norms.

Channel flow: a norm passes its input's channels through and holds them in its affine parameters
(role ``norm``). A batch norm works per channel, so zeroing a channel's scale and shift is enough
for the masked model. A layer norm, an RMS norm and a group norm compute statistics *over* the
channels: the smaller model normalises over the kept ones only, so the masked model runs them on
their kept channels too (a forward hook, :meth:`NormHandler.masked_forward`); the masked model
then computes exactly what the smaller one does. A group norm must lose the same number of
channels in each of its groups. A layer norm over several trailing dims (``LayerNorm([C, H, W])``)
mixes the channels with the other dims and pins them.

Example:
    >>> import torch
    >>> from slimtune.compressors import CompressionPlan, compress, trace
    >>> net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 2))
    >>> x = torch.randn(4, 8)
    >>> plan = CompressionPlan.uniform(trace(net, x), 0.5)
    >>> masked, small = compress(net, plan, x, speedup=False), compress(net, plan, x)
    >>> small[1].normalized_shape, bool(torch.allclose(masked(x), small(x), atol=1e-5))
    ((8,), True)
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from slimtune.compressors._values import Chan
from slimtune.compressors.handlers._base import Axis, LayerHandler, keep_indices, register_handler

if TYPE_CHECKING:
    from slimtune.compressors._propagate import Propagation
    from slimtune.compressors._values import LayerCall


class KeptChannels:
    """Forward hook: the layer's output recomputed on its kept channels, zero on the others.

    Args:
        keep: Kept positions along ``dim``.
        dim: The channel dim of the layer's input and output.
        set_count: ``set_count(module, n)`` updates the attributes the forward reads.
    """

    def __init__(self, keep: torch.Tensor, dim: int, set_count: Callable[[nn.Module, int], None]) -> None:
        self.keep = keep.long()
        self.dim = dim
        self.set_count = set_count
        self._on: dict[torch.device, torch.Tensor] = {}  # ``keep`` on each device met (one copy each)

    def __call__(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        x = args[0]
        if not isinstance(output, torch.Tensor) or not isinstance(x, torch.Tensor):
            return None
        dim = self.dim % x.ndim
        on: dict[torch.device, torch.Tensor] = self.__dict__.setdefault("_on", {})  # hooks pickled before it
        keep = on.get(x.device)
        if keep is None:
            keep = on[x.device] = self.keep.to(x.device)
        n = x.shape[dim]
        clone = copy.copy(module)
        clone._parameters = dict(module._parameters)
        clone._buffers = dict(module._buffers)
        clone._forward_hooks, clone._forward_pre_hooks = {}, {}  # type: ignore[assignment]
        for name in list(module._parameters) + list(module._buffers) + ["weight", "bias"]:
            t = getattr(module, name, None)
            if not isinstance(t, torch.Tensor) or t.ndim != 1 or t.shape[0] != n or name.endswith("_orig"):
                continue
            kept = t.index_select(0, keep)
            if name in clone._parameters:
                clone._parameters[name] = kept  # type: ignore[assignment]
            elif name in clone._buffers:
                clone._buffers[name] = kept
            else:
                clone.__dict__[name] = kept
        self.set_count(clone, len(keep))
        y = type(module).forward(clone, x.index_select(dim, keep))
        return torch.zeros_like(output).index_copy(dim, keep, y)


def _dim1_input(p: Propagation, call: LayerCall, size: int, what: str) -> Chan | None:
    """The call's input channels when they are on dim 1 with ``size`` entries; pinned otherwise."""
    x = call.first_chan()
    if x is not None and (x.cdim != 1 or len(x.labels) != size):
        p.pin(x.labels, f"{what} {call.name!r} sees channels on an unexpected dim")
        return None
    return x


def remove_kept_hooks(module: nn.Module) -> None:
    """Remove the :class:`KeptChannels` hooks of ``module`` (once it is physically resized)."""
    for key, hook in list(module._forward_hooks.items()):
        if isinstance(hook, KeptChannels):
            del module._forward_hooks[key]


class BatchNormHandler(LayerHandler):
    name = "batchnorm"
    kind = "norm"
    types = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)
    roles = ("norm",)

    def propagate(self, p: Propagation, call: LayerCall) -> Any:
        m, name = call.module, call.name
        x = _dim1_input(p, call, m.num_features, "norm")
        if x is None:
            return None
        if getattr(m, "affine", False) or getattr(m, "track_running_stats", False):
            p.member(name, "norm", x.labels)
        chan = Chan(x.labels, 1, x.ndim)
        p.tap(call.node, chan, activation=False)
        return chan

    def producer(self, role: str) -> bool:
        return False

    def axes(self, module: nn.Module, role: str) -> list[Axis]:
        if role != "norm":
            return []
        return [
            Axis("weight", 0),
            Axis("bias", 0, score=False),
            Axis("running_mean", 0, score=False),
            Axis("running_var", 0, score=False),
        ]

    def resize(self, module: nn.Module, removed: Any, cache: dict[int, torch.Tensor]) -> None:
        n = module.num_features
        super().resize(module, removed, cache)
        module.num_features = n - len(removed.get("norm", ()))

    def macs(self, module: nn.Module, x: torch.Tensor | None, y: torch.Tensor | None) -> tuple[float, float]:
        return 0.0, float(y.numel()) if y is not None else 0.0


_NORM_NAME = re.compile(r"(RMS|Layer|Rms)Norm", re.IGNORECASE)
_WIDTH_ATTRS = ("hidden_size", "dim", "d_model", "num_features", "normalized_dim")


class NormHandler(LayerHandler):
    """Norms over the last dim: ``nn.LayerNorm``, ``nn.RMSNorm`` and zoo RMS/layer norms (by name)."""

    name = "layernorm"
    kind = "norm"
    types = (nn.LayerNorm, nn.RMSNorm)
    roles = ("norm",)
    channel_dim = -1

    def matches(self, module: nn.Module) -> bool:
        if isinstance(module, self.types):
            return True
        # a zoo norm (LlamaRMSNorm, T5LayerNorm ...): by name, with one 1-D weight (and bias) only
        if not _NORM_NAME.search(type(module).__name__) or any(True for _ in module.children()):
            return False
        params = dict(module.named_parameters(recurse=False))
        w = params.get("weight")
        return w is not None and w.ndim == 1 and set(params) <= {"weight", "bias"}

    def width(self, module: nn.Module) -> int | None:
        shape = getattr(module, "normalized_shape", None)
        if shape is not None:
            shape = tuple(shape) if isinstance(shape, (tuple, list, torch.Size)) else (int(shape),)
            return int(shape[0]) if len(shape) == 1 else None
        w = getattr(module, "weight", None)
        return int(w.shape[0]) if isinstance(w, torch.Tensor) else None

    def propagate(self, p: Propagation, call: LayerCall) -> Any:
        m, name = call.module, call.name
        x = call.first_chan()
        if x is None:
            return None
        n = self.width(m)
        if n is None:
            p.pin(
                x.labels,
                f"{type(m).__name__} {name!r} normalises over {tuple(m.normalized_shape)}: the channels "
                "together with other dims",
            )
            return None
        if x.cdim != x.ndim - 1 or len(x.labels) != n:
            p.pin(
                x.labels, f"{type(m).__name__} {name!r} normalises over the last dim, which does not hold the channels"
            )
            return None
        p.member(name, "norm", x.labels)
        chan = Chan(x.labels, x.cdim, x.ndim)
        p.tap(call.node, chan, activation=False)
        return chan

    def producer(self, role: str) -> bool:
        return False

    def axes(self, module: nn.Module, role: str) -> list[Axis]:
        return [Axis("weight", 0), Axis("bias", 0, score=False)] if role == "norm" else []

    def role_size(self, module: nn.Module, role: str) -> int:
        return self.width(module) or 0

    def set_count(self, module: nn.Module, n: int) -> None:
        old = self.width(module)
        if hasattr(module, "normalized_shape"):
            ns = module.normalized_shape
            module.normalized_shape = (n,) if isinstance(ns, (tuple, list, torch.Size)) else n
        for attr in _WIDTH_ATTRS:
            val = module.__dict__.get(attr)
            if isinstance(val, int) and not isinstance(val, bool) and val == old:
                module.__dict__[attr] = n

    def resize(self, module: nn.Module, removed: Any, cache: dict[int, torch.Tensor]) -> None:
        n = self.width(module) or 0
        super().resize(module, removed, cache)
        self.set_count(module, n - len(removed.get("norm", ())))
        remove_kept_hooks(module)

    def masked_forward(self, module: nn.Module, role: str, removed: torch.Tensor) -> Callable[..., Any] | None:
        """A :class:`KeptChannels` hook; masks applied again (gradual pruning) keep what both keep."""
        keep = keep_indices(self.width(module) or 0, removed)
        for old in [h for h in module._forward_hooks.values() if isinstance(h, KeptChannels)]:
            keep = keep[torch.isin(keep, old.keep)]
        remove_kept_hooks(module)
        return KeptChannels(keep, self.channel_dim, self.set_count)

    def macs(self, module: nn.Module, x: torch.Tensor | None, y: torch.Tensor | None) -> tuple[float, float]:
        return 0.0, float(y.numel()) if y is not None else 0.0


class GroupNormHandler(NormHandler):
    name = "groupnorm"
    types = (nn.GroupNorm,)
    channel_dim = 1

    def matches(self, module: nn.Module) -> bool:
        return isinstance(module, nn.GroupNorm)

    def width(self, module: nn.Module) -> int | None:
        return int(module.num_channels)

    def propagate(self, p: Propagation, call: LayerCall) -> Any:
        m, name = call.module, call.name
        x = _dim1_input(p, call, m.num_channels, "group norm")
        if x is None:
            return None
        p.member(name, "norm", x.labels)
        p.block(name, x.labels, m.num_groups)
        chan = Chan(x.labels, 1, x.ndim)
        p.tap(call.node, chan, activation=False)
        return chan

    def set_count(self, module: nn.Module, n: int) -> None:
        module.num_channels = n


register_handler(BatchNormHandler())
register_handler(NormHandler())
register_handler(GroupNormHandler())
