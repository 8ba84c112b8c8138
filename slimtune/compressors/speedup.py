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

from collections import defaultdict
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from slimtune.compressors.handlers import PARAM_HANDLER, get_tensor, handler_for, is_parameter, member_handler
from slimtune.compressors.pruning import clone_model, make_permanent, removed_positions
from slimtune.errors import SpeedupError

if TYPE_CHECKING:
    from slimtune.compressors.graph import ModelGraph


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
        dead = torch.ones(g.size, dtype=torch.bool)
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
                idx = ax.indices(m.positions)
                rows = t.detach().movedim(ax.dim, 0)[idx].reshape(len(ax.offsets), len(m.positions), -1)
                nonzero = (rows.abs().sum(dim=(0, 2)) != 0).long()
                alive = torch.zeros(g.size, dtype=torch.long).index_add_(0, m.channels, nonzero)
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


def apply_speedup(model: nn.Module, graph: ModelGraph, pruned: dict[str, torch.Tensor]) -> nn.Module:
    """Remove the ``pruned`` channels (``{group: channel ids}``) from ``model``'s layers in place.

    Each layer is resized by its handler (which also updates the attributes its forward reads);
    a tensor shared by several layers (tied embeddings) is sliced once and stays shared; the
    attributes the graph bound to channel counts (``num_heads``, split sizes) are set last.
    """
    removed = removed_positions(graph, pruned)
    by_layer: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
    for (layer, role), pos in removed.items():
        by_layer[layer][role] = pos
    cache: dict[int, torch.Tensor] = {}
    for layer, roles in by_layer.items():
        module = model.get_submodule(layer)
        own = {r: p for r, p in roles.items() if not r.startswith("param:")}
        try:
            if own:
                handler = handler_for(module)
                if handler is None:
                    raise SpeedupError(f"layer {layer!r} ({type(module).__name__}) cannot be resized: no handler knows it")
                handler.resize(module, own, cache)
            for role, pos in roles.items():
                if role.startswith("param:"):
                    PARAM_HANDLER.resize(module, {role: pos}, cache)
        except SpeedupError:
            raise
        except Exception as e:
            raise SpeedupError(f"layer {layer!r}: {type(e).__name__}: {e}") from e
    _set_bindings(model, graph, pruned)
    return model


def _set_bindings(model: nn.Module, graph: ModelGraph, pruned: dict[str, torch.Tensor]) -> None:
    for b in graph.bindings:
        lost = 0
        for group, pos, ch in b.parts:
            gone = pruned.get(group)
            if gone is not None and len(gone):
                lost += int(torch.isin(ch, gone).sum())
        if not lost:
            continue
        value = (b.total - lost) // b.unit
        module = model.get_submodule(b.layer)
        if b.index is None:
            setattr(module, b.attr, value)
            continue
        old = getattr(module, b.attr)
        new = list(old)
        new[b.index] = value
        setattr(module, b.attr, type(old)(new) if isinstance(old, tuple) else new)


def check_forward(model: nn.Module, example_inputs: Any) -> None:
    """Run the rebuilt model once; a failure names the problem instead of surfacing later."""
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(*inputs)
    except Exception as e:
        raise SpeedupError(
            f"the rebuilt model fails on the example inputs ({type(e).__name__}: {e}); "
            "the forward code may hard-code a channel count"
        ) from e
    finally:
        model.train(was_training)
