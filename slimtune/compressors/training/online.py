"""Online distillation (``kd.mode: online``): deep mutual learning between the student and a peer.

Zhang, Xiang, Hospedales, Lu, "Deep Mutual Learning", CVPR 2018 (https://arxiv.org/abs/1706.00384): two
networks train together, each on the task loss plus the KL divergence from the other's predictions to its
own, ``L₁ = CE(p₁, y) + KL(p₂ ‖ p₁)`` and ``L₂ = CE(p₂, y) + KL(p₁ ‖ p₂)``; neither is a fixed teacher.

Here the student is network 1 and the peer network 2: a copy of the original model (``peer: original``,
the default: a strong, uncompressed partner) or of the student (``peer: student``). The peer trains in
training mode with an optimizer of its own (the run's optimizer settings and learning-rate schedule) and
is dropped after the run. Each loss is ``(1 - alpha) · task + alpha · T² · KL(other_T ‖ own_T)``, the
other's predictions detached; the defaults ``alpha`` 0.5 and ``T`` 1 are DML's equal weights and plain
softmax (half DML's sum ``task + KL``: under plain SGD the same as half the learning rate, under Adam
almost no difference). Both networks see the same batch and take their steps together, each from the
other's predictions before the step (the paper updates network 1 first and recomputes its predictions
for network 2's update).

Example:
    >>> import torch
    >>> from slimtune.compressors.training import FinetuneConfig, finetune
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> data = [(torch.randn(16, 4), torch.randint(0, 3, (16,))) for _ in range(4)]
    >>> cfg = FinetuneConfig(steps=8, kd={"mode": "online", "peer": "student"})
    >>> finetune(model, data, cfg).steps
    8
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from slimtune import devices
from slimtune.compressors._outputs import logits
from slimtune.compressors.pruning import clone_model
from slimtune.compressors.training.config import KDConfig
from slimtune.compressors.training.distill import KDMode, response_loss
from slimtune.errors import ArgumentError


class MutualLearning(KDMode):
    """The student and a peer learning from each other's predictions.

    Args:
        student: The model being trained.
        teacher: The original model (copied into the peer with ``peer: original``; never trained itself).
        config: The :class:`~slimtune.compressors.training.KDConfig` (``mode: online``).
        loss_fn: The task loss ``loss_fn(outputs, targets)``, applied to the peer's outputs too.
        channels_last: Train the peer in the ``torch.channels_last`` memory format (as the student).

    Raises:
        ArgumentError: ``peer: original`` without a teacher (field ``teacher``).
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        config: KDConfig,
        loss_fn: Callable[..., torch.Tensor],
        channels_last: bool = False,
    ) -> None:
        if config.peer == "original" and teacher is None:
            raise ArgumentError(
                "finetune: kd.mode 'online' with kd.peer 'original' trains a copy of the original model alongside "
                "the student: pass teacher=<the original model>, or set kd.peer: student",
                field="teacher",
            )
        self.student, self.config, self.loss_fn = student, config, loss_fn
        source = teacher if config.peer == "original" and teacher is not None else student
        self.peer: nn.Module = clone_model(source).to(devices.model_device(student))
        if channels_last:
            self.peer.to(memory_format=torch.channels_last)
        for p in self.peer.parameters():
            p.requires_grad_(True)

    def attach(self, sample_inputs: tuple[torch.Tensor, ...]) -> None:
        self.peer.train()

    def peer_parameters(self) -> list[nn.Parameter]:
        """The peer's parameters (its own optimizer trains them)."""
        return list(self.peer.parameters())

    def loss(
        self,
        inputs: tuple[torch.Tensor, ...],
        student_out: Any,
        task_loss: torch.Tensor,
        targets: Any = None,
    ) -> torch.Tensor:
        """The student's loss; the peer's loss rides along with value 0 (its gradient only), so one backward
        pass trains both and the recorded loss is the student's."""
        cfg = self.config
        peer_out = self.peer(*inputs)
        s, p = logits(student_out), logits(peer_out)
        peer_task = self.loss_fn(peer_out, targets)
        own = (1.0 - cfg.alpha) * task_loss
        other = (1.0 - cfg.alpha) * peer_task
        if cfg.alpha > 0:
            own = own + cfg.alpha * response_loss(s, p.detach(), cfg.temperature)
            other = other + cfg.alpha * response_loss(p, s.detach(), cfg.temperature)
        return own + (other - other.detach())
