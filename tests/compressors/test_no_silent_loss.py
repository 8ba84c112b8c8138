"""No silent loss: what cannot be pruned says why (op, node, module); no layer goes unseen; a channel plan
on a graph that cannot prune channels is an error, never an empty plan."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from slimtune.compressors import CompressionPlan, trace
from slimtune.errors import PlanError, TraceError
from slimtune.examples.zoo import ZOO, Conv2dSame


def test_conv_subclasses_calling_f_conv2d_are_seen():
    model, x = ZOO["efficientnet_same_swish"].build()
    graph = trace(model, x)
    convs = [n for n, m in model.named_modules() if isinstance(m, Conv2dSame)]
    assert len(convs) == 8 and set(convs) <= set(graph.layers)
    report = graph.layer_report().set_index("layer")
    for name in convs:
        assert report.loc[name, "out"] or report.loc[name, "in"], name
    # the memory-efficient Swish (a custom autograd function) passes channels through
    assert graph.groups["stem"].prunable and graph.coverage() == 1.0


class _Cumsum(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.out = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.out(torch.cumsum(F.relu(self.conv(x)), dim=1)).mean((2, 3))


class _Body(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = _Cumsum()
        self.unused = nn.Linear(4, 4)  # never called

    def forward(self, x):
        return self.block(x)


def test_unknown_op_pins_with_op_node_and_module():
    graph = trace(_Body(), torch.randn(2, 3, 8, 8))
    g = graph.groups["block.conv"]
    assert not g.prunable
    assert "cumsum" in g.reason and "node 'cumsum'" in g.reason and "module 'block'" in g.reason
    lines = graph.explain()
    assert any("block.conv" in ln and "cumsum" in ln for ln in lines)
    report = graph.layer_report().set_index("layer")
    assert report.loc["unused", "calls"] == 0 and "not called" in report.loc["unused", "reason"]
    assert any("'unused'" in ln and "not called" in ln for ln in lines)


def test_channel_plan_without_prunable_groups_is_an_error():
    # every group pinned: the error names the groups and why, instead of an empty plan
    net = nn.Sequential(nn.Linear(4, 3))
    graph = trace(net, torch.randn(2, 4))
    with pytest.raises(PlanError, match="reaches the model output"):
        CompressionPlan.uniform(graph, 0.5)
    # sparsity 0 stays a valid (empty) plan
    assert CompressionPlan.uniform(graph, 0.0).prune == {}


def test_frontend_can_be_chosen():
    model, x = ZOO["split_block"].build()
    assert trace(model, x, frontend="export").frontend == "export"
    assert trace(model, x, frontend="fx").frontend == "fx"
    with pytest.raises(ValueError, match="frontend 'jit' is unknown"):
        trace(model, x, frontend="jit")
    hf, ids = ZOO["hf_bert"].build()
    with pytest.raises(TraceError, match="torch.fx cannot trace"):
        trace(hf, ids, frontend="fx", strict=True)


class _FixedSize(nn.Module):
    """A reshape that fixes the head count with a literal: export graphs assume sizes follow the
    tensor, and the check on the rebuilt model catches this one."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(16, 48)
        self.proj = nn.Linear(16, 16)
        self.embed = nn.Linear(8, 16)

    def forward(self, x):
        if x.shape[1] > 100:  # shape-dependent control flow: fx cannot trace this model
            x = x[:, :100]
        b, n, _ = x.shape
        q, k, v = self.qkv(self.embed(x)).reshape(b, n, 3, -1, 4).permute(2, 0, 3, 1, 4).unbind(0)
        y = F.scaled_dot_product_attention(q, k, v, scale=0.5).transpose(1, 2).reshape(b, n, 16)  # 16: fixed
        return self.proj(y)


def test_export_check_pins_groups_whose_rebuild_fails():
    graph = trace(_FixedSize(), torch.randn(2, 5, 8))
    assert graph.frontend == "export"
    heads = graph.groups["qkv"]
    assert heads.size == 4 and not heads.prunable and "rebuilt model" in heads.reason
    assert graph.groups["embed"].prunable
    # the check is what found it
    unchecked = trace(_FixedSize(), torch.randn(2, 5, 8), check=False)
    assert unchecked.groups["qkv"].prunable
