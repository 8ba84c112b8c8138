"""``slimming``: network slimming — an L1 penalty on batch-norm scales during training, then ``bn_scale`` pruning.

Liu, Li, Shen, Huang, Yan, Zhang, "Learning Efficient Convolutional Networks through Network Slimming", ICCV
2017 (https://arxiv.org/abs/1708.06519). Training with ``loss + λ · Σ |γ|`` over every BatchNorm scale ``γ``
(applied as the subgradient ``λ · sign(γ)``) drives the scales of unimportant channels towards zero; the
channels with the smallest ``|γ|`` are then pruned. The paper prunes below one global threshold; here every
group is pruned to its target in the plan, ranked by ``|γ|`` (criterion ``bn_scale``; groups without a
batch norm, and all groups with ``criterion: plan``, keep the plan's criteria).

On a pretrained network and a short run the penalty shrinks all scales almost alike (a batch norm that
follows makes the loss nearly blind to a layer's overall scale); the separation of important from
unimportant channels that the paper reports comes with long sparsity training. The default λ is the paper's
1e-4 (with SGD at lr 0.1 for 160 epochs); short runs need a much larger λ (0.1 for three epochs at lr 0.02
on the digits CNN halves the mean scale).

Parameters: ``penalty`` (λ), ``criterion`` (``bn_scale`` or ``plan``), ``epochs`` / ``steps``, ``lr``,
``optimizer`` (the sparsity training; None: the fine-tune config's).

Example:
    >>> import torch
    >>> from slimtune.compressors.training import FinetuneConfig, finetune
    >>> from slimtune.compressors.training.slimming import BNPenalty
    >>> from slimtune.examples.digits import digits_cnn
    >>> model, x = digits_cnn(width=4), torch.randn(16, 1, 8, 8)
    >>> before = float(model.features[1].weight.detach().abs().sum())
    >>> _ = finetune(model, [(x, torch.arange(16) % 10)], FinetuneConfig(steps=20, lr=0.05), hooks=[BNPenalty(0.05)])
    >>> float(model.features[1].weight.detach().abs().sum()) < before
    True
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from slimtune.compressors.compress import finalize
from slimtune.compressors.plan import PruneSpec
from slimtune.compressors.training._base import TrainingContext, register_compressor
from slimtune.compressors.training._masks import prepare, select
from slimtune.compressors.training.finetune import TrainHook
from slimtune.errors import PlanConfigError

if TYPE_CHECKING:
    from slimtune.compressors.plan import CompressionPlan


class BNPenalty(TrainHook):
    """Adds ``λ · sign(γ)`` to the gradient of every BatchNorm scale ``γ`` (the subgradient of ``λ Σ |γ|``)."""

    def __init__(self, penalty: float) -> None:
        if not (isinstance(penalty, (int, float)) and penalty >= 0):
            raise PlanConfigError(
                f"slimming needs a penalty >= 0, got {penalty!r}", field="plan.compressor_params.penalty"
            )
        self.penalty_weight = float(penalty)
        self.scales: list[nn.Parameter] = []

    def start(self, model: nn.Module, total_steps: int) -> None:
        self.scales = [
            m.weight for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None
        ]

    def after_backward(self, model: nn.Module, step: int) -> None:
        with torch.no_grad():
            for w in self.scales:
                if w.grad is not None:
                    w.grad.add_(self.penalty_weight * torch.sign(w))


@register_compressor(
    "slimming",
    defaults={"penalty": 1e-4, "criterion": "bn_scale", "epochs": None, "steps": None, "lr": None, "optimizer": None},
    trains=True,
)
def slimming(
    model: nn.Module, plan: CompressionPlan, example_inputs: Any, context: TrainingContext, **params: Any
) -> nn.Module:
    """Train a copy of ``model`` with the L1 penalty on BN scales, then prune each group to its target."""
    if params["criterion"] not in ("bn_scale", "plan"):
        raise PlanConfigError(
            f"slimming takes 'bn_scale' or 'plan', got {params['criterion']!r}",
            field="plan.compressor_params.criterion",
        )
    if params["criterion"] == "bn_scale" and plan.granularity != "channel":
        raise PlanConfigError(
            "slimming prunes channels by their BN scale; use granularity 'channel'", field="plan.granularity"
        )
    work, graph = prepare(model, plan, example_inputs, context.graph)
    if params["criterion"] == "bn_scale":  # groups without a batch norm keep the plan's criterion
        prune = {
            n: PruneSpec(s.sparsity, "bn_scale") if graph.groups[n].members_with("norm") else s
            for n, s in plan.prune.items()
        }
        plan = dataclasses.replace(plan, prune=prune)
    context.train(work, "slimming", [BNPenalty(params["penalty"])], context.budget(params))
    targets = {n: s.sparsity for n, s in plan.prune.items()}
    selection = select(work, graph, plan, targets, None, context.calibration, context.loss_fn)
    return finalize(work, plan, example_inputs, graph, selection, context.speedup, context.calibration)
