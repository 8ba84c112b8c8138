"""``admm``: pruning toward per-group targets with the alternating direction method of multipliers.

Zhang, Ye, Zhang, Tang, Wen, Fardad, Wang, "A Systematic DNN Weight Pruning Framework using Alternating
Direction Methods of Multipliers", ECCV 2018 (https://arxiv.org/abs/1804.03294). Pruning is the constrained
problem ``min loss(W) s.t. W ∈ S`` (S: weights with the plan's sparsity in every group); ADMM splits it with
an auxiliary ``Z ∈ S`` and a scaled dual ``U`` and alternates

- ``W``: train on ``loss(W) + (ρ/2) · ‖W − Z + U‖²`` (the augmented-Lagrangian penalty),
- ``Z ← Π_S(W + U)``: keep the channels (or weights) the plan's criterion ranks highest in ``W + U``, zero
  the rest — the Euclidean projection onto S for magnitude criteria,
- ``U ← U + W − Z``, and ``ρ ← ρ · rho_growth`` (a growing ρ pulls ``W`` onto S).

Every parameter the pruning touches (producers' weights and biases, batch-norm scales and shifts, consumers'
input slices) is in the penalty. At the end ``W`` is hard-pruned to the targets (channels chosen on ``W``),
then sped up and quantized as the plan says; the trial's fine-tune is the masked retrain.

Parameters: ``rho`` (initial ρ), ``rho_growth``, ``iterations`` (Z/U updates, evenly spaced over the run,
the last at its last step), ``epochs`` / ``steps``, ``lr``, ``optimizer`` (the ADMM run; None: the fine-tune
config's), ``purify`` (see below). W must be able to follow Z within the run: with Adam at a small learning
rate, give the ADMM run a larger ``lr``.

**Purification** (``purify > 0``; AutoCompress, Liu et al. AAAI 2020, step 4): ADMM's penalty drives more
weights toward zero than the targets remove. After the hard prune, every kept channel of a channel plan's group
whose producing weights have an L2 norm at most ``purify`` times the median of the group's kept channels is
removed too, beyond the plan's target (groups with grouped-conv blocks or split parts are left as they are;
one channel always stays). The counts go to ``context.info["purified"]`` (``{group: channels}``; a trial stores
them in ``compressor_info``). Off (0) by default: the ECCV 2018 method has no such step.

Example:
    >>> import torch
    >>> from slimtune.compressors import CompressionPlan, trace
    >>> from slimtune.compressors.training import FinetuneConfig, TrainingContext, run_compressor
    >>> from slimtune.examples.digits import digits_cnn
    >>> model, x = digits_cnn(width=4), torch.randn(8, 1, 8, 8)
    >>> data = [(x, torch.arange(8) % 10)]
    >>> plan = CompressionPlan.uniform(trace(model, x[:1]), 0.5)
    >>> plan.compressor, plan.compressor_params = "admm", {"rho": 0.1, "steps": 4, "iterations": 2}
    >>> small = run_compressor(model, plan, x[:1], TrainingContext(train_data=data))
    >>> [small.features[i].out_channels for i in (0, 3, 7, 10)]
    [2, 2, 4, 4]
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from slimtune.compressors.compress import finalize
from slimtune.compressors.pruning import clone_model
from slimtune.compressors.training._base import TrainingContext, register_compressor
from slimtune.compressors.training._masks import mask_tensors, prepare, select
from slimtune.compressors.training.finetune import TrainHook
from slimtune.errors import PlanConfigError

if TYPE_CHECKING:
    from slimtune.compressors.graph import ModelGraph
    from slimtune.compressors.plan import CompressionPlan

Key = tuple[str, str]


class ADMMHook(TrainHook):
    """The ADMM penalty and the Z / U / ρ updates during :func:`~slimtune.compressors.training.finetune`.

    Args:
        graph, plan: The model's graph and the targets.
        rho: Initial penalty weight ρ.
        rho_growth: ρ is multiplied by this after every Z/U update.
        iterations: Z/U updates over the run.
        data, loss_fn: For data-driven criteria.

    Attributes:
        history: ``(step, rho, primal residual ‖W − Z‖ / ‖W‖)`` after every update.
    """

    def __init__(
        self,
        graph: ModelGraph,
        plan: CompressionPlan,
        rho: float = 0.01,
        rho_growth: float = 1.5,
        iterations: int = 4,
        data: Iterable[Any] | None = None,
        loss_fn: Any = None,
    ) -> None:
        if not (isinstance(rho, (int, float)) and rho > 0):
            raise PlanConfigError(f"admm needs rho > 0, got {rho!r}", field="plan.compressor_params.rho")
        if not (isinstance(rho_growth, (int, float)) and rho_growth >= 1):
            raise PlanConfigError(
                f"admm needs rho_growth >= 1, got {rho_growth!r}", field="plan.compressor_params.rho_growth"
            )
        if not isinstance(iterations, int) or iterations < 1:
            raise PlanConfigError(
                f"admm needs a positive integer, got {iterations!r}", field="plan.compressor_params.iterations"
            )
        self.graph, self.plan = graph, plan
        self.rho, self.rho_growth, self.iterations = float(rho), float(rho_growth), iterations
        self.data, self.loss_fn = data, loss_fn
        self.params: dict[Key, nn.Parameter] = {}
        self.z: dict[Key, torch.Tensor] = {}
        self.u: dict[Key, torch.Tensor] = {}
        self.history: list[tuple[int, float, float]] = []
        self.update_steps: list[int] = []

    def start(self, model: nn.Module, total_steps: int) -> None:
        # exactly `iterations` Z/U updates, spread evenly over the run and ending at its last step
        # (a run shorter than `iterations` steps makes several updates at one step)
        total = max(1, int(total_steps))
        self.update_steps = [max(1, math.ceil(k * total / self.iterations)) for k in range(1, self.iterations + 1)]
        masks = self._project(model, {})
        self.params = {k: getattr(model.get_submodule(k[0]), k[1]) for k in masks}
        self.u = {k: torch.zeros_like(p) for k, p in self.params.items()}
        self.z = {k: p.detach() * masks[k] for k, p in self.params.items()}

    def penalty(self, model: nn.Module, step: int) -> torch.Tensor:
        total = sum(((p - self.z[k] + self.u[k]) ** 2).sum() for k, p in self.params.items())
        return 0.5 * self.rho * total  # type: ignore[return-value]

    def after_step(self, model: nn.Module, step: int) -> None:
        for _ in range(self.update_steps.count(step)):
            self._update(model, step)

    def _update(self, model: nn.Module, step: int) -> None:
        with torch.no_grad():
            v = {k: p.detach() + self.u[k] for k, p in self.params.items()}
            masks = self._project(model, v)
            self.z = {k: v[k] * masks[k] for k in v}
            for k, p in self.params.items():
                self.u[k] = self.u[k] + p.detach() - self.z[k]
        self.history.append((step, self.rho, self.residual()))
        # U is the dual scaled by 1/ρ: it shrinks as ρ grows, so the penalty's pull ρ·U stays the same
        self.rho *= self.rho_growth
        self.u = {k: u / self.rho_growth for k, u in self.u.items()}

    def residual(self) -> float:
        """``‖W − Z‖ / ‖W‖`` over the penalised parameters: how far W is from the sparse set."""
        num = sum(float(((p.detach() - self.z[k]) ** 2).sum()) for k, p in self.params.items())
        den = sum(float((p.detach() ** 2).sum()) for p in self.params.values())
        return (num / max(den, 1e-30)) ** 0.5

    def _project(self, model: nn.Module, values: dict[Key, torch.Tensor]) -> dict[Key, torch.Tensor]:
        """Keep-masks of the plan's selection made on ``values`` (W + U) instead of the model's weights."""
        probe = model
        if values:
            probe = clone_model(model)
            with torch.no_grad():
                for (layer, pname), v in values.items():
                    getattr(probe.get_submodule(layer), pname).copy_(v)
        targets = {n: s.sparsity for n, s in self.plan.prune.items()}
        selection = select(probe, self.graph, self.plan, targets, None, self.data, self.loss_fn)
        masks = mask_tensors(probe, self.graph, self.plan, selection)
        if self.params:  # every penalised parameter keeps a mask, all ones where nothing is pruned now
            masks = {k: masks.get(k, torch.ones_like(p, dtype=torch.bool)) for k, p in self.params.items()}
        return masks


@register_compressor(
    "admm",
    defaults={
        "rho": 0.2,
        "rho_growth": 2.0,
        "iterations": 4,
        "epochs": None,
        "steps": None,
        "lr": None,
        "optimizer": None,
        "purify": 0.0,
    },
    trains=True,
)
def admm(
    model: nn.Module, plan: CompressionPlan, example_inputs: Any, context: TrainingContext, **params: Any
) -> nn.Module:
    """ADMM-train a copy of ``model`` toward the plan's targets, then hard-prune it to them."""
    work, graph = prepare(model, plan, example_inputs, context.graph)
    hook = ADMMHook(
        graph, plan, params["rho"], params["rho_growth"], params["iterations"], context.calibration, context.loss_fn
    )
    context.train(work, "admm", [hook], context.budget(params))
    targets = {n: s.sparsity for n, s in plan.prune.items()}
    selection = select(work, graph, plan, targets, None, context.calibration, context.loss_fn)
    purify = params.get("purify") or 0.0
    if isinstance(purify, bool) or not isinstance(purify, (int, float)) or not purify >= 0:
        raise PlanConfigError(
            f"admm needs a number >= 0 (0: off), got {purify!r}", field="plan.compressor_params.purify"
        )
    if purify > 0 and plan.granularity == "channel":
        purified = purify_selection(work, graph, selection, purify)
        context.info["purified"] = {g: n for g, n in purified.items() if n}
    return finalize(work, plan, example_inputs, graph, selection, context.speedup, context.calibration)


def purify_selection(
    model: nn.Module, graph: ModelGraph, selection: dict[str, torch.Tensor], threshold: float
) -> dict[str, int]:
    """Add to ``selection`` (in place) the kept channels whose producing weights ADMM drove to (near) zero.

    A channel goes when the L2 norm of its producers' weights is at most ``threshold`` times the median norm
    of its group's kept channels. Returns ``{group: channels added}``.
    """
    from slimtune.compressors.criteria._common import member_matrix, param

    added: dict[str, int] = {}
    for name, group in graph.groups.items():
        if not group.prunable or group.blocks > 1 or len(group.parts) > 1:
            continue
        norms = torch.zeros(group.size, dtype=torch.float64, device="cpu")  # bookkeeping on the CPU
        for m in group.members:
            if m.role not in ("out", "dw", "mha"):
                continue
            module = model.get_submodule(m.layer)
            w = param(module, "weight")
            if w is None:
                continue
            rows = member_matrix(module, m, w, "purify")[m.positions.long().to(w.device)]
            norms.index_add_(0, m.channels.long().cpu(), rows.double().square().sum(1).cpu())
        norms = norms.sqrt()
        gone = torch.zeros(group.size, dtype=torch.bool, device="cpu")
        if name in selection:
            gone[selection[name].long().cpu()] = True
        kept = (~gone).nonzero().flatten()
        if len(kept) <= 1:
            continue
        limit = threshold * float(norms[kept].median())
        extra = kept[norms[kept] <= limit]
        if len(extra) >= len(kept):
            extra = extra[torch.argsort(norms[extra], descending=True)[1:]]  # one channel always stays
        if len(extra):
            before = selection.get(name, torch.zeros(0, dtype=torch.long, device="cpu")).cpu()
            selection[name] = torch.cat([before, extra.to(before.dtype)]).sort().values
        added[name] = int(len(extra))
    return added
