"""A tiny task with training data, for trials that use the built-in fine-tune loop and training compressors
(``task: _train_tasks:train_task`` in a spec, with ``tests/trials`` on the path)."""

from __future__ import annotations

import torch
from torch import nn

from slimtune.trials.task import Task


def train_task(hidden: int = 32, **task_kwargs) -> Task:
    """A Linear(8, hidden) → BN → ReLU → Linear(hidden, hidden) → ReLU → Linear(hidden, 3) classifier on a
    fixed random 3-class problem, trained for 150 steps; metric: accuracy on held-out samples."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(640, 8, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] + x[:, 2] > 0.5).long()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Linear(8, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 3)
        )
    batches = [(x[i : i + 64], y[i : i + 64]) for i in range(0, 512, 64)]
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    for step in range(150):
        xb, yb = batches[step % len(batches)]
        opt.zero_grad()
        nn.functional.cross_entropy(model(xb), yb).backward()
        opt.step()
    model.eval()
    xv, yv = x[512:], y[512:]

    def evaluate(m: nn.Module) -> float:
        m.eval()
        with torch.no_grad():
            return float((m(xv).argmax(1) == yv).float().mean())

    return Task(model, x[:1], evaluate, train_data=batches, name=f"train-{hidden}", **task_kwargs)
