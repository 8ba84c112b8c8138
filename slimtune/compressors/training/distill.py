"""Knowledge distillation from the original model (teacher) to its compressed version (student), and the
distiller of each ``kd.mode`` (:func:`make_distiller`).

Three kinds of knowledge, weighted by a :class:`~slimtune.compressors.training.KDConfig`:

- **response-based** (Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network", 2015,
  https://arxiv.org/abs/1503.02531): ``T² · KL(softmax(t/T) ‖ softmax(s/T))`` on the logits, averaged over
  the batch; mixed with the task loss as ``(1 - alpha) · task + alpha · kd``;
- **feature-based** (Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015,
  https://arxiv.org/abs/1412.6550): the mean squared error between the outputs of *hint* layers of student
  and teacher; where pruning left the student with fewer channels, a learned 1×1 convolution (a linear map
  for 2-D features) brings them to the teacher's width, trained with the student;
- **relation-based** (Park, Kim, Lu, Cho, "Relational Knowledge Distillation", CVPR 2019,
  https://arxiv.org/abs/1904.05068): the pairwise distances between the samples of a batch, each divided by
  its mean, compared with the Huber loss.

The teacher runs on the student's device (:func:`~slimtune.compressors.training.finetune` refuses a
teacher elsewhere), under the same autocast as the student when ``amp`` is on; the adapters are made in
the student's device and parameter dtype from a probe batch run in full precision.

This is ``kd.mode: offline``. The other modes are distillers of their own, built by :func:`make_distiller`
with the interface :class:`KDMode`: ``online`` (:mod:`~slimtune.compressors.training.online`), ``born_again``
(:mod:`~slimtune.compressors.training.born_again`) and ``self``
(:mod:`~slimtune.compressors.training.self_distill`).

Example:
    >>> import torch
    >>> from slimtune.compressors.training.distill import response_loss
    >>> s = torch.tensor([[0.0, 0.0]])
    >>> t = torch.tensor([[0.0, 2.0 * torch.log(torch.tensor(3.0))]])  # softmax(t / 2) = [0.25, 0.75]
    >>> expected = 4 * (0.25 * torch.log(torch.tensor(0.5)) + 0.75 * torch.log(torch.tensor(1.5)))
    >>> bool(torch.isclose(response_loss(s, t, temperature=2.0), expected))
    True
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from slimtune.compressors._outputs import logits
from slimtune.errors import PlanConfigError

if TYPE_CHECKING:
    from torch.utils.hooks import RemovableHandle

    from slimtune.compressors.training.config import KDConfig


def response_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T² · KL(softmax(teacher/T) ‖ softmax(student/T))``, averaged over the batch."""
    t = temperature
    log_p_s = F.log_softmax(student_logits / t, dim=1)
    p_t = F.softmax(teacher_logits / t, dim=1)
    return F.kl_div(log_p_s, p_t, reduction="batchmean") * t * t


def relation_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Huber loss between the mean-normalised pairwise distance matrices of two batches of embeddings."""
    return F.smooth_l1_loss(_distances(student.flatten(1)), _distances(teacher.flatten(1)))


def _distances(e: torch.Tensor) -> torch.Tensor:
    d = torch.cdist(e, e)
    off = ~torch.eye(len(e), dtype=torch.bool, device=e.device)
    mean = d[off].mean().clamp_min(1e-12) if off.any() else d.new_tensor(1.0)
    return d / mean


def hint_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared error between (adapted) student features and teacher features."""
    return F.mse_loss(student, teacher)


def make_adapter(student_channels: int, teacher_channels: int, dims: int) -> nn.Module:
    """A learned map from the student's channels to the teacher's: 1×1 conv (4-D/3-D features) or linear."""
    if dims == 4:
        return nn.Conv2d(student_channels, teacher_channels, 1, bias=False)
    if dims == 3:
        return nn.Conv1d(student_channels, teacher_channels, 1, bias=False)
    return nn.Linear(student_channels, teacher_channels, bias=False)


class KDMode:
    """What :func:`~slimtune.compressors.training.finetune` asks of the distiller of a ``kd.mode``.

    :meth:`attach` before the first step, :meth:`loss` for each batch (inside autocast under ``amp``),
    :meth:`parameters` trained with the student by its optimizer, :meth:`peer_parameters` trained by an
    optimizer of their own (same settings and schedule), :meth:`after_step` after each optimizer step and
    :meth:`detach` at the end. Whatever a distiller creates belongs on the student's device.
    """

    def attach(self, sample_inputs: tuple[torch.Tensor, ...]) -> None:
        """Before the first step; ``sample_inputs``: one batch's inputs, on the student's device."""

    def loss(
        self,
        inputs: tuple[torch.Tensor, ...],
        student_out: Any,
        task_loss: torch.Tensor,
        targets: Any = None,
    ) -> torch.Tensor:
        """The training loss of one batch, given the student's outputs on ``inputs`` and its task loss."""
        raise NotImplementedError

    def parameters(self) -> list[nn.Parameter]:
        """Parameters trained with the student, by its optimizer (e.g. adapters, auxiliary heads)."""
        return []

    def peer_parameters(self) -> list[nn.Parameter]:
        """Parameters trained alongside the student by an optimizer of their own (e.g. a peer model)."""
        return []

    def after_step(self, step: int) -> None:
        """After optimizer step ``step`` (1-based) of the run."""

    def detach(self) -> None:
        """After the last step: hooks removed, borrowed modules restored."""


class Distiller(KDMode):
    """The KD terms of one training run from a frozen teacher (``kd.mode: offline``): hooks on hint
    layers, adapters, and the combined loss.

    Args:
        student: The model being trained.
        teacher: The original model (run in eval mode without gradients; restored afterwards).
        config: The :class:`~slimtune.compressors.training.KDConfig`.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, config: KDConfig) -> None:
        self.student, self.teacher, self.config = student, teacher, config
        self.adapters = nn.ModuleDict()
        self._handles: list[RemovableHandle] = []
        self._feats: dict[str, dict[str, torch.Tensor]] = {"s": {}, "t": {}}
        self._layers: list[str] = []
        self._teacher_mode = teacher.training

    # ------------------------------------------------------------------ lifecycle
    def attach(self, sample_inputs: tuple[torch.Tensor, ...]) -> None:
        """Hook the hint and relation layers; build adapters from one probe batch."""
        cfg = self.config
        self._teacher_mode = self.teacher.training
        self.teacher.eval()
        s_mods, t_mods = dict(self.student.named_modules()), dict(self.teacher.named_modules())
        if cfg.feature > 0:
            names = cfg.feature_layers
            if names is None:
                names = tuple(n for n, m in t_mods.items() if isinstance(m, nn.modules.conv._ConvNd) and n in s_mods)
            for n in names:
                if n not in s_mods or n not in t_mods:
                    where = "student" if n not in s_mods else "teacher"
                    raise PlanConfigError(f"no module {n!r} in the {where}", field="finetune.kd.feature_layers")
            self._layers = list(names)
        if cfg.relation > 0 and cfg.relation_layer is not None:
            n = cfg.relation_layer
            if n not in s_mods or n not in t_mods:
                raise PlanConfigError(
                    f"no module {n!r} in both student and teacher", field="finetune.kd.relation_layer"
                )
        self._hook()
        if self._layers:
            mode = self.student.training
            self.student.eval()
            with torch.no_grad():
                self.student(*sample_inputs)
                self.teacher(*sample_inputs)
            self.student.train(mode)
            for n in self._layers:
                fs, ft = self._feats["s"][n], self._feats["t"][n]
                if fs.shape[2:] != ft.shape[2:]:
                    raise PlanConfigError(
                        f"layer {n!r} gives student features of shape {tuple(fs.shape)} but teacher features of "
                        f"shape {tuple(ft.shape)}; only channel counts may differ",
                        field="finetune.kd.feature_layers",
                    )
                if fs.shape[1] != ft.shape[1]:  # on the student's device, in its dtype
                    adapter = make_adapter(fs.shape[1], ft.shape[1], fs.dim()).to(device=fs.device, dtype=fs.dtype)
                    self.adapters[n.replace(".", "__")] = adapter

    def _hook(self) -> None:
        """Record the outputs of the hint and relation layers of student and teacher."""
        cfg = self.config
        watched = list(self._layers)
        if cfg.relation > 0 and cfg.relation_layer is not None:
            watched.append(cfg.relation_layer)
        s_mods, t_mods = dict(self.student.named_modules()), dict(self.teacher.named_modules())
        for key, mods in (("s", s_mods), ("t", t_mods)):
            for n in dict.fromkeys(watched):
                self._handles.append(mods[n].register_forward_hook(self._recorder(key, n)))

    def _unhook(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._feats = {"s": {}, "t": {}}

    def detach(self) -> None:
        self._unhook()
        self.teacher.train(self._teacher_mode)

    def parameters(self) -> list[nn.Parameter]:
        """The adapters' parameters (trained with the student)."""
        return list(self.adapters.parameters())

    def _recorder(self, key: str, name: str) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            self._feats[key][name] = output

        return hook

    # ------------------------------------------------------------------ loss
    def loss(
        self,
        inputs: tuple[torch.Tensor, ...],
        student_out: torch.Tensor,
        task_loss: torch.Tensor,
        targets: Any = None,
    ) -> torch.Tensor:
        """The training loss with the KD terms, given the student's outputs on ``inputs`` (``targets``: the
        batch's, for modes that train something else on them)."""
        cfg = self.config
        with torch.no_grad():
            teacher_out = logits(self.teacher(*inputs))
        student_out = logits(student_out)
        loss = (1.0 - cfg.alpha) * task_loss
        if cfg.alpha > 0:
            loss = loss + cfg.alpha * response_loss(student_out, teacher_out, cfg.temperature)
        if cfg.feature > 0 and self._layers:
            terms = []
            for n in self._layers:
                fs = self._feats["s"][n]
                key = n.replace(".", "__")
                if key in self.adapters:
                    fs = self.adapters[key](fs)
                terms.append(hint_loss(fs, self._feats["t"][n]))
            loss = loss + cfg.feature * torch.stack(terms).mean()
        if cfg.relation > 0:
            n = cfg.relation_layer
            es = self._feats["s"][n] if n is not None else student_out
            et = self._feats["t"][n] if n is not None else teacher_out
            loss = loss + cfg.relation * relation_loss(es, et)
        return loss
