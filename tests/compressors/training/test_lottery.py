"""Lottery ticket: iterative pruning, and rewinding to the stored weights (initial or early-training)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from slimtune.compressors import CompressionPlan
from slimtune.compressors.pruning import clone_model
from slimtune.compressors.training import FinetuneConfig, TrainingContext, finetune, run_compressor
from slimtune.compressors.training.lottery import round_sparsity

from _training_fixtures import digits, one_thread  # noqa: F401  (fixtures)


def _effective(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """State with masked weights as used (``weight_orig × mask``) and the masks."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    masks = {k[: -len("_mask")]: state.pop(k) for k in list(state) if k.endswith("_mask")}
    for base, mask in masks.items():
        state[base] = state.pop(base + "_orig") * mask
    return state, masks


def _ticket(task, graph, rewind: int, config: FinetuneConfig):
    plan = CompressionPlan.uniform(graph, 0.5)
    plan.compressor, plan.compressor_params = "lottery", {"rounds": 2, "rewind": rewind, "steps": 6}
    ctx = TrainingContext(task.train_data, config, task.loss_fn, graph=graph, speedup=False)
    return run_compressor(task.model, plan, task.example_inputs, ctx), ctx


def test_rewinds_to_the_initial_weights(digits):
    task, graph = digits
    ticket, ctx = _ticket(task, graph, 0, FinetuneConfig(lr=0.05))
    assert ctx.step_offset == 12  # two rounds of 6 steps
    state, masks = _effective(ticket)
    original = task.model.state_dict()
    assert masks
    for key, value in state.items():
        mask = masks.get(key)
        expected = original[key] * mask if mask is not None else original[key]
        assert torch.equal(value, expected), key  # every weight and BN statistic is the stored one
    # the second (last) round reached the plan's sparsity: half the channels of conv features.7
    kept = masks["features.7.weight"].flatten(1).any(1)
    assert int((~kept).sum()) == graph.groups["features.7"].n_prune(0.5)


def test_rewinds_to_early_training_weights(digits):
    task, graph = digits
    config = FinetuneConfig(lr=0.05, schedule="constant")
    ticket, _ = _ticket(task, graph, 3, config)
    # the same seeded run, stopped after 3 steps, gives the stored weights
    early = clone_model(task.model)
    finetune(early, task.train_data, dataclasses.replace(config, steps=3), task.loss_fn)
    state, masks = _effective(ticket)
    reference = early.state_dict()
    changed = 0
    for key, value in state.items():
        mask = masks.get(key)
        expected = reference[key] * mask if mask is not None else reference[key]
        torch.testing.assert_close(value, expected, rtol=0, atol=1e-6, msg=key)
        changed += not torch.equal(reference[key], task.model.state_dict()[key])
    assert changed > 10  # those weights are not the initial ones


def test_rounds_after_a_rewind_resume_the_schedule_at_the_rewind_step(digits, monkeypatch):
    """Rewinding to step k resumes training there: later rounds run the remaining 6 − k steps at the
    learning rates of steps k … 5 of the cosine schedule, not a fresh schedule from step 0."""
    import math

    task, graph = digits
    lrs: list[float] = []
    sgd_step = torch.optim.SGD.step

    def spy(self, *args, **kwargs):
        lrs.append(self.param_groups[0]["lr"])
        return sgd_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", spy)
    _, ctx = _ticket(task, graph, 2, FinetuneConfig(lr=0.1, schedule="cosine"))
    cosine = [0.1 * 0.5 * (1 + math.cos(math.pi * t / 6)) for t in range(6)]
    assert ctx.step_offset == 6 + 4
    assert lrs == pytest.approx(cosine + cosine[2:])
    # a start step past the run's end trains nothing; a negative one is an error
    again = clone_model(task.model)
    assert finetune(again, task.train_data, FinetuneConfig(steps=3), task.loss_fn, start_step=5).steps == 0
    with pytest.raises(ValueError, match="start_step must be an integer >= 0, got -1"):
        finetune(again, task.train_data, FinetuneConfig(steps=3), task.loss_fn, start_step=-1)


def test_round_sparsities():
    assert [round_sparsity(0.75, r, 2) for r in (1, 2)] == pytest.approx([0.5, 0.75])
    assert round_sparsity(0.9, 3, 3) == pytest.approx(0.9)
