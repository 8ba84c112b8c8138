"""Trials with the built-in fine-tune loop, training compressors and KD, from Python and from specs."""

from __future__ import annotations

import copy
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from _train_tasks import train_task
from slimtune.compressors import CompressionPlan
from slimtune.compressors.training import FinetuneConfig, FinetuneResult
from slimtune.errors import PlanError
from slimtune.trials.objective import with_finetune_params
from slimtune.trials import search
from slimtune.trials.spec import Spec

NO_SENS = {"sensitivity": False}


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_task_runs_the_builtin_loop_with_plan_overrides():
    task = train_task(finetune_config={"steps": 7, "lr": 0.05})
    model = copy.deepcopy(task.model)
    result = task.run_finetune(model, None, {"steps": 3})
    assert isinstance(result, FinetuneResult) and result.steps == 3
    assert not torch.equal(model[0].weight, task.model[0].weight)
    assert task.run_finetune(copy.deepcopy(task.model)).steps == 7
    assert task.effective_finetune_config({"kd": {"alpha": 0.2}}).kd.alpha == 0.2


def test_user_finetune_gets_the_effective_config():
    got = []

    def finetune(model, config):  # no report: the second argument is taken by name
        got.append(config)

    task = train_task(finetune_config={"epochs": 2, "lr": 0.1})
    task.finetune = finetune
    assert task.run_finetune(task.model, None, {"lr": 0.3}) is None
    assert got == [FinetuneConfig(epochs=2, lr=0.3)]


def test_task_errors_name_the_field():
    with pytest.raises(PlanError, match=r"Task: finetune.lr: must be a number"):
        train_task(finetune_config={"lr": -1})
    with pytest.raises(PlanError, match=r"Task: plan.compressor: unknown compressor 'amdm'"):
        train_task(compressor="amdm")


def test_finetune_params_reach_the_plan():
    plan = with_finetune_params(CompressionPlan(finetune={"kd": {"alpha": 0.9}}), {"finetune/kd.alpha": 0.1,
                                "finetune/kd.temperature": 2.0, "finetune/steps": 5, "sparsity/x": 0.5})  # fmt: skip
    assert plan.finetune == {"kd": {"alpha": 0.9, "temperature": 2.0}, "steps": 5}  # the plan's own value wins


def test_trials_use_the_task_compressor_kd_and_report(tmp_path: Path):
    teacher_calls = []
    task = train_task(finetune_config={"steps": 4, "lr": 0.05, "kd": {"alpha": 0.5}, "eval_every": 2},
                      compressor="agp", compressor_params={"steps": 6})  # fmt: skip
    handle = task.model.register_forward_hook(lambda *a: teacher_calls.append(1))
    try:
        study = search(task, strategy="random", n_trials=2, storage=f"sqlite:///{tmp_path / 's.db'}", study_name="t",
                       space=NO_SENS, progress=False, objectives=["accuracy"], save_models="none")  # fmt: skip
    finally:
        handle.remove()
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2, [t.user_attrs.get("fail_reason") for t in trials]
    for t in trials:
        plan = CompressionPlan.from_dict(t.user_attrs["plan"])
        assert plan.compressor == "agp" and plan.compressor_params == {"steps": 6}
        # AGP's 6 steps and the fine-tune's 4, reported every 2 steps, numbered on across both
        assert sorted(t.intermediate_values) == [2, 4, 6, 8, 10]
        assert t.user_attrs["times"]["finetune"] > 0
    # KD ran the original model as teacher on every training batch: (6 + 4) steps × 2 trials at least
    assert len(teacher_calls) >= 20


def test_spec_compressor_and_finetune_reach_the_trials(tmp_path: Path):
    spec = Spec.from_yaml(f"""
study: spec-admm
storage: sqlite:///{tmp_path / 'spec.db'}
task: _train_tasks:train_task
strategy: random
space: {{sensitivity: false}}
objectives: [accuracy, flops]
compressor: {{name: admm, steps: 8, rho: 0.5}}
finetune: {{steps: 5, optimizer: adam, lr: 0.01}}
n_trials: 2
save_models: none
""")
    assert spec.compressor == {"name": "admm", "steps": 8, "rho": 0.5}
    task = spec.make_task()
    assert (task.compressor, task.compressor_params) == ("admm", {"steps": 8, "rho": 0.5})
    assert task.finetune_config == FinetuneConfig(steps=5, optimizer="adam", lr=0.01)
    study = search(task, progress=False, **spec.search_kwargs())
    for t in study.get_trials(deepcopy=False):
        assert t.state == TrialState.COMPLETE, t.user_attrs.get("fail_reason")
        assert t.user_attrs["plan"]["compressor"] == "admm"
        assert t.user_attrs["plan"]["compressor_params"] == {"steps": 8, "rho": 0.5}


def test_training_compressor_without_data_fails_the_trial_not_the_study(tmp_path: Path):
    task = train_task(compressor="lottery")
    task.train_data = None
    study = search(task, strategy="random", n_trials=2, storage=f"sqlite:///{tmp_path / 'f.db'}", study_name="f",
                   space=NO_SENS, progress=False, save_models="none")  # fmt: skip
    reasons = [t.user_attrs.get("fail_reason") for t in study.get_trials(deepcopy=False)]
    assert all(t.state == optuna.trial.TrialState.FAIL for t in study.get_trials(deepcopy=False))
    assert all("compressor 'lottery' trains the model" in r for r in reasons), reasons
