"""The built-in fine-tune loop: :func:`finetune`, used by every trial and by the training compressors.

A run lasts ``config.epochs`` passes or ``config.steps`` optimizer steps over re-iterable batches
``(inputs, targets)``, with the optimizer and learning-rate schedule of the :class:`FinetuneConfig`.
Compression stays in force: ``torch.nn.utils.prune`` masks keep pruned weights at zero (the optimizer
only moves ``weight_orig``), weights that are exactly zero at the start stay zero (``freeze_zeros``) and
fake-quantizers stay in place, training through their straight-through estimators.

**Devices and data.** The run happens where the model is (:func:`slimtune.devices.model_device`): every
batch is moved there as it is used (``non_blocking``: with a ``DataLoader(..., pin_memory=True)`` the
copy to a GPU overlaps the computation), and so are the teacher's probe batch and everything the
training compressors create; a KD teacher must be on the same device. The data is a list of batches, a
``torch.utils.data.DataLoader`` (over a map-style or an iterable dataset) or any re-iterable; ``len`` is
needed only for a budget in ``epochs`` (the loop never iterates the data just to count it: data
without a ``len`` needs ``steps``). With the default ``eval_every``, reports come at the end of every
pass over the data, wherever it ends.

**Precision, memory format, accumulation, clipping** (:class:`FinetuneConfig`): ``amp: bf16`` runs the
forward pass and the loss under ``torch.autocast``, ``amp: fp16`` adds a ``torch.amp.GradScaler``;
``channels_last`` trains in that memory format (the model comes back contiguous); ``accumulate: k``
makes one optimizer step of ``k`` batches, each loss divided by ``k``; ``clip_grad_norm`` clips the
gradients' total norm before each step. Within a step the order is: forward and backward of each batch,
unscaling (fp16), the hooks' ``after_backward``, clipping, the optimizer step, the hooks' ``after_step``.

**Determinism.** The same seed on the same device gives the same weights: the batch order of lists, a
``DataLoader``'s shuffling (when it has no generator of its own: it draws from the global generator,
seeded inside the run) and any randomness inside the model come from the config's seed; the global
CPU generator and that of the training GPU are restored afterwards. (GPU kernels themselves may be
nondeterministic unless ``torch.use_deterministic_algorithms(True)``.)

A :class:`TrainHook` adds a penalty to the loss or acts after each step: the training compressors (AGP,
ADMM, lottery ticket, network slimming) are hooks on this loop. Knowledge distillation follows
``config.kd`` and its ``mode`` (:func:`~slimtune.compressors.training.distill.make_distiller`): from the
teacher (``offline``), with a peer trained alongside by an optimizer of its own (``online``: same settings,
schedule, clipping and gradient scaler; it sees the same batches), from the student's own snapshot
(``born_again``) or through auxiliary exits whose heads are dropped afterwards (``self``).
``report(step, metric)`` receives ``evaluate(model)`` every ``config.eval_every`` steps (default: every pass
over the data); a true return value stops the run early (see :func:`early_stopping`) and an exception
(``optuna.TrialPruned``) aborts it.

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

    A ``DataLoader``, bfloat16 autocast, two batches per optimizer step and clipping:

    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> loader = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True)  # 8 batches
    >>> cfg = FinetuneConfig(epochs=2, lr=0.05, amp="bf16", accumulate=2, clip_grad_norm=1.0)
    >>> finetune(model, loader, cfg).steps  # 8 // 2 steps an epoch
    8
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from slimtune import devices
from slimtune.compressors._outputs import default_loss
from slimtune.compressors.training._data import run_length, step_batches, steps_per_epoch
from slimtune.compressors.training._device import Precision, channels_last_inputs, check_teacher, fork_rng, seed
from slimtune.compressors.training.config import FinetuneConfig
from slimtune.errors import ArgumentError, ArgumentTypeError

if TYPE_CHECKING:
    from slimtune.compressors.training._base import Report


class TrainHook:
    """Something a training compressor does during :func:`finetune`; every method is optional.

    Methods are called in this order: ``start`` once, then per optimizer step ``penalty`` (added to the
    loss of each of the step's ``accumulate`` batches), ``after_backward`` (gradients may be edited),
    ``after_step`` (weights may be edited), and ``end`` once. ``extra_parameters`` are trained with the
    model (e.g. learned adapters). Steps are optimizer steps. Tensors a hook creates belong on the
    model's device (``torch.zeros_like(p)``, ``device=p.device``).
    """

    def start(self, model: nn.Module, total_steps: int) -> None:
        """Before the first step; ``total_steps`` is the run's length."""

    def penalty(self, model: nn.Module, step: int) -> torch.Tensor | None:
        """A term added to the loss at ``step`` (0-based), or None; under ``amp`` it is computed inside
        autocast, and with ``accumulate`` it is added to every batch's loss (then divided like it)."""
        return None

    def after_backward(self, model: nn.Module, step: int) -> None:
        """After the backward passes of the step (gradients unscaled under ``fp16``), before clipping and
        the optimizer step."""

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
        losses: The training loss of every optimizer step (KD and hook penalties included; the mean over
            the step's batches with ``accumulate``).
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

    The run happens on the model's device (:func:`slimtune.devices.model_device`): each batch is moved
    there as it is used (``non_blocking``, which overlaps the copy with computation for a ``DataLoader``
    with ``pin_memory=True``).

    Args:
        model: The (compressed) model; left in the training mode it had, on its device.
        data: Re-iterable batches ``(inputs, targets)``, ``inputs`` a tensor or a tuple of tensors: a
            list, a ``torch.utils.data.DataLoader`` (map-style or iterable dataset) or any object
            that can be iterated once per epoch. ``len(data)`` is needed only for ``config.epochs``.
        config: A :class:`FinetuneConfig` (or a mapping of its fields); None: the defaults.
        loss_fn: ``loss_fn(outputs, targets) -> scalar``; None: cross-entropy on the outputs (a tensor, or
            the ``logits`` of a Hugging Face ``ModelOutput``).
        teacher: The original model, for knowledge distillation (``config.kd``): the teacher of ``offline``
            mode (never trained; on the model's device), copied into ``online`` mode's peer (to the model's
            device; the teacher itself is never trained); other modes do not use it.
        report: ``report(step, metric)``, called with ``evaluate(model)`` every ``config.eval_every``
            steps (default: at the end of every pass over ``data``) and at the end; a true return value
            stops the run.
        evaluate: ``evaluate(model) -> float``; reports need it.
        hooks: :class:`TrainHook` objects (training compressors).
        start_step: Resume a run of the config's length at this step (0: a fresh run): it takes the
            remaining ``total - start_step`` steps at the learning rates the schedule gives those
            steps (lottery rewinding resumes training at the rewind step). Hooks, reports and the
            result count the steps of this call.

    Raises:
        PlanConfigError: ``config.epochs`` with data that has no ``len()`` (field ``finetune.epochs``:
            give ``finetune.steps``), ``accumulate`` larger than a pass over the data (field
            ``finetune.accumulate``), or ``amp`` the model's device cannot run (field ``finetune.amp``).
        ArgumentError: An ``offline`` KD teacher on another device than the model, ``online`` KD with
            ``peer: original`` and no teacher, or data that yields no batches (an exhausted iterator).
    """
    config = FinetuneConfig.coerce(config)
    if isinstance(start_step, bool) or not isinstance(start_step, int) or start_step < 0:
        raise ArgumentError(f"finetune: start_step must be an integer >= 0, got {start_step!r}", field="start_step")
    device = devices.model_device(model)
    if teacher is not None and config.kd is not None and config.kd.mode == "offline":
        check_teacher(teacher, device)
    per_epoch = steps_per_epoch(data, config)
    full = run_length(config, per_epoch)
    total = max(0, full - start_step)
    amp = Precision(config.amp, device)
    result = FinetuneResult()
    start_time = time.perf_counter()
    distiller = None
    if config.kd is not None and total > 0:
        from slimtune.compressors.training.kd_modes import make_distiller

        distiller = make_distiller(model, teacher, config, loss_fn or default_loss, total)
    if config.slb_final_temperature is not None and _has_slb(model):
        hooks = [*hooks, SLBAnnealing(config.slb_final_temperature)]
    losses: list[torch.Tensor] = []
    with contextlib.ExitStack() as stack:
        stack.callback(_restore, model, model.training, config.channels_last)  # runs last
        if config.channels_last:
            model.to(memory_format=torch.channels_last)
        stack.enter_context(fork_rng(device))
        stack.enter_context(_num_threads(config.num_threads))
        if distiller is not None:  # before seeding: its probe batch may draw from the generator
            distiller.attach(_inputs(next(iter(data)), device, config.channels_last))
            stack.callback(distiller.detach)
        seed(config.seed, device)
        for hook in hooks:
            hook.start(model, total)
        schedule = _schedule(config, full)
        trainer = _Trainer(model, config, loss_fn or default_loss, distiller, hooks, amp, schedule, total > 0)
        model.train()
        for step, (batches, epoch_end) in enumerate(step_batches(data, config, total, per_epoch)):
            losses.append(trainer.step(batches, start_step + step, step))
            result.steps = step + 1
            for hook in hooks:
                hook.after_step(model, step + 1)
            if distiller is not None:
                distiller.after_step(step + 1)
            last = step + 1 == total
            due = (step + 1) % config.eval_every == 0 if config.eval_every is not None else epoch_end
            if report is not None and evaluate is not None and (due or last):
                _refresh_masks(model)
                value = float(evaluate(model))
                model.train()
                result.reports.append((step + 1, value))
                if report(step + 1, value):
                    result.stopped_early = not last
                    break
        for hook in hooks:
            hook.end(model)
    result.losses = torch.stack(losses).tolist() if losses else []  # one device sync for the whole run
    result.seconds = time.perf_counter() - start_time
    return result


class _Trainer:
    """One optimizer step of :func:`finetune`: ``accumulate`` forward and backward passes (under
    autocast, the loss scaled under ``fp16``), the hooks, clipping, the step, zeros kept at zero."""

    def __init__(
        self,
        model: nn.Module,
        config: FinetuneConfig,
        loss_fn: Callable[..., torch.Tensor],
        distiller: Any,
        hooks: Sequence[TrainHook],
        amp: Precision,
        schedule: Callable[[int], float],
        trains: bool,
    ) -> None:
        self.model, self.config, self.loss_fn = model, config, loss_fn
        self.distiller, self.hooks, self.amp, self.schedule = distiller, hooks, amp, schedule
        self.device = devices.model_device(model)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.params += [p for h in hooks for p in h.extra_parameters()]
        if distiller is not None:
            self.params += distiller.parameters()
        self.optimizer = _optimizer(config, self.params) if trains else None
        # a KD peer (online mode) trains by an optimizer of its own, with the same settings and schedule
        self.peer_params = distiller.peer_parameters() if distiller is not None else []
        self.peer_optimizer = _optimizer(config, self.peer_params) if trains and self.peer_params else None
        self.scaler = amp.scaler()
        self.keeper = _ZeroKeeper(model) if config.freeze_zeros else None
        self.masked = _mask_hooks(model)

    def step(self, batches: list[Any], at: int, step: int) -> torch.Tensor:
        """Train on ``batches`` at schedule step ``at`` (hooks get this call's ``step``); the step's loss
        (the mean over the batches), detached, on the device."""
        optimizer, scaler, config, model = self.optimizer, self.scaler, self.config, self.model
        assert optimizer is not None
        optimizers = [optimizer] if self.peer_optimizer is None else [optimizer, self.peer_optimizer]
        for opt in optimizers:
            for group in opt.param_groups:
                group["lr"] = config.lr * self.schedule(at)
        # recompute masked weights: a fake-quantizer reads its layer's weight without calling the
        # layer, so the layer's own pre-hook would not
        for module, hook in self.masked:
            hook(module, None)
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        total = None
        for batch in batches:
            inputs, targets = _split(devices.move(batch, self.device, non_blocking=True))
            if config.channels_last:
                inputs = channels_last_inputs(inputs)
            with self.amp.autocast():
                outputs = model(*inputs)
                loss = self.loss_fn(outputs, targets)
                if self.distiller is not None:
                    loss = self.distiller.loss(inputs, outputs, loss, targets)
                for hook in self.hooks:
                    extra = hook.penalty(model, step)
                    if extra is not None:
                        loss = loss + extra
            if config.accumulate > 1:
                loss = loss / config.accumulate
            (scaler.scale(loss) if scaler is not None else loss).backward()
            total = loss.detach() if total is None else total + loss.detach()
        if scaler is not None:
            for opt in optimizers:
                scaler.unscale_(opt)
        for hook in self.hooks:
            hook.after_backward(model, step)
        if config.clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.params, config.clip_grad_norm)
            if self.peer_params:
                torch.nn.utils.clip_grad_norm_(self.peer_params, config.clip_grad_norm)
        if scaler is not None:
            for opt in optimizers:
                scaler.step(opt)
            scaler.update()
        else:
            for opt in optimizers:
                opt.step()
        if self.keeper is not None:
            self.keeper.apply()
        return total.float()  # type: ignore[union-attr]


def _restore(model: nn.Module, training: bool, channels_last: bool) -> None:
    """The model as :func:`finetune` returns it: contiguous format, masked weights recomputed, its mode."""
    if channels_last:
        model.to(memory_format=torch.contiguous_format)
    _refresh_masks(model)
    model.train(training)


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


def _inputs(batch: Any, device: torch.device, channels_last: bool) -> tuple[Any, ...]:
    inputs = _split(devices.move(batch, device, non_blocking=True))[0]
    return channels_last_inputs(inputs) if channels_last else inputs


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
