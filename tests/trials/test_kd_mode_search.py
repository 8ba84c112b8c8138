"""``space.kd_mode``: the distillation mode as a searched trial parameter, carried by each plan into its
fine-tune."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from _train_tasks import train_task
from slimtune.compressors import CompressionPlan, trace
from slimtune.errors import ConfigError, SpecError
from slimtune.search_spaces import SearchSpace, SpaceOptions
from slimtune.search_spaces.space import KD_MODE_PARAM
from slimtune.trials import search
from slimtune.trials.objective import with_finetune_params
from slimtune.trials.spec import Spec

kd_modes = importlib.import_module("slimtune.compressors.training.kd_modes")
MODES = ["none", "offline", "online", "born_again", "self"]


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _space(kd_mode) -> SearchSpace:
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    return SearchSpace(trace(model, torch.randn(1, 4)), SpaceOptions(sensitivity=False, kd_mode=kd_mode))


def test_a_list_of_modes_is_the_parameter_finetune_kd_mode_and_reaches_the_plan():
    space = _space(MODES)
    assert KD_MODE_PARAM == "finetune/kd_mode"
    assert space.distributions()[KD_MODE_PARAM] == CategoricalDistribution(MODES)
    params = {"sparsity/0": 0.5, KD_MODE_PARAM: "online"}
    assert space.plan(params).finetune == {"kd": {"mode": "online"}}
    assert space.plan({**params, KD_MODE_PARAM: "none"}).finetune == {"kd": None}
    assert space.plan({"sparsity/0": 0.5}).finetune == {"kd": None}  # without the parameter: the first choice
    plan = space.plan({**params, KD_MODE_PARAM: "self"})
    assert CompressionPlan.from_dict(plan.to_dict()).finetune == {"kd": {"mode": "self"}}
    # strategies that build plans from the sparsities only still get the mode, through the objective
    assert with_finetune_params(CompressionPlan(), params).finetune == {"kd": {"mode": "online"}}
    assert with_finetune_params(CompressionPlan(), {KD_MODE_PARAM: "none", "finetune/kd.alpha": 0.2}).finetune == {
        "kd": None
    }
    assert with_finetune_params(CompressionPlan(), {KD_MODE_PARAM: "born_again", "finetune/kd.alpha": 0.2}).finetune == {
        "kd": {"mode": "born_again", "alpha": 0.2}
    }


def test_one_mode_is_no_parameter_and_every_plan_gets_it():
    space = _space("born_again")
    assert KD_MODE_PARAM not in space.distributions()
    assert space.plan({"sparsity/0": 0.25}).finetune == {"kd": {"mode": "born_again"}}
    assert _space(None).plan({"sparsity/0": 0.25}).finetune == {}  # the task's own settings
    assert SpaceOptions(kd_mode=["self", "none"]).to_dict()["kd_mode"] == ["self", "none"]


@pytest.mark.parametrize(("value", "problem"), [("onlin", "did you mean 'online'?"), ([], "non-empty list"),
                                                ([3], "non-empty list")])  # fmt: skip
def test_bad_modes_name_the_option(value, problem):
    with pytest.raises(ConfigError) as info:
        SpaceOptions(kd_mode=value)
    assert info.value.field == "space.kd_mode" and problem in info.value.problem
    with pytest.raises(SpecError) as info:
        Spec.from_yaml(f"study: s\ntask: m:f\nn_trials: 2\nspace: {{kd_mode: {value!r}}}\n")
    assert info.value.field == "space.kd_mode"


def test_trials_finetune_with_the_mode_they_drew(tmp_path: Path, monkeypatch):
    drawn = []
    original = kd_modes.make_distiller

    def spy(student, teacher, config, loss_fn, total):
        drawn.append(config.kd.mode)
        return original(student, teacher, config, loss_fn, total)

    monkeypatch.setattr(kd_modes, "make_distiller", spy)
    spec = Spec.from_yaml(f"""
study: kd-modes
storage: sqlite:///{tmp_path / 's.db'}
task: _train_tasks:train_task
strategy: random
space: {{sensitivity: false, kd_mode: [none, offline, online, born_again]}}
objectives: [accuracy, flops]
finetune: {{steps: 3, lr: 0.01}}
n_trials: 8
seed: 1
save_models: none
""")
    study = search(spec.make_task(), progress=False, **spec.search_kwargs())
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 8, [t.user_attrs.get("fail_reason") for t in trials]
    chosen = [t.params[KD_MODE_PARAM] for t in trials]
    assert len(set(chosen)) >= 3, chosen
    assert drawn == [m for m in chosen if m != "none"]  # one fine-tune a trial, in the mode it drew
    for t, mode in zip(trials, chosen):
        assert t.user_attrs["plan"]["finetune"] == ({"kd": None} if mode == "none" else {"kd": {"mode": mode}})
