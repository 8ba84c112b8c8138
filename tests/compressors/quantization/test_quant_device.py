"""The quantization package on any device.

These machines have no GPU, so device-correctness is checked in the ways a CPU allows:

- every tensor the package creates without naming a device would land on the CPU beside a GPU model: under
  :func:`stray_tensors_on_meta` such tensors go to ``meta`` and are recorded, so quantizing, calibrating,
  training and exporting a CPU model there must record none (and still compute);
- the tensors a wrapper and its algorithm add are created on the wrapped layer's device (a ``meta`` layer
  gets ``meta`` buffers and parameters) and are registered, so ``model.to(device)`` moves them;
- int8 export (CPU kernels) copies, never moves or modifies, the model it is given, and returns a CPU model.
"""

from __future__ import annotations

import copy

import pytest
import torch
from _devices import stray_tensors_on_meta
from torch import nn

from slimtune.compressors import CompressionPlan, QuantSpec, compress
from slimtune.compressors.quantization import (
    ALGORITHMS,
    OBSERVERS,
    QuantWrapper,
    affine_qparams,
    anneal,
    calibrate,
    export_int8,
    fake_quantize_activation,
    fake_quantize_weight,
    freeze,
    load_int8,
    quant_wrappers,
    quantize_model,
    save_int8,
    unwrap,
)
from slimtune.compressors.quantization.export import _host_copy
from slimtune.devices import model_device

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")

# (bits_w, bits_a) each registered algorithm accepts; a newly registered algorithm fails
# test_every_algorithm_has_bits until it is listed here (and so checked below).
BITS = {
    "ptq": (4, 8),
    "ste": (4, 8),
    "pact": (4, 4),
    "dorefa": (2, 8),
    "bnn": (1, 1),
    "dynamic": (8, None),
    "slb": (2, 8),
}


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(torch.relu(self.conv(x)), 1))


def _net() -> Net:
    torch.manual_seed(0)
    return Net()


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 3, 8, 8, generator=g), torch.randint(5, (8,), generator=g)) for _ in range(2)]


def test_every_algorithm_has_bits() -> None:
    assert set(ALGORITHMS) == set(BITS)


@pytest.mark.parametrize("algorithm", sorted(BITS))
def test_algorithm_creates_no_device_less_tensors(algorithm: str) -> None:
    """Wrap, calibrate on (inputs, targets) tuples, freeze, train a step, evaluate, unwrap: no stray tensor."""
    bits = BITS[algorithm]
    batches = _batches()
    with stray_tensors_on_meta() as strays:
        q = quantize_model(_net(), {"conv": bits, "fc": bits}, algorithm=algorithm)
        freeze(calibrate(q, batches))
        q.train()
        loss = nn.functional.cross_entropy(q(batches[0][0]), batches[0][1])
        loss.backward()
        if algorithm == "slb":
            anneal(q, 0.5)
        with torch.no_grad():
            out = q.eval()(batches[1][0])
        plain = unwrap(q)
    assert not strays, strays
    assert torch.isfinite(loss) and out.shape == (8, 5)
    trained = [n for n, p in q.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert trained, f"{algorithm}: no parameter got a gradient"
    assert not any(isinstance(m, QuantWrapper) for m in plain.modules())


@pytest.mark.parametrize("observer", sorted(OBSERVERS))
def test_observer_creates_no_device_less_tensors(observer: str) -> None:
    batches = _batches()
    with stray_tensors_on_meta() as strays:
        q = freeze(calibrate(quantize_model(_net(), {"conv": (8, 8), "fc": (8, 8)}, observer=observer), batches))
        out = q(batches[0][0])
    assert not strays, strays
    ranges = [(float(w.act_lo), float(w.act_hi)) for w in quant_wrappers(q).values()]
    assert all(hi > lo for lo, hi in ranges), ranges
    assert torch.isfinite(out).all()


def test_recurrent_weight_only_creates_no_device_less_tensors() -> None:
    with stray_tensors_on_meta() as strays:
        q = quantize_model(nn.LSTM(4, 6), {"": (8, None)}, algorithm="dynamic")
        out, _ = q(torch.randn(3, 2, 4))
        out.sum().backward()
    assert not strays, strays
    assert q.layer.weight_ih_l0.grad is not None


@pytest.mark.parametrize("algorithm", sorted(BITS))
def test_compress_with_bits_creates_no_device_less_tensors(algorithm: str) -> None:
    model = _net()
    x = torch.randn(1, 3, 8, 8)
    plan = CompressionPlan(quantize={"conv": QuantSpec(*BITS[algorithm]), "fc": QuantSpec(*BITS[algorithm])})
    with stray_tensors_on_meta() as strays:
        q = compress(model, plan, x, data=_batches(), quant_algorithm=algorithm)
        q(torch.randn(2, 3, 8, 8)).sum().backward()
    assert not strays, strays
    assert set(quant_wrappers(q)) == {"conv", "fc"}


@pytest.mark.parametrize("algorithm", sorted(BITS))
def test_added_tensors_are_created_on_the_layers_device(algorithm: str) -> None:
    """A layer on ``meta`` (standing in for a GPU) gets every buffer and parameter the wrapper and its
    algorithm add on ``meta`` too."""
    bits_w, bits_a = BITS[algorithm]
    layer = nn.Linear(4, 3, device="meta")
    w = QuantWrapper(layer, bits_w, bits_a, algorithm=algorithm, name="fc")
    tensors = dict(w.named_parameters()) | dict(w.named_buffers())
    assert {"act_lo", "act_hi"} <= set(tensors)
    assert {n: t.device.type for n, t in tensors.items() if t.device.type != "meta"} == {}
    if algorithm == "pact":
        assert {"alpha", "act_signed", "act_sign_known"} <= set(tensors)
    if algorithm == "slb":
        assert {"slb_logits", "slb_scale", "slb_levels", "slb_temperature"} <= set(tensors)


@pytest.mark.parametrize("algorithm", sorted(BITS))
def test_added_tensors_move_with_the_model(algorithm: str) -> None:
    """Registered, not plain attributes: ``model.to(device)`` moves them all and ``state_dict`` holds them."""
    q = freeze(calibrate(quantize_model(_net(), {"conv": BITS[algorithm]}, algorithm=algorithm), _batches()))
    wrapper = q.conv
    plain = [k for k, v in vars(wrapper).items() if isinstance(v, torch.Tensor)]
    assert plain == [], f"tensors kept as plain attributes do not move with .to(): {plain}"
    keys = set(q.state_dict())
    assert {"conv.act_lo", "conv.act_hi"} <= keys
    q.to("meta")
    assert {n: t.device.type for n, t in [*q.named_parameters(), *q.named_buffers()] if t.device.type != "meta"} == {}


def test_functions_create_tensors_on_their_inputs_device() -> None:
    x = torch.randn(4, 5, device="meta")
    assert fake_quantize_activation(x, 8, -1.0, 2.0).device.type == "meta"
    assert fake_quantize_weight(torch.randn(3, 4, device="meta"), 4).device.type == "meta"
    scale, zp = affine_qparams(torch.tensor(-1.0, device="meta"), 2.0, 8)
    assert scale.device.type == zp.device.type == "meta"
    scale, zp = affine_qparams(-1.0, 2.0, 8, device="meta")
    assert scale.device.type == zp.device.type == "meta"
    scale, zp = affine_qparams(-1.0, 2.0, 8)  # numbers and no device: the CPU, stated
    assert scale.device.type == "cpu" and float(zp) == round(1.0 / float(scale))
    with stray_tensors_on_meta() as strays:
        y = fake_quantize_activation(torch.linspace(-1, 3, 5), 8, 0.0, 2.0)
    assert not strays, strays
    assert [round(v, 2) for v in y.tolist()] == [0.0, 0.0, 1.0, 2.0, 2.0]


def test_pact_decides_the_sign_on_the_device_and_keeps_it() -> None:
    q = freeze(quantize_model(nn.Linear(3, 2), {"": (None, 4)}, algorithm="pact"))
    q(torch.randn(16, 3))  # signed inputs: the first batch decides
    assert bool(q.act_sign_known) and bool(q.act_signed)
    q(torch.rand(16, 3))  # non-negative inputs later: the decision stands
    assert bool(q.act_signed)
    y = q.algorithm.activation(q, torch.tensor([[-20.0, 0.0, 20.0]]))
    assert torch.allclose(y, torch.tensor([[-10.0, 0.0, 10.0]]))  # clipped to [-α, α] with α = 10


# ---------------------------------------------------------------------- int8 export: a CPU path


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> bool:
    after = model.state_dict()
    return set(after) == set(before) and all(torch.equal(after[k], v) for k, v in before.items())


def _tensors_of(model: nn.Module) -> list[torch.Tensor]:
    out = []
    for v in model.state_dict().values():
        if isinstance(v, torch.Tensor):
            out.append(v)
        elif isinstance(v, tuple):  # packed params of quantized modules
            out.extend(t for t in v if isinstance(t, torch.Tensor))
    return out


def test_export_of_a_fake_quantized_model_leaves_it_unchanged_and_returns_a_cpu_model(tmp_path) -> None:
    batches = _batches()
    q = freeze(calibrate(quantize_model(_net(), {"conv": (8, 8), "fc": (8, 8)}, algorithm="ste"), batches))
    q.train()
    before = _state(q)
    with stray_tensors_on_meta() as strays:
        int8 = export_int8(q, batches[0][0], calibration=batches)  # a list of (inputs, targets) tuples
    assert not strays, strays
    assert _unchanged(q, before) and q.training
    assert set(quant_wrappers(q)) == {"conv", "fc"}
    assert model_device(int8).type == "cpu" and all(t.device.type == "cpu" for t in _tensors_of(int8))
    x = batches[1][0]
    with torch.no_grad():
        ref, out = q.eval()(x), int8(x)
    assert float((out - ref).norm() / ref.norm()) < 0.1
    path = tmp_path / "m.pt"
    save_int8(int8, path, x)
    assert torch.allclose(load_int8(path)(x), out, atol=1e-5)


def test_dynamic_export_leaves_the_model_unchanged() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    q = quantize_model(model, {"0": (8, None), "2": (8, None)}, algorithm="dynamic")
    before = _state(q)
    with stray_tensors_on_meta() as strays:
        int8 = export_int8(q, [torch.randn(2, 4)])  # example inputs as a list of inputs
    assert not strays, strays
    assert _unchanged(q, before) and isinstance(q[0], QuantWrapper)
    assert all(t.device.type == "cpu" for t in _tensors_of(int8))


def test_host_copy_copies_every_tensor_once_and_leaves_the_model_alone() -> None:
    """The copy export makes of a model on another device: fresh CPU tensors, tied weights still tied."""
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 10), nn.BatchNorm1d(10))
    model[1].weight = model[0].weight  # tied
    model[0].weight.requires_grad_(False)
    before = _state(model)
    copied = _host_copy(model)
    assert copied[1].weight is copied[0].weight and not copied[0].weight.requires_grad
    assert copied[2].running_mean is not model[2].running_mean
    for (name, a), b in zip(
        [*model.named_parameters(), *model.named_buffers()], [*copied.parameters(), *copied.buffers()]
    ):
        assert a.data_ptr() != b.data_ptr() and torch.equal(a, b) and b.device.type == "cpu", name
    with torch.no_grad():
        copied[1].bias.add_(1.0)
        copied[2].running_mean.add_(1.0)
    assert _unchanged(model, before)


def test_export_of_a_pact_model_leaves_its_learned_clip_alone() -> None:
    """Export reads PACT's learned α from the model; the model's α and state stay as they were."""
    q = freeze(calibrate(quantize_model(_net(), {"fc": (8, 4)}, algorithm="pact"), _batches()))
    alpha = float(q.fc.alpha)
    snapshot = copy.deepcopy(q)
    export_int8(q, _batches()[0][0], calibration=[b[0] for b in _batches()])
    assert float(q.fc.alpha) == alpha and _unchanged(q, _state(snapshot))
