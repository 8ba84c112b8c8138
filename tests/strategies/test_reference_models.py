"""Every automatic strategy runs from a spec on every reference model (slimtune.examples.models):
a couple of trials each, so the plans of each strategy compress, measure and fine-tune every
architecture (residual adds, depthwise and grouped convs, concatenations, branches)."""

from __future__ import annotations

from pathlib import Path

import pytest
from optuna.trial import TrialState

import slimtune
from slimtune.examples.models import REFERENCE_MODELS
from slimtune.trials.spec import load_spec

TESTS = Path(__file__).resolve().parents[1]

SPEC = """\
study: {strategy}-{model}
storage: sqlite:///ref.db
task: _tasks:reference_task
task_args: {{model: {model}}}
strategy: {{name: {strategy}, {params}}}
space: {{sensitivity: false, max_sparsity: 0.6{space}}}
objectives: [accuracy, {resource}]
n_trials: {n_trials}
save_models: none
"""

# (strategy parameters, extra space, resource, trials): tiny budgets; every strategy aims at 50 %
STRATEGIES = {
    "simulated_annealing": ("target: 0.5, start_temperature: 0.02, stop_temperature: 0.001, cool_down_rate: 0.5", "", "flops", 2),
    "netadapt": ("target: 0.5, step: 0.3", "", "flops", 2),
    "admm": ("target: 0.5, allocation: uniform, compressor_params: {steps: 1, iterations: 1}", "", "flops", 1),
    "autocompress": ("target: 0.6, rounds: 1, trials_per_round: 1, compressor_params: {steps: 1, iterations: 1}", "", "flops", 1),
    "bitwidth": ("sampler: random", ", bits_w: [4, 8]", "size", 2),
    "joint": ("sampler: random", ", bits_w: [4, 8]", "flops", 2),
}


@pytest.mark.parametrize("model", [m for m in REFERENCE_MODELS if m != "mlp"])
def test_every_strategy_runs_on_the_reference_model(model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(TESTS))
    for strategy, (params, space, resource, n_trials) in STRATEGIES.items():
        text = SPEC.format(strategy=strategy, model=model, params=params, space=space, resource=resource, n_trials=n_trials)
        (tmp_path / f"{strategy}.yaml").write_text(text)
        spec = load_spec(tmp_path / f"{strategy}.yaml")
        study = slimtune.search(spec.make_task(), **{**spec.search_kwargs(), "progress": False})
        done = [t for t in study.trials if t.state == TrialState.COMPLETE]
        failed = {t.number: t.user_attrs.get("fail_reason") for t in study.trials if t.state == TrialState.FAIL}
        assert len(done) == n_trials and not failed, (strategy, failed)
        for t in done:
            m = t.user_attrs["measures"]
            bits = [v for k, v in t.params.items() if k.startswith("bits_w/")]
            sparsities = [v for k, v in t.params.items() if k.startswith("sparsity/")]
            if strategy == "bitwidth":  # quantizes only: smaller, same FLOPs
                assert bits and not sparsities and m["size"] < 1.0 and m["flops"] == pytest.approx(1.0)
            else:  # pruned: fewer FLOPs, measured on the compressed model
                assert sparsities and m["flops"] < 1.0, (strategy, m)
            if strategy == "joint":
                assert bits and m["size"] < m["params"]


ZOO_SPEC = SPEC.replace("task: _tasks:reference_task", "task: _tasks:zoo_task")


@pytest.mark.parametrize("model", ["hf_bert", "hf_llama_gqa", "torch_transformer"])
def test_every_strategy_runs_on_transformers(model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Heads, MLP widths and hidden widths are searched like channels: every strategy, sensitivity included."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(TESTS))
    for strategy, (params, space, resource, n_trials) in STRATEGIES.items():
        if strategy == "simulated_annealing":
            space = ", sensitivity: true, levels: [0.25, 0.5]"  # the sensitivity analysis on transformer groups
        text = ZOO_SPEC.format(strategy=strategy, model=model, params=params, space=space, resource=resource, n_trials=n_trials)
        text = text.replace("sensitivity: false, max_sparsity: 0.6, sensitivity: true", "sensitivity: true, max_sparsity: 0.6")
        (tmp_path / f"{strategy}.yaml").write_text(text)
        spec = load_spec(tmp_path / f"{strategy}.yaml")
        study = slimtune.search(spec.make_task(), **{**spec.search_kwargs(), "progress": False})
        done = [t for t in study.trials if t.state == TrialState.COMPLETE]
        failed = {t.number: t.user_attrs.get("fail_reason") for t in study.trials if t.state == TrialState.FAIL}
        assert len(done) == n_trials and not failed, (strategy, failed)
        for t in done:
            m = t.user_attrs["measures"]
            if strategy != "bitwidth":
                assert m["flops"] < 1.0, (strategy, m)
