"""Latency tables per runtime: a table measured in ONNX Runtime (or ``torch.compile``) records it, predicts
latency there, is refused or rebuilt for another runtime; the strategies' resource model keeps one table per
runtime in the study, and refuses a bit-width latency budget outside eager PyTorch."""

from __future__ import annotations

import optuna
import pytest
import torch
from torch import nn

from slimtune.compressors import CompressionPlan, trace
from slimtune.compressors.measures import BitsLatencyTable, LatencySetting, LatencyTable
from slimtune.compressors.measures.runtimes import measure_runtime_latency
from slimtune.errors import MeasureError, StrategyError
from slimtune.search_spaces import SearchSpace, SpaceOptions
from slimtune.strategies._budget import ResourceModel

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

# small grid and few rounds: an ONNX Runtime table exports every grid point (about half a second each)
FAST = {"batch_size": 16, "grid": (0.5, 1.0), "warmup": 1, "repeats": 3, "burst": 2}
ORT = {"runtime": "onnxruntime", "batch": 16, "threads": 1}


class ThreeConv(nn.Module):
    """Three 3×3 convolutions (the last two alike: one table entry) and a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.conv3 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        x = torch.relu(self.conv3(x))
        return self.fc(x.mean((2, 3)))


@pytest.fixture(scope="module")
def tables() -> tuple[nn.Module, torch.Tensor, object, LatencyTable, LatencyTable]:
    torch.manual_seed(0)
    model, x = ThreeConv().eval(), torch.randn(1, 3, 8, 8)
    graph = trace(model, x)
    eager = LatencyTable.build(graph, x, **FAST)
    ort = LatencyTable.build(graph, x, runtime="onnxruntime", **FAST)
    return model, x, graph, eager, ort


def test_an_onnxruntime_table_records_its_runtime_and_predicts_there(tables) -> None:
    model, x, graph, eager, ort = tables
    assert eager.runtime == "torch" and eager.call_ms == 0.0
    assert ort.runtime == "onnxruntime" and ort.device == "cpu" and ort.latency == LatencySetting(**ORT)
    # no hooks inside an ONNX session: gamma is 1, the session's cost per call is taken out of the layers
    assert ort.gamma == 1.0 and ort.call_ms > 0.0
    assert [layer.remainder_ms for layer in ort.layers.values()] == [0.0] * 4
    measured, _ = measure_runtime_latency(model, x, "onnxruntime", batch_size=16, repeats=10, min_time_s=0.1)
    assert 0.5 < ort.dense_ms / measured.median_ms < 2.0  # a noisy machine: within 2x
    assert ort.dense_ms != eager.dense_ms and ort.entries != eager.entries
    half = ort.predict(CompressionPlan.uniform(graph, 0.5), measure_missing=False)
    assert 0.0 < half < ort.dense_ms == ort.predict()
    # an exact point off the grid is exported and measured in ONNX Runtime too, and kept
    entry = ort.entries[ort.layers["conv2"].key]
    assert ort.measure({"conv2": (12, 16)}) == 1 and entry.exact["12,16"] >= 0.0
    assert ort.measure({"conv2": (12, 16)}) == 0


def test_the_runtime_round_trips_and_old_tables_load_as_torch(tables) -> None:
    model, x, graph, eager, ort = tables
    data = ort.to_dict()
    assert data["runtime"] == "onnxruntime" and data["call_ms"] == ort.call_ms
    again = LatencyTable.from_json(ort.to_json(), graph, runtime="onnxruntime")
    assert again == ort and again.runtime == "onnxruntime"
    old = {k: v for k, v in eager.to_dict().items() if k not in ("runtime", "call_ms")}
    loaded = LatencyTable.from_dict(old, graph)
    assert loaded.runtime == "torch" and loaded.call_ms == 0.0 and loaded == eager
    assert LatencyTable.from_dict(old, graph, runtime="torch") == eager


def test_a_table_of_another_runtime_is_refused_or_rebuilt(tables, monkeypatch) -> None:
    model, x, graph, eager, ort = tables
    with pytest.raises(MeasureError, match=r"measured in runtime 'torch', not in 'onnxruntime'") as e:
        LatencyTable.from_dict(eager.to_dict(), graph, runtime="onnxruntime")
    assert e.value.field == "runtime"
    with pytest.raises(MeasureError, match=r"measured in runtime 'onnxruntime', not in 'compile'"):
        LatencyTable.from_dict(ort.to_dict()).use_on("cpu", LatencySetting("compile"))
    assert "not in 'torch'" in ort.mismatch("cpu", "torch") and ort.mismatch("cpu", ORT) is None
    built = []

    def build(cls, graph, example_inputs=None, **kwargs):
        built.append(kwargs)
        return ort

    monkeypatch.setattr(LatencyTable, "build", classmethod(build))
    # cached in torch, asked for onnxruntime (and the other way round): rebuilt in the runtime asked
    assert LatencyTable.load_or_build(eager.to_dict(), graph, x, runtime="onnxruntime", **FAST) is ort
    assert built[-1]["runtime"] == "onnxruntime"
    LatencyTable.load_or_build(ort.to_dict(), graph, x, **FAST)
    assert len(built) == 2 and built[-1]["runtime"] is None
    # the same runtime: kept; the setting's batch is the batch asked
    kept = LatencyTable.load_or_build(ort.to_dict(), graph, x, runtime=ORT, grid=(0.5, 1.0))
    assert len(built) == 2 and kept == ort and kept is not ort
    with pytest.raises(MeasureError, match=r"batch_size=8 differs from the batch of runtime 'onnxruntime, batch 16"):
        LatencyTable.load_or_build(ort.to_dict(), graph, x, runtime=ORT, batch_size=8)


def test_a_compiled_table_runs_through_torch_compile() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16, 4)).eval()
    x = torch.randn(1, 3, 4, 4)
    graph = trace(model, x)
    table = LatencyTable.build(graph, x, batch_size=1, grid=(1.0,), warmup=1, repeats=2, burst=1, runtime="compile")
    assert table.runtime == "compile" and table.gamma == 1.0 and table.call_ms > 0.0
    assert table.remainder_batches == [1.0] and table.dense_ms > 0.0
    assert LatencyTable.from_dict(table.to_dict(), graph, runtime="compile") == table


# ------------------------------------------------------------------------------------------ strategies
def _space(graph) -> SearchSpace:
    return SearchSpace(graph, SpaceOptions(sensitivity=False))


def test_the_resource_model_keeps_one_table_per_runtime_in_the_study(tables, monkeypatch) -> None:
    model, x, graph, eager, ort = tables
    built = []

    def build(cls, graph, example_inputs=None, **kwargs):
        built.append(kwargs)
        return LatencyTable.from_dict((ort if kwargs["runtime"] == "onnxruntime" else eager).to_dict(), graph)

    monkeypatch.setattr(LatencyTable, "build", classmethod(build))
    study = optuna.create_study(storage=None)
    study.set_user_attr("latency", ORT)
    resources = ResourceModel(_space(graph), "latency", study)
    assert built == [{"runtime": "onnxruntime", "batch_size": 16, "threads": 1}]
    key = "slimtune:latency_table/onnxruntime,batch=16,threads=1"
    assert set(study.user_attrs) == {"latency", key} and study.user_attrs[key]["runtime"] == "onnxruntime"
    group = next(iter(resources.space.graph.groups))
    assert resources.relative({group: 0.5}) < 1.0
    # another worker reads it from the study
    ResourceModel(_space(graph), "latency", study)
    assert len(built) == 1
    # a study without a latency setting (eager PyTorch at batch 32) keeps its table under the plain name
    plain = optuna.create_study(storage=None)
    ResourceModel(_space(graph), "latency", plain)
    assert built[-1] == {"runtime": "torch", "batch_size": 32, "threads": 1}
    assert set(plain.user_attrs) == {"slimtune:latency_table"}


def test_a_bit_width_latency_budget_needs_the_torch_runtime(tables) -> None:
    model, x, graph, eager, ort = tables
    study = optuna.create_study(storage=None)
    study.set_user_attr("latency", {"runtime": "onnxruntime", "batch": None, "threads": 1})
    with pytest.raises(StrategyError, match=r"eager int8 kernel times.*only available with the torch runtime.*'onnx"):
        ResourceModel(_space(graph), "latency", study, latency="bits")
    table = BitsLatencyTable(4, 1, 1.0, 0.5, {"conv2": 0.4}, {"conv2": 0.2})
    data = table.to_dict()
    assert data["runtime"] == "torch" and BitsLatencyTable.from_dict(data) == table
    assert BitsLatencyTable.from_dict({k: v for k, v in data.items() if k != "runtime"}).runtime == "torch"
    with pytest.raises(MeasureError, match=r"runtime 'onnxruntime'.*eager int8 kernels"):
        BitsLatencyTable.from_dict({**data, "runtime": "onnxruntime"})
