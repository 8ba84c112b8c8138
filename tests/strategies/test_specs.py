"""Every automatic strategy runs from a spec file with `slimtune run`, and `slimtune worker` joins."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from slimtune.cli import main
from slimtune.trials.spec import load_spec

TESTS = Path(__file__).resolve().parents[1]

SPEC = """\
study: {name}
storage: sqlite:///{name}.db
task: _tasks:tiny_task
task_args: {{hidden: 16, finetune_steps: 2}}
strategy: {strategy}
space: {space}
objectives: [accuracy, {resource}]
constraints: ["{resource} <= 0.5"]
n_trials: 5
save_models: {save}
"""

CASES = {
    "simulated_annealing": (
        "{name: simulated_annealing, start_temperature: 0.02, stop_temperature: 0.01, cool_down_rate: 0.6, cooling: moves}",
        "{sensitivity: false}", "flops", 2,
    ),
    "netadapt": ("{name: netadapt, step: 0.3, long_term_finetune: {epochs: 1}}", "{sensitivity: false}", "flops", None),
    "bitwidth": ("{name: bitwidth, sampler: random}", "{bits_w: [4, 8, 32], sensitivity: false}", "size", 5),
    "joint": ("{name: joint, sampler: tpe, sampler_params: {n_startup_trials: 2}}", "{bits_w: [4, 8, 32], sensitivity: false}", "size", 5),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_run_and_worker(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    strategy, space, resource, expected = CASES[name]
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(TESTS))
    save = "all" if name == "netadapt" else "none"  # netadapt's candidates load the chosen network's saved model
    (tmp_path / "spec.yaml").write_text(SPEC.format(name=name, strategy=strategy, space=space, resource=resource, save=save))
    spec = load_spec(tmp_path / "spec.yaml")
    assert spec.strategy_name == name
    assert main(["-q", "run", "spec.yaml"]) == 0, capsys.readouterr().err
    assert main(["-q", "worker", "spec.yaml", "--n-trials", "6"]) == 0, capsys.readouterr().err
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / (name + '.db')}")
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert study.user_attrs["strategy"] == name and complete
    if expected is not None:
        # annealing ends after its steps whatever the budget; the others use the budget (the worker adds one)
        assert len(complete) == (expected if name == "simulated_annealing" else expected + 1)
    if name == "netadapt":  # its iterations step down to the target: the final trial meets it
        complete = [t for t in complete if t.user_attrs["netadapt.candidate"] == "final"]
        assert len(complete) == 1 and "reached flops" in study.user_attrs["netadapt.result"]["reason"]
    for t in complete:
        assert t.user_attrs["measures"][resource] <= 0.5 + 1e-9
