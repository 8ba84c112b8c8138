"""Choosing channels to prune and applying masks (channel or unstructured).

Masks are applied with ``torch.nn.utils.prune`` (``weight_orig`` × ``weight_mask``), so they stay
in force during fine-tuning: pruned weights stay zero whatever the optimizer does. A channel-masked
model computes exactly what its physically smaller version (:func:`~slimtune.compressors.speedup`)
computes: the channel is zeroed in its producers, in the batch-norms it passes (weight and bias,
so the norm outputs zero) and in the inputs of its consumers.
"""

from __future__ import annotations

import copy
import math
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn
from torch.nn.utils import prune as torch_prune

from slimtune.compressors.criteria import CriterionContext, score_group
from slimtune.compressors.handlers import get_tensor, is_parameter, member_handler
from slimtune.errors import PlanError

if TYPE_CHECKING:
    from slimtune.compressors._types import Group
    from slimtune.compressors.graph import ModelGraph
    from slimtune.compressors.plan import CompressionPlan

PRODUCER_ROLES = ("out", "dw", "mha")
"""Roles of the members that produce a group's channels (a layer never loses its last one)."""

_UNSTRUCTURED_SCORES = {
    "level": lambda w: w.abs(),
    "l1": lambda w: w.abs(),
    "l2": lambda w: w.square(),
}


def select_channels(graph: ModelGraph, plan: CompressionPlan, ctx: CriterionContext) -> dict[str, torch.Tensor]:
    """The channels each group of ``plan`` loses: ``{group: sorted long tensor of channel ids}``.

    Each group loses :meth:`plan.n_prune(group) <slimtune.compressors.CompressionPlan.n_prune>`
    channels (``group.n_prune(sparsity)``, kept channels rounded to ``plan.channel_multiple``), the
    lowest-scoring by its criterion; with a block constraint (grouped convs) the same number is
    taken from each block. Groups a criterion reported on (``ctx.report``) get the channels ``pruned``
    and ``kept`` added to their entry.
    """
    pruned: dict[str, torch.Tensor] = {}
    for name, spec in plan.prune.items():
        group = graph.groups[name]
        n = plan.n_prune(group)
        if n == 0:
            continue
        scores = score_group(group, spec.criterion, ctx)
        pruned[name] = lowest_scores(group, scores, n)
        if name in ctx.report:  # the criterion reported on this group: record what was chosen
            gone = set(pruned[name].tolist())
            ctx.report[name].update(pruned=sorted(gone), kept=[c for c in range(group.size) if c not in gone])
    return pruned


def lowest_scores(group: Group, scores: torch.Tensor, n: int) -> torch.Tensor:
    """The ``n`` lowest-scoring channels, equally many per block, never emptying a layer.

    When the group's producers each hold only some of its channels (the pieces of a split, say),
    each part loses its share (:meth:`Group.allocate`), its lowest-scoring channels; a channel is
    also skipped when removing it would leave one of the producers with no output channel.
    """
    scores = scores.detach().cpu()  # ranking is bookkeeping: on the CPU, as the channel ids are
    holders: list[set[int]] = [set() for _ in range(group.size)]
    left: list[int] = []
    for m in group.members:
        if m.role in PRODUCER_ROLES:
            chans = torch.unique(m.channels).tolist()
            left.append(len(chans))
            for c in chans:
                holders[c].add(len(left) - 1)
    chosen: list[int] = []
    if len(group.parts) > 1 and group.blocks == 1:
        pools = [(p, k) for p, k in zip(group.parts, group.allocate(n))]
    else:
        per_block = group.size // group.blocks
        k = n // group.blocks
        pools = [(torch.arange(b * per_block, (b + 1) * per_block, device="cpu"), k) for b in range(group.blocks)]
    for pool, k in pools:
        order = pool[torch.argsort(scores[pool], stable=True)]
        taken = 0
        for c in order.tolist():
            if taken == k:
                break
            if any(left[h] <= 1 for h in holders[c]):
                continue
            for h in holders[c]:
                left[h] -= 1
            chosen.append(c)
            taken += 1
    return torch.tensor(sorted(chosen), dtype=torch.long, device="cpu")


def removed_positions(graph: ModelGraph, pruned: dict[str, torch.Tensor]) -> dict[tuple[str, str], torch.Tensor]:
    """``{(layer, role): positions}`` that the pruned channels occupy, over all groups."""
    acc: dict[tuple[str, str], list[torch.Tensor]] = defaultdict(list)
    for name, channels in pruned.items():
        group: Group = graph.groups[name]
        for m in group.members:
            pos = m.positions_of(channels)
            if len(pos):
                acc[(m.layer, m.role)].append(pos)
    return {k: torch.unique(torch.cat(v)) for k, v in acc.items()}


def apply_channel_masks(model: nn.Module, graph: ModelGraph, pruned: dict[str, torch.Tensor]) -> nn.Module:
    """Zero the pruned channels in place with persistent ``torch.nn.utils.prune`` masks.

    Each member's handler says which tensors hold its positions (:mod:`slimtune.compressors.handlers`);
    layers whose output depends on the number of channels (layer norms) also get a forward hook that
    computes them on their kept channels, so the masked model computes what the smaller one does.
    """
    masks: dict[tuple[str, str], torch.Tensor] = {}
    for (layer, role), pos in removed_positions(graph, pruned).items():
        module = model.get_submodule(layer)
        handler = member_handler(module, role)
        if handler is None:
            raise PlanError(f"layer {layer!r} ({type(module).__name__}) has no handler to mask its channels")

        def mask_of(path: str, layer: str = layer, module: nn.Module = module) -> torch.Tensor | None:
            t = get_tensor(module, path)
            if t is None or not is_parameter(module, path):
                return None  # buffers (running statistics) need no mask: the scale and shift zero the output
            key = (layer, path)
            if key not in masks:
                masks[key] = torch.ones_like(t, dtype=torch.bool)
            return masks[key]

        handler.mask(module, role, pos, mask_of)
        hook = handler.masked_forward(module, role, pos)
        if hook is not None:
            module.register_forward_hook(hook)
    nested: dict[str, list[str]] = defaultdict(list)
    for (layer, path), mask in masks.items():
        module = model.get_submodule(layer)
        owner, _, attr = path.rpartition(".")
        torch_prune.custom_from_mask(module.get_submodule(owner) if owner else module, attr, mask)
        if owner:
            nested[layer].append(path)
    for layer, paths in nested.items():
        # the layer reads a submodule's tensor directly (MultiheadAttention's out_proj.weight):
        # recompute the masked tensor before the layer runs, not only before the submodule does
        model.get_submodule(layer).register_forward_pre_hook(RecomputeMasked(paths))
    return model


class RecomputeMasked:
    """Forward pre-hook recomputing the masked tensors of submodules that the layer reads directly."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = list(paths)

    def __call__(self, module: nn.Module, args: Any) -> None:
        for path in self.paths:
            owner, _, attr = path.rpartition(".")
            sub = module.get_submodule(owner)
            for hook in sub._forward_pre_hooks.values():
                if isinstance(hook, torch_prune.BasePruningMethod) and hook._tensor_name == attr:
                    hook(sub, None)


def apply_unstructured_masks(model: nn.Module, plan: CompressionPlan) -> nn.Module:
    """Zero the lowest-scoring fraction of each listed layer's weights (persistent masks).

    Unstructured criteria score single weights: ``level`` and ``l1`` by |w|, ``l2`` by w².
    """
    for layer, spec in plan.prune.items():
        if spec.sparsity <= 0:
            continue
        score_fn = _UNSTRUCTURED_SCORES.get(spec.criterion)
        if score_fn is None:
            raise PlanError(
                f"layer {layer!r}: criterion {spec.criterion!r} scores channels, not single weights; "
                f"unstructured pruning supports {sorted(_UNSTRUCTURED_SCORES)}"
            )
        module = model.get_submodule(layer)
        weight = module.weight.detach()
        n = math.floor(spec.sparsity * weight.numel() + 0.5)
        if n == 0:
            continue
        scores = score_fn(weight).flatten()
        order = torch.argsort(scores, stable=True)
        mask = torch.ones(weight.numel(), dtype=torch.bool, device=weight.device)
        mask[order[:n]] = False
        torch_prune.custom_from_mask(module, "weight", mask.view_as(weight))
    return model


def make_permanent(model: nn.Module) -> nn.Module:
    """Fold every ``torch.nn.utils.prune`` mask into its weight (``weight_orig`` × mask → weight).

    Layers computing on their kept channels only (layer norms of a masked model) keep doing so.
    """
    for module in model.modules():
        for key, hook in list(module._forward_pre_hooks.items()):
            if isinstance(hook, RecomputeMasked):
                del module._forward_pre_hooks[key]
    for module in model.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, torch_prune.BasePruningMethod) and hasattr(module, hook._tensor_name + "_orig"):
                torch_prune.remove(module, hook._tensor_name)
    return model


def clone_model(model: nn.Module) -> nn.Module:
    """``copy.deepcopy`` that also works on models carrying ``torch.nn.utils.prune`` masks.

    A masked weight is a computed (non-leaf) tensor that deepcopy refuses; it is detached for the
    copy and recomputed from ``weight_orig`` × mask afterwards, in the original and in the copy.
    """

    def masked_hooks(m: nn.Module) -> list[tuple[nn.Module, torch_prune.BasePruningMethod]]:
        return [
            (sub, hook)
            for sub in m.modules()
            for hook in sub._forward_pre_hooks.values()
            if isinstance(hook, torch_prune.BasePruningMethod) and hasattr(sub, hook._tensor_name + "_orig")
        ]

    hooks = masked_hooks(model)
    for sub, hook in hooks:
        setattr(sub, hook._tensor_name, getattr(sub, hook._tensor_name).detach())
    try:
        clone = copy.deepcopy(model)
    finally:
        for sub, hook in hooks:
            hook(sub, None)
    for sub, hook in masked_hooks(clone):
        hook(sub, None)
    return clone
