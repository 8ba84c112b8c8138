"""Tests of SCOP (slimtune.compressors.criteria.scop) and its knockoff generators (criteria.knockoff)."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from slimtune.compressors import CompressionPlan, compress, trace
from slimtune.compressors._types import Group, Member
from slimtune.compressors.criteria import CRITERIA, CriterionContext, score_group
from slimtune.compressors.criteria import knockoff as K
from slimtune.compressors.criteria.knockoff import GaussianKnockoff, VAEKnockoff, make_knockoff
from slimtune.compressors.criteria.scop import ControlScales, _Mixer, _sites, learn_control_scales
from slimtune.compressors.pruning import select_channels
from slimtune.errors import CriterionError

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def ar1(n: int, p: int, rho: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` samples of an AR(1) Gaussian with correlation ``rho^|i-j|``, scaled and shifted; and its covariance."""
    idx = torch.arange(p)
    scale = torch.linspace(0.5, 2.0, p, dtype=torch.float64)
    corr = rho ** (idx[:, None] - idx[None, :]).abs().double()
    cov = corr * scale[:, None] * scale[None, :]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, p, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(cov).T
    return (x + torch.linspace(-3, 3, p, dtype=torch.float64)).float(), cov


class Net(nn.Module):
    """conv(1→6) → BN → ReLU → conv(6→6) → BN → ReLU → pool → linear(6→3)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.c2, self.b2 = nn.Conv2d(6, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.b1(self.c1(x)))
        x = torch.relu(self.b2(self.c2(x)))
        return self.fc(x.mean((2, 3)))


@pytest.fixture
def net_data() -> tuple[Net, list[tuple[torch.Tensor, torch.Tensor]]]:
    torch.manual_seed(0)
    x = torch.randn(64, 1, 6, 6)
    y = (x[:, 0, :3].mean((1, 2)) > 0).long() + (x[:, 0, 3:].mean((1, 2)) > 0).long()
    return Net().eval(), [(x[:32], y[:32]), (x[32:], y[32:])]


# ------------------------------------------------------------------------------------ Gaussian knockoffs
def test_gaussian_knockoff_matches_the_first_two_moments_and_the_swap_covariance() -> None:
    x, cov = ar1(40000, 8, 0.6)
    ko = GaussianKnockoff(shrinkage=0.0).fit(x)
    xk = ko.sample(x, torch.Generator().manual_seed(1))
    std = cov.diagonal().sqrt()
    # s = min(2 λ_min(R), 1) on the standardised features (R: the sample correlation)
    assert ko.s == pytest.approx(min(2 * float(torch.linalg.eigvalsh(ko.correlation).min()), 1.0), rel=1e-6)
    assert 0.2 < ko.s < 1.0
    joint = torch.cov(torch.cat([x, xk], 1).T.double())
    sx, sk, sxk = joint[:8, :8], joint[8:, 8:], joint[:8, 8:]
    # means within 0.03 standard deviations, covariances within 0.04 of the variance scale (n = 40000)
    assert ((xk.mean(0) - x.mean(0)).double().abs() / std).max() < 0.03
    assert ((sk - sx) / (std[:, None] * std[None, :])).abs().max() < 0.04
    # swap property, second order: Cov(X, X̃) = Σ − D with D = s·diag(Σ)
    target = sx - ko.s * torch.diag(sx.diagonal())
    assert ((sxk - target) / (std[:, None] * std[None, :])).abs().max() < 0.04
    assert (sxk - sxk.T).abs().max() < 0.04 * float(cov.diagonal().max())  # symmetric, as Σ − D is
    # and a knockoff is not the data: each feature's correlation with its own knockoff is 1 − s
    own = (sxk.diagonal() / sx.diagonal()).float()
    assert torch.allclose(own, torch.full_like(own, 1 - ko.s), atol=0.03)


def test_gaussian_knockoff_shrinkage_and_constant_features() -> None:
    x, _ = ar1(30, 20, 0.9)  # fewer samples than twice the features: the sample correlation is ill-conditioned
    x[:, 3] = 7.0  # a constant feature is its own knockoff
    ko = GaussianKnockoff().fit(x)
    assert 0.0 < ko.delta <= 1.0  # Ledoit-Wolf shrinks
    assert ko.s >= 2 * ko.delta * 0.999  # λ_min(R) ≥ δ after shrinking towards the identity
    xk = ko.sample(x, torch.Generator().manual_seed(0))
    assert torch.equal(xk[:, 3], x[:, 3])
    assert torch.isfinite(xk).all()
    flat = GaussianKnockoff().fit(torch.full((10, 4), 2.0))  # every feature constant
    assert flat.s == 0.0 and flat.sample(torch.full((3, 4), 2.0), torch.Generator()).eq(2.0).all()


def test_gaussian_knockoff_pools_large_images_and_keeps_their_detail() -> None:
    torch.manual_seed(0)
    coarse = torch.randn(200, 2, 4, 4)
    x = coarse.repeat_interleave(4, 2).repeat_interleave(4, 3) + 0.01 * torch.randn(200, 2, 16, 16)
    ko = GaussianKnockoff(max_features=32).fit(x)  # 2×16×16 = 512 values → modelled at 2×4×4
    assert ko._pooled == (4, 4)
    xk = ko.sample(x[:5], torch.Generator().manual_seed(0))
    assert xk.shape == (5, 2, 16, 16)
    detail = x[:5] - torch.nn.functional.interpolate(torch.nn.functional.adaptive_avg_pool2d(x[:5], 4), size=16)
    detail_k = xk - torch.nn.functional.interpolate(torch.nn.functional.adaptive_avg_pool2d(xk, 4), size=16)
    assert torch.allclose(detail, detail_k, atol=1e-5)
    with pytest.raises(CriterionError, match="max_features"):
        GaussianKnockoff(max_features=8).fit(torch.randn(10, 20, 3))


def test_knockoff_input_errors() -> None:
    with pytest.raises(CriterionError, match="floating-point"):
        GaussianKnockoff().fit(torch.randint(0, 5, (10, 3)))
    with pytest.raises(CriterionError, match="at least 2"):
        GaussianKnockoff().fit(torch.randn(1, 3))
    with pytest.raises(CriterionError, match="fit"):
        GaussianKnockoff().sample(torch.randn(2, 3), torch.Generator())
    with pytest.raises(CriterionError, match="fitted on"):
        GaussianKnockoff().fit(torch.randn(10, 3)).sample(torch.randn(2, 4), torch.Generator())
    with pytest.raises(CriterionError, match="shrinkage"):
        GaussianKnockoff(shrinkage=1.5)
    with pytest.raises(CriterionError, match="generator must be one of"):
        make_knockoff("gan")


# ------------------------------------------------------------------------------------ VAE knockoffs
def test_vae_knockoff_fits_and_samples_reproducibly() -> None:
    x, _ = ar1(512, 16, 0.8)
    state = torch.random.get_rng_state()
    vae = VAEKnockoff(steps=150).fit(x.reshape(512, 1, 4, 4))
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is left alone
    a = vae.sample(x[:64].reshape(64, 1, 4, 4), torch.Generator().manual_seed(3))
    b = vae.sample(x[:64].reshape(64, 1, 4, 4), torch.Generator().manual_seed(3))
    assert a.shape == (64, 1, 4, 4) and a.dtype == x.dtype and torch.equal(a, b)
    # a knockoff follows its sample (through the latent) without copying it
    flat = a.reshape(64, -1)
    corr = torch.corrcoef(torch.stack([flat.flatten(), x[:64].flatten()]))[0, 1]
    assert 0.3 < float(corr) < 0.999
    again = VAEKnockoff(steps=150).fit(x.reshape(512, 1, 4, 4))  # a fixed step budget: the same fit every time
    assert torch.equal(again.sample(x[:64].reshape(64, 1, 4, 4), torch.Generator().manual_seed(3)), a)


def test_knockoffs_make_every_tensor_on_a_named_device() -> None:
    """Under the harness of tests/_devices.py: fits and draws on the CPU by name, also for pooled images."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from _devices import stray_tensors_on_meta

    x = torch.randn(64, 2, 8, 8)
    with stray_tensors_on_meta() as strays:
        for ko in (GaussianKnockoff(max_features=64), VAEKnockoff(steps=5, max_features=64)):
            assert ko.fit(x)._pooled == (4, 4)
            assert torch.isfinite(ko.sample(x[:3], torch.Generator().manual_seed(0))).all()
    assert not strays, strays


# ------------------------------------------------------------------------------------ control scales
def test_control_scales_get_gradients_and_the_weights_do_not(net_data) -> None:
    model, data = net_data
    graph = trace(model, data[0][0][:1])
    groups = graph.prunable_groups()
    scales = ControlScales({g.name: g.size for g in groups}, torch.device("cpu"))
    mixer = _Mixer(model, _sites(model, groups), scales)
    x, y = data[0]
    knock = GaussianKnockoff().fit(x).sample(x, torch.Generator().manual_seed(0))
    for p in model.parameters():
        p.requires_grad_(False)
    with mixer.hooked():
        mixer.record()
        with torch.no_grad():
            model(knock)
        mixer.mix()
        mixed = model(x)
        loss = nn.functional.cross_entropy(mixed, y)
        loss.backward()
    assert len(scales.logits) == len(groups) >= 2
    for a in scales.logits:
        assert a.grad is not None and a.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())
    # at β = ½ every producer's output is (f + f̃)/2: not the plain forward, which is back once unhooked
    assert not torch.allclose(mixed.detach(), model(x), atol=1e-3)


def test_learning_leaves_the_model_unchanged(net_data) -> None:
    model, data = net_data
    model.b1.train()  # a mixed training flag, restored as it was
    before = copy.deepcopy(model.state_dict())
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    graph = trace(model, data[0][0][:1])
    ctx = CriterionContext(model, graph, data)
    _, betas = learn_control_scales(ctx, graph.prunable_groups(), epochs=3)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN statistics
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())
    assert model.b1.training and not model.b2.training and not model.training
    assert not model.c1._forward_hooks  # the mixing hooks are gone
    assert set(betas) == {g.name for g in graph.prunable_groups()}
    assert all(((b > 0) & (b < 1)).all() and not torch.equal(b, torch.full_like(b, 0.5)) for b in betas.values())


def test_scop_ranks_an_informative_channel_above_a_noise_channel() -> None:
    """Hidden unit 0 copies the feature that decides the label, unit 1 copies pure noise: the real
    feature of unit 0 beats its knockoff, unit 1's does not."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)).eval()
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(2))
        model[0].bias.zero_()
        model[1].weight.copy_(torch.tensor([[4.0, 1.0], [-4.0, -1.0]]))
        model[1].bias.zero_()
    x = torch.randn(256, 2)
    y = (x[:, 0] < 0).long()
    group = Group("0", 2, [Member("0", "out", torch.arange(2), torch.arange(2))])
    ctx = CriterionContext(model, None, [(x[:128], y[:128]), (x[128:], y[128:])])
    scores = score_group(group, "scop", ctx)
    assert scores[0] > 0.3 and scores[0] > scores[1] + 0.2  # the logits travel about ±1: |score| < 0.47
    report = ctx.report["0"]
    assert report["beta"][0] > report["beta_knockoff"][0]
    assert report["scores"] == pytest.approx(scores.tolist(), abs=1e-5)


# ------------------------------------------------------------------------------------ plans and reports
def test_plan_with_scop_compresses_a_convnet_and_records_its_choice(net_data) -> None:
    model, data = net_data
    x = data[0][0]
    graph = trace(model, x[:1])
    plan = CompressionPlan.uniform(graph, 0.5, "scop")
    assert {s.criterion for s in plan.prune.values()} == {"scop"}
    small = compress(model, plan, x[:1], data=data, graph=graph)
    assert small.c1.out_channels == 3 and small(x).shape == (32, 3)
    assert torch.isfinite(small(x)).all()
    again = compress(model, plan, x[:1], data=data, graph=graph)  # reproducible
    assert torch.equal(small(x), again(x))

    ctx = CriterionContext(model, graph, data)
    pruned = select_channels(graph, plan, ctx)
    assert set(ctx.report) == set(pruned) == set(plan.prune)
    for name, rec in ctx.report.items():
        size = graph.groups[name].size
        assert rec["criterion"] == "scop" and rec["generator"] == "gaussian" and 0 < rec["s"] <= 1
        assert len(rec["scores"]) == len(rec["beta"]) == len(rec["beta_knockoff"]) == size
        assert rec["pruned"] == pruned[name].tolist()
        assert sorted(rec["pruned"] + rec["kept"]) == list(range(size))
        scores = torch.tensor(rec["scores"])
        assert scores[rec["pruned"]].max() <= scores[rec["kept"]].min()  # the lowest scores go
        assert rec["beaten"] == [c for c in range(size) if rec["beta"][c] <= rec["beta_knockoff"][c]]


def test_scop_on_residual_groups_smaller_equals_masked() -> None:
    """A residual group's producers share one β per channel; the chosen channels make a smaller model that
    computes what the masked one does (the speedup check of test_speedup.py, for SCOP)."""
    from slimtune.examples.models import resnet20

    torch.manual_seed(0)
    model = resnet20(width=4).eval()
    x = torch.randn(16, 3, 8, 8)
    data = [(x[:8], torch.randint(0, 10, (8,))), (x[8:], torch.randint(0, 10, (8,)))]
    graph = trace(model, x[:1])
    residual = [g for g in graph.prunable_groups() if len(list(g.members_with("out"))) > 1]
    assert residual
    plan = CompressionPlan.uniform(graph, 0.5, "scop")
    masked = compress(model, plan, x[:1], speedup=False, data=data, graph=graph)
    small = compress(model, plan, x[:1], data=data, graph=graph)
    with torch.no_grad():
        assert (masked(x) - small(x)).abs().max() <= 1e-4
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    scales = ControlScales({g.name: g.size for g in residual}, torch.device("cpu"))
    sites = _sites(model, residual)
    assert {layer for layer, found in sites.items() for name, *_ in found if name == residual[0].name} == {
        m.layer for m in residual[0].members_with("out")
    }
    assert len(scales.logits) == len(residual)


def test_scop_vae_is_registered_and_compresses(net_data, monkeypatch) -> None:
    monkeypatch.setitem(K.KNOCKOFFS, "vae", lambda seed: VAEKnockoff(steps=30, seed=seed))
    model, data = net_data
    x = data[0][0]
    plan = CompressionPlan.uniform(trace(model, x[:1]), 0.5, "scop_vae")
    small = compress(model, plan, x[:1], data=data)
    assert small.c2.out_channels == 3 and torch.isfinite(small(x)).all()
    assert {"scop", "scop_vae"} <= set(CRITERIA)


def test_scop_errors_name_what_is_missing(net_data) -> None:
    model, data = net_data
    x = data[0][0]
    graph = trace(model, x[:1])
    plan = CompressionPlan.uniform(graph, 0.5, "scop")
    with pytest.raises(CriterionError, match=r"criterion 'scop' needs calibration batches: pass data"):
        compress(model, plan, x[:1], graph=graph)
    with pytest.raises(CriterionError, match=r"needs batches of \(inputs, targets\).*batch 0 has no targets"):
        compress(model, plan, x[:1], data=[x], graph=graph)
    with pytest.raises(CriterionError, match="floating point"):
        compress(model, plan, x[:1], data=[(x.long(), data[0][1])], graph=graph)
    with pytest.raises(CriterionError, match="epochs"):
        learn_control_scales(CriterionContext(model, graph, data), graph.prunable_groups(), epochs=0)
    bare = Group("b1", 6, [Member("b1", "norm", torch.arange(6), torch.arange(6))])
    with pytest.raises(CriterionError, match="group 'b1' has no producing Conv, Linear or Embedding"):
        score_group(bare, "scop", CriterionContext(model, None, data))


def test_a_trial_records_what_scop_kept_and_pruned() -> None:
    """A search with ``space.criterion: scop`` stores SCOP's per-group report in the trial's compressor_info."""
    import slimtune
    from slimtune.examples.digits import make_task

    task = make_task(finetune_epochs=0)
    study = slimtune.search(task, strategy="random", n_trials=1, storage="memory", progress=False,
                            save_models="none", space={"criterion": "scop", "sensitivity": False})  # fmt: skip
    trial = study.trials[0]
    assert trial.state.name == "COMPLETE", trial.user_attrs.get("fail_reason")
    report = trial.user_attrs["compressor_info"]["criteria"]
    plan = trial.user_attrs["plan"]["prune"]
    assert set(report) == {g for g, p in plan.items() if p["sparsity"] > 0}
    for group, entry in report.items():
        assert {"scores", "beta", "beta_knockoff", "pruned", "kept"} <= set(entry)
        assert len(entry["pruned"]) + len(entry["kept"]) == len(entry["scores"])
