"""Self-distillation through auxiliary exits (``kd.mode: self``): the deepest exit teaches shallower ones.

Zhang, Song, Gao, Chen, Bao, Ma, "Be Your Own Teacher: Improve the Performance of Convolutional Neural
Networks via Self Distillation", ICCV 2019 (https://arxiv.org/abs/1905.08094): the network is cut into
sections; after each section but the last a small head (a bottleneck, pooling and a fully connected
classifier) makes a shallow exit. Each shallow exit ``i`` learns from three sources,
``(1 - alpha) · CE(q_i, y) + alpha · KL(q_C ‖ q_i) + lambda · ‖F_i − F_C‖²``: the labels, the deepest
exit's softened predictions ``q_C`` and, as a hint, the deepest exit's features ``F_C``; the deepest exit
learns from the labels. The extra supervision trains the shared early layers; the heads are dropped after
training, so the deployed network is the original one.

Here the deepest exit is the model itself (its output, and the input of the layer that produces it as
``F_C``: the penultimate features). Exits go on the modules ``kd.feature_layers`` names, by default the last
module at each spatial resolution of the model's feature maps but the deepest one (the ends of its stages).
A head is a 1×1 convolution to the width of ``F_C``, BatchNorm, ReLU, global average pooling and a linear
classifier (a linear map and ReLU for 2-D features); the hint is the mean squared error between the pooled
head features and ``F_C``. The heads live outside the model (forward hooks record the feature maps; the
heads are trained by the student's optimizer), are made on the model's device in its parameter dtype,
initialised from the run's seed, and are dropped at the end of the run: the model's ``state_dict`` and
outputs keep their form. Defaults are the authors' (``alpha`` 0.3, ``T`` 3, hint weight ``feature`` 0.03).
The KL terms are ``T²``-scaled (Hinton's), as in the other modes; the deepest exit's weight is 1 (the
paper's sum gives it ``1 - alpha``) and the teacher's predictions and features are detached.

Example:
    >>> import torch
    >>> from slimtune.compressors.training import FinetuneConfig, finetune
    >>> from slimtune.examples.digits import digits_cnn
    >>> _ = torch.manual_seed(0)
    >>> model = digits_cnn(width=8)
    >>> keys = list(model.state_dict())
    >>> data = [(torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))) for _ in range(2)]
    >>> finetune(model, data, FinetuneConfig(steps=3, kd={"mode": "self"})).steps
    3
    >>> list(model.state_dict()) == keys  # the exits' heads are gone
    True
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from slimtune.compressors._outputs import logits
from slimtune.compressors.training.distill import KDMode, response_loss
from slimtune.errors import PlanConfigError

if TYPE_CHECKING:
    from torch.utils.hooks import RemovableHandle

    from slimtune.compressors.training.config import KDConfig

logger = logging.getLogger("slimtune")


class ExitHead(nn.Module):
    """An auxiliary exit: bottleneck to ``width`` features, pooling, linear classifier.

    Args:
        channels: Channels of the feature map it reads (``(B, C, H, W)``, or ``(B, C)`` features).
        width: Width of its features (that of the deepest exit's, so the hint can compare them).
        classes: Classes of the classifier.
        dims: 4 for feature maps, 2 for feature vectors.
    """

    def __init__(self, channels: int, width: int, classes: int, dims: int) -> None:
        super().__init__()
        if dims == 4:
            self.neck: nn.Module = nn.Sequential(
                nn.Conv2d(channels, width, 1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
            )
        else:
            self.neck = nn.Sequential(nn.Linear(channels, width), nn.ReLU(inplace=True))
        self.fc = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(features, logits)`` of the exit."""
        h = self.neck(x)
        return h, self.fc(h)


def find_exits(model: nn.Module, sample_inputs: tuple[torch.Tensor, ...]) -> list[str]:
    """The modules that get an exit by default: the last module (in the order they finish) with a 4-D
    output at each spatial resolution, but the resolution of the model's last feature map.

    Example:
        >>> import torch
        >>> from slimtune.examples.digits import digits_cnn
        >>> find_exits(digits_cnn(width=8).eval(), (torch.randn(2, 1, 8, 8),))  # 8×8 and 4×4 stages; 2×2 last
        ['features.5', 'features.12']
    """
    probe = _Probe(model)
    try:
        with torch.no_grad():
            model(*sample_inputs)
    finally:
        probe.remove()
    return _stage_ends(probe.calls)


def _stage_ends(calls: list[tuple[str, Any, Any]]) -> list[str]:
    """:func:`find_exits` from the recorded ``(name, output, input)`` of a forward pass."""
    maps = [(name, tuple(out.shape[2:])) for name, out, _ in calls if _is_tensor(out, 4)]
    if not maps:
        return []
    last_at = {res: name for name, res in maps}  # later calls overwrite: the last one at each resolution
    deepest = maps[-1][1]
    return [name for name, res in maps if res != deepest and last_at[res] == name]


class SelfDistiller(KDMode):
    """Be Your Own Teacher's exits and losses for one training run.

    Args:
        student: The model being trained.
        config: The :class:`~slimtune.compressors.training.KDConfig` (``mode: self``).
        loss_fn: The task loss ``loss_fn(logits, targets)``, applied to each exit's logits (a tensor).
        seed: Seed of the heads' initial weights.
    """

    def __init__(
        self, student: nn.Module, config: KDConfig, loss_fn: Callable[..., torch.Tensor], seed: int = 0
    ) -> None:
        self.student, self.config, self.loss_fn, self.seed = student, config, loss_fn, seed
        self.heads = nn.ModuleDict()
        self.exits: list[str] = []
        self.hint = False
        self._handles: list[RemovableHandle] = []
        self._feats: dict[str, torch.Tensor] = {}
        self._deepest: torch.Tensor | None = None

    # ------------------------------------------------------------------ lifecycle
    def attach(self, sample_inputs: tuple[torch.Tensor, ...]) -> None:
        """Find the exits and the deepest features from one probe batch; build the heads; hook the model."""
        cfg, model = self.config, self.student
        mode = model.training
        model.eval()
        probe = _Probe(model)
        try:
            with torch.no_grad():
                out = logits(model(*sample_inputs))
        finally:
            probe.remove()
            model.train(mode)
        if out.dim() != 2:
            raise PlanConfigError(
                f"mode 'self' trains auxiliary classifiers and needs the model's class logits of shape (batch, "
                f"classes); the model gives shape {tuple(out.shape)}",
                field="finetune.kd.mode",
            )
        outputs = {name: o for name, o, _ in probe.calls}
        names = list(cfg.feature_layers) if cfg.feature_layers is not None else _stage_ends(probe.calls)
        modules = dict(model.named_modules())
        for n in names:
            if n not in modules or not n:
                raise PlanConfigError(f"no module {n!r} in the model", field="finetune.kd.feature_layers")
            o = outputs.get(n)
            if not (_is_tensor(o, 4) or _is_tensor(o, 2)):
                got = "no output (it did not run)" if n not in outputs else f"{_describe(o)}"
                raise PlanConfigError(
                    f"an exit reads a feature map (batch, channels, height, width) or features (batch, channels); "
                    f"module {n!r} gives {got}",
                    field="finetune.kd.feature_layers",
                )
        if not names:
            raise PlanConfigError(
                "mode 'self' found no intermediate feature map to put an exit on (the model's 4-D outputs have a "
                "single spatial resolution); name the modules in kd.feature_layers",
                field="finetune.kd.feature_layers",
            )
        # the deepest exit's features: the input of the layer that outputs the logits
        last = [(n, x) for n, o, x in probe.calls if o is out and n]
        deepest = last[-1] if last else None
        width = None
        if deepest is not None and _is_tensor(deepest[1], 2):
            width = deepest[1].shape[1]
        self.hint = cfg.feature > 0 and width is not None
        if cfg.feature > 0 and width is None:
            logger.warning(
                "finetune.kd.feature: mode 'self' finds no layer whose input is the model's penultimate features "
                "(batch, features) and output its logits; the exits train without the hint term"
            )
        ref = outputs[names[0]]
        with torch.random.fork_rng(devices=[]):  # the heads' weights come from the run's seed, on any device
            torch.default_generator.manual_seed(self.seed)
            for n in names:
                o = outputs[n]
                self.heads[_key(n)] = ExitHead(o.shape[1], width or o.shape[1], out.shape[1], o.dim())
        self.heads.to(device=ref.device, dtype=ref.dtype).train()
        self.exits = names
        for n in names:
            self._handles.append(modules[n].register_forward_hook(self._recorder(n)))
        if self.hint and deepest is not None:
            self._handles.append(modules[deepest[0]].register_forward_hook(self._deepest_recorder()))

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._feats, self._deepest = {}, None

    def parameters(self) -> list[nn.Parameter]:
        """The heads' parameters (trained with the student, dropped after the run)."""
        return list(self.heads.parameters())

    # closures, not bound methods: a copy of the model (``clone_model``) shares them instead of copying us
    def _recorder(self, name: str) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            self._feats[name] = output

        return hook

    def _deepest_recorder(self) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            self._deepest = args[0]

        return hook

    # ------------------------------------------------------------------ loss
    def loss(
        self,
        inputs: tuple[torch.Tensor, ...],
        student_out: Any,
        task_loss: torch.Tensor,
        targets: Any = None,
    ) -> torch.Tensor:
        """``task_loss`` plus, per exit, ``(1 - alpha) · task + alpha · T² · KL(deepest_T ‖ exit_T)
        + feature · hint``."""
        cfg = self.config
        teacher = logits(student_out).detach()
        target = self._deepest.detach() if self.hint and self._deepest is not None else None
        loss = task_loss
        for n in self.exits:
            h, z = self.heads[_key(n)](self._feats[n])
            term = (1.0 - cfg.alpha) * self.loss_fn(z, targets)
            if cfg.alpha > 0:
                term = term + cfg.alpha * response_loss(z, teacher, cfg.temperature)
            if target is not None:
                term = term + cfg.feature * F.mse_loss(h, target.reshape(h.shape))
            loss = loss + term
        return loss


class _Probe:
    """Forward hooks on every submodule recording ``(name, output, first input)`` in the order modules finish."""

    def __init__(self, model: nn.Module) -> None:
        self.calls: list[tuple[str, Any, Any]] = []
        self.handles = [
            module.register_forward_hook(self._hook(name)) for name, module in model.named_modules() if name
        ]

    def _hook(self, name: str) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            self.calls.append((name, output, args[0] if args else None))

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _is_tensor(value: Any, dims: int) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() == dims and value.is_floating_point()


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"


def _key(name: str) -> str:
    return name.replace(".", "__")
