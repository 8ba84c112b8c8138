"""``compress``: apply a :class:`CompressionPlan` to a copy of a model."""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import torch
import torch.nn as nn

from slimtune.compressors.criteria import CriterionContext
from slimtune.compressors.graph import ModelGraph, trace
from slimtune.compressors.plan import CompressionPlan
from slimtune.compressors.pruning import (
    apply_channel_masks,
    apply_unstructured_masks,
    clone_model,
    make_permanent,
    select_channels,
)
from slimtune.compressors.speedup import apply_speedup, check_forward
from slimtune.errors import PlanError


def compress(
    model: nn.Module,
    plan: CompressionPlan | Mapping[str, Any],
    example_inputs: torch.Tensor | tuple[torch.Tensor, ...],
    speedup: bool = True,
    data: Iterable[Any] | None = None,
    loss_fn: Callable[..., torch.Tensor] | None = None,
    max_batches: int | None = None,
    graph: ModelGraph | None = None,
) -> nn.Module:
    """Return a compressed copy of ``model``; the model itself is never modified.

    Args:
        model: The trained model.
        plan: A :class:`CompressionPlan` (or its dict form).
        example_inputs: Inputs with a batch dimension (a tensor or a tuple of tensors).
        speedup: With channel granularity, rebuild the model physically smaller (True) or keep
            its shapes and mask the pruned channels to zero (False). Unstructured plans always
            give a masked model (``torch.nn.utils.prune`` masks, kept in force during training).
        data: Batches for data-driven criteria (``taylor`` needs ``(inputs, targets)``;
            ``apoz`` and ``mean_activation`` need inputs).
        loss_fn: Loss for ``taylor`` (default cross-entropy).
        max_batches: Use at most this many batches of ``data``.
        graph: ``trace(model, example_inputs)`` when already at hand (a search traces once and
            compresses many times); groups refer to layers by name, so it serves every copy.

    Returns:
        The compressed model, in the training mode of ``model``.

    Example:
        >>> import torch
        >>> from slimtune.compressors import CompressionPlan, compress, trace, measure
        >>> from slimtune.examples.models import vgg_small
        >>> model, x = vgg_small(), torch.randn(1, 3, 32, 32)
        >>> small = compress(model, CompressionPlan.uniform(trace(model, x), 0.5), x)
        >>> measure(small, x, latency=False).flops < 0.5 * measure(model, x, latency=False).flops
        True
    """
    if not isinstance(plan, CompressionPlan):
        plan = CompressionPlan.from_dict(plan)
    if plan.quantize:
        raise PlanError(
            f"plan.quantize lists {len(plan.quantize)} layer(s), but quantization is not part of this "
            "version of slimtune's compress(); remove plan.quantize"
        )
    compressed = clone_model(model)
    if graph is None:
        graph = trace(compressed, example_inputs)
    plan.validate(graph)
    if plan.granularity == "unstructured":
        return apply_unstructured_masks(compressed, plan)
    ctx = CriterionContext(compressed, graph, data, loss_fn, max_batches)
    pruned = select_channels(graph, plan, ctx)
    if not speedup:
        return apply_channel_masks(compressed, graph, pruned)
    make_permanent(compressed)
    apply_speedup(compressed, graph, pruned)
    check_forward(compressed, example_inputs)
    return compressed
