"""``fpgm``: distance from the geometric median of the layer's filters.

He, Liu, Wang, Hu, Yang, "Filter Pruning via Geometric Median for Deep Convolutional Neural
Networks Acceleration", CVPR 2019 (https://arxiv.org/abs/1811.00250). Filters close to the
geometric median of their layer can be represented by the others and are redundant. Following
the paper's implementation, a filter's score is the sum of its distances to all the other
filters of the same layer: the filter nearest the median has the smallest sum and is pruned first.
Filters already pruned by a mask (``torch.nn.utils.prune``, as the iterative compressors AGP,
lottery and ADMM leave them) are not filters of the layer any more: they take no part in the
others' distances (all at the origin, they would turn the sum toward a norm criterion) and score 0.

For each member with a selected role (by default the producing layers) the layer's filters are
its flattened rows along the role dimension: *all* of the layer's channels take part in the
distances, also those belonging to other groups (concatenations). A channel at several positions
sums their scores; scores are averaged over members.

Example:
    >>> import torch
    >>> from slimtune.compressors._types import Group, Member
    >>> from slimtune.compressors.criteria import CriterionContext, score_group
    >>> fc = torch.nn.Linear(2, 5)
    >>> with torch.no_grad():  # four points around the origin, and the origin itself
    ...     _ = fc.weight.copy_(torch.tensor([[1., 0.], [-1., 0.], [0., 1.], [0., -1.], [0., 0.]]))
    >>> g = Group("fc", 5, [Member("", "out", torch.arange(5), torch.arange(5))])
    >>> int(score_group(g, "fpgm", CriterionContext(fc)).argmin())
    4
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from slimtune.compressors.criteria._base import register_criterion
from slimtune.compressors.criteria._common import (
    PRODUCERS,
    carried,
    check_roles,
    get_module,
    mean_over_members,
    member_matrix,
    param,
    scatter_channels,
)

if TYPE_CHECKING:
    from slimtune.compressors._types import Group
    from slimtune.compressors.criteria._base import CriterionContext


@register_criterion("fpgm")
def fpgm(group: Group, ctx: CriterionContext, *, roles: Sequence[str] = PRODUCERS, p: float = 2.0) -> torch.Tensor:
    """Sum of ``p``-norm distances of each channel's filter to the other filters of its layer.

    Args:
        group: The group to score.
        ctx: The context (only ``ctx.model`` is used).
        roles: Member roles that contribute (default the producers, ``("out", "dw")``).
        p: The norm of the distances (2: Euclidean, as in the paper's main results; 1: Manhattan).
    """
    roles = check_roles(roles, "fpgm")
    parts = []
    for m in group.members:
        if m.role not in roles or m.positions.numel() == 0:
            continue
        module = get_module(ctx, m, "fpgm")
        w = param(module, "weight")
        if w is None:
            continue
        mat = member_matrix(module, m, w, "fpgm")
        mask = getattr(module, "weight_mask", None)
        alive = (member_matrix(module, m, mask, "fpgm") != 0).any(1) if isinstance(mask, torch.Tensor) else None
        dist = torch.cdist(mat.unsqueeze(0), mat.unsqueeze(0), p=p).squeeze(0)
        if alive is not None:  # masked filters: out of the distances, scored 0
            dist = dist[:, alive].sum(1) * alive
        else:
            dist = dist.sum(1)
        values = dist[m.positions.long().to(dist.device)]
        parts.append((scatter_channels(values, m, group.size), carried(m, group.size)))
    return mean_over_members(parts, group, "fpgm", what=f"members with roles {list(roles)} and a weight")
