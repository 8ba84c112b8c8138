"""What a trial measures of a fake-quantized model: weights at their bits, not training state."""

from __future__ import annotations

import torch
from torch import nn

from slimtune.compressors import CompressionPlan, QuantSpec, trace
from slimtune.compressors.measures import ResourcePredictor, count_params, model_size_bytes
from slimtune.compressors.measures import measure_deployable as measure_model
from slimtune.compressors.quantization import quantize_model


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))


def test_quantized_measures_match_the_prediction_and_skip_slb_logits() -> None:
    model, x = _model(), torch.randn(1, 16)
    float_m = measure_model(model, x, latency=False)
    assert float_m["params"] == count_params(model)[0] == 16 * 32 + 32 + 32 * 4 + 4
    layers = {"0": (2, None), "2": (4, None)}
    ste = measure_model(quantize_model(model, layers, algorithm="ste"), x, latency=False)
    plan = CompressionPlan(quantize={"0": QuantSpec(2, None), "2": QuantSpec(4, None)})
    predicted = ResourcePredictor(trace(model, x)).predict(plan)
    assert ste["size"] == predicted.size and ste["params"] == predicted.params == float_m["params"]
    assert ste["flops"] == float_m["flops"]
    assert ste["size"] < float_m["size"] / 3  # 2- and 4-bit weights; fp32 biases, scales, ranges

    slb_model = quantize_model(model, layers, algorithm="slb")
    assert count_params(slb_model)[0] > 4 * float_m["params"]  # one logit per weight and candidate
    slb = measure_model(slb_model, x, latency=False)
    # measured as deployed: the chosen candidates at their bits, no logits
    assert slb["params"] == float_m["params"]
    assert slb["size"] <= model_size_bytes(model, bits={"0": 2, "2": 4}).total_bytes <= ste["size"]
    assert slb["flops"] == float_m["flops"]


class _ConvNet(nn.Module):
    def __init__(self, branch: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32 * 8 * 8, 10)
        self.branch = branch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        if self.branch and x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            x = x * 2
        x = torch.relu(self.conv2(x))
        return self.fc(torch.flatten(x, 1))


def test_latency_of_a_quantized_model_is_measured_on_its_int8_export(monkeypatch) -> None:
    import slimtune.compressors.measures.runtimes as objective
    from slimtune.compressors.quantization import calibrate, freeze

    timed: list[nn.Module] = []
    real = objective.measure_latency

    def spy(model, *args, **kwargs):
        timed.append(model)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(objective, "measure_latency", spy)
    torch.manual_seed(0)
    x, calib = torch.randn(1, 3, 8, 8), [torch.randn(16, 3, 8, 8)]
    model = _ConvNet().eval()
    # conv1 at 4 bits and conv2 at 8 run in int8; fc, with float weights (8-bit activations), stays float
    q = freeze(calibrate(quantize_model(model, {"conv1": (4, 8), "conv2": (8, 8), "fc": (None, 8)}), calib)).eval()
    m = measure_model(q, x, latency=True, latency_repeats=5)
    from slimtune.compressors.quantization import PT2EInt8Model

    assert isinstance(timed[-1], PT2EInt8Model)  # the default int8 path
    graph = timed[-1].program.graph
    ops = [str(n.target) for n in graph.nodes if n.op == "call_function"]
    # conv1 and conv2 take quantized inputs; fc stays float (its input is not quantized)
    assert ops.count("quantized_decomposed.quantize_per_tensor.default") == 2
    linear = next(n for n in graph.nodes if str(n.target) == "aten.linear.default")
    assert "dequantize" not in str(linear.args[0].target) and "dequantize" not in str(linear.args[1].target)
    assert m["latency"] > 0 and "latency_note" not in m
    assert m["size"] == measure_model(q, x, latency=False)["size"]  # the other measures are unchanged

    # a float model, or one with no weights at 8 bits or fewer, is timed as it is
    for plain in (model, freeze(calibrate(quantize_model(model, {"fc": (None, 8)}), calib)).eval()):
        measure_model(plain, x, latency=True, latency_repeats=5)
        assert timed[-1] is plain

    # the export fails (untraceable): the fake-quantized model is timed, and the result says why
    branchy = freeze(calibrate(quantize_model(_ConvNet(branch=True).eval(), {"conv1": (8, 8)}), calib)).eval()
    m = measure_model(branchy, x, latency=True, latency_repeats=5)
    assert timed[-1] is branchy and m["latency"] > 0
    assert "int8 export of conv1 failed" in m["latency_note"] and "torch.export" in m["latency_note"]
