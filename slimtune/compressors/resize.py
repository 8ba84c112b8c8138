"""Resize a model's layers to drop pruned channels: the rebuild :func:`~slimtune.compressors.speedup.speedup`
and :func:`~slimtune.compressors.compress` perform once the channels are chosen.

Below :mod:`~slimtune.compressors.graph` (whose rebuild check uses it) and
:mod:`~slimtune.compressors.speedup` (which re-exports it and traces the model): it imports neither.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from slimtune.compressors._inputs import positional_inputs
from slimtune.compressors.handlers import PARAM_HANDLER, handler_for
from slimtune.compressors.pruning import removed_positions
from slimtune.errors import SpeedupError

if TYPE_CHECKING:
    from slimtune.compressors.graph import ModelGraph


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
                    raise SpeedupError(
                        f"layer {layer!r} ({type(module).__name__}) cannot be resized: no handler knows it"
                    )
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
        for group, _pos, ch in b.parts:
            gone = pruned.get(group)
            if gone is not None and len(gone):
                lost += int(torch.isin(ch, gone.to(ch.device)).sum())
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
    inputs = positional_inputs(model, example_inputs)
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
