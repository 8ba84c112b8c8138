"""Fixtures of the training-compressor tests: the digits task (cached pretrained CNN) and its graph.

Imported by each test module (``from _training_fixtures import digits, one_thread``) rather than kept in a
``conftest.py``: several test folders without ``__init__.py`` holding a ``conftest.py`` clash under pytest's
default import mode.
"""

from __future__ import annotations

import functools

import pytest
import torch

from slimtune.compressors import trace


@functools.lru_cache(maxsize=1)
def _digits():
    from slimtune.examples.digits import make_task

    task = make_task("cnn")
    return task, trace(task.model, task.example_inputs)


@pytest.fixture
def digits():
    """``(task, graph)``: the digits CNN task (built-in fine-tune loop on 23 batches of 64) and its graph,
    built once per test session."""
    return _digits()


@pytest.fixture(autouse=True)
def one_thread():
    """These tiny models train fastest on one thread, and the 2 shared cores then stay usable by others."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
