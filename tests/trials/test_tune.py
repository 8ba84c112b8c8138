"""``backend: tune`` on a local Ray (2 CPUs, one session for the module): slimtune studies inside a Ray
Tune ``Tuner`` (NSGA-II and simulated annealing on digits), ASHA stopping a bad trial of a weighted study,
Tune's callbacks and ``ResultGrid``, a worker killed and retried by ``FailureConfig``, the driver killed
and ``Tuner.restore``, the dashboard's API on Tune-run trials, and the errors."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from optuna.trial import FrozenTrial, TrialState

import slimtune
from slimtune.errors import ConfigError, SlimtuneError
from slimtune.trials import load_model, make_storage, pareto_front, studies_summary

from _scale import slow_task

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
MEASURES = {"accuracy", "accuracy_drop", "flops", "flops_abs", "params", "params_abs", "size", "size_abs"}
WAIT = 150.0
GROUPS = ("features.0", "features.3", "features.7", "features.10", "fc1")  # the digits CNN's prunable groups


def finished_count(trials: list[FrozenTrial]) -> int:
    retried = {t.system_attrs.get("failed_trial") for t in trials} - {None}
    return sum(1 for t in trials if t.state.is_finished() and t.number not in retried and "over_budget" not in t.user_attrs)


def load_trials(url: str, name: str) -> list[FrozenTrial] | None:
    try:
        return optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=True)
    except KeyError:
        return None


def wait_for(url: str, name: str, until: Any, alive: Any) -> list[FrozenTrial]:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        trials = load_trials(url, name)
        if trials is not None and until(trials):
            return trials
        assert alive(), "the run ended before the awaited state"
        time.sleep(0.05)
    pytest.fail("timed out waiting for the study")


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][:1] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="module")
def digits_task() -> slimtune.Task:
    from slimtune.examples.digits import make_task

    return make_task(finetune_epochs=1)


# ---------------------------------------------------------------------- NSGA-II: study, callbacks, ResultGrid, dashboard
def test_nsga2_under_tune_lands_in_the_study_and_reaches_tunes_callbacks(local_ray: Any, digits_task: slimtune.Task, tmp_path: Path) -> None:
    from ray.tune import Callback

    from slimtune.tune import tuner

    class Recorder(Callback):  # a user's callback: every trial's final measures reach it
        def __init__(self) -> None:
            self.final: dict[int, dict[str, Any]] = {}

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            if "state" in result:
                self.final[result["slimtune_trial"]] = dict(result)

    url = f"sqlite:///{tmp_path / 'tune.db'}"
    recorder = Recorder()
    results = tuner(
        digits_task, strategy="nsga2", population_size=4, n_trials=6, storage=url, study_name="digits-tune",
        space={"levels": [0.5]}, constraints=["accuracy_drop <= 0.05"], progress=False,
        max_concurrent_trials=2, callbacks=["csv", "tensorboard", recorder],
    ).fit()  # fmt: skip
    study = optuna.load_study(study_name="digits-tune", storage=url)
    trials = study.get_trials(deepcopy=False)
    assert [t.number for t in trials] == list(range(6))
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 6, [t.user_attrs.get("fail_reason") for t in trials]
    node = local_ray.get_runtime_context().get_node_id()
    experiment = tmp_path / "tune-tune" / "digits-tune"  # beside the SQLite file: <stem>-tune/<study>
    for t in trials:
        attrs = t.user_attrs
        assert MEASURES <= set(attrs["measures"]) and attrs["plan"]["prune"], attrs
        assert {"compress", "finetune", "evaluate", "measure", "save", "total"} <= set(attrs["times"])
        assert set(attrs["constraints"]) == {"accuracy_drop <= 0.05"} and attrs["device"].startswith("cpu")
        assert any(key.startswith("constraints") for key in t.system_attrs)  # given to Optuna (set_constraint)
        worker = attrs["worker"]
        assert worker["backend"] == "tune" and worker["node"] == node and worker["pid"] != os.getpid()
        assert attrs["tune"]["trial_id"] == worker["tune_trial"] and attrs["tune"]["experiment"] == str(experiment)
        assert attrs["model_artifact"]
    # Tune's side: one Tune trial per study trial; the ResultGrid, the loggers and the user's callback hold the measures
    assert not results.errors and len(results) == 6
    frame = results.get_dataframe().set_index("slimtune_trial").sort_index()
    assert list(frame.index) == list(range(6)) and set(frame["state"]) == {"COMPLETE"}
    for t in trials:
        for key in MEASURES:
            assert frame.loc[t.number, key] == pytest.approx(t.user_attrs["measures"][key])
        assert recorder.final[t.number]["flops"] == pytest.approx(t.user_attrs["measures"]["flops"])
        assert results[0].path.startswith(str(experiment))
    trial_dirs = sorted(p for p in experiment.iterdir() if p.is_dir() and p.name.startswith("trial_"))
    assert len(trial_dirs) == 6
    for d in trial_dirs:
        header = (d / "progress.csv").read_text().splitlines()[0].split(",")
        assert {"accuracy", "flops", "slimtune_trial", "state"} <= set(header)
        assert list(d.glob("events.out.tfevents.*"))  # TensorBoard
    # what `slimtune pareto / export / status` read: the same as for local trials
    front = pareto_front(study)
    assert not front.empty and front["plan_json"].notna().all()
    model = load_model(study, int(front.trial[0]), digits_task.model)
    assert isinstance(model, torch.nn.Module) and model(digits_task.example_inputs).shape == (1, 10)
    row = studies_summary(url).set_index("study").loc["digits-tune"]
    assert (row["complete"], row["running"], row["fail"]) == (6, 0, 0)
    # the dashboard's API lists the Tune-run trials
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "slimtune", "dashboard", "--storage", url, "--port", "0"], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        base = _dashboard_url(proc)
        with urllib.request.urlopen(base + "api/studies/digits-tune/trials", timeout=30) as r:
            cols = json.loads(r.read())["trials"]
        assert cols["number"] == list(range(6)) and cols["state"] == ["COMPLETE"] * 6
        with urllib.request.urlopen(base + "api/studies", timeout=30) as r:
            summary = {s["name"]: s for s in json.loads(r.read())["studies"]}["digits-tune"]
        assert summary["counts"]["COMPLETE"] == 6 and summary["front_size"] == len(front)
        with urllib.request.urlopen(base + "api/studies/digits-tune/trials/3", timeout=30) as r:
            detail = json.loads(r.read())
        assert detail["state"] == "COMPLETE" and detail["prune"] and detail["measures"] and detail["artifact"]
        assert detail["user_attrs"]["worker"]["backend"] == "tune" and detail["user_attrs"]["tune"]["trial_id"]
    finally:
        proc.terminate()
        proc.wait(15)


def _dashboard_url(proc: subprocess.Popen[str], timeout: float = 90) -> str:
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            line = proc.stdout.readline()
            if "http://" in line:
                return line[line.index("http://") :].split()[0]
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    pytest.fail("the dashboard printed no URL")


# ---------------------------------------------------------------------- simulated annealing: a custom sampler
def test_simulated_annealing_under_tune(local_ray: Any, digits_task: slimtune.Task, tmp_path: Path) -> None:
    """A custom BaseSampler whose chain lives in the study, asked by the Tune searcher and decided (its
    Metropolis step, in ``after_trial``) by the Tune workers that tell the trials."""
    from slimtune.strategies.simulated_annealing import ATTR_ACCEPTED, ATTR_STEP
    from slimtune.tune import tuner

    url = f"sqlite:///{tmp_path / 'sa.db'}"
    results = tuner(
        digits_task, strategy="simulated_annealing", target=0.5, n_trials=5, storage=url, study_name="sa-tune",
        space={"levels": [0.5]}, progress=False, save_models="none", max_concurrent_trials=2,
    ).fit()  # fmt: skip
    trials = optuna.load_study(study_name="sa-tune", storage=url).get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 5, [t.user_attrs.get("fail_reason") for t in trials]
    assert len(results) == 5 and not results.errors
    for t in trials:
        assert ATTR_STEP in t.user_attrs and ATTR_ACCEPTED in t.user_attrs  # proposed and decided by the sampler
        assert MEASURES <= set(t.user_attrs["measures"]) and t.user_attrs["plan"]["prune"]
        assert t.user_attrs["worker"]["backend"] == "tune"
        if t.user_attrs.get("sa.target_met", True):
            assert t.user_attrs["measures"]["flops"] <= 0.5 + 1e-6
    assert any(t.user_attrs[ATTR_ACCEPTED] for t in trials) and trials[0].user_attrs[ATTR_STEP] == 0


# ---------------------------------------------------------------------- ASHA in a weighted study
def test_asha_stops_a_bad_trial_of_a_weighted_study(local_ray: Any, tmp_path: Path) -> None:
    """The space's seed (a uniform allocation) runs first; the next trial prunes every group at 95 %: after
    one fine-tune epoch its accuracy is far below the seed's and ASHA (reduction factor 2) stops it at its
    first rung: PRUNED."""
    from slimtune.examples.digits import make_task
    from slimtune.tune import tuner

    task = make_task(finetune_epochs=2)
    url = f"sqlite:///{tmp_path / 'asha.db'}"
    kw: dict[str, Any] = dict(strategy="random", weights={"accuracy": 1, "flops": 0.2}, storage=url, study_name="asha",
                              space={"sensitivity": False, "max_sparsity": 0.95}, save_models="none")  # fmt: skip
    slimtune.search(task, n_trials=5, timeout=1e-6, progress=False, **kw)  # the study and its seed, no trial run
    study = optuna.load_study(study_name="asha", storage=url)
    seeds = len(study.trials)
    study.enqueue_trial({f"sparsity/{g}": 0.95 for g in GROUPS})
    results = tuner(task, n_trials=5, scheduler={"name": "asha", "reduction_factor": 2}, max_concurrent_trials=1,
                    progress=False, **kw).fit()  # fmt: skip
    trials = optuna.load_study(study_name="asha", storage=url).get_trials(deepcopy=False)
    states = [(t.number, t.state.name) for t in trials]
    assert len(trials) == 5 and finished_count(trials) == 5, states
    assert seeds >= 1 and all(t.state == TrialState.COMPLETE for t in trials[:seeds]), states  # the seeds
    bad = trials[seeds]
    assert bad.params == {f"sparsity/{g}": 0.95 for g in GROUPS}
    assert bad.state == TrialState.PRUNED, states
    assert bad.user_attrs["tune"]["stopped_by"] == "asha" and bad.user_attrs["tune"]["iteration"] == 1
    assert len(bad.intermediate_values) == 1 and "measures" not in bad.user_attrs  # stopped before its evaluation
    assert bad.user_attrs["tune"]["finetune_metric"] < min(t.user_attrs["measures"]["accuracy"] for t in trials[:seeds])
    # ASHA ranked by the weighted value estimated while fine-tuned: the metric so far and the plan's exact FLOPs
    assert bad.user_attrs["tune"]["finetune_objective"] > max(t.value for t in trials[:seeds])
    # the weighted value (minimised) of every complete trial, reported to Tune as `objective`
    frame = results.get_dataframe().set_index("slimtune_trial")
    for t in trials:
        if t.state == TrialState.COMPLETE:
            assert frame.loc[t.number, "objective"] == frame.loc[t.number, "finetune_objective"] == pytest.approx(t.value)
    assert frame.loc[seeds, "training_iteration"] == 1


# ---------------------------------------------------------------------- a worker killed: FailureConfig retries
def test_failure_config_retries_a_killed_worker_on_the_same_study_trial(local_ray: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from slimtune.tune import tuner

    monkeypatch.setenv("SLIMTUNE_HEARTBEAT_INTERVAL", "1")
    monkeypatch.setenv("SLIMTUNE_GRACE_PERIOD", "4")
    url = f"sqlite:///{tmp_path / 'retry.db'}"
    log, hold = tmp_path / "evaluations.log", tmp_path / "hold"
    hold.touch()  # the baseline and the first trial's evaluation run freely; the next one is held until the kill
    task = slow_task(sleep=0.3, log=str(log), hold=str(hold), hold_after=2)
    built = tuner(task, strategy="random", n_trials=3, storage=url, study_name="retry", space={"sensitivity": False},
                  save_models="none", progress=False, max_concurrent_trials=1, max_failures=1)  # fmt: skip
    import threading

    box: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: box.setdefault("results", built.fit()), daemon=True)
    thread.start()
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline and len(log.read_text().split() if log.exists() else []) < 3:
        assert thread.is_alive()
        time.sleep(0.05)
    pid = int(log.read_text().split()[2])  # the worker held in the second trial's evaluation
    running = [t for t in load_trials(url, "retry") or [] if t.state == TrialState.RUNNING]
    assert len(running) == 1 and running[0].user_attrs["worker"]["pid"] == pid
    victim = running[0].number
    os.kill(pid, signal.SIGKILL)
    hold.unlink()
    thread.join(WAIT)
    assert not thread.is_alive() and "results" in box
    trials = optuna.load_study(study_name="retry", storage=url).get_trials(deepcopy=False)
    states = [(t.number, t.state.name, t.system_attrs.get("failed_trial")) for t in trials]
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3, states  # no FAIL, no retry copy: the same trial
    assert trials[victim].user_attrs["worker"]["pid"] != pid and not pid_alive(pid)
    assert not box["results"].errors and len(box["results"]) == 3


# ---------------------------------------------------------------------- the driver killed, then Tuner.restore
SPEC = """\
study: resume-tune
storage: sqlite:///tune.db
task: _scale:slow_task
task_args: {{sleep: 1.0, log: {log}}}
strategy: random
space: {{sensitivity: false}}
n_trials: 6
save_models: none
tune: {{max_concurrent_trials: 2, callbacks: [csv]}}
"""

RESTORE = """\
import slimtune.tune
results = slimtune.tune.restore("spec.yaml").fit()
print("RESTORED", len(results), len(results.errors), flush=True)
"""


def test_driver_killed_then_tuner_restore_finishes_the_budget(local_ray: Any, tmp_path: Path) -> None:
    """``slimtune run SPEC --backend tune`` killed with SIGKILL (its Tune workers die with it); the same command
    again restores the Tune run (``Tuner.restore``): the study ends with its 6 trials, every trial finished
    before the kill unchanged, each interrupted one run again (the same Optuna trial, or a queued copy). Then
    ``slimtune.tune.restore`` of the finished run adds nothing."""
    log = tmp_path / "evaluations.log"
    (tmp_path / "spec.yaml").write_text(SPEC.format(log=log))
    (tmp_path / "restore.py").write_text(RESTORE)
    env = {k: v for k, v in os.environ.items() if k != "SLIMTUNE_ARTIFACTS"}  # with the module Ray's token
    env.update(RAY_ADDRESS=local_ray.get_runtime_context().gcs_address, PYTHONPATH=os.pathsep.join([str(REPO), str(HERE)]),
               OMP_NUM_THREADS="1", SLIMTUNE_HEARTBEAT_INTERVAL="1", SLIMTUNE_GRACE_PERIOD="3", TUNE_GLOBAL_CHECKPOINT_S="1")  # fmt: skip
    url = f"sqlite:///{tmp_path / 'tune.db'}"
    make_storage(url)
    first = subprocess.Popen([sys.executable, "-m", "slimtune", "-q", "run", "spec.yaml", "--backend", "tune"], cwd=tmp_path,
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:

        def two_done_one_running(trials: list[FrozenTrial]) -> bool:
            running = [t for t in trials if t.state == TrialState.RUNNING and "worker" in t.user_attrs]
            return sum(t.state == TrialState.COMPLETE for t in trials) >= 2 and len(running) >= 1

        wait_for(url, "resume-tune", two_done_one_running, lambda: first.poll() is None)
        time.sleep(1.5)  # let Tune save its experiment with the running trials (TUNE_GLOBAL_CHECKPOINT_S=1)
        trials = load_trials(url, "resume-tune")
        os.kill(first.pid, signal.SIGKILL)
        first.wait(30)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(30)
    assert trials is not None
    workers = {t.user_attrs["worker"]["pid"] for t in trials if "worker" in t.user_attrs}
    deadline = time.monotonic() + 30
    while any(pid_alive(p) for p in workers) and time.monotonic() < deadline:  # Ray ends a dead driver's actors
        time.sleep(0.2)
    trials = load_trials(url, "resume-tune")
    assert trials is not None
    done_before = {t.number: (t.params, t.values, t.user_attrs) for t in trials if t.state == TrialState.COMPLETE}
    interrupted = [t.number for t in trials if t.state == TrialState.RUNNING]
    assert len(done_before) >= 2 and interrupted
    assert (tmp_path / "tune-tune" / "resume-tune" / "tuner.pkl").is_file()

    second = subprocess.run([sys.executable, "-m", "slimtune", "run", "spec.yaml", "--backend", "tune"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=WAIT)  # fmt: skip
    out = second.stdout + second.stderr
    assert second.returncode == 0, out[-4000:]
    assert "restoring the interrupted Tune run in" in out and "study 'resume-tune' in sqlite:///tune.db: 6 complete" in out, out[-4000:]
    trials = load_trials(url, "resume-tune")
    assert trials is not None
    by_number = {t.number: t for t in trials}
    states = [(t.number, t.state.name, t.system_attrs.get("failed_trial")) for t in trials]
    for number, before in done_before.items():  # no finished trial lost or changed
        t = by_number[number]
        assert (t.params, t.values, t.user_attrs) == before
    for number in interrupted:  # each interrupted trial completed: resumed by Tune, or failed and its copy run
        t = by_number[number]
        copies = [c for c in trials if c.system_attrs.get("failed_trial") == number]
        if t.state == TrialState.COMPLETE:
            assert not copies, states
        else:
            assert t.state == TrialState.FAIL and len(copies) == 1 and copies[0].state == TrialState.COMPLETE, states
            assert copies[0].params == t.params
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 6 and finished_count(trials) == 6, states
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)], states
    # Tuner.restore of the finished run: Tune resumes nothing, the searcher asks for nothing
    third = subprocess.run([sys.executable, "restore.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=WAIT)
    assert third.returncode == 0 and "RESTORED" in third.stdout and third.stdout.split()[-1] == "0", (third.stdout + third.stderr)[-4000:]
    again = load_trials(url, "resume-tune")
    assert again is not None and [(t.number, t.state, t.values) for t in again] == [(t.number, t.state, t.values) for t in trials]


# ---------------------------------------------------------------------- errors
def test_schedulers_are_refused_for_a_pareto_study(local_ray: Any, tmp_path: Path) -> None:
    from slimtune.tune import tuner

    kw: dict[str, Any] = dict(strategy="random", n_trials=2, space={"sensitivity": False}, progress=False, save_models="none",
                              storage=f"sqlite:///{tmp_path / 'e.db'}")  # fmt: skip
    with pytest.raises(ConfigError, match=r"tune.scheduler: asha stops trials by one number .* 2 objectives") as err:
        tuner(slow_task(sleep=0.0), study_name="pareto", scheduler="asha", **kw)
    assert err.value.field == "tune.scheduler"
    with pytest.raises(ConfigError, match=r"tune.scheduler: median_stopping stops trials by the task's metric"):
        tuner(slow_task(sleep=0.0), study_name="flops-only", objectives=["flops"], scheduler="median", **kw)
    with pytest.raises(ConfigError, match=r"tune.scheduler.metric: finetune_objective is reported by trials of a study weighted"):
        tuner(slow_task(sleep=0.0), study_name="one", objectives=["accuracy"], scheduler={"name": "asha", "metric": "finetune_objective"}, **kw)
    with pytest.raises(SlimtuneError, match="backend 'tune' needs a storage every Tune worker can open"):
        slimtune.search(slow_task(sleep=0.0), **{**kw, "storage": "memory"}, backend="tune")


def test_tune_options_name_the_bad_field(tmp_path: Path) -> None:
    from slimtune.trials.config import SearchConfig
    from slimtune.trials.spec import Spec
    from slimtune.trials.tune_options import TuneOptions

    for options, field, text in [
        ({"scheduler": "hyperband"}, "tune.scheduler", "unknown scheduler 'hyperband'; known: fifo, asha, median_stopping"),
        ({"scheduler": {"name": "asha", "reduction_factor": 1}}, "tune.scheduler.reduction_factor", "must be a number > 1"),
        ({"scheduler": {"name": "asha", "min_samples_required": 3}}, "tune.scheduler.min_samples_required", "unknown parameter"),
        ({"scheduler": {"name": "median", "metric": "loss"}}, "tune.scheduler.metric", "expected finetune_metric or finetune_objective"),
        ({"callbacks": ["csv", "graphite"]}, "tune.callbacks[1]", "unknown callback 'graphite'"),
        ({"callbacks": [{"name": "csv", "x": 1}]}, "tune.callbacks[0]", "takes no parameters"),
        ({"max_failures": -1}, "tune.max_failures", "must be ≥ 0"),
        ({"resources_per_trial": {"cpu": -1}}, "tune.resources_per_trial.cpu", "expected a number ≥ 0"),
        ({"max_concurent_trials": 2}, "tune.max_concurent_trials", "unknown field"),
    ]:
        with pytest.raises(ConfigError) as err:
            TuneOptions.from_dict(options)
        assert err.value.field == field and text in str(err.value), (options, str(err.value))
    with pytest.raises(ConfigError, match="tune: Tune options are given but backend is 'local'"):
        SearchConfig(n_trials=2, tune={"scheduler": "asha"})
    config = SearchConfig(n_trials=2, backend="tune", tune={"scheduler": "asha", "callbacks": ["csv"]})
    assert SearchConfig.from_dict(config.to_dict()) == config and config.tune.scheduler_name == "asha"
    spec = Spec.from_yaml("study: s\ntask: m:f\nn_trials: 4\nbackend: tune\ntune: {scheduler: asha, max_concurrent_trials: 2, callbacks: [csv, tensorboard]}\n")
    assert spec.search_config().tune == TuneOptions.from_dict({"scheduler": "asha", "max_concurrent_trials": 2, "callbacks": ["csv", "tensorboard"]})
    assert Spec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match=r"<string>: tune.scheduler.max_t: must be an integer ≥ 1, got 0"):
        Spec.from_yaml("study: s\ntask: m:f\nn_trials: 4\nbackend: tune\ntune: {scheduler: {name: asha, max_t: 0}}\n")
    with pytest.raises(ValueError, match=r"<string>: tune.callbakcs: unknown field"):
        Spec.from_yaml("study: s\ntask: m:f\nn_trials: 4\nbackend: tune\ntune: {callbakcs: [csv]}\n")


def test_cli_backend_tune_and_its_options(tmp_path: Path) -> None:
    from slimtune.cli import _load_run_spec, build_parser

    spec = tmp_path / "s.yaml"
    spec.write_text("study: s\ntask: m:f\nn_trials: 2\ntune: {scheduler: asha}\n")
    loaded = _load_run_spec(build_parser().parse_args(["run", str(spec), "--backend", "tune", "--max-concurrent-trials", "3"]))
    assert loaded.backend == "tune" and loaded.search_kwargs()["tune_options"] == {"scheduler": "asha", "max_concurrent_trials": 3}
    assert "tune" not in _load_run_spec(build_parser().parse_args(["run", str(spec)])).search_kwargs()  # backend local
