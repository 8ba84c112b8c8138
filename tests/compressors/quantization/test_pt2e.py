"""The default int8 path, torchao PT2E (``torch.export`` → ``X86InductorQuantizer`` → ``torch.compile``).

A conv-BN-ReLU net with a Python branch on an input shape (``torch.fx`` cannot trace it; ``torch.export``
specialises it away), exported once per test (compiling costs seconds per batch size).

Tolerances: relative L2 error of the int8 output vs the 8/8-bit fake-quantized model it was exported from
< 5 % (PT2E also quantizes the outputs of ReLU / pooling and uses histogram-calibrated ranges, the
fake-quantized model only the layer inputs over min/max ranges), and vs the float model < 5 %; serialized
state_dict ≤ 0.35× the float model's; ``torch.export.save`` file ≤ 0.6× the float model's (the graph itself
takes ~40 kB).
"""

from __future__ import annotations

import io
import warnings

import pytest
import torch
from torch import nn

from slimtune.compressors.quantization import (
    PT2EInt8Model,
    QuantExportError,
    calibrate,
    export_int8,
    exported_size_bytes,
    freeze,
    load_int8,
    quantize_model,
    save_int8,
)

pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning", "ignore::FutureWarning", "ignore:To copy construct from a tensor:UserWarning"
)


class ShapeBranchNet(nn.Module):
    """Conv-BN-ReLU ×3 and a Linear; pools only large inputs (a branch on the shape: not fx-traceable)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1, stride=2, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.conv3 = nn.Conv2d(64, 64, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(64)
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] > 16:
            x = nn.functional.avg_pool2d(x, 2)
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = torch.relu(self.bn3(self.conv3(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_pt2e_export_of_a_fake_quantized_model() -> None:
    torch.manual_seed(0)
    model = ShapeBranchNet().eval()
    with torch.no_grad():  # non-trivial BN statistics, so the folding is exercised
        for bn in (model.bn1, model.bn2, model.bn3):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
    calib = [torch.randn(16, 3, 32, 32) for _ in range(4)]
    fake = quantize_model(model, {n: (8, 8) for n in ("conv1", "conv2", "conv3", "fc")}, algorithm="ptq")
    fake = freeze(calibrate(fake, calib))

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback, no "ranges not kept" warning
        warnings.filterwarnings("ignore", "To copy construct from a tensor", UserWarning)
        q = export_int8(fake, calib[0][:1], calib)  # the default: PT2E
    assert isinstance(q, PT2EInt8Model)
    scales = {  # the calibrated input range of each wrapped layer is kept: its scale is the fake-quant one's
        round(float(n.args[1]), 6)
        for n in q.program.graph.nodes
        if str(n.target) == "quantized_decomposed.quantize_per_tensor.default"
    }
    for name in ("conv2", "conv3", "fc"):
        lo, hi = fake.get_submodule(name).algorithm.export_range(fake.get_submodule(name))
        assert round((hi - lo) / 255, 6) in scales, name
    ops = {str(n.target) for n in q.program.graph.nodes if n.op == "call_function"}
    assert not any("batch_norm" in op for op in ops), ops  # BN folded into the convs
    assert "quantized_decomposed.quantize_per_tensor.default" in ops

    for batch in (1, 7):  # exported with a dynamic batch dimension
        x = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            out, ref_fake, ref_float = q(x), fake(x), model(x)
        assert out.shape == (batch, 10)
        assert _rel(out, ref_fake) < 0.05 and _rel(out, ref_float) < 0.05

    assert exported_size_bytes(q) <= 0.35 * exported_size_bytes(model)
    int8_file, float_file = io.BytesIO(), io.BytesIO()
    save_int8(q, int8_file, calib[0][:1])
    torch.export.save(torch.export.export(model, (calib[0][:2],)), float_file)
    assert int8_file.getbuffer().nbytes <= 0.6 * float_file.getbuffer().nbytes
    int8_file.seek(0)
    loaded = load_int8(int8_file)
    assert isinstance(loaded, PT2EInt8Model)
    original, reloaded = q.state_dict(), loaded.state_dict()
    assert list(original) == list(reloaded) and all(torch.equal(original[k], reloaded[k]) for k in original)
    assert isinstance(model.bn1, nn.BatchNorm2d)  # the original is untouched


def test_pt2e_layer_subset_and_errors() -> None:
    torch.manual_seed(0)
    model = ShapeBranchNet().eval()
    calib = [torch.randn(8, 3, 16, 16) for _ in range(2)]
    q = export_int8(model, calib[0], calib, layers={"conv2", "fc"})
    assert isinstance(q, PT2EInt8Model)
    graph = q.program.graph
    int8_inputs = [n for n in graph.nodes if str(n.target) == "quantized_decomposed.quantize_per_tensor.default"]
    # the inputs of conv2 and fc are quantized; conv1 and conv3 run in float
    convs = [n for n in graph.nodes if "conv2d" in str(n.target)]
    assert len(convs) == 3
    quantized = [c for c in convs if "dequantize" in str(c.args[0].target)]
    assert len(quantized) == 1 and len(int8_inputs) == 2
    with torch.no_grad():
        assert _rel(q(calib[1]), model(calib[1])) < 0.05

    class Gate(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x if x.sum() > 0 else -x  # data-dependent control flow: torch.export cannot capture it

    with pytest.raises(QuantExportError, match=r"torch\.export .*failed.*method='fx'"):
        export_int8(nn.Sequential(nn.Conv2d(3, 4, 3), Gate()).eval(), calib[0], calib)
