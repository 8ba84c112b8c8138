"""``oneshot``: prune every group at once by its criterion, then speed up and quantize.

The classic prune-once pipeline of Li et al., "Pruning Filters for Efficient ConvNets", ICLR 2017
(https://arxiv.org/abs/1608.08710): score the channels of the trained model, remove the lowest-scoring ones
to each group's target, and leave recovery to a fine-tune afterwards. This is
:func:`~slimtune.compressors.compress` as a registered compressor, and the default of every plan.

Example:
    >>> import torch
    >>> from slimtune.compressors import CompressionPlan, trace
    >>> from slimtune.compressors.training import TrainingContext, run_compressor
    >>> from slimtune.examples.digits import digits_cnn
    >>> model, x = digits_cnn(width=8), torch.randn(1, 1, 8, 8)
    >>> plan = CompressionPlan.uniform(trace(model, x), 0.25)
    >>> run_compressor(model, plan, x, TrainingContext()).features[3].out_channels
    6
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from slimtune.compressors.compress import compress
from slimtune.compressors.training._base import TrainingContext, register_compressor

if TYPE_CHECKING:
    from torch import nn

    from slimtune.compressors.plan import CompressionPlan


@register_compressor("oneshot")
def oneshot(model: nn.Module, plan: CompressionPlan, example_inputs: Any, context: TrainingContext) -> nn.Module:
    """Prune ``plan``'s groups at once (criteria on ``context.calibration`` where they need data)."""
    report: dict[str, Any] = {}
    small = compress(
        model,
        plan,
        example_inputs,
        speedup=context.speedup,
        data=context.calibration,
        loss_fn=context.loss_fn,
        graph=context.graph,
        report=report,
    )
    if report:  # what the criteria reported per group (scop's control scales, the channels kept and pruned)
        context.info["criteria"] = report
    return small
