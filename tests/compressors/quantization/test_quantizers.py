"""Per-channel weight and affine activation (fake) quantization, with straight-through gradients."""

from __future__ import annotations

import pytest
import torch

from slimtune.compressors.quantization import (
    QuantizationError,
    affine_qparams,
    dequantize_per_channel,
    fake_quantize_activation,
    fake_quantize_weight,
    quantize_weight_per_channel,
)


@pytest.mark.parametrize("bits", range(2, 9))
def test_round_trip_error_is_at_most_half_a_step(bits: int) -> None:
    w = torch.randn(16, 8, 3, 3)
    q, scale = quantize_weight_per_channel(w, bits)
    qmax = 2 ** (bits - 1) - 1
    assert q.dtype == torch.int8 and q.shape == w.shape and scale.shape == (16,)
    assert int(q.abs().max()) <= qmax
    err = (dequantize_per_channel(q, scale) - w).abs()
    assert bool((err <= scale.view(-1, 1, 1, 1) / 2 + 1e-6).all())
    # fake quantization gives the same values
    assert torch.allclose(fake_quantize_weight(w, bits), dequantize_per_channel(q, scale))


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_per_channel_scales_on_constructed_weights(bits: int) -> None:
    maxima = torch.tensor([0.5, 2.0, 7.0])
    w = torch.rand(3, 5) * 0.4 * maxima[:, None]
    w[0, 1], w[1, 3], w[2, 0] = -0.5, 2.0, -7.0  # the largest |w| of each row
    _, scale = quantize_weight_per_channel(w, bits)
    assert torch.allclose(scale, maxima / (2 ** (bits - 1) - 1))
    # the extreme weights sit exactly on the extreme levels
    q, _ = quantize_weight_per_channel(w, bits)
    assert q[0, 1] == -(2 ** (bits - 1) - 1) and q[2, 0] == -(2 ** (bits - 1) - 1)


def test_axis_other_than_zero() -> None:
    w = torch.randn(4, 6)
    _, scale = quantize_weight_per_channel(w, 8, axis=1)
    assert torch.allclose(scale, w.abs().amax(dim=0) / 127)


def test_one_bit_weights_are_plus_minus_mean_abs_per_channel() -> None:
    w = torch.randn(6, 4, 3, 3)
    alpha = w.abs().mean(dim=(1, 2, 3))
    q, scale = quantize_weight_per_channel(w, 1)
    assert set(q.unique().tolist()) <= {-1, 1}
    assert torch.allclose(scale, alpha)
    fq = fake_quantize_weight(w, 1)
    assert torch.allclose(fq.abs(), alpha.view(-1, 1, 1, 1).expand_as(w))
    assert bool((torch.sign(fq) == torch.where(w >= 0, 1.0, -1.0)).all())


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_weight_ste_gradient_is_identity(bits: int) -> None:
    w = torch.randn(5, 7, requires_grad=True)
    fake_quantize_weight(w, bits).sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))


@pytest.mark.parametrize("bits", [None, 32])
def test_float_bits_leave_tensors_alone(bits: int | None) -> None:
    w = torch.randn(3, 3)
    assert fake_quantize_weight(w, bits) is w
    assert fake_quantize_activation(w, bits, -1.0, 1.0) is w


@pytest.mark.parametrize("bits", range(2, 9))
def test_activation_round_trip_inside_range(bits: int) -> None:
    x = torch.empty(10_000).uniform_(-1.0, 3.0)
    scale, zp = affine_qparams(-1.0, 3.0, bits)
    assert torch.isclose(scale, torch.tensor(4.0 / (2**bits - 1)))
    assert 0 <= int(zp) <= 2**bits - 1
    y = fake_quantize_activation(x, bits, -1.0, 3.0)
    assert float((y - x).abs().max()) <= float(scale) / 2 + 1e-6
    # at most 2^bits distinct values
    assert y.unique().numel() <= 2**bits


def test_activation_range_is_widened_to_contain_zero() -> None:
    x = torch.tensor([0.0, 1.5, 2.0])
    y = fake_quantize_activation(x, 8, 1.0, 2.0)  # zero must stay exact
    assert y[0] == 0.0


def test_clipped_ste_zero_gradient_outside_range() -> None:
    x = torch.tensor([-3.0, -0.5, 0.0, 0.7, 1.9, 5.0], requires_grad=True)
    y = fake_quantize_activation(x, 4, -1.0, 2.0)
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 0.0]
    y = y.detach()
    assert float(y[0]) == pytest.approx(-1.0, abs=0.2) and float(y[-1]) == pytest.approx(2.0, abs=0.2)


@pytest.mark.parametrize("bits", [0, 9, 16, 2.5, True])
def test_bad_weight_bits_name_the_value(bits: object) -> None:
    with pytest.raises(QuantizationError, match=rf"weight bits {bits!r}"):
        quantize_weight_per_channel(torch.randn(2, 2), bits)  # type: ignore[arg-type]


@pytest.mark.parametrize("bits", [0, 1, 9])
def test_bad_activation_bits_name_the_value(bits: int) -> None:
    with pytest.raises(QuantizationError, match=rf"activation bits {bits}"):
        fake_quantize_activation(torch.randn(4), bits, -1.0, 1.0)
