"""Queued trials on a SQLite study popped by several processes at once: each goes to one worker.

Seeds, retries of dead workers' trials and enqueued points wait in the study as WAITING trials;
workers asking at the same moment must not both get the same one (both would run it, and the
second's result could not be stored).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
from optuna.trial import TrialState

from slimtune.trials import make_storage

WORKER = r"""
import os, sys, time

import optuna

from slimtune.trials import make_storage

url, barrier, count, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
study = optuna.load_study(study_name="queue", storage=make_storage(url))
open(os.path.join(barrier, str(os.getpid())), "w").close()
while len(os.listdir(barrier)) < count:  # ask together
    time.sleep(0.001)
print(" ".join(str(study.ask().number) for _ in range(n)), flush=True)
"""


def test_each_queued_trial_is_popped_by_exactly_one_worker(tmp_path: Path) -> None:
    workers, per_worker = 4, 15
    url = f"sqlite:///{tmp_path / 'queue.db'}"
    study = optuna.create_study(study_name="queue", storage=make_storage(url))
    for i in range(workers * per_worker):
        study.enqueue_trial({"x": float(i)})
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")])}
    procs = [
        subprocess.Popen([sys.executable, str(script), url, str(barrier), str(workers), str(per_worker)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        for _ in range(workers)
    ]
    outs = [p.communicate(timeout=180) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
    popped = [int(n) for out, _ in outs for n in out.split()]
    assert len(popped) == workers * per_worker
    duplicates = sorted({n for n in popped if popped.count(n) > 1})
    assert not duplicates, f"trials popped by more than one worker: {duplicates}"
    trials = optuna.load_study(study_name="queue", storage=url).get_trials()
    # every ask got a queued trial (none created anew), and every queued trial was handed out
    assert sorted(popped) == [t.number for t in trials] == list(range(workers * per_worker))
    assert all(t.state == TrialState.RUNNING and t.datetime_start is not None for t in trials)
    assert [t.system_attrs["fixed_params"]["x"] for t in trials] == [float(i) for i in range(workers * per_worker)]
