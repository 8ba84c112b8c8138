"""Hardware-friendly widths: ``plan.channel_multiple`` rounds every group's kept channels to a multiple,
and compress, the resource predictor, the latency table and the search space agree on the counts."""

from __future__ import annotations

import math
import random

import pytest
import torch
from torch import nn

from slimtune.compressors import (
    CompressionPlan,
    compress,
    count_flops,
    count_params,
    model_size_bytes,
    trace,
)
from slimtune.compressors.measures import ResourcePredictor
from slimtune.compressors.plan import round_kept
from slimtune.examples.models import REFERENCE_MODELS


def example(name: str) -> tuple[nn.Module, torch.Tensor]:
    """A reference model and inputs (16×16 images where the model allows, to keep this fast)."""
    factory, shape = REFERENCE_MODELS[name]
    if len(shape) == 3 and name != "vgg":
        shape = (shape[0], 16, 16)
    return factory().eval(), torch.randn(1, *shape)


def producer_out_channels(model: nn.Module, graph, group) -> list[int]:
    """Output channels, in the compressed ``model``, of the group's producers that hold all its channels."""
    out = []
    for m in group.members:
        if m.role == "out" and len(m.positions) == group.size:
            layer = model.get_submodule(m.layer)
            out.append(getattr(layer, "out_channels", getattr(layer, "out_features", None)))
    return out


# ------------------------------------------------------------------------------------- arithmetic
@pytest.mark.parametrize(
    ("kept", "size", "multiple", "blocks", "expected"),
    [
        (45, 64, 8, 1, 48),  # nearest multiple, up
        (43, 64, 8, 1, 40),  # nearest multiple, down
        (44, 64, 8, 1, 40),  # a tie goes to the smaller count (removals round half up)
        (1, 64, 8, 1, 8),  # never below one multiple
        (3, 64, 16, 1, 16),
        (64, 64, 8, 1, 64),  # unpruned stays whole
        (63, 64, 16, 1, 64),
        (19, 20, 8, 1, 20),  # 20 is no multiple of 8: the whole group is the candidate above 16
        (17, 20, 8, 1, 16),
        (18, 20, 8, 1, 16),  # tie between 16 and 20
        (20, 20, 8, 1, 20),
        (5, 12, 16, 1, 12),  # a group smaller than the multiple keeps its size
        (8, 16, 16, 1, 16),  # ... and one of exactly the multiple too (no smaller multiple exists)
        (10, 48, 8, 3, 24),  # three blocks: lcm(8, 3) = 24, 8 per block
        (40, 48, 8, 3, 48),
        (16, 32, 8, 4, 16),  # lcm(8, 4) = 8
        (13, 64, None, 1, 13),  # no multiple: unchanged
        (13, 64, 1, 1, 13),
    ],
)
def test_round_kept(kept: int, size: int, multiple: int | None, blocks: int, expected: int) -> None:
    got = round_kept(kept, size, multiple, blocks)
    assert got == expected
    assert got % blocks == 0 and 1 <= got <= size


def test_round_kept_is_monotone_and_idempotent() -> None:
    for size in (7, 16, 20, 24, 64, 100):
        for multiple in (2, 8, 16):
            rounded = [round_kept(k, size, multiple) for k in range(1, size + 1)]
            assert rounded == sorted(rounded)
            assert all(round_kept(r, size, multiple) == r for r in rounded)
            assert all(r % multiple == 0 or r == size for r in rounded)


# ------------------------------------------------------------------------------------- plan
@pytest.fixture(scope="module")
def vgg():
    model, x = example("vgg")
    return model, x, trace(model, x)


def test_plan_counts_and_rounded_sparsities(vgg) -> None:
    _, _, graph = vgg
    rng = random.Random(0)
    plan = CompressionPlan.from_sparsities(
        {g.name: rng.uniform(0.0, 0.95) for g in graph.prunable_groups()}, channel_multiple=16
    )
    rounded = plan.rounded(graph)
    assert rounded.channel_multiple == 16 and rounded.rounded(graph) == rounded  # idempotent
    for g in graph.prunable_groups():
        kept = g.size - plan.n_prune(g)
        assert kept % 16 == 0 and kept >= 16
        assert g.n_prune(rounded.prune[g.name].sparsity) == plan.n_prune(g)  # Group.n_prune agrees
        assert graph.channels_removed(rounded)[g.name] == plan.n_prune(g)
    assert plan.n_prune(graph.groups["fc1"]) == rounded.n_prune(graph.groups["fc1"])
    # nothing to round: the plan itself
    plain = CompressionPlan.from_sparsities({"fc1": 0.3})
    assert plain.rounded(graph) is plain and plain.n_prune(graph.groups["fc1"]) == graph.groups["fc1"].n_prune(0.3)
    assert "channels in multiples of 16" in plan.summary()


# ------------------------------------------------------------------------------------- compress and predict
@pytest.mark.parametrize("name", ["resnet20", "vgg", "mobilenetv2", "resnext", "densenet"])
@pytest.mark.parametrize("multiple", [8, 16])
def test_compress_keeps_multiples_and_the_predictor_counts_them(name: str, multiple: int) -> None:
    model, x = example(name)
    graph = trace(model, x)
    rng = random.Random(f"{name}{multiple}")
    plan = CompressionPlan.from_sparsities(
        {g.name: rng.uniform(0.05, 0.85) for g in graph.prunable_groups()}, channel_multiple=multiple
    )
    small = compress(model, plan, x, graph=graph)
    for g in graph.prunable_groups():
        kept = g.size - plan.n_prune(g)
        step = math.lcm(multiple, g.blocks)
        assert kept % step == 0 or (kept == g.size and (g.size <= step or g.size % step)), (g.name, kept)
        assert all(c == kept for c in producer_out_channels(small, graph, g)), g.name
    predictor = ResourcePredictor(graph, x)
    p = predictor.predict(plan)
    measured = (
        float(count_flops(small, x)["macs"].sum()),
        count_params(small)[0],
        model_size_bytes(small).total_bytes,
    )
    assert (p.flops, p.params, p.size) == measured
    # the rounded plan (what the space stores) is the same model
    assert predictor.predict(plan.rounded(graph)) == p
    # the masked model masks exactly those channels
    masked = compress(model, plan, x, graph=graph, speedup=False)
    with torch.no_grad():
        torch.testing.assert_close(masked(x), small(x), rtol=1e-4, atol=1e-4)


def test_small_groups_stay_whole() -> None:
    """densenet's 12-channel growth groups cannot reach a multiple of 16 below their size: unpruned."""
    model, x = example("densenet")
    graph = trace(model, x)
    plan = CompressionPlan.uniform(graph, 0.5, channel_multiple=16)
    small_groups = [g for g in graph.prunable_groups() if g.size <= 16]
    assert small_groups
    assert all(plan.n_prune(g) == 0 for g in small_groups)
    assert all(plan.rounded(graph).prune[g.name].sparsity == 0.0 for g in small_groups)


def test_training_compressors_keep_multiples() -> None:
    """A training compressor (AGP here) reaches a rounded plan's exact widths."""
    from slimtune.compressors import CompressionPlan, trace
    from slimtune.compressors.training import TrainingContext, run_compressor
    from slimtune.examples.models import vgg_small

    torch.manual_seed(0)
    model, x = vgg_small().eval(), torch.randn(8, 3, 32, 32)
    y = torch.randint(0, 10, (8,))
    graph = trace(model, x[:1])
    plan = CompressionPlan.uniform(graph, 0.4, "l1", channel_multiple=8)
    plan = CompressionPlan.from_dict({**plan.to_dict(), "compressor": "agp", "compressor_params": {"steps": 4}})
    small = run_compressor(model, plan, x[:1], TrainingContext(train_data=[(x, y)], graph=graph))
    widths = [m.out_channels for m in small.modules() if isinstance(m, torch.nn.Conv2d)]
    assert widths and all(w % 8 == 0 for w in widths), widths


def test_strategies_predict_rounded_widths() -> None:
    """A strategy's resource model predicts a ``{group: sparsity}`` mapping as the space's rounded plan
    is built (netadapt and simulated annealing search such mappings)."""
    from slimtune.compressors import CompressionPlan, compress, count_flops, trace
    from slimtune.examples.models import vgg_small
    from slimtune.search_spaces import SearchSpace, SpaceOptions
    from slimtune.strategies._budget import ResourceModel

    torch.manual_seed(0)
    model, x = vgg_small().eval(), torch.randn(1, 3, 32, 32)
    graph = trace(model, x)
    space = SearchSpace(graph, SpaceOptions(sensitivity=False, channel_multiple=8))
    sparsities = {name: 0.37 for name, g in graph.groups.items() if g.prunable}
    predicted = ResourceModel(space, "flops").relative(sparsities)
    small = compress(model, CompressionPlan.from_sparsities(sparsities, channel_multiple=8), x)
    measured = float(count_flops(small, x)["macs"].sum()) / float(count_flops(model, x)["macs"].sum())
    assert predicted == pytest.approx(measured, rel=1e-9)


def test_the_graph_counts_a_plans_multiple() -> None:
    from slimtune.compressors import CompressionPlan, trace
    from slimtune.examples.models import vgg_small

    model, x = vgg_small().eval(), torch.randn(1, 3, 32, 32)
    graph = trace(model, x)
    sparsities = {name: 0.37 for name, g in graph.groups.items() if g.prunable}
    plan = CompressionPlan.from_sparsities(sparsities, channel_multiple=8)
    removed = graph.channels_removed(plan)
    assert removed == {name: plan.n_prune(graph.groups[name]) for name in sparsities}
    assert all((graph.groups[n].size - k) % 8 == 0 for n, k in removed.items() if graph.groups[n].size > 8)
    assert graph.channels_removed(sparsities) != removed  # the bare mapping is not rounded
