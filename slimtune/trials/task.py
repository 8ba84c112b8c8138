"""The user's side of a search: the trained model, how to evaluate it and how to fine-tune it."""

from __future__ import annotations

import hashlib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
import torch.nn as nn

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

    def __post_init__(self) -> None:
        if not isinstance(self.model, nn.Module):
            raise TypeError(f"Task.model must be a torch.nn.Module, got {type(self.model).__name__}")
        if not callable(self.evaluate):
            raise TypeError("Task.evaluate must be callable: evaluate(model) -> float")
        if self.finetune is not None and not callable(self.finetune):
            raise TypeError("Task.finetune must be callable: finetune(model) or finetune(model, report)")
        if self.direction not in ("maximize", "minimize"):
            raise ValueError(f"Task.direction must be 'maximize' or 'minimize', got {self.direction!r}")
        if self.calibration is not None and not isinstance(self.calibration, (list, tuple)):
            # criteria may pass over the batches more than once
            self.calibration = list(self.calibration)

    def run_finetune(self, model: nn.Module, report: Report | None = None) -> None:
        """Call the fine-tune function; one that requires a second argument gets ``report``
        (a no-op where reports cannot be used, e.g. in multi-objective studies)."""
        if self.finetune is None:
            return
        if _requires_two(self.finetune):
            self.finetune(model, report if report is not None else _no_report)
        else:
            self.finetune(model)

    def fingerprint(self) -> str:
        """A hash of the model's structure and weights and the metric name (cache key)."""
        h = hashlib.sha256()
        h.update((self.name or "").encode())
        h.update(self.metric_name.encode())
        h.update(repr(self.model).encode())
        for key, value in self.model.state_dict().items():
            h.update(key.encode())
            if isinstance(value, torch.Tensor):
                h.update(value.detach().cpu().contiguous().numpy().tobytes() if value.dtype != torch.bfloat16 else value.float().numpy().tobytes())
        return h.hexdigest()[:16]


def _no_report(step: int, value: float) -> None:
    """Reports go nowhere (multi-objective studies cannot prune trials)."""


def _requires_two(fn: Callable[..., Any]) -> bool:
    """True when ``fn`` needs a second positional argument (one without a default)."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    required = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
    return len(required) >= 2
