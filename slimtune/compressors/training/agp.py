"""``agp``: automated gradual pruning along a cubic schedule during a fine-tune run.

Zhu and Gupta, "To prune, or not to prune: exploring the efficacy of pruning for model compression", ICLR
2018 workshop (https://arxiv.org/abs/1710.01878). Sparsity rises from ``s_i`` to the target ``s_f`` as

    s_t = s_f + (s_i − s_f) · (1 − (t − t_0) / (n Δt))³,   t ∈ {t_0, t_0 + Δt, …, t_0 + n Δt}

fast at first, while many redundant weights remain, and slowly towards the end, while training recovers
between updates. Here every group (or layer, for unstructured plans) follows the curve to its own target in
the plan; at each update the lowest-scoring channels by the plan's criteria are masked (what was pruned stays
pruned) and training goes on under the masks. The last update, at ``end`` of the run, reaches the targets
exactly; the rest of the run trains the final masks.

Parameters (a plan's ``compressor_params``): ``epochs`` / ``steps``, ``lr``, ``optimizer`` (the run; None: the
fine-tune config's), ``start`` and ``end`` (fractions of the run where pruning starts and reaches the targets),
``frequency`` (steps Δt between updates; default: 10 updates), ``initial`` (``s_i`` as a fraction of each
target).

Example:
    >>> from slimtune.compressors.training.agp import cubic_sparsity
    >>> [round(cubic_sparsity(0.8, t, t0=0, t_end=4), 4) for t in range(5)]
    [0.0, 0.4625, 0.7, 0.7875, 0.8]
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from torch import nn

from slimtune.compressors.compress import finalize
from slimtune.compressors.training._base import TrainingContext, register_compressor
from slimtune.compressors.training._masks import Selection, prepare, select, set_masks
from slimtune.compressors.training.finetune import TrainHook
from slimtune.errors import PlanConfigError

if TYPE_CHECKING:
    from slimtune.compressors.graph import ModelGraph
    from slimtune.compressors.plan import CompressionPlan


def cubic_sparsity(target: float, t: int, t0: int, t_end: int, initial: float = 0.0) -> float:
    """Zhu & Gupta's sparsity at step ``t`` for a schedule from ``t0`` to ``t_end``: ``initial`` before
    ``t0``, ``target`` from ``t_end`` on."""
    if t <= t0:
        return initial if t < t0 or t_end > t0 else target
    if t >= t_end:
        return target
    p = (t - t0) / (t_end - t0)
    return target + (initial - target) * (1.0 - p) ** 3


class AGPHook(TrainHook):
    """Masks a model along the cubic schedule during :func:`~slimtune.compressors.training.finetune`.

    Args:
        graph: The model's dependency graph.
        plan: Targets and criteria.
        start, end: Fractions of the run where pruning starts and where it reaches the targets.
        frequency: Steps between mask updates (None: ten updates from start to end).
        initial: Starting sparsity as a fraction of each target.
        data, loss_fn: For data-driven criteria.

    Attributes:
        selection: What is pruned now.
        history: ``(step, {name: scheduled sparsity}, {name: number pruned})`` of every update.
    """

    def __init__(
        self,
        graph: ModelGraph,
        plan: CompressionPlan,
        start: float = 0.0,
        end: float = 0.75,
        frequency: int | None = None,
        initial: float = 0.0,
        data: Iterable[Any] | None = None,
        loss_fn: Any = None,
    ) -> None:
        if not 0.0 <= start <= end <= 1.0:
            raise PlanConfigError(
                f"agp needs 0 <= start <= end <= 1, got start={start}, end={end}", field="plan.compressor_params"
            )
        if frequency is not None and (not isinstance(frequency, int) or frequency < 1):
            raise PlanConfigError(
                f"agp needs a positive integer, got {frequency!r}", field="plan.compressor_params.frequency"
            )
        if not 0.0 <= initial <= 1.0:
            raise PlanConfigError(
                f"agp needs a fraction in [0, 1], got {initial!r}", field="plan.compressor_params.initial"
            )
        self.graph, self.plan = graph, plan
        self.start_frac, self.end_frac, self.frequency, self.initial = start, end, frequency, initial
        self.data, self.loss_fn = data, loss_fn
        self.selection: Selection = {}
        self.history: list[tuple[int, dict[str, float], dict[str, int]]] = []
        self.t0 = self.t_end = self.every = 0
        self._final = False

    def start(self, model: nn.Module, total_steps: int) -> None:
        self.t0 = round(self.start_frac * total_steps)
        self.t_end = max(self.t0, round(self.end_frac * total_steps))
        self.every = self.frequency or max(1, (self.t_end - self.t0) // 10)
        self._update(model, 0)

    def after_step(self, model: nn.Module, step: int) -> None:
        if self.t0 <= step <= self.t_end and ((step - self.t0) % self.every == 0 or step == self.t_end):
            self._update(model, step)

    def end(self, model: nn.Module) -> None:
        if not self._final:  # a run shorter than the schedule (or no training at all)
            self._update(model, self.t_end)

    def sparsities(self, step: int) -> dict[str, float]:
        """The scheduled sparsity of every group at ``step``."""
        return {
            name: cubic_sparsity(spec.sparsity, step, self.t0, self.t_end, self.initial * spec.sparsity)
            for name, spec in self.plan.prune.items()
        }

    def _update(self, model: nn.Module, step: int) -> None:
        sparsities = self.sparsities(step)
        self.selection = select(model, self.graph, self.plan, sparsities, self.selection, self.data, self.loss_fn)
        set_masks(model, self.graph, self.plan, self.selection)
        counts = {n: int((~v).sum()) if v.dtype == bool else len(v) for n, v in self.selection.items()}
        self.history.append((step, sparsities, counts))
        self._final = step >= self.t_end


@register_compressor(
    "agp",
    defaults={
        "epochs": None,
        "steps": None,
        "lr": None,
        "optimizer": None,
        "start": 0.0,
        "end": 0.75,
        "frequency": None,
        "initial": 0.0,
    },
    trains=True,
)
def agp(
    model: nn.Module, plan: CompressionPlan, example_inputs: Any, context: TrainingContext, **params: Any
) -> nn.Module:
    """Train a copy of ``model`` while pruning it gradually to the plan's targets (cubic schedule)."""
    work, graph = prepare(model, plan, example_inputs, context.graph)
    hook = AGPHook(
        graph,
        plan,
        params["start"],
        params["end"],
        params["frequency"],
        params["initial"],
        context.calibration,
        context.loss_fn,
    )
    context.train(work, "agp", [hook], context.budget(params))
    return finalize(work, plan, example_inputs, graph, hook.selection, context.speedup, context.calibration)
