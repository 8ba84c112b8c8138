"""AGP: the cubic schedule, exact targets at the last update, and the compressor from a plan."""

from __future__ import annotations

import pytest
import torch

from slimtune.compressors import CompressionPlan, PruneSpec
from slimtune.compressors.training import (
    AGPHook,
    FinetuneConfig,
    TrainHook,
    TrainingContext,
    cubic_sparsity,
    finetune,
    run_compressor,
)
from slimtune.compressors.training._masks import prepare
from slimtune.errors import PlanError

from _training_fixtures import digits, one_thread  # noqa: F401  (fixtures)


def test_cubic_curve():
    # s_t = s_f + (s_i - s_f)(1 - (t - t0)/(t_end - t0))^3
    assert cubic_sparsity(0.6, 5, 0, 10) == pytest.approx(0.6 - 0.6 * 0.5**3)
    assert cubic_sparsity(0.6, 12, 2, 12, initial=0.1) == pytest.approx(0.6)
    assert cubic_sparsity(0.6, 1, 2, 12, initial=0.1) == 0.1
    assert cubic_sparsity(0.6, 3, 0, 3) == 0.6


def test_agp_follows_the_cubic_curve_and_ends_exactly_at_the_targets(digits):
    task, graph = digits
    plan = CompressionPlan.from_sparsities({"features.0": 0.5, "features.7": 0.75, "fc1": 0.3})
    work, _ = prepare(task.model, plan, task.example_inputs, graph)
    hook = AGPHook(graph, plan, start=0.0, end=0.5, frequency=2)

    class Watch(TrainHook):  # the selection after every step
        def __init__(self):
            self.seen = []

        def after_step(self, model, step):
            self.seen.append({n: set(v.tolist()) for n, v in hook.selection.items()})

    watch = Watch()
    finetune(work, task.train_data, FinetuneConfig(steps=20, lr=0.01), task.loss_fn, hooks=[hook, watch])
    steps = [h[0] for h in hook.history]
    assert steps == [0, 2, 4, 6, 8, 10]  # updates every 2 steps until half of the 20 steps
    for step, scheduled, counts in hook.history:
        for name, spec in plan.prune.items():
            expected = cubic_sparsity(spec.sparsity, step, 0, 10)
            assert scheduled[name] == pytest.approx(expected)
            assert counts.get(name, 0) == graph.groups[name].n_prune(expected)
    # the sparsity only grows, and the last update reaches every target exactly
    for name in plan.prune:
        seq = [c.get(name, 0) for _, _, c in hook.history]
        assert seq == sorted(seq)
        assert seq[-1] == graph.groups[name].n_prune(plan.prune[name].sparsity)
    # channels pruned early stay pruned until the end
    for before, after in zip(watch.seen, watch.seen[1:]):
        for name, channels in before.items():
            assert channels <= after[name]
    masked = dict(work.named_modules())["features.7"]
    kept = masked.weight_mask.flatten(1).any(1)
    assert int((~kept).sum()) == graph.groups["features.7"].n_prune(0.75)
    assert torch.all(masked.weight[~kept] == 0)


def test_agp_compressor_from_a_plan_gives_the_plan_shapes(digits):
    task, graph = digits
    plan = CompressionPlan.uniform(graph, 0.5)
    plan.compressor, plan.compressor_params = "agp", {"steps": 12, "end": 0.5}
    ctx = task.training_context(graph=graph)
    small = run_compressor(task.model, plan, task.example_inputs, ctx)
    assert [small.features[i].out_channels for i in (0, 3, 7, 10)] == [16, 16, 32, 32]
    assert small.fc1.out_features == 64
    assert ctx.step_offset == 12
    # training while pruning gradually keeps the model far better than pruning at once (0.21)
    assert task.evaluate(small) > 0.8


def test_unstructured_agp_reaches_exact_counts(digits):
    task, graph = digits
    plan = CompressionPlan({n: PruneSpec(0.8, "level") for n in ("features.3", "fc1")}, granularity="unstructured")
    plan.compressor, plan.compressor_params = "agp", {"steps": 6, "frequency": 1}
    model = run_compressor(task.model, plan, task.example_inputs, TrainingContext(task.train_data, graph=graph))
    for name in ("features.3", "fc1"):
        w = model.get_submodule(name).weight
        assert int((w == 0).sum()) == round(0.8 * w.numel())


def test_agp_parameter_errors_name_the_parameter(digits):
    task, graph = digits
    plan = CompressionPlan.uniform(graph, 0.5)
    plan.compressor, plan.compressor_params = "agp", {"start": 0.8, "end": 0.5}
    with pytest.raises(PlanError, match=r"agp needs 0 <= start <= end <= 1"):
        run_compressor(task.model, plan, task.example_inputs, TrainingContext(task.train_data, graph=graph))
    plan.compressor_params = {"frequncy": 2}
    with pytest.raises(PlanError, match=r"unknown parameter\(s\) \['frequncy'\] of compressor 'agp'"):
        plan.validate()
