"""Born-again self-distillation (``kd.mode: born_again``): the student's own frozen snapshot teaches it.

Furlanello, Lipton, Tschannen, Itti, Anandkumar, "Born-Again Neural Networks", ICML 2018
(https://arxiv.org/abs/1805.04770): a network of the same architecture, trained by distillation from its
trained predecessor, ends better than the predecessor; a sequence of generations improves further.

Within one fine-tune run: the snapshot of the student taken at the start of the run teaches it, frozen (in
eval mode, without gradients); with ``generations: g`` the run is cut into ``g`` equal parts and the
snapshot is refreshed at the start of each, so every part is taught by the student that the previous part
made. The loss is the offline one (:class:`~slimtune.compressors.training.distill.Distiller`: response term
``(1 - alpha) · task + alpha · T² · KL``, optional hints and relations) with the snapshot as teacher; the
defaults are the paper's temperature 1 (no softening) and the task loss kept beside the teacher's term
(``alpha`` 0.5; with ``alpha: 1`` the student learns from the snapshot alone, and a snapshot of the start
teaches it nothing: the student equals it). Unlike the paper, a generation continues from the student's
weights (the paper trains each generation from a fresh initialisation, for a full schedule) and the
learning-rate schedule runs once over the whole run.

Example:
    >>> import torch
    >>> from slimtune.compressors.training import FinetuneConfig, finetune
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> data = [(torch.randn(16, 4), torch.randint(0, 3, (16,))) for _ in range(4)]
    >>> cfg = FinetuneConfig(steps=8, kd={"mode": "born_again", "generations": 2})
    >>> finetune(model, data, cfg).steps  # the snapshot is refreshed after step 4
    8
"""

from __future__ import annotations

from torch import nn

from slimtune.compressors.pruning import clone_model
from slimtune.compressors.training.config import KDConfig
from slimtune.compressors.training.distill import Distiller


def snapshot(model: nn.Module) -> nn.Module:
    """A frozen copy of ``model``: same device and weights (pruning masks included), eval mode, no gradients."""
    frozen = clone_model(model).eval()
    for p in frozen.parameters():
        p.requires_grad_(False)
    return frozen


class BornAgain(Distiller):
    """Distillation from the student's own snapshot, refreshed ``config.generations - 1`` times.

    Args:
        student: The model being trained.
        config: The :class:`~slimtune.compressors.training.KDConfig` (``mode: born_again``).
        total_steps: The run's optimizer steps (the generations split them evenly).
    """

    def __init__(self, student: nn.Module, config: KDConfig, total_steps: int) -> None:
        super().__init__(student, snapshot(student), config)
        self.total = total_steps
        self.refreshed = 0  # snapshots taken after the first

    def generation(self, step: int) -> int:
        """The generation (0-based) that optimizer step ``step`` (0-based) belongs to."""
        return step * self.config.generations // max(1, self.total)

    def after_step(self, step: int) -> None:
        """At the start of a new generation: the student as it is now becomes the teacher."""
        if step < self.total and self.generation(step) != self.generation(step - 1):
            self._unhook()  # our recorders must not be copied into the snapshot
            self.teacher = snapshot(self.student)
            self._hook()
            self.refreshed += 1
