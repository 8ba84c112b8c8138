"""A tiny MLP task for the strategy tests: trials take milliseconds."""

from __future__ import annotations

import torch

import slimtune
from slimtune.examples.models import mlp


def make_mlp_task(hidden: tuple[int, ...] = (32, 24), name: str = "tiny-mlp", finetune_steps: int = 0) -> slimtune.Task:
    """An MLP 16 → hidden → 4 on random inputs; the metric is the agreement (in [0, 1]) of the
    compressed model's soft outputs with the original's, so every compression costs some metric.
    With ``finetune_steps``, trials fine-tune that many steps toward the original's outputs."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = mlp(16, hidden, 4).eval()
    x = torch.randn(256, 16, generator=g)
    with torch.no_grad():
        ref = model(x)

    def evaluate(m: torch.nn.Module) -> float:
        with torch.no_grad():
            return float(torch.exp(-(m(x) - ref).square().mean()))

    if finetune_steps:
        return slimtune.Task(model, x[:1], evaluate, name=name, train_data=[(x, ref)], loss_fn=torch.nn.functional.mse_loss,
                             finetune_config={"steps": finetune_steps, "lr": 1e-3})
    return slimtune.Task(model, x[:1], evaluate, name=name)
