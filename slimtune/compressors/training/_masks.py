"""Choosing and applying masks during training (shared by the training compressors).

A *selection* is what gets pruned: ``{group: channel ids}`` for channel plans, ``{layer: boolean keep-mask
of the weight}`` for unstructured plans. :func:`select` chooses one for any sparsities (not only the
plan's), keeping everything an earlier selection pruned (schedules only ever prune more);
:func:`set_masks` puts it in force with ``torch.nn.utils.prune`` masks; :func:`mask_tensors` gives the
masks as tensors without touching the model (ADMM's projection).

Unstructured keep-masks live on their weight's device; channel selections are channel ids on the CPU
(bookkeeping, like the criteria's scores).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from slimtune.compressors.criteria import CriterionContext, score_group
from slimtune.compressors.pruning import apply_channel_masks, clone_model, lowest_scores, make_permanent
from slimtune.errors import PlanError

if TYPE_CHECKING:
    from slimtune.compressors.graph import ModelGraph
    from slimtune.compressors.plan import CompressionPlan

Selection = dict[str, torch.Tensor]


def select(
    model: nn.Module,
    graph: ModelGraph,
    plan: CompressionPlan,
    sparsities: Mapping[str, float],
    previous: Selection | None = None,
    data: Iterable[Any] | None = None,
    loss_fn: Any = None,
) -> Selection:
    """What to prune at ``sparsities`` (group or layer → sparsity), scored on ``model``'s current weights by
    the plan's criteria; whatever ``previous`` pruned stays pruned."""
    previous = previous or {}
    out: Selection = {}
    if plan.granularity == "unstructured":
        for layer, s in sparsities.items():
            weight = model.get_submodule(layer).weight.detach()
            crit = plan.prune[layer].criterion
            if crit not in ("level", "l1", "l2"):
                raise PlanError(f"layer {layer!r}: criterion {crit!r} scores channels, not single weights")
            scores = (weight.square() if crit == "l2" else weight.abs()).flatten().clone()
            if layer in previous:
                scores[~previous[layer].flatten()] = -math.inf
            n = math.floor(s * weight.numel() + 0.5)
            keep = torch.ones(weight.numel(), dtype=torch.bool, device=weight.device)
            keep[torch.argsort(scores, stable=True)[:n]] = False
            out[layer] = keep.view_as(weight)
        return out
    ctx = CriterionContext(model, graph, data, loss_fn)
    for name, s in sparsities.items():
        group = graph.groups[name]
        n = group.n_prune(s)
        if n == 0:
            continue
        scores = score_group(group, plan.prune[name].criterion, ctx).clone()
        if name in previous and len(previous[name]):
            scores[previous[name]] = -math.inf
        out[name] = lowest_scores(group, scores, n)
    return out


def set_masks(model: nn.Module, graph: ModelGraph, plan: CompressionPlan, selection: Selection) -> nn.Module:
    """Fold any masks into the weights, then mask ``selection`` (persistent ``torch.nn.utils.prune`` masks).

    Parameters stay the same objects, so an optimizer holding them keeps working.
    """
    from torch.nn.utils import prune as torch_prune

    make_permanent(model)
    if plan.granularity == "unstructured":
        for layer, keep in selection.items():
            torch_prune.custom_from_mask(model.get_submodule(layer), "weight", keep)
    else:
        apply_channel_masks(model, graph, selection)
    return model


def mask_tensors(
    model: nn.Module, graph: ModelGraph, plan: CompressionPlan, selection: Selection
) -> dict[tuple[str, str], torch.Tensor]:
    """``{(layer, parameter name): keep-mask}`` that :func:`set_masks` would apply (the model is untouched)."""
    if plan.granularity == "unstructured":
        return {(layer, "weight"): keep for layer, keep in selection.items()}
    probe = clone_model(model)
    make_permanent(probe)
    apply_channel_masks(probe, graph, selection)
    out = {}
    for name, module in probe.named_modules():
        for pname in ("weight", "bias"):
            mask = getattr(module, pname + "_mask", None)
            if isinstance(mask, torch.Tensor):
                out[(name, pname)] = mask.bool()
    return out


def scaled(plan: CompressionPlan, fraction: float) -> dict[str, float]:
    """Every target of the plan times ``fraction`` (in [0, 1])."""
    return {name: spec.sparsity * fraction for name, spec in plan.prune.items()}


def prepare(
    model: nn.Module, plan: CompressionPlan, example_inputs: Any, graph: ModelGraph | None
) -> tuple[nn.Module, ModelGraph]:
    """A trainable copy of ``model`` and its graph (traced unless given), with ``plan`` checked against it."""
    from slimtune.compressors.graph import trace

    work = make_permanent(clone_model(model))
    graph = graph if graph is not None else trace(work, example_inputs)
    plan.validate(graph)
    return work, graph
