"""simulated_annealing: the Metropolis rule, the cooling schedule, the resource target (also at 95 %
reduction), ending on its own, and resuming from storage with the same state."""

from __future__ import annotations

import json
import math

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

import slimtune
from slimtune.compressors import trace
from slimtune.compressors.measures import ResourcePredictor
from slimtune.search_spaces import SearchSpace, SpaceOptions
from slimtune.strategies import get_strategy
from slimtune.strategies.simulated_annealing import Schedule, SimulatedAnnealingSampler, annealing_state, metropolis

from _strategy_tasks import make_mlp_task

FAST = {"start_temperature": 0.02, "stop_temperature": 0.005, "cool_down_rate": 0.7, "cooling": "moves"}  # 4 steps


def run(task: slimtune.Task, url: str, n_trials: int, study: str = "sa", space: dict | None = None, **params) -> optuna.Study:
    return slimtune.search(
        task, strategy="simulated_annealing", n_trials=n_trials, storage=url, study_name=study,
        space=space or {"sensitivity": False}, progress=False, save_models="none", **{**FAST, **params},
    )  # fmt: skip


def sa_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False) if "sa.step" in t.user_attrs]


# ---------------------------------------------------------------------- Metropolis and schedule
def test_metropolis_rule_property() -> None:
    rng = np.random.default_rng(1234)
    for _ in range(2000):
        delta = float(rng.normal(0.0, 0.05))
        temperature = float(rng.uniform(1e-4, 0.2))
        u = float(rng.random())
        expected = delta <= 0 or u < math.exp(-delta / temperature)
        assert metropolis(delta, temperature, u) is expected
    # improvements are always accepted; a worse step at frequency exp(-delta / T)
    assert all(metropolis(-abs(float(d)), 0.01, 0.999999) for d in rng.normal(size=100))
    for delta, temperature in ((0.01, 0.01), (0.03, 0.01), (0.002, 0.05)):
        us = rng.random(20000)
        rate = np.mean([metropolis(delta, temperature, float(u)) for u in us])
        assert rate == pytest.approx(math.exp(-delta / temperature), abs=0.015)
    assert not metropolis(math.inf, 1.0, 0.0)


def test_default_cooling_follows_nni() -> None:
    strategy = get_strategy("simulated_annealing")
    assert strategy.schedule.cooling == "accepted" and strategy.schedule.level(decided=7, accepted=3) == 2
    assert get_strategy("simulated_annealing", cooling="moves", moves_per_temperature=3).schedule.level(7, 3) == 2


def test_schedule_is_geometric_and_ends_below_the_stop_temperature() -> None:
    s = Schedule(0.05, 0.002, 0.85)
    assert s.steps == 20  # the documented default: 20 steps
    temps = [s.temperature(k) for k in range(s.steps + 1)]
    assert temps[0] == 0.05
    assert all(b / a == pytest.approx(0.85) for a, b in zip(temps, temps[1:]))
    assert temps[s.steps - 1] >= 0.002 > temps[s.steps]
    assert Schedule(**{"start": 0.02, "stop": 0.005, "rate": 0.7}).steps == 4


def test_parameter_errors_name_the_field() -> None:
    for params, field in (
        ({"cool_down_rate": 1.5}, "strategy.cool_down_rate"),
        ({"stop_temperature": 1.0}, "strategy.stop_temperature"),
        ({"start_temperature": -1}, "strategy.start_temperature"),
        ({"target": 1.5}, "strategy.target"),
        ({"resource": "energy"}, "strategy.resource"),
        ({"initial": "random"}, "strategy.initial"),
        ({"cooling": "linear"}, "strategy.cooling"),
        ({"moves_per_temperature": 0}, "strategy.moves_per_temperature"),
    ):
        with pytest.raises(ValueError, match=field):
            get_strategy("simulated_annealing", **params)


# ---------------------------------------------------------------------- a study
def test_chain_follows_the_metropolis_rule_and_ends_when_cold(mlp_task: slimtune.Task, tmp_path) -> None:
    study = run(mlp_task, f"sqlite:///{tmp_path / 'sa.db'}", n_trials=30, target=0.5, start_temperature=1e-5,
                stop_temperature=2.5e-6, cooling="accepted")  # the default rule, cold enough to reject moves
    trials = sa_trials(study)
    assert len(study.trials) == len(trials) < 30  # cooled down: the study stopped itself
    assert [t.user_attrs["sa.step"] for t in trials] == list(range(len(trials)))
    # the documented rule: cool after each accepted move (the starting point is not a move)
    accepted = 0
    for t in trials:
        assert t.user_attrs["sa.temperature"] == pytest.approx(1e-5 * 0.7 ** max(0, accepted - 1))
        accepted += bool(t.user_attrs["sa.accepted"])
    assert accepted - 1 == 4  # four cooling steps from 1e-5 take the temperature below 2.5e-6
    assert any(not t.user_attrs["sa.accepted"] for t in trials)  # a run with rejections
    assert trials[0].user_attrs["sa.base"] is None and trials[0].user_attrs["sa.accepted"]
    seed = study.user_attrs["slimtune:sa.seed"]
    current = trials[0]
    for t in trials[1:]:
        # every proposal perturbs the current point: the last accepted trial before it
        assert t.user_attrs["sa.base"] == current.number
        cost = -t.values[0] if len(t.values) == 1 else -t.user_attrs["measures"]["accuracy"]
        assert t.user_attrs["sa.cost"] == pytest.approx(cost)
        delta = cost - current.user_attrs["sa.cost"]
        u = float(np.random.default_rng([seed, t.number, 1]).random())
        assert t.user_attrs["sa.accepted"] is metropolis(delta, t.user_attrs["sa.temperature"], u)
        if delta <= 0:
            assert t.user_attrs["sa.accepted"]
        if t.user_attrs["sa.accepted"]:
            current = t
    # the FLOPs target holds on every trial, measured on the compressed model
    assert all(t.user_attrs["measures"]["flops"] <= 0.5 for t in trials)
    # the strategy says why it ended; running again adds nothing
    strat = get_strategy("simulated_annealing", **{**FAST, "start_temperature": 1e-5, "stop_temperature": 2.5e-6, "cooling": "accepted"})
    assert "cooled" in strat.finished(study)
    again = run(mlp_task, f"sqlite:///{tmp_path / 'sa.db'}", n_trials=30, target=0.5, start_temperature=1e-5,
                stop_temperature=2.5e-6, cooling="accepted")
    assert len(again.trials) == len(trials)


@pytest.mark.parametrize("moves", [1, 2])
def test_cooling_every_n_moves(mlp_task: slimtune.Task, moves: int) -> None:
    """``cooling: moves``: Kirkpatrick's several moves per temperature; one per temperature (cooling after
    every move, accepted or not) was the rule before."""
    study = run(mlp_task, "memory", n_trials=30, target=0.5, cooling="moves", moves_per_temperature=moves)
    trials = sa_trials(study)
    assert len(trials) == 4 * moves
    for k, t in enumerate(trials):
        assert t.user_attrs["sa.temperature"] == pytest.approx(0.02 * 0.7 ** (k // moves))


@pytest.mark.parametrize("target", [0.05, 0.005])
def test_terminates_and_meets_high_reduction_targets(target: float) -> None:
    # 95 % fewer MACs is reachable with max_sparsity 0.97; 99.5 % is not: both end, the latter at the bounds
    task = make_mlp_task(hidden=(64, 48))
    study = run(task, "memory", n_trials=20, target=target, space={"sensitivity": False, "max_sparsity": 0.97})
    trials = sa_trials(study)
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)
    graph = trace(task.model, task.example_inputs)
    floor = ResourcePredictor(graph).relative({g.name: 0.97 for g in graph.prunable_groups()})["flops"]
    for t in trials:
        flops = t.user_attrs["measures"]["flops"]
        if target >= floor:
            assert t.user_attrs["sa.target_met"] and flops <= target
            assert flops > 0.5 * target  # rescaled to just meet the target, not far below it
        else:
            assert not t.user_attrs["sa.target_met"] and flops == pytest.approx(floor)
    assert (target >= floor) == (target == 0.05)


def test_resumes_from_storage_with_the_same_state(tmp_path) -> None:
    task = make_mlp_task()
    params = {"target": 0.4, "start_temperature": 0.02, "stop_temperature": 0.002, "cool_down_rate": 0.7, "cooling": "moves"}  # 7 steps
    whole = run(task, f"sqlite:///{tmp_path / 'whole.db'}", n_trials=50, **params)
    url = f"sqlite:///{tmp_path / 'parts.db'}"
    first = run(task, url, n_trials=3, **params)
    schedule = Schedule(0.02, 0.002, 0.7)
    before = annealing_state(first, schedule)
    # a new process (another sampler, another seed) derives the same state from the storage
    reloaded = optuna.load_study(study_name="sa", storage=url)
    space = SearchSpace(trace(task.model, task.example_inputs), SpaceOptions(sensitivity=False))
    other = SimulatedAnnealingSampler(space, schedule, resource=None, target=0.4, seed=999)
    assert other.state(reloaded) == before
    assert before.steps == 3 and before.temperature == pytest.approx(0.02 * 0.7**3)
    resumed = run(task, url, n_trials=50, **params)
    # the interrupted chain continues exactly as the uninterrupted one ran
    assert [t.params for t in sa_trials(resumed)] == [t.params for t in sa_trials(whole)]
    assert [t.user_attrs["sa.accepted"] for t in sa_trials(resumed)] == [t.user_attrs["sa.accepted"] for t in sa_trials(whole)]
    assert len(sa_trials(resumed)) == schedule.steps == 7
    assert annealing_state(resumed, schedule).current == annealing_state(whole, schedule).current


def test_target_from_the_constraints_and_other_resources(mlp_task: slimtune.Task) -> None:
    study = slimtune.search(
        mlp_task, strategy="simulated_annealing", n_trials=2, storage="memory", objectives=["accuracy", "params"],
        constraints=["params <= 0.3"], space={"sensitivity": False}, progress=False, save_models="none", **FAST,
    )  # fmt: skip
    for t in study.trials:
        assert t.user_attrs["measures"]["params"] <= 0.3 and t.user_attrs["sa.resource"] <= 0.3
        assert t.user_attrs["measures"]["params"] == pytest.approx(t.user_attrs["sa.resource"])


def test_latency_target_uses_a_lookup_table_kept_in_the_study(tmp_path) -> None:
    task = make_mlp_task(hidden=(64, 48))
    url = f"sqlite:///{tmp_path / 'lat.db'}"
    study = slimtune.search(
        task, strategy="simulated_annealing", n_trials=2, storage=url, study_name="lat", objectives=["accuracy", "latency"],
        space={"sensitivity": False}, progress=False, save_models="none", resource="latency", target=0.97, **FAST,
    )  # fmt: skip
    for t in study.trials:  # predicted by the table (measured latency of so small a model is mostly noise)
        assert t.user_attrs["sa.target_met"] and t.user_attrs["sa.resource"] <= 0.97
        assert t.user_attrs["measures"]["latency"] is not None
    stored = study.user_attrs["slimtune:latency_table"]
    # another process reads the same table from the study instead of measuring again
    from slimtune.strategies._budget import ResourceModel

    space = SearchSpace(trace(task.model, task.example_inputs), SpaceOptions(sensitivity=False))
    reloaded = ResourceModel(space, "latency", optuna.load_study(study_name="lat", storage=url))
    assert json.loads(json.dumps(reloaded._table.to_dict())) == stored
    sparsities = {name[len("sparsity/") :]: v for name, v in study.trials[1].params.items()}
    assert reloaded.relative(sparsities) == pytest.approx(study.trials[1].user_attrs["sa.resource"])


def test_greedy_start_reads_the_sensitivity_table_per_unit_of_resource() -> None:
    import pandas as pd

    from slimtune.strategies._budget import ResourceModel, scale_to_target

    task = make_mlp_task(hidden=(64, 48))
    graph = trace(task.model, task.example_inputs)
    a, b = [g.name for g in graph.prunable_groups()]
    levels = (0.2, 0.4, 0.6, 0.8)
    table = pd.DataFrame(
        [{"group": a, "level": lv, "drop": 0.02 * lv} for lv in levels]  # cheap
        + [{"group": b, "level": lv, "drop": 0.0 if lv < 0.3 else 0.3} for lv in levels]  # costly beyond 0.2
    )
    space = SearchSpace(graph, SpaceOptions(max_sparsity=0.9, headroom=0.8, tolerance=0.5), sensitivity=table)
    model = ResourceModel(space, "flops")
    starts = {}
    for initial in ("greedy", "sensitivity", "uniform"):
        sampler = SimulatedAnnealingSampler(space, Schedule(0.02, 0.005, 0.7), target=0.5, initial=initial, seed=0)
        study = optuna.create_study(sampler=sampler)
        trial = study.ask({k: d for k, d in space.distributions().items()})
        starts[initial] = {k[len("sparsity/") :]: v for k, v in trial.params.items()}
        assert trial.user_attrs["sa.target_met"] and model.relative(starts[initial]) <= 0.5 + 1e-9
    lower, upper = {g: 0.0 for g in (a, b)}, space.upper
    expected, _, _ = scale_to_target(space.allocate(model.relative, 0.5), lower, upper, model.relative, 0.5)
    assert starts["greedy"] == pytest.approx(expected)
    # the costly group keeps its channels beyond its cheap level, the cheap one pays for the target
    assert starts["greedy"][b] <= 0.2 + 1e-9 < starts["greedy"][a]
    assert starts["uniform"][a] == pytest.approx(starts["uniform"][b])
    assert starts["greedy"] != pytest.approx(starts["sensitivity"])
