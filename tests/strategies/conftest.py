"""Fixtures of the strategy tests."""

from __future__ import annotations

import pytest

import slimtune
from _strategy_tasks import make_mlp_task


@pytest.fixture
def mlp_task() -> slimtune.Task:
    return make_mlp_task()
