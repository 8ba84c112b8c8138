"""``backend: ray`` on a local Ray (2 CPUs, one session for the module): the digits study, a custom
sampler, a Ray worker killed mid-trial, the driver killed and re-run, Ray workers and a local
process sharing a PostgreSQL study, and the errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import optuna
import pytest
import torch
from optuna.trial import FrozenTrial, TrialState

import slimtune
from slimtune.errors import SlimtuneError
from slimtune.trials import make_storage, load_model, pareto_front, studies_summary, trials_table

from _scale import slow_task

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
MEASURES = {"accuracy", "accuracy_drop", "flops", "flops_abs", "params", "params_abs", "size", "size_abs"}
WAIT = 120.0


def finished_count(trials: list[FrozenTrial]) -> int:
    retried = {t.system_attrs.get("failed_trial") for t in trials} - {None}
    return sum(1 for t in trials if t.state.is_finished() and t.number not in retried and "over_budget" not in t.user_attrs)


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][:1] != "Z"  # a zombie has exited
    except OSError:
        return False


# ---------------------------------------------------------------------- the digits study
@pytest.fixture(scope="module")
def digits_task() -> slimtune.Task:
    from slimtune.examples.digits import make_task

    return make_task(finetune_epochs=1)


def test_digits_study_on_ray_is_stored_like_a_local_one(local_ray: Any, digits_task: slimtune.Task, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ray.db'}"
    study = slimtune.search(
        digits_task, strategy="nsga2", population_size=4, n_trials=6, storage=url, study_name="digits-ray",
        space={"levels": [0.5]}, constraints=["accuracy_drop <= 0.05"], progress=False,
        backend="ray", ray={"max_concurrent_trials": 2, "resources_per_trial": {"cpu": 1}},
    )  # fmt: skip
    stored = study.get_trials(deepcopy=False)
    # two workers may both ask in the moment the budget runs out: the later trial ends at once as
    # PRUNED, marked over budget and not counted (trials._Budgeted); every other trial is one of six
    over = [t for t in stored if t.user_attrs.get("over_budget")]
    assert all(t.state == TrialState.PRUNED and t.number >= 6 for t in over), over
    trials = [t for t in stored if t not in over]
    assert sorted(t.number for t in trials) == list(range(6))
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 6, [t.user_attrs.get("fail_reason") for t in trials]
    node = local_ray.get_runtime_context().get_node_id()
    pids = set()
    for t in trials:
        attrs = t.user_attrs
        assert MEASURES <= set(attrs["measures"]) and attrs["plan"]["prune"], attrs
        assert {"compress", "finetune", "evaluate", "measure", "save", "total"} <= set(attrs["times"])
        assert set(attrs["constraints"]) == {"accuracy_drop <= 0.05"}
        assert any(key.startswith("constraints") for key in t.system_attrs)  # given to Optuna (set_constraint)
        worker = attrs["worker"]
        assert worker["backend"] == "ray" and worker["node"] == node and worker["node_ip"] and worker["actor"]
        assert worker["pid"] != os.getpid()
        pids.add(worker["pid"])
    assert len(pids) == 2  # two Ray workers, reused across trials
    # what `slimtune pareto / export / status` and the dashboard read: the same as for local trials
    front = pareto_front(study)
    assert not front.empty and front["plan_json"].notna().all()
    model = load_model(study, int(front.trial[0]))
    assert isinstance(model, torch.nn.Module) and model(digits_task.example_inputs).shape == (1, 10)
    assert len(trials_table(study)) == 6
    row = studies_summary(url).set_index("study").loc["digits-ray"]
    assert (row["complete"], row["running"], row["fail"]) == (6, 0, 0)


def test_custom_sampler_simulated_annealing_runs_through_ray(local_ray: Any, digits_task: slimtune.Task, tmp_path: Path) -> None:
    """A custom BaseSampler whose chain lives in the study: two Ray workers extend one chain."""
    from slimtune.strategies.simulated_annealing import ATTR_ACCEPTED, ATTR_STEP

    url = f"sqlite:///{tmp_path / 'sa.db'}"
    study = slimtune.search(
        digits_task, strategy="simulated_annealing", target=0.5, n_trials=6, storage=url, study_name="sa-ray",
        space={"levels": [0.5]}, progress=False, save_models="none", backend="ray",
    )  # fmt: skip
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 6, [t.user_attrs.get("fail_reason") for t in trials]
    assert len({t.user_attrs["worker"]["pid"] for t in trials}) == 2
    for t in trials:
        assert ATTR_STEP in t.user_attrs and ATTR_ACCEPTED in t.user_attrs  # proposed and decided by the sampler
        if t.user_attrs.get("sa.target_met", True):
            assert t.user_attrs["measures"]["flops"] <= 0.5 + 1e-6
    assert any(t.user_attrs[ATTR_ACCEPTED] for t in trials)
    assert trials[0].user_attrs[ATTR_STEP] == 0


# ---------------------------------------------------------------------- a Ray worker killed mid-trial
def run_in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn()
        except BaseException as e:  # re-raised by the test
            box["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, box


def wait_for(study_fn: Callable[[], list[FrozenTrial] | None], until: Callable[[list[FrozenTrial]], bool], alive: Callable[[], bool]) -> list[FrozenTrial]:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        trials = study_fn()
        if trials is not None and until(trials):
            return trials
        assert alive(), "the run ended before the awaited state"
        time.sleep(0.05)
    pytest.fail("timed out waiting for the study")


def load_trials(url: str, name: str) -> list[FrozenTrial] | None:
    try:
        return optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=True)
    except KeyError:
        return None


def test_ray_worker_killed_mid_trial_is_retried_and_the_study_completes(
    local_ray: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLIMTUNE_HEARTBEAT_INTERVAL", "1")
    monkeypatch.setenv("SLIMTUNE_GRACE_PERIOD", "4")
    url = f"sqlite:///{tmp_path / 'fault.db'}"
    make_storage(url)  # the schema exists before the test starts looking at it
    log, hold = tmp_path / "evaluations.log", tmp_path / "hold"
    # the baseline and the first two trials' evaluations run freely; every later one is held (does not
    # end) while the hold file exists, so the fourth evaluation's worker is caught mid-trial for sure,
    # however fast or loaded the machine
    free = 3
    hold.touch()
    task = slow_task(sleep=0.8, log=str(log), hold=str(hold), hold_after=free)
    thread, box = run_in_thread(
        lambda: slimtune.search(task, strategy="random", n_trials=6, storage=url, study_name="fault", save_models="none",
                                space={"sensitivity": False}, progress=False, backend="ray")  # fmt: skip
    )

    def still_running() -> bool:
        if "error" in box:
            raise box["error"]
        return thread.is_alive()

    wait_for(lambda: load_trials(url, "fault"), lambda ts: any(t.state == TrialState.COMPLETE for t in ts), still_running)
    wait_for(lambda: log.read_text().split(), lambda pids: len(pids) > free, still_running)
    pid = int(log.read_text().split()[free])

    def victim_running(trials: list[FrozenTrial]) -> bool:
        return any(t.state == TrialState.RUNNING and (t.user_attrs.get("worker") or {}).get("pid") == pid for t in trials)

    trials = wait_for(lambda: load_trials(url, "fault"), victim_running, still_running)
    victim = next(t for t in trials if t.state == TrialState.RUNNING and (t.user_attrs.get("worker") or {}).get("pid") == pid)
    assert victim.user_attrs["worker"]["backend"] == "ray" and pid != os.getpid() and "plan" in victim.user_attrs
    done_before = {t.number: (t.params, t.values, t.user_attrs) for t in trials if t.state == TrialState.COMPLETE}
    assert done_before
    os.kill(pid, signal.SIGKILL)  # the Ray worker process, mid-trial (held in its evaluation)
    hold.unlink()

    thread.join(WAIT)
    assert not thread.is_alive(), "the study did not finish"
    if "error" in box:
        raise box["error"]
    assert not pid_alive(pid)
    trials = optuna.load_study(study_name="fault", storage=url).get_trials(deepcopy=False)
    by_number = {t.number: t for t in trials}
    states = [(t.number, t.state.name, t.system_attrs.get("failed_trial")) for t in trials]
    assert by_number[victim.number].state == TrialState.FAIL, states
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retries) == 1, states  # retried once, with the same parameters, and it completed
    assert retries[0].state == TrialState.COMPLETE and retries[0].params == victim.params
    assert retries[0].user_attrs["worker"]["pid"] != pid
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 6, states
    assert finished_count(trials) == 6 and not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    for number, before in done_before.items():  # nothing finished was lost or changed
        t = by_number[number]
        assert (t.params, t.values, t.user_attrs) == before


# ---------------------------------------------------------------------- the driver killed, then run again
SPEC = """\
study: resume-ray
storage: sqlite:///ray.db
task: _scale:slow_task
task_args: {{sleep: 0.8, log: {log}}}
strategy: random
space: {{sensitivity: false}}
n_trials: 6
save_models: none
backend: ray
ray: {{max_concurrent_trials: 2}}
"""


def cli(cwd: Path, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "slimtune", *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def test_driver_killed_then_the_same_command_resumes_the_study(local_ray: Any, tmp_path: Path) -> None:
    """``slimtune run`` on a running Ray (``$RAY_ADDRESS``: this module's) killed with SIGKILL: its
    Ray workers die with it (Ray ends the actors of a dead driver); the same command resumes."""
    from slimtune.trials.ray_backend import release_workers

    release_workers()  # this module's idle workers hold the 2 CPUs the CLI's workers need
    log = tmp_path / "evaluations.log"
    (tmp_path / "spec.yaml").write_text(SPEC.format(log=log))
    env = {k: v for k, v in os.environ.items() if k != "SLIMTUNE_ARTIFACTS"}  # with the module Ray's token
    env.update(RAY_ADDRESS=local_ray.get_runtime_context().gcs_address, PYTHONPATH=os.pathsep.join([str(REPO), str(HERE)]),
               OMP_NUM_THREADS="1", SLIMTUNE_HEARTBEAT_INTERVAL="1", SLIMTUNE_GRACE_PERIOD="3")  # fmt: skip
    url = f"sqlite:///{tmp_path / 'ray.db'}"
    make_storage(url)  # the schema exists before the test starts looking at it
    first = cli(tmp_path, env, "-q", "run", "spec.yaml")
    try:

        def two_done_one_running(trials: list[FrozenTrial]) -> bool:
            running = [t for t in trials if t.state == TrialState.RUNNING and "worker" in t.user_attrs]
            return sum(t.state == TrialState.COMPLETE for t in trials) >= 2 and len(running) >= 1

        trials = wait_for(lambda: load_trials(url, "resume-ray"), two_done_one_running, lambda: first.poll() is None)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(30)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(30)
    # the driver's Ray workers die with it (Ray's fate sharing): nothing keeps running the study
    workers = {t.user_attrs["worker"]["pid"] for t in trials if "worker" in t.user_attrs}
    deadline = time.monotonic() + 30
    while any(pid_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(pid_alive(p) for p in workers)
    trials = load_trials(url, "resume-ray")
    assert trials is not None
    done_before = {t.number: (t.params, t.values, t.user_attrs) for t in trials if t.state == TrialState.COMPLETE}
    interrupted = [t.number for t in trials if t.state == TrialState.RUNNING]
    assert len(done_before) >= 2 and interrupted

    second = cli(tmp_path, env, "run", "spec.yaml")
    out, _ = second.communicate(timeout=WAIT)
    assert second.returncode == 0, out[-4000:]
    assert "study 'resume-ray' in sqlite:///ray.db: 6 complete" in out, out[-4000:]
    trials = load_trials(url, "resume-ray")
    assert trials is not None
    by_number = {t.number: t for t in trials}
    states = [(t.number, t.state.name, t.system_attrs.get("failed_trial")) for t in trials]
    for number, before in done_before.items():  # no finished trial lost or changed
        t = by_number[number]
        assert (t.params, t.values, t.user_attrs) == before
    for number in interrupted:  # each trial the dead driver left running was failed and run again
        assert by_number[number].state == TrialState.FAIL, states
        retry = [t for t in trials if t.system_attrs.get("failed_trial") == number]
        assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE, states
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 6 and finished_count(trials) == 6, states


# ---------------------------------------------------------------------- PostgreSQL: Ray workers and a local process
JOINER = r"""
import sys, time
import optuna
import slimtune
from _scale import slow_task

url, log = sys.argv[1], sys.argv[2]
while True:  # join once the study is initialised
    try:
        if "slimtune" in optuna.load_study(study_name="mixed", storage=url).user_attrs:
            break
    except KeyError:
        pass
    time.sleep(0.1)
slimtune.search(slow_task(sleep=0.5, log=log, barrier=4), strategy="random", n_trials=10, storage=url, study_name="mixed",
                space={"sensitivity": False}, progress=False, save_models="none", join=True)
print("JOINER DONE", flush=True)
"""


def test_ray_workers_and_a_local_worker_share_a_postgresql_study(local_ray: Any, postgres_url: str, tmp_path: Path) -> None:
    """Two Ray workers and one ``slimtune worker``-like process on one PostgreSQL study. The
    task's evaluations wait until four processes have evaluated (the driver's baseline, the two
    Ray workers, the local worker), so all three workers run trials at once."""
    log = tmp_path / "evaluations.log"
    script = tmp_path / "joiner.py"
    script.write_text(JOINER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(HERE)]), "OMP_NUM_THREADS": "1"}
    joiner = subprocess.Popen([sys.executable, str(script), postgres_url, str(log)], env=env, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        study = slimtune.search(
            slow_task(sleep=0.5, log=str(log), barrier=4), strategy="random", n_trials=10, storage=postgres_url, study_name="mixed",
            space={"sensitivity": False}, progress=False, save_models="none", backend="ray",
        )  # fmt: skip
        out, _ = joiner.communicate(timeout=WAIT)
        assert joiner.returncode == 0 and "JOINER DONE" in out, out[-3000:]
    finally:
        if joiner.poll() is None:
            joiner.kill()
            joiner.wait(10)
    trials = study.get_trials(deepcopy=False)
    numbers = [t.number for t in trials]
    assert sorted(numbers) == list(range(len(trials)))  # stored once, numbers unique
    states = [(t.number, t.state.name, t.user_attrs.get("worker", {}).get("backend")) for t in trials]
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 10, states
    assert all(t.state == TrialState.COMPLETE or t.user_attrs.get("over_budget") for t in trials), states
    backends = {t.user_attrs["worker"]["backend"] for t in trials if t.state == TrialState.COMPLETE}
    assert backends == {"ray", "local"}, states
    pids = [int(line) for line in log.read_text().split()]
    assert len(pids) == 10 + 1  # one evaluation per trial, plus the baseline: nothing ran twice


# ---------------------------------------------------------------------- errors
def test_errors_name_what_is_wrong(local_ray: Any, tmp_path: Path) -> None:
    task = slow_task(sleep=0.0)
    kw: dict[str, Any] = dict(strategy="random", n_trials=2, space={"sensitivity": False}, progress=False, save_models="none")
    with pytest.raises(ValueError, match="backend: must be one of local, ray, tune, got 'dask'"):
        slimtune.search(task, storage="memory", backend="dask", **kw)
    with pytest.raises(ValueError, match="ray: Ray options are given but backend is 'local'"):
        slimtune.search(task, storage="memory", ray={"max_concurrent_trials": 2}, **kw)
    with pytest.raises(ValueError, match=r"ray.resources_per_trial.cpu: expected a number ≥ 0"):
        slimtune.search(task, storage="memory", backend="ray", ray={"resources_per_trial": {"cpu": -1}}, **kw)
    with pytest.raises(SlimtuneError, match="needs a storage every Ray worker can open"):
        slimtune.search(task, storage="memory", backend="ray", **kw)
    url = f"sqlite:///{tmp_path / 'e.db'}"
    with pytest.raises(SlimtuneError, match=r"ray.resources_per_trial: a trial needs 1 GPU but the Ray cluster has 0"):
        slimtune.search(task, storage=url, study_name="gpu", backend="ray", ray={"resources_per_trial": {"cpu": 1, "gpu": 1}}, **kw)


def test_cli_ray_options_override_the_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from slimtune.cli import _load_run_spec, build_parser, main

    spec = tmp_path / "s.yaml"
    spec.write_text("study: s\ntask: m:f\nn_trials: 2\nray: {max_retries: 1}\n")
    args = build_parser().parse_args(["run", str(spec), "--ray-address", "127.0.0.1:6379", "--max-concurrent-trials", "3"])
    loaded = _load_run_spec(args)
    assert loaded.backend == "ray" and loaded.path == spec
    assert loaded.search_kwargs()["ray"] == {"max_retries": 1, "address": "127.0.0.1:6379", "max_concurrent_trials": 3}
    assert _load_run_spec(build_parser().parse_args(["run", str(spec), "--backend", "ray"])).search_kwargs()["ray"] == {"max_retries": 1}
    assert "ray" not in _load_run_spec(build_parser().parse_args(["run", str(spec)])).search_kwargs()  # backend local
    assert main(["run", str(spec), "--backend", "local", "--ray-address", "127.0.0.1:6379"]) == 2
    assert "--ray-address and --max-concurrent-trials apply to the Ray backend" in capsys.readouterr().err
