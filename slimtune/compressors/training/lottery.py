"""``lottery``: iterative magnitude pruning with weight rewinding (the lottery ticket procedure).

Frankle and Carbin, "The Lottery Ticket Hypothesis: Finding Sparse, Trainable Neural Networks", ICLR 2019
(https://arxiv.org/abs/1803.03635), with rewinding to early-training weights from Frankle, Dziugaite, Roy,
Carbin, "Linear Mode Connectivity and the Lottery Ticket Hypothesis", ICML 2020
(https://arxiv.org/abs/1912.05611). Each of ``rounds`` rounds trains the current (masked) model, prunes
a further part of what remains by the plan's criteria — after round ``r`` each group is at
``1 − (1 − s)^(r / rounds)``, so the last round reaches the target ``s`` — and rewinds the surviving weights
(and batch-norm statistics) to the stored ones: the weights the run started from (``rewind: 0``), or those
after ``rewind`` steps of the first round's training. Rounds after the first resume training at the
rewind step (Frankle et al. 2020): they run the round's remaining steps with the learning rates the
schedule gives those steps, not a fresh schedule (with ``rewind: 0`` each round is a full run). The
returned model is the rewound ticket at the plan's targets; the trial's fine-tune then trains it with
the task's fine-tune settings, from its own step 0 (the paper trains the ticket from step ``rewind``).

Parameters: ``rounds``, ``rewind`` (steps), ``epochs`` / ``steps``, ``lr``, ``optimizer`` (each round's
training; None: the fine-tune config's).

Example:
    >>> from slimtune.compressors.training.lottery import round_sparsity
    >>> [round(round_sparsity(0.75, r, 2), 3) for r in (1, 2)]
    [0.5, 0.75]
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from slimtune.compressors.compress import finalize
from slimtune.compressors.pruning import make_permanent
from slimtune.compressors.training._base import TrainingContext, register_compressor
from slimtune.compressors.training._masks import Selection, prepare, select, set_masks
from slimtune.compressors.training.finetune import TrainHook
from slimtune.errors import PlanConfigError

if TYPE_CHECKING:
    from slimtune.compressors.plan import CompressionPlan


def round_sparsity(target: float, r: int, rounds: int) -> float:
    """Sparsity after round ``r`` of ``rounds``: the same fraction of the remaining weights goes each round."""
    return 1.0 - (1.0 - target) ** (r / rounds)


class RewindPoint(TrainHook):
    """Stores a copy of the model's ``state_dict`` after ``step`` steps (0: before training).

    Attributes:
        state: The stored state (None until the step is reached).
    """

    def __init__(self, step: int = 0) -> None:
        self.step = step
        self.state: dict[str, torch.Tensor] | None = None

    def start(self, model: nn.Module, total_steps: int) -> None:
        if self.step == 0:
            self.state = _dense_state(model)

    def after_step(self, model: nn.Module, step: int) -> None:
        if step == self.step:
            self.state = _dense_state(model)

    def end(self, model: nn.Module) -> None:
        if self.state is None:  # the round was shorter than the rewind point
            self.state = _dense_state(model)


def rewind(
    model: nn.Module, state: dict[str, torch.Tensor], graph: Any, plan: CompressionPlan, selection: Selection
) -> nn.Module:
    """Load ``state`` into ``model`` (same parameter objects) and mask ``selection``."""
    make_permanent(model)
    model.load_state_dict(state)
    return set_masks(model, graph, plan, selection)


def _dense_state(model: nn.Module) -> dict[str, torch.Tensor]:
    clone = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for key in [k for k in clone if k.endswith("_orig")]:
        base = key[: -len("_orig")]
        clone[base] = clone.pop(key) * clone.pop(base + "_mask")
    return clone


@register_compressor(
    "lottery",
    defaults={"rounds": 3, "rewind": 0, "epochs": None, "steps": None, "lr": None, "optimizer": None},
    trains=True,
)
def lottery(
    model: nn.Module, plan: CompressionPlan, example_inputs: Any, context: TrainingContext, **params: Any
) -> nn.Module:
    """Train, prune and rewind a copy of ``model`` ``rounds`` times; returns the rewound ticket."""
    rounds, step = params["rounds"], params["rewind"]
    if not isinstance(rounds, int) or rounds < 1:
        raise PlanConfigError(
            f"lottery needs a positive integer, got {rounds!r}", field="plan.compressor_params.rounds"
        )
    if not isinstance(step, int) or step < 0:
        raise PlanConfigError(f"lottery needs a step count >= 0, got {step!r}", field="plan.compressor_params.rewind")
    work, graph = prepare(model, plan, example_inputs, context.graph)
    point = RewindPoint(step)
    selection: Selection = {}
    for r in range(1, rounds + 1):
        # round 1 trains from step 0 and stores step ``rewind``; later rounds resume there, as the
        # paper's rewound networks do: the remaining steps, at the schedule's learning rates for them
        context.train(
            work, "lottery", [point] if r == 1 else [], context.budget(params), start_step=0 if r == 1 else step
        )
        sparsities = {n: round_sparsity(spec.sparsity, r, rounds) for n, spec in plan.prune.items()}
        selection = select(work, graph, plan, sparsities, selection, context.calibration, context.loss_fn)
        assert point.state is not None
        rewind(work, point.state, graph, plan, selection)
    return finalize(work, plan, example_inputs, graph, selection, context.speedup, context.calibration)
