"""The ``slimtune`` command, run in subprocesses on a tiny task (a few trials, a few seconds each)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch

from slimtune import __version__
from slimtune.cli import main

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent

SPEC = """\
study: tiny
task: _tasks:tiny_task
task_args: {hidden: 16, finetune_steps: 5}
strategy: random
space: {levels: [0.25, 0.5], max_sparsity: 0.75}
objectives: [accuracy, flops]
n_trials: 3
"""


def slimtune(cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``python -m slimtune ARGS`` in ``cwd`` with the repository and ``tests/`` importable."""
    env = {k: v for k, v in os.environ.items() if k != "SLIMTUNE_ARTIFACTS"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(TESTS), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.run(
        [sys.executable, "-m", "slimtune", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding ``tiny.yaml`` and, after ``slimtune run``, its study in ``slimtune.db``."""
    cwd = tmp_path_factory.mktemp("cli")
    (cwd / "tiny.yaml").write_text(SPEC)
    result = slimtune(cwd, "run", "tiny.yaml")
    assert result.returncode == 0, result.stderr
    (cwd / "run.out").write_text(result.stdout)
    return cwd


def test_run_prints_the_pareto_table(study_dir: Path) -> None:
    out = (study_dir / "run.out").read_text()
    assert "study 'tiny' in sqlite:///slimtune.db: 3 complete" in out
    header = next(line for line in out.splitlines() if line.startswith("trial"))
    assert header.split()[:5] == ["trial", "accuracy", "flops_rel", "params_rel", "size_bytes"]
    assert "plan" in header and "latency_ms" not in header  # latency is not an objective: not measured
    assert "slimtune export tiny.yaml --trial N --out model.safetensors" in out
    assert (study_dir / "slimtune.db").exists()


def test_run_again_resumes(study_dir: Path) -> None:
    result = slimtune(study_dir, "--quiet", "run", "tiny.yaml")
    assert result.returncode == 0, result.stderr
    assert "3 complete" in result.stdout  # the budget was already reached: no new trial


def test_worker_joins_the_study(study_dir: Path) -> None:
    result = slimtune(study_dir, "worker", "tiny.yaml", "--n-trials", "4", "-q")
    assert result.returncode == 0, result.stderr
    assert "worker done" in result.stdout and "4 complete" in result.stdout


def test_status_lists_the_study(study_dir: Path) -> None:
    result = slimtune(study_dir, "status")
    assert result.returncode == 0, result.stderr
    assert "studies in sqlite:///slimtune.db" in result.stdout
    row = next(line for line in result.stdout.splitlines() if line.split()[:1] == ["tiny"])
    assert "random" in row


def test_pareto_formats(study_dir: Path) -> None:
    csv = slimtune(study_dir, "pareto", "tiny.yaml", "--format", "csv")
    assert csv.returncode == 0, csv.stderr
    front = pd.read_csv(io.StringIO(csv.stdout))
    assert len(front) >= 1 and {"trial", "accuracy", "flops_rel", "plan", "plan_json"} <= set(front.columns)

    result = slimtune(study_dir, "pareto", "--study", "tiny", "--format", "json", "--out", "front/front.json")
    assert result.returncode == 0, result.stderr
    records = json.loads((study_dir / "front" / "front.json").read_text())
    assert [r["trial"] for r in records] == front["trial"].tolist()
    assert all(isinstance(r["plan_json"], dict) and "prune" in r["plan_json"] for r in records)


def test_export_writes_a_loadable_model(study_dir: Path) -> None:
    from slimtune.trials import open_study, pareto_front

    trial = int(pareto_front(open_study(f"sqlite:///{study_dir / 'slimtune.db'}", "tiny"))["trial"].iloc[0])
    result = slimtune(study_dir, "export", "tiny.yaml", "--trial", str(trial), "--out", "model.safetensors")
    assert result.returncode == 0, result.stderr
    assert f"exported trial {trial} of study 'tiny' to model.safetensors" in result.stdout
    assert "inputs: float32[1, 8] (the first dimension is the batch)" in result.stdout
    from _tasks import tiny_task

    from slimtune.compressors.state import load

    model = load(study_dir / "model.safetensors", tiny_task(hidden=16).model)  # the spec's base model
    assert isinstance(model, torch.nn.Module)
    assert model(torch.randn(2, 8)).shape == (2, 3)


def test_sensitivity_writes_the_csv(study_dir: Path) -> None:
    result = slimtune(study_dir, "sensitivity", "tiny.yaml", "--out", "sens.csv")
    assert result.returncode == 0, result.stderr
    assert "25%" in result.stdout and "50%" in result.stdout and "0" in result.stdout  # group 0 row
    table = pd.read_csv(study_dir / "sens.csv")
    assert {"group", "level", "drop"} <= set(table.columns)
    assert sorted(table["level"].unique()) == [0.25, 0.5]


def test_bad_spec_exits_2_with_the_field(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(SPEC.replace("strategy: random", "strategy: {name: foo}"))
    result = slimtune(tmp_path, "run", "bad.yaml")
    assert result.returncode == 2
    assert result.stderr.startswith("slimtune: error: bad.yaml: strategy.name: unknown strategy 'foo'")
    assert "Traceback" not in result.stderr


# in-process: error paths and options


def test_debug_shows_the_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.yaml").write_text(SPEC.replace("n_trials: 3", "n_trials: 0"))
    assert main(["run", "bad.yaml", "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err
    assert err.rstrip().endswith("slimtune: error: bad.yaml: n_trials: must be ≥ 1, got 0")


def test_study_errors(
    study_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(study_dir)
    monkeypatch.syspath_prepend(str(TESTS))
    assert main(["-q", "worker", "tiny.yaml", "--study", "nobody"]) == 2
    assert "slimtune: error:" in capsys.readouterr().err
    assert main(["export", "tiny.yaml", "--trial", "999", "--out", "x.pt"]) == 2
    assert "has no trial 999" in capsys.readouterr().err
    assert main(["pareto", "--study", "nobody"]) == 2
    err = capsys.readouterr().err
    assert "'nobody' does not exist" in err and "tiny" in err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"slimtune {__version__}"


def test_missing_storage_and_study(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["status"]) == 2
    assert "no such file" in capsys.readouterr().err and not (tmp_path / "slimtune.db").exists()
    assert main(["pareto"]) == 2
    assert "give a SPEC file or --study NAME" in capsys.readouterr().err
    assert main(["export", "nope.yaml", "--trial", "0", "--out", "m.pt"]) == 2
    assert "slimtune: error: nope.yaml: spec file not found" in capsys.readouterr().err


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        ["run"],
        ["run", "x.yaml", "--n-trials", "0"],
        ["export", "--study", "s", "--out", "m.pt"],
        ["frobnicate"],
    ):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
        assert "error:" in capsys.readouterr().err


def test_sensitivity_with_bit_widths_writes_both_tables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(TESTS))
    spec = SPEC.replace("space: {levels: [0.25, 0.5], max_sparsity: 0.75}", "space: {levels: [0.5], bits_w: [2, 8, 32]}")
    (tmp_path / "bits.yaml").write_text(spec)
    assert main(["sensitivity", "bits.yaml", "--out", "sens.csv", "-q"]) == 0
    out = capsys.readouterr().out
    assert "only one layer's weights are quantized" in out and "2 bits" in out and "8 bits" in out
    bits = pd.read_csv(tmp_path / "sens-bits.csv", dtype={"layer": str})
    assert sorted(bits["bits_w"].unique()) == [2, 8]  # 32 (float) is not analysed
    assert sorted(bits["layer"].unique()) == ["0", "2"]
    assert len(pd.read_csv(tmp_path / "sens.csv")) == 1  # one prunable group at one level
    # a second call reads both tables from the storage
    assert main(["sensitivity", "bits.yaml", "--out", "again.csv", "-q"]) == 0
    assert capsys.readouterr().out.count("(cached in the storage)") == 2


# what a new user trips over


def test_pareto_table_has_a_legend(study_dir: Path) -> None:
    from slimtune import attributes
    from slimtune.trials import open_study

    result = slimtune(study_dir, "pareto", "tiny.yaml")
    assert result.returncode == 0, result.stderr
    study = open_study(f"sqlite:///{study_dir / 'slimtune.db'}", "tiny")
    base = attributes.baseline(study)
    out = result.stdout
    assert f"original model: accuracy {base['accuracy']:.4f}, {base['flops']:,.0f} FLOPs (MACs per sample)" in out
    assert "*_rel: relative, the ratio to the original model" in out
    assert "constraints: none" in out
    n = len(study.trials)
    shown = len(pd.read_csv(io.StringIO(slimtune(study_dir, "pareto", "tiny.yaml", "--format", "csv").stdout)))
    assert f"not shown: {n - shown} of {n} trials (" in out


def _fake_study(url: str, name: str = "fake") -> optuna.Study:
    """A slimtune-like study: 2 front trials, 1 dominated, 1 infeasible, 1 failed, 1 pruned."""
    import warnings

    from optuna.trial import TrialState, create_trial

    from slimtune.attributes import Study, Trial
    from slimtune.trials import make_storage

    study = optuna.create_study(study_name=name, storage=make_storage(url), directions=["maximize", "minimize"])
    for key, value in {
        Study.OBJECTIVES: ["accuracy", "flops"], Study.CONSTRAINTS: ["accuracy_drop <= 0.05"],
        Study.METRIC_NAME: "top1", Study.METRIC_DIRECTION: "maximize", Study.N_TRIALS: 6,
        Study.BASELINE: {"accuracy": 0.9, "flops": 123456.0, "params": 1000, "size": 4000, "latency": None},
    }.items():  # fmt: skip
        study.set_user_attr(key, value)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for acc, flops in ((0.89, 0.5), (0.87, 0.3), (0.86, 0.6), (0.5, 0.9)):  # the last one infeasible
            measures = {"accuracy": acc, "flops": flops, "flops_abs": flops * 123456, "accuracy_drop": 0.9 - acc}
            violation = 0.9 - acc - 0.05
            user_attrs = {Trial.MEASURES: measures, Trial.CONSTRAINTS: {"accuracy_drop <= 0.05": violation}}
            study.add_trial(create_trial(values=[acc, flops], user_attrs=user_attrs, system_attrs={"constraints": [violation]}))
        study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={Trial.FAIL_REASON: "RuntimeError: boom"}))
        study.add_trial(create_trial(state=TrialState.PRUNED))
    return study


def test_pareto_legend_counts_the_trials_not_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    _fake_study("sqlite:///fake.db")
    assert main(["pareto", "--storage", "sqlite:///fake.db", "--study", "fake"]) == 0
    out = capsys.readouterr().out
    assert "original model: top1 0.9000, 123,456 FLOPs (MACs per sample), 1,000 params, 4,000 bytes" in out
    assert "accuracy: the task's metric (top1, higher is better)" in out
    assert "constraints: accuracy_drop <= 0.05" in out
    assert (
        "not shown: 4 of 6 trials (1 complete but dominated, 1 complete but infeasible, 1 failed, 1 pruned)" in out
    ), out


def test_summary_counts_as_the_progress_bar(tmp_path: Path) -> None:
    """With several workers, a trial retried after its worker died and a trial asked for once the
    budget was used are not counted, by the progress bar (driver.counts) nor by the summary."""
    import warnings

    from optuna.trial import TrialState, create_trial

    from slimtune.attributes import Trial
    from slimtune.cli import _study_line
    from slimtune.trials.driver import counts

    study = _fake_study(f"sqlite:///{tmp_path / 'w.db'}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={Trial.FAIL_REASON: "WorkerDied: ..."}))  # 6
        study.add_trial(create_trial(values=[0.8, 0.9], system_attrs={"failed_trial": 6}))  # its retry
        study.add_trial(create_trial(state=TrialState.PRUNED, user_attrs={Trial.OVER_BUDGET: True}))
    line = _study_line(study, "sqlite:///w.db", 7)
    done = counts(study)["done"]
    assert done == 7
    assert line == (
        "study 'fake' in sqlite:///w.db: 5 complete, 1 pruned, 1 failed trials (7 of 7 finished); "
        "not counted: 1 failed and retried (worker died), 1 over budget (pruned at once)"
    )


def test_export_to_a_directory_is_a_clear_error(
    study_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.chdir(study_dir)
    monkeypatch.syspath_prepend(str(TESTS))
    assert main(["export", "tiny.yaml", "--trial", "0", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"slimtune: error: --out {tmp_path}: is a directory; --out expects a file path")
    assert os.path.join(str(tmp_path), "model.safetensors") in err and "Traceback" not in err
    assert main(["pareto", "tiny.yaml", "--out", str(tmp_path)]) == 2
    assert f"--out {tmp_path}: is a directory" in capsys.readouterr().err


def test_status_shows_the_budget_of_the_latest_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(TESTS))
    (tmp_path / "tiny.yaml").write_text(SPEC.replace("space: {", "space: {sensitivity: false, "))

    def budget() -> str:
        assert main(["status"]) == 0
        lines = capsys.readouterr().out.splitlines()
        header = lines[1].split()
        row = next(line.split() for line in lines if line.split()[:1] == ["tiny"])
        return row[header.index("n_trials")]

    assert main(["-q", "run", "tiny.yaml", "--n-trials", "1"]) == 0
    capsys.readouterr()
    assert budget() == "1"
    assert main(["-q", "run", "tiny.yaml", "--n-trials", "2"]) == 0
    assert "(2 of 2 finished)" in capsys.readouterr().out
    assert budget() == "2"
    assert main(["-q", "worker", "tiny.yaml", "--n-trials", "3"]) == 0  # a worker joins: the budget stays
    capsys.readouterr()
    assert budget() == "2"


_NO_OPTUNA_LOGS = """\
import sys, slimtune
from _tasks import tiny_task
study = slimtune.search(tiny_task(hidden=16, finetune_steps=5), strategy="random", n_trials=2, study_name="api",
                        storage="sqlite:///api.db", space={"levels": [0.5], "sensitivity": SENSITIVITY}, progress=False)
assert len(study.trials) == 2
"""


@pytest.mark.parametrize("sensitivity", [False, True])
def test_no_optuna_log_lines_from_the_api(tmp_path: Path, sensitivity: bool) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SLIMTUNE_ARTIFACTS"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(TESTS)])
    env.setdefault("OMP_NUM_THREADS", "1")
    code = _NO_OPTUNA_LOGS.replace("SENSITIVITY", str(sensitivity))
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    logs = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("[I ")]
    assert not logs, logs


def test_no_optuna_log_lines_from_the_cli(study_dir: Path) -> None:
    result = slimtune(study_dir, "run", "tiny.yaml", "--n-trials", "4", "--study", "tiny-logs")
    assert result.returncode == 0, result.stderr
    assert not [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("[I ")]


def test_export_formats_onnx_and_pt2(
    study_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import onnxruntime as ort  # the dev extra installs it

    from slimtune.compressors.deploy import load_pt2

    monkeypatch.chdir(study_dir)
    monkeypatch.syspath_prepend(str(TESTS))
    onnx_path, pt2_path = tmp_path / "m.onnx", tmp_path / "m.bin"
    assert main(["-q", "export", "tiny.yaml", "--trial", "0", "--out", str(onnx_path)]) == 0  # format from the suffix
    out = capsys.readouterr().out
    assert "ONNX (opset" in out and "inputs:  input: float32[batch, 8]" in out and "checked with onnxruntime" in out
    x = torch.randn(5, 8)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert session.run(None, {session.get_inputs()[0].name: x.numpy()})[0].shape == (5, 3)
    assert main(["-q", "export", "tiny.yaml", "--trial", "0", "--out", str(pt2_path), "--format", "pt2"]) == 0
    assert load_pt2(pt2_path).module()(x).shape == (5, 3)
    assert main(["-q", "export", "--study", "tiny", "--trial", "0", "--out", str(onnx_path)]) == 2
    assert "--format onnx rebuilds the trial's model from the task's model: give the SPEC" in capsys.readouterr().err


def test_export_formats_int8_and_onnx_int8(
    study_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import onnx

    from slimtune.compressors.quantization import PT2EInt8Model, load_int8

    monkeypatch.chdir(study_dir)
    monkeypatch.syspath_prepend(str(TESTS))
    int8_path, ort_path = tmp_path / "m-int8.pt2", tmp_path / "m-int8.onnx"
    # the task has no calibration batches: the error names the field
    assert main(["-q", "export", "tiny.yaml", "--trial", "0", "--out", str(int8_path), "--format", "int8"]) == 2
    assert "Task.calibration" in capsys.readouterr().err
    # the same study, its task with calibration batches (the model is the same)
    (study_dir / "tiny-cal.yaml").write_text(
        SPEC.replace("task_args: {hidden: 16, finetune_steps: 5}", "task_args: {hidden: 16, finetune_steps: 5, calibrated: true}")
    )
    assert main(["-q", "export", "tiny-cal.yaml", "--trial", "0", "--out", str(int8_path), "--format", "int8"]) == 0
    out = capsys.readouterr().out
    assert "int8 torch.export program (torchao PT2E" in out and "float32[batch, 8]" in out
    loaded = load_int8(int8_path)
    assert isinstance(loaded, PT2EInt8Model) and loaded(torch.randn(5, 8)).shape == (5, 3)
    fmt = ["--format", "onnx-int8"]
    assert main(["-q", "export", "tiny-cal.yaml", "--trial", "0", "--out", str(ort_path), *fmt]) == 0
    ops = {n.op_type for n in onnx.load(str(ort_path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
