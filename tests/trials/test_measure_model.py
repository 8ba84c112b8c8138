"""What a trial measures of a fake-quantized model: the deployable model, not training state."""

from __future__ import annotations

import torch
from torch import nn

from slimtune.compressors.measures import count_params, model_size_bytes
from slimtune.compressors.quantization import quantize_model
from slimtune.trials.objective import measure_model


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))


def test_quantized_size_counts_bits_and_scales_only() -> None:
    model, x = _model(), torch.randn(1, 16)
    float_m = measure_model(model, x, latency=False)
    assert float_m["params"] == count_params(model)[0] == 16 * 32 + 32 + 32 * 4 + 4
    layers = {"0": (2, None), "2": (4, None)}
    expected = model_size_bytes(model, bits={"0": 2, "2": 4}).total_bytes
    for algorithm in ("ste", "slb", "dynamic"):
        q = quantize_model(model, layers, algorithm=algorithm)
        m = measure_model(q, x, latency=False)
        # SLB holds one logit per weight and candidate: none of that is in the deployed model
        assert m["params"] == float_m["params"], algorithm
        assert m["size"] == expected, algorithm
        assert m["flops"] == float_m["flops"], algorithm
    assert expected < float_m["size"] / 4  # 2- and 4-bit weights, fp32 biases and scales
    slb = quantize_model(model, layers, algorithm="slb")
    assert count_params(slb)[0] > 4 * float_m["params"]  # what the wrappers would have added
