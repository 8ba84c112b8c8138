"""Which distiller each ``kd.mode`` builds: :func:`make_distiller`, the one place that knows every mode.

``offline`` (:class:`~slimtune.compressors.training.distill.Distiller`), ``online``
(:mod:`~slimtune.compressors.training.online`), ``born_again`` (:mod:`~slimtune.compressors.training.born_again`)
and ``self`` (:mod:`~slimtune.compressors.training.self_distill`); each implements
:class:`~slimtune.compressors.training.distill.KDMode`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from slimtune.compressors.training.born_again import BornAgain
from slimtune.compressors.training.distill import Distiller, KDMode
from slimtune.compressors.training.online import MutualLearning
from slimtune.compressors.training.self_distill import SelfDistiller

if TYPE_CHECKING:
    from slimtune.compressors.training.config import FinetuneConfig

__all__ = ["make_distiller"]


def make_distiller(
    student: nn.Module,
    teacher: nn.Module | None,
    config: FinetuneConfig,
    loss_fn: Callable[..., torch.Tensor],
    total_steps: int,
) -> KDMode | None:
    """The distiller of ``config.kd.mode`` for a run of ``total_steps`` optimizer steps, or None where
    there is nothing to distil (``offline`` without a teacher).

    Raises:
        ArgumentError: ``online`` with ``peer: original`` and no teacher (field ``teacher``).
    """
    assert config.kd is not None
    return _MODES[config.kd.mode](student, teacher, config, loss_fn, total_steps)


def _offline(
    student: nn.Module, teacher: nn.Module | None, config: FinetuneConfig, loss_fn: Any, total: int
) -> Distiller | None:
    assert config.kd is not None
    return Distiller(student, teacher, config.kd) if teacher is not None else None


def _online(student: nn.Module, teacher: nn.Module | None, config: FinetuneConfig, loss_fn: Any, total: int) -> KDMode:
    assert config.kd is not None
    return MutualLearning(student, teacher, config.kd, loss_fn, config.channels_last)


def _born_again(
    student: nn.Module, teacher: nn.Module | None, config: FinetuneConfig, loss_fn: Any, total: int
) -> Distiller:
    assert config.kd is not None
    return BornAgain(student, config.kd, total)


def _self(student: nn.Module, teacher: nn.Module | None, config: FinetuneConfig, loss_fn: Any, total: int) -> KDMode:
    assert config.kd is not None
    return SelfDistiller(student, config.kd, loss_fn, config.seed)


_MODES: dict[str, Callable[..., KDMode | None]] = {
    "offline": _offline,
    "online": _online,
    "born_again": _born_again,
    "self": _self,
}
"""How each ``kd.mode`` builds its distiller (the modes of :data:`~slimtune.compressors.training.config.KD_MODES`)."""
