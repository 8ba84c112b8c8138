"""LatencyTable: structure, interpolation arithmetic, exact points, JSON, errors.

Timing accuracy (prediction within 15 % of the pruned model's measured latency) is a benchmark,
not a unit test: here the only timing checks are loose sanity bounds that catch unit or batch-size
mistakes.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from slimtune.compressors import CompressionPlan, compress, trace
from slimtune.compressors.measures import LatencyTable
from slimtune.compressors.measures._lut_parts import Entry, LayerSpec, cell, grid_counts, interp1, line_fit
from slimtune.compressors.plan import round_kept
from slimtune.errors import MeasureError

FAST = {"batch_size": 4, "grid": (0.5, 1.0), "warmup": 1, "repeats": 2, "burst": 1}


class Tiny(nn.Module):
    """conv 3->8, two identical conv 8->8 (same config: measured once), pool, fc."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = torch.relu(self.bn3(self.conv3(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class TinyDW(nn.Module):
    """conv 3->8, depthwise 3x3, pointwise 8->16, grouped 16->16 (4 groups), pool, fc."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.bn_dw = nn.BatchNorm2d(8)
        self.pw = nn.Conv2d(8, 16, 1, bias=False)
        self.bn_pw = nn.BatchNorm2d(16)
        self.gc = nn.Conv2d(16, 16, 3, padding=1, groups=4, bias=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        x = torch.relu(self.bn_dw(self.dw(x)))
        x = torch.relu(self.bn_pw(self.pw(x)))
        x = torch.relu(self.gc(x))
        return self.fc(torch.flatten(self.pool(x), 1))


@pytest.fixture(scope="module")
def tiny() -> tuple[nn.Module, torch.Tensor, object, LatencyTable]:
    torch.manual_seed(0)
    model = Tiny().eval()
    x = torch.randn(1, 3, 8, 8)
    graph = trace(model, x)
    table = LatencyTable.build(graph, x, **FAST)
    return model, x, graph, table


def _frozen(table: LatencyTable) -> LatencyTable:
    """A copy that the tests may extend with exact points without touching the shared fixture."""
    return LatencyTable.from_json(table.to_json(), table.graph)


# ------------------------------------------------------------------------------------------ structure
def test_build_structure(tiny) -> None:
    model, x, graph, table = tiny
    assert list(table.layers) == ["conv1", "conv2", "conv3", "fc"]
    assert table.batch_size == 4 and table.threads == 1
    assert table.dense_ms > 0 and table.gamma > 0
    assert table.remainder_batches == [4.0, 2.0, 1.0]
    # conv2 and conv3 have the same configuration: measured once
    assert table.layers["conv2"].key == table.layers["conv3"].key
    assert len(table.entries) == 3
    # the model input is not prunable: conv1 has one input count; fc's outputs are the model's
    e1 = table.entries[table.layers["conv1"].key]
    assert e1.ins == [3] and e1.outs == [4, 8]
    efc = table.entries[table.layers["fc"].key]
    assert efc.ins == [4, 8] and efc.outs == [10]
    assert all(v > 0 for e in table.entries.values() for row in e.ms for v in row)


def test_predict_unpruned_equals_dense(tiny) -> None:
    model, x, graph, table = tiny
    dense = table.dense_ms
    assert table.predict() == dense
    assert table.predict(CompressionPlan()) == dense
    assert table.predict(graph.channel_counts(CompressionPlan())) == dense
    parts = table.explain()
    assert set(parts) == {"conv1", "conv2", "conv3", "fc", "remainder", "total"}
    assert parts["total"] == pytest.approx(sum(v for k, v in parts.items() if k != "total"))


def test_training_flags_and_threads_restored() -> None:
    model = Tiny().train()
    x = torch.randn(1, 3, 8, 8)
    graph = trace(model, x)
    old = torch.get_num_threads()
    LatencyTable.build(graph, x, **FAST)
    assert model.training and all(m.training for m in model.modules())
    assert torch.get_num_threads() == old


def test_plan_and_counts_agree_and_grid_plans_measure_nothing(tiny) -> None:
    model, x, graph, table = tiny
    table = _frozen(table)
    plan = CompressionPlan.uniform(graph, 0.5)
    counts = graph.channel_counts(plan)
    assert counts["conv2"] == (4, 4) and counts["fc"] == (4, 10)
    assert table.measure(plan) == 0  # every count is on the 0.5 grid
    p = table.predict(plan)
    assert p == pytest.approx(table.predict(counts))
    assert 0 < p < table.dense_ms * 10 and math.isfinite(p)


def test_exact_points_are_measured_once_and_used(tiny) -> None:
    model, x, graph, table = tiny
    table = _frozen(table)
    counts = {"conv1": (3, 5), "conv2": (5, 6), "conv3": (6, 8)}
    interpolated = table.predict(counts, measure_missing=False)
    assert interpolated > 0
    assert table.measure(counts) == 3
    assert table.measure(counts) == 0  # cached
    e = table.entries[table.layers["conv2"].key]
    assert set(e.exact) == {"5,6", "6,8"}  # conv2 and conv3 share the entry
    assert e.lookup(5, 6) == e.exact["5,6"]
    exact = table.explain(counts)
    assert exact["conv2"] == pytest.approx(table.gamma * e.exact["5,6"])
    # exact points survive JSON
    again = LatencyTable.from_json(table.to_json(), graph)
    assert again.predict(counts, measure_missing=False) == pytest.approx(table.predict(counts))


def test_depthwise_and_grouped() -> None:
    torch.manual_seed(0)
    model = TinyDW().eval()
    x = torch.randn(1, 3, 8, 8)
    graph = trace(model, x)
    table = LatencyTable.build(graph, None, **FAST)  # inputs from the traced placeholder shapes
    dw = table.entries[table.layers["dw"].key]
    assert dw.spec.depthwise and dw.ins == dw.outs and all(len(row) == 1 for row in dw.ms)
    gc = table.entries[table.layers["gc"].key]
    assert not gc.spec.depthwise and all(c % 4 == 0 for c in gc.ins + gc.outs)
    assert gc.spec.module(8, 8).groups == 4 and dw.spec.module(4, 4).groups == 4
    plan = CompressionPlan.uniform(graph, 0.5)
    p = table.predict(plan)
    assert 0 < p and math.isfinite(p)
    small = compress(model, plan, x)
    assert small.dw.groups == small.dw.in_channels == graph.channel_counts(plan)["dw"][1]


# ------------------------------------------------------------------------------------------ arithmetic
def test_bilinear_interpolation_is_exact_for_bilinear_costs() -> None:
    def cost(i: float, o: float) -> float:
        return 0.5 + 0.01 * i + 0.02 * o + 0.003 * i * o

    ins, outs = [8, 16, 24, 32], [4, 8, 16]
    spec = LayerSpec("conv", 32, 16, (32, 8, 8), False, (3, 3), (1, 1), (1, 1), (1, 1))
    e = Entry(spec, ins, outs, [[cost(i, o) for o in outs] for i in ins])
    for i, o in [(8, 4), (13, 5), (20, 12), (32, 16), (31, 15), (6, 3), (5, 10), (40, 20)]:
        assert e.lookup(i, o) == pytest.approx(cost(i, o)), (i, o)  # inside and extrapolated
    e.exact["13,5"] = 99.0
    assert e.lookup(13, 5) == 99.0


def test_one_axis_and_depthwise_lookup() -> None:
    spec = LayerSpec("conv", 3, 16, (3, 8, 8), False, (3, 3), (1, 1), (1, 1), (1, 1))
    e = Entry(spec, [3], [8, 16], [[1.0, 2.0]])
    assert e.lookup(3, 12) == pytest.approx(1.5)
    assert e.lookup(6, 16) == pytest.approx(4.0)  # an unmeasured axis scales proportionally
    dspec = LayerSpec("conv", 16, 16, (16, 8, 8), False, (3, 3), (1, 1), (1, 1), (1, 1), 16, depthwise=True)
    d = Entry(dspec, [8, 16], [8, 16], [[1.0], [3.0]])
    assert d.lookup(12, 12) == pytest.approx(2.0)
    assert d.lookup(4, 4) == pytest.approx(0.05)  # extrapolates to 0: floored at 5 % of the smallest value
    assert interp1([1, 2, 4], [1.0, 2.0, 4.0], 3) == pytest.approx(3.0)
    assert interp1([1, 2, 4], [1.0, 2.0, 4.0], 8) == pytest.approx(8.0)
    assert interp1([4, 2, 1], [4.0, 2.0, 1.0], 0.5) == pytest.approx(0.5)
    assert cell([1], 5) == (0, 0, 0.0)


def test_remainder_line_fit() -> None:
    assert line_fit([32, 16, 8, 4], [3.4, 1.8, 1.0, 0.6]) == pytest.approx((0.2, 0.1))
    a, k = line_fit([32, 16, 8], [3.0, 2.0, 4.0])  # noisy, falling: no negative slope
    assert k == 0.0 and a == pytest.approx(3.0)
    a, k = line_fit([32, 16, 8], [3.2, 1.0, 0.2])  # negative intercept: through the origin
    assert a == 0.0 and k > 0


# ------------------------------------------------------------------------------------------ json / errors
def test_json_round_trip_and_save_load(tiny, tmp_path) -> None:
    model, x, graph, table = tiny
    plan = CompressionPlan.uniform(graph, 0.5)
    again = LatencyTable.from_json(table.to_json(), graph)
    assert again == table  # dataclass equality ignores graph and meta
    assert again.predict(plan, measure_missing=False) == pytest.approx(table.predict(plan, measure_missing=False))
    path = tmp_path / "tiny.lut.json"
    table.save(path)
    loaded = LatencyTable.load(path, graph)
    assert loaded.predict(plan, measure_missing=False) == pytest.approx(table.predict(plan, measure_missing=False))
    bare = LatencyTable.load(path)
    with pytest.raises(ValueError, match="needs the model graph"):
        bare.predict(plan)
    assert bare.predict(plan, graph=graph, measure_missing=False) == pytest.approx(
        table.predict(plan, measure_missing=False)
    )


def test_errors(tiny) -> None:
    model, x, graph, table = tiny
    with pytest.raises(ValueError, match="'nope'"):
        table.predict({"nope": (1, 1)})
    with pytest.raises(ValueError, match="conv2"):
        table.predict({"conv2": (0, 4)})
    with pytest.raises(ValueError, match="not a slimtune latency table"):
        LatencyTable.from_json('{"a": 1}')
    with pytest.raises(ValueError, match="not valid JSON"):
        LatencyTable.from_json("{")
    other = trace(nn.Sequential(nn.Linear(4, 4)), torch.randn(1, 4))
    with pytest.raises(ValueError, match="does not match the graph"):
        LatencyTable.from_json(table.to_json(), other)
    with pytest.raises(ValueError, match="grid"):
        LatencyTable.build(graph, x, grid=(0.0, 1.0))
    with pytest.raises(ValueError, match="threads=1"):
        LatencyTable.build(graph, x, threads=2, clock="cpu")


def test_attention_products_are_looked_up_by_kept_heads() -> None:
    from slimtune.examples.zoo import ZOO

    model, x = ZOO["hf_bert"].build()
    graph = trace(model, x)
    table = LatencyTable.build(graph, x, **FAST)
    # the fused attention of each layer is an entry measured at a grid of heads
    assert set(table.products) == set(graph.products) and len(table.products) == 2
    node = next(iter(table.products))
    entry = table.entries[table.products[node].key]
    assert entry.spec.kind == "sdpa" and entry.ins == [2, 4]
    assert 0 < table.products_ms < table.dense_ms
    heads = [g for g in graph.prunable_groups() if g.computes]
    plan = CompressionPlan.from_sparsities({g.name: 0.5 for g in heads})
    assert graph.product_heads(plan) == {n: 2 for n in graph.products}
    parts = table.explain(plan, measure_missing=False)
    assert parts[node] == pytest.approx(entry.lookup(2, 2))
    assert table.predict(plan, measure_missing=False) < table.dense_ms
    # counts can name products too, and they survive JSON
    again = LatencyTable.from_json(table.to_json(), graph)
    assert again.products_ms == table.products_ms
    assert again.predict({node: (2, 2)}, measure_missing=False) == table.predict({node: (2, 2)}, measure_missing=False)


# ------------------------------------------------------------------------------------------ channel multiples
class Net(nn.Module):
    """conv 3->32, conv 32->32, pool, fc: two prunable 32-channel groups."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(32, 32, 3, padding=1, bias=False)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def test_latency_table_predicts_the_rounded_counts() -> None:
    torch.manual_seed(0)
    model, x = Net().eval(), torch.randn(1, 3, 8, 8)
    graph = trace(model, x)
    fast = {"batch_size": 2, "grid": (0.3, 0.6, 1.0), "warmup": 1, "repeats": 1, "burst": 1}
    table = LatencyTable.build(graph, x, channel_multiple=8, **fast)
    assert table.meta["channel_multiple"] == 8
    entry = table.entries[table.layers["conv2"].key]
    assert entry.ins == entry.outs == [8, 16, 32]  # 0.3·32 ≈ 10 → 8, 0.6·32 ≈ 19 → 16
    plan = CompressionPlan.from_sparsities({"conv1": 0.42, "conv2": 0.7}, channel_multiple=8)
    small = compress(model, plan, x, graph=graph)
    counts = {"conv1": (3, small.conv1.out_channels), "conv2": (small.conv2.in_channels, small.conv2.out_channels)}
    counts["fc"] = (small.fc.in_features, 10)
    assert counts == {"conv1": (3, 16), "conv2": (16, 8), "fc": (8, 10)}  # 18.6 → 16 and 9.6 → 8 kept
    assert table.measure(plan) == 0  # the rounded counts are grid points
    assert table.predict(plan, measure_missing=False) == pytest.approx(table.predict(counts, measure_missing=False))
    with pytest.raises(MeasureError, match="channel_multiple must be a positive int"):
        LatencyTable.build(graph, x, channel_multiple=0, **fast)


def test_grid_counts_with_a_channel_multiple() -> None:
    def to(multiple: int):
        return lambda count, size, blocks: round_kept(count, size, multiple, blocks)

    assert grid_counts(64, (0.25, 0.5, 0.75, 1.0), 1) == [16, 32, 48, 64]
    assert grid_counts(20, (0.25, 0.5, 0.75, 1.0), 1, to(8)) == [8, 16, 20]
    assert grid_counts(12, (0.25, 0.5, 1.0), 1, to(16)) == [12]
    assert grid_counts(48, (0.25, 0.5, 1.0), 3, to(8)) == [24, 48]  # grouped: multiples of lcm(3, 8)
