"""A ``postgresql://`` storage shared by four worker processes on one study (a real server).

The server is the session's (``conftest.PostgresServer``: Debian's PostgreSQL on 127.0.0.1, a
free port, a temporary data directory); this test gets a fresh database. One process creates the
study (``search``), three join it (``search(join=True)``, what ``slimtune worker`` does); all four
start together (a file barrier) and run trials at once until the study holds its budget.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

WORKER = r'''
import os, sys, time

import torch

torch.set_num_threads(1)
import slimtune
from slimtune.examples.models import mlp

url, n_trials, join, sleep, log, barrier = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "join", float(sys.argv[4]), sys.argv[5], sys.argv[6]
gen = torch.Generator().manual_seed(0)
torch.manual_seed(0)
model = mlp(16, (32, 16), 4).eval()
x = torch.randn(256, 16, generator=gen)
with torch.no_grad():
    y = model(x).argmax(1)


def evaluate(m):
    with open(log, "a") as f:
        f.write(f"{os.getpid()}\n")
    time.sleep(sleep)
    with torch.no_grad():
        return float((m(x).argmax(1) == y).float().mean())


task = slimtune.Task(model, x[:1], evaluate, name="tiny-postgres")
# all four start together: each waits for the others to be ready, joiners for the study to exist
open(os.path.join(barrier, str(os.getpid())), "w").close()
while len(os.listdir(barrier)) < 4:
    time.sleep(0.05)
if join:
    import optuna
    while True:
        try:
            if "slimtune" in optuna.load_study(study_name="pg", storage=url).user_attrs:
                break
        except KeyError:
            pass
        time.sleep(0.1)
slimtune.search(task, strategy="random", n_trials=n_trials, storage=url, study_name="pg",
                space={"sensitivity": False}, progress=False, join=join, save_models="none")
print("WORKER DONE", flush=True)
'''

N_TRIALS = 12
WAIT = 120.0


def test_four_workers_share_one_study_on_postgresql(postgres_url: str, tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    log = tmp_path / "evaluations.log"
    barrier = tmp_path / "ready"
    barrier.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(mode: str, tag: str) -> None:
        out = tmp_path / f"{tag}.out"
        with open(out, "w") as fh:
            cmd = [sys.executable, str(script), postgres_url, str(N_TRIALS), mode, "0.5", str(log), str(barrier)]
            procs.append((subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=tmp_path), out))

    storage = optuna.storages.RDBStorage(postgres_url)
    deadline = time.monotonic() + WAIT
    try:
        start("run", "w0")  # creates the study
        for i in range(1, 4):
            start("join", f"w{i}")  # slimtune worker: joins it
        for proc, out in procs:
            rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            assert rc == 0 and "WORKER DONE" in out.read_text(), out.read_text()[-3000:]
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)

    trials = optuna.load_study(study_name="pg", storage=storage).get_trials(deepcopy=False)
    numbers = [t.number for t in trials]
    ids = [t._trial_id for t in trials]
    assert len(numbers) == len(set(numbers)) and len(ids) == len(set(ids))  # every trial stored once
    assert sorted(numbers) == list(range(len(trials)))  # numbers unique and gap-free
    states = [(t.number, t.state.name) for t in trials]
    assert sum(t.state == TrialState.COMPLETE for t in trials) == N_TRIALS, states
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING, TrialState.FAIL)], states
    # only trials that lost the race for the last budget slot may be extra (PRUNED, marked, not run)
    extra = [t for t in trials if t.state == TrialState.PRUNED]
    assert all(t.user_attrs.get("over_budget") for t in extra), states
    for t in trials:
        if t.state == TrialState.COMPLETE:
            assert {"plan", "measures", "worker"} <= set(t.user_attrs)
            assert t.user_attrs["worker"]["backend"] == "local"
    # no trial lost or evaluated twice: one evaluation per complete trial (+ the baseline), by all four
    pids = [int(line) for line in log.read_text().split()]
    assert len(pids) == N_TRIALS + 1
    assert len(set(pids)) == 4
    ran_on = {t.user_attrs["worker"]["pid"] for t in trials if t.state == TrialState.COMPLETE}
    assert ran_on == set(pids), (ran_on, set(pids))
