"""Shared fixtures: small reference models and their inputs."""

from __future__ import annotations

import os
import warnings

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# --doctest-modules would import every conftest.py as a module named "conftest": two of them in
# sibling folders then clash ("import file mismatch") when those folders are collected together.
# They hold fixtures, not doctests; pytest still loads them as conftests.
collect_ignore_glob = ["*/conftest.py"]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def quiet_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny convolutions: fastest, and stays fast on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
