"""bitwidth and joint: mixed-precision search within a size budget (HAQ-style repair, most
sensitive layers lowered last), sensitivity priors first, joint plans with sparsity and bits."""

from __future__ import annotations

import optuna
import pandas as pd
import pytest

import slimtune
from slimtune.compressors import trace
from slimtune.compressors.measures import ResourcePredictor
from slimtune.search_spaces import SearchSpace, SpaceOptions
from slimtune.strategies import get_strategy
from slimtune.strategies._budget import ResourceModel
from slimtune.strategies._repair import BudgetRepairSampler

from _strategy_tasks import make_mlp_task


def search(task: slimtune.Task, strategy: str, n_trials: int, space: dict, **kwargs) -> optuna.Study:
    return slimtune.search(task, strategy=strategy, n_trials=n_trials, storage="memory", progress=False, save_models="none",
                           space=space, **kwargs)  # fmt: skip


def test_bitwidth_respects_a_size_constraint_and_starts_from_the_sensitivity_priors() -> None:
    task = make_mlp_task()
    study = search(
        task, "bitwidth", 6, {"bits_w": [2, 4, 8, 32], "levels": [0.5]}, objectives=["accuracy"], constraints=["size <= 0.2"],
    )  # fmt: skip
    space = study.user_attrs["space"]
    safe = space["safe_bits"]
    assert safe  # the runner computed the bit sensitivity table; the space holds each layer's safe width
    trials = study.trials
    assert [t.user_attrs.get("bitwidth.prior") for t in trials[:2]] == [0, 1]
    for t in trials:
        m = t.user_attrs["measures"]
        assert m["size"] <= 0.2 and t.user_attrs["bitwidth.budget_met"]
        assert m["size"] == pytest.approx(t.user_attrs["bitwidth.resource"])  # predicted exactly
        assert m["flops"] == 1.0 and not t.user_attrs["plan"]["prune"]  # bit-widths only: nothing pruned
        assert set(t.params) == {f"bits_w/{layer}" for layer in space["quantize_layers"]}
    # prior 0 is each layer at its safe width (lowered only where the budget demands),
    # prior 1 every layer at 32 bits, repaired down to the budget
    first = {k[len("bits_w/") :]: b for k, b in trials[0].params.items()}
    if trials[0].user_attrs["bitwidth.repaired"]:
        assert all(first[layer] <= b for layer, b in safe.items())
    else:
        assert first == safe
    assert trials[1].user_attrs["bitwidth.repaired"] and max(trials[1].params.values()) < 32


def test_repair_lowers_the_least_sensitive_layer_first() -> None:
    task = make_mlp_task()
    graph = trace(task.model, task.example_inputs)
    layers = graph.quantizable_layers()
    drops = pd.DataFrame(
        [{"layer": layer, "bits_w": b, "drop": (0.5 if layer == "features.2" else 0.0) * (8 - b) / 6} for layer in layers for b in (2, 4, 8)]
    )
    space = SearchSpace(graph, SpaceOptions(bits_w=(2, 4, 8, 32)), bit_sensitivity=drops)
    model = ResourceModel(space, "size")
    names = [k for k in space.distributions() if k.startswith("bits_w/")]
    sampler = BudgetRepairSampler(get_strategy("random").sampler(space, 1, 0, None), space, names, "bitwidth", "size", 0.3, ("size",))
    widest = {k: 32 for k in names}
    x, r, repaired, met = sampler.repair(dict(widest), model, 0.3)
    assert repaired and met and r <= 0.3
    assert r == pytest.approx(ResourcePredictor(graph).relative(space.plan(x))["size"])
    # the sensitive layer keeps the most bits; the insensitive ones went down first
    assert x["bits_w/features.2"] == max(x.values())
    assert min(x.values()) < x["bits_w/features.2"]
    # within budget: left alone
    y, _, repaired, met = sampler.repair({k: 2 for k in names}, model, 0.3)
    assert not repaired and met and y == {k: 2 for k in names}
    # an unreachable budget lowers everything to the narrowest width and says so
    z, _, _, met = sampler.repair(dict(widest), model, 0.001)
    assert not met and set(z.values()) == {2}


def test_joint_plans_hold_sparsity_and_bits_within_the_budget() -> None:
    task = make_mlp_task()
    study = search(
        task, "joint", 6, {"bits_w": [4, 8, 32], "sensitivity": False}, objectives=["accuracy", "size"],
        constraints=["size <= 0.15"],
    )  # fmt: skip
    pruned_and_quantized = 0
    for t in study.trials:
        plan = t.user_attrs["plan"]
        assert {k.split("/")[0] for k in t.params} == {"sparsity", "bits_w"}
        m = t.user_attrs["measures"]
        assert m["size"] <= 0.15 and m["size"] == pytest.approx(t.user_attrs["joint.resource"])
        if any(p["sparsity"] > 0 for p in plan["prune"].values()) and plan["quantize"]:
            pruned_and_quantized += 1
    assert pruned_and_quantized >= len(study.trials) // 2  # most trials prune and quantize
    assert [t.user_attrs.get("joint.prior") for t in study.trials[:1]] == [0]


def test_errors_name_the_field() -> None:
    task = make_mlp_task()
    with pytest.raises(ValueError, match=r"space\.bits_w"):
        search(task, "bitwidth", 1, {"sensitivity": False})
    with pytest.raises(ValueError, match=r"strategy\.resource"):
        get_strategy("bitwidth", resource="latency")
    with pytest.raises(ValueError, match=r"strategy\.sampler"):
        get_strategy("joint", sampler="annealing")
    with pytest.raises(ValueError, match=r"strategy\.sampler_params"):
        get_strategy("bitwidth", sampler_params={"population_size": 4})
