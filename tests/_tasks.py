"""Tiny task functions for spec and CLI tests (``task: _tasks:tiny_task`` with ``tests/`` on the path).

The model is a two-layer MLP on a fixed random 3-class problem, trained for a few steps so the
metric means something; everything runs in well under a second.
"""

from __future__ import annotations

import torch
from torch import nn

from slimtune.trials.task import Task

NOT_CALLABLE = 42


def _data(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 8, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return x, y


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def tiny_task(
    hidden: int = 16, seed: int = 0, train_steps: int = 60, finetune_steps: int = 0, calibrated: bool = False
) -> Task:
    """A Linear(8, hidden) → ReLU → Linear(hidden, 3) classifier; its metric is accuracy (``calibrated``: with
    calibration batches from its data)."""
    torch.manual_seed(seed)
    x, y = _data(seed)
    model = nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Linear(hidden, 3))

    def fit(m: nn.Module, steps: int) -> None:
        m.train()
        opt = torch.optim.Adam(m.parameters(), lr=1e-2)
        for _ in range(steps):
            opt.zero_grad()
            nn.functional.cross_entropy(m(x), y).backward()
            opt.step()
        m.eval()

    fit(model, train_steps)
    finetune = (lambda m: fit(m, finetune_steps)) if finetune_steps else None
    calibration = [x[i : i + 32] for i in range(0, 128, 32)] if calibrated else None
    return Task(
        model.eval(),
        x[:1],
        lambda m: _accuracy(m, x, y),
        finetune=finetune,
        calibration=calibration,
        name=f"tiny-{hidden}",
    )


def failing_task() -> Task:
    """A task function that raises."""
    raise RuntimeError("cannot build the task (on purpose)")


def not_a_task() -> int:
    """A task function returning something other than a Task."""
    return 42


def raising_evaluate_task() -> Task:
    """A valid Task whose evaluate raises."""
    task = tiny_task()

    def evaluate(model: nn.Module) -> float:
        raise RuntimeError("evaluation failed (on purpose)")

    task.evaluate = evaluate
    return task


def nan_task() -> Task:
    """A valid Task whose evaluate returns NaN."""
    task = tiny_task()
    task.evaluate = lambda model: float("nan")
    return task


def reference_task(model: str = "resnet20", batch: int = 8, seed: int = 0) -> Task:
    """One of :data:`slimtune.examples.models.REFERENCE_MODELS` (random weights, batch-norm
    statistics randomised so channels differ) on a fixed random batch; the metric is the agreement
    of the compressed model's top-1 class with the original's. Fine-tuning is the built-in loop,
    one step on that batch."""
    from slimtune.examples.models import REFERENCE_MODELS, randomize_batchnorm_

    factory, shape = REFERENCE_MODELS[model]
    torch.manual_seed(seed)
    net = randomize_batchnorm_(factory(), torch.Generator().manual_seed(seed)).eval()
    x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        y = net(x).argmax(1)
    return Task(
        net, x[:1], lambda m: _accuracy(m, x, y), calibration=[x], train_data=[(x, y)],
        finetune_config={"steps": 1, "lr": 1e-3}, name=f"reference-{model}",
    )  # fmt: skip


def zoo_task(model: str = "hf_bert", batch: int = 4, seed: int = 0) -> Task:
    """One of :data:`slimtune.examples.zoo.ZOO` (random weights) on a fixed random batch; the metric is
    the agreement of the compressed model's top-1 predictions (per token for language models) with
    the original's. Fine-tuning is the built-in loop, one step on that batch."""
    from slimtune.compressors._outputs import logits
    from slimtune.examples.zoo import ZOO

    net, inputs = ZOO[model].build(batch=batch, seed=seed)
    with torch.no_grad():
        y = logits(net(*inputs)).argmax(-1)

    def agreement(m: nn.Module) -> float:
        m.eval()
        with torch.no_grad():
            return float((logits(m(*inputs)).argmax(-1) == y).float().mean())

    return Task(
        net, tuple(t[:1] for t in inputs), agreement, calibration=[inputs], train_data=[(inputs, y)],
        finetune_config={"steps": 1, "lr": 1e-3}, name=f"zoo-{model}",
    )  # fmt: skip
