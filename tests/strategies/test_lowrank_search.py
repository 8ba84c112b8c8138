"""Low-rank factorization in the search: ``rank/<layer>`` parameters, seeds, rank sensitivity, ``lowrank`` and
``joint`` strategies, the spec."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from optuna.trial import TrialState

import slimtune
from slimtune.compressors import CompressionPlan, compress, count_flops, trace
from slimtune.compressors.sensitivity import analyze_rank_sensitivity, min_safe_ranks
from slimtune.errors import ConfigError, StrategyError
from slimtune.examples.models import mlp
from slimtune.search_spaces import SearchSpace, SpaceOptions
from slimtune.search_spaces.space import RANK_PREFIX
from slimtune.trials.spec import Spec


def _task(seed: int = 0) -> slimtune.Task:
    torch.manual_seed(seed)
    model, x = mlp(16, (32, 24), 4).eval(), torch.randn(64, 16)
    ref = model(x).detach()
    return slimtune.Task(model, x[:1], lambda m: -float((m(x).detach() - ref).square().mean()))


def test_space_options_check_the_rank_fields() -> None:
    opts = SpaceOptions(ranks=[1.0, 0.25, 0.5, 0.5])
    assert opts.ranks == (0.25, 0.5, 1.0) and SpaceOptions.from_dict(opts.to_dict()) == opts
    with pytest.raises(ConfigError, match=r"^space\.ranks: .*rank ratios in \(0, 1\]"):
        SpaceOptions(ranks=[0.0, 0.5])
    with pytest.raises(ConfigError, match=r"^space\.rank_method: unknown method 'tuker2'; did you mean 'tucker2'"):
        SpaceOptions(ranks=[0.5], rank_method="tuker2")
    with pytest.raises(ConfigError, match=r"^space\.rank_energy"):
        SpaceOptions(ranks=[0.5], rank_energy=1.5)
    task = _task()
    graph = trace(task.model, task.example_inputs)
    with pytest.raises(ConfigError, match=r"^space\.factorize_layers: \['nope'\] are not factorizable"):
        SearchSpace(graph, SpaceOptions(ranks=[0.5, 1.0], factorize_layers=["nope"]))


def test_rank_parameters_make_factorized_plans() -> None:
    task = _task()
    graph = trace(task.model, task.example_inputs)
    space = SearchSpace(graph, SpaceOptions(ranks=[0.25, 0.5, 1.0], rank_method="svd", sensitivity=False))
    names = [k for k in space.distributions() if k.startswith(RANK_PREFIX)]
    assert names == ["rank/features.0", "rank/features.2", "rank/fc"]
    plan = space.plan({"rank/features.0": 0.25, "rank/features.2": 1.0, "rank/fc": 0.5})
    assert set(plan.factorize) == {"features.0", "fc"}  # 1.0 keeps a layer whole
    assert plan.factorize["features.0"].rank_ratio == 0.25 and plan.factorize["features.0"].method == "svd"
    small = compress(task.model, plan, task.example_inputs)
    x = task.example_inputs
    assert count_flops(small, x)["macs"].sum() < count_flops(task.model, x)["macs"].sum()
    widest = space.uniform(0.0)
    assert all(widest[n] == 1.0 for n in names)
    energy = space.energy_ranks()
    assert set(energy) == set(names) and all(r in (0.25, 0.5, 1.0) for r in energy.values())
    assert any(all(seed.get(n) == energy[n] for n in names) for seed in space.seeds())


def test_rank_sensitivity_and_safe_ranks() -> None:
    task = _task()
    table = analyze_rank_sensitivity(task.model, task.example_inputs, task.evaluate, ratios=(0.25, 0.5), progress=False)
    assert len(table) == 6 and set(table["rank_ratio"]) == {0.25, 0.5}
    per_layer = table.pivot(index="layer", columns="rank_ratio", values="drop")
    assert (per_layer[0.25] >= per_layer[0.5] - 1e-12).all()  # fewer ranks, at least as much damage
    assert (table["flops_rel"] < 1.0).all()
    safe = min_safe_ranks(table, tolerance=float(per_layer.values.max()) + 1.0)
    assert set(safe.values()) == {0.25}
    graph = trace(task.model, task.example_inputs)
    space = SearchSpace(graph, SpaceOptions(ranks=[0.25, 0.5, 1.0], tolerance=1e9), rank_sensitivity=table)
    assert space.safe_ranks == dict.fromkeys(["features.0", "features.2", "fc"], 0.25)
    assert {f"rank/{n}": 0.25 for n in space.safe_ranks}.items() <= space.seeds()[-1].items()


def test_lowrank_strategy_searches_ranks_alone_or_with_sparsities(tmp_path: Path) -> None:
    task = _task()
    url = f"sqlite:///{tmp_path / 'lr.db'}"
    space = {"ranks": [0.25, 0.5, 1.0]}  # with sensitivity: the rank table seeds too
    study = slimtune.search(task, strategy="lowrank", n_trials=5, storage=url, study_name="ranks", space=space,
                            objectives=["accuracy", "flops"], progress=False, save_models="none")  # fmt: skip
    trials = study.get_trials(deepcopy=False)
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert all(set(k.split("/")[0] for k in t.params) == {"rank"} for t in trials)
    factorized = [t for t in trials if CompressionPlan.from_dict(t.user_attrs["plan"]).factorize]
    assert factorized and all(t.user_attrs["measures"]["flops"] < 1.0 for t in factorized)
    assert trials[0].user_attrs["measures"]["flops"] == 1.0  # the first seed keeps every layer whole
    joint = slimtune.search(task, strategy="lowrank", n_trials=3, storage=url, study_name="ranks+sparsity",
                            space={**space, "sensitivity": False}, prune=True,
                            objectives=["accuracy", "flops"], progress=False, save_models="none")  # fmt: skip
    assert {k.split("/")[0] for t in joint.trials for k in t.params} == {"rank", "sparsity"}
    with pytest.raises(StrategyError, match=r"searches ranks but the space has none: set space\.ranks"):
        slimtune.search(task, strategy="lowrank", n_trials=1, storage="memory", progress=False, save_models="none",
                        space={"sensitivity": False})  # fmt: skip


def test_joint_searches_ranks_with_sparsities_without_bits() -> None:
    task = _task()
    study = slimtune.search(task, strategy="joint", n_trials=3, storage="memory", objectives=["accuracy", "flops"],
                            space={"ranks": [0.5, 1.0], "sensitivity": False}, progress=False,
                            save_models="none")  # fmt: skip
    assert {k.split("/")[0] for k in study.trials[0].params} == {"rank", "sparsity"}
    assert all(t.state == TrialState.COMPLETE for t in study.trials)


def test_the_spec_takes_the_rank_fields() -> None:
    spec = Spec.from_dict(
        {
            "study": "s",
            "task": "slimtune.examples.digits:make_task",
            "n_trials": 2,
            "strategy": {"name": "lowrank", "prune": True},
            "space": {"ranks": [0.25, 0.5, 1.0], "rank_method": "tucker2", "rank_energy": 0.9},
        }
    )
    config = spec.search_config()
    assert config.space.ranks == (0.25, 0.5, 1.0) and config.space.rank_method == "tucker2"
    assert config.strategy == "lowrank" and config.strategy_params == {"prune": True}
