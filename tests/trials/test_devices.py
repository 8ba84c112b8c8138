"""Devices in a search: names, the check at start, trials on the device, workers per device.

These machines have no GPU: every test runs on the CPU (``device="cpu"`` and ``"auto"``), and the
GPU paths are checked for what can be checked here — that a GPU asked for where none exists is a
clear error before any work, and that no tensor slimtune creates lands on a device other than the
task's (``tests/_devices.py`` sends them to ``meta``, where they fail loudly).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import optuna
import pytest
import torch
from torch import nn

import slimtune
from slimtune import attributes, devices
from slimtune.errors import ConfigError, SpecError
from slimtune.trials.config import SearchConfig
from slimtune.trials.spec import Spec
from slimtune.trials.task import Task

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))

from _devices import stray_tensors_on_meta  # noqa: E402
from _tasks import tiny_task  # noqa: E402
from test_cli import slimtune as run_cli  # noqa: E402

NO_CUDA = not torch.cuda.is_available()


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine without a usable GPU, on any machine: PyTorch sees no CUDA device (in this process,
    and in the subprocesses it starts: ``CUDA_VISIBLE_DEVICES`` empty)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


# ---------------------------------------------------------------------------------------------- names
@pytest.mark.parametrize(
    ("given", "name"),
    [("auto", "auto"), ("CPU", "cpu"), ("cuda", "cuda"), ("cuda:3", "cuda:3"), (2, "cuda:2"), ("1", "cuda:1")],
)
def test_device_names_are_canonical(given: object, name: str) -> None:
    assert devices.check_name(given) == name


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", "cpu:1", "", None, -1, True])
def test_misspelled_devices_name_the_field(bad: object) -> None:
    with pytest.raises(devices.DeviceError, match=r"^Task\.device: unknown device") as info:
        Task(nn.Linear(2, 2), torch.zeros(1, 2), lambda m: 1.0, device=bad)  # type: ignore[arg-type]
    assert info.value.field == "Task.device"


def test_auto_is_the_cpu_without_a_gpu() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert devices.resolve("auto").type == expected
    assert devices.resolve("cpu") == torch.device("cpu")


@pytest.mark.usefixtures("no_gpu")
@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_a_missing_gpu_says_why(name: str) -> None:
    with pytest.raises(devices.DeviceError) as info:
        devices.resolve(name)
    message = str(info.value)
    assert message.startswith(f"device: device {name!r} asks for a CUDA GPU, but ")
    assert ("built without CUDA" in message) == (torch.version.cuda is None)


def test_move_reaches_every_tensor_and_keeps_the_rest() -> None:
    from collections import namedtuple

    Pair = namedtuple("Pair", "a b")
    batch = {"ids": torch.ones(2, dtype=torch.long), "extra": [Pair(torch.zeros(1), "text"), 7]}
    moved = devices.move(batch, "cpu")
    assert isinstance(moved["extra"][0], Pair) and moved["extra"][0].b == "text" and moved["extra"][1] == 7
    assert torch.equal(moved["ids"], batch["ids"]) and moved["ids"].device.type == "cpu"
    assert devices.parse_list("0, cpu ,cuda:2") == ["cuda:0", "cpu", "cuda:2"]
    with pytest.raises(devices.DeviceError, match="--devices"):
        devices.parse_list("0,,1")


def test_on_device_copies_only_when_the_device_differs() -> None:
    task = tiny_task()
    same = task.on_device(torch.device("cpu"))
    assert same.model is task.model and same.device == "cpu"
    meta = task.on_device(torch.device("meta"))  # another device: a copy there, the task's model untouched
    assert meta.model is not task.model and devices.model_device(meta.model).type == "meta"
    assert devices.model_device(task.model).type == "cpu" and meta.example_inputs.device.type == "meta"


# ---------------------------------------------------------------------------------------------- search
@pytest.mark.usefixtures("no_gpu")
def test_a_gpu_asked_for_where_none_exists_fails_before_any_work(tmp_path: Path) -> None:
    calls = []
    task = tiny_task()
    evaluate = task.evaluate
    task.evaluate = lambda m: calls.append(1) or evaluate(m)  # type: ignore[method-assign]
    task.device = "cuda:0"
    url = f"sqlite:///{tmp_path}/s.db"
    with pytest.raises(devices.DeviceError, match=r"^Task\.device: device 'cuda:0' asks for a CUDA GPU"):
        slimtune.search(task, strategy="random", n_trials=2, storage=url, progress=False)
    with pytest.raises(devices.DeviceError, match=r"^device: device 'cuda' asks for a CUDA GPU"):
        slimtune.search(tiny_task(), strategy="random", n_trials=2, storage=url, progress=False, device="cuda")
    assert calls == []  # not even the original model was evaluated
    assert optuna.get_all_study_names(url) == []


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_trials_record_the_device_they_ran_on(tmp_path: Path, device: str) -> None:
    study = slimtune.search(
        tiny_task(finetune_steps=3),
        strategy="random",
        objectives=("accuracy", "memory"),
        n_trials=2,
        storage=f"sqlite:///{tmp_path}/s.db",
        space={"levels": [0.5], "max_sparsity": 0.75},
        progress=False,
        device=device,
        measure_batch=8,
    )
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(trials) == 2
    for t in trials:
        assert attributes.device(t).startswith(str(devices.resolve(device)))
        m = attributes.measures(t)
        assert m["memory_abs"] > 0 and 0 < m["memory"] <= 1.0 + 1e-9  # pruned: no more memory than the original
    assert study.user_attrs[attributes.Study.MEASURE_BATCH] == 8
    assert study.user_attrs[attributes.Study.BASELINE_DEVICE] == devices.hardware(devices.resolve(device))


def test_a_worker_on_other_hardware_measures_the_original_itself(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    kwargs = dict(
        strategy="random",
        objectives=("accuracy", "memory"),
        storage=url,
        study_name="hw",
        space={"levels": [0.5], "max_sparsity": 0.75},
        progress=False,
        measure_batch=4,
    )
    study = slimtune.search(tiny_task(), n_trials=1, **kwargs)
    stored = attributes.baseline(study)["memory"]
    study.set_user_attr(attributes.Study.BASELINE_DEVICE, "NVIDIA Imaginary GPU")
    study.set_user_attr(attributes.Study.BASELINE, {**attributes.baseline(study), "memory": stored * 100})
    with caplog.at_level("INFO", logger="slimtune"):
        study = slimtune.search(tiny_task(), n_trials=2, **kwargs)
    assert "measured on NVIDIA Imaginary GPU at batch 4" in caplog.text
    last = max(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)), key=lambda t: t.number)
    # relative to the original measured here, not to the stored value of the other hardware
    assert attributes.measures(last)["memory"] > 0.05
    assert attributes.baseline(study)["memory"] == stored * 100  # the stored baseline is left alone


def test_a_whole_trial_creates_no_tensor_off_the_task_device(tmp_path: Path) -> None:
    from slimtune.examples.digits import digits_cnn

    torch.manual_seed(0)
    model = digits_cnn().eval()
    x = torch.randn(64, 1, 8, 8)
    y = torch.randint(0, 10, (64,))
    data = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)]

    def evaluate(m: nn.Module) -> float:
        with torch.no_grad():
            return float((m(x.to(devices.model_device(m))).argmax(1) == y).float().mean())

    task = Task(
        model,
        x[:1],
        evaluate,
        calibration=data[:2],
        train_data=data,
        finetune_config={"steps": 3, "kd": {"alpha": 0.5}, "amp": "bf16", "accumulate": 2, "clip_grad_norm": 1.0},
        device="cpu",
    )
    with stray_tensors_on_meta() as strays:
        study = slimtune.search(
            task,
            strategy="random",
            objectives=("accuracy", "latency", "memory"),
            n_trials=2,
            storage=f"sqlite:///{tmp_path}/s.db",
            space={"levels": [0.5], "max_sparsity": 0.75, "criterion": "taylor"},
            progress=False,
            measure_batch=4,
        )
    failures = [attributes.fail_reason(t) for t in study.trials if t.state != optuna.trial.TrialState.COMPLETE]
    assert not failures, failures
    assert not strays, strays


# ---------------------------------------------------------------------------------------------- config
def test_search_config_and_spec_check_the_device() -> None:
    assert SearchConfig(device="CUDA:1").device == "cuda:1"
    with pytest.raises(ConfigError, match="^device: unknown device 'gpu'"):
        SearchConfig(device="gpu")
    with pytest.raises(ConfigError, match="^measure_batch: must be an integer >= 1"):
        SearchConfig(measure_batch=0)
    spec = Spec.from_yaml("study: s\ntask: m:f\nn_trials: 2\ndevice: cuda:1\nmeasure_batch: 64")
    assert spec.device == "cuda:1" and spec.search_config().device == "cuda:1"
    assert spec.search_config().measure_batch == 64 and Spec.from_dict(spec.to_dict()) == spec
    with pytest.raises(SpecError, match=r"device: unknown device 'gpu0'"):
        Spec.from_yaml("study: s\ntask: m:f\nn_trials: 2\ndevice: gpu0")


def test_ray_needs_gpu_resources_for_a_gpu_device() -> None:
    # (no `import ray` here: Ray reads its settings when first imported, and the Ray tests' fixture sets them)
    from slimtune.trials.ray_backend import ray_driver_config

    config = SearchConfig(backend="ray", device="cuda", n_trials=2, ray={"resources_per_trial": {"cpu": 1}})
    with pytest.raises(devices.DeviceError, match=r"^device: 'cuda' asks for a GPU, but ray.resources_per_trial"):
        ray_driver_config(tiny_task(), config)
    gpu = config.replace(ray={"resources_per_trial": {"cpu": 1, "gpu": 1}})
    # a driver without a GPU prepares on the CPU; its workers use the GPUs Ray gives them
    assert ray_driver_config(tiny_task(), gpu).device == ("cpu" if NO_CUDA else "cuda")


# ---------------------------------------------------------------------------------------------- workers
SPEC = """\
study: workers
task: _tasks:tiny_task
task_args: {hidden: 16, finetune_steps: 300}
strategy: random
space: {levels: [0.25, 0.5], max_sparsity: 0.75}
objectives: [accuracy, flops]
n_trials: 8
"""


def test_two_local_workers_one_per_device(tmp_path: Path) -> None:
    (tmp_path / "w.yaml").write_text(SPEC)
    result = run_cli(tmp_path, "run", "w.yaml", "--workers", "2", "--devices", "cpu,cpu", timeout=240)
    assert result.returncode == 0, result.stderr
    assert "8 complete" in result.stdout
    study = optuna.load_study(study_name="workers", storage=f"sqlite:///{tmp_path}/slimtune.db")
    done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    pids = {attributes.worker(t)["pid"] for t in done}
    assert len(done) == 8 and len(pids) == 2 and os.getpid() not in pids
    assert all(attributes.device(t).startswith("cpu (") for t in done)


@pytest.mark.usefixtures("no_gpu")
def test_workers_on_missing_gpus_fail_at_start(tmp_path: Path) -> None:
    (tmp_path / "w.yaml").write_text(SPEC)
    result = run_cli(tmp_path, "run", "w.yaml", "--workers", "2", "--devices", "0,1")
    assert result.returncode == 2
    assert "slimtune: error: --devices: device 'cuda:0' asks for a CUDA GPU" in result.stderr
    assert not (tmp_path / "slimtune.db").exists()
    result = run_cli(tmp_path, "run", "w.yaml", "--workers", "1", "--devices", "cpu,cpu")
    assert result.returncode == 2 and "--devices: 2 devices for 1 worker" in result.stderr


@pytest.mark.usefixtures("no_gpu")
def test_sensitivity_on_a_missing_gpu_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from slimtune.cli import main

    (tmp_path / "w.yaml").write_text(SPEC)
    monkeypatch.chdir(tmp_path)
    assert main(["-q", "sensitivity", "w.yaml", "--device", "cuda:0"]) == 2
    assert "slimtune: error: device: device 'cuda:0' asks for a CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "sensitivity.csv").exists()
