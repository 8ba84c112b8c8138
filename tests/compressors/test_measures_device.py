"""Measures on the model's device: peak memory, the device latency and latency tables record, tables
refused or rebuilt for another device, and no tensor created off the model's device (checked on the
CPU with ``stray_tensors_on_meta``; these machines have no GPU)."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from slimtune import devices
from slimtune.compressors import CompressionPlan, trace
from slimtune.compressors.measures import (
    BitsLatencyTable,
    LatencyTable,
    MemoryResult,
    ResourcePredictor,
    compare_latency,
    count_flops,
    count_params,
    measure,
    measure_deployable,
    measure_latency,
    measure_memory,
    model_size_bytes,
)
from slimtune.errors import MeasureError

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _devices import stray_tensors_on_meta  # noqa: E402

FAST = {"warmup": 1, "repeats": 2, "min_time_s": 0.0}
LUT_FAST = {"batch_size": 4, "grid": (0.5, 1.0), "warmup": 1, "repeats": 1, "burst": 1}


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1, bias=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.fc(torch.flatten(self.pool(x), 1))


class KeepAll(nn.Module):
    """A chain of Linear layers that keeps every activation and stacks them: nothing is freed."""

    def __init__(self, depth: int, width: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        for layer in self.layers:
            x = layer(x)
            outs.append(x)
        return torch.stack(outs)


def _weights(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


# ------------------------------------------------------------------------------------------ memory
def test_memory_grows_with_batch_size_and_holds_the_weights() -> None:
    torch.manual_seed(0)
    model, x = ConvNet().train(), torch.randn(1, 3, 16, 16)
    results = [measure_memory(model, x, batch_size=b) for b in (1, 8, 32)]
    assert model.training and model.bn1.training  # flags restored
    for r, b in zip(results, (1, 8, 32)):
        assert isinstance(r, MemoryResult) and r.device == "cpu" and r.batch_size == b
        assert r.weights_bytes == _weights(model)  # BN running stats included
        assert r.inputs_bytes == b * 3 * 16 * 16 * 4
        assert r.peak_bytes == r.weights_bytes + r.inputs_bytes + r.activations_bytes >= r.weights_bytes
    peaks = [r.peak_bytes for r in results]
    assert peaks[0] < peaks[1] < peaks[2]
    # every activation scales with the batch: at least the two 16-channel maps of conv2 at batch 32
    assert results[2].activations_bytes >= 2 * 32 * 16 * 16 * 16 * 4
    assert results[2].activations_bytes == pytest.approx(32 * results[0].activations_bytes, rel=0.05)


def test_memory_frees_intermediates_and_counts_kept_ones() -> None:
    depth, width, batch = 20, 256, 32
    act = batch * width * 4
    chain = nn.Sequential(*[nn.Linear(width, width) for _ in range(depth)])
    r = measure_memory(chain, torch.randn(1, width), batch_size=batch)
    # each layer's input is freed once the next one has run: two activations at a time, not twenty
    assert act <= r.activations_bytes <= 3 * act
    assert r.peak_bytes < r.weights_bytes + r.inputs_bytes + depth * act / 4
    kept = measure_memory(KeepAll(depth, width), torch.randn(1, width), batch_size=batch)
    # the same layers keeping every activation, plus the stacked copy of them all
    assert kept.activations_bytes >= 2 * depth * act
    assert kept.weights_bytes == r.weights_bytes


def test_memory_counts_tied_weights_once() -> None:
    emb = nn.Embedding(100, 32)
    head = nn.Linear(32, 100, bias=False)
    head.weight = emb.weight
    model = nn.Sequential(emb, head)
    r = measure_memory(model, torch.randint(0, 100, (1, 8)), batch_size=4)
    assert r.weights_bytes == 100 * 32 * 4 and r.inputs_bytes == 4 * 8 * 8
    assert r.activations_bytes >= 4 * 8 * 100 * 4  # the logits
    assert r.to_dict()["device"] == "cpu"


# ------------------------------------------------------------------------------------------ latency
def test_latency_records_its_device_and_refuses_models_on_different_devices() -> None:
    r = measure_latency(nn.Linear(8, 8), torch.randn(1, 8), batch_size=4, **FAST)
    assert r.device == "cpu"
    # a model without parameters runs where its inputs are
    assert measure_latency(nn.ReLU(), torch.randn(1, 8), batch_size=2, **FAST).device == "cpu"
    elsewhere = nn.Linear(8, 8, device="meta")
    with pytest.raises(MeasureError, match=r"different devices \('cpu' on cpu, 'other' on meta\)"):
        compare_latency({"cpu": nn.Linear(8, 8), "other": elsewhere}, torch.randn(1, 8), **FAST)
    split = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8, device="meta"))
    with pytest.raises(MeasureError, match=r"'model' has parameters or buffers on several devices \(cpu, meta\)"):
        measure_latency(split, torch.randn(1, 8), **FAST)
    with pytest.raises(MeasureError, match=r"clock='cpu'.*on meta: use clock='wall'"):
        measure_latency(elsewhere, torch.randn(1, 8), clock="cpu", **FAST)


# ------------------------------------------------------------------------------------------ LUT
@pytest.fixture(scope="module")
def lut() -> tuple[nn.Module, torch.Tensor, object, LatencyTable]:
    torch.manual_seed(0)
    model, x = ConvNet().eval(), torch.randn(1, 3, 8, 8)
    graph = trace(model, x)
    return model, x, graph, LatencyTable.build(graph, x, **LUT_FAST)


def test_lut_records_its_device_and_old_tables_load_as_cpu(lut) -> None:
    model, x, graph, table = lut
    assert table.device == "cpu" and table.hardware == devices.hardware("cpu")
    data = table.to_dict()
    assert data["device"] == "cpu" and data["hardware"] == table.hardware
    old = {k: v for k, v in data.items() if k not in ("device", "hardware")}
    again = LatencyTable.from_dict(old, graph)
    assert again.device == "cpu" and again.hardware == "" and again == table
    plan = CompressionPlan.uniform(graph, 0.5)
    assert again.predict(plan, measure_missing=False) == pytest.approx(table.predict(plan, measure_missing=False))


def test_lut_refuses_or_rebuilds_for_another_device(lut, monkeypatch) -> None:
    model, x, graph, table = lut
    on_gpu = {**table.to_dict(), "device": "cuda:0", "hardware": "NVIDIA H100 80GB HBM3"}
    # the graph's model is on the CPU: a table measured on a GPU is refused, naming both devices
    with pytest.raises(MeasureError, match=r"measured on cuda:0 \(NVIDIA H100 80GB HBM3\), not on cpu"):
        LatencyTable.from_dict(on_gpu, graph)
    with pytest.raises(MeasureError, match=r"measured on cuda:0 .*not on cpu"):
        LatencyTable.from_dict(on_gpu, device="cpu")
    with pytest.raises(MeasureError, match=r"measured on cpu .*not on cuda:1"):
        LatencyTable.from_dict(table.to_dict()).use_on("cuda:1")
    # without a graph or device it loads as it was measured, and predicts on its grid ...
    bare = LatencyTable.from_dict(on_gpu)
    assert bare.device == "cuda:0" and bare.predict(graph=graph, measure_missing=False) == table.dense_ms
    # ... but cannot measure exact points on a GPU this machine lacks
    if not torch.cuda.is_available():
        with pytest.raises(MeasureError, match=r"measured on cuda:0 .*this machine lacks"):
            bare.predict({"conv2": (5, 16)})
    # load_or_build rebuilds it on the model's device, and keeps a table that holds
    rebuilt = LatencyTable.load_or_build(on_gpu, graph, x, **LUT_FAST)
    assert rebuilt.device == "cpu" and rebuilt is not table

    def no_build(*args, **kwargs):
        raise AssertionError("the cached table holds: nothing to build")

    monkeypatch.setattr(LatencyTable, "build", no_build)
    kept = LatencyTable.load_or_build(table.to_dict(), graph, x, **LUT_FAST)
    assert kept == table and kept.device == "cpu"
    with pytest.raises(AssertionError, match="nothing to build"):  # another batch size: rebuilt
        LatencyTable.load_or_build(table.to_dict(), graph, x, **{**LUT_FAST, "batch_size": 8})


def test_bits_table_is_measured_on_the_cpu() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10)).eval()
    table = BitsLatencyTable.build(model, torch.randn(1, 3, 8, 8), batch_size=4, repeats=2, burst=1)
    assert table.device == "cpu" and table.meta["hardware"] == devices.hardware("cpu")
    data = table.to_dict()
    assert data["device"] == "cpu"
    old = {k: v for k, v in data.items() if k != "device"}
    assert BitsLatencyTable.from_dict(old).device == "cpu"
    with pytest.raises(MeasureError, match=r"measured on 'cuda:0': int8 kernels run on the CPU only"):
        BitsLatencyTable.from_dict({**data, "device": "cuda:0"})


# ------------------------------------------------------------------------------------------ deployable
def test_deployable_reports_latency_device_and_memory(monkeypatch) -> None:
    import slimtune.compressors.measures.runtimes as runtimes
    from slimtune.compressors.quantization import calibrate, freeze, quantize_model

    torch.manual_seed(0)
    model, x = ConvNet().eval(), torch.randn(1, 3, 8, 8)
    m = measure_deployable(model, x, latency=True, latency_repeats=2, memory=True, memory_batch=8)
    assert m["latency_device"] == "cpu" and m["latency"] > 0 and "latency_note" not in m
    assert m["memory"] == measure_memory(model, x, batch_size=8).peak_bytes > m["size"]
    plain = measure_deployable(model, x, latency=False)
    assert plain["latency"] is None and plain["latency_device"] is None and plain["memory"] is None

    # a quantized model on a GPU: its int8 export is timed on the CPU, and the result says so
    q = freeze(calibrate(quantize_model(model, {"conv1": (8, 8), "conv2": (8, 8)}), [torch.randn(8, 3, 8, 8)]))
    on_gpu = types.SimpleNamespace(model_device=lambda m: torch.device("cuda", 0), move=devices.move)
    monkeypatch.setattr(runtimes, "devices", on_gpu)
    m = measure_deployable(q.eval(), x, latency=True, latency_repeats=2)
    assert m["latency_device"] == "cpu"
    assert "timed on the CPU" in m["latency_note"] and "on cuda:0" in m["latency_note"]
    assert "conv1, conv2" in m["latency_note"]


# ------------------------------------------------------------------------------------------ strays
def test_no_stray_tensors(lut) -> None:
    from slimtune.compressors.quantization import calibrate, freeze, quantize_model

    torch.manual_seed(0)
    model, x, graph, _ = lut
    q = freeze(calibrate(quantize_model(model, {"conv2": (8, 8)}), [torch.randn(8, 3, 8, 8)])).eval()
    int8 = nn.quantized.Linear(16, 4)
    with stray_tensors_on_meta() as strays:
        assert count_flops(model, x)["macs"].sum() > 0
        assert model_size_bytes(model).total_bytes > 0 and count_params(model)[0] > 0
        assert model_size_bytes(int8).total_bytes > 0  # a real quantized layer's output qparams
        predictor = ResourcePredictor(graph)
        assert predictor.predict(CompressionPlan.uniform(graph, 0.5)).flops < predictor.dense.flops
        assert measure_latency(model, x, batch_size=4, **FAST).device == "cpu"
        table = LatencyTable.build(graph, None, **LUT_FAST)  # inputs from the graph
        assert table.predict({"conv2": (5, 11)}) > 0  # measures an exact point
        assert table.predict(CompressionPlan.uniform(graph, 0.5)) > 0
        assert measure_memory(model, x, batch_size=4).peak_bytes > 0
        assert measure(model, x, batch_size=4, memory=True, repeats=2, warmup=1, min_time_s=0).memory_bytes > 0
        assert measure_deployable(q, x, latency=True, latency_batch=4, latency_repeats=2, memory=True)["memory"] > 0
    assert not strays, strays
