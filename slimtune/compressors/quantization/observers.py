"""Observers: track an activation tensor's range over calibration batches.

An observer is fed batches with :meth:`Observer.observe` and answers :meth:`Observer.range`
``(lo, hi)`` for a target bit-width. Observers are registered by the name users write:

================== ============================================================================
name               range
================== ============================================================================
``minmax``         the running minimum and maximum
``moving_average`` exponential moving average of each batch's min and max (``momentum``)
``percentile``     the ``percentile`` (default 99.99 %) of ``|x|`` on a random subsample
``kl``             TensorRT entropy calibration: the clip threshold on ``|x|`` minimising the KL
                   divergence between the histogram and its ``bits``-bit quantized version
                   (Migacz, "8-bit Inference with TensorRT", NVIDIA GTC 2017)
================== ============================================================================

Threshold observers (``percentile``, ``kl``) return ``(0, t)`` when every observed value was
non-negative (e.g. after a ReLU) and ``(-t, t)`` otherwise.

Observers take batches on any device and keep their statistics on the CPU (Python floats; the
``percentile`` samples and the ``kl`` histogram as CPU tensors), so they need no moving with the model.

Example:
    >>> import torch
    >>> obs = make_observer("minmax")
    >>> obs.observe(torch.tensor([-1.0, 2.0])); obs.observe(torch.tensor([3.0]))
    >>> obs.range(8)
    (-1.0, 3.0)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import torch

from slimtune.errors import QuantizationError, UnknownQuantizationNameError
from slimtune.registry import Registry

OBSERVERS: Registry[type[Observer]] = Registry(
    "observer", unknown_error=UnknownQuantizationNameError, duplicate_error=QuantizationError
)
"""Registered observer classes by name."""

_O = TypeVar("_O", bound="type[Observer]")


def register_observer(name: str) -> Callable[[_O], _O]:
    """Class decorator registering an :class:`Observer` subclass under ``name`` in :data:`OBSERVERS`."""

    def deco(cls: _O) -> _O:
        OBSERVERS.register(name, cls)
        cls.name = name
        return cls

    return deco


def make_observer(name: str | Observer, **kwargs: Any) -> Observer:
    """A fresh observer of the registered ``name`` (an :class:`Observer` instance is returned as is).

    Raises:
        UnknownQuantizationNameError: Unknown name (a :class:`~slimtune.errors.QuantizationError`); the
            message suggests the closest known name and lists the known ones.
    """
    if isinstance(name, Observer):
        return name
    return OBSERVERS.get(name)(**kwargs)


class Observer:
    """Base class: subclasses implement :meth:`_observe` and :meth:`_range`."""

    name = "observer"

    def __init__(self) -> None:
        self.count = 0
        self.min_val = math.inf
        self.max_val = -math.inf

    @property
    def initialized(self) -> bool:
        """True once at least one non-empty batch was observed."""
        return self.count > 0

    def observe(self, x: torch.Tensor) -> None:
        """Record one batch (any shape; non-finite values are ignored)."""
        x = x.detach().float().reshape(-1)
        x = x[torch.isfinite(x)]
        if x.numel() == 0:
            return
        self.min_val = min(self.min_val, float(x.min()))
        self.max_val = max(self.max_val, float(x.max()))
        self._observe(x)
        self.count += 1

    def range(self, bits: int = 8) -> tuple[float, float]:
        """``(lo, hi)`` to quantize with at ``bits`` bits.

        Raises:
            QuantizationError: Nothing was observed yet.
        """
        if not self.initialized:
            raise QuantizationError(f"{self.name} observer has seen no data; run calibration batches first")
        return self._range(bits)

    def _observe(self, x: torch.Tensor) -> None:  # x: flat, finite, float32
        pass

    def _range(self, bits: int) -> tuple[float, float]:
        raise NotImplementedError

    def _threshold_range(self, t: float) -> tuple[float, float]:
        return (0.0, t) if self.min_val >= 0 else (-t, t)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(count={self.count})"


@register_observer("minmax")
class MinMaxObserver(Observer):
    """The running minimum and maximum over all batches."""

    def _range(self, bits: int) -> tuple[float, float]:
        return (self.min_val, self.max_val)


@register_observer("moving_average")
class MovingAverageObserver(Observer):
    """Exponential moving average of each batch's min and max.

    Args:
        momentum: Weight of the newest batch (``avg ← (1 - m)·avg + m·batch``); the first batch
            sets the averages.

    Example:
        >>> import torch
        >>> obs = MovingAverageObserver(momentum=0.5)
        >>> obs.observe(torch.tensor([-1.0, 1.0])); obs.observe(torch.tensor([-3.0, 3.0]))
        >>> obs.range(8)
        (-2.0, 2.0)
    """

    def __init__(self, momentum: float = 0.1) -> None:
        super().__init__()
        if not 0.0 < momentum <= 1.0:
            raise QuantizationError(f"moving_average momentum {momentum!r} must be in (0, 1]")
        self.momentum = momentum
        self.avg_min = 0.0
        self.avg_max = 0.0

    def _observe(self, x: torch.Tensor) -> None:
        lo, hi = float(x.min()), float(x.max())
        if self.count == 0:
            self.avg_min, self.avg_max = lo, hi
        else:
            m = self.momentum
            self.avg_min = (1 - m) * self.avg_min + m * lo
            self.avg_max = (1 - m) * self.avg_max + m * hi

    def _range(self, bits: int) -> tuple[float, float]:
        return (self.avg_min, self.avg_max)


@register_observer("percentile")
class PercentileObserver(Observer):
    """The ``percentile`` of ``|x|`` over a random subsample of all batches.

    Args:
        percentile: In (0, 100]; 99.99 clips the top 0.01 % of magnitudes.
        samples_per_batch: At most this many values kept per batch.
        max_samples: At most this many values kept in all (older ones are thinned at random).
        seed: Seed of the subsampling.

    Example:
        >>> import torch
        >>> obs = PercentileObserver(percentile=99.0)
        >>> obs.observe(torch.arange(1001.0))
        >>> obs.range(8)
        (0.0, 990.0)
    """

    def __init__(
        self,
        percentile: float = 99.99,
        samples_per_batch: int = 100_000,
        max_samples: int = 1_000_000,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not 0.0 < percentile <= 100.0:
            raise QuantizationError(f"percentile {percentile!r} must be in (0, 100]")
        self.percentile = percentile
        self.samples_per_batch = samples_per_batch
        self.max_samples = max_samples
        self._gen = torch.Generator(device="cpu").manual_seed(seed)
        self._samples = torch.empty(0, device="cpu")

    def _sub(self, x: torch.Tensor, n: int) -> torch.Tensor:
        if x.numel() <= n:
            return x
        # Indices drawn on the CPU (the same draws whatever x's device), applied where x lives.
        idx = torch.randint(x.numel(), (n,), generator=self._gen, device="cpu")
        return x[idx.to(x.device)]

    def _observe(self, x: torch.Tensor) -> None:
        x = self._sub(x, self.samples_per_batch).abs().cpu()  # subsampled on x's device: only n values cross
        self._samples = self._sub(torch.cat([self._samples, x]), self.max_samples)

    def _range(self, bits: int) -> tuple[float, float]:
        t = float(torch.quantile(self._samples, self.percentile / 100.0))
        return self._threshold_range(t)


@register_observer("kl")
class KLObserver(Observer):
    """Entropy calibration (Migacz, "8-bit Inference with TensorRT", NVIDIA GTC 2017).

    Builds a ``bins``-bin histogram of ``|x|`` over all batches (re-binned when a larger value
    arrives; exact zeros are left out, being representable at any threshold). For each candidate
    threshold ``i`` bins wide it compares the reference distribution ``P`` (the first ``i`` bins,
    the mass beyond folded into the last) with ``Q``, the first ``i`` bins merged into the number of
    levels available at ``bits`` bits and expanded back over their non-empty bins, and returns the
    threshold of least ``KL(P || Q)``.

    Args:
        bins: Histogram bins (TensorRT uses 2048).

    Example:
        >>> import torch
        >>> x = torch.cat([torch.randn(100_000), torch.tensor([100.0])])  # one outlier
        >>> obs = KLObserver()
        >>> obs.observe(x)
        >>> lo, hi = obs.range(8)
        >>> lo == -hi and hi < 20
        True
    """

    def __init__(self, bins: int = 2048) -> None:
        super().__init__()
        if bins < 256:
            raise QuantizationError(f"kl observer needs at least 256 bins, got {bins!r}")
        self.bins = bins
        self.hist = torch.zeros(bins, dtype=torch.float64, device="cpu")
        self.hist_max = 0.0

    def _observe(self, x: torch.Tensor) -> None:
        a = x.abs().cpu()  # the histogram is CPU bookkeeping (CUDA's histc is not deterministic)
        a = a[a > 0]  # exact zeros are representable at any threshold: leave them out of the histogram
        if a.numel() == 0:
            return
        amax = float(a.max())
        if amax > self.hist_max:
            if self.hist_max > 0 and self.hist.sum() > 0:  # re-bin old counts into the wider range
                centers = (torch.arange(self.bins, dtype=torch.float64, device="cpu") + 0.5) * (
                    self.hist_max / self.bins
                )
                idx = (centers / (amax / self.bins)).long().clamp_(max=self.bins - 1)
                self.hist = torch.bincount(idx, weights=self.hist, minlength=self.bins)
            self.hist_max = amax
        self.hist += torch.histc(a, self.bins, 0.0, self.hist_max).double()

    def _range(self, bits: int) -> tuple[float, float]:
        if self.hist_max == 0:
            return (0.0, 0.0)
        levels = 2 ** (bits - 1) if self.min_val < 0 else 2**bits
        i = _kl_threshold_bin(self.hist.cpu().numpy(), levels)
        return self._threshold_range(i * self.hist_max / self.bins)


def _kl_threshold_bin(hist: np.ndarray, levels: int) -> int:
    """Number of leading bins (the clip threshold) minimising KL(P || Q); see :class:`KLObserver`."""
    n = len(hist)
    if levels >= n:
        return n
    total_tail = np.concatenate([np.cumsum(hist[::-1])[::-1], [0.0]])  # total_tail[i] = sum(hist[i:])
    best_i, best_kl = n, math.inf
    for i in range(levels, n + 1):
        p = hist[:i].copy()
        p[-1] += total_tail[i]
        if p.sum() == 0:
            continue
        nonzero = p > 0
        chunk = (np.arange(i) * levels) // i
        sums = np.bincount(chunk, weights=hist[:i], minlength=levels)
        counts = np.bincount(chunk, weights=nonzero.astype(np.float64), minlength=levels)
        q = np.where(nonzero, sums[chunk] / np.maximum(counts[chunk], 1.0), 0.0)
        p = p / p.sum()
        qs = q.sum()
        if qs == 0:
            continue
        q = np.maximum(q / qs, 1e-10)
        kl = float(np.sum(p[nonzero] * np.log(p[nonzero] / q[nonzero])))
        if kl < best_kl:
            best_i, best_kl = i, kl
    return best_i
