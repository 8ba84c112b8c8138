"""QuantWrapper, quantize_model / calibrate / freeze, and the algorithms (ptq, ste, pact, dorefa, bnn)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from slimtune.compressors import QuantSpec
from slimtune.compressors.quantization import (
    ALGORITHMS,
    QuantizationError,
    QuantWrapper,
    calibrate,
    freeze,
    get_algorithm,
    post_training_quantize,
    quant_wrappers,
    quantize_model,
)
from slimtune.compressors.quantization.algorithms import dorefa_weight


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    ).eval()


ALL_LAYERS = ("0", "3", "7")


def _batches(n: int = 4) -> list[torch.Tensor]:
    return [torch.randn(8, 3, 16, 16) for _ in range(n)]


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


def _toy_regression() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    teacher = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    x = torch.randn(256, 8)
    with torch.no_grad():
        y = teacher(x) + 0.5
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1)), x, y


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float = 0.05) -> list[float]:
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


# ---------------------------------------------------------------------- wrapping
@pytest.mark.parametrize("observer", ["minmax", "moving_average", "percentile", "kl"])
def test_8_bit_model_is_close_to_float(observer: str) -> None:
    model = small_cnn()
    q = quantize_model(model, {n: QuantSpec(8, 8) for n in ALL_LAYERS}, observer=observer)
    assert set(quant_wrappers(q)) == set(ALL_LAYERS)
    assert not any(isinstance(m, QuantWrapper) for m in model.modules())  # the original is untouched
    x = torch.randn(8, 3, 16, 16)
    assert torch.allclose(q(x), model(x), atol=2e-2)  # calibrating: weights only are quantized
    q = freeze(calibrate(q, _batches()))
    assert all(w.mode == "frozen" for w in quant_wrappers(q).values())
    assert _rel_err(q(x), model(x)) < 0.02


def test_lower_bits_give_larger_error() -> None:
    model = small_cnn()
    x = torch.randn(8, 3, 16, 16)
    errs = []
    for bits in (8, 4, 2):
        q = freeze(calibrate(quantize_model(model, {n: (bits, bits) for n in ALL_LAYERS}), _batches()))
        errs.append(_rel_err(q(x), model(x)))
    assert errs[0] < errs[1] < errs[2]


def test_weight_only_needs_no_calibration_and_float_specs_stay_float() -> None:
    model = small_cnn()
    q = freeze(quantize_model(model, {"0": {"bits_w": 8, "bits_a": None}, "3": QuantSpec(None, 32)}))
    assert set(quant_wrappers(q)) == {"0"}
    assert isinstance(q[3], nn.Conv2d)
    x = torch.randn(2, 3, 16, 16)
    assert _rel_err(q(x), model(x)) < 0.02


def test_wrapper_state_survives_state_dict() -> None:
    model = small_cnn()
    q = freeze(calibrate(quantize_model(model, {n: (8, 8) for n in ALL_LAYERS}), _batches()))
    fresh = quantize_model(model, {n: (8, 8) for n in ALL_LAYERS}, inplace=False)
    fresh.load_state_dict(q.state_dict())
    for w in quant_wrappers(fresh).values():
        w.mode = "frozen"
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(fresh(x), q(x))


def test_errors_name_the_layer() -> None:
    model = small_cnn()
    with pytest.raises(QuantizationError, match=r"unknown layer 'conv9'.*quantizable layers are: 0, 3, 7"):
        quantize_model(model, {"conv9": (8, 8)})
    with pytest.raises(QuantizationError, match=r"layer '1' is a BatchNorm2d"):
        quantize_model(model, {"1": (8, 8)})
    with pytest.raises(QuantizationError, match=r"layer '3': bits_w 12 is outside 1-8"):
        quantize_model(model, {"3": QuantSpec(12, 8)})
    with pytest.raises(QuantizationError, match=r"layer '7': 1-bit activations .* algorithm 'ste'"):
        quantize_model(model, {"7": (8, 1)})
    with pytest.raises(QuantizationError, match=r"layer '0': its minmax observer has seen no data"):
        freeze(quantize_model(model, {"0": (8, 8)}))
    with pytest.raises(QuantizationError, match=r"layer '0': algorithm 'bnn' binarizes weights.*got 4"):
        quantize_model(model, {"0": (4, 8)}, algorithm="bnn")
    with pytest.raises(QuantizationError, match="unknown quantization algorithm 'foo'"):
        quantize_model(model, {"0": (8, 8)}, algorithm="foo")
    with pytest.raises(QuantizationError, match="unknown observer 'foo'"):
        quantize_model(model, {"0": (8, 8)}, observer="foo")


def test_calibrate_accepts_input_target_pairs_and_max_batches() -> None:
    q = quantize_model(small_cnn(), {"0": (8, 8)})
    calibrate(q, [(b, torch.zeros(8, dtype=torch.long)) for b in _batches(5)], max_batches=2)
    assert q[0].observer.count == 2


# ---------------------------------------------------------------------- algorithms
def test_registry_has_the_algorithms() -> None:
    assert set(ALGORITHMS) == {"ptq", "ste", "pact", "dorefa", "bnn", "dynamic", "slb"}
    assert not get_algorithm("ptq").requires_training and get_algorithm("ste").requires_training
    assert not get_algorithm("dynamic").requires_training and get_algorithm("slb").requires_training
    for cls in ALGORITHMS.values():
        assert cls.__module__ and len(__import__(cls.__module__, fromlist=["x"]).__doc__ or "") > 100


def test_ptq_helper() -> None:
    model = small_cnn()
    q = post_training_quantize(model, {n: (8, 8) for n in ALL_LAYERS}, _batches(), observer="percentile")
    x = torch.randn(4, 3, 16, 16)
    assert _rel_err(q(x), model(x)) < 0.03
    assert all(w.mode == "frozen" and w.algorithm.name == "ptq" for w in quant_wrappers(q).values())


@pytest.mark.parametrize("algorithm", ["ste", "pact", "dorefa"])
def test_qat_steps_decrease_a_toy_loss(algorithm: str) -> None:
    model, x, y = _toy_regression()
    q = quantize_model(model, {"0": (4, 8), "2": (4, 4)}, algorithm=algorithm)
    q = freeze(calibrate(q, [x]))
    losses = _train(q, x, y, steps=40)
    assert losses[-1] < 0.7 * losses[0]
    assert q[0].layer.weight.grad is not None


def test_bnn_trains_a_toy_loss() -> None:
    _, x, y = _toy_regression()
    # binary activations need signed inputs: the second layer reads a BatchNorm, not a ReLU
    model = nn.Sequential(nn.Linear(8, 32), nn.BatchNorm1d(32), nn.Linear(32, 1))
    q = freeze(quantize_model(model, {"0": (1, None), "2": (1, 1)}, algorithm="bnn"))
    losses = _train(q, x, y, steps=40, lr=0.05)
    assert losses[-1] < 0.5 * losses[0]


def test_pact_alpha_starts_at_the_calibrated_range() -> None:
    q = quantize_model(nn.Linear(4, 1), {"": (None, 4)}, algorithm="pact")
    x = torch.rand(128, 4) * 3
    q = freeze(calibrate(q, [x]))
    assert q.alpha.item() == pytest.approx(float(x.max()), rel=1e-5)
    assert not bool(q.act_signed)  # non-negative inputs: clip to [0, α]


def test_pact_alpha_gets_a_gradient_and_moves() -> None:
    from slimtune.compressors.quantization.algorithms import PACT

    layer = nn.Linear(4, 1)
    with torch.no_grad():  # equal positive weights: every clipped input pushes α the same way
        layer.weight.fill_(0.5)
        layer.bias.zero_()
    q = freeze(quantize_model(layer, {"": (None, 8)}, algorithm=PACT(alpha_init=1.0)))
    x = torch.rand(128, 4) * 3
    with torch.no_grad():
        y = layer(x)  # the target needs the inputs up to 3 unclipped: α must grow
    opt = torch.optim.SGD([q.alpha], lr=0.1)
    for _ in range(20):
        opt.zero_grad()
        nn.functional.mse_loss(q(x), y).backward()
        assert q.alpha.grad is not None and float(q.alpha.grad) != 0.0
        opt.step()
    assert q.alpha.item() > 1.5


def test_pact_clips_and_quantizes() -> None:
    q = quantize_model(nn.Linear(3, 2), {"": (None, 2)}, algorithm=get_algorithm("pact"))
    q = freeze(q)  # no calibration: α = 10, the sign unknown until the first batch
    assert q.alpha.item() == 10.0 and not bool(q.act_sign_known)
    x = torch.tensor([[-20.0, 3.0, 20.0]], requires_grad=True)
    xq = q.algorithm.activation(q, x)  # a negative input: signed from now on
    assert bool(q.act_sign_known) and bool(q.act_signed)
    assert xq.detach().tolist() == [[-10.0, 0.0, 10.0]]  # 2 bits signed: levels -α, 0, α
    xq.sum().backward()
    assert x.grad.tolist() == [[0.0, 1.0, 0.0]]
    assert float(q.alpha.grad) == 0.0  # +1 from the top clip, -1 from the bottom one


def test_pact_without_calibration_clips_post_relu_inputs_to_0_alpha_with_every_level() -> None:
    """The paper's PACT clips to [0, α]: inputs that are never negative get all 2^bits levels there
    (the signed range would spend one bit on negatives that never come)."""
    q = freeze(quantize_model(nn.Linear(3, 2), {"": (None, 2)}, algorithm="pact"))
    x = torch.tensor([[0.0, 4.0, 20.0]])
    xq = q.algorithm.activation(q, x)
    assert bool(q.act_sign_known) and not bool(q.act_signed)
    step = 10.0 / 3  # 2 bits unsigned: 0, α/3, 2α/3, α
    assert xq[0].tolist() == pytest.approx([0.0, step, 10.0])
    # later batches keep the decision (it is a buffer, saved with the model)
    q.algorithm.activation(q, torch.tensor([[-1.0, 1.0, 2.0]]))
    assert not bool(q.act_signed) and "act_sign_known" in q.state_dict()


def test_int8_export_keeps_pacts_learned_clip() -> None:
    """export_int8 quantizes a PACT layer's input over [0, α], the range it was trained with, not over
    the calibration data's range: the int8 model clips as the fake-quantized one does."""
    import io

    from slimtune.compressors.quantization import export_int8, load_int8, save_int8

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    x = torch.randn(256, 4)
    q = freeze(calibrate(quantize_model(model, {"2": (8, 8)}, algorithm="pact"), [x]))
    with torch.no_grad():
        q[2].alpha.mul_(0.3)  # as if training had lowered α: most large inputs are now clipped
    q.eval()
    with torch.no_grad():
        fake, unclipped = q(x), model(x)
    assert _rel_err(fake, unclipped) > 0.1  # the clip matters
    int8 = export_int8(q, x[:1], [x], method="fx")
    with torch.no_grad():
        out = int8(x)
    assert _rel_err(out, fake) < 0.02
    buffer = io.BytesIO()  # the clip survives saving (TorchScript)
    save_int8(int8, buffer, x[:1])
    buffer.seek(0)
    with torch.no_grad():
        assert torch.equal(load_int8(buffer)(x), out)


def test_dorefa_binarizes_at_one_bit_with_the_layers_mean_absolute_weight() -> None:
    """DoReFa's 1-bit weights are ``sign(w) · E(|w|)`` (one scalar per layer) with a straight-through gradient."""
    layer = nn.Conv2d(4, 6, 3)
    q = quantize_model(layer, {"": (1, None)}, algorithm="dorefa")
    w = q.layer.weight
    expected = torch.sign(w.detach()) * w.detach().abs().mean()
    got = q.quantized_weight()
    assert torch.equal(got.detach(), expected)
    got.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))  # identity, not tanh's derivative


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_dorefa_weights_lie_on_the_k_bit_grid(bits: int) -> None:
    layer = nn.Conv2d(4, 6, 3)
    q = quantize_model(layer, {"": (bits, None)}, algorithm="dorefa")
    scale = float(layer.weight.detach().abs().max())
    w = q.quantized_weight().detach() / scale
    levels = 2**bits - 1
    grid = w.add(1).mul(levels / 2)  # j = (w + 1)(2^k - 1)/2 must be an integer in [0, 2^k - 1]
    assert torch.allclose(grid, grid.round(), atol=1e-4)
    assert float(grid.min()) >= -1e-4 and float(grid.max()) <= levels + 1e-4
    assert float(w.abs().max()) == pytest.approx(1.0)  # the largest weight maps to ±scale
    wt = torch.randn(5, 5, requires_grad=True)
    dorefa_weight(wt, bits).sum().backward()
    assert wt.grad is not None and bool((wt.grad != 0).any())  # gradient through tanh


def test_bnn_weights_are_exactly_plus_minus_alpha_and_activations_are_signs() -> None:
    layer = nn.Conv2d(3, 5, 3)
    q = quantize_model(layer, {"": (1, 1)}, algorithm="bnn")
    w = q.quantized_weight().detach()
    alpha = layer.weight.detach().abs().mean(dim=(1, 2, 3)).view(-1, 1, 1, 1)
    assert torch.equal(w.abs(), alpha.expand_as(w))
    assert torch.equal(torch.sign(w), torch.where(layer.weight >= 0, 1.0, -1.0))
    x = torch.tensor([-2.0, -0.5, 0.0, 0.5, 2.0], requires_grad=True)
    xb = q.algorithm.activation(q, x)
    assert xb.detach().tolist() == [-1.0, -1.0, 1.0, 1.0, 1.0]
    xb.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]
    out = q(torch.randn(2, 3, 8, 8))  # 1-bit activations need no calibration
    assert out.shape == (2, 5, 6, 6)
