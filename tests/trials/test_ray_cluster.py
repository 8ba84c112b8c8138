"""A two-node Ray cluster started with ``ray start`` (as the README shows) and a study run on it
with ``slimtune run --ray-address``.

The test starts the head (``ray start --head --node-ip-address 127.0.0.1 --port <free>``) and a
second node (``ray start --address``), each with ``--block`` so it owns their processes, runs the
CLI against the cluster, checks that trials ran on both nodes and that the CLI reads them, then
stops exactly those two ``ray start`` processes (SIGTERM: each stops the Ray processes it started).

Ray 2.60 rewrites ``127.0.0.1`` as the machine's address for a cluster of several nodes and its
servers listen on all interfaces: traffic stays on this machine (every node runs here) and the
cluster requires a token (token authentication, a fresh token in the environment only).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import optuna
import pytest
from optuna.trial import TrialState

from slimtune.trials import export_model, pareto_front, studies_summary

from _scale import free_port, ray_env

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
RAY = str(Path(sys.executable).parent / "ray")

SPEC = """\
study: cluster
storage: sqlite:///cluster.db
task: _scale:slow_task
task_args: {{sleep: 0.3, log: {log}, barrier: 3}}
strategy: {{name: nsga2, population_size: 4}}
space: {{sensitivity: false}}
n_trials: 6
save_models: all
backend: ray
"""


class Cluster:
    """Two Ray nodes on this machine, 1 CPU each, in a temporary directory of their own."""

    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="slimray-"))  # short: Ray's socket paths have a length limit
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        self.env.update(ray_env(single_node=False))
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.procs: list[subprocess.Popen[bytes]] = []
        common = ["--block", "--num-cpus", "1", "--disable-usage-stats", "--temp-dir", str(self.tmp)]
        self._start("head", "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(self.port), "--include-dashboard", "false", *common)
        self._wait_for("head", "Ray runtime started")
        self._start("node", "start", "--address", self.address, *common)
        self._wait_for("node", "Ray runtime started")

    def _start(self, name: str, *args: str) -> None:
        with open(self.tmp / f"{name}.log", "wb") as log:
            self.procs.append(subprocess.Popen([RAY, *args], stdout=log, stderr=subprocess.STDOUT, env=self.env))

    def _wait_for(self, name: str, text: str, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        log = self.tmp / f"{name}.log"
        while time.monotonic() < deadline:
            if text in log.read_text(errors="replace"):
                return
            if self.procs[-1].poll() is not None:
                break
            time.sleep(0.2)
        pytest.fail(f"ray start ({name}) did not come up:\n{log.read_text(errors='replace')[-3000:]}")

    def leftovers(self) -> list[str]:
        """Processes still running from this cluster's directory."""
        out = subprocess.run(["pgrep", "-af", str(self.tmp)], capture_output=True, text=True).stdout
        return [line for line in out.splitlines() if "pgrep" not in line]

    def stop(self) -> None:
        for proc in reversed(self.procs):  # the second node, then the head
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    c = Cluster()
    try:
        yield c
    finally:
        c.stop()
        deadline = time.monotonic() + 30
        while c.leftovers() and time.monotonic() < deadline:
            time.sleep(0.5)
        left = c.leftovers()
        shutil.rmtree(c.tmp, ignore_errors=True)
        assert not left, f"processes of the test's Ray cluster still running: {left}"


def slimtune(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "slimtune", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_study_runs_on_a_two_node_cluster_through_ray_address(cluster: Cluster, tmp_path: Path) -> None:
    log = tmp_path / "evaluations.log"
    (tmp_path / "spec.yaml").write_text(SPEC.format(log=log))
    env = {**cluster.env, "PYTHONPATH": os.pathsep.join([str(REPO), str(HERE)]), "OMP_NUM_THREADS": "1"}
    env.pop("SLIMTUNE_ARTIFACTS", None)

    result = slimtune(tmp_path, env, "run", "spec.yaml", "--ray-address", cluster.address)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "study 'cluster' in sqlite:///cluster.db: 6 complete" in result.stdout, result.stdout
    assert "2 Ray workers" in result.stderr and " on " in result.stderr  # per-trial lines name the node

    trials = optuna.load_study(study_name="cluster", storage=f"sqlite:///{tmp_path / 'cluster.db'}").get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 6
    workers = [t.user_attrs["worker"] for t in trials]
    assert {w["backend"] for w in workers} == {"ray"}
    assert len({w["node"] for w in workers}) == 2  # one worker on each node (1 CPU each), both ran trials
    assert all(w["pid"] not in (os.getpid(),) for w in workers)
    assert all("plan" in t.user_attrs and "measures" in t.user_attrs and "model_artifact" in t.user_attrs for t in trials)

    # what `slimtune status`, `pareto` and `export` read: the cluster's trials like local ones
    url = f"sqlite:///{tmp_path / 'cluster.db'}"
    row = studies_summary(url).set_index("study").loc["cluster"]
    assert (row["complete"], row["running"], row["fail"]) == (6, 0, 0)
    study = optuna.load_study(study_name="cluster", storage=url)
    front = pareto_front(study)
    assert not front.empty
    assert export_model(study, int(front.trial[0]), tmp_path / "model.pt").exists()
