"""Measures: FLOPs and params against hand counts, size formulas, latency mechanics (no timing thresholds)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

from slimtune.compressors.measures import (
    LatencyResult,
    Measures,
    compare_latency,
    count_flops,
    count_params,
    measure,
    measure_latency,
    model_size_bytes,
)

FAST = {"warmup": 1, "repeats": 3, "min_time_s": 0.0}


# ------------------------------------------------------------------------------------------ models
class SmallConvNet(nn.Module):
    """conv(3->8, 3x3, pad 1) - BN - ReLU - maxpool 2 - conv(8->16, 3x3, no bias) - flatten - fc(64->10)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, 16, 3, bias=False)
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.conv2(x), 1))


class Grouped(nn.Module):
    """Depthwise 3x3 conv (8 channels) then a grouped 1x1 conv 8->16 with 4 groups."""

    def __init__(self) -> None:
        super().__init__()
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.gc = nn.Conv2d(8, 16, 1, groups=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gc(self.dw(x))


class Twice(nn.Module):
    """The same Linear(10, 10) applied twice."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(10, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.fc(x)))


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def named_fc(in_f: int = 100, out_f: int = 10) -> nn.Sequential:
    model = nn.Sequential()
    model.add_module("fc", nn.Linear(in_f, out_f))
    return model


# ------------------------------------------------------------------------------------------ flops
def test_flops_mlp_per_sample() -> None:
    df = count_flops(mlp(), torch.randn(4, 64))  # batch 4: counts are per sample
    assert df["layer"].tolist() == ["0", "1", "2"]
    assert df["macs"].tolist() == [64 * 32, 0, 32 * 10]
    assert df["elementwise"].tolist() == [0, 32, 0]  # ReLU: one op per output element
    assert df["params"].tolist() == [64 * 32 + 32, 0, 32 * 10 + 10]
    assert df["in_shape"].iloc[0] == (4, 64) and df["out_shape"].iloc[2] == (4, 10)
    assert int(df["macs"].sum()) == 2368


def test_flops_small_conv_net_with_bn() -> None:
    df = count_flops(SmallConvNet(), torch.randn(2, 3, 8, 8)).set_index("layer")
    # conv1: 8x8x8 = 512 outputs, each 3*3*3 = 27 MACs
    assert df.loc["conv1", "macs"] == 512 * 27 == 13824
    # BN and ReLU: 0 MACs, one element-wise op per output element; maxpool reads 512 inputs
    assert df.loc["bn1", "macs"] == 0 and df.loc["bn1", "elementwise"] == 512
    assert df.loc["relu", "elementwise"] == 512
    assert df.loc["pool", "elementwise"] == 512 and df.loc["pool", "out_shape"] == (2, 8, 4, 4)
    # conv2: 4x4 -> 2x2 (no padding): 16*2*2 = 64 outputs, each 8*3*3 = 72 MACs
    assert df.loc["conv2", "macs"] == 64 * 72 == 4608
    assert df.loc["fc", "macs"] == 64 * 10
    assert int(df["macs"].sum()) == 13824 + 4608 + 640
    # params: conv1 8*27+8, bn 2*8, conv2 16*72 (no bias), fc 64*10+10
    assert df["params"].to_dict() == {"conv1": 224, "bn1": 16, "relu": 0, "pool": 0, "conv2": 1152, "fc": 650}
    assert int(df["params"].sum()) == count_params(SmallConvNet())[0] == 2042


def test_flops_depthwise_and_grouped() -> None:
    df = count_flops(Grouped(), torch.randn(1, 8, 16, 16)).set_index("layer")
    # depthwise: 8*16*16 = 2048 outputs, each (8/8)*3*3 = 9 MACs
    assert df.loc["dw", "macs"] == 2048 * 9 == 18432
    # grouped 1x1: 16*16*16 = 4096 outputs, each (8/4)*1*1 = 2 MACs
    assert df.loc["gc", "macs"] == 4096 * 2 == 8192
    assert df.loc["dw", "params"] == 8 * 1 * 9 + 8
    assert df.loc["gc", "params"] == 16 * 2 * 1 + 16


def test_flops_module_called_twice_counted_twice() -> None:
    df = count_flops(Twice(), torch.randn(3, 10))
    assert len(df) == 1
    row = df.iloc[0]
    assert row["calls"] == 2
    assert row["macs"] == 2 * 10 * 10
    assert row["params"] == 110  # parameters are not doubled


def test_flops_nd_linear_and_conv1d_and_hand_example() -> None:
    df = count_flops(nn.Linear(16, 4), torch.randn(2, 5, 16))
    assert df["macs"].iloc[0] == 5 * 4 * 16  # every one of the 5x4 outputs takes 16 MACs
    df = count_flops(nn.Conv1d(4, 6, 3, padding=1), torch.randn(1, 4, 20))
    assert df["macs"].iloc[0] == 6 * 20 * 4 * 3
    df = count_flops(nn.Conv2d(3, 16, 3, padding=1), torch.randn(1, 3, 32, 32))
    assert df["macs"].iloc[0] == 16 * 32 * 32 * 3 * 3 * 3 == 442368


def test_flops_tuple_inputs_and_sparse_macs() -> None:
    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(8, 4)
            self.b = nn.Linear(6, 4)

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return self.a(x) + self.b(y)

    df = count_flops(Two(), (torch.randn(2, 8), torch.randn(2, 6)))
    assert df["macs"].tolist() == [32, 24]
    fc = prune.l1_unstructured(nn.Linear(10, 10), "weight", amount=0.7)
    df = count_flops(fc, torch.randn(1, 10))
    assert df["macs"].iloc[0] == 100  # dense kernels multiply the zeros too
    assert df["sparse_macs"].iloc[0] == pytest.approx(30)
    assert df["params"].iloc[0] == 110  # weight_orig is not counted twice


def test_flops_restores_training_flags_and_keeps_bn_stats() -> None:
    model = SmallConvNet().train()
    model.bn1.eval()
    before = model.bn1.running_mean.clone()
    count_flops(model, torch.randn(2, 3, 8, 8))
    assert model.training and model.conv1.training and not model.bn1.training
    assert torch.equal(model.bn1.running_mean, before)


# ------------------------------------------------------------------------------------------ size
def test_size_fp32_dense_counts_params_and_buffers() -> None:
    model = SmallConvNet()
    report = model_size_bytes(model)
    params = sum(p.numel() for p in model.parameters())
    # BN buffers: running_mean, running_var (8 floats each) + num_batches_tracked (one int64)
    assert report.total_bytes == 4 * params + 4 * 16 + 8
    assert report.per_layer()["conv2"] == 4 * 1152
    assert set(report.breakdown["format"]) == {"dense"}


def test_size_bits_per_layer() -> None:
    model = named_fc()
    # 8-bit weight: 1000 bytes, + one fp32 scale per output channel, bias stays fp32
    assert model_size_bytes(model, bits={"fc": 8}).total_bytes == 1000 + 10 * 4 + 10 * 4
    assert model_size_bytes(model, bits={"fc": 4}).total_bytes == 500 + 40 + 40
    # asymmetric: one zero point per output channel at the weight's width (10 * 8 bits)
    assert model_size_bytes(model, bits={"fc": 8}, symmetric=False).total_bytes == 1000 + 40 + 10 + 40
    # 3 bits packed: ceil(1000 * 3 / 8) = 375
    assert model_size_bytes(model, bits={"fc": 3}).total_bytes == 375 + 40 + 40
    # float widths carry no scales
    assert model_size_bytes(model, bits={"fc": 16}).total_bytes == 2000 + 40
    assert model_size_bytes(model, bits={"fc": None}).total_bytes == 4040


def test_size_bitmap_sparse_format() -> None:
    model = named_fc()
    with torch.no_grad():
        w = model.fc.weight.view(-1)
        w[100:] = 0  # 90 % zeros, 100 non-zeros
    # bitmap: ceil(1000 / 8) = 125 bytes of mask + 100 * 4 bytes of values
    report = model_size_bytes(model)
    row = report.breakdown.set_index("tensor").loc["fc.weight"]
    assert row["format"] == "bitmap" and row["bytes"] == 125 + 400
    assert report.total_bytes == 125 + 400 + 40
    # with 8-bit weights: 125 + 100 * 1, plus scales
    assert model_size_bytes(model, bits={"fc": 8}).total_bytes == 125 + 100 + 40 + 40
    # sparse storage can be switched off
    assert model_size_bytes(model, sparse_format="dense").total_bytes == 4040
    # a few zeros: the bitmap would cost more, dense is kept
    model2 = named_fc()
    with torch.no_grad():
        model2.fc.weight.view(-1)[:10] = 0
    assert model_size_bytes(model2).total_bytes == 4040
    with pytest.raises(ValueError, match="sparse_format"):
        model_size_bytes(model, sparse_format="csr")  # type: ignore[arg-type]


def test_size_and_params_of_prune_reparametrised_model() -> None:
    model = named_fc()
    prune.l1_unstructured(model.fc, "weight", amount=0.9)
    assert hasattr(model.fc, "weight_orig") and hasattr(model.fc, "weight_mask")
    report = model_size_bytes(model)
    tensors = report.breakdown["tensor"].tolist()
    assert sorted(tensors) == ["fc.bias", "fc.weight"]  # no weight_orig, no weight_mask
    assert report.total_bytes == 125 + 100 * 4 + 40
    assert count_params(model) == (1010, 110)
    assert model_size_bytes(model, bits={"fc": 8}).total_bytes == 125 + 100 + 40 + 40


def test_size_tied_nonpersistent_and_errors() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 4, bias=False)
            self.b = nn.Linear(4, 4, bias=False)
            self.b.weight = self.a.weight
            self.register_buffer("scratch", torch.zeros(100), persistent=False)

    assert model_size_bytes(Tied()).total_bytes == 16 * 4
    assert count_params(Tied()) == (16, count_params(Tied())[1])
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    with pytest.raises(ValueError, match="'fc'"):
        model_size_bytes(model, bits={"fc": 8})
    with pytest.raises(ValueError, match="'1'.*no weight"):
        model_size_bytes(model, bits={"1": 8})
    with pytest.raises(ValueError, match=r"bits\['0'\]"):
        model_size_bytes(model, bits={"0": 0})


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
def test_size_of_real_quantized_linear() -> None:
    model = torch.ao.quantization.quantize_dynamic(named_fc(), {nn.Linear}, dtype=torch.qint8)
    report = model_size_bytes(model)
    row = report.breakdown.set_index("tensor").loc["fc.weight"]
    assert row["kind"] == "quantized" and row["bits"] == 8 and row["bytes"] == 1000
    assert report.total_bytes < 0.3 * 4040
    assert count_params(model)[0] == 1010


# ------------------------------------------------------------------------------------------ latency
class Spy(nn.Module):
    """Records batch size, threads, training flag and inference mode of each call."""

    def __init__(self, tag: str = "", log: list | None = None) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.tag = tag
        self.log = log if log is not None else []
        self.seen: list[tuple[int, int, bool, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((x.shape[0], torch.get_num_threads(), self.training, torch.is_inference_mode_enabled()))
        self.log.append(self.tag)
        return self.fc(x)


def test_latency_result_and_batching() -> None:
    spy = Spy()
    r = measure_latency(spy, torch.randn(3, 8), batch_size=8, **FAST)
    assert isinstance(r, LatencyResult)
    assert r.median_ms > 0 and r.p10_ms <= r.median_ms <= r.p90_ms
    assert len(r.samples_ms) >= 3 and r.batch_size == 8 and r.threads == 1
    assert {s[0] for s in spy.seen} == {8}  # batch built to 8 rows from an example of 3
    assert all(s[3] for s in spy.seen)  # inference mode
    spy.seen.clear()
    measure_latency(spy, torch.randn(3, 8), batch_size=None, **FAST)
    assert {s[0] for s in spy.seen} == {3}
    spy.seen.clear()
    measure_latency(spy, torch.randn(1, 8), batch_size=32, **FAST)
    assert {s[0] for s in spy.seen} == {32}


def test_latency_restores_threads_and_training_flags() -> None:
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        spy = Spy().train()
        spy.fc.eval()  # mixed flags must come back as they were
        measure_latency(spy, torch.randn(1, 8), batch_size=4, threads=1, **FAST)
        assert {s[1] for s in spy.seen} == {1}
        assert {s[2] for s in spy.seen} == {False}
        assert torch.get_num_threads() == 2
        assert spy.training and not spy.fc.training
    finally:
        torch.set_num_threads(old)


def test_latency_restores_state_after_error() -> None:
    class Boom(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("boom")

    old = torch.get_num_threads()
    model = Boom().train()
    with pytest.raises(RuntimeError, match="boom"):
        measure_latency(model, torch.randn(1, 2), threads=1, **FAST)
    assert model.training and torch.get_num_threads() == old


def test_latency_min_time_extends_repeats() -> None:
    r = measure_latency(
        nn.Identity(), torch.randn(1, 2), batch_size=1, warmup=0, repeats=2, min_time_s=0.01, max_repeats=1000
    )
    assert 2 <= len(r.samples_ms) <= 1000


def test_compare_latency_interleaves() -> None:
    log: list[str] = []
    models = {"a": Spy("a", log), "b": Spy("b", log), "c": Spy("c", log)}
    res = compare_latency(models, torch.randn(1, 8), batch_size=2, warmup=1, repeats=4, min_time_s=0)
    assert set(res) == {"a", "b", "c"} and all(r.median_ms > 0 for r in res.values())
    assert all(len(r.samples_ms) == 4 for r in res.values())
    # every round (of 3 calls) runs every model once
    assert len(log) == 3 * (1 + 4)
    for i in range(0, len(log), 3):
        assert sorted(log[i : i + 3]) == ["a", "b", "c"]


def test_latency_argument_errors() -> None:
    with pytest.raises(ValueError, match="threads"):
        measure_latency(nn.Identity(), torch.randn(1, 2), threads=0, **FAST)
    with pytest.raises(ValueError, match="batch_size"):
        measure_latency(nn.Identity(), torch.randn(1, 2), batch_size=0, **FAST)
    with pytest.raises(ValueError, match="at least one"):
        compare_latency({}, torch.randn(1, 2))


# ------------------------------------------------------------------------------------------ measure
def test_measure_all_in_one() -> None:
    model = SmallConvNet()
    x = torch.randn(1, 3, 8, 8)
    m = measure(model, x, latency=False)
    assert isinstance(m, Measures)
    assert m.flops == 13824 + 4608 + 640
    assert m.params == 2042 and m.nonzero_params <= 2042
    assert m.size_bytes == model_size_bytes(model).total_bytes
    assert m.latency_ms is None
    assert len(m.per_layer) == 6
    d = m.to_dict()
    json.dumps(d)
    assert "per_layer" not in d and d["flops"] == m.flops
    m = measure(model, x, batch_size=4, repeats=3, warmup=1, min_time_s=0, bits={"fc": 8})
    assert m.latency_ms is not None and m.latency_ms > 0 and math.isfinite(m.latency_ms)
    assert m.size_bytes == model_size_bytes(model, bits={"fc": 8}).total_bytes
