"""``taylor``: first-order Taylor estimate of the loss change when a channel is removed.

Molchanov, Mallya, Tyree, Frosio, Kautz, "Importance Estimation for Neural Network Pruning",
CVPR 2019 (https://arxiv.org/abs/1906.10771). Removing a set of parameters ``S`` changes the loss
by about ``(sum_{s in S} g_s w_s)^2`` (first-order Taylor expansion, squared). A channel's set
is every parameter it owns in every member of its group: the producers' weight rows and biases,
the BatchNorm ``gamma`` and ``beta``, the consumers' input columns and depthwise rows. As in the
paper the per-batch importance is averaged over the calibration batches.

The gradients are computed once per context: one pass over ``ctx.data`` records, per batch and
per parameter, the sums of ``g * w`` along each channel dimension, stored in ``ctx.cache``; every
group is then scored from these small vectors. The pass runs in eval mode (BatchNorm running
statistics and dropout untouched), restores every module's training flag and ``requires_grad``,
and uses :func:`torch.autograd.grad`, so no ``.grad`` is created or changed. Under
``torch.nn.utils.prune`` reparametrisation ``g_orig * w_orig = g_eff * w_eff`` elementwise
(``w_eff = w_orig * mask``), so the gradient of the leaf ``weight_orig`` gives the importance of
the effective weight exactly.

Example:
    >>> import torch
    >>> from slimtune.compressors._types import Group, Member
    >>> from slimtune.compressors.criteria import CriterionContext, score_group
    >>> torch.manual_seed(0) is not None
    True
    >>> fc = torch.nn.Linear(3, 2)
    >>> data = [(torch.randn(8, 3), torch.randint(0, 2, (8,)))]
    >>> g = Group("fc", 2, [Member("", "out", torch.arange(2), torch.arange(2))])
    >>> scores = score_group(g, "taylor", CriterionContext(fc, data=data))
    >>> scores.shape, fc.weight.grad is None
    (torch.Size([2]), True)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from slimtune import devices
from slimtune.compressors._outputs import default_loss
from slimtune.compressors.criteria._base import register_criterion
from slimtune.compressors.criteria._common import (
    ROLES,
    channel_matrix,
    check_roles,
    conv_groups,
    eval_mode,
    get_module,
    iter_batches,
    role_dim,
    split_batch,
)
from slimtune.errors import CriterionError

if TYPE_CHECKING:
    from slimtune.compressors._types import Group, Member
    from slimtune.compressors.criteria._base import CriterionContext

_CACHE_KEY = "taylor.gw"
_Key = tuple[str, str, int]  # (layer, parameter name, channel dim)


@register_criterion("taylor")
def taylor(group: Group, ctx: CriterionContext, *, roles: Sequence[str] = ROLES) -> torch.Tensor:
    """Per channel, the batch mean of ``(sum of g * w over the channel's parameters)^2``.

    Args:
        group: The group to score.
        ctx: The context: ``ctx.model``, ``ctx.data`` with ``(inputs, targets)`` batches,
            ``ctx.loss_fn`` (default cross-entropy on the logits), ``ctx.max_batches``; ``ctx.cache`` keeps the
            gradient statistics for the other groups.
        roles: Member roles whose parameters count (default all: producers, BatchNorm, consumers).

    Raises:
        CriterionError: No data, batches without targets, or a loss that is not a scalar.
    """
    roles = check_roles(roles, "taylor")
    gw = ctx.cache.get(_CACHE_KEY)
    if gw is None:
        gw = ctx.cache[_CACHE_KEY] = _record_gw(ctx)
    n_batches = next(iter(gw.values())).shape[0] if gw else 0
    total = torch.zeros(n_batches, group.size, dtype=torch.float64, device="cpu")
    used = 0
    for m in group.members:
        if m.role not in roles or m.positions.numel() == 0:
            continue
        module = get_module(ctx, m, "taylor")
        dim = role_dim(module, m.role)
        keys = [(m.layer, "weight", dim)]
        if m.role != "in":
            keys.append((m.layer, "bias", 0))
        for key in keys:
            sums = gw.get(key)
            if sums is not None:
                total += _scatter_batches(sums, m, group.size, key)
                used += 1
    if not used:
        raise CriterionError(
            f"criterion 'taylor': group {group.name!r} has no members with roles {list(roles)} and parameters"
        )
    return total.pow(2).mean(0).float()


def _scatter_batches(sums: torch.Tensor, m: Member, size: int, key: _Key) -> torch.Tensor:
    """``sums[:, positions]`` summed into ``[n_batches, size]`` channels."""
    pos = m.positions.long()
    if int(pos.max()) >= sums.shape[1]:
        raise CriterionError(
            f"criterion 'taylor': member {m.layer!r} (role {m.role!r}) has position {int(pos.max())} but "
            f"{key[0]}.{key[1]} has only {sums.shape[1]} channels along dim {key[2]}"
        )
    out = torch.zeros(sums.shape[0], size, dtype=sums.dtype, device=sums.device)
    return out.index_add_(1, m.channels.long(), sums[:, pos])


def _record_gw(ctx: CriterionContext) -> dict[_Key, torch.Tensor]:
    """One pass over the data: per batch, ``g * w`` summed along every channel dim of every parameter."""
    model = ctx.model
    loss_fn = ctx.loss_fn or default_loss
    device = devices.model_device(model)
    entries: list[tuple[str, str, int, torch.nn.Parameter]] = []
    for layer, module in model.named_modules():
        groups = conv_groups(module)
        for pname, p in module.named_parameters(recurse=False):
            name = pname[: -len("_orig")] if pname.endswith("_orig") else pname
            entries.append((layer, name, groups, p))
    unique = list({id(p): p for *_, p in entries}.values())
    flags = [p.requires_grad for p in unique]
    records: dict[_Key, list[torch.Tensor]] = {}
    try:
        with eval_mode(model), torch.enable_grad():
            for p in unique:
                p.requires_grad_(True)
            for i, batch in enumerate(iter_batches(ctx, "taylor")):
                args, targets = split_batch(batch)
                if targets is None:
                    raise CriterionError(
                        f"criterion 'taylor' needs batches of (inputs, targets) to compute a loss; "
                        f"batch {i} has no targets"
                    )
                loss = loss_fn(model(*devices.move(args, device)), devices.move(targets, device))
                if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                    raise CriterionError("criterion 'taylor': loss_fn must return a scalar tensor")
                if not loss.requires_grad:
                    raise CriterionError("criterion 'taylor': the loss does not depend on any parameter of the model")
                grads = dict(zip(map(id, unique), torch.autograd.grad(loss, unique, allow_unused=True)))
                for layer, name, groups, p in entries:
                    g = grads[id(p)]
                    gw = torch.zeros_like(p) if g is None else (g * p).detach()
                    for dim in (0, 1) if gw.ndim > 1 else (0,):
                        sums = channel_matrix(gw.float(), dim, groups if dim == 1 else 1).sum(1)
                        records.setdefault((layer, name, dim), []).append(sums)  # on the model's device
    finally:
        for p, flag in zip(unique, flags):
            p.requires_grad_(flag)
    # one copy to the CPU per parameter and dim, not one per batch (float64 after the copy: MPS has none)
    return {k: torch.stack(v).cpu().double() for k, v in records.items()}
