"""Helpers shared by the criteria: member matrices, positions → channels, aggregation, batches.

Conventions every criterion follows:

- A member holds group channels at ``positions`` along one parameter dimension of its layer
  (:data:`~slimtune.compressors._types.Role`): ``out``/``dw`` along the output channels,
  ``in`` along the input channels/features, ``norm`` along a BatchNorm's entries. For a
  ``Conv``/``Linear`` the output dimension is ``weight`` dim 0 and the input dimension dim 1;
  for a ``ConvTranspose`` the other way round. Grouped convolutions are handled: along the
  per-group dimension, channel ``c`` meets only the weights of its own group.
- :func:`channel_matrix` lays a parameter out as one row per index of that dimension, so
  ``matrix[p]`` is every weight that channel position ``p`` touches.
- A channel may occupy several positions (a flatten → Linear gives each conv channel ``H*W``
  input features): :func:`scatter_channels` sums over the channel's positions.
- Scores of several members are combined by :func:`mean_over_members`: for each channel, the
  plain (unnormalised) mean over the members that hold it. Within one group all members usually
  have comparable scales (the producers of a residual sum, say), and criteria only compare
  channels *within* a group, so no per-member normalisation is applied.
- Devices: a group's ``positions`` and ``channels`` are CPU bookkeeping. Weights are read where
  they live (positions moved to the weight's device to index it); the per-channel results are
  brought to the CPU (:func:`mean_over_members`), where every tensor a criterion makes for them is
  created with ``device="cpu"``. Calibration batches go to the model's device
  (:func:`slimtune.devices.move`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from slimtune.errors import CriterionError

if TYPE_CHECKING:
    from slimtune.compressors._types import Group, Member
    from slimtune.compressors.criteria._base import CriterionContext

ROLES: tuple[str, ...] = ("out", "in", "norm", "dw", "mha")
PRODUCERS: tuple[str, ...] = ("out", "dw")
"""Default roles of the weight criteria: the layers producing the channels."""


def check_roles(roles: Sequence[str], criterion: str) -> tuple[str, ...]:
    """Validate a ``roles`` option; returns it as a tuple."""
    roles = (roles,) if isinstance(roles, str) else tuple(roles)
    bad = [r for r in roles if r not in ROLES]
    if bad or not roles:
        raise CriterionError(
            f"criterion {criterion!r}: roles {list(roles)} must be a non-empty subset of {list(ROLES)}"
        )
    return roles


def get_module(ctx: CriterionContext, member: Member, criterion: str) -> nn.Module:
    """The module of ``member`` in ``ctx.model`` (a :class:`CriterionError` when missing)."""
    try:
        return ctx.model.get_submodule(member.layer)
    except AttributeError:
        raise CriterionError(
            f"criterion {criterion!r}: group member layer {member.layer!r} is not a submodule of the model"
        ) from None


def param(module: nn.Module, name: str = "weight") -> torch.Tensor | None:
    """The *effective* parameter ``name`` of ``module`` (detached), or None.

    Under ``torch.nn.utils.prune`` reparametrisation ``module.weight`` is ``weight_orig * weight_mask``,
    which is what is read here.
    """
    t = getattr(module, name, None)
    return t.detach() if isinstance(t, torch.Tensor) else None


def role_dim(module: nn.Module, role: str) -> int:
    """Which ``weight`` dimension holds the channels of ``role`` (its handler's first weight axis)."""
    from slimtune.compressors.handlers import member_handler

    handler = member_handler(module, role)
    for ax in handler.axes(module, role) if handler is not None else ():
        if ax.tensor == "weight" and ax.score:
            return ax.dim
    if role == "norm":
        return 0
    return 1 if role == "in" else 0


def conv_groups(module: nn.Module) -> int:
    """``module.groups`` for convolutions, 1 for every other layer."""
    return int(module.groups) if isinstance(module, nn.modules.conv._ConvNd) else 1


def channel_matrix(tensor: torch.Tensor, dim: int, groups: int = 1) -> torch.Tensor:
    """Lay ``tensor`` out as ``[n_channels, k]``: row ``p`` holds every entry of channel index ``p`` along ``dim``.

    Args:
        tensor: A weight (``[A, B, *kernel]``) or a 1-D parameter (bias, BN gamma/beta).
        dim: 0 (rows) or 1 (columns; with ``groups > 1`` the full channel index runs over
            ``groups * B`` and channel ``c`` meets only the ``A / groups`` rows of its group).
        groups: The layer's ``groups`` (convolutions), 1 otherwise.

    Example:
        >>> channel_matrix(torch.arange(6.).reshape(2, 3), dim=1).tolist()
        [[0.0, 3.0], [1.0, 4.0], [2.0, 5.0]]
    """
    if tensor.ndim <= 1:
        return tensor.reshape(-1, 1)
    if dim == 0:
        return tensor.reshape(tensor.shape[0], -1)
    a, b = tensor.shape[0], tensor.shape[1]
    t = tensor.reshape(groups, a // groups, b, -1)  # [g, A/g, B, kk]
    return t.permute(0, 2, 1, 3).reshape(groups * b, -1)


def member_matrix(
    module: nn.Module, member: Member, tensor: torch.Tensor, criterion: str, dim: int | None = None
) -> torch.Tensor:
    """:func:`channel_matrix` of ``tensor`` along the member's role dimension (all indices, not only the member's).

    Args:
        module: The member's layer.
        member: The member (its role picks the dimension; its positions are checked to fit).
        tensor: A parameter of ``module`` (or a tensor shaped like one, e.g. ``grad * weight``).
        criterion: Criterion name, for errors.
        dim: Override of the dimension (default: :func:`role_dim`).
    """
    d = role_dim(module, member.role) if dim is None else dim
    groups = conv_groups(module) if d == 1 else 1
    mat = channel_matrix(tensor.float(), d, groups)
    if member.positions.numel() and int(member.positions.max()) >= mat.shape[0]:
        raise CriterionError(
            f"criterion {criterion!r}: member {member.layer!r} (role {member.role!r}) has position "
            f"{int(member.positions.max())} but the layer has only {mat.shape[0]} channels along that dimension"
        )
    return mat


def scatter_channels(values: torch.Tensor, member: Member, size: int) -> torch.Tensor:
    """Sum per-position ``values`` (aligned with ``member.positions``) into ``size`` channels.

    Example:
        >>> from slimtune.compressors._types import Member
        >>> m = Member("fc", "in", torch.arange(4), torch.tensor([0, 0, 1, 1]))
        >>> scatter_channels(torch.tensor([1., 2., 3., 4.]), m, 2).tolist()
        [3.0, 7.0]
    """
    out = torch.zeros(size, dtype=values.dtype, device=values.device)
    return out.index_add_(0, member.channels.to(values.device, torch.long), values)


def carried(member: Member, size: int) -> torch.Tensor:
    """Boolean mask of the group channels that ``member`` holds."""
    mask = torch.zeros(size, dtype=torch.bool, device="cpu")
    mask[member.channels.long().cpu()] = True
    return mask


def mean_over_members(
    parts: Sequence[tuple[torch.Tensor, torch.Tensor]], group: Group, criterion: str, what: str = "members"
) -> torch.Tensor:
    """Per channel, the mean of the scores of the members that hold it.

    Args:
        parts: ``(scores[size], held[size] bool)`` per member that carries scores.
        group: The group (for its size and name in errors).
        criterion: Criterion name, for errors.
        what: What ``parts`` are, for errors ("members with roles ...", "taps").

    Channels held by no member score 0. Returns float32 on CPU.
    """
    if not parts:
        raise CriterionError(f"criterion {criterion!r}: group {group.name!r} has no {what} to score its channels")
    total = torch.zeros(group.size, dtype=torch.float64, device="cpu")
    count = torch.zeros(group.size, dtype=torch.float64, device="cpu")
    for scores, held in parts:
        held = held.cpu()
        total += torch.where(held, scores.detach().cpu().double(), 0.0)
        count += held.double()
    return (total / count.clamp_min(1.0)).float()


def split_batch(batch: Any) -> tuple[tuple[Any, ...], Any]:
    """``batch`` → ``(positional inputs, targets or None)``.

    A Tensor is inputs only; a tuple/list is ``(inputs, targets)`` (a one-element tuple is
    ``(inputs,)``); ``inputs`` may itself be a tuple/list of positional inputs.
    """
    if isinstance(batch, (tuple, list)):
        if len(batch) == 0:
            raise CriterionError("an empty batch was given; expected a Tensor or (inputs, targets)")
        inputs, targets = batch[0], (batch[1] if len(batch) > 1 else None)
    else:
        inputs, targets = batch, None
    args = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    return args, targets


def iter_batches(ctx: CriterionContext, criterion: str) -> Iterator[Any]:
    """The batches of ``ctx.data``, at most ``ctx.max_batches``; CriterionError when there are none."""
    if ctx.data is None:
        raise CriterionError(
            f"criterion {criterion!r} needs calibration batches: pass data (an iterable of inputs or "
            f"(inputs, targets) batches) to the compression"
        )
    n = 0
    for batch in ctx.data:
        if ctx.max_batches is not None and n >= ctx.max_batches:
            break
        n += 1
        yield batch
    if n == 0:
        raise CriterionError(
            f"criterion {criterion!r} needs calibration batches but data yielded none "
            f"(max_batches={ctx.max_batches}; a generator is exhausted after one pass, use a list or DataLoader)"
        )


@contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Put ``modules`` in eval mode and restore every submodule's own ``training`` flag afterwards."""
    flags = [(m, m.training) for root in modules for m in root.modules()]
    try:
        for root in modules:
            root.eval()
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def weight_scores(
    group: Group,
    ctx: CriterionContext,
    roles: Sequence[str],
    criterion: str,
    per_member: Any,
) -> torch.Tensor:
    """Score a group from its members' effective weights and average over members.

    Args:
        group: The group.
        ctx: The context (``ctx.model`` is read).
        roles: Roles of the members used; members with other roles, or layers without a
            ``weight`` (BatchNorm with ``affine=False``), are skipped.
        criterion: Criterion name, for errors.
        per_member: ``per_member(rows, member, size) -> scores[size]`` where ``rows[i]`` holds
            the weights at ``member.positions[i]`` (``[n_positions, k]``, float32).

    Returns:
        :func:`mean_over_members` of the per-member scores.
    """
    roles = check_roles(roles, criterion)
    parts = []
    for m in group.members:
        if m.role not in roles or m.positions.numel() == 0:
            continue
        module = get_module(ctx, m, criterion)
        w = param(module, "weight")
        if w is None:
            continue
        rows = member_matrix(module, m, w, criterion)[m.positions.long().to(w.device)]
        parts.append((per_member(rows, m, group.size), carried(m, group.size)))
    return mean_over_members(parts, group, criterion, what=f"members with roles {list(roles)} and a weight")
