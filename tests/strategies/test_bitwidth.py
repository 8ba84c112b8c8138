"""bitwidth and joint: mixed-precision search within a size or latency budget (HAQ-style repair, most
sensitive layers lowered last), sensitivity priors first, joint plans with sparsity and bits."""

from __future__ import annotations

import optuna
import pandas as pd
import pytest
import torch

import slimtune
from slimtune.compressors import trace
from slimtune.compressors.measures import BitsLatencyTable, ResourcePredictor
from slimtune.examples.digits import digits_cnn
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


def test_joint_with_a_budget_first_tries_the_resource_aware_allocation() -> None:
    from slimtune.strategies._budget import scale_to_target

    task = make_mlp_task(hidden=(64, 48))
    graph = trace(task.model, task.example_inputs)
    a, b = [g.name for g in graph.prunable_groups()]
    table = pd.DataFrame(
        [{"group": a, "level": lv, "drop": 0.01 * lv} for lv in (0.2, 0.4, 0.6, 0.8)]
        + [{"group": b, "level": lv, "drop": 0.0 if lv < 0.3 else 0.4} for lv in (0.2, 0.4, 0.6, 0.8)]
    )
    space = SearchSpace(graph, SpaceOptions(bits_w=(4, 8, 32), headroom=0.8, tolerance=0.5), sensitivity=table)
    sampler = get_strategy("joint", resource="flops", target=0.5).sampler(space, 2, 0, None)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    trials = [study.ask(space.distributions()) for _ in range(4)]
    assert [t.user_attrs.get("joint.prior") for t in trials] == [0, 1, 2, None]
    flops = ResourceModel(space, "flops")
    first = trials[0].params
    assert all(first[k] == 32 for k in first if k.startswith("bits_w/"))  # widest bits
    sp = {k[len("sparsity/") :]: v for k, v in first.items() if k.startswith("sparsity/")}
    expected, _, _ = scale_to_target(space.allocate(flops.relative, 0.5), {a: 0.0, b: 0.0}, space.upper, flops.relative, 0.5)
    assert sp == pytest.approx(expected) and 0.45 < flops.relative(sp) <= 0.5  # rescaled to just meet it
    assert sp[b] <= 0.2 + 1e-9 < sp[a]  # the costly group keeps its channels
    # then the space's seeds, repaired to the budget; without a budget only the seeds
    assert trials[1].params["sparsity/" + a] == pytest.approx(trials[1].params["sparsity/" + b])  # uniform
    plain = optuna.create_study(directions=["maximize", "minimize"], sampler=get_strategy("joint").sampler(space, 2, 0, None))
    assert [plain.ask(space.distributions()).user_attrs.get("joint.prior") for _ in range(3)] == [0, 1, None]


def test_errors_name_the_field() -> None:
    task = make_mlp_task()
    with pytest.raises(ValueError, match=r"space\.bits_w"):
        search(task, "bitwidth", 1, {"sensitivity": False})
    with pytest.raises(ValueError, match=r"strategy\.resource 'flops' must be one of size, latency"):
        get_strategy("bitwidth", resource="flops")
    get_strategy("bitwidth", resource="latency", target=0.5)  # a bit-width latency budget
    with pytest.raises(ValueError, match=r"strategy\.sampler"):
        get_strategy("joint", sampler="annealing")
    with pytest.raises(ValueError, match=r"strategy\.sampler_params"):
        get_strategy("bitwidth", sampler_params={"population_size": 4})


def make_cnn_task() -> slimtune.Task:
    """The digits CNN on random 8×8 images; the metric is the agreement with the float model's outputs."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = digits_cnn().eval()
    x = torch.randn(64, 1, 8, 8, generator=g)
    with torch.no_grad():
        ref = model(x)

    def evaluate(m: torch.nn.Module) -> float:
        with torch.no_grad():
            return float(torch.exp(-(m(x) - ref).square().mean()))

    return slimtune.Task(model, x[:1], evaluate, name="tiny-cnn")


def test_bitwidth_respects_a_latency_constraint_predicted_from_the_measured_int8_table() -> None:
    task = make_cnn_task()
    layers = trace(task.model, task.example_inputs).quantizable_layers()
    probe = BitsLatencyTable.build(task.model, task.example_inputs, layers)
    int8 = probe.relative({n: 8 for n in layers})
    assert int8 < 0.8  # int8 kernels pay on this CNN at batch 32 (×0.4 measured)
    bound = round(0.5 * (1.0 + int8), 3)  # halfway between all-int8 and all-fp32: some layers must go int8
    study = search(
        task, "bitwidth", 4, {"bits_w": [4, 8, 32], "sensitivity": False}, objectives=["accuracy"],
        constraints=[f"latency <= {bound}"],
    )  # fmt: skip
    # the table was measured once and cached in the study, as the channel-pruning table is
    table = BitsLatencyTable.from_dict(study.user_attrs["slimtune:bits_latency_table"])
    assert table.layers == layers and table.relative({n: 8 for n in layers}) < bound < 1.0
    assert [t.user_attrs.get("bitwidth.prior") for t in study.trials[:1]] == [0]
    assert study.trials[0].user_attrs["bitwidth.repaired"]  # every layer at 32 bits, repaired to the budget
    for t in study.trials:
        bits = {k[len("bits_w/") :]: int(b) for k, b in t.params.items()}
        assert set(bits) == set(layers) and min(bits.values()) <= 8
        predicted = table.relative(bits)
        assert t.user_attrs["bitwidth.budget_met"] and predicted <= bound
        assert predicted == pytest.approx(t.user_attrs["bitwidth.resource"])
        assert t.user_attrs["measures"]["latency"] > 0  # measured on the trial's int8 export


def test_a_search_trial_with_slb_ends_with_hard_weights_equal_in_training_and_evaluation(tmp_path) -> None:
    """space.quant_algorithm chooses SLB per trial; the built-in fine-tune anneals its temperature
    and hardens it at the end, so the saved model's training-mode weights are its evaluated ones."""
    from slimtune.compressors.quantization.algorithms.slb import slb_candidates, slb_layers
    from slimtune.trials import load_model

    task = make_mlp_task(finetune_steps=6)
    study = slimtune.search(
        task, strategy="bitwidth", n_trials=3, storage=f"sqlite:///{tmp_path}/slb.db", study_name="slb", progress=False,
        objectives=("accuracy", "size"), save_models="all", seed=0,
        space={"bits_w": [2, 4], "quant_algorithm": ["slb", "ste"], "sensitivity": False},
    )  # fmt: skip
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 3
    for t in done:
        assert t.user_attrs["plan"].get("quant_algorithm") == t.params["quant/algorithm"]
        model = load_model(study, t.number)
        layers = slb_layers(model)
        assert bool(layers) == (t.params["quant/algorithm"] == "slb")
        for w in layers:
            assert float(w.slb_temperature) == 0.0
            trained, evaluated = w.train().quantized_weight().detach(), w.eval().quantized_weight().detach()
            assert torch.equal(trained, evaluated)
            # the hard weights are grid values
            grid = slb_candidates(w)
            assert float((trained.unsqueeze(-1) - grid.unsqueeze(1)).abs().amin(-1).max()) < 1e-6
    assert any(t.params["quant/algorithm"] == "slb" for t in done)
