"""Distillation modes of ``FinetuneConfig.kd``: online (deep mutual learning), born-again and self-distillation
(Be Your Own Teacher): configuration, losses by hand, what each trains or freezes, and accuracy on digits."""

from __future__ import annotations

import copy
import importlib
import math

import pytest
import torch
import torch.nn.functional as F
from _devices import stray_tensors_on_meta
from torch import nn

from slimtune.compressors import CompressionPlan, compress, trace
from slimtune.compressors.training import FinetuneConfig, KDConfig, TrainingContext, finetune, run_compressor
from slimtune.compressors.training import born_again as born_again_module
from slimtune.compressors.training.born_again import BornAgain
from slimtune.compressors.training.online import MutualLearning
from slimtune.compressors.training.self_distill import SelfDistiller
from slimtune.errors import ArgumentError, PlanConfigError, PlanError, SpecError
from slimtune.examples.digits import digits_cnn
from slimtune.trials.spec import Spec

from _training_fixtures import digits, one_thread  # noqa: F401  (fixtures)

finetune_module = importlib.import_module("slimtune.compressors.training.finetune")  # the package's name is the function


def _kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor, t: float) -> torch.Tensor:
    """``t² · KL(softmax(teacher/t) ‖ softmax(student/t))``, averaged over the batch, written out."""
    p = torch.softmax(teacher_logits / t, 1)
    return t * t * (p * (torch.log(p) - torch.log_softmax(student_logits / t, 1))).sum(1).mean()


def _stages() -> nn.Module:
    """A conv net with 4×4, 2×2 and 1×1 feature maps and a linear classifier on 3 features."""
    return nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 4),
    )  # fmt: skip


# ---------------------------------------------------------------------- configuration
def test_each_mode_takes_its_papers_defaults_and_a_new_mode_starts_from_them():
    assert (KDConfig().alpha, KDConfig().temperature, KDConfig().feature) == (0.5, 4.0, 0.0)  # offline, as before
    assert (KDConfig(mode="online").alpha, KDConfig(mode="online").temperature) == (0.5, 1.0)  # DML
    assert KDConfig(mode="born_again").temperature == 1.0 and KDConfig(mode="born_again").generations == 1
    s = KDConfig(mode="self")
    assert (s.alpha, s.temperature, s.feature) == (0.3, 3.0, 0.03)  # BYOT
    base = FinetuneConfig(kd={"alpha": 0.9, "temperature": 2.0})
    assert base.merged({"kd": {"mode": "online"}}).kd == KDConfig(mode="online")  # the offline settings go
    assert base.merged({"kd": {"mode": "offline", "alpha": 0.1}}).kd == KDConfig(alpha=0.1, temperature=2.0)
    online = FinetuneConfig(kd={"mode": "online", "peer": "student"}).merged({"kd": {"alpha": 0.2}}).kd
    assert (online.mode, online.peer, online.alpha, online.temperature) == ("online", "student", 0.2, 1.0)
    assert KDConfig.from_dict(FinetuneConfig(kd=KDConfig(mode="self")).to_dict()["kd"]) == KDConfig(mode="self")


@pytest.mark.parametrize(
    ("kd", "field", "problem"),
    [
        ({"mode": "onlin"}, "finetune.kd.mode", "unknown distillation mode 'onlin' (did you mean 'online'?)"),
        ({"mode": "online", "feature": 1.0}, "finetune.kd.feature", "mode 'online' does not use it"),
        ({"mode": "online", "relation": 1.0}, "finetune.kd.relation", "mode 'online' does not use it"),
        ({"mode": "self", "relation": 0.5}, "finetune.kd.relation", "mode 'self' does not use it"),
        ({"mode": "online", "peer": "twin"}, "finetune.kd.peer", "unknown peer 'twin'"),
        ({"peer": "student"}, "finetune.kd.peer", "only mode 'online' uses it"),
        ({"mode": "born_again", "generations": 0}, "finetune.kd.generations", "must be an integer >= 1"),
        ({"mode": "self", "generations": 2}, "finetune.kd.generations", "only mode 'born_again' uses it"),
        ({"mode": "born_again", "temperature": 0}, "finetune.kd.temperature", "must be a number in (0, inf)"),
    ],
)
def test_bad_values_name_the_field(kd, field, problem):
    with pytest.raises(PlanConfigError) as info:
        FinetuneConfig().merged({"kd": kd})
    assert info.value.field == field and problem in info.value.problem
    with pytest.raises(PlanError, match="plan." + field.replace(".", r"\.")):
        CompressionPlan(finetune={"kd": kd}).validate()


def test_the_spec_parses_a_mode_and_names_a_bad_one():
    base = "study: s\ntask: m:f\nn_trials: 2\n"
    spec = Spec.from_yaml(base + "finetune: {kd: {mode: online, alpha: 0.3}}\n")
    assert spec.finetune == {"kd": {"mode": "online", "alpha": 0.3}}
    with pytest.raises(SpecError) as info:
        Spec.from_yaml(base + "finetune: {kd: {mode: selff}}\n")
    assert info.value.field == "finetune.kd.mode" and "did you mean 'self'?" in info.value.problem


# ---------------------------------------------------------------------- online: deep mutual learning
def test_online_losses_by_hand_each_network_learns_from_the_others_predictions():
    torch.manual_seed(0)
    student, teacher = nn.Linear(3, 4), nn.Linear(3, 4)
    x, y = torch.randn(5, 3), torch.tensor([0, 1, 2, 3, 0])
    d = MutualLearning(student, teacher, KDConfig(mode="online", alpha=0.4, temperature=2.0), F.cross_entropy)
    d.attach((x,))
    assert d.peer is not teacher and all(p.requires_grad for p in d.peer_parameters())
    out = student(x)
    got = d.loss((x,), out, F.cross_entropy(out, y), y)
    got.backward()
    # by hand, on fresh copies: L_s = 0.6·CE(s) + 0.4·KL(peer ‖ s), L_p = 0.6·CE(p) + 0.4·KL(s ‖ p)
    s_copy, p_copy = copy.deepcopy(student), copy.deepcopy(teacher)
    s, p = s_copy(x), p_copy(x)
    own = 0.6 * F.cross_entropy(s, y) + 0.4 * _kl(p.detach(), s, 2.0)
    other = 0.6 * F.cross_entropy(p, y) + 0.4 * _kl(s.detach(), p, 2.0)
    assert float(got.detach()) == pytest.approx(float(own.detach()), rel=1e-6)  # the recorded loss: the student's
    own.backward()
    other.backward()
    assert torch.allclose(student.weight.grad, s_copy.weight.grad, atol=1e-6)
    assert torch.allclose(d.peer.weight.grad, p_copy.weight.grad, atol=1e-6)
    assert teacher.weight.grad is None  # the original model is only copied


def test_online_peer_trains_with_an_optimizer_of_its_own_and_the_teacher_stays(monkeypatch):
    made = []
    original = finetune_module._optimizer
    monkeypatch.setattr(finetune_module, "_optimizer", lambda cfg, params: made.append(params) or original(cfg, params))
    torch.manual_seed(0)
    teacher, student = digits_cnn(width=6), digits_cnn(width=4)
    frozen = copy.deepcopy(teacher.state_dict())
    before = copy.deepcopy(student.state_dict())
    data = [(torch.randn(8, 1, 8, 8), torch.arange(8)) for _ in range(2)]
    res = finetune(student, data, FinetuneConfig(steps=4, optimizer="adam", kd={"mode": "online"}), teacher=teacher)
    assert res.steps == 4 and all(math.isfinite(v) for v in res.losses)
    student_params, peer_params = made
    assert {id(p) for p in student_params} == {id(p) for p in student.parameters()}
    assert not {id(p) for p in peer_params} & {id(p) for p in student.parameters()}
    assert [p.shape for p in peer_params] == [p.shape for p in teacher.parameters()]  # a copy of the original
    assert any(not torch.equal(p, q) for p, q in zip(peer_params, teacher.parameters()))  # the peer was updated
    assert any(not torch.equal(v, before[k]) for k, v in student.state_dict().items())
    assert all(torch.equal(v, frozen[k]) for k, v in teacher.state_dict().items())


def test_online_peer_from_the_student_needs_no_teacher_and_the_original_one_does():
    data = [(torch.randn(8, 1, 8, 8), torch.arange(8))]
    assert finetune(digits_cnn(width=4), data, FinetuneConfig(steps=2, kd={"mode": "online", "peer": "student"})).steps
    with pytest.raises(ArgumentError, match=r"kd.peer 'original'.*pass teacher=") as info:
        finetune(digits_cnn(width=4), data, FinetuneConfig(steps=2, kd={"mode": "online"}))
    assert info.value.field == "teacher"


# ---------------------------------------------------------------------- born-again
def test_born_again_starts_from_its_own_frozen_snapshot_loss_by_hand():
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 4))
    x, y = torch.randn(6, 3), torch.tensor([0, 1, 2, 3, 0, 1])
    d = BornAgain(student, KDConfig(mode="born_again"), total_steps=10)
    d.attach((x,))
    assert not d.teacher.training and not any(p.requires_grad for p in d.teacher.parameters())
    assert all(torch.equal(a, b) for a, b in zip(d.teacher.parameters(), student.parameters()))
    out = student(x)
    task = F.cross_entropy(out, y)
    assert float(d.loss((x,), out, task, y).detach()) == pytest.approx(0.5 * float(task.detach()), rel=1e-6)  # KL(self ‖ self) = 0
    with torch.no_grad():
        student[0].weight.add_(0.5)
    out = student(x)
    want = 0.5 * F.cross_entropy(out, y) + 0.5 * _kl(d.teacher(x), out, 1.0)
    got = d.loss((x,), out, F.cross_entropy(out, y), y)
    assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-6)
    d.detach()


def test_born_again_teacher_is_frozen_and_refreshed_once_per_generation(monkeypatch):
    snaps = []
    original = born_again_module.snapshot
    monkeypatch.setattr(born_again_module, "snapshot", lambda m: snaps.append(original(m)) or snaps[-1])
    torch.manual_seed(0)
    student = digits_cnn(width=4)
    start = copy.deepcopy(student.state_dict())
    data = [(torch.randn(8, 1, 8, 8), torch.arange(8)) for _ in range(3)]
    finetune(student, data, FinetuneConfig(steps=9, kd={"mode": "born_again", "generations": 3}))
    assert len(snaps) == 3  # the start, then after steps 3 and 6
    assert all(torch.equal(v, start[k]) for k, v in snaps[0].state_dict().items())  # never trained
    assert any(not torch.equal(v, start[k]) for k, v in snaps[1].state_dict().items())  # a later student
    assert all(not s.training and not any(p.requires_grad for p in s.parameters()) for s in snaps)
    assert not any(m._forward_hooks for s in snaps for m in s.modules())  # no recorder copied along
    assert not any(m._forward_hooks for m in student.modules())


def test_born_again_beats_no_kd_on_a_small_budget(digits):
    """The digits CNN pruned to 25 % of its channels (one-shot accuracy 0.10), 30 steps on 4 batches.

    Measured (seeds 0, 1, 2): without KD 0.694 / 0.689 / 0.694, born-again (alpha 0.5, T 1, one generation)
    0.806 / 0.819 / 0.806: the snapshot's near-uniform predictions regularise the recovery.
    """
    task, graph = digits
    student = compress(task.model, CompressionPlan.uniform(graph, 0.75), task.example_inputs, graph=graph)
    for seed in (0, 1, 2):
        accs = {}
        for name, kd in (("none", None), ("born_again", {"mode": "born_again"})):
            m = copy.deepcopy(student)
            finetune(m, task.train_data[:4], task.finetune_config.merged({"steps": 30, "seed": seed, "kd": kd}),
                     task.loss_fn, teacher=task.model)  # fmt: skip
            accs[name] = task.evaluate(m)
        assert accs["born_again"] > accs["none"] + 0.05, accs


# ---------------------------------------------------------------------- self: Be Your Own Teacher
def test_self_exits_and_loss_by_hand():
    torch.manual_seed(0)
    model = _stages()
    x, y = torch.randn(6, 1, 4, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    cfg = KDConfig(mode="self", alpha=0.4, temperature=2.0, feature=0.5)
    d = SelfDistiller(model, cfg, F.cross_entropy, seed=0)
    d.attach((x,))
    assert d.exits == ["1", "4"] and d.hint  # the ends of the 4×4 and 2×2 stages; 1×1 is the deepest
    assert [h.fc.out_features for h in d.heads.values()] == [4, 4]
    assert d.heads["1"].neck[0].out_channels == 3  # the width of the penultimate features (the Linear's input)
    out = model(x)
    task = F.cross_entropy(out, y)
    got = d.loss((x,), out, task, y)
    d.detach()
    penultimate = model[:7](x).detach()
    want = task
    for exit_at, head in zip((2, 5), d.heads.values()):
        h, z = head(model[:exit_at](x))
        want = want + 0.6 * F.cross_entropy(z, y) + 0.4 * _kl(out.detach(), z, 2.0) + 0.5 * F.mse_loss(h, penultimate)
    assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-5)


def test_self_beats_no_kd_on_the_half_pruned_cnn(digits):
    """The digits CNN pruned to 50 % (one-shot 0.206), the task's fine-tune for 3 passes over its 23 batches.

    Measured (seeds 0, 1, 2): without KD 0.983 / 0.983 / 0.986, self-distillation 0.992 / 0.992 / 0.992.
    """
    task, graph = digits
    student = compress(task.model, CompressionPlan.uniform(graph, 0.5), task.example_inputs, graph=graph)
    accs: dict[str, list[float]] = {"none": [], "self": []}
    for seed in (0, 1, 2):
        for name, kd in (("none", None), ("self", {"mode": "self"})):
            m = copy.deepcopy(student)
            finetune(m, task.train_data, task.finetune_config.merged({"steps": 69, "seed": seed, "kd": kd}), task.loss_fn)
            accs[name].append(task.evaluate(m))
    assert all(s >= n for s, n in zip(accs["self"], accs["none"])), accs
    assert sum(accs["self"]) / 3 > sum(accs["none"]) / 3 + 0.004, accs


def test_self_heads_are_gone_after_finetuning_and_are_seeded():
    data = [(torch.randn(8, 1, 8, 8), torch.arange(8)) for _ in range(2)]
    cfg = FinetuneConfig(steps=3, kd={"mode": "self"})

    def run(global_seed: int) -> nn.Module:
        torch.manual_seed(0)
        model = digits_cnn(width=4)
        torch.manual_seed(global_seed)  # the heads come from the config's seed, not the global generator
        finetune(model, data, cfg)
        return model

    model, keys = run(1), list(digits_cnn(width=4).state_dict())
    assert list(model.state_dict()) == keys
    assert model(data[0][0]).shape == (8, 10)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    other = run(2)
    assert all(torch.equal(v, other.state_dict()[k]) for k, v in model.state_dict().items())


def test_self_errors_name_the_field():
    x = torch.randn(4, 1, 4, 4)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    with pytest.raises(PlanConfigError, match="found no intermediate feature map") as info:
        SelfDistiller(mlp, KDConfig(mode="self"), F.cross_entropy).attach((x,))
    assert info.value.field == "finetune.kd.feature_layers"
    d = SelfDistiller(mlp, KDConfig(mode="self", feature_layers=["2"]), F.cross_entropy)
    d.attach((x,))  # named 2-D features: an exit of a linear map and ReLU
    assert d.exits == ["2"] and isinstance(d.heads["2"].neck[0], nn.Linear)
    d.detach()
    with pytest.raises(PlanConfigError, match="no module 'fc9'") as info:
        SelfDistiller(_stages(), KDConfig(mode="self", feature_layers=["fc9"]), F.cross_entropy).attach((x,))
    assert info.value.field == "finetune.kd.feature_layers"
    seg = nn.Sequential(nn.Conv2d(1, 3, 1), nn.MaxPool2d(2), nn.Conv2d(3, 3, 1))  # per-pixel logits
    with pytest.raises(PlanConfigError, match=r"class logits of shape \(batch, classes\)") as info:
        SelfDistiller(seg, KDConfig(mode="self"), F.cross_entropy).attach((x,))
    assert info.value.field == "finetune.kd.mode"


# ---------------------------------------------------------------------- every mode in the loop
@pytest.mark.parametrize("mode", ["online", "born_again", "self"])
def test_every_mode_runs_with_amp_accumulation_clipping_channels_last_and_reports_on_the_models_device(mode):
    torch.manual_seed(0)
    teacher, student = digits_cnn(width=6), digits_cnn(width=4)
    x = torch.randn(16, 1, 8, 8)
    data = [(x[:8], torch.arange(8)), (x[8:], torch.arange(8))]
    kd = {"mode": mode, "generations": 2} if mode == "born_again" else {"mode": mode}
    reports = []
    for amp in (None, "bf16"):
        cfg = FinetuneConfig(steps=2, amp=amp, channels_last=True, accumulate=2, clip_grad_norm=1.0, kd=kd)
        with stray_tensors_on_meta() as strays:
            res = finetune(student, data, cfg, teacher=teacher, report=lambda s, v: reports.append(s),
                           evaluate=lambda m: 0.0)  # fmt: skip
        assert not strays, strays
        assert res.steps == 2 and all(math.isfinite(v) for v in res.losses)
    assert reports == [1, 2, 1, 2]  # one pass (2 batches, 2 a step) a step, and the last
    assert student.features[0].weight.is_contiguous()


@pytest.mark.parametrize("mode", ["online", "born_again", "self"])
@pytest.mark.parametrize(
    ("compressor", "params"),
    [("agp", {"steps": 4, "frequency": 1}), ("admm", {"steps": 4, "iterations": 2}),
     ("lottery", {"steps": 2, "rounds": 2, "rewind": 1})],
)  # fmt: skip
def test_training_compressors_train_in_every_mode(mode, compressor, params):
    """Masks added during the run (AGP), copies of the student with the distiller's hooks on it (ADMM's
    projection) and resumed runs (lottery) go with every mode; nothing is left on the result."""
    torch.manual_seed(0)
    model, x = digits_cnn(width=4), torch.randn(16, 1, 8, 8)
    plan = CompressionPlan.uniform(trace(model, x[:1]), 0.5)
    plan.compressor, plan.compressor_params = compressor, params
    kd = {"mode": mode, "generations": 2, "feature": 1.0} if mode == "born_again" else {"mode": mode}
    context = TrainingContext(train_data=[(x, torch.arange(16) % 10)], config=FinetuneConfig(kd=kd),
                              teacher=digits_cnn(width=4))  # fmt: skip
    with stray_tensors_on_meta() as strays:
        small = run_compressor(model, plan, x[:1], context)
    assert not strays, strays
    assert small(x).shape == (16, 10) and small.features[0].out_channels == 2
    assert not any(m._forward_hooks for m in small.modules())


@pytest.mark.parametrize("mode", ["online", "born_again", "self"])
def test_same_seed_same_weights(mode):
    data = [(torch.randn(8, 1, 8, 8), torch.arange(8)) for _ in range(2)]

    def run(seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        teacher, student = digits_cnn(width=6), digits_cnn(width=4)
        torch.manual_seed(seed + 100)
        finetune(student, data, FinetuneConfig(steps=3, seed=seed, kd={"mode": mode}), teacher=teacher)
        return student.state_dict()

    a, b, c = run(0), run(0), run(1)
    assert all(torch.equal(v, b[k]) for k, v in a.items())
    assert any(not torch.equal(v, c[k]) for k, v in a.items())
