"""Search on a Hugging Face transformer works unchanged: a tiny BERT text classifier, trained here on
scikit-learn's digits read as token sentences, searched for 8 trials over its heads, MLP widths and
hidden width."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import torch

from slimtune.compressors import count_flops, trace
from slimtune.examples.text import make_text_task
from slimtune.trials import load_model, pareto_front, search


@pytest.fixture(scope="module")
def text_task():
    return make_text_task(epochs=6, finetune_epochs=0)


def test_text_task_is_a_trained_transformer(text_task):
    accuracy = text_task.evaluate(text_task.model)
    assert accuracy > 0.6  # ten classes: chance is 0.1
    graph = trace(text_task.model, text_task.example_inputs)
    assert graph.frontend == "export"
    names = {g.name for g in graph.prunable_groups()}
    assert {"bert.embeddings.word_embeddings", "bert.encoder.layer.0.attention.self.query",
            "bert.encoder.layer.1.intermediate.dense"} <= names


def test_eight_trial_search_on_the_transformer(text_task, tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'text.db'}"
    study = search(text_task, strategy="nsga2", n_trials=8, storage=url, study_name="bert", seed=1,
                   space={"sensitivity": True, "levels": [0.25, 0.5]}, progress=False)
    trials = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(trials) == 8
    params = set().union(*(t.params for t in trials))
    assert "sparsity/bert.encoder.layer.0.attention.self.query" in params  # heads
    assert "sparsity/bert.encoder.layer.0.intermediate.dense" in params  # MLP width
    assert "sparsity/bert.embeddings.word_embeddings" in params  # hidden width
    front = pareto_front(study)
    assert len(front) >= 1 and (front["flops_rel"] < 1.0).any()
    # a trial's model reloads, is smaller, and scores what the study recorded
    best = min(trials, key=lambda t: t.values[1])
    model = load_model(study, best.number)
    assert type(model) is type(text_task.model)
    x = text_task.example_inputs
    assert count_flops(model, x)["macs"].sum() < count_flops(text_task.model, x)["macs"].sum()
    assert text_task.evaluate(model) == pytest.approx(best.values[0], abs=1e-6)
    with torch.no_grad():
        out = model(x)
    assert out.logits.shape == (2, 10)


def test_the_text_spec_loads():
    from slimtune.trials.spec import load_spec

    spec = load_spec(Path(__file__).resolve().parents[2] / "examples" / "text.yaml")
    kwargs = spec.search_kwargs()
    assert kwargs["strategy"] == "nsga2" and kwargs["n_trials"] == 24
