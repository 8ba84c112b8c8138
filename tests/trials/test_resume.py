"""Several processes on one SQLite study: a worker killed mid-trial, and two workers at once.

A small driver script (written into ``tmp_path``) builds a tiny task whose ``evaluate`` sleeps a
little (so a trial can be killed while it runs) and calls ``slimtune.search``. Heartbeats are
made fast through ``SLIMTUNE_HEARTBEAT_INTERVAL`` / ``SLIMTUNE_GRACE_PERIOD`` in the
subprocesses' environment, so a dead worker's trial goes stale within seconds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

DRIVER = r'''
import os, random, sys, time

import torch

torch.set_num_threads(1)
import slimtune
from slimtune.examples.models import mlp

url, n_trials, mode, sleep, log = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4]), sys.argv[5]
gen = torch.Generator().manual_seed(0)
torch.manual_seed(0)
model = mlp(16, (32, 16), 4).eval()
x = torch.randn(256, 16, generator=gen)
with torch.no_grad():
    y = model(x).argmax(1)
jitter = random.Random(os.getpid())
# with a barrier file, the starting worker evaluates nothing after the baseline until the joining
# worker has started (a loaded machine can take longer to start a process than to run all trials)
barrier = os.environ.get("SLIMTUNE_TEST_BARRIER")
if barrier and mode == "join":
    open(barrier, "w").close()
calls = 0


def evaluate(m):
    global calls
    calls += 1
    if barrier and mode == "run" and calls > 1:
        deadline = time.time() + 120
        while not os.path.exists(barrier) and time.time() < deadline:
            time.sleep(0.05)
    with open(log, "a") as f:
        f.write(f"{os.getpid()}\n")
    time.sleep(sleep * (0.75 + 0.5 * jitter.random()))
    with torch.no_grad():
        return float((m(x).argmax(1) == y).float().mean())


task = slimtune.Task(model, x[:1], evaluate, name="tiny-resume")
slimtune.search(task, strategy="random", n_trials=n_trials, storage=url, study_name="s",
                space={"sensitivity": False}, progress=False, join=(mode == "join"))
print("DRIVER DONE", flush=True)
'''

HEARTBEAT = 1
GRACE = 6
WAIT = 150.0  # seconds any one driver may take before the test fails


class Driver:
    """One driver subprocess, its output in files."""

    def __init__(
        self, tmp_path: Path, url: str, n_trials: int, mode: str, sleep: float, tag: str, barrier: Path | None = None
    ) -> None:
        script = tmp_path / "driver.py"
        if not script.exists():
            script.write_text(DRIVER)
        self.out = tmp_path / f"{tag}.out"
        self.url = url
        self.log = tmp_path / "evaluations.log"
        env = dict(os.environ)
        env.update(
            SLIMTUNE_HEARTBEAT_INTERVAL=str(HEARTBEAT),
            SLIMTUNE_GRACE_PERIOD=str(GRACE),
            PYTHONUNBUFFERED="1",
            OMP_NUM_THREADS="1",
        )
        if barrier is not None:
            env["SLIMTUNE_TEST_BARRIER"] = str(barrier)
        self.fh = open(self.out, "w")
        self.proc = subprocess.Popen(
            [sys.executable, str(script), url, str(n_trials), mode, str(sleep), str(self.log)],
            stdout=self.fh,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env=env,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        if not self.fh.closed:
            self.fh.flush()
        return self.out.read_text()[-4000:]

    def wait(self, timeout: float = WAIT) -> None:
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            pytest.fail(f"driver {self.pid} did not finish within {timeout:.0f}s:\n{self.output()}\n{self.study_dump()}")
        assert rc == 0, f"driver {self.pid} exited with {rc}:\n{self.output()}"
        assert "DRIVER DONE" in self.output()

    def study_dump(self) -> str:
        trials = trials_of(storage(self.url)) or []
        return "\n".join(f"{t.number} {t.state.name} {t.params} {t.system_attrs.get('failed_trial')}" for t in trials)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.fh.close()


def storage(url: str) -> optuna.storages.RDBStorage:
    """A plain storage (no heartbeats: the test only looks)."""
    return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})


def trials_of(st: optuna.storages.RDBStorage) -> list[FrozenTrial] | None:
    try:
        study = optuna.load_study(study_name="s", storage=st)
    except KeyError:
        return None
    return study.get_trials(deepcopy=True)


def poll(st: optuna.storages.RDBStorage, until: Any, drivers: list[Driver], timeout: float = WAIT) -> list[FrozenTrial]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        trials = trials_of(st)
        if trials is not None and until(trials):
            return trials
        for d in drivers:
            if d.proc.poll() is not None:
                pytest.fail(f"driver {d.pid} ended early ({d.proc.returncode}):\n{d.output()}")
        time.sleep(0.05)
    pytest.fail("timed out waiting on the study:\n" + "\n".join(d.output() for d in drivers))


def count(trials: list[FrozenTrial], state: TrialState) -> int:
    return sum(1 for t in trials if t.state == state)


def record(t: FrozenTrial) -> tuple:
    return (t.number, t.state, t.params, t.values, t.user_attrs)


# ---------------------------------------------------------------------- kill and resume
def test_worker_killed_mid_trial_loses_nothing_and_the_study_resumes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'resume.db'}"
    st = storage(url)
    drivers: list[Driver] = []
    try:
        first = Driver(tmp_path, url, 6, "run", 0.6, "first")
        drivers.append(first)

        def three_done_fourth_running(trials: list[FrozenTrial]) -> bool:
            # the running trial has chosen its plan: it is compressing or evaluating
            running = [t for t in trials if t.state == TrialState.RUNNING and "plan" in t.user_attrs]
            return count(trials, TrialState.COMPLETE) >= 3 and len(running) >= 1

        poll(st, three_done_fourth_running, drivers)
        os.kill(first.pid, signal.SIGKILL)
        first.proc.wait(timeout=30)
        first.stop()

        trials = trials_of(st)
        assert trials is not None
        running = [t for t in trials if t.state == TrialState.RUNNING]
        assert len(running) == 1, [record(t) for t in trials]
        killed = running[0]
        assert set(killed.params) == {"sparsity/features.0", "sparsity/features.2"}
        done_before = {t.number: record(t) for t in trials if t.state == TrialState.COMPLETE}
        assert len(done_before) >= 3
        assert count(trials, TrialState.FAIL) == 0

        second = Driver(tmp_path, url, 6, "run", 0.6, "second")
        drivers.append(second)
        second.wait()

        trials = trials_of(st)
        assert trials is not None
        by_number = {t.number: t for t in trials}
        assert len(by_number) == len(trials)  # every trial stored once
        # the killed trial went stale and failed; nothing is left running or waiting
        assert by_number[killed.number].state == TrialState.FAIL
        reason = by_number[killed.number].user_attrs.get("fail_reason", "")
        assert reason.startswith("WorkerDied: its worker stopped sending heartbeats"), reason
        assert count(trials, TrialState.RUNNING) == 0 and count(trials, TrialState.WAITING) == 0
        # it was retried once, with the same parameters, and the retry completed
        retries = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
        assert len(retries) == 1, [record(t) for t in trials]
        retry = retries[0]
        assert retry.state == TrialState.COMPLETE
        assert retry.params == killed.params
        assert retry.number > killed.number
        # the budget: exactly 6 finished trials besides the killed one's FAIL
        finished = [t for t in trials if t.state.is_finished() and t.number != killed.number]
        assert len(finished) == 6, [record(t) for t in trials]
        assert count(trials, TrialState.COMPLETE) == 6
        assert len(trials) == 7
        # no finished trial was lost or changed
        for number, before in done_before.items():
            assert record(by_number[number]) == before
        # the resumed run kept the study's settings and baseline
        study = optuna.load_study(study_name="s", storage=st)
        assert study.user_attrs["n_trials"] == 6
        for t in trials:
            if t.state == TrialState.COMPLETE:
                assert "measures" in t.user_attrs and "plan" in t.user_attrs
    finally:
        for d in drivers:
            d.stop()


def test_trial_orphaned_before_its_first_heartbeat_does_not_block_resuming(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker killed between creating its trial and the trial's first heartbeat leaves a RUNNING
    trial that Optuna never sees as stale (it has no heartbeat row). Resuming must still finish
    the budget, not wait for that trial forever."""
    import torch

    import slimtune
    from slimtune.examples.models import mlp

    monkeypatch.setenv("SLIMTUNE_HEARTBEAT_INTERVAL", "1")
    monkeypatch.setenv("SLIMTUNE_GRACE_PERIOD", "2")
    gen = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = mlp(16, (32, 16), 4).eval()
    x = torch.randn(64, 16, generator=gen)
    with torch.no_grad():
        y = model(x).argmax(1)

    def evaluate(m: torch.nn.Module) -> float:
        with torch.no_grad():
            return float((m(x).argmax(1) == y).float().mean())

    task = slimtune.Task(model, x[:1], evaluate, name="tiny-orphan")
    url = f"sqlite:///{tmp_path / 'orphan.db'}"
    kw: dict[str, Any] = dict(strategy="random", storage=url, study_name="s", space={"sensitivity": False},
                              progress=False, save_models="none")  # fmt: skip
    slimtune.search(task, n_trials=2, **kw)
    orphan = optuna.load_study(study_name="s", storage=storage(url)).ask()  # RUNNING, no heartbeat ever
    start = time.monotonic()
    study = slimtune.search(task, n_trials=3, timeout=20, **kw)
    elapsed = time.monotonic() - start
    trials = study.get_trials(deepcopy=False)
    states = [(t.number, t.state.name) for t in trials]
    assert count(trials, TrialState.RUNNING) == 0, states
    assert trials[orphan.number].state.is_finished(), states
    retried = {t.system_attrs.get("failed_trial") for t in trials} - {None}
    assert sum(1 for t in trials if t.state.is_finished() and t.number not in retried) == 3, states
    assert elapsed < 19, f"the driver waited {elapsed:.0f}s for a trial that can never report"


# ---------------------------------------------------------------------- two workers
@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list[FrozenTrial], list[int], list[str]]]:
    tmp_path = tmp_path_factory.mktemp("two_workers")
    url = f"sqlite:///{tmp_path / 'workers.db'}"
    st = storage(url)
    drivers: list[Driver] = []
    try:
        barrier = tmp_path / "joined"
        a = Driver(tmp_path, url, 8, "run", 0.5, "a", barrier)
        drivers.append(a)
        # the second worker joins once the first has created and initialised the study; the first
        # waits for it after the baseline, so both take part however slowly the second starts
        poll(st, lambda trials: len(trials) >= 1, drivers)
        b = Driver(tmp_path, url, 8, "join", 0.5, "b", barrier)
        drivers.append(b)
        a.wait()
        b.wait()
        trials = trials_of(st)
        assert trials is not None
        pids = [int(line) for line in (tmp_path / "evaluations.log").read_text().split()]
        yield trials, pids, [a.output() + b.output()]
    finally:
        for d in drivers:
            d.stop()


def test_two_workers_fill_the_budget_exactly(two_workers) -> None:
    trials, pids, _ = two_workers
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers)) == len(trials)  # every trial stored once
    assert sorted(numbers) == list(range(len(trials)))
    assert count(trials, TrialState.FAIL) == 0, [t.user_attrs.get("fail_reason") for t in trials]
    assert count(trials, TrialState.RUNNING) == 0 and count(trials, TrialState.WAITING) == 0
    assert count(trials, TrialState.COMPLETE) == 8, [(t.number, t.state.name) for t in trials]
    for t in trials:
        if t.state == TrialState.COMPLETE:
            assert "measures" in t.user_attrs and "plan" in t.user_attrs
    # no evaluation beyond the budget; both workers evaluated candidates
    # (the baseline is one extra evaluation, by the first worker)
    assert len(pids) == 8 + 1
    assert len(set(pids)) == 2


def test_two_workers_do_not_evaluate_the_same_point_twice(two_workers) -> None:
    """A joining worker must not replay the first worker's sampler sequence (same seed)."""
    trials, _, _ = two_workers
    points = [tuple(sorted(t.params.items())) for t in trials if t.state == TrialState.COMPLETE]
    duplicates = [p for p in set(points) if points.count(p) > 1]
    assert not duplicates, f"{len(duplicates)} parameter sets evaluated more than once: {duplicates}"
