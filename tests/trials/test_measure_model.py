"""What a trial measures of a fake-quantized model: weights at their bits, not training state."""

from __future__ import annotations

import torch
from torch import nn

from slimtune.compressors import CompressionPlan, QuantSpec, trace
from slimtune.compressors.measures import ResourcePredictor, count_params, model_size_bytes
from slimtune.compressors.quantization import quantize_model
from slimtune.trials.objective import measure_model


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
