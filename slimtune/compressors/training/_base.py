"""The compressor interface, the context training compressors get and the registry of compressors by name.

A *compressor* turns a trained model and a :class:`~slimtune.compressors.CompressionPlan` into the
compressed model: ``compressor(model, plan, example_inputs, context, **params) -> nn.Module``. It never
modifies ``model``. ``oneshot`` prunes at once by the plan's criteria; training compressors (``agp``,
``admm``, ``lottery``, ``slimming``) reach the plan's targets while training on ``context.train_data``.
Every compressor returns what :func:`~slimtune.compressors.compress` returns for the same plan: a
physically smaller model (channel plans, ``context.speedup``) or a masked one, quantized as the plan says.
The final fine-tune (recovery) is not part of a compressor: a trial runs it afterwards.

Example:
    >>> import torch
    >>> from slimtune.compressors import CompressionPlan, trace
    >>> from slimtune.compressors.training import COMPRESSORS, TrainingContext, run_compressor
    >>> from slimtune.examples.digits import digits_cnn
    >>> model, x = digits_cnn(width=8), torch.randn(1, 1, 8, 8)
    >>> plan = CompressionPlan.uniform(trace(model, x), 0.5)
    >>> small = run_compressor(model, plan, x, TrainingContext())
    >>> small.features[0].out_channels
    4
    >>> sorted(COMPRESSORS)[:3]
    ['admm', 'agp', 'lottery']
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from slimtune.compressors.training.config import FinetuneConfig
from slimtune.compressors.training.registry import (
    COMPRESSORS,
    Compressor,
    CompressorEntry,
    check_compressor_params,
    get_compressor,
    register_compressor,
)
from slimtune.errors import CompressorError, PlanConfigError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from slimtune.compressors.graph import ModelGraph
    from slimtune.compressors.plan import CompressionPlan
    from slimtune.compressors.training.finetune import FinetuneResult, TrainHook

__all__ = [
    "COMPRESSORS",
    "Compressor",
    "CompressorEntry",
    "CompressorError",
    "Report",
    "TrainingContext",
    "check_compressor_params",
    "get_compressor",
    "oneshot_plan",
    "register_compressor",
    "run_compressor",
]

Report = Callable[[int, float], Any]
"""``report(step, value)``: receives the evaluated metric during training; a true return value stops the
run early; raising (e.g. ``optuna.TrialPruned``) aborts it."""


@dataclass
class TrainingContext:
    """What a compressor may use besides the model and the plan.

    Args:
        train_data: Re-iterable training batches ``(inputs, targets)`` (a list or a DataLoader); the loop
            moves each batch to the model's device.
        config: The fine-tune configuration; training phases use its optimizer, learning rate and seed
            (their budgets come from the compressor's parameters, defaulting to this config's budget).
        loss_fn: ``loss_fn(outputs, targets)``; None: cross-entropy.
        teacher: The original model when knowledge distillation is on (``config.kd``).
        report: ``report(step, metric)`` during training (needs ``evaluate``); steps count on across
            the training phases of one compression.
        evaluate: ``evaluate(model) -> float``, the metric reported.
        calibration: Batches for data-driven criteria and activation ranges (``compress``'s ``data``).
        graph: ``trace(model, example_inputs)`` when already at hand.
        speedup: Return channel-pruned models physically smaller (True) or masked.
        step_offset: Steps already reported (advanced by :meth:`train`).
        info: What a compressor reports about its run (JSON values; e.g. ADMM's purification:
            ``{"purified": {group: channels}}``); a trial stores it as ``compressor_info``.
    """

    train_data: Iterable[Any] | None = None
    config: FinetuneConfig = field(default_factory=FinetuneConfig)
    loss_fn: Callable[..., torch.Tensor] | None = None
    teacher: nn.Module | None = None
    report: Report | None = None
    evaluate: Callable[[nn.Module], float] | None = None
    calibration: Iterable[Any] | None = None
    graph: ModelGraph | None = None
    speedup: bool = True
    step_offset: int = 0
    info: dict[str, Any] = field(default_factory=dict)

    def require_data(self, compressor: str) -> Iterable[Any]:
        """The training batches; a :class:`CompressorError` naming ``compressor`` when there are none."""
        if self.train_data is None:
            raise CompressorError(
                f"compressor {compressor!r} trains the model while pruning and needs training batches: give "
                "the Task train_data=[(inputs, targets), ...] (or TrainingContext(train_data=...))"
            )
        return self.train_data

    def budget(self, params: Mapping[str, Any]) -> FinetuneConfig:
        """The config of a training phase: this config with the ``epochs`` / ``steps``, ``lr`` and
        ``optimizer`` that ``params`` (a compressor's parameters) set to something other than None
        (precision, memory format, accumulation and clipping stay this config's)."""
        changes = {k: params[k] for k in ("steps", "lr", "optimizer") if params.get(k) is not None}
        if params.get("epochs") is not None and "steps" not in changes:
            changes.update(epochs=params["epochs"], steps=None)
        if not changes:
            return self.config
        try:
            return dataclasses.replace(self.config, **changes)
        except PlanConfigError as e:
            option = e.field.removeprefix("finetune.")
            raise PlanConfigError(e.problem, field=f"plan.compressor_params.{option}") from None

    def train(
        self,
        model: nn.Module,
        compressor: str,
        hooks: Iterable[TrainHook] = (),
        config: FinetuneConfig | None = None,
        start_step: int = 0,
    ) -> FinetuneResult:
        """Run the built-in loop on ``model`` with ``hooks`` (KD and reports as configured), resumed
        at ``start_step`` of the run (see :func:`~slimtune.compressors.training.finetune`)."""
        from slimtune.compressors.training.finetune import finetune

        data = self.require_data(compressor)
        report = None
        if self.report is not None:
            offset, outer = self.step_offset, self.report
            report = lambda step, value: outer(offset + step, value)  # noqa: E731
        result = finetune(
            model,
            data,
            config or self.config,
            self.loss_fn,
            self.teacher,
            report,
            self.evaluate,
            list(hooks),
            start_step,
        )
        self.step_offset += result.steps
        return result


def run_compressor(
    model: nn.Module,
    plan: CompressionPlan | Mapping[str, Any],
    example_inputs: Any,
    context: TrainingContext | None = None,
) -> nn.Module:
    """Compress a copy of ``model`` with the compressor the plan names (``plan.compressor``) and its
    ``plan.compressor_params``. ``model`` is not modified."""
    from slimtune.compressors.plan import CompressionPlan

    if not isinstance(plan, CompressionPlan):
        plan = CompressionPlan.from_dict(plan)
    plan.validate(context.graph if context is not None else None)
    context = context if context is not None else TrainingContext()
    if plan.channel_multiple not in (None, 1) and plan.granularity == "channel":
        from slimtune.compressors.graph import trace

        # the training compressors count channels with the groups' own rounding: give them exact sparsities
        plan = plan.rounded(context.graph if context.graph is not None else trace(model, example_inputs))
    entry = get_compressor(plan.compressor)
    params = check_compressor_params(plan.compressor, plan.compressor_params)
    if entry.trains:
        context.require_data(plan.compressor)
    return entry.fn(model, plan, example_inputs, context, **params)


def oneshot_plan(plan: CompressionPlan, **changes: Any) -> CompressionPlan:
    """A copy of ``plan`` for one-shot compression (``compressor="oneshot"``, no parameters)."""
    return dataclasses.replace(plan, compressor="oneshot", compressor_params={}, **changes)
