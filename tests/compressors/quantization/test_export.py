"""int8 export through the deprecated torch.ao FX path (``method="fx"``, x86 backend): accuracy, size, batch
sizes, pruned models, errors. The default path (PT2E) is tested in ``test_pt2e.py``.

Tolerances: relative L2 error of the int8 output vs the float output < 5 %; argmax agreement ≥ 95 % on the
digits validation set; serialized state_dict bytes ≤ 0.35× the float model's (≤ 0.45× for the
50 %-channel-pruned model, whose narrow layers carry relatively more per-channel quantization parameters).
"""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from slimtune.compressors import CompressionPlan, compress, trace
from slimtune.compressors.quantization.export import (
    QuantExportError,
    export_int8,
    exported_size_bytes,
    load_int8,
    pt2e_available,
    save_int8,
)
from slimtune.examples.digits import digits_cnn, evaluate_accuracy, load_digits_data, train

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")


def _rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _is_int8(model: nn.Module) -> bool:
    kinds = {type(m).__module__ for m in model.modules()}
    return any(k.startswith("torch.ao.nn.quantized") or k.startswith("torch.ao.nn.intrinsic.quantized") for k in kinds)


class SmallNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1, stride=2, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU())
        self.head = Gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class Gate(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            return x
        return -x


@pytest.fixture(scope="module")
def digits():
    torch.manual_seed(0)
    train_set, val_set = load_digits_data()
    model = train(digits_cnn(), train_set, epochs=4, seed=0).eval()
    calib = [train_set.tensors[0][i : i + 128] for i in range(0, 512, 128)]
    return model, train_set, val_set, calib


def test_small_convnet_int8_close_smaller_and_any_batch() -> None:
    model = SmallNet().eval()
    with torch.no_grad():  # non-trivial BN statistics, so the fusion is exercised
        for bn in (model.bn1, model.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
    calib = [(torch.randn(16, 3, 16, 16), torch.zeros(16)) for _ in range(4)]  # (inputs, targets) batches
    q = export_int8(model, torch.randn(2, 3, 16, 16), calib, method="fx")
    assert _is_int8(q)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in q.modules())  # conv-bn(-relu) fused
    for batch in (1, 32):
        x = torch.randn(batch, 3, 16, 16)
        with torch.no_grad():
            out, ref = q(x), model(x)
        assert out.shape == ref.shape == (batch, 10)
        assert _rel_l2(out, ref) < 0.05
    assert exported_size_bytes(q) <= 0.35 * exported_size_bytes(model)
    assert model.bn1.weight.dtype == torch.float32 and isinstance(model.bn1, nn.BatchNorm2d)  # original untouched


def test_digits_cnn_accuracy_agreement_size_and_save(digits) -> None:
    model, _, val_set, calib = digits
    q = export_int8(model, calib[0][:1], calib, method="fx")
    x = val_set.tensors[0]
    with torch.no_grad():
        out, ref = q(x), model(x)
    assert _rel_l2(out, ref) < 0.05
    assert float((out.argmax(1) == ref.argmax(1)).float().mean()) >= 0.95
    assert evaluate_accuracy(q, val_set) >= evaluate_accuracy(model, val_set) - 0.02
    assert exported_size_bytes(q) <= 0.35 * exported_size_bytes(model)
    with torch.no_grad():
        assert q(x[:1]).shape == (1, 10) and q(x[:32]).shape == (32, 10)

    buffer = io.BytesIO()
    save_int8(q, buffer, x[:1])
    buffer.seek(0)
    loaded = load_int8(buffer)
    with torch.no_grad():
        assert torch.equal(loaded(x[:32]), q(x[:32]))
        assert torch.equal(torch.jit.script(q)(x[:5]), q(x[:5]))


def test_pruned_digits_cnn_exports(digits) -> None:
    model, _, val_set, calib = digits
    x = calib[0][:2]
    pruned = compress(model, CompressionPlan.uniform(trace(model, x), 0.5), x)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    q = export_int8(pruned, x, calib, method="fx")
    assert _is_int8(q)
    xs = val_set.tensors[0]
    with torch.no_grad():
        out, ref = q(xs), pruned(xs)
    assert _rel_l2(out, ref) < 0.05
    # Narrower layers: the per-channel scales (float64) and zero points (int64) of the packed weights weigh
    # relatively more, so the ratio is looser than for the full model (~0.36 here vs ~0.29).
    assert exported_size_bytes(q) <= 0.45 * exported_size_bytes(pruned)


def test_layers_subset_keeps_the_rest_float(digits) -> None:
    model, _, val_set, calib = digits
    q = export_int8(model, calib[0][:1], calib, layers={"features.0", "fc2"}, method="fx")
    kinds = dict(q.named_modules())
    for name in ("fc1", "features.3", "features.7", "features.10"):  # stay float (possibly fused, not quantized)
        assert "quantized" not in type(kinds[name]).__module__, name
    for name in ("features.0", "fc2"):
        assert "quantized" in type(kinds[name]).__module__, name
    with torch.no_grad():
        assert _rel_l2(q(val_set.tensors[0]), model(val_set.tensors[0])) < 0.05


def test_errors_name_the_problem(digits) -> None:
    model, _, _, calib = digits
    x = calib[0][:2]
    with pytest.raises(QuantExportError, match="nope"):
        export_int8(model, x, calib, layers={"nope"}, method="fx")
    with pytest.raises(QuantExportError, match=r"'features\.1'.*BatchNorm2d"):
        export_int8(model, x, calib, layers={"features.1"}, method="fx")
    with pytest.raises(QuantExportError, match="calibration is empty"):
        export_int8(model, x, [], method="fx")
    with pytest.raises(QuantExportError, match="'nonexistent_backend'"):
        export_int8(model, x, calib, backend="nonexistent_backend", method="fx")
    with pytest.raises(QuantExportError, match=r"cannot trace.*'head'"):
        export_int8(Untraceable().eval(), torch.randn(2, 3, 8, 8), [torch.randn(4, 3, 8, 8)], method="fx")
    with pytest.raises(ValueError, match="method"):
        export_int8(model, x, calib, method="magic")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mode"):
        export_int8(model, x, calib, mode="magic")  # type: ignore[arg-type]
    with pytest.raises(QuantExportError, match="needs calibration batches"):
        export_int8(model, x, method="fx")
    with pytest.raises(QuantExportError, match=r"'features\.0' is a Conv2d; only Linear, LSTM and GRU"):
        export_int8(model, x, layers={"features.0"}, mode="dynamic")
    with pytest.raises(QuantExportError, match="method='pt2e' is for static"):
        export_int8(model, x, mode="dynamic", method="pt2e")
    assert pt2e_available()  # torchao is a dependency
