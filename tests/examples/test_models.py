"""The reference architectures: forward shapes, fx-traceability and the structures they must exercise."""

from __future__ import annotations

import operator

import pytest
import torch
import torch.fx
from torch import nn

from slimtune.examples.models import REFERENCE_MODELS


def _build(name: str) -> tuple[nn.Module, torch.Tensor]:
    factory, input_shape = REFERENCE_MODELS[name]
    torch.manual_seed(0)
    model = factory()
    return model, torch.randn(2, *input_shape)


def _call_functions(model: nn.Module) -> set[object]:
    graph = torch.fx.symbolic_trace(model).graph
    return {node.target for node in graph.nodes if node.op == "call_function"}


def _convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def test_registry_names() -> None:
    assert set(REFERENCE_MODELS) == {"mlp", "vgg", "resnet20", "mobilenetv2", "densenet", "inception", "resnext"}
    assert REFERENCE_MODELS["mlp"][1] == (64,)


@pytest.mark.parametrize("name", sorted(REFERENCE_MODELS))
def test_forward_shape_and_eval_mode(name: str) -> None:
    model, x = _build(name)
    assert not model.training
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(REFERENCE_MODELS))
def test_fx_trace_gives_identical_output(name: str) -> None:
    model, x = _build(name)
    traced = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        expected = model(x)
        actual = traced(x)
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(REFERENCE_MODELS))
def test_batchnorm_statistics_are_not_trivial(name: str) -> None:
    model, _ = _build(name)
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
        assert not torch.allclose(bn.running_mean, torch.zeros_like(bn.running_mean))


def test_mlp_accepts_image_input() -> None:
    model, _ = _build("mlp")
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x.view(3, 64)))


def test_vgg_flattens_feature_map_into_linear() -> None:
    model, _ = _build("vgg")
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(2048, 256), (256, 10)]
    assert not any(isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)) for m in model.modules())


def test_resnet20_structure() -> None:
    model, _ = _build("resnet20")
    convs = _convs(model)
    assert len(convs) == 1 + 3 * 3 * 2 + 2  # stem, 9 blocks of two convs, two 1×1 shortcuts
    shortcuts = [c for c in convs if c.kernel_size == (1, 1)]
    assert [(c.in_channels, c.out_channels, c.stride) for c in shortcuts] == [(16, 32, (2, 2)), (32, 64, (2, 2))]
    assert operator.add in _call_functions(model)


def test_mobilenetv2_structure() -> None:
    model, _ = _build("mobilenetv2")
    depthwise = [c for c in _convs(model) if c.groups > 1]
    assert depthwise and all(c.groups == c.in_channels == c.out_channels for c in depthwise)
    assert any(isinstance(m, nn.ReLU6) for m in model.modules())
    blocks = [m for m in model.modules() if type(m).__name__ == "InvertedResidual"]
    assert 6 <= len(blocks) <= 8
    # the first block has expansion factor 1: no 1×1 expansion before its depthwise conv
    assert blocks[0].conv[0].groups > 1
    assert any(b.use_residual for b in blocks)
    assert operator.add in _call_functions(model)


def test_resnext_has_grouped_convs_with_equal_and_unequal_widths() -> None:
    model, _ = _build("resnext")
    grouped = [c for c in _convs(model) if c.groups > 1]
    assert any(c.in_channels == c.out_channels and c.groups == 4 for c in grouped)
    assert any(c.in_channels != c.out_channels for c in grouped)
    # none of them is depthwise: a group holds several channels
    assert all(c.in_channels // c.groups > 1 for c in grouped)
    assert operator.add in _call_functions(model)


@pytest.mark.parametrize("name", ["densenet", "inception"])
def test_concat_models_use_torch_cat(name: str) -> None:
    model, _ = _build(name)
    assert torch.cat in _call_functions(model)


def test_densenet_concatenates_inside_dense_blocks() -> None:
    model, _ = _build("densenet")
    graph = torch.fx.symbolic_trace(model).graph
    cats = [n for n in graph.nodes if n.op == "call_function" and n.target is torch.cat]
    assert len(cats) == 6  # 2 blocks × 3 layers
    assert any(isinstance(m, nn.AvgPool2d) for m in model.modules())  # transition


def test_inception_head_consumes_concatenation() -> None:
    model, _ = _build("inception")
    graph = torch.fx.symbolic_trace(model).graph
    cats = [n for n in graph.nodes if n.op == "call_function" and n.target is torch.cat]
    assert len(cats) == 2
    assert all(len(n.args[0]) == 4 for n in cats)  # four parallel branches
