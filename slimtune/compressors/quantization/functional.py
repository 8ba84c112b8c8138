"""Quantize / fake-quantize tensors: per-channel symmetric weights, affine activations.

Fake quantization is quantize → dequantize in floating point, so a model computes with the values
an integer kernel would see. Gradients pass through with a straight-through estimator (STE,
Bengio et al. 2013): ``q.detach() + (x - x.detach())`` is exactly ``q`` forward and the identity backward.
Activations use the *clipped* STE: gradient 1 inside the representable range, 0 outside.

Example:
    >>> import torch
    >>> w = torch.tensor([[1.0, -0.5], [0.2, 0.1]])
    >>> q, scale = quantize_weight_per_channel(w, 8)
    >>> q.tolist(), [round(s, 5) for s in scale.tolist()]
    ([[127, -64], [127, 64]], [0.00787, 0.00157])
    >>> x = torch.linspace(-1, 3, 5)
    >>> [round(v, 2) for v in fake_quantize_activation(x, 8, 0.0, 2.0).tolist()]
    [0.0, 0.0, 1.0, 2.0, 2.0]
"""

from __future__ import annotations

import torch

from slimtune.errors import QuantizationError

FLOAT_BITS = 32
_EPS = 1e-12


def is_float(bits: int | None) -> bool:
    """True when ``bits`` means "keep floating point" (``None`` or 32)."""
    return bits is None or bits == FLOAT_BITS


def check_bits(bits: object, low: int = 1, high: int = 8, what: str = "bits") -> int:
    """Return ``bits`` as an int if it lies in ``[low, high]``, else raise naming the value."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not (low <= bits <= high):
        raise QuantizationError(f"{what} {bits!r} is outside {low}-{high}; use {low}-{high}, or None/32 for float")
    return bits


def _channel_view(t: torch.Tensor, ndim: int, axis: int) -> torch.Tensor:
    shape = [1] * ndim
    shape[axis] = -1
    return t.reshape(shape)


def quantize_weight_per_channel(w: torch.Tensor, bits: int, axis: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-channel quantization of a weight tensor.

    Args:
        w: The weight (``[out, in, ...]`` for Conv/Linear).
        bits: 2-8: integer levels ``±(2^(bits-1) - 1)`` with ``scale_c = max|w_c| / (2^(bits-1) - 1)``;
            1: ``q = sign(w)`` (0 → +1) with ``scale_c = mean|w_c|`` (XNOR-Net's α).
        axis: The channel axis (0, the output channels, for Conv/Linear weights).

    Returns:
        ``(q, scale)``: ``q`` an int8 tensor shaped like ``w``; ``scale`` a 1-D float tensor with
        one entry per channel; ``w ≈ q * scale`` along ``axis``.

    Raises:
        QuantizationError: ``bits`` outside 1-8.
    """
    bits = check_bits(bits, 1, 8, "weight bits")
    axis = axis % w.dim() if w.dim() else 0
    w = w.detach()
    flat = w.movedim(axis, 0).reshape(w.shape[axis], -1) if w.dim() else w.reshape(1, 1)
    if bits == 1:
        scale = flat.abs().mean(dim=1)
        q = torch.where(w >= 0, 1, -1).to(torch.int8)
        return q, scale
    qmax = 2 ** (bits - 1) - 1
    scale = flat.abs().amax(dim=1).clamp_min(_EPS) / qmax
    q = torch.clamp(torch.round(w / _channel_view(scale, w.dim(), axis)), -qmax, qmax).to(torch.int8)
    return q, scale


def dequantize_per_channel(q: torch.Tensor, scale: torch.Tensor, axis: int = 0) -> torch.Tensor:
    """``q * scale`` broadcast along ``axis`` (float32)."""
    return q.to(scale.dtype) * _channel_view(scale, q.dim(), axis % max(q.dim(), 1))


def ste(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Straight-through estimator: exactly ``q`` forward, identity gradient to ``x`` backward."""
    return q.detach() + (x - x.detach())


def fake_quantize_weight(w: torch.Tensor, bits: int | None, axis: int = 0) -> torch.Tensor:
    """Per-channel symmetric quantize → dequantize of ``w`` with a straight-through gradient.

    ``bits`` None or 32 returns ``w`` unchanged. See :func:`quantize_weight_per_channel`.

    Example:
        >>> import torch
        >>> w = torch.randn(3, 4, requires_grad=True)
        >>> fake_quantize_weight(w, 4).sum().backward()
        >>> bool((w.grad == 1).all())
        True
    """
    if is_float(bits):
        return w
    q, scale = quantize_weight_per_channel(w, bits, axis)
    return ste(w, dequantize_per_channel(q, scale, axis).to(w.dtype))


def _range_end(value: float | torch.Tensor, device: torch.device | str | None) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().to(device=value.device if device is None else device, dtype=torch.float32)
    return torch.tensor(float(value), dtype=torch.float32, device="cpu" if device is None else device)


def affine_qparams(
    lo: float | torch.Tensor,
    hi: float | torch.Tensor,
    bits: int,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point of ``bits``-bit affine quantization of ``[lo, hi]``.

    The range is widened to contain 0 so that zero is exactly representable. Levels are the
    integers ``0 … 2^bits - 1``; ``x ≈ (q - zero_point) * scale``.

    Args:
        lo, hi: The range: numbers or 0-d tensors.
        bits: 2-8.
        device: Where the results live; ``None``: the device of ``lo`` / ``hi`` when they are tensors,
            else the CPU.

    Returns:
        ``(scale, zero_point)``: 0-d float32 tensors.
    """
    bits = check_bits(bits, 2, 8, "activation bits")
    if device is None:
        device = next((v.device for v in (lo, hi) if isinstance(v, torch.Tensor)), None)
    lo_t = _range_end(lo, device).clamp(max=0.0)
    hi_t = _range_end(hi, device).clamp(min=0.0)
    qmax = 2**bits - 1
    scale = ((hi_t - lo_t) / qmax).clamp_min(_EPS)
    zero_point = torch.clamp(torch.round(-lo_t / scale), 0, qmax)
    return scale, zero_point


def fake_quantize_activation(
    x: torch.Tensor, bits: int | None, lo: float | torch.Tensor, hi: float | torch.Tensor
) -> torch.Tensor:
    """Affine quantize → dequantize of ``x`` over ``[lo, hi]`` with a clipped straight-through gradient.

    Args:
        x: The activation tensor.
        bits: 2-8 (``None`` or 32 returns ``x`` unchanged).
        lo, hi: The range (from an observer): numbers or 0-d tensors (used on ``x``'s device); widened to
            contain 0.

    The gradient is 1 where ``x`` lies inside the representable range and 0 where it is clipped.

    Raises:
        QuantizationError: ``bits`` outside 2-8 (1-bit activations need the ``bnn`` algorithm).
    """
    if is_float(bits):
        return x
    if bits == 1:
        raise QuantizationError("activation bits 1 is not supported by affine quantization; use algorithm='bnn'")
    scale, zp = affine_qparams(lo, hi, bits, device=x.device)
    qmax = 2**bits - 1
    xd = x.detach()
    q = torch.clamp(torch.round(xd / scale) + zp, 0, qmax)
    deq = ((q - zp) * scale).to(x.dtype)
    inside = (xd >= -zp * scale) & (xd <= (qmax - zp) * scale)
    return deq + (x - xd) * inside.to(x.dtype)
