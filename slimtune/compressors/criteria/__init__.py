"""Pruning criteria: a dependency group in, one importance score per channel out.

A criterion is a callable ``criterion(group, ctx) -> Tensor`` returning a 1-D float32 tensor of
``group.size`` scores, higher = more important; pruning removes the lowest-scoring channels of
each group. Criteria are registered by the name users write in plans and specs:

============== ========================================================= ==================
name           score                                                     needs
============== ========================================================= ==================
``level``      mean ``|w|`` of the channel's weights                     weights
``l1``         sum ``|w|`` (Li et al. 2017)                              weights
``l2``         L2 norm of the channel's weights                          weights
``fpgm``       distance to the layer's other filters (He et al. 2019)    weights
``bn_scale``   ``|gamma|`` of the BatchNorm (Liu et al. 2017)            weights
``taylor``     ``(sum g*w)^2`` (Molchanov et al. 2019)                   data with targets
``apoz``       ``1 -`` fraction of zero activations (Hu et al. 2016)     data, traced graph
``mean_activation`` mean ``|activation|`` (Molchanov et al. 2017)        data, traced graph
``scop``       ``β − β̃``: learned control scale of the real feature      data with targets
               against its knockoff's (Tang et al. 2020)
``scop_vae``   ``scop`` with knockoffs from a small VAE                   data with targets
============== ========================================================= ==================

Weight criteria score each member layer with a selected role (by default the producers,
``out`` and ``dw``) and average over the members holding each channel (plain mean, no per-member
normalisation); see :mod:`slimtune.compressors.criteria._common`. A new criterion is one new
module decorated with :func:`register_criterion` and imported below.

Example:
    >>> import torch
    >>> from slimtune.compressors._types import Group, Member
    >>> from slimtune.compressors.criteria import CriterionContext, score_group
    >>> conv = torch.nn.Conv2d(3, 4, 3)
    >>> with torch.no_grad():
    ...     _ = conv.weight[2].zero_()
    >>> group = Group("conv", 4, [Member("", "out", torch.arange(4), torch.arange(4))])
    >>> int(score_group(group, "l1", CriterionContext(conv)).argmin())
    2
"""

from __future__ import annotations

from slimtune.compressors.criteria._base import (
    CRITERIA,
    Criterion,
    CriterionContext,
    get_criterion,
    register_criterion,
    score_group,
)
from slimtune.compressors.criteria.activation import apoz, mean_activation
from slimtune.compressors.criteria.bn_scale import bn_scale
from slimtune.compressors.criteria.fpgm import fpgm

# Importing the algorithm modules registers them.
from slimtune.compressors.criteria.level import level
from slimtune.compressors.criteria.norm import l1, l2
from slimtune.compressors.criteria.scop import scop, scop_vae
from slimtune.compressors.criteria.taylor import taylor

__all__ = [
    "CRITERIA",
    "Criterion",
    "CriterionContext",
    "apoz",
    "bn_scale",
    "fpgm",
    "get_criterion",
    "l1",
    "l2",
    "level",
    "mean_activation",
    "register_criterion",
    "score_group",
    "scop",
    "scop_vae",
    "taylor",
]
