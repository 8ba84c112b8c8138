"""Physical speedup: rebuild a channel-pruned model as smaller dense layers.

Every pruned channel is removed wherever it appears: output rows (and bias) of its producers,
entries of the batch-norms it passes, rows and group counts of depthwise / grouped convolutions,
and input columns of its consumers (a flatten → linear consumer loses the channel's whole block
of features; a consumer of a concatenation loses the channel's slice). The forward code of the
model is unchanged, so the smaller model computes what the masked model computes.

Example:
    >>> import torch
    >>> from slimtune.compressors import trace, CompressionPlan, compress, speedup
    >>> from slimtune.examples.models import resnet20
    >>> model, x = resnet20(), torch.randn(2, 3, 32, 32)
    >>> plan = CompressionPlan.uniform(trace(model, x), 0.5)
    >>> masked = compress(model, plan, x, speedup=False)
    >>> small = speedup(masked, x)
    >>> bool(torch.allclose(small.eval()(x), masked.eval()(x), atol=1e-4))
    True
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from slimtune.compressors.handlers import get_tensor, is_parameter, member_handler
from slimtune.compressors.pruning import clone_model, make_permanent
from slimtune.compressors.resize import apply_speedup, check_forward
from slimtune.errors import SpeedupError

if TYPE_CHECKING:
    from slimtune.compressors.graph import ModelGraph

__all__ = ["SpeedupError", "apply_speedup", "check_forward", "speedup"]


def speedup(
    model: nn.Module,
    example_inputs: torch.Tensor | tuple[torch.Tensor, ...],
    inplace: bool = False,
) -> nn.Module:
    """Rebuild a channel-masked model (from ``compress(..., speedup=False)``) as a smaller model.

    A channel counts as pruned when it is exactly zero in all its producers (weight rows and bias)
    and batch-norms (weight and bias): then it is zero everywhere, and removing it changes nothing.

    Args:
        model: The masked model. Not modified unless ``inplace``.
        example_inputs: Inputs with a batch dimension, used to trace the model.
        inplace: Modify ``model`` itself.

    Returns:
        The physically smaller model (masks folded into plain weights).
    """
    from slimtune.compressors.graph import trace

    model = model if inplace else clone_model(model)
    make_permanent(model)
    graph = trace(model, example_inputs, strict=True, check=False)
    pruned = _zero_channels(model, graph)
    apply_speedup(model, graph, pruned)
    check_forward(model, example_inputs)
    return model


def _zero_channels(model: nn.Module, graph: ModelGraph) -> dict[str, torch.Tensor]:
    pruned = {}
    for g in graph.prunable_groups():
        dead = torch.ones(g.size, dtype=torch.bool, device="cpu")
        seen = False
        for m in g.members:
            if m.role == "in":
                continue
            module = model.get_submodule(m.layer)
            handler = member_handler(module, m.role)
            for ax in handler.axes(module, m.role) if handler is not None else ():
                t = get_tensor(module, ax.tensor)
                if t is None or not is_parameter(module, ax.tensor):
                    continue
                seen = True
                idx = ax.indices(m.positions).to(t.device)
                rows = t.detach().movedim(ax.dim, 0)[idx].reshape(len(ax.offsets), len(m.positions), -1)
                nonzero = (rows.abs().sum(dim=(0, 2)) != 0).long().cpu()  # bookkeeping: on the CPU
                alive = torch.zeros(g.size, dtype=torch.long, device="cpu").index_add_(0, m.channels.long(), nonzero)
                dead &= alive == 0
        if not seen or not dead.any():
            continue
        per_block = g.size // g.blocks
        counts = dead.view(g.blocks, per_block).sum(dim=1)
        if (counts != counts[0]).any() or counts[0] >= per_block:
            raise SpeedupError(
                f"group {g.name!r}: zeroed channels {dead.nonzero().flatten().tolist()} do not leave "
                f"equal non-empty blocks of {per_block} (grouped conv constraint)"
            )
        pruned[g.name] = dead.nonzero().flatten()
    return pruned
