"""The strategy registry, parameter checks and the uniform baseline (a real 4-trial grid study)."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
import torch
from optuna.trial import TrialState

import slimtune
from slimtune.compressors import trace
from slimtune.compressors.plan import CompressionPlan
from slimtune.examples.models import mlp
from slimtune.search_spaces import SearchSpace, SpaceOptions
from slimtune.strategies import STRATEGIES, Strategy, get_strategy, register_strategy
from slimtune.strategies.uniform import PARAM

BUILTIN = {"uniform", "random", "tpe", "nsga2"}


def tiny_task() -> slimtune.Task:
    """A 3-group MLP on random data, labelled by its own predictions (baseline accuracy 1.0)."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = mlp(16, (32, 24, 16), 4).eval()
    x = torch.randn(256, 16, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)

    def evaluate(m: torch.nn.Module) -> float:
        with torch.no_grad():
            return float((m(x).argmax(1) == y).float().mean())

    return slimtune.Task(model, x[:1], evaluate, name="tiny-strategies")


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    return SearchSpace(trace(mlp(16, (32, 24, 16), 4), torch.randn(1, 16)), SpaceOptions(max_sparsity=0.8))


# ---------------------------------------------------------------------- registry
def test_registry_names() -> None:
    assert BUILTIN <= set(STRATEGIES)
    for name in BUILTIN:
        strat = get_strategy(name)
        assert isinstance(strat, Strategy)
        assert strat.name == name
        assert type(strat) is STRATEGIES[name]


def test_unknown_strategy_lists_known() -> None:
    with pytest.raises(ValueError) as info:
        get_strategy("annealing_typo")
    msg = str(info.value)
    assert "unknown strategy 'annealing_typo'" in msg
    for name in BUILTIN:
        assert name in msg


@pytest.mark.parametrize(("name", "param"), [("random", "temperature"), ("tpe", "population_size"), ("nsga2", "n_startup_trials"), ("uniform", "step")])
def test_unknown_parameter_names_it(name: str, param: str) -> None:
    with pytest.raises(ValueError) as info:
        get_strategy(name, **{param: 1})
    msg = str(info.value)
    assert f"strategy {name!r}" in msg and repr(param) in msg and "known:" in msg


def test_parameters_override_defaults() -> None:
    tpe = get_strategy("tpe", n_startup_trials=3)
    assert tpe.params == {"n_startup_trials": 3, "multivariate": True}
    nsga = get_strategy("nsga2", population_size=12)
    assert nsga.params["population_size"] == 12 and nsga.params["crossover_prob"] == 0.9
    assert get_strategy("uniform", low=0.2, high=0.6).params == {"low": 0.2, "high": 0.6, "points": None}


def test_register_strategy_rejects_duplicates_and_nameless() -> None:
    class Clash(Strategy):
        name = "random"

    class Nameless(Strategy):
        pass

    before = dict(STRATEGIES)
    with pytest.raises(ValueError, match="already registered"):
        register_strategy(Clash)
    with pytest.raises(ValueError, match="has no name"):
        register_strategy(Nameless)
    assert STRATEGIES == before
    # re-registering the same class is harmless
    assert register_strategy(STRATEGIES["random"]) is STRATEGIES["random"]


def test_samplers(space: SearchSpace) -> None:
    expected = {
        "random": optuna.samplers.RandomSampler,
        "tpe": optuna.samplers.TPESampler,
        "nsga2": optuna.samplers.NSGAIISampler,
        "uniform": optuna.samplers.GridSampler,
    }
    for name, cls in expected.items():
        assert isinstance(get_strategy(name).sampler(space, 2, 0, 10), cls), name


# ---------------------------------------------------------------------- uniform
def test_uniform_plan_gives_every_group_the_same_sparsity(space: SearchSpace) -> None:
    strat = get_strategy("uniform")
    plan = strat.plan({PARAM: 0.35}, space)
    assert isinstance(plan, CompressionPlan)
    assert plan.sparsities() == {g: 0.35 for g in space.groups}
    assert strat.seeds(space) == []
    assert strat.uses_sensitivity is False


def test_uniform_suggest_range(space: SearchSpace) -> None:
    strat = get_strategy("uniform", low=0.2)
    study = optuna.create_study(sampler=strat.sampler(space, 1, 0, 3))
    seen = []

    def objective(trial: optuna.trial.Trial) -> float:
        params = strat.suggest(trial, space)
        assert list(params) == [PARAM]
        seen.append(params[PARAM])
        return 0.0

    study.optimize(objective, n_trials=3)
    # default high = the space's max_sparsity
    assert sorted(seen) == pytest.approx([0.2, 0.5, 0.8])


def test_uniform_study_sweeps_a_grid(tmp_path) -> None:
    task = tiny_task()
    url = f"sqlite:///{tmp_path / 'uniform.db'}"
    study = slimtune.search(
        task, strategy="uniform", n_trials=4, storage=url, study_name="u", space={"sensitivity": False, "max_sparsity": 0.7},
        progress=False, save_models="none",
    )  # fmt: skip
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 4
    assert all(t.state == TrialState.COMPLETE for t in trials)
    values = sorted(t.params[PARAM] for t in trials)
    assert values == pytest.approx([round(float(v), 4) for v in np.linspace(0.1, 0.7, 4)])
    assert len(set(values)) == 4
    groups = [g.name for g in trace(task.model, task.example_inputs).prunable_groups()]
    flops = []
    for t in trials:
        plan = CompressionPlan.from_dict(t.user_attrs["plan"])
        assert plan.sparsities() == {g: t.params[PARAM] for g in groups}
        flops.append((t.params[PARAM], t.user_attrs["measures"]["flops"]))
    # more sparsity, fewer FLOPs
    flops.sort()
    assert all(a[1] > b[1] for a, b in zip(flops, flops[1:]))


def test_uniform_points_parameter(tmp_path) -> None:
    task = tiny_task()
    url = f"sqlite:///{tmp_path / 'uniform_points.db'}"
    study = slimtune.search(
        task, strategy="uniform", n_trials=3, storage=url, study_name="u", space={"sensitivity": False},
        progress=False, save_models="none", low=0.2, high=0.6, points=3,
    )  # fmt: skip
    assert sorted(t.params[PARAM] for t in study.trials) == pytest.approx([0.2, 0.4, 0.6])
    assert study.user_attrs["strategy_params"] == {"low": 0.2, "high": 0.6, "points": 3}
