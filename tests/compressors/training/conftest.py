"""Fixtures of the training-compressor tests: the digits task (cached pretrained CNN) and its graph."""

from __future__ import annotations

import pytest
import torch

from slimtune.compressors import trace


@pytest.fixture(scope="session")
def digits():
    """``(task, graph)``: the digits CNN task (built-in fine-tune loop on 23 batches of 64) and its graph."""
    from slimtune.examples.digits import make_task

    task = make_task("cnn")
    return task, trace(task.model, task.example_inputs)


@pytest.fixture(autouse=True)
def _one_thread():
    """These tiny models train fastest on one thread, and the 2 shared cores then stay usable by others."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
