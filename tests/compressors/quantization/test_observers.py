"""Activation-range observers: minmax, moving average, percentile, KL (entropy) calibration."""

from __future__ import annotations

import pytest
import torch

from slimtune.compressors.quantization import OBSERVERS, QuantizationError, fake_quantize_activation, make_observer


def _observe(name: str, x: torch.Tensor, chunks: int = 4, **kwargs: object):
    obs = make_observer(name, **kwargs)
    for c in x.chunk(chunks):
        obs.observe(c)
    return obs


def _mse(x: torch.Tensor, lo: float, hi: float, bits: int = 8) -> float:
    return float(((fake_quantize_activation(x, bits, lo, hi) - x) ** 2).mean())


@pytest.fixture(scope="module")
def heavy_tailed() -> torch.Tensor:
    """Student-t (4 dof) with two huge outliers, shuffled."""
    g = torch.Generator().manual_seed(0)
    body = torch.distributions.StudentT(4.0).sample((1_000_000,))
    x = torch.cat([body, torch.tensor([500.0, -500.0])])
    return x[torch.randperm(x.numel(), generator=g)]


def test_registry() -> None:
    assert {"minmax", "moving_average", "percentile", "kl"} <= set(OBSERVERS)
    with pytest.raises(QuantizationError, match="unknown observer 'nope'"):
        make_observer("nope")


@pytest.mark.parametrize("name", ["minmax", "moving_average", "percentile", "kl"])
def test_range_before_data_is_an_error(name: str) -> None:
    with pytest.raises(QuantizationError, match="no data"):
        make_observer(name).range(8)


def test_minmax_is_the_running_extremes() -> None:
    obs = _observe("minmax", torch.tensor([1.0, -2.0, 0.5, 4.0, float("nan"), -0.1]), chunks=3)
    assert obs.range(8) == (-2.0, 4.0)


def test_moving_average_tracks_a_shifting_range() -> None:
    obs = make_observer("moving_average", momentum=0.5)
    obs.observe(torch.tensor([-1.0, 1.0]))
    assert obs.range(8) == (-1.0, 1.0)
    obs.observe(torch.tensor([-3.0, 3.0]))
    assert obs.range(8) == (-2.0, 2.0)
    for _ in range(30):  # converges to the new range
        obs.observe(torch.tensor([-10.0, 10.0]))
    lo, hi = obs.range(8)
    assert lo == pytest.approx(-10.0, abs=1e-6) and hi == pytest.approx(10.0, abs=1e-6)
    with pytest.raises(QuantizationError, match="momentum 0"):
        make_observer("moving_average", momentum=0)


def test_percentile_clips_below_the_max(heavy_tailed: torch.Tensor) -> None:
    obs = _observe("percentile", heavy_tailed, percentile=99.9)
    lo, hi = obs.range(8)
    expected = float(torch.quantile(heavy_tailed.abs()[:500_000], 0.999))
    assert lo == -hi and hi < 500.0
    assert hi == pytest.approx(expected, rel=0.1)


def test_threshold_observers_use_zero_lower_bound_for_non_negative_data() -> None:
    x = torch.distributions.Laplace(0.0, 1.0).sample((100_000,)).relu()
    for name in ("percentile", "kl"):
        lo, hi = _observe(name, x).range(8)
        assert lo == 0.0 and 0.0 < hi <= float(x.max())


def test_kl_clips_below_the_max_and_beats_minmax_on_heavy_tails(heavy_tailed: torch.Tensor) -> None:
    kl = _observe("kl", heavy_tailed).range(8)
    mm = _observe("minmax", heavy_tailed).range(8)
    assert mm == (-500.0, 500.0)
    assert kl[0] == -kl[1] and 1.0 < kl[1] < 100.0
    assert _mse(heavy_tailed, *kl) < 0.75 * _mse(heavy_tailed, *mm)


def test_kl_threshold_shrinks_with_fewer_bits() -> None:
    x = torch.distributions.Laplace(0.0, 1.0).sample((200_000,))
    obs = _observe("kl", x)
    assert obs.range(4)[1] < obs.range(8)[1]


def test_kl_histogram_rebins_when_the_range_grows() -> None:
    obs = make_observer("kl", bins=256)
    obs.observe(torch.rand(10_000))
    obs.observe(torch.rand(10_000) * 4)  # wider batch
    assert obs.hist_max == pytest.approx(4.0, rel=1e-3)
    assert float(obs.hist.sum()) == pytest.approx(20_000)
    with pytest.raises(QuantizationError, match="256 bins"):
        make_observer("kl", bins=16)
