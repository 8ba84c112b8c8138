"""``bn_scale``: the magnitude of the batch-norm scaling factor of each channel.

Liu, Li, Shen, Huang, Yan, Zhang, "Learning Efficient Convolutional Networks through Network
Slimming", ICCV 2017 (https://arxiv.org/abs/1708.06519). Each channel is multiplied by its
BatchNorm ``gamma``; channels with a small ``|gamma|`` (driven towards zero by an L1 penalty during
training in the paper, but the criterion works on any BN model) contribute little and are pruned.

The score is ``|gamma|`` of the group's ``norm`` members (averaged over them when a residual
group has several). A group without a BatchNorm carrying a ``gamma`` (no ``norm`` member, or
``affine=False``) falls back to ``l1`` over its producers, with a warning issued once per group
name per context (per compression).

Example:
    >>> import torch
    >>> from slimtune.compressors._types import Group, Member
    >>> from slimtune.compressors.criteria import CriterionContext, score_group
    >>> bn = torch.nn.BatchNorm1d(3)
    >>> with torch.no_grad():
    ...     _ = bn.weight.copy_(torch.tensor([0.5, -2.0, 0.0]))
    >>> g = Group("bn", 3, [Member("", "norm", torch.arange(3), torch.arange(3))])
    >>> score_group(g, "bn_scale", CriterionContext(bn)).tolist()
    [0.5, 2.0, 0.0]
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import torch

from slimtune.compressors.criteria._base import register_criterion
from slimtune.compressors.criteria._common import PRODUCERS, get_module, param, scatter_channels, weight_scores
from slimtune.compressors.criteria.norm import l1

if TYPE_CHECKING:
    from slimtune.compressors._types import Group, Member
    from slimtune.compressors.criteria._base import CriterionContext

_WARNED_KEY = "bn_scale.warned"


@register_criterion("bn_scale")
def bn_scale(group: Group, ctx: CriterionContext) -> torch.Tensor:
    """``|gamma|`` of the group's BatchNorm entries; ``l1`` of the producers when there is no BN.

    Args:
        group: The group to score.
        ctx: The context (``ctx.model``; ``ctx.cache`` remembers which groups were warned about).
    """

    def per_member(rows: torch.Tensor, m: Member, size: int) -> torch.Tensor:
        count = scatter_channels(torch.ones(rows.shape[0], device=rows.device), m, size)
        return scatter_channels(rows.abs().sum(1), m, size) / count.clamp_min(1.0)

    has_gamma = any(
        m.positions.numel() and param(get_module(ctx, m, "bn_scale"), "weight") is not None
        for m in group.members_with("norm")
    )
    if has_gamma:
        return weight_scores(group, ctx, ("norm",), "bn_scale", per_member)
    warned: set[str] = ctx.cache.setdefault(_WARNED_KEY, set())
    if group.name not in warned:
        warned.add(group.name)
        warnings.warn(
            f"bn_scale: group {group.name!r} has no BatchNorm with a scale (gamma); scoring it by l1 of its "
            f"producing layers instead",
            stacklevel=2,
        )
    return l1(group, ctx, roles=PRODUCERS)
