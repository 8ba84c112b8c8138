"""The search space: per-group distributions, bounds from sensitivity, plans, seeds, option errors."""

from __future__ import annotations

import optuna
import pandas as pd
import pytest
import torch
from optuna.distributions import FloatDistribution

from slimtune.compressors import trace
from slimtune.compressors.plan import CompressionPlan, PruneSpec
from slimtune.errors import ConfigError, PlanError
from slimtune.examples.models import mlp, resnet20
from slimtune.search_spaces import SPARSITY_PREFIX, SearchSpace, SpaceOptions, parameter_groups

GROUPS = ["features.0", "features.2", "features.4"]


@pytest.fixture(scope="module")
def graph():
    """An MLP with three prunable groups (``fc`` reaches the output and is not prunable)."""
    return trace(mlp(16, (32, 24, 16), 4), torch.randn(1, 16))


@pytest.fixture(scope="module")
def resnet_graph():
    return trace(resnet20(width=8), torch.randn(1, 3, 16, 16))


def sensitivity_frame(drops: dict[str, list[tuple[float, float]]]) -> pd.DataFrame:
    """A hand-made sensitivity table: ``{group: [(level, drop), ...]}``."""
    rows = [{"group": g, "level": lv, "drop": d} for g, pts in drops.items() for lv, d in pts]
    return pd.DataFrame(rows)


def in_bounds(params: dict[str, float], space: SearchSpace) -> bool:
    dists = space.distributions()
    return set(params) == set(dists) and all(dists[k].low <= v <= dists[k].high for k, v in params.items())


# ---------------------------------------------------------------------- distributions
@pytest.mark.parametrize("which", ["graph", "resnet_graph"])
def test_one_distribution_per_prunable_group(which: str, request: pytest.FixtureRequest) -> None:
    g = request.getfixturevalue(which)
    space = SearchSpace(g, SpaceOptions(max_sparsity=0.8, min_sparsity=0.1))
    names = [grp.name for grp in g.prunable_groups()]
    dists = space.distributions()
    assert sorted(dists) == sorted(SPARSITY_PREFIX + n for n in names)
    assert space.groups == names
    for d in dists.values():
        assert isinstance(d, FloatDistribution)
        assert (d.low, d.high) == (0.1, 0.8)
    assert sorted(parameter_groups(dists)) == sorted(names)


def test_non_prunable_group_gets_no_parameter(graph) -> None:
    space = SearchSpace(graph)
    assert "sparsity/fc" not in space.distributions()
    assert space.groups == GROUPS


def test_groups_option_restricts_and_validates(graph) -> None:
    space = SearchSpace(graph, SpaceOptions(groups=("features.2",)))
    assert list(space.distributions()) == ["sparsity/features.2"]
    with pytest.raises(ValueError, match=r"space\.groups: \['nope'\] are not prunable"):
        SearchSpace(graph, SpaceOptions(groups=("features.0", "nope")))
    with pytest.raises(ValueError, match=r"space\.groups: \['fc'\]"):
        SearchSpace(graph, SpaceOptions(groups=("fc",)))


def test_model_without_prunable_group_is_an_error() -> None:
    g = trace(torch.nn.Sequential(torch.nn.Linear(4, 2)), torch.randn(1, 4))
    with pytest.raises(ValueError, match="no prunable channel group"):
        SearchSpace(g)


# ---------------------------------------------------------------------- bounds from sensitivity
def test_bounds_from_sensitivity_table(graph) -> None:
    table = sensitivity_frame(
        {
            # safe up to 0.3 (drop 0.1 at 0.5 breaks the tolerance); the recovery at 0.7 does not count
            "features.0": [(0.1, 0.0), (0.3, 0.02), (0.5, 0.1), (0.7, 0.0)],
            # sensitive from the first level: safe 0.0 → bound = headroom
            "features.2": [(0.1, 0.2), (0.3, 0.3), (0.5, 0.4), (0.7, 0.5)],
            # robust everywhere: 0.7 + headroom is capped at max_sparsity
            "features.4": [(0.7, 0.01), (0.1, 0.0), (0.5, 0.0), (0.3, 0.0)],  # unsorted on purpose
        }
    )
    opts = SpaceOptions(max_sparsity=0.85, tolerance=0.05, headroom=0.2)
    space = SearchSpace(graph, opts, table)
    assert space.safe == {"features.0": 0.3, "features.2": 0.0, "features.4": 0.7}
    assert space.upper["features.0"] == pytest.approx(0.5)
    assert space.upper["features.2"] == pytest.approx(0.2)
    assert space.upper["features.4"] == pytest.approx(0.85)
    dists = space.distributions()
    assert dists["sparsity/features.0"].high == pytest.approx(0.5)
    assert dists["sparsity/features.2"].high == pytest.approx(0.2)
    assert dists["sparsity/features.4"].high == pytest.approx(0.85)
    assert all(d.low == 0.0 for d in dists.values())
    desc = space.describe().set_index("group")
    assert desc.loc["features.0", "channels"] == 32
    assert desc.loc["features.0", "upper"] == pytest.approx(0.5)


def test_tolerance_and_headroom_move_the_bounds(graph) -> None:
    table = sensitivity_frame({g: [(0.2, 0.01), (0.4, 0.03), (0.6, 0.08)] for g in GROUPS})
    tight = SearchSpace(graph, SpaceOptions(tolerance=0.02, headroom=0.1), table)
    loose = SearchSpace(graph, SpaceOptions(tolerance=0.05, headroom=0.3), table)
    assert all(tight.upper[g] == pytest.approx(0.3) for g in GROUPS)
    assert all(loose.upper[g] == pytest.approx(0.7) for g in GROUPS)


def test_group_missing_from_table_counts_as_sensitive(graph) -> None:
    table = sensitivity_frame({"features.0": [(0.5, 0.0)]})
    space = SearchSpace(graph, SpaceOptions(headroom=0.25), table)
    assert space.safe["features.2"] == 0.0
    assert space.upper["features.2"] == pytest.approx(0.25)
    assert space.upper["features.0"] == pytest.approx(0.75)


def test_upper_bound_stays_above_min_sparsity(graph) -> None:
    table = sensitivity_frame({g: [(0.1, 1.0)] for g in GROUPS})  # everything is sensitive
    space = SearchSpace(graph, SpaceOptions(min_sparsity=0.5, headroom=0.0), table)
    for d in space.distributions().values():
        assert d.low == 0.5 and d.high > d.low


def test_sensitivity_off_ignores_the_table(graph) -> None:
    table = sensitivity_frame({g: [(0.1, 1.0)] for g in GROUPS})
    space = SearchSpace(graph, SpaceOptions(max_sparsity=0.7, sensitivity=False), table)
    assert space.safe == {}
    assert all(space.upper[g] == 0.7 for g in GROUPS)


# ---------------------------------------------------------------------- plans
def test_plan_from_params(graph) -> None:
    space = SearchSpace(graph, SpaceOptions(criterion="l2"))
    plan = space.plan({"sparsity/features.0": 0.5, "sparsity/features.4": 0.25, "kd_weight": 0.3})
    assert isinstance(plan, CompressionPlan)
    assert plan.prune == {"features.0": PruneSpec(0.5, "l2"), "features.4": PruneSpec(0.25, "l2")}
    assert plan.granularity == "channel" and plan.quantize == {}
    plan.validate(graph)  # a valid plan for the model
    # a trial's params over the whole space give one spec per group
    full = space.plan(space.uniform(0.3))
    assert full.sparsities() == {g: 0.3 for g in GROUPS}


def test_plan_unknown_group_names_the_parameter(graph) -> None:
    space = SearchSpace(graph)
    with pytest.raises(PlanError, match="'sparsity/nope'"):
        space.plan({"sparsity/nope": 0.5})


def test_plan_round_trips_through_suggest(graph) -> None:
    space = SearchSpace(graph, SpaceOptions(max_sparsity=0.6))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    for _ in range(5):
        trial = study.ask()
        params = space.suggest(trial)
        assert in_bounds(params, space)
        assert trial.params == params
        assert space.plan(params).sparsities() == {k[len(SPARSITY_PREFIX) :]: v for k, v in params.items()}
        study.tell(trial, 0.0)


# ---------------------------------------------------------------------- seeds
def test_uniform_seed_without_sensitivity(graph) -> None:
    space = SearchSpace(graph, SpaceOptions(max_sparsity=0.8, min_sparsity=0.2))
    seeds = space.seeds()
    assert len(seeds) == 1
    assert seeds[0] == {f"sparsity/{g}": pytest.approx(0.5) for g in GROUPS}
    assert in_bounds(seeds[0], space)


def test_seeds_with_sensitivity_are_within_bounds(graph) -> None:
    table = sensitivity_frame(
        {
            "features.0": [(0.2, 0.0), (0.4, 0.0), (0.6, 0.2)],
            "features.2": [(0.2, 0.3), (0.4, 0.4), (0.6, 0.5)],
            "features.4": [(0.2, 0.0), (0.4, 0.01), (0.6, 0.02)],
        }
    )
    for opts in (
        SpaceOptions(max_sparsity=0.9, headroom=0.1),
        SpaceOptions(max_sparsity=0.5, min_sparsity=0.1, headroom=0.0),
        SpaceOptions(max_sparsity=0.95, min_sparsity=0.3, headroom=0.05),
    ):
        space = SearchSpace(graph, opts, table)
        seeds = space.seeds()
        assert len(seeds) == 2
        for seed in seeds:
            assert in_bounds(seed, space), (opts, seed, space.upper)
        uniform, derived = seeds
        # the uniform seed is one value clipped to each group's bounds
        mid = 0.5 * (opts.min_sparsity + opts.max_sparsity)
        for g in GROUPS:
            assert uniform[f"sparsity/{g}"] == pytest.approx(min(max(mid, opts.min_sparsity), space.upper[g]))
            # the derived seed puts each group at its one-shot-safe level (clipped)
            assert derived[f"sparsity/{g}"] == pytest.approx(min(max(space.safe[g], opts.min_sparsity), space.upper[g]))
    space = SearchSpace(graph, SpaceOptions(max_sparsity=0.9, headroom=0.1), table)
    assert space.seeds()[1] == {"sparsity/features.0": 0.4, "sparsity/features.2": 0.0, "sparsity/features.4": 0.6}


def test_uniform_params(graph) -> None:
    table = sensitivity_frame({g: [(0.1, 0.0), (0.2, 1.0)] for g in GROUPS})
    space = SearchSpace(graph, SpaceOptions(headroom=0.1, min_sparsity=0.05), table)
    assert space.uniform(0.6) == {f"sparsity/{g}": pytest.approx(0.2) for g in GROUPS}  # clipped
    assert space.uniform(0.6, clip=False) == {f"sparsity/{g}": 0.6 for g in GROUPS}
    assert space.uniform(0.0) == {f"sparsity/{g}": 0.05 for g in GROUPS}


# ---------------------------------------------------------------------- options
@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_sparsity": 1.0}, "space.max_sparsity"),
        ({"max_sparsity": 0.0}, "space.max_sparsity"),
        ({"max_sparsity": -0.5}, "space.max_sparsity"),
        ({"min_sparsity": -0.1}, "space.min_sparsity"),
        ({"min_sparsity": 0.9, "max_sparsity": 0.9}, "space.min_sparsity"),
        ({"tolerance": -0.01}, "space.tolerance"),
        ({"headroom": 1.0}, "space.headroom"),
        ({"headroom": -0.1}, "space.headroom"),
        ({"levels": ()}, "space.levels"),
        ({"levels": (0.5, 1.0)}, "space.levels[1]"),
        ({"levels": (0.0, 0.5)}, "space.levels[0]"),
        ({"criterion": "nope"}, "space.criterion"),
    ],
)
def test_option_errors_name_the_option(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError) as info:
        SpaceOptions(**kwargs)
    assert str(info.value).startswith(field + ":")
    with pytest.raises(ValueError) as info:
        SpaceOptions.from_dict(kwargs)
    assert str(info.value).startswith(field + ":")


def test_unknown_criterion_lists_known() -> None:
    with pytest.raises(ValueError, match="known: .*l1"):
        SpaceOptions(criterion="nope")


def test_from_dict_unknown_option() -> None:
    with pytest.raises(
        ValueError, match=r"space.max_sparse: unknown option\(s\) \['max_sparse'\]; did you mean 'max_sparsity'\?"
    ):
        SpaceOptions.from_dict({"max_sparse": 0.5})


def test_from_dict_and_to_dict() -> None:
    opts = SpaceOptions.from_dict({"levels": [0.25, 0.5], "groups": ["a"], "sensitivity": False})
    assert opts.levels == (0.25, 0.5) and opts.groups == ("a",)
    assert SpaceOptions.from_dict(None) == SpaceOptions()
    d = opts.to_dict()
    assert d["levels"] == [0.25, 0.5] and d["groups"] == ["a"] and d["sensitivity"] is False
    assert SpaceOptions.from_dict(d) == opts


def test_bit_width_choices_become_parameters_and_plans(graph) -> None:
    from optuna.distributions import CategoricalDistribution

    space = SearchSpace(graph, SpaceOptions(sensitivity=False, bits_w=[8, 4, 32], bits_a=[8]))
    dists = space.distributions()
    layers = graph.quantizable_layers()
    assert {f"bits_w/{n}" for n in layers} <= set(dists) and {f"bits_a/{n}" for n in layers} <= set(dists)
    assert isinstance(dists[f"bits_w/{layers[0]}"], CategoricalDistribution)
    assert list(dists[f"bits_w/{layers[0]}"].choices) == [4, 8, 32]
    params = space.uniform(0.3)
    assert all(params[f"bits_w/{n}"] == 32 and params[f"bits_a/{n}"] == 8 for n in layers)
    params[f"bits_w/{layers[0]}"] = 4
    plan = space.plan(params)
    assert plan.quantize[layers[0]].bits_w == 4 and plan.quantize[layers[0]].bits_a == 8
    assert plan.quantize[layers[1]].bits_w is None  # 32 means float
    plan.validate(graph)
    for seed in space.seeds():
        assert all(seed[f"bits_w/{n}"] == 32 for n in layers)


def test_bit_width_options_are_checked(graph) -> None:
    with pytest.raises(ValueError, match=r"space.bits_w"):
        SpaceOptions(bits_w=[0, 8])
    with pytest.raises(ValueError, match=r"space.bits_a"):
        SpaceOptions(bits_a=[])
    with pytest.raises(ValueError, match=r"space.quantize_layers: \['nope'\]"):
        SearchSpace(graph, SpaceOptions(sensitivity=False, bits_w=[8], quantize_layers=["nope"]))
    only = SearchSpace(
        graph, SpaceOptions(sensitivity=False, bits_w=[8], quantize_layers=[graph.quantizable_layers()[0]])
    )
    assert [k for k in only.distributions() if k.startswith("bits_w/")] == [f"bits_w/{graph.quantizable_layers()[0]}"]


def test_quant_algorithm_is_fixed_or_searched_and_checked_against_the_bits(graph) -> None:
    from optuna.distributions import CategoricalDistribution

    layer = graph.quantizable_layers()[0]
    fixed = SearchSpace(graph, SpaceOptions(sensitivity=False, bits_w=[2, 4, 32], quant_algorithm="slb"))
    assert "quant/algorithm" not in fixed.distributions()
    assert fixed.plan({f"bits_w/{layer}": 2}).quant_algorithm == "slb"
    assert fixed.plan({f"bits_w/{layer}": 32}).quant_algorithm is None  # nothing quantized: no algorithm
    searched = SearchSpace(graph, SpaceOptions(sensitivity=False, bits_w=[2, 4], quant_algorithm=["slb", "ste", "slb"]))
    dist = searched.distributions()["quant/algorithm"]
    assert isinstance(dist, CategoricalDistribution) and list(dist.choices) == ["slb", "ste"]
    assert searched.plan({f"bits_w/{layer}": 4, "quant/algorithm": "ste"}).quant_algorithm == "ste"
    assert searched.plan({f"bits_w/{layer}": 4}).quant_algorithm == "slb"  # a strategy that does not ask: the first
    with pytest.raises(PlanError, match=r"quant/algorithm.*'bnn'"):
        searched.plan({f"bits_w/{layer}": 4, "quant/algorithm": "bnn"})
    assert SpaceOptions.from_dict(searched.options.to_dict()) == searched.options
    assert searched.options.to_dict()["quant_algorithm"] == ["slb", "ste"]
    with pytest.raises(
        ValueError,
        match=r"space.quant_algorithm: 'slb' quantizes weights to at most 4 bit\(s\) but space.bits_w has \[8\]",
    ):
        SpaceOptions(bits_w=[4, 8, 32], quant_algorithm=["ste", "slb"])
    with pytest.raises(ValueError, match=r"space.quant_algorithm: 'bnn' .* at most 1 bit"):
        SpaceOptions(bits_w=[1, 2], quant_algorithm="bnn")
    with pytest.raises(ValueError, match=r"space.quant_algorithm: unknown algorithm\(s\) \['nope'\]"):
        SpaceOptions(bits_w=[4], quant_algorithm="nope")
    with pytest.raises(ValueError, match=r"space.quant_algorithm: quantizes nothing"):
        SpaceOptions(quant_algorithm="slb")


def bit_frame(drops: dict[str, list[tuple[int, float]]]) -> pd.DataFrame:
    """A hand-made bit-sensitivity table: ``{layer: [(bits, drop), ...]}``."""
    return pd.DataFrame([{"layer": n, "bits_w": b, "drop": d} for n, pts in drops.items() for b, d in pts])


def test_bit_sensitivity_seeds_each_layer_at_its_lowest_safe_bits(graph) -> None:
    layers = graph.quantizable_layers()
    a, b, c = layers[:3]
    table = bit_frame({
        a: [(2, 0.001), (4, 0.0), (8, 0.0)],  # robust: 2 bits is safe
        b: [(2, 0.5), (4, 0.01), (8, 0.0)],  # 4 bits
        c: [(2, 0.0), (4, 0.3), (8, 0.0)],  # 4 bits is over: the noisy 2-bit row does not count
    })  # fmt: skip
    space = SearchSpace(graph, SpaceOptions(tolerance=0.02, bits_w=[2, 4, 8, 32]), bit_sensitivity=table)
    assert space.safe_bits == {a: 2, b: 4, c: 8}
    seeds = space.seeds()
    assert len(seeds) == 2
    assert all(seeds[0][f"bits_w/{n}"] == 32 for n in layers)  # uniform seed: float
    assert {n: seeds[1][f"bits_w/{n}"] for n in (a, b, c)} == {a: 2, b: 4, c: 8}
    assert all(seeds[1][f"bits_w/{n}"] == 32 for n in layers[3:])  # not analysed: widest
    assert all(set(s) == set(space.distributions()) for s in seeds)
    plan = space.plan(seeds[1])
    assert plan.quantize[a].bits_w == 2 and plan.quantize[c].bits_w == 8
    # snapped to the searched choices: with [4, 8] the 2-bit-safe layer gets 4
    snapped = SearchSpace(graph, SpaceOptions(tolerance=0.02, bits_w=[4, 8]), bit_sensitivity=table)
    assert snapped.safe_bits == {a: 4, b: 4, c: 8}
    # a layer unsafe even at its highest analysed bits stays float when 32 is a choice
    unsafe = bit_frame({a: [(4, 0.5), (8, 0.4)]})
    assert SearchSpace(graph, SpaceOptions(tolerance=0.02, bits_w=[4, 8, 32]), bit_sensitivity=unsafe).safe_bits == {
        a: 32
    }
    # sensitivity off: the table is ignored
    off = SearchSpace(graph, SpaceOptions(sensitivity=False, bits_w=[2, 4, 8]), bit_sensitivity=table)
    assert off.safe_bits == {} and len(off.seeds()) == 1


# ---------------------------------------------------------------------- resource-aware allocation
def test_allocate_prunes_where_accuracy_costs_least_per_flop(graph) -> None:
    from slimtune.compressors.measures import ResourcePredictor

    predictor = ResourcePredictor(graph)
    flops = lambda x: predictor.relative(x)["flops"]  # noqa: E731
    table = sensitivity_frame(
        {
            "features.0": [(lv, 0.0) for lv in (0.2, 0.4, 0.6, 0.8)],  # free to prune
            "features.2": [(0.2, 0.05), (0.4, 0.3), (0.6, 0.5), (0.8, 0.7)],  # costly
            "features.4": [(0.2, 0.0), (0.4, 0.01), (0.6, 0.02), (0.8, 0.03)],
        }
    )
    space = SearchSpace(graph, SpaceOptions(max_sparsity=0.9, headroom=0.8, tolerance=0.5), table)
    for target in (0.8, 0.6, 0.45):
        x = space.allocate(flops, target)
        assert set(x) == set(GROUPS)
        assert flops(x) <= target  # meets the target ...
        assert all(space.options.min_sparsity <= x[g] <= space.upper[g] for g in GROUPS)
        # ... each group on a level of the table, the costly group pruned least
        assert all(v == 0.0 or any(abs(v - lv) < 1e-9 for lv in (0.2, 0.4, 0.6, 0.8)) for v in x.values())
        assert x["features.2"] <= min(x["features.0"], x["features.4"])
        # one greedy sequence, stopped at the target: a looser target's allocation prunes no more anywhere
        looser = space.allocate(flops, target + 0.1)
        assert all(looser[g] <= x[g] for g in GROUPS) and flops(looser) <= target + 0.1
    # with equal drops the allocation follows the resource: the group saving more per step goes first
    flat = sensitivity_frame({g: [(lv, 0.0) for lv in (0.2, 0.4)] for g in GROUPS})
    space = SearchSpace(graph, SpaceOptions(max_sparsity=0.9, headroom=0.5), flat)
    weights = {"features.0": 0.1, "features.2": 0.6, "features.4": 0.3}
    toy = lambda x: 1.0 - sum(weights[g] * v for g, v in x.items())  # noqa: E731
    assert space.allocate(toy, 0.85) == {"features.0": 0.0, "features.2": 0.4, "features.4": 0.0}


def test_allocate_reads_drops_as_non_decreasing_and_ends_when_out_of_levels(graph) -> None:
    # features.0 "recovers" at 0.6 (noise): its step to 0.4 still counts as costly
    table = sensitivity_frame(
        {
            "features.0": [(0.2, 0.0), (0.4, 0.3), (0.6, 0.0)],
            "features.2": [(0.2, 0.0), (0.4, 0.05), (0.6, 0.06)],
            "features.4": [(0.2, 0.0), (0.4, 0.05), (0.6, 0.06)],
        }
    )
    space = SearchSpace(graph, SpaceOptions(max_sparsity=0.9, headroom=0.8, tolerance=0.5), table)
    size = lambda x: 1.0 - sum(x.values()) / 3  # noqa: E731
    x = space.allocate(size, 0.55)
    assert x["features.0"] == 0.2 and x["features.2"] == 0.6 and x["features.4"] == 0.6
    # a target beyond every group's last level ends there instead of looping
    assert space.allocate(size, 0.1) == {g: 0.6 for g in GROUPS}
    # a level above a group's upper bound is not used
    tight = SearchSpace(graph, SpaceOptions(max_sparsity=0.5, headroom=0.1, tolerance=0.5), table)
    assert all(v <= tight.upper[g] for g, v in tight.allocate(size, 0.1).items())
    # without a sensitivity table there is nothing to read
    assert SearchSpace(graph, SpaceOptions(sensitivity=False), table).allocate(size, 0.5) is None
    assert SearchSpace(graph).allocate(size, 0.5) is None


# ---------------------------------------------------------------------- hardware-friendly widths
def test_space_plans_carry_the_channel_multiple(graph) -> None:
    space = SearchSpace(graph, SpaceOptions(sensitivity=False, channel_multiple=8))
    params = {space.param_name(g): 0.33 for g in space.groups}
    plan = space.plan(params)
    assert plan.channel_multiple == 8
    for g in space.groups:
        group = graph.groups[g]
        kept = group.size - group.n_prune(plan.prune[g].sparsity)  # the stored sparsities are the rounded ones
        assert kept % 8 == 0 and kept == group.size - plan.n_prune(group)
    assert [graph.groups[g].size - plan.n_prune(graph.groups[g]) for g in space.groups] == [24, 16, 8]
    assert space.plan(space.seeds()[0]).channel_multiple == 8
    assert SpaceOptions.from_dict({"channel_multiple": 8}).channel_multiple == 8
    assert SpaceOptions(channel_multiple=8).to_dict()["channel_multiple"] == 8
    for bad in (0, 2.5, "8", False):
        with pytest.raises(ConfigError, match=r"space.channel_multiple: expected a positive integer") as e:
            SpaceOptions(channel_multiple=bad)
        assert e.value.field == "space.channel_multiple"
