"""``level``: the mean weight magnitude of each channel.

The magnitude ("level") criterion of Han, Pool, Tran, Dally, "Learning both Weights and
Connections for Efficient Neural Networks", NeurIPS 2015 (https://arxiv.org/abs/1506.02626),
applied to whole channels: a channel scores the mean ``|w|`` over the weights it touches. Unlike
``l1`` it does not grow with the number of weights per channel, so members of different sizes
weigh alike in the mean over members.

Example:
    >>> import torch
    >>> from slimtune.compressors._types import Group, Member
    >>> from slimtune.compressors.criteria import CriterionContext, score_group
    >>> fc = torch.nn.Linear(2, 2)
    >>> with torch.no_grad():
    ...     _ = fc.weight.copy_(torch.tensor([[3., -1.], [0., 0.5]]))
    >>> g = Group("fc", 2, [Member("", "out", torch.arange(2), torch.arange(2))])
    >>> score_group(g, "level", CriterionContext(fc)).tolist()
    [2.0, 0.25]
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


@register_criterion("level")
def level(group: Group, ctx: CriterionContext, *, roles: Sequence[str] = PRODUCERS) -> torch.Tensor:
    """Mean ``|w|`` over each channel's weights (all its positions), mean over the members with ``roles``.

    Args:
        group: The group to score.
        ctx: The context (only ``ctx.model`` is used).
        roles: Member roles that contribute (default the producers, ``("out", "dw")``).
    """

    def per_member(rows: torch.Tensor, m: Member, size: int) -> torch.Tensor:
        total = scatter_channels(rows.abs().sum(1), m, size)
        count = scatter_channels(torch.full((rows.shape[0],), float(rows.shape[1]), device=rows.device), m, size)
        return total / count.clamp_min(1.0)

    return weight_scores(group, ctx, roles, "level", per_member)
