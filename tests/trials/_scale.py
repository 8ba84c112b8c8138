"""Helpers of the scale-out tests (importable as ``_scale`` with ``tests/trials`` on the path).

:func:`slow_task` (``task: _scale:slow_task`` in a spec) is a tiny MLP labelled by its own
predictions whose ``evaluate`` sleeps, so a test can find a trial running and kill its worker;
every evaluation appends the evaluating process's pid to ``log``. :func:`ray_env` is the
environment of a test's Ray, :func:`free_port` a free port on 127.0.0.1.
"""

from __future__ import annotations

import os
import secrets
import socket
import time

import torch

from slimtune.examples.models import mlp
from slimtune.trials.task import Task


def slow_task(
    sleep: float = 0.5,
    log: str | None = None,
    barrier: int = 0,
    name: str = "tiny-slow",
    hold: str | None = None,
    hold_after: int = 0,
) -> Task:
    """An MLP(16 → 32 → 16 → 4) on fixed random data; ``evaluate`` takes about ``sleep`` seconds.

    With ``barrier`` (and ``log``), an evaluation first waits (at most 60 s) until ``barrier``
    different processes have evaluated or are evaluating: every worker gets a trial, however
    slowly some of them start. The first evaluation (the study's baseline, by the process that
    creates the study) does not wait. With ``hold`` (a file path), an evaluation does not end
    while that file exists (at most 60 s): a test can catch a trial mid-evaluation for sure;
    with ``hold_after`` (and ``log``) only the evaluations after the first ``hold_after`` are held.
    """
    gen = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = mlp(16, (32, 16), 4).eval()
    x = torch.randn(256, 16, generator=gen)
    with torch.no_grad():
        y = model(x).argmax(1)

    def evaluate(m: torch.nn.Module) -> float:
        index = 0  # this evaluation's place in the log (1: the first)
        if log is not None:
            with open(log, "a") as f:
                f.write(f"{os.getpid()}\n")
            with open(log) as f:
                index = len(f.read().split())
            first = index == 1
            deadline = time.monotonic() + 60
            while barrier and not first and time.monotonic() < deadline:
                with open(log) as f:
                    if len(set(f.read().split())) >= barrier:
                        break
                time.sleep(0.05)
        time.sleep(sleep)
        deadline = time.monotonic() + 60
        while hold is not None and index > hold_after and os.path.exists(hold) and time.monotonic() < deadline:
            time.sleep(0.02)
        with torch.no_grad():
            return float((m(x).argmax(1) == y).float().mean())

    return Task(model, x[:1], evaluate, name=name)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# one token per test process: Ray caches the first token it reads, so a second local Ray started in the same
# process (another test module's local_ray) must use the same one
_TOKEN = secrets.token_hex(32)


def ray_env(single_node: bool) -> dict[str, str]:
    """Environment for a test's Ray: token authentication with a fresh token (one per process) kept in the
    environment (Ray 2.59+ turns token auth on; the token never touches ``~/.ray``), and for a
    single-node session Ray's loopback-only mode (node IP and every server on 127.0.0.1)."""
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": _TOKEN, "RAY_USAGE_STATS_ENABLED": "0"}
    if single_node:
        env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # Ray's switch for "this node only": binds 127.0.0.1
    return env
