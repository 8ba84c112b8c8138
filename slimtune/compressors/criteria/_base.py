"""The criterion interface, its context and the registry of criteria by name."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import torch
from torch import nn

from slimtune.errors import CriterionError, UnknownCriterionError
from slimtune.registry import Registry

if TYPE_CHECKING:
    from slimtune.compressors._types import Group
    from slimtune.compressors.graph import ModelGraph


@dataclass
class CriterionContext:
    """Everything a criterion may need besides the group, shared by all groups of one compression.

    Args:
        model: The model whose channels are scored (the module names of the group's members are
            looked up with ``model.get_submodule``).
        graph: The traced :class:`~slimtune.compressors.graph.ModelGraph` (activation criteria run
            ``graph.gm``, the ``torch.fx.GraphModule`` sharing the model's submodules, and read
            ``graph.groups`` to record every group's tensors in one pass). ``None`` is fine for
            weight-only criteria.
        data: Batches: each a Tensor of inputs, or a tuple/list ``(inputs, targets)`` where
            ``inputs`` is a Tensor or a tuple of positional inputs. Needed by ``taylor``
            (with targets), ``apoz`` and ``mean_activation``. Should be re-iterable (a list or a
            ``DataLoader``) if criteria may need a second pass. Batches may live on any device:
            inputs and targets are moved to the model's device (:func:`slimtune.devices.move`).
        loss_fn: ``loss_fn(outputs, targets) -> scalar`` for gradient criteria; ``None`` means
            :func:`torch.nn.functional.cross_entropy`.
        max_batches: Use at most this many batches of ``data`` (``None``: all of them).
        cache: Shared by every group of one compression, so that one pass over the data (gradients,
            activation statistics) serves all groups. Start each compression with a fresh context
            (or an empty cache) whenever the model's weights changed.
        report: What criteria report about the groups they score, ``{group: {key: JSON value}}`` (e.g.
            ``scop``'s control scales); :func:`~slimtune.compressors.pruning.select_channels` adds the
            channels it ``pruned`` and ``kept`` to every group reported on.

    Example:
        >>> import torch
        >>> ctx = CriterionContext(torch.nn.Linear(3, 2), data=[(torch.randn(4, 3), torch.tensor([0, 1, 1, 0]))])
        >>> ctx.max_batches is None and ctx.cache == {} and ctx.report == {}
        True
    """

    model: nn.Module
    graph: ModelGraph | None = None
    data: Iterable[Any] | None = None
    loss_fn: Callable[..., torch.Tensor] | None = None
    max_batches: int | None = None
    cache: dict[str, Any] = field(default_factory=dict)
    report: dict[str, dict[str, Any]] = field(default_factory=dict)


class Criterion(Protocol):
    """A pruning criterion: a group in, a 1-D float32 tensor of ``group.size`` scores out.

    Higher scores mean more important channels; pruning removes the lowest-scoring ones.
    """

    def __call__(self, group: Group, ctx: CriterionContext) -> torch.Tensor: ...


CRITERIA: Registry[Criterion] = Registry(
    "criterion", unknown_error=UnknownCriterionError, duplicate_error=CriterionError
)
"""Registered criteria by name (the name a plan or a spec writes)."""

_C = TypeVar("_C", bound=Callable[..., torch.Tensor])


def register_criterion(name: str) -> Callable[[_C], _C]:
    """Decorator registering a criterion under ``name`` in :data:`CRITERIA`.

    Args:
        name: The name users write in plans and specs. Must not be registered already by
            another callable (re-registering the same function, as a module reload does, is fine).

    Raises:
        CriterionError: ``name`` is already registered by a different callable.

    Example:
        >>> import torch
        >>> @register_criterion("doc_ones")
        ... def ones(group, ctx):
        ...     return torch.ones(group.size)
        >>> "doc_ones" in CRITERIA
        True
        >>> CRITERIA.unregister("doc_ones")
    """
    return CRITERIA.register(name)


def get_criterion(name: str) -> Criterion:
    """The criterion registered under ``name``.

    Args:
        name: A registered criterion name, e.g. ``"l1"``.

    Raises:
        UnknownCriterionError: Unknown name (a :class:`~slimtune.errors.CriterionError`); the message
            suggests the closest known name and lists the known ones.

    Example:
        >>> get_criterion("l1").__name__
        'l1'
    """
    return CRITERIA.get(name)


def score_group(group: Group, criterion_name: str, ctx: CriterionContext) -> torch.Tensor:
    """Score the channels of ``group`` with the named criterion and check the result.

    Args:
        group: The dependency group whose channels are scored.
        criterion_name: A registered criterion name.
        ctx: The shared context (model, graph, data, cache).

    Returns:
        A detached 1-D float32 CPU tensor of length ``group.size`` (higher = more important).

    Raises:
        CriterionError: Unknown criterion, missing inputs, or a result of the wrong shape.

    Example:
        >>> import torch
        >>> from slimtune.compressors._types import Group, Member
        >>> conv = torch.nn.Conv2d(3, 4, 3)
        >>> g = Group("conv", 4, [Member("", "out", torch.arange(4), torch.arange(4))])
        >>> score_group(g, "l2", CriterionContext(conv)).shape
        torch.Size([4])
    """
    scores = get_criterion(criterion_name)(group, ctx)
    if not isinstance(scores, torch.Tensor):
        raise CriterionError(
            f"criterion {criterion_name!r} returned {type(scores).__name__} for group {group.name!r}; expected a Tensor"
        )
    scores = scores.detach().to("cpu", torch.float32)
    if scores.shape != (group.size,):
        raise CriterionError(
            f"criterion {criterion_name!r} returned scores of shape {tuple(scores.shape)} for group "
            f"{group.name!r}; expected ({group.size},)"
        )
    return scores
