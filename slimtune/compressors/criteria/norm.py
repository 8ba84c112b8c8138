"""``l1`` and ``l2``: the norm of each channel's weights.

Li, Kadav, Durdanovic, Samet, Graf, "Pruning Filters for Efficient ConvNets", ICLR 2017
(https://arxiv.org/abs/1608.08710): filters with a small sum of absolute weights produce weak
feature maps and are pruned first. ``l2`` uses the Euclidean norm instead.

For each member with a selected role the norm is taken over every weight the channel touches in
that layer (all of its positions; biases are not counted), then averaged over members.

Example:
    >>> import torch
    >>> from slimtune.compressors._types import Group, Member
    >>> from slimtune.compressors.criteria import CriterionContext, score_group
    >>> fc = torch.nn.Linear(2, 3)
    >>> with torch.no_grad():
    ...     _ = fc.weight.copy_(torch.tensor([[3., 4.], [0., 0.], [1., -1.]]))
    >>> g = Group("fc", 3, [Member("", "out", torch.arange(3), torch.arange(3))])
    >>> score_group(g, "l1", CriterionContext(fc)).tolist()
    [7.0, 0.0, 2.0]
    >>> score_group(g, "l2", CriterionContext(fc)).tolist()[:2]
    [5.0, 0.0]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from slimtune.compressors.criteria._base import register_criterion
from slimtune.compressors.criteria._common import PRODUCERS, scatter_channels, weight_scores

if TYPE_CHECKING:
    from slimtune.compressors._types import Group, Member
    from slimtune.compressors.criteria._base import CriterionContext


@register_criterion("l1")
def l1(group: Group, ctx: CriterionContext, *, roles: Sequence[str] = PRODUCERS) -> torch.Tensor:
    """Sum of ``|w|`` over each channel's weights, mean over the members with ``roles``.

    Args:
        group: The group to score.
        ctx: The context (only ``ctx.model`` is used).
        roles: Member roles that contribute (default the producers, ``("out", "dw")``; add
            ``"in"`` to also count the consuming layers' input columns, ``"norm"`` for ``|gamma|``).
    """

    def per_member(rows: torch.Tensor, m: Member, size: int) -> torch.Tensor:
        return scatter_channels(rows.abs().sum(1), m, size)

    return weight_scores(group, ctx, roles, "l1", per_member)


@register_criterion("l2")
def l2(group: Group, ctx: CriterionContext, *, roles: Sequence[str] = PRODUCERS) -> torch.Tensor:
    """Euclidean norm of each channel's weights, mean over the members with ``roles``.

    Args:
        group: The group to score.
        ctx: The context (only ``ctx.model`` is used).
        roles: Member roles that contribute (default the producers, ``("out", "dw")``).
    """

    def per_member(rows: torch.Tensor, m: Member, size: int) -> torch.Tensor:
        return scatter_channels(rows.pow(2).sum(1), m, size).sqrt()

    return weight_scores(group, ctx, roles, "l2", per_member)
