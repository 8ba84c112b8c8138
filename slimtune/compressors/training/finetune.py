"""The built-in fine-tune loop: :func:`finetune`, used by every trial and by the training compressors.

A run lasts ``config.epochs`` passes or ``config.steps`` optimizer steps over re-iterable batches
``(inputs, targets)``, with the optimizer and learning-rate schedule of the :class:`FinetuneConfig`.
Compression stays in force: ``torch.nn.utils.prune`` masks keep pruned weights at zero (the optimizer
only moves ``weight_orig``), weights that are exactly zero at the start stay zero (``freeze_zeros``) and
fake-quantizers stay in place, training through their straight-through estimators. The run is
deterministic for a seed (batch order and in-model randomness; the global RNG state is restored).

A :class:`TrainHook` adds a penalty to the loss or acts after each step: the training compressors (AGP,
ADMM, lottery ticket, network slimming) are hooks on this loop. Knowledge distillation from a teacher
follows ``config.kd`` (:mod:`~slimtune.compressors.training.distill`). ``report(step, metric)`` receives
``evaluate(model)`` every ``config.eval_every`` steps (default: every epoch); a true return value stops the
run early (see :func:`early_stopping`) and an exception (``optuna.TrialPruned``) aborts it.

Example:
    >>> import torch
    >>> from slimtune.compressors.training import FinetuneConfig, finetune
    >>> _ = torch.manual_seed(0)
    >>> x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
    >>> model = torch.nn.Linear(4, 2)
    >>> data = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)]
    >>> res = finetune(model, data, FinetuneConfig(steps=20, optimizer="adam", lr=0.05))
    >>> res.steps, res.losses[-1] < res.losses[0]
    (20, True)
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from slimtune.compressors._outputs import default_loss
from slimtune.compressors.training.config import FinetuneConfig
from slimtune.errors import ArgumentError, ArgumentTypeError

if TYPE_CHECKING:
    from slimtune.compressors.training._base import Report


class TrainHook:
    """Something a training compressor does during :func:`finetune`; every method is optional.

    Methods are called in this order: ``start`` once, then per step ``penalty`` (added to the loss),
    ``after_backward`` (gradients may be edited), ``after_step`` (weights may be edited), and ``end`` once.
    ``extra_parameters`` are trained with the model (e.g. learned adapters).
    """

    def start(self, model: nn.Module, total_steps: int) -> None:
        """Before the first step; ``total_steps`` is the run's length."""

    def penalty(self, model: nn.Module, step: int) -> torch.Tensor | None:
        """A term added to the loss at ``step`` (0-based), or None."""
        return None

    def after_backward(self, model: nn.Module, step: int) -> None:
        """After ``loss.backward()``, before the optimizer step."""

    def after_step(self, model: nn.Module, step: int) -> None:
        """After the optimizer step; ``step`` counts the steps done (1-based)."""

    def end(self, model: nn.Module) -> None:
        """After the last step."""

    def extra_parameters(self) -> list[nn.Parameter]:
        return []


class SLBAnnealing(TrainHook):
    """Anneals the softmax temperature of the model's ``slb`` layers over a run (added by
    :func:`finetune` when ``config.slb_final_temperature`` is set and the model has such layers).

    Each layer's temperature falls geometrically from its value at the start of the run, ``T0``, to
    ``final`` after the last step: ``T(k) = T0 · (final / T0) ** (k / total)`` after step ``k``
    (a layer already at or below ``final`` keeps its temperature). At the end every layer is set
    to ``T = 0``: its forward weight is then each weight's argmax candidate in training mode too,
    the network evaluation and export use.
    """

    def __init__(self, final: float) -> None:
        self.final = float(final)
        self.layers: list[tuple[nn.Module, float]] = []
        self.total = 0

    def start(self, model: nn.Module, total_steps: int) -> None:
        from slimtune.compressors.quantization.algorithms.slb import slb_layers

        self.layers = [(w, float(w.slb_temperature)) for w in slb_layers(model)]
        self.total = total_steps

    def after_step(self, model: nn.Module, step: int) -> None:
        for wrapper, t0 in self.layers:
            if t0 > self.final:
                wrapper.slb_temperature.fill_(t0 * (self.final / t0) ** (step / self.total))

    def end(self, model: nn.Module) -> None:
        for wrapper, _ in self.layers:
            wrapper.slb_temperature.fill_(0.0)


@dataclass
class FinetuneResult:
    """What a :func:`finetune` run did.

    Attributes:
        steps: Optimizer steps taken.
        losses: The training loss of every step (KD and hook penalties included).
        reports: ``(step, metric)`` of every evaluation passed to ``report``.
        stopped_early: The report callback stopped the run.
        seconds: Wall time of the run.
    """

    steps: int = 0
    losses: list[float] = field(default_factory=list)
    reports: list[tuple[int, float]] = field(default_factory=list)
    stopped_early: bool = False
    seconds: float = 0.0


def finetune(
    model: nn.Module,
    data: Iterable[Any],
    config: FinetuneConfig | dict[str, Any] | None = None,
    loss_fn: Callable[..., torch.Tensor] | None = None,
    teacher: nn.Module | None = None,
    report: Report | None = None,
    evaluate: Callable[[nn.Module], float] | None = None,
    hooks: Sequence[TrainHook] = (),
    start_step: int = 0,
) -> FinetuneResult:
    """Train ``model`` in place on ``data`` and return what happened.

    Args:
        model: The (compressed) model; left in the training mode it had.
        data: Re-iterable batches ``(inputs, targets)``; ``inputs`` a tensor or a tuple of tensors.
        config: A :class:`FinetuneConfig` (or a mapping of its fields); None: the defaults.
        loss_fn: ``loss_fn(outputs, targets) -> scalar``; None: cross-entropy on the outputs (a tensor, or
            the ``logits`` of a Hugging Face ``ModelOutput``).
        teacher: The teacher for knowledge distillation (used when ``config.kd`` is set; never trained).
        report: ``report(step, metric)``, called with ``evaluate(model)`` every ``config.eval_every``
            steps (default: each epoch) and at the end; a true return value stops the run.
        evaluate: ``evaluate(model) -> float``; reports need it.
        hooks: :class:`TrainHook` objects (training compressors).
        start_step: Resume a run of the config's length at this step (0: a fresh run): it takes the
            remaining ``total - start_step`` steps at the learning rates the schedule gives those
            steps (lottery rewinding resumes training at the rewind step). Hooks, reports and the
            result count the steps of this call.
    """
    config = FinetuneConfig.coerce(config)
    loss_fn = loss_fn or default_loss
    if isinstance(start_step, bool) or not isinstance(start_step, int) or start_step < 0:
        raise ArgumentError(f"finetune: start_step must be an integer >= 0, got {start_step!r}", field="start_step")
    per_epoch = _count(data)
    full = config.total_steps(per_epoch) if per_epoch else 0
    total = max(0, full - start_step)
    result = FinetuneResult()
    start_time = time.perf_counter()
    was_training = model.training
    distiller = None
    if teacher is not None and config.kd is not None and total > 0:
        from slimtune.compressors.training.distill import Distiller

        distiller = Distiller(model, teacher, config.kd)
    eval_every = config.eval_every or per_epoch
    if config.slb_final_temperature is not None and _has_slb(model):
        hooks = [*hooks, SLBAnnealing(config.slb_final_temperature)]
    with torch.random.fork_rng(devices=[]), _num_threads(config.num_threads), _attached(distiller, data):
        torch.manual_seed(config.seed)
        for hook in hooks:
            hook.start(model, total)
        params = [p for p in model.parameters() if p.requires_grad]
        params += [p for h in hooks for p in h.extra_parameters()]
        if distiller is not None:
            params += distiller.parameters()
        optimizer = _optimizer(config, params) if total > 0 else None
        schedule = _schedule(config, full)
        keeper = _ZeroKeeper(model) if config.freeze_zeros else None
        masked = _mask_hooks(model)
        model.train()
        for step, batch in enumerate(_batches(data, config, total)):
            for group in optimizer.param_groups:  # type: ignore[union-attr]
                group["lr"] = config.lr * schedule(start_step + step)
            # recompute masked weights: a fake-quantizer reads its layer's weight without calling the
            # layer, so the layer's own pre-hook would not
            for module, hook in masked:
                hook(module, None)
            inputs, targets = _split(batch)
            outputs = model(*inputs)
            loss = loss_fn(outputs, targets)
            if distiller is not None:
                loss = distiller.loss(inputs, outputs, loss)
            for hook in hooks:
                extra = hook.penalty(model, step)
                if extra is not None:
                    loss = loss + extra
            optimizer.zero_grad(set_to_none=True)  # type: ignore[union-attr]
            loss.backward()
            for hook in hooks:
                hook.after_backward(model, step)
            optimizer.step()  # type: ignore[union-attr]
            if keeper is not None:
                keeper.apply()
            result.steps = step + 1
            result.losses.append(float(loss.detach()))
            for hook in hooks:
                hook.after_step(model, step + 1)
            last = step + 1 == total
            if report is not None and evaluate is not None and ((step + 1) % eval_every == 0 or last):
                _refresh_masks(model)
                value = float(evaluate(model))
                model.train()
                result.reports.append((step + 1, value))
                if report(step + 1, value):
                    result.stopped_early = not last
                    break
        for hook in hooks:
            hook.end(model)
    _refresh_masks(model)
    model.train(was_training)
    result.seconds = time.perf_counter() - start_time
    return result


def early_stopping(patience: int, maximize: bool = True, then: Report | None = None) -> Report:
    """A report callback that stops a run after ``patience`` evaluations without improvement.

    ``then(step, value)`` (e.g. a trial's reporter) is called first and may itself stop or abort the run.

    Example:
        >>> stop = early_stopping(patience=2)
        >>> [bool(stop(s, v)) for s, v in enumerate([0.5, 0.6, 0.6, 0.55])]
        [False, False, False, True]
    """
    best = [-math.inf]
    waited = [0]

    def report(step: int, value: float) -> bool:
        if then is not None and then(step, value):
            return True
        score = value if maximize else -value
        if score > best[0]:
            best[0], waited[0] = score, 0
            return False
        waited[0] += 1
        return waited[0] >= patience

    return report


# ---------------------------------------------------------------------- helpers
def _has_slb(model: nn.Module) -> bool:
    from slimtune.compressors.quantization.algorithms.slb import slb_layers

    return bool(slb_layers(model))


def _count(data: Iterable[Any]) -> int:
    try:
        return len(data)  # type: ignore[arg-type]
    except TypeError:
        return sum(1 for _ in data)


def _batches(data: Iterable[Any], config: FinetuneConfig, total: int) -> Iterator[Any]:
    """``total`` batches: epochs over ``data``, each shuffled by a generator seeded with the config's seed."""
    rng = random.Random(config.seed)
    done = 0
    while done < total:
        if config.shuffle and isinstance(data, (list, tuple)):
            order = list(range(len(data)))
            rng.shuffle(order)
            epoch: Iterable[Any] = (data[i] for i in order)
        else:
            epoch = data
        for batch in epoch:
            if done == total:
                return
            yield batch
            done += 1


def _split(batch: Any) -> tuple[tuple[torch.Tensor, ...], Any]:
    if not isinstance(batch, (list, tuple)) or len(batch) != 2:
        raise ArgumentTypeError(
            f"finetune: each training batch must be a pair (inputs, targets), got {type(batch).__name__}"
            + (f" of length {len(batch)}" if isinstance(batch, (list, tuple)) else "")
        )
    inputs, targets = batch
    return (tuple(inputs) if isinstance(inputs, (list, tuple)) else (inputs,)), targets


def _optimizer(config: FinetuneConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def _schedule(config: FinetuneConfig, total: int) -> Callable[[int], float]:
    """Learning-rate multiplier of step ``t`` (0-based): warm-up, then the configured decay."""
    warm = min(config.warmup_steps, total)
    span = max(1, total - warm)

    def factor(t: int) -> float:
        if t < warm:
            return (t + 1) / warm
        p = (t - warm) / span
        if config.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * p))
        if config.schedule == "linear":
            return 1.0 - p
        if config.schedule == "step":
            return 0.1 ** ((p >= 0.5) + (p >= 0.75))
        return 1.0

    return factor


class _ZeroKeeper:
    """Keeps weights that are exactly zero at the start (pruned without a mask) at zero."""

    def __init__(self, model: nn.Module) -> None:
        self.masks: list[tuple[nn.Parameter, torch.Tensor]] = []
        for module in model.modules():
            if _has_prune_mask(module, "weight"):
                continue
            w = getattr(module, "weight", None)
            if isinstance(w, nn.Parameter) and w.dim() > 1:
                zero = w.detach() == 0
                if zero.any():
                    self.masks.append((w, ~zero))

    @torch.no_grad()
    def apply(self) -> None:
        for w, keep in self.masks:
            w.mul_(keep)


def _has_prune_mask(module: nn.Module, name: str) -> bool:
    return hasattr(module, name + "_mask") and hasattr(module, name + "_orig")


def _mask_hooks(model: nn.Module) -> list[tuple[nn.Module, torch_prune.BasePruningMethod]]:
    return [
        (module, hook)
        for module in model.modules()
        for hook in module._forward_pre_hooks.values()
        if isinstance(hook, torch_prune.BasePruningMethod) and _has_prune_mask(module, hook._tensor_name)
    ]


def _refresh_masks(model: nn.Module) -> None:
    """Recompute masked weights (``weight_orig × mask``) so they reflect the last optimizer step."""
    for module, hook in _mask_hooks(model):
        hook(module, None)


@contextlib.contextmanager
def _num_threads(n: int | None) -> Iterator[None]:
    if n is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def _attached(distiller: Any, data: Iterable[Any]) -> Iterator[None]:
    if distiller is None:
        yield
        return
    distiller.attach(_split(next(iter(data)))[0])
    try:
        yield
    finally:
        distiller.detach()
