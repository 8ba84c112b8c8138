"""Fully connected layers: ``nn.Linear`` and Hugging Face's ``Conv1D`` (GPT-2's linear layer, weight
stored transposed as ``[in, out]``, output width in ``nf``).

Channel flow: the layer consumes the channels on its input's last dim (role ``in``) and produces
fresh ones on its output's last dim (role ``out``). Applied to a dim that does not hold the
channels, it pins them.

Example:
    >>> import torch
    >>> from slimtune.compressors import trace
    >>> mlp = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    >>> g = trace(mlp, torch.randn(4, 8))
    >>> [(m.layer, m.role) for m in g.groups["0"].members]
    [('0', 'out'), ('2', 'in')]
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from slimtune.compressors._values import Chan
from slimtune.compressors.handlers._base import Axis, LayerHandler, register_handler

if TYPE_CHECKING:
    from slimtune.compressors._propagate import Propagation
    from slimtune.compressors._values import LayerCall


class LinearHandler(LayerHandler):
    name = "linear"
    kind = "linear"
    types = (nn.Linear,)
    prunable_weights = True
    roles = ("out", "in")
    in_dim, out_dim = 1, 0  # weight dims holding the inputs / outputs

    def width(self, module: nn.Module) -> tuple[int, int]:
        return int(module.in_features), int(module.out_features)

    def propagate(self, p: Propagation, call: LayerCall) -> Any:
        name = call.name
        cin, cout = self.width(call.module)
        x = call.first_chan()
        ndim = len(call.out_shape) if call.out_shape else 2
        if x is not None and x.cdim == x.ndim - 1 and len(x.labels) == cin:
            p.member(name, "in", x.labels)
        elif x is not None:
            p.pin(x.labels, f"linear {name!r} is applied to a dim that does not hold the channels")
        out = p.layer_source(name, cout)
        p.member(name, "out", out)
        chan = Chan(out, ndim - 1, ndim)
        p.tap(call.node, chan, activation=False)
        return chan

    def axes(self, module: nn.Module, role: str) -> list[Axis]:
        if role == "out":
            return [Axis("weight", self.out_dim), Axis("bias", 0, score=False)]
        if role == "in":
            return [Axis("weight", self.in_dim)]
        return []

    def update_attrs(self, module: nn.Module) -> None:
        module.in_features, module.out_features = int(module.weight.shape[1]), int(module.weight.shape[0])

    def macs(self, module: nn.Module, x: torch.Tensor | None, y: torch.Tensor | None) -> tuple[float, float]:
        if y is None:
            return 0.0, 0.0
        return float(y.numel() * self.width(module)[0]), 0.0

    def in_out(self, module: nn.Module) -> tuple[int, int]:
        return self.width(module)

    def lut_spec(self, module: nn.Module, in_shape: tuple[int, ...]) -> Any:
        from slimtune.compressors.measures._layer_spec import LayerSpec

        return LayerSpec.of(module, in_shape)


class HFConv1DHandler(LinearHandler):
    """Hugging Face ``transformers.pytorch_utils.Conv1D`` (matched by name: no import of transformers)."""

    name = "hf_conv1d"
    types = ()
    in_dim, out_dim = 0, 1

    def matches(self, module: nn.Module) -> bool:
        return (
            type(module).__name__ == "Conv1D"
            and hasattr(module, "nf")
            and isinstance(getattr(module, "weight", None), torch.Tensor)
        )

    def width(self, module: nn.Module) -> tuple[int, int]:
        return int(module.weight.shape[0]), int(module.weight.shape[1])

    def update_attrs(self, module: nn.Module) -> None:
        module.nf = int(module.weight.shape[1])
        if hasattr(module, "nx"):
            module.nx = int(module.weight.shape[0])

    def lut_spec(self, module: nn.Module, in_shape: tuple[int, ...]) -> Any:
        from slimtune.compressors.measures._layer_spec import LayerSpec

        cin, cout = self.width(module)
        return LayerSpec("linear", cin, cout, in_shape, getattr(module, "bias", None) is not None)


register_handler(LinearHandler())
register_handler(HFConv1DHandler())
