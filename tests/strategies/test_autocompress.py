"""autocompress: rounds advance at geometric targets that every trial meets; each round's trials start
from the previous round's best *model* (the loaded weights are that trial's, and rebuilding a trial from
them reproduces it); round, annealing step and ADMM outcome recorded; resuming gives the same state;
missing saved models end or fail clearly; plans rebase exactly onto pruned models."""

from __future__ import annotations

import shutil
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

import slimtune
from slimtune.compressors import CompressionPlan, compress, trace
from slimtune.compressors.training import run_compressor
from slimtune.errors import PlanError
from slimtune.examples.models import mlp, resnext_small
from slimtune.search_spaces import SearchSpace, SpaceOptions
from slimtune.strategies import get_strategy
from slimtune.strategies.autocompress import (
    AutoCompressSampler,
    autocompress_history,
    autocompress_state,
    round_schedule,
)
from slimtune.trials.objective import model_digest, rebase_plan
from slimtune.trials import load_model

TESTS = Path(__file__).resolve().parents[1]
ADMM_RUN = {"steps": 6, "lr": 0.05}
FAST = {"compressor_params": ADMM_RUN, "start_temperature": 0.05, "stop_temperature": 0.01}
PER_PROPOSAL = {**FAST, "proposals": "admm", "purify": 0}  # slimtune's earlier way: ADMM for every proposal


@pytest.fixture(autouse=True)
def _train_tasks(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(TESTS / "trials"))  # _train_tasks: a tiny classifier with training batches
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def train_task() -> slimtune.Task:
    from _train_tasks import train_task as make

    return make(hidden=16, finetune_config={"steps": 3, "lr": 0.05})


def run(task: slimtune.Task, url: str, n_trials: int, study: str = "ac", **params) -> optuna.Study:
    """The per-proposal ADMM mode unless ``proposals`` says otherwise (the default mode has tests of its own)."""
    return slimtune.search(task, strategy="autocompress", n_trials=n_trials, storage=url, study_name=study,
                           space={"sensitivity": False}, progress=False, **{**PER_PROPOSAL, **params})  # fmt: skip


def sparsities(t: optuna.trial.FrozenTrial) -> dict[str, float]:
    return {k[len("sparsity/") :]: v for k, v in t.params.items() if k.startswith("sparsity/")}


def rebuild(task: slimtune.Task, start: torch.nn.Module, plan: CompressionPlan) -> torch.nn.Module:
    """A trial's compression and fine-tune, from ``start``."""
    graph = trace(start, task.example_inputs)
    model = run_compressor(start, plan, task.example_inputs, task.training_context(plan.finetune, None, graph))
    task.run_finetune(model, None, plan.finetune)
    return model


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape and torch.allclose(sa[k], sb[k], atol=1e-6) for k in sa)


def test_rounds_meet_their_targets_and_start_from_the_previous_best_model(tmp_path: Path) -> None:
    task = train_task()
    study = run(task, f"sqlite:///{tmp_path / 'ac.db'}", 30, rounds=3, trials_per_round=2, target=0.3)
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 6 < 30  # 3 rounds of 2 steps, then the strategy ended the study
    assert all(t.state == TrialState.COMPLETE for t in trials), [t.user_attrs.get("fail_reason") for t in trials]
    assert [t.user_attrs["autocompress.round"] for t in trials] == [0, 0, 1, 1, 2, 2]
    assert [t.user_attrs["sa.step"] for t in trials] == [0, 1] * 3
    assert [t.user_attrs["sa.chain"] for t in trials] == ["round-0"] * 2 + ["round-1"] * 2 + ["round-2"] * 2
    graph = trace(task.model, task.example_inputs)
    best: dict[int, optuna.trial.FrozenTrial] = {}
    for k in range(3):
        mine = [t for t in trials if t.user_attrs["autocompress.round"] == k]
        target = 0.3 ** ((k + 1) / 3)  # geometric from 1.0 to the final target
        for t in mine:
            m, outcome = t.user_attrs["measures"], t.user_attrs["autocompress.admm"]
            assert t.user_attrs["autocompress.target"] == pytest.approx(target)
            assert m["flops"] <= target and m["flops"] == pytest.approx(t.user_attrs["sa.resource"])
            assert outcome == {"state": "COMPLETE", "target": pytest.approx(target), "resource": "flops",
                               "measured": m["flops"], "accuracy": m["accuracy"], "met": True}  # fmt: skip
            # the final model has exactly the plan's channels of the *original* model's groups
            plan = t.user_attrs["plan"]["prune"]
            small = load_model(study, t.number)
            for g, spec in plan.items():
                assert small.get_submodule(g).weight.shape[0] == graph.groups[g].size - graph.groups[g].n_prune(spec["sparsity"])
        # the round's best: the highest accuracy (the study's cost) among its trials, the lower number on ties
        best[k] = max(mine, key=lambda t: (t.user_attrs["measures"]["accuracy"], -t.number))
    for k in (1, 2):
        base = best[k - 1]
        for t in (t for t in trials if t.user_attrs["autocompress.round"] == k):
            assert t.user_attrs["autocompress.base"] == base.number == t.user_attrs["plan"]["init_from_trial"]
            assert t.params["autocompress/init_from_trial"] == base.number
            # no group gets back channels the base pruned
            assert all(v >= sparsities(base)[g] - 1e-12 for g, v in sparsities(t).items())
            # the model it loaded is that trial's saved model
            loaded = t.user_attrs["init_from"]
            assert loaded["trial"] == base.number and loaded["artifact"] == base.user_attrs["model_artifact"]
            assert loaded["digest"] == model_digest(load_model(study, base.number))
    for t in trials[:2]:
        assert "init_from_trial" not in t.user_attrs["plan"] and "init_from" not in t.user_attrs
        assert t.params["autocompress/init_from_trial"] == -1
    # rebuilding a round-2 trial from its base's saved model (itself grown from round 0's) reproduces it;
    # the same plan applied to the original model gives another model
    t = trials[5]
    plan = CompressionPlan.from_dict(t.user_attrs["plan"])
    base_model = load_model(study, plan.init_from_trial)
    rebased = rebase_plan(plan, graph, trace(base_model, task.example_inputs))
    assert rebased.sparsities() == t.user_attrs["init_from"]["sparsities"]
    saved = load_model(study, t.number)
    assert same_weights(rebuild(task, base_model, rebased), saved)
    from_original = rebuild(task, task.model, CompressionPlan.from_dict({**plan.to_dict(), "init_from_trial": None}))
    assert not same_weights(from_original, saved)
    # the end: the strategy says why, the study names the result, the history lists the rounds
    assert study.user_attrs["autocompress.result"]["trial"] == best[2].number
    assert study.user_attrs["autocompress.result"]["bests"] == [best[0].number, best[1].number, best[2].number]
    history = autocompress_history(study)
    assert history["trial"].tolist() == list(range(6))
    assert history[history["best"]]["trial"].tolist() == [best[k].number for k in range(3)]
    assert "3 rounds done" in get_strategy("autocompress", rounds=3, trials_per_round=2, **PER_PROPOSAL).finished(study)


def test_resumes_from_storage_with_the_same_state(tmp_path: Path) -> None:
    task = train_task()
    params = {"rounds": 2, "trials_per_round": 2, "target": 0.4}
    whole = run(task, f"sqlite:///{tmp_path / 'whole.db'}", 20, **params)
    url = f"sqlite:///{tmp_path / 'parts.db'}"
    first = run(task, url, 3, **params)  # stops in round 1, after its first step
    before = autocompress_state(first, 2, 2, proposals="admm")
    assert (before.current, before.steps, len(before.done)) == (1, 1, 1)
    assert before.done[0] == autocompress_state(whole, 2, 2, proposals="admm").done[0]  # round 0 as in the uninterrupted run
    # a new process (another sampler, another seed) derives the same rounds from the storage
    reloaded = optuna.load_study(study_name="ac", storage=url)
    space = SearchSpace(trace(task.model, task.example_inputs), SpaceOptions(sensitivity=False))
    other = AutoCompressSampler(space, 2, round_schedule(0.05, 0.01, 2), target=0.4, seed=999, proposals="admm")
    assert other.state(reloaded) == before
    resumed = run(task, url, 20, **params)
    a, b = resumed.get_trials(deepcopy=False), whole.get_trials(deepcopy=False)
    assert len(a) == len(b) == 4
    for key in ("autocompress.round", "autocompress.base", "sa.step", "sa.accepted"):
        assert [t.user_attrs[key] for t in a] == [t.user_attrs[key] for t in b]
    assert [t.params for t in a] == [t.params for t in b]
    # round 1 started from the same weights in both studies
    assert [t.user_attrs["init_from"]["digest"] for t in a[2:]] == [t.user_attrs["init_from"]["digest"] for t in b[2:]]
    assert autocompress_state(resumed, 2, 2, proposals="admm") == autocompress_state(whole, 2, 2, proposals="admm")


def test_without_saved_models_it_ends_after_the_first_round_and_says_why() -> None:
    study = run(train_task(), "memory", 10, rounds=2, trials_per_round=1, save_models="none")
    assert len(study.trials) == 1 and study.trials[0].state == TrialState.COMPLETE
    reason = study.user_attrs["autocompress.result"]["reason"]
    assert "has no saved model" in reason and "save_models='all'" in reason


def test_a_missing_saved_model_fails_the_trial_with_the_reason(tmp_path: Path) -> None:
    task, url = train_task(), f"sqlite:///{tmp_path / 'gone.db'}"
    first = run(task, url, 1, rounds=2, trials_per_round=1)
    shutil.rmtree(first.user_attrs["artifacts_dir"])
    study = run(task, url, 10, rounds=2, trials_per_round=1)
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL]
    reason = trials[1].user_attrs["fail_reason"]
    assert "plan.init_from_trial" in reason and "trial 0" in reason and "missing" in reason
    assert trials[1].user_attrs["autocompress.admm"]["state"] == "FAIL"
    assert study.user_attrs["autocompress.result"]["reason"] == "every trial of round 1 failed"


def test_without_carried_weights_every_round_compresses_the_original() -> None:
    study = run(train_task(), "memory", 10, rounds=2, trials_per_round=1, save_models="none", carry_weights=False)
    first, second = study.trials
    assert second.state == TrialState.COMPLETE and second.user_attrs["autocompress.base"] == first.number
    assert "init_from_trial" not in second.user_attrs["plan"] and "autocompress/init_from_trial" not in second.params
    assert all(v >= sparsities(first)[g] for g, v in sparsities(second).items())
    assert second.user_attrs["measures"]["flops"] <= 0.5 < first.user_attrs["measures"]["flops"]


def test_rebased_plans_give_the_shapes_of_the_total_plan() -> None:
    torch.manual_seed(0)
    model, x = resnext_small().eval(), torch.randn(1, 3, 32, 32)  # grouped convs: channels in blocks
    graph = trace(model, x)
    groups = [g.name for g in graph.prunable_groups()]
    first = {g: 0.1 + 0.3 * (i % 3) / 2 for i, g in enumerate(groups)}
    second = {g: s + 0.2 for g, s in first.items()}
    base = compress(model, CompressionPlan.from_sparsities(first), x)
    rebased = rebase_plan(CompressionPlan.from_sparsities(second), graph, trace(base, x))
    again = compress(base, rebased, x).state_dict()
    direct = compress(model, CompressionPlan.from_sparsities(second), x).state_dict()
    assert {k: v.shape for k, v in again.items()} == {k: v.shape for k, v in direct.items()}
    # errors name the group: channels cannot come back; a group the smaller model lacks
    small_mlp, xm = mlp(16, (32, 24), 4).eval(), torch.randn(1, 16)
    g_mlp = trace(small_mlp, xm)
    half = compress(small_mlp, CompressionPlan.from_sparsities({"features.0": 0.5}), xm)
    with pytest.raises(PlanError, match=r"group 'features\.0': the plan keeps 24 of its 32 channels but .* has 16"):
        rebase_plan(CompressionPlan.from_sparsities({"features.0": 0.25}), g_mlp, trace(half, xm))
    other = mlp(16, (32,), 4).eval()
    with pytest.raises(PlanError, match=r"group 'features\.2' in plan\.prune is not a prunable group of"):
        rebase_plan(CompressionPlan.from_sparsities({"features.2": 0.5}), g_mlp, trace(other, xm))


def test_parameter_errors_name_the_field() -> None:
    for params, where in (
        ({"rounds": 0}, "strategy.rounds"),
        ({"trials_per_round": 1.5}, "strategy.trials_per_round"),
        ({"start_temperature": -1}, "strategy.start_temperature"),
        ({"stop_temperature": 1.0}, "strategy.stop_temperature"),
        ({"initial": "random"}, "strategy.initial"),
        ({"carry_weights": "yes"}, "strategy.carry_weights"),
        ({"compressor_params": {"rhoo": 1}}, "strategy.compressor_params"),
        ({"target": 0}, "strategy.target"),
        ({"resource": "energy"}, "strategy.resource"),
    ):
        with pytest.raises(ValueError, match=where.replace(".", r"\.")):
            get_strategy("autocompress", **params)
    with pytest.raises(PlanError, match=r"plan\.init_from_trial"):
        CompressionPlan(init_from_trial=-2).validate()


SPEC = """\
study: ac-spec
storage: sqlite:///ac.db
task: _train_tasks:train_task
task_args: {hidden: 16}
strategy: {name: autocompress, rounds: 2, trials_per_round: 2, compressor_params: {steps: 4}}
space: {sensitivity: false}
finetune: {steps: 2}
objectives: [accuracy, flops]
constraints: ["flops <= 0.5"]
n_trials: 3
save_models: all
"""


def test_run_and_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from slimtune.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "spec.yaml").write_text(SPEC)
    assert main(["-q", "run", "spec.yaml"]) == 0, capsys.readouterr().err  # the budget ends it after round 0
    study = optuna.load_study(study_name="ac-spec", storage=f"sqlite:///{tmp_path / 'ac.db'}")
    assert len(study.trials) == 3 and "autocompress.result" not in study.user_attrs
    # a worker with a larger budget joins, runs round 1 and stops: the rounds are done
    assert main(["-q", "worker", "spec.yaml", "--n-trials", "10"]) == 0, capsys.readouterr().err
    study = optuna.load_study(study_name="ac-spec", storage=f"sqlite:///{tmp_path / 'ac.db'}")
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 6, [t.user_attrs.get("fail_reason") for t in trials]
    # each round: two quick proposals, then ADMM on the chosen one
    assert [t.user_attrs["autocompress.phase"] for t in trials] == ["proposal", "proposal", "admm"] * 2
    # the target comes from the constraint: round 1 meets it, from round 0's ADMM model
    assert [t.user_attrs["autocompress.target"] for t in trials] == pytest.approx([0.5**0.5] * 3 + [0.5] * 3)
    assert all(t.user_attrs["measures"]["flops"] <= 0.5 for t in trials[3:])
    assert study.user_attrs["autocompress.result"]["bests"][0] == 2
    assert {t.user_attrs["init_from"]["trial"] for t in trials[3:]} == {2}


def test_by_default_proposals_are_quick_and_admm_runs_once_per_round_on_the_chosen_one(tmp_path: Path) -> None:
    """As published: one-shot proposals with a short fine-tune, then ADMM (with purification) on the round's
    best proposal, from the round's starting model; the next round starts from that ADMM result."""
    task = train_task()
    study = run(task, f"sqlite:///{tmp_path / 'ac.db'}", 30, rounds=2, trials_per_round=2, target=0.3,
                proposals="oneshot", purify=0.01, proposal_finetune={"steps": 1})
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 6 and all(t.state == TrialState.COMPLETE for t in trials)
    phases = [t.user_attrs["autocompress.phase"] for t in trials]
    assert phases == ["proposal", "proposal", "admm"] * 2
    for k in range(2):
        proposals = [t for t in trials if t.user_attrs["autocompress.round"] == k and t.user_attrs["autocompress.phase"] == "proposal"]
        admm = next(t for t in trials if t.user_attrs["autocompress.round"] == k and t.user_attrs["autocompress.phase"] == "admm")
        for t in proposals:  # quick: one-shot pruning and the short fine-tune
            assert t.user_attrs["plan"].get("compressor", "oneshot") == "oneshot"
            assert t.user_attrs["plan"]["finetune"] == {"steps": 1}
        best = max(proposals, key=lambda t: (t.user_attrs["measures"]["accuracy"], -t.number))
        assert admm.user_attrs["autocompress.proposal"] == best.number
        assert sparsities(admm) == sparsities(best)  # ADMM on the chosen allocation
        plan = admm.user_attrs["plan"]
        assert plan["compressor"] == "admm" and plan["compressor_params"]["purify"] == 0.01
        assert plan.get("init_from_trial") == admm.user_attrs["autocompress.base"]
        assert admm.user_attrs["measures"]["flops"] <= admm.user_attrs["autocompress.target"] + 1e-9
    round1 = [t for t in trials if t.user_attrs["autocompress.round"] == 1]
    assert {t.user_attrs["init_from"]["trial"] for t in round1} == {2}  # round 0's ADMM trial
    assert study.user_attrs["autocompress.result"]["bests"] == [2, 5]
    history = autocompress_history(study)
    assert history["phase"].tolist() == phases and history[history["best"]]["trial"].tolist() == [2, 5]


def test_purified_channels_count_as_pruned_in_the_next_round(tmp_path: Path) -> None:
    """A high threshold makes purification remove channels beyond the target: the trial records them, the
    model is smaller than its plan, and the next round's proposals keep at least that much pruned."""
    task = train_task()
    study = run(task, f"sqlite:///{tmp_path / 'ac.db'}", 30, rounds=2, trials_per_round=1, target=0.5,
                proposals="oneshot", purify=0.9)
    trials = study.get_trials(deepcopy=False)
    assert all(t.state == TrialState.COMPLETE for t in trials), [t.user_attrs.get("fail_reason") for t in trials]
    admm = trials[1]
    purified = admm.user_attrs["compressor_info"]["purified"]
    assert sum(purified.values()) > 0
    graph = trace(task.model, task.example_inputs)
    small = load_model(study, admm.number)
    for g, extra in purified.items():
        planned = graph.groups[g].size - graph.groups[g].n_prune(sparsities(admm)[g])
        assert small.get_submodule(g).weight.shape[0] == planned - extra
    state = autocompress_state(study, 2, 1, proposals="oneshot", space=SearchSpace(graph, SpaceOptions(sensitivity=False)))
    raised = state.done[0].best_params
    for g, extra in purified.items():
        assert graph.groups[g].n_prune(raised[f"sparsity/{g}"]) == graph.groups[g].n_prune(sparsities(admm)[g]) + extra
    nxt = trials[2]
    assert all(graph.groups[g].n_prune(v) >= graph.groups[g].n_prune(raised[f"sparsity/{g}"]) for g, v in sparsities(nxt).items())
    assert autocompress_history(study)["purified"].tolist()[1] == sum(purified.values())
