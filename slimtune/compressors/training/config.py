"""The fine-tune configuration: :class:`FinetuneConfig` and its knowledge-distillation part :class:`KDConfig`.

Both are plain values. A task holds one configuration; a plan's ``finetune`` mapping overrides some of its
fields for that plan only (:meth:`FinetuneConfig.merged`); unknown fields are errors naming the field.
Besides the budget, optimizer and schedule, the configuration says how each step runs on the device:
mixed precision (``amp: bf16`` or ``fp16`` with a gradient scaler), the ``channels_last`` memory format,
gradient accumulation over ``accumulate`` batches per optimizer step and gradient-norm clipping
(``clip_grad_norm``); a plan may change any of them for its trial (``finetune: {amp: bf16}``).

Example:
    >>> from slimtune.compressors.training import FinetuneConfig
    >>> base = FinetuneConfig(epochs=2, lr=0.01)
    >>> cfg = base.merged({"steps": 50, "kd": {"alpha": 0.7}, "amp": "bf16"})
    >>> cfg.steps, cfg.lr, cfg.kd.alpha, cfg.kd.temperature, cfg.amp
    (50, 0.01, 0.7, 4.0, 'bf16')
    >>> cfg.total_steps(batches_per_epoch=10)
    50
    >>> FinetuneConfig(epochs=3, accumulate=4).total_steps(batches_per_epoch=10)  # 10 // 4 steps an epoch
    6

    Distillation has four modes (:data:`KD_MODES`); a mode's unset weights take that mode's defaults, and a
    plan that changes the mode starts from the new mode's defaults:

    >>> online = cfg.merged({"kd": {"mode": "online"}}).kd  # deep mutual learning: T 1, equal weights
    >>> online.mode, online.alpha, online.temperature, online.peer
    ('online', 0.5, 1.0, 'original')
    >>> KDConfig(mode="self").feature  # Be Your Own Teacher's hint weight
    0.03
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from slimtune.errors import PlanConfigError, PlanError, did_you_mean
from slimtune.registry import closest_name

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "step", "linear")
AMP = ("bf16", "fp16")
"""Mixed-precision modes of ``FinetuneConfig.amp`` (None: full float32)."""

KD_MODES = ("offline", "online", "born_again", "self")
"""Who teaches in :class:`KDConfig` ``mode``: the frozen original model (``offline``), a peer trained alongside
(``online``, deep mutual learning), the student's own frozen snapshot (``born_again``) or the student's
deepest exit teaching auxiliary shallow exits (``self``, Be Your Own Teacher)."""

KD_MODE_CHOICES = ("none", *KD_MODES)
"""What a search space may choose for the fine-tune's distillation: ``none`` (KD off) or a mode."""

KD_PEERS = ("original", "student")
"""What ``online`` mode's peer starts as: a copy of the original model or of the student."""

# Each mode's defaults of the weights left unset (None); the new modes' come from their papers (docs/algorithms.md).
_MODE_DEFAULTS: dict[str, dict[str, float]] = {
    "offline": {"alpha": 0.5, "temperature": 4.0, "feature": 0.0},  # Hinton et al.; hints off
    "online": {"alpha": 0.5, "temperature": 1.0, "feature": 0.0},  # DML: T 1, equal weights
    "born_again": {"alpha": 0.5, "temperature": 1.0, "feature": 0.0},  # BAN: no temperature, labels kept
    "self": {"alpha": 0.3, "temperature": 3.0, "feature": 0.03},  # BYOT: alpha 0.3, T 3, hints 0.03
}
# Fields a mode cannot use, with why: giving them is an error naming the field.
_MODE_UNUSED: dict[str, dict[str, str]] = {
    "online": {
        "feature": "deep mutual learning exchanges predictions only",
        "feature_layers": "deep mutual learning exchanges predictions only",
        "relation": "deep mutual learning exchanges predictions only",
        "relation_layer": "deep mutual learning exchanges predictions only",
    },
    "self": {
        "relation": "self-distillation matches exits' predictions and features only",
        "relation_layer": "self-distillation matches exits' predictions and features only",
    },
}


@dataclass(frozen=True)
class KDConfig:
    """Knowledge distillation during fine-tuning: who teaches (``mode``) and how the terms are weighted.

    The student's loss is ``(1 - alpha) · task_loss + alpha · T² · KL(teacher_T ‖ student_T)
    + feature · hint_loss + relation · relation_loss``; the teacher depends on ``mode``:

    - ``offline`` (default): the original, uncompressed model, frozen
      (:mod:`~slimtune.compressors.training.distill`: Hinton's response term, FitNets hints, RKD relations);
    - ``online``: deep mutual learning (:mod:`~slimtune.compressors.training.online`): a peer (a copy of the
      original model, or of the student: ``peer``) trains alongside with its own optimizer, each learning
      from the task and the other's softened predictions;
    - ``born_again``: the student's own snapshot, frozen, taken at the start of the run and refreshed at the
      start of each of ``generations`` equal parts of it (:mod:`~slimtune.compressors.training.born_again`);
    - ``self``: Be Your Own Teacher (:mod:`~slimtune.compressors.training.self_distill`): small auxiliary
      heads on intermediate feature maps learn from the labels, the model's own (deepest) output and, by a
      hint, its penultimate features; they are removed after fine-tuning.

    ``alpha``, ``temperature`` and ``feature`` left unset (None) take the mode's defaults (for the new modes
    their papers', see ``docs/algorithms.md``): offline 0.5 / 4 / 0, online 0.5 / 1 / 0 (DML's equal weights
    and plain softmax), born_again 0.5 / 1 / 0, self 0.3 / 3 / 0.03.

    Args:
        alpha: Weight of the response-based term (softened predictions) against the task loss, in [0, 1].
        temperature: Softening temperature ``T`` (> 0).
        feature: Weight of the feature-based (hint) term; 0 turns it off. Not with ``online``.
        feature_layers: Module names whose outputs are matched (the same name in student and teacher);
            ``None``: every Conv layer present in both. With ``self``: the modules whose outputs get an
            auxiliary exit; ``None``: the last module at each spatial resolution but the deepest.
        relation: Weight of the relation-based term (pairwise distances between samples); 0 turns it off.
            Offline and born-again only.
        relation_layer: Module whose output gives the sample embeddings for the relation term;
            ``None``: the model's outputs (logits).
        mode: ``offline``, ``online``, ``born_again`` or ``self`` (:data:`KD_MODES`).
        peer: ``online`` only: the peer starts as a copy of the ``original`` model (needs the teacher) or of
            the ``student``.
        generations: ``born_again`` only: parts of the run, each taught by the snapshot taken at its start
            (1: the snapshot of the run's start teaches throughout).
    """

    alpha: float | None = None
    temperature: float | None = None
    feature: float | None = None
    feature_layers: tuple[str, ...] | None = None
    relation: float = 0.0
    relation_layer: str | None = None
    mode: str = "offline"
    peer: str = "original"
    generations: int = 1

    def __post_init__(self) -> None:
        if self.mode not in KD_MODES:
            raise PlanConfigError(
                f"unknown distillation mode {self.mode!r}{did_you_mean(str(self.mode), KD_MODES)}; "
                f"known: {', '.join(KD_MODES)}",
                field="finetune.kd.mode",
            )
        for name, default in _MODE_DEFAULTS[self.mode].items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, default)
        _number(self.alpha, "kd.alpha", 0.0, 1.0)
        _number(self.temperature, "kd.temperature", 0.0, math.inf, open_low=True)
        _number(self.feature, "kd.feature", 0.0, math.inf)
        _number(self.relation, "kd.relation", 0.0, math.inf)
        if self.feature_layers is not None:
            if isinstance(self.feature_layers, str) or not all(isinstance(n, str) for n in self.feature_layers):
                raise PlanConfigError(
                    f"must be a list of module names, got {self.feature_layers!r}", field="finetune.kd.feature_layers"
                )
            object.__setattr__(self, "feature_layers", tuple(self.feature_layers))
        if self.relation_layer is not None and not isinstance(self.relation_layer, str):
            raise PlanConfigError(
                f"must be a module name, got {self.relation_layer!r}", field="finetune.kd.relation_layer"
            )
        if self.peer not in KD_PEERS:
            raise PlanConfigError(
                f"unknown peer {self.peer!r}{did_you_mean(str(self.peer), KD_PEERS)}; known: {', '.join(KD_PEERS)}",
                field="finetune.kd.peer",
            )
        _integer(self.generations, "kd.generations", 1)
        for name, why in _MODE_UNUSED.get(self.mode, {}).items():
            value = getattr(self, name)
            if value not in (None, 0, 0.0):
                raise PlanConfigError(
                    f"mode {self.mode!r} does not use it ({why}); got {value!r}", field=f"finetune.kd.{name}"
                )
        for name, mode, default in (("peer", "online", "original"), ("generations", "born_again", 1)):
            if self.mode != mode and getattr(self, name) != default:
                raise PlanConfigError(
                    f"only mode {mode!r} uses it (mode is {self.mode!r}); got {getattr(self, name)!r}",
                    field=f"finetune.kd.{name}",
                )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> KDConfig:
        return cls(**_known(data, cls, "finetune.kd"))


def kd_mode_overrides(choice: str) -> dict[str, Any]:
    """The ``plan.finetune`` overrides that fine-tune with ``choice`` of :data:`KD_MODE_CHOICES`:
    ``{"kd": None}`` for ``none``, else ``{"kd": {"mode": choice}}`` (the task's KD settings kept when
    they are of that mode, that mode's defaults otherwise).

    Example:
        >>> kd_mode_overrides("none"), kd_mode_overrides("born_again")
        ({'kd': None}, {'kd': {'mode': 'born_again'}})
    """
    if choice not in KD_MODE_CHOICES:
        raise PlanConfigError(
            f"unknown choice {choice!r}{did_you_mean(str(choice), KD_MODE_CHOICES)}; "
            f"known: {', '.join(KD_MODE_CHOICES)}",
            field="finetune.kd.mode",
        )
    return {"kd": None} if choice == "none" else {"kd": {"mode": choice}}


@dataclass(frozen=True)
class FinetuneConfig:
    """How a compressed model is trained (the built-in loop :func:`~slimtune.compressors.training.finetune`).

    Args:
        epochs: Passes over the training batches (used when ``steps`` is None; 0 trains nothing). An epoch
            is ``len(data) // accumulate`` optimizer steps, so the data must have a ``len()``: for data
            without one (a ``DataLoader`` over an ``IterableDataset``) give ``steps`` instead.
        steps: Optimizer steps (overrides ``epochs``; the batches are cycled, and the data is never
            iterated just to count it).
        optimizer: ``sgd``, ``adam`` or ``adamw``.
        lr: Peak learning rate.
        momentum: SGD momentum.
        weight_decay: Weight decay (decoupled for ``adamw``).
        schedule: Learning-rate schedule over the run: ``constant``, ``cosine`` (to 0), ``linear``
            (to 0) or ``step`` (×0.1 at 50 % and 75 % of the steps).
        warmup_steps: Linear warm-up steps before the schedule.
        seed: Seed of the batch order and of any randomness inside the model.
        shuffle: Shuffle the order of the batches every epoch (when they are a list or tuple).
        kd: Knowledge distillation (:class:`KDConfig`: from the original model, a peer trained alongside,
            the student's snapshot or its own deepest exit; None: off).
        eval_every: Optimizer steps between the evaluations passed to the report callback (None: at the
            end of every pass over the data, found when it runs out where the data has no ``len``);
            there is always one at the end of the run.
        freeze_zeros: Keep weights that are exactly zero at the start (pruned weights without a
            ``torch.nn.utils.prune`` mask) at zero.
        num_threads: Intra-op threads while training (None: unchanged).
        slb_final_temperature: The softmax temperature the model's ``slb``-quantized layers reach at the
            end of the run, geometrically (once per step) from their temperature at its start (1 when
            they were just quantized), as SLB anneals; after the run they are set to 0 (hard argmax),
            so training mode and evaluation use the same discrete weights. None: the loop leaves
            the temperature alone (drive it with ``slb.anneal`` / ``slb.set_temperature``).
        amp: Mixed precision on the model's device: ``bf16`` runs the forward pass and the loss under
            ``torch.autocast(device_type, dtype=torch.bfloat16)``; ``fp16`` under autocast with
            ``torch.float16`` and a gradient scaler (``torch.amp.GradScaler(device_type)``; a step whose
            scaled gradients overflow is skipped by the scaler, and still counts as a step). The
            weights and the optimizer stay float32. None: full float32. bf16 needs no scaler and is
            the safer choice where the hardware has it (Ampere or newer GPUs, recent CPUs).
        channels_last: Train in the ``torch.channels_last`` memory format (the model's 4-D parameters
            and buffers, and the 4-D input tensors), which tensor cores and oneDNN prefer for
            convolutions; the model is returned in the default contiguous format.
        accumulate: Batches per optimizer step (gradient accumulation): the loss of each batch, KD and
            hook penalties included, is divided by ``accumulate`` and the gradients of ``accumulate``
            consecutive batches are summed before one step. ``steps``, ``warmup_steps``, ``eval_every``,
            hooks and reports count optimizer steps; an epoch is ``len(data) // accumulate`` steps and
            the last ``len(data) % accumulate`` batches of every pass are left out (other ones each
            epoch when the batches are shuffled).
        clip_grad_norm: Clip the total L2 norm of the trained parameters' gradients to this value
            before each optimizer step (``torch.nn.utils.clip_grad_norm_``, on the unscaled gradients
            under ``fp16``). None: no clipping.
    """

    epochs: int = 1
    steps: int | None = None
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cosine"
    warmup_steps: int = 0
    seed: int = 0
    shuffle: bool = True
    kd: KDConfig | None = None
    eval_every: int | None = None
    freeze_zeros: bool = True
    num_threads: int | None = None
    slb_final_temperature: float | None = 0.01
    amp: str | None = None
    channels_last: bool = False
    accumulate: int = 1
    clip_grad_norm: float | None = None

    def __post_init__(self) -> None:
        _integer(self.epochs, "epochs", 0)
        if self.steps is not None:
            _integer(self.steps, "steps", 0)
        if self.optimizer not in OPTIMIZERS:
            raise PlanConfigError(
                f"unknown optimizer {self.optimizer!r}; known: {', '.join(OPTIMIZERS)}", field="finetune.optimizer"
            )
        if self.schedule not in SCHEDULES:
            raise PlanConfigError(
                f"unknown schedule {self.schedule!r}; known: {', '.join(SCHEDULES)}", field="finetune.schedule"
            )
        _number(self.lr, "lr", 0.0, math.inf)
        _number(self.momentum, "momentum", 0.0, 1.0)
        _number(self.weight_decay, "weight_decay", 0.0, math.inf)
        _integer(self.warmup_steps, "warmup_steps", 0)
        _integer(self.seed, "seed", None)
        if self.eval_every is not None:
            _integer(self.eval_every, "eval_every", 1)
        if self.num_threads is not None:
            _integer(self.num_threads, "num_threads", 1)
        if self.slb_final_temperature is not None:
            _number(self.slb_final_temperature, "slb_final_temperature", 0.0, math.inf, open_low=True)
        if self.amp is not None and self.amp not in AMP:
            raise PlanConfigError(
                f"unknown mixed-precision mode {self.amp!r}{did_you_mean(self.amp, AMP)}; "
                f"known: {', '.join(AMP)}, or null for float32",
                field="finetune.amp",
            )
        _integer(self.accumulate, "accumulate", 1)
        if self.clip_grad_norm is not None:
            _number(self.clip_grad_norm, "clip_grad_norm", 0.0, math.inf, open_low=True)
        for name in ("shuffle", "freeze_zeros", "channels_last"):
            if not isinstance(getattr(self, name), bool):
                raise PlanConfigError(f"must be true or false, got {getattr(self, name)!r}", field=f"finetune.{name}")
        if isinstance(self.kd, Mapping):
            object.__setattr__(self, "kd", KDConfig.from_dict(self.kd))
        elif self.kd is not None and not isinstance(self.kd, KDConfig):
            raise PlanConfigError(f"must be a mapping of KD settings or null, got {self.kd!r}", field="finetune.kd")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FinetuneConfig:
        return cls().merged(data)

    @classmethod
    def coerce(cls, value: FinetuneConfig | Mapping[str, Any] | None) -> FinetuneConfig:
        """A config from a config, a mapping of fields, or None (the defaults)."""
        if value is None:
            return cls()
        if isinstance(value, FinetuneConfig):
            return value
        if isinstance(value, Mapping):
            return cls.from_dict(value)
        raise PlanError(f"finetune config must be a FinetuneConfig or a mapping, got {type(value).__name__}")

    def merged(self, overrides: Mapping[str, Any] | None) -> FinetuneConfig:
        """This config with ``overrides`` applied (a plan's ``finetune`` mapping).

        ``kd`` merges field by field into the current KD settings (or the defaults when KD was off; a
        ``kd.mode`` other than the current one starts from that mode's defaults); ``kd: null`` or
        ``kd: false`` turns KD off. Giving ``epochs`` without ``steps`` clears ``steps``.
        """
        if not overrides:
            return self
        changes = _known(overrides, FinetuneConfig, "finetune")
        if "kd" in changes:
            kd = changes["kd"]
            if kd is None or kd is False:
                changes["kd"] = None
            elif kd is True:
                changes["kd"] = self.kd or KDConfig()
            elif isinstance(kd, Mapping):
                base = asdict(self.kd) if self.kd is not None else {}
                if "mode" in kd and kd["mode"] != base.get("mode", "offline"):
                    base = {}  # another teacher: that mode's defaults, not this mode's settings
                changes["kd"] = KDConfig.from_dict({**base, **kd})
        if "epochs" in changes and "steps" not in changes:
            changes["steps"] = None
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if self.kd is not None and self.kd.feature_layers is not None:
            out["kd"]["feature_layers"] = list(self.kd.feature_layers)
        return out

    # ------------------------------------------------------------------ queries
    def total_steps(self, batches_per_epoch: int) -> int:
        """Optimizer steps of one run over data of ``batches_per_epoch`` batches: ``steps``, else
        ``epochs × (batches_per_epoch // accumulate)``."""
        if self.steps is not None:
            return self.steps
        return self.epochs * (batches_per_epoch // self.accumulate)


def check_finetune_overrides(overrides: Mapping[str, Any]) -> None:
    """Raise :class:`~slimtune.errors.PlanConfigError` naming the field (``plan.finetune.<option>``)
    when ``overrides`` is not a valid ``plan.finetune`` mapping."""
    try:
        FinetuneConfig().merged(overrides)
    except PlanConfigError as e:
        raise PlanConfigError(e.problem, field=f"plan.{e.field}") from None


def _known(data: Mapping[str, Any], cls: type, where: str) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        raise PlanConfigError(f"must be a mapping, got {type(data).__name__}", field=where)
    names = [f.name for f in fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        close = closest_name(unknown[0], names)
        hint = f" did you mean {close!r}?" if close else ""
        raise PlanConfigError(f"unknown field(s) {unknown};{hint} known: {', '.join(names)}", field=where)
    return dict(data)


def _integer(value: Any, name: str, minimum: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise PlanConfigError(f"must be an integer{bound}, got {value!r}", field=f"finetune.{name}")


def _number(value: Any, name: str, low: float, high: float, open_low: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
    if ok:
        ok = (value > low if open_low else value >= low) and value <= high
    if not ok:
        lo = "(" if open_low else "["
        hi = "inf)" if math.isinf(high) else f"{high:g}]"
        raise PlanConfigError(f"must be a number in {lo}{low:g}, {hi}, got {value!r}", field=f"finetune.{name}")
