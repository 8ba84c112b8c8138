"""``dynamic`` PTQ: weight-only fake quantization of Linear and recurrent layers, and its real int8 export.

Tolerances: relative L2 error of the model output < 2 % at 8 bits (fake-quantized vs float, int8 export vs
fake-quantized and vs float: the int8 kernels also quantize each batch's activations); the exported
weights equal the fake-quantized ones exactly (both use the per-row ±127 grid); TorchScript file ≤ 0.5× the
float model's.
"""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from slimtune.compressors.quantization import (
    QuantExportError,
    QuantizationError,
    export_int8,
    exported_size_bytes,
    load_int8,
    quant_wrappers,
    quantize_model,
    save_int8,
    weight_bits,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")


class Tagger(nn.Module):
    """A small sequence model: LSTM → GRU → Linear on the last step."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(16, 64, num_layers=2, batch_first=True)
        self.gru = nn.GRU(64, 64, batch_first=True)
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(x)
        h, _ = self.gru(h)
        return self.fc(h[:, -1])


PLAN = {"lstm": (8, None), "gru": (8, None), "fc": (8, None)}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _on_grid(w: torch.Tensor, bits: int) -> bool:
    qmax = 2 ** (bits - 1) - 1
    levels = w / (w.abs().amax(dim=1, keepdim=True) / qmax)
    return bool(torch.allclose(levels, levels.round(), atol=1e-3))


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return Tagger().eval()


def test_fake_quantized_weights_lie_on_the_per_row_grid_and_output_stays_close(model) -> None:
    x = torch.randn(8, 12, 16)
    q = quantize_model(model, PLAN, algorithm="dynamic").eval()
    wrappers = quant_wrappers(q)
    assert set(wrappers) == {"lstm", "gru", "fc"} and wrappers["lstm"].recurrent
    weights = wrappers["lstm"].quantized_weights()
    assert set(weights) == {"weight_ih_l0", "weight_hh_l0", "weight_ih_l1", "weight_hh_l1"}
    for name, w in {**weights, **wrappers["gru"].quantized_weights(), "fc": wrappers["fc"].quantized_weight()}.items():
        assert _on_grid(w.detach(), 8), name
    # the original LSTM weights are untouched and the forward pass uses the quantized ones
    assert not _on_grid(q.lstm.layer.weight_ih_l0.detach(), 8)
    with torch.no_grad():
        ref, out = model(x), q(x)
    assert 0 < _rel(out, ref) < 0.02
    # fewer bits, larger error; weight-only, so no calibration was needed
    q4 = quantize_model(model, {k: (4, None) for k in PLAN}, algorithm="dynamic").eval()
    with torch.no_grad():
        assert _rel(q4(x), ref) > _rel(out, ref)
    assert _on_grid(quant_wrappers(q4)["gru"].quantized_weights()["weight_hh_l0"].detach(), 4)
    # straight-through gradients reach the recurrent weights (QAT works on them too)
    train = quantize_model(model, PLAN, algorithm="ste")
    train(x).sum().backward()
    assert train.lstm.layer.weight_hh_l1.grad is not None
    assert weight_bits(q) == {"fc.layer": 8}  # recurrent layers are left to exported_size_bytes


def test_dynamic_int8_export_is_close_smaller_and_carries_the_weights_exactly(model) -> None:
    q = quantize_model(model, PLAN, algorithm="dynamic").eval()
    x = torch.randn(8, 12, 16)
    int8 = export_int8(q, x[:1])  # mode "auto" → "dynamic" (every wrapper uses 'dynamic'); no calibration
    kinds = {name: type(m).__module__ for name, m in int8.named_children()}
    assert all(k.startswith("torch.ao.nn.quantized.dynamic") for k in kinds.values()), kinds
    with torch.no_grad():
        out, fake, ref = int8(x), q(x), model(x)
    assert _rel(out, fake) < 0.02 and _rel(out, ref) < 0.02
    # the int8 weights are exactly the fake-quantized ones
    lstm_w = int8.lstm.get_weight()
    for name, w in quant_wrappers(q)["lstm"].quantized_weights().items():
        assert torch.allclose(lstm_w[name].dequantize(), w, atol=1e-7), name
    assert torch.allclose(int8.fc.weight().dequantize(), quant_wrappers(q)["fc"].quantized_weight(), atol=1e-7)
    # any batch size and sequence length
    with torch.no_grad():
        assert int8(torch.randn(1, 5, 16)).shape == (1, 10) and int8(torch.randn(7, 30, 16)).shape == (7, 10)
    # smaller on disk, and the file round-trips
    float_file, int8_file = io.BytesIO(), io.BytesIO()
    save_int8(model, float_file, x[:2])
    save_int8(int8, int8_file, x[:2])
    assert int8_file.getbuffer().nbytes <= 0.5 * float_file.getbuffer().nbytes
    assert exported_size_bytes(int8) <= 0.4 * exported_size_bytes(model)
    int8_file.seek(0)
    loaded = load_int8(int8_file)
    with torch.no_grad():
        assert torch.equal(loaded(x), out)
        other = torch.randn(3, 7, 16)  # traced at batch 2 × 12 steps, runs at other shapes
        assert torch.equal(loaded(other), int8(other))
    assert isinstance(model.lstm, nn.LSTM) and not any("quantized" in type(m).__module__ for m in model.modules())


def test_float_model_dynamic_export_and_layer_subset(model) -> None:
    x = torch.randn(4, 6, 16)
    int8 = export_int8(model, x, mode="dynamic", layers={"lstm", "fc"})
    assert "quantized" in type(int8.lstm).__module__ and "quantized" in type(int8.fc).__module__
    assert isinstance(int8.gru, nn.GRU)
    with torch.no_grad():
        assert _rel(int8(x), model(x)) < 0.02


def test_errors_name_the_layer() -> None:
    with pytest.raises(QuantizationError, match=r"layer 'fc': algorithm 'dynamic' quantizes weights only.*bits_a=None"):
        quantize_model(Tagger(), {"fc": (8, 8)}, algorithm="dynamic")
    with pytest.raises(QuantizationError, match=r"layer 'lstm' is a LSTM: recurrent layers are quantized weights-only"):
        quantize_model(Tagger(), {"lstm": (8, 8)}, algorithm="ste")
    with pytest.raises(QuantizationError, match=r"layer 'lstm' is a LSTM with several weight matrices"):
        quantize_model(Tagger(), {"lstm": (8, None)}, algorithm="dynamic").lstm.quantized_weight()
    convnet = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    with pytest.raises(QuantExportError, match=r"mode='dynamic' quantizes Linear, LSTM and GRU layers.*has none"):
        export_int8(convnet, torch.randn(1, 3, 8, 8), mode="dynamic")
    with pytest.raises(QuantExportError, match=r"none of the quantized layers \(0\) has Linear/LSTM/GRU int8 kernels"):
        export_int8(quantize_model(convnet, {"0": (8, None)}, algorithm="dynamic"), torch.randn(1, 3, 8, 8))
