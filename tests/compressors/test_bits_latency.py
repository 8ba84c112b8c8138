"""BitsLatencyTable: per-layer fp32 / int8 times measured on the real int8 export predict a
mixed-precision plan's latency; JSON round trip; errors name the layer."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from slimtune.compressors import CompressionPlan, QuantSpec
from slimtune.compressors.measures import BitsLatencyTable, compare_latency
from slimtune.compressors.measures.latency import make_batch
from slimtune.compressors.quantization import QuantExportError, export_int8
from slimtune.examples.digits import digits_cnn

LAYERS = ["features.0", "features.3", "features.7", "features.10", "fc1", "fc2"]


@pytest.fixture(scope="module")
def cnn() -> tuple[nn.Module, torch.Tensor, BitsLatencyTable]:
    torch.manual_seed(0)
    model, x = digits_cnn(), torch.randn(1, 1, 8, 8)
    return model, x, BitsLatencyTable.build(model, x, batch_size=32, threads=1)


def test_prediction_matches_the_measured_models_at_both_ends_and_a_mixed_export_between(cnn) -> None:
    model, x, table = cnn
    assert table.layers == LAYERS and table.batch_size == 32 and table.threads == 1
    assert all(v > 0 for v in [*table.fp32.values(), *table.int8.values()])
    # the two ends are the measured whole models, exactly
    assert table.predict({}) == pytest.approx(table.fp32_ms, rel=1e-9)
    assert table.predict({n: 32 for n in LAYERS}) == pytest.approx(table.fp32_ms, rel=1e-9)
    assert table.predict({n: 16 for n in LAYERS}) == pytest.approx(table.fp32_ms, rel=1e-9)  # > 8 bits: fp32
    assert table.predict({n: 8 for n in LAYERS}) == pytest.approx(table.int8_ms, rel=1e-9)
    assert table.predict({n: 2 for n in LAYERS}) == table.predict({n: 8 for n in LAYERS})  # no sub-8-bit kernels
    assert table.int8_ms < 0.8 * table.fp32_ms  # int8 kernels pay at batch 32 on this CNN (×0.4 measured)
    # the big 3×3 convolutions run faster in int8
    assert table.int8["features.3"] < table.fp32["features.3"] and table.int8["features.10"] < table.fp32["features.10"]

    # a mixed plan: predicted between the ends and close to the measured mixed export (interleaved with
    # the float model, so machine noise cancels in the ratio)
    subset = ["features.3", "features.10"]
    plan = CompressionPlan(quantize={n: QuantSpec(4 if n == "features.3" else 8, 8) for n in subset})
    assert table.predict(plan) == table.predict({n: 8 for n in subset})
    predicted = table.relative(plan)
    assert table.int8_ms / table.fp32_ms < predicted < 1.0
    batch = make_batch(x, 32)
    mixed = export_int8(model, batch, [(batch,)], layers=subset)
    res = compare_latency(
        {"mixed": mixed, "fp32": model}, x, batch_size=32, threads=1, repeats=30, min_time_s=0.3, clock="cpu"
    )
    measured = res["mixed"].median_ms / res["fp32"].median_ms
    assert predicted == pytest.approx(measured, rel=0.35), (predicted, measured)


def test_to_dict_from_dict_round_trips_through_json(cnn) -> None:
    _, _, table = cnn
    back = BitsLatencyTable.from_dict(json.loads(json.dumps(table.to_dict())))
    assert back == table and back.meta == table.meta
    plan = {"features.0": 4, "fc1": 8, "fc2": 32}
    assert back.predict(plan) == table.predict(plan) and back.relative(plan) == table.relative(plan)
    with pytest.raises(ValueError, match="not a slimtune bit-width latency table"):
        BitsLatencyTable.from_dict({"format": "slimtune.latency_table/1"})
    broken = table.to_dict()
    del broken["int8"]
    with pytest.raises(ValueError, match="malformed"):
        BitsLatencyTable.from_dict(broken)


class _Branchy(nn.Module):
    """Data-dependent control flow in ``forward``: torch.fx cannot trace it, so nothing exports to int8."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(8 * 6 * 6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if x.sum() > 0:
            x = torch.relu(x)
        return self.fc(torch.flatten(x, 1))


def test_errors_name_the_layer(cnn) -> None:
    model, x, table = cnn
    with pytest.raises(QuantExportError, match=r"layer 'features\.99' is not a submodule"):
        BitsLatencyTable.build(model, x, layers=["features.0", "features.99"])
    with pytest.raises(QuantExportError, match=r"layer 'features\.1' is a BatchNorm2d"):
        BitsLatencyTable.build(model, x, layers=["features.1"])
    with pytest.raises(
        QuantExportError, match=r"layer\(s\) 'conv', 'fc' cannot be exported to int8: .*torch\.fx cannot trace"
    ):
        BitsLatencyTable.build(_Branchy().eval(), torch.randn(1, 3, 8, 8), batch_size=4)
    with pytest.raises(ValueError, match=r"'conv9' are not in the table"):
        table.predict({"conv9": 8})
