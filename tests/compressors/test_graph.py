"""Dependency groups found by trace() on the reference models and on hand-written patterns."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from slimtune.compressors import CompressionPlan, compress, trace
from slimtune.errors import PlanError, TraceError
from slimtune.examples.models import REFERENCE_MODELS, densenet_small, mobilenet_v2_small, resnet20, resnext_small, vgg_small


def _roles(group):
    return {(m.layer, m.role) for m in group.members}


def test_resnet20_residual_groups():
    g = trace(resnet20(), torch.randn(1, 3, 32, 32))
    # inner conv of a block: conv1 -> bn1 -> conv2
    inner = g.groups["layer1.0.conv1"]
    assert inner.prunable and inner.size == 16
    assert _roles(inner) == {("layer1.0.conv1", "out"), ("layer1.0.bn1", "norm"), ("layer1.0.conv2", "in")}
    # stage 1 residual stream: the stem and every block's second conv are one group
    stream = g.groups["conv1"]
    producers = {m.layer for m in stream.members_with("out")}
    assert producers == {"conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2"}
    consumers = {m.layer for m in stream.members_with("in")}
    assert {"layer1.0.conv1", "layer2.0.conv1", "layer2.0.shortcut.0"} <= consumers
    # strided 1x1 shortcut starts the stage-2 stream
    stream2 = g.groups["layer2.0.shortcut.0"]
    assert {m.layer for m in stream2.members_with("out")} == {
        "layer2.0.shortcut.0", "layer2.0.conv2", "layer2.1.conv2", "layer2.2.conv2"
    }
    assert not g.groups["fc"].prunable and "output" in g.groups["fc"].reason
    assert len(g.prunable_groups()) == 12


def test_mobilenet_depthwise_passes_channels_through():
    g = trace(mobilenet_v2_small(), torch.randn(1, 3, 32, 32))
    grp = g.groups["features.2.conv.0"]  # expand conv of the first expanding block
    roles = _roles(grp)
    assert ("features.2.conv.3", "dw") in roles  # depthwise conv
    assert ("features.2.conv.6", "in") in roles  # project conv
    dw = g.model.get_submodule("features.2.conv.3")
    assert dw.groups == dw.in_channels == grp.size


def test_densenet_concat_maps_channel_ranges():
    g = trace(densenet_small(), torch.randn(1, 3, 32, 32))
    new = g.groups["features.0.conv2"]  # 12 channels appended by the first dense layer
    stem = g.groups["conv0"]  # 24 channels of the stem
    # the second dense layer's BN and conv see [stem(24), new(12)]: the new channels at 24..35
    norm = next(m for m in new.members if m.layer == "features.1.norm1")
    assert norm.positions.tolist() == list(range(24, 36))
    assert norm.channels.tolist() == list(range(12))
    stem_norm = next(m for m in stem.members if m.layer == "features.1.norm1")
    assert stem_norm.positions.tolist() == list(range(24))


def test_vgg_flatten_maps_channels_to_feature_blocks():
    g = trace(vgg_small(), torch.randn(1, 3, 32, 32))
    last = g.groups["features.11"]
    fc = next(m for m in last.members if m.layer == "fc1" and m.role == "in")
    assert len(fc.positions) == 128 * 16
    # channel c occupies features c*16 .. c*16+15 (channel-major flatten)
    assert fc.channels[:32].tolist() == [0] * 16 + [1] * 16
    assert fc.positions[:16].tolist() == list(range(16))


def test_resnext_grouped_conv_blocks():
    g = trace(resnext_small(), torch.randn(1, 3, 32, 32))
    inner = g.groups["layer1.0.conv_reduce"]
    assert inner.blocks == 4 and inner.prunable
    assert ("layer1.0.conv_grouped", "dw") in _roles(inner)
    assert inner.n_prune(0.5) % 4 == 0
    # a grouped conv with in != out (32 -> 64, 2 groups): inputs and outputs both pruned
    # equally per conv group
    assert g.groups["stem.0"].prunable and g.groups["stem.0"].blocks == 2
    assert ("stem.3", "in") in _roles(g.groups["stem.0"])
    assert g.groups["stem.3"].blocks == 2


class _Functional(nn.Module):
    """Functional ops: F.relu, x + y, torch.cat, squeeze-excite mul, x.view, x.mean."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.c = nn.Conv2d(8, 6, 1)
        self.se1 = nn.Linear(14, 4)
        self.se2 = nn.Linear(4, 14)
        self.head = nn.Conv2d(14, 16, 1)
        self.fc = nn.Linear(16 * 4 * 4, 5)

    def forward(self, x):
        a = F.relu(self.a(x))
        b = self.b(a) + a  # residual: a and b coupled
        c = F.relu(self.c(b))
        y = torch.cat([b, c], 1)  # 8 + 6 channels
        s = torch.sigmoid(self.se2(F.relu(self.se1(y.mean((2, 3))))))
        y = y * s.view(s.size(0), -1, 1, 1)
        y = F.relu(self.head(y))
        y = F.avg_pool2d(y, 2)
        return self.fc(y.view(y.size(0), -1))


def test_functional_ops_are_followed():
    model = _Functional()
    x = torch.randn(2, 3, 8, 8)
    g = trace(model, x)
    # the residual add couples a and b; the squeeze-excite multiply over cat([b, c]) couples
    # se2's outputs with every concatenated channel, so a, b, c and se2 form one group
    grp = g.groups["a"]
    assert {m.layer for m in grp.members_with("out")} == {"a", "b", "c", "se2"}
    assert grp.size == 14 and grp.prunable and "c" not in g.groups
    se1_in = next(m for m in grp.members if m.layer == "se1" and m.role == "in")
    assert se1_in.positions.tolist() == list(range(14))
    assert g.groups["head"].prunable and g.groups["se1"].prunable
    for s in (0.25, 0.5):
        plan = CompressionPlan.uniform(g, s)
        masked = compress(model, plan, x, speedup=False).eval()
        small = compress(model, plan, x).eval()
        assert torch.allclose(masked(x), small(x), atol=1e-5)
        assert small.head.out_channels == 16 - round(16 * s)
        assert small.head.in_channels == 14 - round(14 * s)
        assert small.fc.in_features == (16 - round(16 * s)) * 16  # 4x4 positions per channel


class _Split(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.b = nn.Conv2d(4, 4, 1)
        self.c = nn.Conv2d(3, 6, 1)
        self.d = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        a1, a2 = torch.chunk(self.a(x), 2, dim=1)
        c = self.c(x)
        return self.b(a1) + a2 + self.d(c[:, :4]) + c[:, 2:]


def test_fixed_channel_slices_pin_their_groups():
    g = trace(_Split(), torch.randn(2, 3, 4, 4))
    assert not g.groups["c"].prunable and "indexing" in g.groups["c"].reason
    # chunk(2) keeps its halves equal: channel j of each half goes together (4 channels, 8 positions)
    a = g.groups["a"]
    assert a.size == 4 and next(m for m in a.members if m.layer == "a").channels.tolist() == [0, 1, 2, 3] * 2
    # ... but a2 is added to c[:, 2:], a fixed slice
    assert not a.prunable and "fixed per-channel tensor" in a.reason


class _LiteralView(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 3)
        self.norm_conv = nn.Conv2d(3, 4, 1)
        self.ln = nn.LayerNorm([4, 4, 4])

    def forward(self, x):
        y = self.conv(x).view(-1, 128)  # fixed size: pruning would break this line
        z = self.ln(self.norm_conv(x)).flatten(1)
        return self.fc(y) + z.sum(1, keepdim=True)


def test_unfollowable_uses_pin_groups_with_reasons():
    g = trace(_LiteralView(), torch.randn(2, 3, 4, 4))
    assert not g.groups["conv"].prunable and "literal" in g.groups["conv"].reason
    assert not g.groups["norm_conv"].prunable and "LayerNorm" in g.groups["norm_conv"].reason
    with pytest.raises(PlanError, match="conv"):
        CompressionPlan.from_sparsities({"conv": 0.5}).validate(g)


class _Shared(nn.Module):
    """The same conv applied twice (weight sharing)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.shared = nn.Conv2d(8, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.out = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = F.relu(self.bn(self.shared(x)))
        x = F.relu(self.shared(x))
        return self.out(x).mean((2, 3))


def test_weight_sharing_couples_calls():
    model, x = _Shared(), torch.randn(2, 3, 8, 8)
    g = trace(model, x)
    assert g.layers["shared"].calls == 2
    # shared's input (stem and its own output) and output are one group
    assert {m.layer for m in g.groups["stem"].members_with("out")} == {"stem", "shared"}
    small = compress(model, CompressionPlan.uniform(g, 0.5), x)
    masked = compress(model, CompressionPlan.uniform(g, 0.5), x, speedup=False)
    assert small.shared.weight.shape == (4, 4, 3, 3)
    assert torch.allclose(small.eval()(x), masked.eval()(x), atol=1e-5)


class _Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = _Branchy()
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(self.body(x))


class _Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 8)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
            return self.lin(x)
        return -self.lin(x)


def test_untraceable_model_error_names_module_and_falls_back():
    model, x = _Untraceable(), torch.randn(3, 4)
    # both frontends are tried and both reasons given: the module fx was in, then export's error
    with pytest.raises(TraceError, match=r"module 'body' \(_Branchy\).*torch\.export cannot capture"):
        trace(model, x, strict=True)
    with pytest.warns(UserWarning, match="unstructured"):
        g = trace(model, x)
    assert not g.traced and g.groups == {}
    assert set(g.prunable_layers()) == {"body.lin", "fc"}
    with pytest.raises(PlanError, match="unstructured"):
        CompressionPlan.from_sparsities({"body.lin": 0.5}).validate(g)
    with pytest.raises(PlanError, match="tracing failed"):  # never an empty channel plan
        CompressionPlan.uniform(g, 0.5)
    plan = CompressionPlan.uniform(g, 0.5, granularity="unstructured")
    with pytest.warns(UserWarning):
        pruned = compress(model, plan, x)
    assert (pruned.body.lin.weight == 0).float().mean().item() == pytest.approx(0.5)
    assert (pruned.fc.weight == 0).sum().item() == 8


@pytest.mark.parametrize("name", sorted(REFERENCE_MODELS))
def test_layers_record_shapes(name):
    factory, shape = REFERENCE_MODELS[name]
    model = factory()
    g = trace(model, torch.randn(2, *shape))
    assert g.traced and g.prunable_groups()
    for layer, info in g.layers.items():
        assert info.in_shape[0] == 2 and info.out_shape[0] == 2, layer
    convs = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert set(g.prunable_layers()) == set(convs)


def test_trace_leaves_model_untouched():
    model = resnet20().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trace(model, torch.randn(4, 3, 32, 32))
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
