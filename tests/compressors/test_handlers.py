"""Layer handlers: each layer kind prunes exactly, and a new layer kind is one handler."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from slimtune.compressors import CompressionPlan, compress, count_flops, trace
from slimtune.compressors.handlers import Axis, LayerHandler, handler_for, handlers, register_handler
from slimtune.compressors.measures import ResourcePredictor


def _exact(model: nn.Module, x: torch.Tensor, sparsity: float = 0.5) -> nn.Module:
    model.eval()
    graph = trace(model, x)
    plan = CompressionPlan.uniform(graph, sparsity)
    masked = compress(model, plan, x, speedup=False, graph=graph).eval()
    small = compress(model, plan, x, graph=graph).eval()
    fresh = torch.randn_like(x)
    with torch.no_grad():
        assert torch.allclose(masked(fresh), small(fresh), atol=1e-5, rtol=1e-4)
    predicted = ResourcePredictor(graph, x).predict(plan).flops
    assert predicted == float(count_flops(small, x)["macs"].sum())
    return small


def test_transposed_conv_decoder():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.ConvTranspose2d(8, 6, 2, stride=2),
                        nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 2, 1))
    small = _exact(net, torch.randn(2, 3, 8, 8))
    assert (small[2].in_channels, small[2].out_channels) == (4, 3) and small[2].weight.shape[:2] == (4, 3)


def test_group_norm_keeps_equal_groups():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.SiLU(), nn.Conv2d(8, 2, 1))
    graph = trace(net, torch.randn(2, 3, 6, 6))
    assert graph.groups["0"].blocks == 2
    small = _exact(net, torch.randn(2, 3, 6, 6))
    assert small[1].num_channels == 4 and small[1].num_groups == 2


def test_rms_norm_and_layer_norm_normalise_over_kept_channels():
    for norm in (nn.RMSNorm(16), nn.LayerNorm(16)):
        net = nn.Sequential(nn.Linear(8, 16), norm, nn.GELU(), nn.Linear(16, 3))
        small = _exact(net, torch.randn(4, 5, 8))
        assert tuple(small[1].normalized_shape) == (8,)


@pytest.mark.parametrize("conv, shape", [(nn.Conv1d, (2, 3, 12)), (nn.Conv3d, (2, 3, 4, 6, 6))])
def test_conv1d_and_conv3d(conv, shape):
    net = nn.Sequential(conv(3, 8, 3, padding=1), nn.ReLU(), conv(8, 8, 3, padding=1, groups=8), conv(8, 2, 1))
    small = _exact(net, torch.randn(*shape))
    assert small[2].groups == small[2].in_channels == 4


class ScaledLinear(nn.Module):
    """A user's layer: a weight and a per-output scale, used functionally."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin) * 0.3)
        self.scale = nn.Parameter(torch.rand(cout) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight) * self.scale


class ScaledLinearHandler(LayerHandler):
    """The one file a new layer kind needs."""

    name = "scaled_linear_test"
    kind = "linear"
    types = (ScaledLinear,)
    roles = ("out", "in")

    def propagate(self, p: Any, call: Any) -> Any:
        from slimtune.compressors._values import Chan

        x = call.first_chan()
        if x is not None:
            p.member(call.name, "in", x.labels)
        out = p.layer_source(call.name, call.module.weight.shape[0])
        p.member(call.name, "out", out)
        return Chan(out, len(call.out_shape) - 1, len(call.out_shape))

    def axes(self, module: nn.Module, role: str) -> list[Axis]:
        return {"out": [Axis("weight", 0), Axis("scale", 0, score=False)], "in": [Axis("weight", 1)]}.get(role, [])

    def macs(self, module: nn.Module, x: Any, y: Any) -> tuple[float, float]:
        return float(y.numel() * module.weight.shape[1]), 0.0


def test_a_new_layer_kind_is_one_handler():
    net = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), ScaledLinear(10, 12), nn.ReLU(), nn.Linear(12, 2))
    x = torch.randn(3, 6)
    before = trace(net, x)
    # without a handler, the layer is traced through: its weight is a parameter used directly
    assert "ScaledLinear" not in {info.type for info in before.layers.values()}
    handler = register_handler(ScaledLinearHandler())
    try:
        assert handler_for(net[2]) is handler and handlers()[0] is handler
        small = _exact(net, x)
        assert small[2].weight.shape == (6, 5) and small[2].scale.shape == (6,)
    finally:
        from slimtune.compressors.handlers._base import _HANDLERS

        _HANDLERS.remove(handler)


def test_prelu_with_a_slope_per_channel():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.PReLU(8), nn.Conv2d(8, 2, 1))
    small = _exact(net, torch.randn(2, 3, 6, 6))
    assert small[1].weight.shape == (4,)


class _Stats(nn.Module):
    """Global max and standard deviation pooling, combined: reductions over other dims than the channels."""

    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        y = self.c(x)
        return self.fc(torch.maximum(torch.max(y.flatten(2), dim=2).values, y.std(dim=(2, 3))))


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_max_and_std_reductions_follow_the_channels(frontend):
    model, x = _Stats().eval(), torch.randn(2, 3, 8, 8)
    graph = trace(model, x, frontend=frontend)
    assert graph.groups["c"].prunable, graph.groups["c"].reason
    plan = CompressionPlan.uniform(graph, 0.5)
    masked, small = compress(model, plan, x, speedup=False, graph=graph), compress(model, plan, x, graph=graph)
    assert torch.allclose(masked(x), small(x), atol=1e-5)
