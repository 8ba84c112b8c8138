"""Tests of the pruning criteria registry (slimtune.compressors.criteria) on hand-built groups."""

from __future__ import annotations

import math
import warnings
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

from slimtune.compressors import trace
from slimtune.compressors._types import Group, Member, Tap
from slimtune.compressors.criteria import (
    CRITERIA,
    CriterionContext,
    get_criterion,
    l1,
    l2,
    level,
    register_criterion,
    score_group,
)
from slimtune.compressors.criteria._common import channel_matrix, scatter_channels
from slimtune.errors import CriterionError

EPS_BN = 1e-5


class Net(nn.Module):
    """conv0 → bn → relu → conv1: one group of 4 channels (conv0 out, bn, conv1 in)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.conv1 = nn.Conv2d(4, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1(self.relu(self.bn(self.conv0(x))))


def ar(n: int) -> torch.Tensor:
    return torch.arange(n)


def net_group(taps: list[Tap] | None = None) -> Group:
    return Group(
        "conv0",
        4,
        [
            Member("conv0", "out", ar(4), ar(4)),
            Member("bn", "norm", ar(4), ar(4)),
            Member("conv1", "in", ar(4), ar(4)),
        ],
        taps or [],
    )


def conv1_group() -> Group:
    return Group("conv1", 2, [Member("conv1", "out", ar(2), ar(2))], [Tap("conv1", 1, ar(2), ar(2))])


@pytest.fixture
def net() -> Net:
    torch.manual_seed(0)
    return Net()


class CallCounter:
    """Counts forward calls of a module."""

    def __init__(self, module: nn.Module) -> None:
        self.n = 0
        module.register_forward_hook(self._hook)

    def _hook(self, *_: object) -> None:
        self.n += 1


# ---------------------------------------------------------------------------------------- registry
def test_registry_holds_every_criterion() -> None:
    expected = {"level", "l1", "l2", "fpgm", "taylor", "apoz", "mean_activation", "bn_scale"}
    assert expected <= set(CRITERIA)
    for name in expected:
        assert get_criterion(name) is CRITERIA[name]


def test_unknown_criterion_lists_known_names(net: Net) -> None:
    with pytest.raises(CriterionError, match="nope") as e:
        get_criterion("nope")
    assert "l1" in str(e.value) and "fpgm" in str(e.value)
    with pytest.raises(CriterionError, match=r"unknown criterion 'nope'; known: apoz, "):
        score_group(net_group(), "nope", CriterionContext(net))


def test_duplicate_registration_is_an_error() -> None:
    with pytest.raises(CriterionError, match="already registered"):

        @register_criterion("l1")
        def other(group: Group, ctx: CriterionContext) -> torch.Tensor:
            return torch.zeros(group.size)

    assert CRITERIA["l1"] is l1
    register_criterion("l1")(l1)  # the same function again (a module reload) is fine
    assert CRITERIA["l1"] is l1


def test_score_group_checks_the_shape(net: Net) -> None:
    @register_criterion("_test_bad_shape")
    def bad(group: Group, ctx: CriterionContext) -> torch.Tensor:
        return torch.zeros(group.size + 1)

    try:
        with pytest.raises(CriterionError, match="shape"):
            score_group(net_group(), "_test_bad_shape", CriterionContext(net))
    finally:
        CRITERIA.unregister("_test_bad_shape")


# ---------------------------------------------------------------------------------------- weight norms
def test_norms_on_constructed_filters(net: Net) -> None:
    values = [1.0, -2.0, 0.0, 0.5]
    with torch.no_grad():
        for c, v in enumerate(values):
            net.conv0.weight[c].fill_(v)
    ctx = CriterionContext(net)
    k = 3 * 3 * 3
    s1 = score_group(net_group(), "l1", ctx)
    s2 = score_group(net_group(), "l2", ctx)
    sl = score_group(net_group(), "level", ctx)
    assert s1.dtype == torch.float32 and s1.shape == (4,)
    torch.testing.assert_close(s1, torch.tensor([k * abs(v) for v in values]))
    torch.testing.assert_close(s2, torch.tensor([math.sqrt(k) * abs(v) for v in values]))
    torch.testing.assert_close(sl, torch.tensor([abs(v) for v in values]))
    for s in (s1, s2, sl):
        assert int(s.argmin()) == 2


def test_norm_roles_option(net: Net) -> None:
    group, ctx = net_group(), CriterionContext(net)
    out = net.conv0.weight.detach().abs().sum((1, 2, 3))
    inn = net.conv1.weight.detach().abs().sum((0, 2, 3))
    gamma = net.bn.weight.detach().abs()
    torch.testing.assert_close(l1(group, ctx, roles=("in",)), inn)
    torch.testing.assert_close(l1(group, ctx, roles=("out", "in")), (out + inn) / 2)
    torch.testing.assert_close(l1(group, ctx, roles=("out", "in", "norm")), (out + inn + gamma) / 3)
    with pytest.raises(CriterionError, match="roles"):
        l1(group, ctx, roles=("bogus",))


def test_producerless_group_is_an_error(net: Net) -> None:
    group = Group("bn", 4, [Member("bn", "norm", ar(4), ar(4))])
    with pytest.raises(CriterionError, match="'bn'"):
        score_group(group, "l1", CriterionContext(net))


def test_repeated_positions_sum_into_channels() -> None:
    # conv (2 channels, 2x2 spatial) -> flatten -> Linear(8, 3): channel c sits at inputs 4c..4c+3
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 2, 1), nn.Flatten(), nn.Linear(8, 3))
    member = Member("2", "in", ar(8), torch.arange(2).repeat_interleave(4))
    group = Group("0", 2, [Member("0", "out", ar(2), ar(2)), member])
    ctx = CriterionContext(model)
    w = model[2].weight.detach()
    blocks = [w[:, 4 * c : 4 * c + 4] for c in range(2)]
    torch.testing.assert_close(l1(group, ctx, roles=("in",)), torch.stack([b.abs().sum() for b in blocks]))
    torch.testing.assert_close(l2(group, ctx, roles=("in",)), torch.stack([b.norm() for b in blocks]))
    torch.testing.assert_close(level(group, ctx, roles=("in",)), torch.stack([b.abs().mean() for b in blocks]))
    # the helper itself
    got = scatter_channels(torch.arange(8.0), member, 2)
    assert got.tolist() == [0 + 1 + 2 + 3, 4 + 5 + 6 + 7]


def test_mean_over_members_with_partial_coverage() -> None:
    model = nn.ModuleDict({"a": nn.Linear(1, 2, bias=False), "b": nn.Linear(1, 2, bias=False)})
    with torch.no_grad():
        model["a"].weight.copy_(torch.tensor([[1.0], [2.0]]))
        model["b"].weight.copy_(torch.tensor([[4.0], [8.0]]))
    group = Group(
        "a",
        3,
        [
            Member("a", "out", ar(2), torch.tensor([0, 1])),  # a holds channels 0, 1
            Member("b", "out", ar(2), torch.tensor([1, 2])),  # b holds channels 1, 2
        ],
    )
    scores = score_group(group, "l1", CriterionContext(model))
    assert scores.tolist() == [1.0, (2.0 + 4.0) / 2, 8.0]


def test_grouped_conv_input_channels() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 1, groups=2)  # weight [6, 2, 1, 1]; inputs 0,1 -> outputs 0-2; inputs 2,3 -> 3-5
    w = conv.weight.detach()[:, :, 0, 0]
    mat = channel_matrix(conv.weight.detach(), dim=1, groups=2)
    assert mat.shape == (4, 3)
    torch.testing.assert_close(mat[0], w[0:3, 0])
    torch.testing.assert_close(mat[3], w[3:6, 1])
    group = Group("x", 4, [Member("", "in", ar(4), ar(4))])
    expected = torch.stack([w[0:3, 0], w[0:3, 1], w[3:6, 0], w[3:6, 1]]).abs().sum(1)
    torch.testing.assert_close(l1(group, CriterionContext(conv), roles=("in",)), expected)


def test_conv_transpose_output_channels() -> None:
    torch.manual_seed(0)
    deconv = nn.ConvTranspose2d(3, 4, 2)  # weight [in=3, out=4, 2, 2]
    group = Group("d", 4, [Member("", "out", ar(4), ar(4))])
    torch.testing.assert_close(
        score_group(group, "l1", CriterionContext(deconv)), deconv.weight.detach().abs().sum((0, 2, 3))
    )


def test_position_out_of_range_is_an_error(net: Net) -> None:
    group = Group("conv0", 5, [Member("conv0", "out", ar(5), ar(5))])
    with pytest.raises(CriterionError, match="conv0"):
        score_group(group, "l1", CriterionContext(net))


def test_missing_layer_is_an_error(net: Net) -> None:
    group = Group("ghost", 4, [Member("ghost", "out", ar(4), ar(4))])
    with pytest.raises(CriterionError, match="ghost"):
        score_group(group, "l2", CriterionContext(net))


def test_pruned_reparametrisation_uses_effective_weight(net: Net) -> None:
    mask = torch.ones_like(net.conv0.weight)
    mask[1] = 0
    prune.custom_from_mask(net.conv0, "weight", mask)
    scores = score_group(net_group(), "l1", CriterionContext(net))
    assert scores[1] == 0 and (scores[[0, 2, 3]] > 0).all()


# ---------------------------------------------------------------------------------------- fpgm
def test_fpgm_median_filter_scores_lowest() -> None:
    conv = nn.Conv2d(2, 5, 1, bias=False)
    pts = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0], [0.0, 0.0]])
    with torch.no_grad():
        conv.weight.copy_(pts[:, :, None, None])
    group = Group("c", 5, [Member("", "out", ar(5), ar(5))])
    scores = score_group(group, "fpgm", CriterionContext(conv))
    assert int(scores.argmin()) == 4
    torch.testing.assert_close(scores[4], torch.tensor(4.0))
    torch.testing.assert_close(scores[0], torch.tensor(2.0 + 2 * math.sqrt(2.0) + 1.0))


def test_fpgm_uses_all_filters_of_the_layer() -> None:
    # the group holds only filters 0 and 1, but distances run over every filter of the layer
    fc = nn.Linear(1, 3, bias=False)
    with torch.no_grad():
        fc.weight.copy_(torch.tensor([[0.0], [1.0], [10.0]]))
    group = Group("c", 2, [Member("", "out", ar(2), ar(2))])
    scores = score_group(group, "fpgm", CriterionContext(fc))
    torch.testing.assert_close(scores, torch.tensor([1.0 + 10.0, 1.0 + 9.0]))


def test_fpgm_leaves_masked_filters_out_of_the_distances() -> None:
    # filters 3 and 4 are pruned by a mask: the others' scores are their distances to each other
    # only (with the masked zeros the sums would grow by each filter's norm), the masked ones score 0
    fc = nn.Linear(1, 5, bias=False)
    with torch.no_grad():
        fc.weight.copy_(torch.tensor([[0.0], [1.0], [3.0], [7.0], [9.0]]))
    prune.custom_from_mask(fc, "weight", torch.tensor([[1.0], [1.0], [1.0], [0.0], [0.0]]))
    group = Group("c", 5, [Member("", "out", ar(5), ar(5))])
    scores = score_group(group, "fpgm", CriterionContext(fc))
    torch.testing.assert_close(scores, torch.tensor([1.0 + 3.0, 1.0 + 2.0, 3.0 + 2.0, 0.0, 0.0]))


# ---------------------------------------------------------------------------------------- bn_scale
def test_bn_scale_is_abs_gamma(net: Net) -> None:
    with torch.no_grad():
        net.bn.weight.copy_(torch.tensor([0.5, -3.0, 0.0, 1.0]))
    scores = score_group(net_group(), "bn_scale", CriterionContext(net))
    assert scores.tolist() == [0.5, 3.0, 0.0, 1.0]


def test_bn_scale_falls_back_to_l1_with_one_warning(net: Net) -> None:
    group = Group("conv1", 2, [Member("conv1", "out", ar(2), ar(2))])
    ctx = CriterionContext(net)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = score_group(group, "bn_scale", ctx)
        second = score_group(group, "bn_scale", ctx)
    msgs = [str(w.message) for w in caught if "bn_scale" in str(w.message)]
    assert len(msgs) == 1 and "'conv1'" in msgs[0]
    torch.testing.assert_close(first, score_group(group, "l1", ctx))
    torch.testing.assert_close(first, second)


# ---------------------------------------------------------------------------------------- taylor
def test_taylor_matches_hand_computed_linear() -> None:
    torch.manual_seed(0)
    fc = nn.Linear(3, 2)
    x = torch.randn(1, 3)
    y = torch.tensor([1])
    group = Group("fc", 2, [Member("", "out", ar(2), ar(2))])
    scores = score_group(group, "taylor", CriterionContext(fc, data=[(x, y)]))
    # cross-entropy on one sample: dL/dz = softmax(z) - onehot(y); dL/dW = dz x^T, dL/db = dz,
    # so sum_j g_cj w_cj + g_c b_c = dz_c * (w_c . x + b_c) = dz_c * z_c
    z = fc(x).detach()[0]
    dz = z.softmax(0) - F.one_hot(y, 2)[0].float()
    torch.testing.assert_close(scores, (dz * z) ** 2)
    assert fc.weight.grad is None and fc.bias.grad is None


def test_taylor_averages_squared_batch_importances() -> None:
    torch.manual_seed(1)
    fc = nn.Linear(3, 2)
    batches = [(torch.randn(4, 3), torch.randint(0, 2, (4,))) for _ in range(3)]
    group = Group("fc", 2, [Member("", "out", ar(2), ar(2))])
    scores = score_group(group, "taylor", CriterionContext(fc, data=batches, max_batches=2))
    per_batch = []
    for x, y in batches[:2]:
        fc.zero_grad()
        F.cross_entropy(fc(x), y).backward()
        per_batch.append(((fc.weight.grad * fc.weight).sum(1) + fc.bias.grad * fc.bias).detach() ** 2)
    torch.testing.assert_close(scores, torch.stack(per_batch).mean(0))


def test_taylor_sums_over_all_members(net: Net) -> None:
    x = torch.randn(2, 3, 8, 8)
    target = torch.randn(2, 2, 4, 4)
    net.train()
    running = net.bn.running_mean.clone()
    ctx = CriterionContext(net, data=[(x, target)], loss_fn=F.mse_loss)
    scores = score_group(net_group(), "taylor", ctx)
    # the criterion runs in eval mode, leaves flags, BN statistics and gradients as they were
    assert net.training and net.bn.training
    assert torch.equal(net.bn.running_mean, running)
    assert all(p.grad is None for p in net.parameters())
    net.eval()
    F.mse_loss(net(x), target).backward()
    c0, bn, c1 = net.conv0, net.bn, net.conv1
    gw = (
        (c0.weight.grad * c0.weight).sum((1, 2, 3))
        + c0.bias.grad * c0.bias
        + bn.weight.grad * bn.weight
        + bn.bias.grad * bn.bias
        + (c1.weight.grad * c1.weight).sum((0, 2, 3))
    )
    torch.testing.assert_close(scores, gw.detach() ** 2, rtol=1e-4, atol=1e-8)


def test_taylor_computes_gradients_once_for_all_groups(net: Net) -> None:
    counter = CallCounter(net.conv0)
    data = [(torch.randn(2, 3, 8, 8), torch.randn(2, 2, 4, 4)) for _ in range(3)]
    ctx = CriterionContext(net, data=data, loss_fn=F.mse_loss)
    a = score_group(net_group(), "taylor", ctx)
    b = score_group(conv1_group(), "taylor", ctx)
    assert counter.n == 3
    assert a.shape == (4,) and b.shape == (2,) and (a > 0).all()


def test_taylor_under_prune_reparametrisation() -> None:
    torch.manual_seed(2)
    fc = nn.Linear(4, 3)
    mask = torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 1.0]])
    plain = nn.Linear(4, 3)
    with torch.no_grad():
        plain.weight.copy_(fc.weight * mask)
        plain.bias.copy_(fc.bias)
    prune.custom_from_mask(fc, "weight", mask)
    data = [(torch.randn(5, 4), torch.randint(0, 3, (5,)))]
    group = Group("fc", 3, [Member("", "out", ar(3), ar(3))])
    got = score_group(group, "taylor", CriterionContext(fc, data=data))
    want = score_group(group, "taylor", CriterionContext(plain, data=data))
    torch.testing.assert_close(got, want)
    assert fc.weight_orig.grad is None and fc.bias.grad is None


def test_taylor_restores_requires_grad(net: Net) -> None:
    net.conv0.weight.requires_grad_(False)
    ctx = CriterionContext(net, data=[(torch.randn(2, 3, 8, 8), torch.randn(2, 2, 4, 4))], loss_fn=F.mse_loss)
    scores = score_group(net_group(), "taylor", ctx)
    assert not net.conv0.weight.requires_grad and net.conv0.bias.requires_grad
    assert (scores > 0).all()


def test_taylor_needs_data_with_targets(net: Net) -> None:
    with pytest.raises(CriterionError, match="taylor.*calibration batches"):
        score_group(net_group(), "taylor", CriterionContext(net))
    with pytest.raises(CriterionError, match="targets"):
        score_group(net_group(), "taylor", CriterionContext(net, data=[torch.randn(2, 3, 8, 8)]))
    with pytest.raises(CriterionError, match="yielded none"):
        score_group(net_group(), "taylor", CriterionContext(net, data=[]))


# ---------------------------------------------------------------------------------------- activations
def act_net() -> tuple[Net, SimpleNamespace, Group]:
    """Net whose conv0 channel c outputs a constant bias[c] (zero weights), BN in eval ≈ identity."""
    torch.manual_seed(0)
    net = Net()
    gm = torch.fx.symbolic_trace(net)
    names = {n.name for n in gm.graph.nodes}
    assert {"conv0", "bn", "relu", "conv1"} <= names
    taps = [Tap("conv0", 1, ar(4), ar(4)), Tap("relu", 1, ar(4), ar(4), activation=True)]
    group = net_group(taps)
    graph = SimpleNamespace(gm=gm, groups={"conv0": group, "conv1": conv1_group()})
    return net, graph, group


def test_apoz_always_negative_channel_scores_lowest() -> None:
    net, graph, group = act_net()
    with torch.no_grad():
        net.conv0.weight.fill_(0.1)
        net.conv0.weight[1].zero_()
        net.conv0.bias.copy_(torch.tensor([0.0, -1.0, 0.5, 0.0]))
    data = [torch.rand(2, 3, 8, 8) for _ in range(2)]  # positive inputs: channels 0, 2, 3 > 0
    scores = score_group(group, "apoz", CriterionContext(net, graph, data=data))
    assert int(scores.argmin()) == 1
    assert scores.tolist() == [1.0, 0.0, 1.0, 1.0]


def test_apoz_counts_partial_zeros() -> None:
    net, graph, group = act_net()
    with torch.no_grad():
        net.conv0.weight.zero_()
        net.conv0.weight[0, 0, 1, 1] = 1.0  # channel 0 follows the centre pixel of input channel 0
        net.conv0.bias.zero_()
        net.conv0.bias[1:] = 1.0
    x = torch.ones(1, 3, 5, 5)
    x_neg = -x
    scores = score_group(group, "apoz", CriterionContext(net, graph, data=[x, x_neg]))
    assert scores.tolist() == [0.5, 1.0, 1.0, 1.0]


def test_mean_activation_ordering() -> None:
    net, graph, group = act_net()
    bias = torch.tensor([0.5, -1.0, 2.0, 1.0])
    with torch.no_grad():
        net.conv0.weight.zero_()
        net.conv0.bias.copy_(bias)
    ctx = CriterionContext(net, graph, data=[torch.randn(2, 3, 8, 8)])
    scores = score_group(group, "mean_activation", ctx)
    torch.testing.assert_close(scores, bias.clamp_min(0) / math.sqrt(1 + EPS_BN))
    assert scores.argsort().tolist() == [1, 0, 3, 2]


def test_activation_criteria_share_one_pass_for_all_groups() -> None:
    net, graph, group = act_net()
    counter = CallCounter(net.conv0)
    net.train()
    running = net.bn.running_mean.clone()
    ctx = CriterionContext(net, graph, data=[torch.randn(2, 3, 8, 8) for _ in range(4)], max_batches=3)
    for name in ("apoz", "mean_activation"):
        for g in graph.groups.values():
            assert score_group(g, name, ctx).shape == (g.size,)
    assert counter.n == 3
    assert net.training and net.bn.training
    assert torch.equal(net.bn.running_mean, running)


def test_activation_records_missing_taps_lazily() -> None:
    net, graph, group = act_net()
    graph.groups = {}  # the graph does not list this group: its taps are recorded on demand
    counter = CallCounter(net.conv0)
    ctx = CriterionContext(net, graph, data=[torch.randn(2, 3, 8, 8)])
    score_group(group, "apoz", ctx)
    score_group(group, "mean_activation", ctx)
    assert counter.n == 1
    score_group(conv1_group(), "apoz", ctx)
    assert counter.n == 2


def test_apoz_falls_back_to_non_activation_taps() -> None:
    net, graph, _ = act_net()
    with torch.no_grad():
        net.conv0.weight[1].zero_()
        net.conv0.bias[1] = 0.0
    group = net_group([Tap("conv0", 1, ar(4), ar(4))])  # pre-activation tap only: exact zeros counted
    scores = score_group(group, "apoz", CriterionContext(net, graph, data=[torch.randn(2, 3, 8, 8)]))
    assert scores[1] == 0 and (scores[[0, 2, 3]] == 1).all()


def test_activation_channel_over_several_positions() -> None:
    # flatten: channel c of conv0 (2x2 output) sits at 4 positions of the flattened tensor
    model = nn.Sequential(nn.Conv2d(1, 2, 2), nn.ReLU(), nn.Flatten())
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.copy_(torch.tensor([3.0, -1.0]))
    gm = torch.fx.symbolic_trace(model)
    flat = [n.name for n in gm.graph.nodes if n.op == "call_module"][-1]
    tap = Tap(flat, 1, ar(8), torch.arange(2).repeat_interleave(4), activation=True)
    group = Group("0", 2, [Member("0", "out", ar(2), ar(2))], [tap])
    ctx = CriterionContext(model, SimpleNamespace(gm=gm, groups={"0": group}), data=[torch.randn(3, 1, 3, 3)])
    assert score_group(group, "mean_activation", ctx).tolist() == [3.0, 0.0]
    assert score_group(group, "apoz", ctx).tolist() == [1.0, 0.0]


def test_activation_errors(net: Net) -> None:
    _, graph, group = act_net()
    with pytest.raises(CriterionError, match="apoz.*calibration batches"):
        score_group(group, "apoz", CriterionContext(net, graph))
    with pytest.raises(CriterionError, match="ctx.graph.gm"):
        score_group(group, "mean_activation", CriterionContext(net, None, data=[torch.randn(1, 3, 8, 8)]))
    with pytest.raises(CriterionError, match="no taps"):
        score_group(net_group(), "apoz", CriterionContext(net, graph, data=[torch.randn(1, 3, 8, 8)]))
    bad = net_group([Tap("nowhere", 1, ar(4), ar(4), activation=True)])
    with pytest.raises(CriterionError, match="nowhere"):
        ctx = CriterionContext(net, SimpleNamespace(gm=graph.gm, groups={}), data=[torch.randn(1, 3, 8, 8)])
        score_group(bad, "apoz", ctx)


def test_activation_taps_preferred_per_channel() -> None:
    # channels 0-1 pass a ReLU, channels 2-3 are only seen before it: each uses its best tap
    net, graph, _ = act_net()
    with torch.no_grad():
        net.conv0.weight.zero_()
        net.conv0.bias.copy_(torch.tensor([-1.0, 2.0, -3.0, 4.0]))
    taps = [Tap("conv0", 1, ar(4), ar(4)), Tap("relu", 1, ar(2), ar(2), activation=True)]
    group = net_group(taps)
    ctx = CriterionContext(net, SimpleNamespace(gm=graph.gm, groups={}), data=[torch.randn(1, 3, 8, 8)])
    torch.testing.assert_close(score_group(group, "mean_activation", ctx), torch.tensor([0.0, 2.0, 3.0, 4.0]))


@pytest.mark.parametrize("criterion", ["apoz", "mean_activation"])
def test_activation_scores_follow_the_scored_model_not_the_traced_one(criterion):
    """The training compressors score a working copy whose weights moved: its activations count, not the
    traced model's (before, perturbing the copy left its scores unchanged)."""
    import copy

    from slimtune.examples.models import vgg_small

    torch.manual_seed(0)
    model = vgg_small().eval()
    x = torch.randn(1, 3, 32, 32)
    data = [torch.randn(8, 3, 32, 32) for _ in range(2)]
    graph = trace(model, x)
    moved = copy.deepcopy(model)
    with torch.no_grad():
        conv = moved.get_submodule("features.0")
        conv.weight.mul_(torch.linspace(-3.0, 3.0, conv.out_channels).view(-1, 1, 1, 1))
    group = graph.groups["features.0"]
    from_traced = score_group(group, criterion, CriterionContext(moved, graph, data))
    retraced = trace(moved, x)
    from_own = score_group(retraced.groups["features.0"], criterion, CriterionContext(moved, retraced, data))
    original = score_group(group, criterion, CriterionContext(model, graph, data))
    assert torch.allclose(from_traced, from_own)
    assert not torch.allclose(from_traced, original)
