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
    "netadapt": ("target: 0.5, step: 0.3, inherit_weights: false", "", "flops", 2),  # no saved models here
    "admm": ("target: 0.5, allocation: uniform, compressor_params: {steps: 1, iterations: 1}", "", "flops", 1),
    "autocompress": ("target: 0.6, rounds: 1, trials_per_round: 1, compressor_params: {steps: 1, iterations: 1}", "", "flops", 1),
    "bitwidth": ("sampler: random", ", bits_w: [4, 8]", "size", 2),
    "joint": ("sampler: random", ", bits_w: [4, 8]", "flops", 2),
}


def run_every_strategy(spec: str, model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                       space_of: dict[str, str] | None = None) -> dict[str, list]:
    """Each strategy's completed trials, after asserting that none failed."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(TESTS))
    out = {}
    for strategy, (params, space, resource, n_trials) in STRATEGIES.items():
        text = spec.format(strategy=strategy, model=model, params=params, space=(space_of or {}).get(strategy, space),
                           resource=resource, n_trials=n_trials)
        (tmp_path / f"{strategy}.yaml").write_text(text)
        loaded = load_spec(tmp_path / f"{strategy}.yaml")
        study = slimtune.search(loaded.make_task(), **{**loaded.search_kwargs(), "progress": False})
        done = [t for t in study.trials if t.state == TrialState.COMPLETE]
        failed = {t.number: t.user_attrs.get("fail_reason") for t in study.trials if t.state == TrialState.FAIL}
        assert len(done) == n_trials and not failed, (strategy, failed)
        out[strategy] = done
    return out


@pytest.mark.parametrize("model", [m for m in REFERENCE_MODELS if m != "mlp"])
def test_every_strategy_runs_on_the_reference_model(model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for strategy, done in run_every_strategy(SPEC, model, tmp_path, monkeypatch).items():
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


ZOO_SPEC = SPEC.replace("task: _tasks:reference_task", "task: _tasks:zoo_task").replace(
    "space: {{sensitivity: false, max_sparsity: 0.6{space}}}", "space: {{max_sparsity: 0.6{space}}}"
)


@pytest.mark.parametrize("model", ["hf_bert", "hf_llama_gqa", "torch_transformer"])
def test_every_strategy_runs_on_transformers(model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Heads, MLP widths and hidden widths are searched like channels: every strategy; annealing starts
    from the sensitivity analysis of the transformer's groups, the others go without it."""
    spaces = {s: (space or "") + ", sensitivity: false" for s, (_, space, _, _) in STRATEGIES.items()}
    spaces["simulated_annealing"] = ", sensitivity: true, levels: [0.25, 0.5]"
    for strategy, done in run_every_strategy(ZOO_SPEC, model, tmp_path, monkeypatch, spaces).items():
        for t in done:
            m = t.user_attrs["measures"]
            if strategy != "bitwidth":
                assert m["flops"] < 1.0, (strategy, m)
