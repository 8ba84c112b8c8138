"""``nn.Embedding``: a lookup table whose columns are the channels it produces.

Channel flow: the indices carry no channels; the output's last dim holds fresh channels (role
``out``: weight dim 1). A language model's hidden width starts here; a table tied to the output
projection (``lm_head.weight is embed.weight``) is sliced once and stays tied. Pruning keeps
``embedding_dim`` in step.

Example:
    >>> import torch
    >>> from slimtune.compressors import trace
    >>> class Bag(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.emb, self.fc = torch.nn.Embedding(10, 8), torch.nn.Linear(8, 2)
    ...     def forward(self, ids):
    ...         return self.fc(self.emb(ids).mean(1))
    >>> g = trace(Bag(), torch.randint(0, 10, (2, 5)))
    >>> [(m.layer, m.role) for m in g.groups["emb"].members]
    [('emb', 'out'), ('fc', 'in')]
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import nn

from slimtune.compressors._values import Chan
from slimtune.compressors.handlers._base import Axis, LayerHandler, register_handler

if TYPE_CHECKING:
    from slimtune.compressors._propagate import Propagation
    from slimtune.compressors._values import LayerCall


class EmbeddingHandler(LayerHandler):
    name = "embedding"
    kind = "embedding"
    types = (nn.Embedding,)
    roles = ("out",)

    def propagate(self, p: Propagation, call: LayerCall) -> Any:
        m = call.module
        ndim = len(call.out_shape) if call.out_shape else 2
        out = p.layer_source(call.name, int(m.embedding_dim))
        p.member(call.name, "out", out)
        chan = Chan(out, ndim - 1, ndim)
        p.tap(call.node, chan, activation=False)
        return chan

    def axes(self, module: nn.Module, role: str) -> list[Axis]:
        return [Axis("weight", 1)] if role == "out" else []

    def update_attrs(self, module: nn.Module) -> None:
        module.embedding_dim = int(module.weight.shape[1])


register_handler(EmbeddingHandler())
