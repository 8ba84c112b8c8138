"""The user's side of a search: the trained model, how to evaluate it and how to fine-tune it."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import inspect
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from slimtune import devices
from slimtune.compressors.training import (
    FinetuneConfig,
    FinetuneResult,
    TrainingContext,
    check_compressor_params,
    finetune,
)
from slimtune.errors import ArgumentTypeError, ConfigError, PlanError, SlimtuneError

if TYPE_CHECKING:
    from slimtune.compressors.graph import ModelGraph
    from slimtune.compressors.plan import CompressionPlan

Report = Callable[[int, float], None]
"""``report(step, value)``: passed to a fine-tune function that accepts it; reports an intermediate
metric so Optuna pruners can stop a bad trial (raises ``optuna.TrialPruned`` when they do)."""


@dataclass
class Task:
    """A trained model and what a trial needs to judge its compressed versions.

    Args:
        model: The trained model. Never modified: every trial compresses a copy.
        example_inputs: Inputs with a batch dimension (a tensor or a tuple of tensors), used to
            trace the model and to measure FLOPs and latency.
        evaluate: ``evaluate(model) -> float``, the task's metric (e.g. validation accuracy).
        finetune: Optional ``finetune(model)`` or ``finetune(model, report)`` training the
            compressed model in place (masks and the smaller shapes stay fixed). With ``report``,
            call ``report(step, metric)`` to let Optuna pruners stop bad trials (in studies with
            one objective or weighted objectives that include the metric; elsewhere ``report``
            does nothing).
        calibration: Optional batches (``inputs`` or ``(inputs, targets)``) for data-driven
            pruning criteria (``taylor`` needs targets; ``apoz``, ``mean_activation`` inputs).
        direction: ``"maximize"`` when a higher metric is better, else ``"minimize"``.
        metric_name: Name of the metric in tables and specs (objective ``accuracy`` always means
            this metric).
        name: A name for the task (tables, the sensitivity cache key).
        extra: Free-form data for the user.
        train_data: Optional re-iterable training batches ``(inputs, targets)`` (a list or a
            DataLoader). Without ``finetune``, trials fine-tune with the built-in loop
            (:func:`slimtune.compressors.training.finetune`) on them; training compressors
            (``agp``, ``admm``, ``lottery``, ``slimming``) need them.
        loss_fn: ``loss_fn(outputs, targets)`` of that training (default cross-entropy).
        finetune_config: A :class:`~slimtune.compressors.training.FinetuneConfig` (or a mapping of
            its fields): the built-in loop's budget, optimizer, schedule, seed and KD; a plan's
            ``finetune`` mapping overrides it per trial. A user ``finetune`` function receives the
            effective config when it has a parameter named ``config``.
        compressor: The compressor of trials whose plan leaves the default (``"oneshot"``), e.g.
            ``"admm"`` (see :data:`slimtune.compressors.training.COMPRESSORS`).
        compressor_params: Its parameters.
        device: Where the trials run: ``auto`` (the default: the current CUDA GPU when PyTorch sees
            one, else the CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (see :mod:`slimtune.devices`).
            The search puts a copy of the model, the example inputs and the calibration batches
            there (the task's own objects are left where they are); compression, sensitivity,
            fine-tuning, KD, the training compressors and the measures run there. ``evaluate`` and
            ``finetune`` receive the model **on that device** and move their own batches to it
            (``x.to(slimtune.devices.model_device(model))``); the built-in loop moves each
            ``train_data`` batch itself. A device this machine lacks is an error at the start of
            the search, not in a trial.

    Example:
        >>> import torch
        >>> from slimtune import Task
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
        >>> task = Task(model, x[:1], lambda m: float((m(x).argmax(1) == y).float().mean()))
        >>> 0.0 <= task.evaluate(task.model) <= 1.0
        True
    """

    model: nn.Module
    example_inputs: torch.Tensor | tuple[torch.Tensor, ...]
    evaluate: Callable[[nn.Module], float]
    finetune: Callable[..., Any] | None = None
    calibration: Iterable[Any] | None = None
    direction: str = "maximize"
    metric_name: str = "accuracy"
    name: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    train_data: Iterable[Any] | None = None
    loss_fn: Callable[..., torch.Tensor] | None = None
    finetune_config: FinetuneConfig | Mapping[str, Any] | None = None
    compressor: str = "oneshot"
    compressor_params: dict[str, Any] = field(default_factory=dict)
    device: str | torch.device = devices.DEFAULT

    def __post_init__(self) -> None:
        if not isinstance(self.model, nn.Module):
            raise ArgumentTypeError(f"Task.model must be a torch.nn.Module, got {type(self.model).__name__}")
        if not callable(self.evaluate):
            raise ArgumentTypeError("Task.evaluate must be callable: evaluate(model) -> float")
        if self.finetune is not None and not callable(self.finetune):
            raise ArgumentTypeError("Task.finetune must be callable: finetune(model) or finetune(model, report)")
        if self.direction not in ("maximize", "minimize"):
            raise ConfigError(f"must be 'maximize' or 'minimize', got {self.direction!r}", field="Task.direction")
        if self.calibration is not None and not isinstance(self.calibration, (list, tuple)):
            # criteria may pass over the batches more than once
            self.calibration = list(self.calibration)
        if isinstance(self.train_data, Iterator):  # (not iter(): a DataLoader would start its workers)
            self.train_data = list(self.train_data)  # an iterator: keep its batches for every epoch
        if self.loss_fn is not None and not callable(self.loss_fn):
            raise ArgumentTypeError("Task.loss_fn must be callable: loss_fn(outputs, targets) -> scalar tensor")
        self.device = devices.check_name(self.device, field="Task.device")
        try:
            self.finetune_config = FinetuneConfig.coerce(self.finetune_config)
            check_compressor_params(self.compressor, self.compressor_params)
        except PlanError as e:
            raise PlanError(f"Task: {e}") from None

    def on_device(self, device: torch.device) -> Task:
        """This task with its model, example inputs and calibration batches on ``device``.

        The model is copied there (the task's own model stays where it is and unchanged) unless it is
        already on ``device``; ``train_data`` stays as it is (the fine-tune loop moves each batch).
        """
        device = torch.device(device)
        model = self.model
        if _devices_of(model) != {device}:
            model = copy.deepcopy(model).to(device)
        calibration = None if self.calibration is None else [devices.move(b, device) for b in self.calibration]
        return dataclasses.replace(
            self,
            model=model,
            example_inputs=devices.move(self.example_inputs, device),
            calibration=calibration,
            device=str(device),
        )

    def effective_finetune_config(self, overrides: Mapping[str, Any] | None = None) -> FinetuneConfig:
        """The task's fine-tune config with a plan's ``finetune`` overrides applied."""
        return FinetuneConfig.coerce(self.finetune_config).merged(overrides)

    def default_compressor(self, plan: CompressionPlan) -> CompressionPlan:
        """``plan`` with the task's compressor when the plan leaves the default (``oneshot``)."""
        if plan.compressor != "oneshot" or plan.compressor_params or self.compressor == "oneshot":
            return plan
        return dataclasses.replace(plan, compressor=self.compressor, compressor_params=dict(self.compressor_params))

    def training_context(
        self,
        overrides: Mapping[str, Any] | None = None,
        report: Report | None = None,
        graph: ModelGraph | None = None,
    ) -> TrainingContext:
        """What a compressor gets: the training batches, the effective config, the original model as
        teacher when KD is on, reports of the task's metric (when ``report`` is given)."""
        config = self.effective_finetune_config(overrides)
        return TrainingContext(
            train_data=self.train_data,
            config=config,
            loss_fn=self.loss_fn,
            teacher=self.model if config.kd is not None else None,
            report=report,
            evaluate=self.evaluate if report is not None else None,
            calibration=self.calibration,
            graph=graph,
        )

    def run_finetune(
        self, model: nn.Module, report: Report | None = None, overrides: Mapping[str, Any] | None = None
    ) -> FinetuneResult | None:
        """Fine-tune a compressed model: the user's ``finetune`` if given, else the built-in loop on
        ``train_data`` (with the effective config; KD from the original model), else nothing.

        A user function that requires a second argument gets ``report`` (a no-op where reports cannot
        be used, e.g. in multi-objective studies); one with a parameter named ``config`` gets the
        effective :class:`~slimtune.compressors.training.FinetuneConfig` (task config ⊕ ``overrides``).
        The built-in loop reports the task's metric every ``eval_every`` steps (default each epoch)
        when ``report`` is given.
        """
        if self.finetune is not None:
            kwargs = {"config": self.effective_finetune_config(overrides)} if _accepts(self.finetune, "config") else {}
            if _requires_two(self.finetune):
                self.finetune(model, report if report is not None else _no_report, **kwargs)
            else:
                self.finetune(model, **kwargs)
            return None
        if self.train_data is None:
            return None
        ctx = self.training_context(overrides, report)
        return finetune(model, self.train_data, ctx.config, self.loss_fn, ctx.teacher, report, ctx.evaluate)

    def fingerprint(self) -> str:
        """A hash of the model's structure and weights and the metric name (cache key)."""
        h = hashlib.sha256()
        h.update((self.name or "").encode())
        h.update(self.metric_name.encode())
        h.update(repr(self.model).encode())
        for key, value in self.model.state_dict().items():
            h.update(key.encode())
            if isinstance(value, torch.Tensor):
                value = value.detach().cpu()
                h.update((value if value.dtype != torch.bfloat16 else value.float()).contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


def _devices_of(model: nn.Module) -> set[torch.device]:
    """The devices of a model's parameters and buffers (an index-less CUDA device counts as the current one)."""
    out = set()
    for t in [*model.parameters(), *model.buffers()]:
        d = t.device
        if d.type == "cuda" and d.index is None:
            d = torch.device("cuda", torch.cuda.current_device())
        out.add(d)
    return out


def _no_report(step: int, value: float) -> None:
    """Reports go nowhere (multi-objective studies cannot prune trials)."""


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    """True when ``fn`` has a parameter called ``name`` (or takes ``**kwargs``)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind == p.VAR_KEYWORD for p in params)


def _requires_two(fn: Callable[..., Any]) -> bool:
    """True when ``fn`` needs a second positional argument (one without a default, not ``config``)."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    required = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
    return len([p for p in required[1:] if p.name != "config"]) >= 1


def evaluate_original(task: Task) -> float:
    """``task.evaluate(task.model)``, with a clear error when it fails or is not a finite number."""
    try:
        value = float(task.evaluate(task.model))
    except Exception as e:
        raise SlimtuneError(f"task.evaluate fails on the original model: {type(e).__name__}: {e}") from e
    if not math.isfinite(value):
        raise SlimtuneError(f"task.evaluate returns {value} on the original model; it must return a finite number")
    return value
