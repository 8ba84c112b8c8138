"""``nn.MultiheadAttention`` (and the encoder/decoder layers of ``nn.Transformer*`` that use it).

``nn.MultiheadAttention`` derives its head size from its input width (``head_dim = embed_dim //
num_heads``) and projects the input to q, k and v of that same width. Its input width, its heads
and its output width are therefore one dimension: pruning it removes whole heads, i.e. blocks of
``head_dim`` consecutive input channels, from the input (``in_proj`` columns), from q, k and v
(``in_proj`` rows, at offsets 0, E and 2E), and from the output (``out_proj`` rows and columns).
The head size, and so the attention's scale, stays the same, which keeps the smaller model exact;
``embed_dim`` and ``num_heads`` are updated. Role: ``mha``.

Example:
    >>> import torch
    >>> from slimtune.compressors import trace
    >>> layer = torch.nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
    >>> net = torch.nn.Sequential(torch.nn.Linear(8, 16), layer, torch.nn.Linear(16, 2))
    >>> g = trace(net, torch.randn(2, 5, 8))
    >>> hidden = g.groups["0"]  # the residual stream: 4 heads of 4 channels
    >>> g.frontend, hidden.size, sorted({m.role for m in hidden.members})
    ('export', 4, ['in', 'mha', 'norm', 'out'])
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from slimtune.compressors._values import Chan
from slimtune.compressors.handlers._base import Axis, LayerHandler, register_handler

if TYPE_CHECKING:
    from slimtune.compressors._propagate import Propagation
    from slimtune.compressors._values import LayerCall


class MultiheadAttentionHandler(LayerHandler):
    name = "multihead_attention"
    kind = "attention"
    types = (nn.MultiheadAttention,)
    roles = ("mha",)

    def propagate(self, p: Propagation, call: LayerCall) -> Any:
        m, name = call.module, call.name
        e, hd = int(m.embed_dim), int(m.head_dim)
        tracked = [v for v in call.inputs if isinstance(v, Chan)]
        qkv = [v for v in tracked if v.cdim == v.ndim - 1 and len(v.labels) == e]
        n_out = max(call.n_outputs, 2)
        if not m._qkv_same_embed_dim:
            p.pin_value(tracked, f"multi-head attention {name!r} with kdim/vdim different from embed_dim is not pruned")
            return [None] * n_out
        if (
            len(qkv) != len(tracked)
            or not qkv
            or len(qkv) < sum(1 for v in call.inputs if v is not None and isinstance(v, Chan))
        ):
            p.pin_value(tracked, f"multi-head attention {name!r} gets tensors whose last dim is not its embed_dim")
            return [None] * n_out
        x = qkv[0]
        for other in qkv[1:]:
            p.union(x.labels, other.labels)
        fixed = [
            s for v, s in zip(call.inputs, call.in_shapes) if v is None and s is not None and len(s) and s[-1] == e
        ]
        if fixed:  # key/value from a fixed tensor (model input): its width cannot change
            p.pin(x.labels, f"multi-head attention {name!r} attends to a fixed tensor of width {e}")
        for h in range(m.num_heads):
            p.union_all(x.labels[h * hd : (h + 1) * hd])  # a head goes whole
        p.member(name, "mha", x.labels)
        out = Chan(x.labels, x.cdim, x.ndim)
        p.tap(call.node, out, activation=False)
        return [out] + [None] * (n_out - 1)

    def producer(self, role: str) -> bool:
        return True

    def axes(self, module: nn.Module, role: str) -> list[Axis]:
        if role != "mha":
            return []
        e = int(module.embed_dim)
        three = (0, e, 2 * e)
        return [
            Axis("in_proj_weight", 0, three),
            Axis("in_proj_weight", 1, score=False),
            Axis("in_proj_bias", 0, three, score=False),
            Axis("out_proj.weight", 0, score=False),
            Axis("out_proj.weight", 1, score=False),
            Axis("out_proj.bias", 0, score=False),
            Axis("bias_k", 2, score=False),
            Axis("bias_v", 2, score=False),
        ]

    def role_size(self, module: nn.Module, role: str) -> int:
        return int(module.embed_dim)

    def update_attrs(self, module: nn.Module) -> None:
        e = int(module.in_proj_weight.shape[1])
        module.embed_dim = module.kdim = module.vdim = e
        module.num_heads = e // module.head_dim
        module.out_proj.in_features = module.out_proj.out_features = e

    def macs(self, module: nn.Module, x: torch.Tensor | None, y: torch.Tensor | None) -> tuple[float, float]:
        if x is None:
            return 0.0, 0.0
        e = int(module.embed_dim)
        tokens = x.numel() // e
        seq = x.shape[1] if module.batch_first and x.ndim == 3 else x.shape[0]
        return float(tokens * 4 * e * e + tokens * seq * 2 * e), float(tokens * seq * module.num_heads)

    def mac_ratio(self, module: nn.Module, lost: Mapping[str, float], in_shape: tuple[int, ...] | None = None) -> float:
        e = int(module.embed_dim)
        e2 = e - round(lost.get("mha", 0.0))
        seq = 1
        if in_shape is not None and len(in_shape) == 3:
            seq = in_shape[1] if module.batch_first else in_shape[0]
        return (4 * e2 * e2 + 2 * seq * e2) / (4 * e * e + 2 * seq * e)


register_handler(MultiheadAttentionHandler())
