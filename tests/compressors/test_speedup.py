"""Speedup is exact: the physically smaller model computes what the masked model computes."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn as nn

from slimtune.compressors import CRITERIA, CompressionPlan, compress, speedup, trace
from slimtune.examples.models import REFERENCE_MODELS, resnet20

SPARSITIES = (0.25, 0.5, 0.75)


def _data(shape, n_batches=2, batch=8):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(batch, *shape, generator=g), torch.randint(0, 10, (batch,), generator=g)) for _ in range(n_batches)]


def _channels(module: nn.Module) -> tuple[int, int]:
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    return module.in_channels, module.out_channels


# SCOP learns over many passes (minutes on the larger models here); its compressions are checked in test_scop.py
@pytest.mark.parametrize("criterion", sorted(set(CRITERIA) - {"scop", "scop_vae"}))
@pytest.mark.parametrize("name", sorted(REFERENCE_MODELS))
def test_speedup_matches_masked_model(name, criterion):
    factory, shape = REFERENCE_MODELS[name]
    model = factory().eval()
    x = torch.randn(4, *shape)
    data = _data(shape)
    graph = trace(model, x)
    original = {n: _channels(m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    for s in SPARSITIES:
        plan = CompressionPlan.uniform(graph, s, criterion)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # bn_scale falls back to l1 on groups without BN
            masked = compress(model, plan, x, speedup=False, data=data).eval()
            small = compress(model, plan, x, speedup=True, data=data).eval()
        rebuilt = speedup(masked, x).eval()
        with torch.no_grad():
            y_masked, y_small, y_rebuilt = masked(x), small(x), rebuilt(x)
        assert (y_masked - y_small).abs().max().item() <= 1e-4, (name, criterion, s)
        assert (y_masked - y_rebuilt).abs().max().item() <= 1e-4, (name, criterion, s)
        # every producer of a pruned group lost exactly s * size channels, rounded half up (per block)
        for group in graph.prunable_groups():
            per_block = group.size // group.blocks
            expected = group.size - group.blocks * min(math.floor(s * per_block + 0.5), per_block - 1)
            for m in group.members_with("out"):
                if len(m.positions) == group.size:
                    assert _channels(small.get_submodule(m.layer))[1] == expected, (m.layer, s)
        # every layer has the channel counts the graph predicts, and smaller or equal than before
        counts = graph.channel_counts(plan)
        for layer, (cin, cout) in counts.items():
            assert _channels(small.get_submodule(layer)) == (cin, cout), (layer, s)
            assert _channels(rebuilt.get_submodule(layer)) == (cin, cout), (layer, s)
            assert cin <= original[layer][0] and cout <= original[layer][1]


def test_resnet20_hand_counts_at_half():
    model, x = resnet20(), torch.randn(2, 3, 32, 32)
    small = compress(model, CompressionPlan.uniform(trace(model, x), 0.5), x)
    assert small.conv1.out_channels == 8 and small.bn1.num_features == 8
    assert small.layer1.get_submodule("0").conv1.weight.shape == (8, 8, 3, 3)
    assert small.layer2.get_submodule("0").shortcut[0].weight.shape == (16, 8, 1, 1)
    assert small.layer3.get_submodule("2").conv2.weight.shape == (32, 32, 3, 3)
    assert small.fc.weight.shape == (10, 32)


def test_masks_persist_through_training():
    model, x = resnet20(), torch.randn(8, 3, 32, 32)
    graph = trace(model, x)
    masked = compress(model, CompressionPlan.uniform(graph, 0.5), x, speedup=False).train()
    zero_rows = (masked.conv1.weight.detach().flatten(1).abs().sum(1) == 0).sum().item()
    assert zero_rows == 8
    opt = torch.optim.SGD(masked.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        masked(x).square().mean().backward()
        opt.step()
    assert (masked.conv1.weight.detach().flatten(1).abs().sum(1) == 0).sum().item() == 8
    # and the trained masked model still shrinks exactly
    rebuilt = speedup(masked.eval(), x).eval()
    with torch.no_grad():
        assert torch.allclose(rebuilt(x), masked(x), atol=1e-4)


def test_user_model_is_never_modified():
    model, x = resnet20().train(), torch.randn(2, 3, 32, 32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = CompressionPlan.uniform(trace(model, x), 0.5, "taylor")
    compress(model, plan, x, data=_data((3, 32, 32)))
    compress(model, plan, x, speedup=False, data=_data((3, 32, 32)))
    assert model.training
    assert model.state_dict().keys() == before.keys()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_unstructured_masks_exact_sparsity_and_persist():
    model, x = resnet20(), torch.randn(4, 3, 32, 32)
    graph = trace(model, x)
    plan = CompressionPlan.uniform(graph, 0.6, "level", granularity="unstructured")
    pruned = compress(model, plan, x).train()
    for layer in graph.prunable_layers():
        w = pruned.get_submodule(layer).weight
        assert (w == 0).sum().item() == round(0.6 * w.numel()), layer
    # the smallest magnitudes went first
    w0, w1 = model.conv1.weight.detach().abs(), pruned.conv1.weight.detach()
    assert w0[w1 == 0].max() <= w0[w1 != 0].min()
    opt = torch.optim.SGD(pruned.parameters(), lr=0.1)
    pruned(x).sum().backward()
    opt.step()
    assert (pruned.conv1.weight == 0).sum().item() == round(0.6 * pruned.conv1.weight.numel())


def test_speedup_rejects_unequal_grouped_blocks():
    from slimtune.compressors import SpeedupError
    from slimtune.examples.models import resnext_small

    model, x = resnext_small().eval(), torch.randn(2, 3, 32, 32)
    group = trace(model, x).groups["layer1.0.conv_reduce"]
    assert group.blocks == 4 and group.size == 32
    with torch.no_grad():  # zero channels 0 and 1 everywhere they are produced: both in block 0
        for m in group.members:
            if m.role != "in":
                module = model.get_submodule(m.layer)
                for p in (module.weight, module.bias):
                    if p is not None:
                        p[m.positions[torch.isin(m.channels, torch.tensor([0, 1]))]] = 0
    with pytest.raises(SpeedupError, match="layer1.0.conv_reduce"):
        speedup(model, x)


@pytest.mark.parametrize("criterion", ["l1", "taylor", "apoz"])
def test_precomputed_graph_gives_the_same_model(criterion):
    model, x = resnet20().eval(), torch.randn(2, 3, 32, 32)
    graph = trace(model, x)
    data = _data((3, 32, 32))
    plan = CompressionPlan.uniform(graph, 0.5, criterion)
    a = compress(model, plan, x, data=data).eval()
    b = compress(model, plan, x, data=data, graph=graph).eval()
    assert [p.shape for p in a.parameters()] == [p.shape for p in b.parameters()]
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
