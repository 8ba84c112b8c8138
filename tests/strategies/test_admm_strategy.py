"""admm (strategy): every trial is an ADMM plan; searched or fixed per-group targets reached exactly in
the final models; rho and iterations tuned when asked and really used; the task's ADMM settings kept;
parameter errors name the field; `slimtune run` and `slimtune worker`."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

import slimtune
from slimtune.compressors import CompressionPlan, trace
from slimtune.compressors.training import run_compressor
from slimtune.search_spaces import SearchSpace, SpaceOptions
from slimtune.strategies import get_strategy
from slimtune.strategies._budget import ResourceModel
from slimtune.strategies.admm import fixed_allocation
from slimtune.trials import load_model

TESTS = Path(__file__).resolve().parents[1]
ADMM_RUN = {"steps": 6, "lr": 0.05}


@pytest.fixture(autouse=True)
def _train_tasks(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(TESTS / "trials"))  # _train_tasks: a tiny classifier with training batches
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def train_task(**kwargs) -> slimtune.Task:
    from _train_tasks import train_task as make

    return make(hidden=16, finetune_config={"steps": 3, "lr": 0.05}, **kwargs)


def run(task: slimtune.Task, url: str, n_trials: int, **params) -> optuna.Study:
    return slimtune.search(task, strategy="admm", n_trials=n_trials, storage=url, study_name="admm",
                           space={"sensitivity": False}, progress=False, **params)  # fmt: skip


def group_widths(model: torch.nn.Module, groups: list[str]) -> dict[str, int]:
    """Output channels of each group's first producing layer (the group's name)."""
    return {g: model.get_submodule(g).weight.shape[0] for g in groups}


def rebuild(task: slimtune.Task, plan: CompressionPlan) -> torch.nn.Module:
    """What a trial does with its plan: compress a copy of the original, then fine-tune."""
    model = run_compressor(task.model, plan, task.example_inputs, task.training_context(plan.finetune))
    task.run_finetune(model, None, plan.finetune)
    return model


def test_searched_targets_are_met_exactly_and_rho_is_tuned(tmp_path: Path) -> None:
    task = train_task()
    study = run(task, f"sqlite:///{tmp_path / 'a.db'}", 4, target=0.45, tune=["rho"], rho_range=[0.01, 0.5],
                compressor_params=ADMM_RUN)  # fmt: skip
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4, [t.user_attrs.get("fail_reason") for t in trials]
    graph = trace(task.model, task.example_inputs)
    groups = [g.name for g in graph.prunable_groups()]
    rhos = []
    for t in trials:
        plan = CompressionPlan.from_dict(t.user_attrs["plan"])
        rho = t.params["admm/rho"]
        assert t.distributions["admm/rho"].log and 0.01 <= rho <= 0.5
        assert plan.compressor == "admm" and plan.compressor_params == {**ADMM_RUN, "rho": rho}
        rhos.append(rho)
        # the budget holds (proposals over it were raised to it) and every group has exactly its target
        assert t.user_attrs["admm.budget_met"] and t.user_attrs["measures"]["flops"] <= 0.45
        assert t.user_attrs["measures"]["flops"] == pytest.approx(t.user_attrs["admm.resource"])
        expected = {g: graph.groups[g].size - graph.groups[g].n_prune(plan.prune[g].sparsity) for g in groups}
        assert group_widths(load_model(study, t.number), groups) == expected
    assert len(set(rhos)) == 4
    # the space's seeds come first (without sensitivity: the uniform one), repaired to the budget
    assert trials[0].user_attrs["admm.prior"] == 0 and "admm.prior" not in trials[1].user_attrs
    assert len({v for k, v in trials[0].params.items() if k.startswith("sparsity/")}) == 1
    # the tuned rho is what ADMM ran with: rebuilding the trial reproduces its model; another rho does not
    t = trials[1]
    plan = CompressionPlan.from_dict(t.user_attrs["plan"])
    saved = load_model(study, t.number).state_dict()
    same = rebuild(task, plan).state_dict()
    other = rebuild(task, CompressionPlan.from_dict({**plan.to_dict(), "compressor_params": {**ADMM_RUN, "rho": 5.0}}))
    assert all(torch.allclose(saved[k], same[k], atol=1e-6) for k in saved)
    assert not all(torch.allclose(saved[k], other.state_dict()[k], atol=1e-3) for k in saved)


def test_without_tune_the_compressor_defaults_apply_and_no_knob_is_searched() -> None:
    study = run(train_task(), "memory", 2, compressor_params={"steps": 4, "rho": 0.3}, save_models="none")
    for t in study.trials:
        assert t.state == TrialState.COMPLETE, t.user_attrs.get("fail_reason")
        assert not any(k.startswith("admm/") for k in t.params)
        assert t.user_attrs["plan"]["compressor_params"] == {"steps": 4, "rho": 0.3}
        assert "admm.resource" not in t.user_attrs  # no budget given, none in the constraints: no repair


def test_fixed_uniform_allocation_at_the_target_with_tuned_iterations(tmp_path: Path) -> None:
    task = train_task()
    study = run(task, f"sqlite:///{tmp_path / 'u.db'}", 3, allocation="uniform", tune=["iterations"],
                iterations_range=[1, 6], compressor_params=ADMM_RUN, objectives=["accuracy", "params"],
                constraints=["params <= 0.5"])  # fmt: skip
    graph = trace(task.model, task.example_inputs)
    groups = [g.name for g in graph.prunable_groups()]
    sparsities = None
    for t in study.get_trials(deepcopy=False):
        assert t.state == TrialState.COMPLETE, t.user_attrs.get("fail_reason")
        iterations = t.params["admm/iterations"]
        assert isinstance(iterations, int) and 1 <= iterations <= 6
        assert t.user_attrs["plan"]["compressor_params"]["iterations"] == iterations
        values = {k: v for k, v in t.params.items() if k.startswith("sparsity/")}
        assert all(t.distributions[k].single() for k in values)  # recorded, not searched
        assert len(set(values.values())) == 1  # uniform: one sparsity for every group
        sparsities = sparsities or values
        assert values == sparsities  # the same allocation for every trial
        # the target comes from the study's constraint, and the measured model meets it just
        m = t.user_attrs["measures"]
        assert t.user_attrs["admm.budget_met"] and 0.4 < m["params"] <= 0.5
        plan = t.user_attrs["plan"]["prune"]
        expected = {g: graph.groups[g].size - graph.groups[g].n_prune(plan[g]["sparsity"]) for g in groups}
        assert group_widths(load_model(study, t.number), groups) == expected


def test_fixed_sensitivity_allocation_follows_the_safe_levels() -> None:
    task = train_task()
    graph = trace(task.model, task.example_inputs)
    groups = [g.name for g in graph.prunable_groups()]
    table = slimtune.sensitivity_table(task, "memory", {"levels": [0.25, 0.5, 0.75]}, progress=False)
    space = SearchSpace(graph, SpaceOptions(levels=(0.25, 0.5, 0.75), headroom=0.5), table)
    model = ResourceModel(space, "flops")
    sens, r_sens, met = fixed_allocation(space, model, 0.3, "sensitivity")
    uni, r_uni, met_uni = fixed_allocation(space, model, 0.3, "uniform")
    assert met and met_uni and r_sens <= 0.3 and r_uni <= 0.3
    # uniform: one sparsity, except groups capped at their upper bound
    free = {v for g, v in uni.items() if v < space.upper[g]}
    assert len(free) == 1 and all(v == min(max(free), space.upper[g]) for g, v in uni.items())
    # sensitivity: the group that tolerates more one-shot pruning gets more (its safe level is higher)
    low, high = sorted(groups, key=lambda g: space.safe[g])
    assert space.safe[low] < space.safe[high] and sens[low] < sens[high]
    assert sens != uni
    # an unreachable target gives every group its upper bound and says so
    top, _, reached = fixed_allocation(space, model, 1e-4, "uniform")
    assert not reached and top == {g: space.upper[g] for g in groups}


def test_the_tasks_admm_settings_are_kept_under_the_strategys() -> None:
    task = train_task(compressor="admm", compressor_params={"steps": 5, "rho": 0.05})
    study = run(task, "memory", 1, compressor_params={"lr": 0.02}, save_models="none")
    (t,) = study.trials
    assert t.state == TrialState.COMPLETE, t.user_attrs.get("fail_reason")
    assert t.user_attrs["plan"]["compressor_params"] == {"steps": 5, "rho": 0.05, "lr": 0.02}


def test_parameter_errors_name_the_field() -> None:
    for params, where in (
        ({"allocation": "random"}, "strategy.allocation"),
        ({"tune": ["lr"]}, "strategy.tune"),
        ({"tune": "rho"}, "strategy.tune"),
        ({"rho_range": [0.5, 0.1]}, "strategy.rho_range"),
        ({"rho_range": [0, 1]}, "strategy.rho_range"),
        ({"iterations_range": [0, 3]}, "strategy.iterations_range"),
        ({"iterations_range": [1.5, 3]}, "strategy.iterations_range"),
        ({"compressor_params": {"rhoo": 1}}, "strategy.compressor_params"),
        ({"compressor_params": 3}, "strategy.compressor_params"),
        ({"compressor_params": {"rho": 0.1}, "tune": ["rho"]}, "strategy.compressor_params.rho"),
        ({"sampler": "cmaes"}, "strategy.sampler"),
        ({"target": 2}, "strategy.target"),
        ({"resource": "energy"}, "strategy.resource"),
    ):
        with pytest.raises(ValueError, match=where.replace(".", r"\.")):
            get_strategy("admm", **params)


SPEC = """\
study: admm-spec
storage: sqlite:///admm.db
task: _train_tasks:train_task
task_args: {hidden: 16}
strategy: {name: admm, tune: [rho], sampler: random, compressor_params: {steps: 4}}
space: {sensitivity: false}
finetune: {steps: 2}
objectives: [accuracy, flops]
constraints: ["flops <= 0.5"]
n_trials: 2
save_models: none
"""


def test_run_and_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from slimtune.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "spec.yaml").write_text(SPEC)
    assert main(["-q", "run", "spec.yaml"]) == 0, capsys.readouterr().err
    assert main(["-q", "worker", "spec.yaml", "--n-trials", "3"]) == 0, capsys.readouterr().err
    study = optuna.load_study(study_name="admm-spec", storage=f"sqlite:///{tmp_path / 'admm.db'}")
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3, [t.user_attrs.get("fail_reason") for t in trials]
    for t in trials:
        assert t.user_attrs["plan"]["compressor"] == "admm"
        assert t.user_attrs["measures"]["flops"] <= 0.5 and not math.isnan(t.params["admm/rho"])
