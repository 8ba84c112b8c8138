"""The fine-tune loop on real data and devices: DataLoaders with and without ``len``, mixed precision,
channels_last, gradient accumulation, clipping, determinism, batches moved to the model's device, and no
tensor created off the model's device (the loop and every training compressor under
``stray_tensors_on_meta``)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from _devices import stray_tensors_on_meta
from _training_fixtures import one_thread  # noqa: F401  (fixture)
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from slimtune import devices
from slimtune.compressors import CompressionPlan, trace
from slimtune.compressors.training import (
    FinetuneConfig,
    KDConfig,
    TrainHook,
    TrainingContext,
    finetune,
    run_compressor,
)
from slimtune.errors import ArgumentError, PlanConfigError
from slimtune.examples.digits import digits_cnn, evaluate_accuracy, load_digits_data


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))


def _xy(n: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def _max_diff(a: nn.Module, b: nn.Module) -> float:
    return max(float((p - q).abs().max()) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


class _Stream(IterableDataset):
    """Samples without a ``len``; counts the samples drawn."""

    def __init__(self, n: int) -> None:
        self.x, self.y = _xy(n)
        self.drawn = 0

    def __iter__(self):
        for i in range(len(self.x)):
            self.drawn += 1
            yield self.x[i], self.y[i]


# ---------------------------------------------------------------------- data
def test_dataloader_with_len_trains_epochs_and_reports_at_each_epoch_end():
    x, y = _xy(80)
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)  # 5 batches
    model = _mlp()
    result = finetune(model, loader, FinetuneConfig(epochs=2, lr=0.1), report=lambda s, v: None, evaluate=lambda m: 0.5)
    assert result.steps == 10 and len(result.losses) == 10
    assert [s for s, _ in result.reports] == [5, 10]  # default eval_every: once per epoch
    assert result.losses[-1] < result.losses[0]


def test_iterable_dataset_without_len_runs_a_step_budget_without_counting_the_data():
    stream = _Stream(40)
    loader = DataLoader(stream, batch_size=8)  # 5 batches a pass, no len()
    with pytest.raises(TypeError):
        len(loader)
    result = finetune(
        _mlp(), loader, FinetuneConfig(steps=12, lr=0.1), report=lambda s, v: None, evaluate=lambda m: 0.5
    )
    assert result.steps == 12
    # passes of 5 steps: a report at the end of each pass (found when the data runs out) and at the end
    assert [s for s, _ in result.reports] == [5, 10, 12]
    assert stream.drawn == 12 * 8  # every sample drawn was trained on: no counting pass, no read-ahead
    with pytest.raises(PlanConfigError, match=r"finetune\.epochs: .*no len\(\).*set finetune\.steps"):
        finetune(_mlp(), loader, FinetuneConfig(epochs=1))


def test_exhausted_iterators_and_too_few_batches_are_named():
    x, y = _xy(16)
    batches = iter([(x[:8], y[:8]), (x[8:], y[8:])])
    with pytest.raises(ArgumentError, match=r"no batches on pass 2: an iterator can be read only once"):
        finetune(_mlp(), batches, FinetuneConfig(steps=3))
    with pytest.raises(PlanConfigError, match=r"finetune\.accumulate: 4 batches per optimizer step.*only 2"):
        finetune(_mlp(), [(x[:8], y[:8]), (x[8:], y[8:])], FinetuneConfig(steps=3, accumulate=4))


def test_batches_and_the_teachers_probe_are_moved_to_the_models_device(monkeypatch):
    moved = []
    original = devices.move

    def spy(obj, device, non_blocking=False):
        if not isinstance(obj, torch.Tensor):  # a batch (not the tensors inside it, moved recursively)
            moved.append((str(device), non_blocking))
        return original(obj, device, non_blocking)

    monkeypatch.setattr(devices, "move", spy)
    torch.manual_seed(0)
    teacher = digits_cnn(width=6)
    student = digits_cnn(width=4)
    x = torch.randn(8, 1, 8, 8)
    cfg = FinetuneConfig(steps=3, kd=KDConfig(feature=1.0))
    finetune(student, [(x, torch.arange(8))], cfg, teacher=teacher)
    assert moved == [("cpu", True)] * 4  # the probe batch of the feature adapters, then one per step


def test_a_teacher_on_another_device_is_an_error_naming_both():
    teacher = digits_cnn(width=4).to("meta")
    x = torch.randn(4, 1, 8, 8)
    with pytest.raises(ArgumentError, match=r"teacher is on meta but the model \(student\) is on cpu") as info:
        finetune(digits_cnn(width=4), [(x, torch.arange(4))], FinetuneConfig(steps=1, kd={}), teacher=teacher)
    assert info.value.field == "teacher"


# ---------------------------------------------------------------------- precision
def _digits_run(amp: str | None, epochs: int = 3) -> tuple[float, nn.Module, list[float]]:
    train_set, val_set = load_digits_data()
    torch.manual_seed(0)
    model = digits_cnn(width=8)
    loader = DataLoader(train_set, batch_size=64, shuffle=True)
    result = finetune(model, loader, FinetuneConfig(epochs=epochs, optimizer="adamw", lr=3e-3, amp=amp))
    return evaluate_accuracy(model, val_set), model, result.losses


def test_bf16_autocast_on_cpu_converges_like_fp32_on_digits():
    seen = []
    fp32, _, _ = _digits_run(None)
    bf16, model, losses = _digits_run("bf16")
    # measured (3 epochs of 23 steps from scratch, width 8, AdamW 3e-3): 0.942 in fp32, 0.939 in bf16
    assert fp32 > 0.9 and bf16 > 0.9, (fp32, bf16)
    assert abs(bf16 - fp32) < 0.03, (fp32, bf16)
    assert losses[-1] < 0.2 * losses[0]
    assert all(p.dtype == torch.float32 for p in model.parameters())  # weights stay fp32
    # the forward pass did run in bfloat16
    hook = model.fc2.register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    x, y = torch.randn(4, 1, 8, 8), torch.arange(4)
    finetune(model, [(x, y)], FinetuneConfig(steps=1, amp="bf16"))
    hook.remove()
    assert seen == [torch.bfloat16]


def test_fp16_on_cpu_scales_unscales_before_the_hooks_and_converges(monkeypatch):
    calls = []

    class SpyScaler(torch.amp.GradScaler):
        def __init__(self, device="cuda", *args, **kwargs):
            calls.append(("init", device))
            super().__init__(device, *args, **kwargs)

        def scale(self, outputs):
            calls.append("scale")
            return super().scale(outputs)

        def unscale_(self, optimizer):
            calls.append("unscale")
            return super().unscale_(optimizer)

        def step(self, optimizer, *args, **kwargs):
            calls.append("step")
            return super().step(optimizer, *args, **kwargs)

        def update(self, new_scale=None):
            calls.append("update")
            return super().update(new_scale)

    class Grad(TrainHook):  # the gradient the hooks see
        def after_backward(self, model, step):
            calls.append("hook")
            self.grad = model[2].weight.grad.clone()

    monkeypatch.setattr(torch.amp, "GradScaler", SpyScaler)
    x, y = _xy(32)
    grads = {}
    for amp in (None, "fp16"):
        hook = Grad()
        finetune(_mlp(), [(x, y)], FinetuneConfig(steps=1, amp=amp, momentum=0.0), hooks=[hook])
        grads[amp] = hook.grad
        if amp is None:
            calls.clear()
    assert calls == [("init", "cpu"), "scale", "unscale", "hook", "step", "update"]
    # unscaled (not 65536 times larger), equal to the fp32 gradient up to fp16 rounding
    torch.testing.assert_close(grads["fp16"], grads[None], atol=2e-3, rtol=1e-2)
    monkeypatch.undo()
    fp16, _, losses = _digits_run("fp16", epochs=2)
    # measured: 0.936 after 3 epochs, 0.92 after 2 (fp32: 0.942 after 3)
    assert fp16 > 0.88 and losses[-1] < 0.3 * losses[0], fp16


def test_amp_on_a_device_without_autocast_names_the_field():
    model = nn.Linear(2, 2).to("meta")
    with pytest.raises(PlanConfigError, match=r"finetune\.amp: 'bf16' needs torch\.autocast.*device meta"):
        finetune(model, [(torch.zeros(1, 2), torch.zeros(1))], FinetuneConfig(steps=1, amp="bf16"))


# ---------------------------------------------------------------------- channels_last
def test_channels_last_trains_in_that_format_matches_contiguous_and_returns_contiguous():
    seen = []

    class Format(TrainHook):
        def after_step(self, model, step):
            seen.append(model.features[3].weight.is_contiguous(memory_format=torch.channels_last))

    torch.manual_seed(0)
    base = digits_cnn(width=8)
    x, y = torch.randn(32, 1, 8, 8), torch.arange(32) % 10
    base.features[3].register_forward_pre_hook(
        lambda m, a: seen.append(("input", a[0].is_contiguous(memory_format=torch.channels_last)))
    )
    models = {}
    for cl in (False, True):
        models[cl] = copy.deepcopy(base)
        finetune(models[cl], [(x, y)], FinetuneConfig(steps=5, lr=0.05, channels_last=cl), hooks=[Format()])
    # measured max abs difference of the weights after 5 steps: ~1e-7 (other conv kernels' rounding)
    assert _max_diff(models[False], models[True]) < 1e-4
    assert seen[:2] == [("input", False), False] and seen[10:12] == [("input", True), True]
    conv = models[True].features[3].weight
    assert conv.is_contiguous() and not conv.is_contiguous(memory_format=torch.channels_last)


# ---------------------------------------------------------------------- accumulation and clipping
class _L2(TrainHook):
    def penalty(self, model, step):
        return 0.01 * sum((p**2).sum() for p in model.parameters())


def test_four_micro_batches_of_8_equal_one_step_on_the_batch_of_32_kd_and_penalties_included():
    x, y = _xy(32)
    torch.manual_seed(3)
    teacher = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    cfg = FinetuneConfig(steps=3, lr=0.5, momentum=0.0, schedule="constant", shuffle=False, kd={"alpha": 0.5})
    whole, micro = _mlp(), _mlp()
    r1 = finetune(whole, [(x, y)], cfg, teacher=teacher, hooks=[_L2()])
    parts = [(x[i : i + 8], y[i : i + 8]) for i in range(0, 32, 8)]
    r4 = finetune(micro, parts, cfg.merged({"accumulate": 4}), teacher=teacher, hooks=[_L2()])
    assert r1.steps == r4.steps == 3
    # the same three SGD steps up to float rounding (measured: ~1e-8)
    assert _max_diff(whole, micro) <= 1e-6
    assert r4.losses == pytest.approx(r1.losses, abs=1e-6)  # the step's loss: the mean over its batches
    assert _max_diff(whole, _mlp()) > 0.01  # (they did train)


def test_accumulation_leaves_the_remainder_of_each_epoch_out():
    x, y = _xy(40)
    batches = [(x[i : i + 8], y[i : i + 8]) for i in range(0, 40, 8)]  # 5 batches
    used = []

    def loss_fn(out, target):
        used.append(target)
        return F.cross_entropy(out, target)

    result = finetune(_mlp(), batches, FinetuneConfig(epochs=2, accumulate=2), loss_fn=loss_fn)
    assert result.steps == 4 and len(used) == 8  # 5 // 2 steps an epoch; one batch of each epoch unused
    epochs = [{tuple(t.tolist()) for t in used[:4]}, {tuple(t.tolist()) for t in used[4:]}]
    assert all(len(e) == 4 for e in epochs)  # no batch twice within an epoch


def test_clipping_bounds_the_gradient_norm_the_optimizer_uses():
    norms = {}

    class Norm(TrainHook):  # the gradients are still there after the step: the ones the optimizer used
        def after_step(self, model, step):
            norms.setdefault(self.key, []).append(
                float(torch.cat([p.grad.flatten() for p in model.parameters()]).norm())
            )

    x, y = _xy(32)
    for clip in (None, 0.1):
        hook = Norm()
        hook.key = clip
        finetune(_mlp(), [(x, y * 0)], FinetuneConfig(steps=4, lr=0.01, clip_grad_norm=clip), hooks=[hook])
    assert min(norms[None]) > 0.2  # unclipped gradients are larger than the bound...
    assert max(norms[0.1]) <= 0.1 * (1 + 1e-5)  # ...and clipped to it
    assert norms[0.1][0] == pytest.approx(0.1, rel=1e-5)


# ---------------------------------------------------------------------- determinism
def test_dataloader_shuffling_and_dropout_follow_the_seed_and_the_global_rng_is_restored():
    x, y = _xy(64)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)

    def run(seed: int) -> nn.Module:
        m = copy.deepcopy(net)
        finetune(m, loader, FinetuneConfig(epochs=2, seed=seed, optimizer="adam", lr=0.01))
        return m

    state = torch.get_rng_state()
    assert _max_diff(run(1), run(1)) == 0.0
    assert _max_diff(run(1), run(2)) > 0.0
    assert torch.equal(torch.get_rng_state(), state)


# ---------------------------------------------------------------------- no tensor off the model's device
def test_the_loop_with_every_option_creates_nothing_off_the_models_device():
    torch.manual_seed(0)
    teacher, student = digits_cnn(width=6), digits_cnn(width=4)
    x = torch.randn(16, 1, 8, 8)
    data = [(x[:8], torch.arange(8)), (x[8:], torch.arange(8))]
    kd = {"alpha": 0.5, "feature": 1.0, "relation": 1.0, "relation_layer": "fc1"}
    for amp in (None, "bf16", "fp16"):
        cfg = FinetuneConfig(steps=2, amp=amp, channels_last=True, accumulate=2, clip_grad_norm=1.0, kd=kd)
        with stray_tensors_on_meta() as strays:
            result = finetune(student, data, cfg, teacher=teacher, report=lambda s, v: None, evaluate=lambda m: 0.0)
        assert not strays, strays
        assert result.steps == 2


@pytest.mark.parametrize(
    ("compressor", "params", "granularity"),
    [
        ("agp", {"steps": 4, "frequency": 1}, "channel"),
        ("agp", {"steps": 4, "frequency": 1}, "unstructured"),
        ("admm", {"steps": 4, "iterations": 2, "purify": 0.5}, "channel"),
        ("admm", {"steps": 4, "iterations": 2}, "unstructured"),
        ("lottery", {"steps": 2, "rounds": 2, "rewind": 1}, "channel"),
        ("lottery", {"steps": 2, "rounds": 2}, "unstructured"),
        ("slimming", {"steps": 3, "penalty": 0.1}, "channel"),
    ],
)
def test_training_compressors_create_nothing_off_the_models_device(compressor, params, granularity):
    torch.manual_seed(0)
    model, x = digits_cnn(width=4), torch.randn(16, 1, 8, 8)
    graph = trace(model, x[:1])
    if granularity == "unstructured":
        plan = CompressionPlan.uniform(graph, 0.5, "level", granularity="unstructured")
    else:
        plan = CompressionPlan.uniform(graph, 0.5)
    plan.compressor, plan.compressor_params = compressor, params
    context = TrainingContext(
        train_data=[(x, torch.arange(16) % 10)],
        config=FinetuneConfig(kd={"alpha": 0.5, "feature": 1.0}, accumulate=1, clip_grad_norm=5.0),
        teacher=digits_cnn(width=4),
        graph=graph,
    )
    with stray_tensors_on_meta() as strays:
        small = run_compressor(model, plan, x[:1], context)
    assert not strays, strays
    assert small(x).shape == (16, 10)


# ---------------------------------------------------------------------- the config
def test_new_config_fields_are_checked_merged_and_serialised():
    with pytest.raises(
        PlanConfigError, match=r"finetune\.amp: unknown mixed-precision mode 'bf17' \(did you mean 'bf16'"
    ):
        FinetuneConfig(amp="bf17")
    with pytest.raises(PlanConfigError, match=r"finetune\.accumulate: must be an integer >= 1, got 0"):
        FinetuneConfig().merged({"accumulate": 0})
    with pytest.raises(PlanConfigError, match=r"finetune\.clip_grad_norm: must be a number in \(0, inf\)"):
        FinetuneConfig(clip_grad_norm=-1.0)
    with pytest.raises(PlanConfigError, match=r"finetune\.channels_last: must be true or false"):
        FinetuneConfig(channels_last="yes")
    cfg = FinetuneConfig(amp="bf16").merged({"amp": "fp16", "accumulate": 4, "clip_grad_norm": 1.0})
    assert (cfg.amp, cfg.accumulate, cfg.clip_grad_norm, cfg.channels_last) == ("fp16", 4, 1.0, False)
    assert cfg.merged({"amp": None}).amp is None
    assert FinetuneConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.merged({"epochs": 3}).total_steps(batches_per_epoch=10) == 6  # 10 // 4 steps an epoch
