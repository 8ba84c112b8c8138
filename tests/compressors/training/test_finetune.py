"""The built-in fine-tune loop: recovery after pruning, masks and quantizers kept, determinism, reports."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from slimtune.compressors import CompressionPlan, QuantSpec, compress, speedup
from slimtune.compressors.quantization import QuantWrapper
from slimtune.compressors.training import FinetuneConfig, early_stopping, finetune
from slimtune.errors import PlanError

from _training_fixtures import digits, one_thread  # noqa: F401  (fixtures)


def test_finetune_recovers_accuracy_after_50_percent_channel_pruning(digits):
    task, graph = digits
    plan = CompressionPlan.uniform(graph, 0.5)
    masked = compress(task.model, plan, task.example_inputs, speedup=False, graph=graph)
    masks = {n: m.weight_mask.clone() for n, m in masked.named_modules() if hasattr(m, "weight_mask")}
    original = task.evaluate(task.model)
    before = task.evaluate(masked)
    result = finetune(masked, task.train_data, task.finetune_config.merged({"epochs": 1}), task.loss_fn)
    after = task.evaluate(masked)
    # measured: 0.997 original, 0.206 right after pruning half the channels, 0.975 after one epoch (23 steps)
    assert original > 0.99 and before < 0.4
    assert after >= 0.95, (before, after)
    assert result.steps == len(task.train_data)
    # the masks did not move and every pruned weight is still exactly zero
    assert masks
    for name, module in masked.named_modules():
        if name in masks:
            assert torch.equal(module.weight_mask, masks[name])
            assert torch.all(module.weight[~module.weight_mask.bool()] == 0)
    # ... so the physically smaller model computes the same as the fine-tuned masked one
    small = speedup(masked, task.example_inputs)
    x = task.train_data[0][0]
    torch.testing.assert_close(small.eval()(x), masked.eval()(x), atol=1e-4, rtol=1e-4)


def test_zero_weights_without_masks_stay_zero_and_quantizers_stay_in_place(digits):
    task, graph = digits
    plan = CompressionPlan.uniform(graph, 0.5, "level", granularity="unstructured")
    plan.quantize = {"features.3": QuantSpec(bits_w=4, bits_a=8)}
    model = compress(task.model, plan, task.example_inputs, data=task.calibration, graph=graph)
    # fold the unstructured masks of the other layers: their zeros are plain zeros now
    torch.nn.utils.prune.remove(model.fc1, "weight")
    zeros = model.fc1.weight == 0
    wrapper = model.features[3]
    assert isinstance(wrapper, QuantWrapper)
    lo, hi = wrapper.act_lo.clone(), wrapper.act_hi.clone()
    finetune(model, task.train_data, FinetuneConfig(steps=5, lr=0.05), task.loss_fn)
    assert zeros.float().mean() > 0.45 and torch.all(model.fc1.weight[zeros] == 0)
    assert isinstance(model.features[3], QuantWrapper) and model.features[3].mode == "frozen"
    assert torch.equal(wrapper.act_lo, lo) and torch.equal(wrapper.act_hi, hi)
    assert torch.all(model.features[3].layer.weight[~model.features[3].layer.weight_mask.bool()] == 0)


def test_same_seed_same_weights_other_seed_other_weights():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))
    x, y = torch.randn(96, 6), torch.randint(0, 3, (96,))
    data = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 96, 16)]

    def run(seed: int) -> torch.Tensor:
        m = copy.deepcopy(net)
        finetune(m, data, FinetuneConfig(epochs=2, seed=seed, optimizer="adam", lr=0.01))
        return m[3].weight.detach()

    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [("constant", [1, 1, 1, 1]), ("step", [1, 1, 0.1, 0.01]), ("linear", [1, 0.75, 0.5, 0.25]),
     ("cosine", [1, 0.854, 0.5, 0.146])],
)  # fmt: skip
def test_learning_rate_schedules(schedule, expected):
    """The step actually taken by plain SGD (lr 1, no momentum) is -lr_t × gradient."""
    from slimtune.compressors.training import TrainHook

    class Spy(TrainHook):
        def __init__(self):
            self.lrs = []

        def after_backward(self, m, step):
            self.grad, self.before = m.weight.grad.clone(), m.weight.detach().clone()

        def after_step(self, m, step):
            delta = m.weight.detach() - self.before
            self.lrs.append(float((-delta / self.grad)[self.grad.abs() > 1e-6].mean()))

    spy = Spy()
    model = nn.Linear(2, 2)
    data = [(torch.randn(4, 2), torch.tensor([0, 1, 0, 1]))]
    finetune(model, data, FinetuneConfig(steps=4, lr=1.0, momentum=0.0, schedule=schedule), hooks=[spy])
    assert spy.lrs == pytest.approx(expected, abs=2e-3)


def test_reports_and_early_stop():
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    data = [(torch.randn(8, 4), torch.randint(0, 2, (8,))) for _ in range(5)]
    values = iter([0.5, 0.6, 0.55, 0.55, 0.9, 0.9])
    got = []

    def evaluate(m):
        return next(values)

    result = finetune(
        model,
        data,
        FinetuneConfig(epochs=10, eval_every=2),
        report=early_stopping(2, then=lambda s, v: got.append((s, v))),
        evaluate=evaluate,
    )
    # evaluations at steps 2, 4, 6, 8: best 0.6 at step 4, two evaluations without improvement stop the run
    assert got == [(2, 0.5), (4, 0.6), (6, 0.55), (8, 0.55)]
    assert result.stopped_early and result.steps == 8 and result.reports == got


def test_reports_raise_through_and_bad_batches_are_named():
    model = nn.Linear(4, 2)
    data = [(torch.randn(8, 4), torch.randint(0, 2, (8,)))]

    class Stop(Exception):
        pass

    def report(step, value):
        raise Stop(step)

    with pytest.raises(Stop):
        finetune(model, data, FinetuneConfig(steps=3, eval_every=1), report=report, evaluate=lambda m: 0.0)
    with pytest.raises(TypeError, match=r"pair \(inputs, targets\)"):
        finetune(model, [torch.randn(8, 4)], FinetuneConfig(steps=1))


def test_config_errors_name_the_field():
    with pytest.raises(PlanError, match=r"finetune.optimizer: unknown optimizer 'lion'"):
        FinetuneConfig(optimizer="lion")
    with pytest.raises(PlanError, match=r"finetune.steps: must be an integer >= 0"):
        FinetuneConfig().merged({"steps": -1})
    with pytest.raises(PlanError, match=r"finetune.kd.temperature: must be a number in \(0, inf\)"):
        FinetuneConfig().merged({"kd": {"temperature": 0}})
    with pytest.raises(PlanError, match=r"finetune: unknown field\(s\) \['epoch'\]"):
        FinetuneConfig().merged({"epoch": 1})
    cfg = FinetuneConfig(steps=10, kd={"alpha": 0.2}).merged({"epochs": 3, "kd": {"temperature": 2}})
    assert (cfg.steps, cfg.epochs, cfg.kd.alpha, cfg.kd.temperature) == (None, 3, 0.2, 2)
    assert cfg.merged({"kd": None}).kd is None
