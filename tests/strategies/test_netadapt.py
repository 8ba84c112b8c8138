"""netadapt: budgets step down monotonically to the target, each candidate prunes its group just
enough, each iteration keeps its best candidate, the final trial gets the long-term fine-tune,
the study ends on its own, resumes, and candidates run on parallel workers."""

from __future__ import annotations

import logging
import math
import time

import optuna
import pytest
from optuna.trial import TrialState

import slimtune
from slimtune.compressors import trace
from slimtune.compressors.measures import ResourcePredictor
from slimtune.search_spaces import SearchSpace, SpaceOptions
from slimtune.strategies import get_strategy
from slimtune.strategies.netadapt import FINAL, PHASE, STEP_ATTR, NetAdaptSampler, netadapt_history

from _strategy_tasks import make_mlp_task

PARAMS = {"target": 0.35, "step": 0.2, "step_decay": 0.8, "min_step": 0.05}


def run(task: slimtune.Task, url: str, n_trials: int, study: str = "na", save_models: str = "none", **params) -> optuna.Study:
    """NetAdapt's schedule; candidates from the original model unless ``inherit_weights`` (needs saved models)."""
    return slimtune.search(
        task, strategy="netadapt", n_trials=n_trials, storage=url, study_name=study, space={"sensitivity": False},
        progress=False, save_models=save_models, **{**PARAMS, "inherit_weights": False, **params},
    )  # fmt: skip


def test_end_to_end_on_a_tiny_model(tmp_path) -> None:
    task = make_mlp_task(hidden=(32, 24, 16))
    study = run(task, f"sqlite:///{tmp_path / 'na.db'}", n_trials=60, long_term_finetune={"epochs": 2})
    history = netadapt_history(study)
    trials = {t.number: t for t in study.trials}
    assert len(study.trials) < 60  # ended at the target, not at the budget
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    graph = trace(task.model, task.example_inputs)
    predictor = ResourcePredictor(graph)
    groups = [g.name for g in graph.prunable_groups()]
    iterations = history[history.candidate != FINAL].groupby("iteration")
    previous, resource = None, 1.0
    for i, rows in iterations:
        # one candidate per group that can still meet the budget, each with the iteration's budget
        assert rows["candidate"].is_unique and set(rows["candidate"]) <= set(groups)
        budget = rows["budget"].iloc[0]
        step = max(0.2 * 0.8**i, 0.05)
        assert budget == pytest.approx(max(0.35, resource - step))
        for _, row in rows.iterrows():
            t = trials[row.trial]
            assert t.user_attrs["netadapt.base"] == previous and t.params[PHASE] == "short_term"
            # measured on the compressed model: within the budget, as predicted
            assert t.user_attrs["measures"]["flops"] == pytest.approx(row.resource) and row.resource <= budget + 1e-9
            # just enough: one channel fewer removed from the candidate's group misses the budget
            sparsities = {g: t.params[f"sparsity/{g}"] for g in groups}
            g, size = row.candidate, graph.groups[row.candidate].size
            removed = graph.groups[g].n_prune(sparsities[g])
            assert predictor.relative({**sparsities, g: (removed - 1) / size})["flops"] > budget
            if previous is not None:  # the candidate builds on the previous choice, its group pruned further
                base = {h: trials[previous].params[f"sparsity/{h}"] for h in groups}
                assert {h: v for h, v in sparsities.items() if h != g} == {h: v for h, v in base.items() if h != g}
                assert sparsities[g] > base[g]
        # the chosen candidate is the best (highest metric) of its iteration
        chosen = rows[rows.chosen]
        assert len(chosen) == 1
        best = max(rows.trial, key=lambda n: (trials[n].values[0], -trials[n].user_attrs["measures"]["flops"], -n))
        assert int(chosen.trial.iloc[0]) == best
        new_resource = float(chosen.resource.iloc[0])
        assert new_resource < resource  # the resource decreases monotonically
        previous, resource = best, new_resource
    assert resource <= 0.35 and len(iterations) >= 3
    # the final trial: the last chosen network, fine-tuned with the long-term settings
    final = history[history.candidate == FINAL]
    assert len(final) == 1
    f = trials[int(final.trial.iloc[0])]
    assert f.params[PHASE] == "long_term" and f.user_attrs["plan"]["finetune"] == {"epochs": 2}
    assert {k: v for k, v in f.params.items() if k != PHASE} == {k: v for k, v in trials[previous].params.items() if k != PHASE}
    result = study.user_attrs["netadapt.result"]
    assert result["trial"] == previous and result["final_trial"] == f.number and "reached flops" in result["reason"]
    assert get_strategy("netadapt").plan(f.params, SearchSpace(graph, SpaceOptions(sensitivity=False))).finetune == {}


def test_resumes_and_matches_an_uninterrupted_run(tmp_path) -> None:
    task = make_mlp_task()
    whole = run(task, f"sqlite:///{tmp_path / 'whole.db'}", n_trials=40)
    url = f"sqlite:///{tmp_path / 'parts.db'}"
    run(task, url, n_trials=3)
    resumed = run(task, url, n_trials=40)
    columns = ["iteration", "candidate", "chosen", "resource"]
    assert netadapt_history(resumed)[columns].equals(netadapt_history(whole)[columns])
    assert len(resumed.trials) == len(whole.trials) < 40


def test_progressive_candidates_start_from_the_chosen_network(tmp_path) -> None:
    """As in the paper: iteration i+1's candidates load iteration i's chosen network with its fine-tuned weights
    (checked by the digest of the weights they start from), and the long-term trial trains the last one."""
    from slimtune.trials.objective import model_digest
    from slimtune.trials import load_model

    task = make_mlp_task(hidden=(32, 24, 16), finetune_steps=5)
    study = run(task, f"sqlite:///{tmp_path / 'na.db'}", n_trials=60, save_models="all", inherit_weights=True,
                long_term_finetune={"steps": 10})
    history = netadapt_history(study)
    trials = {t.number: t for t in study.trials}
    assert all(t.state == TrialState.COMPLETE for t in study.trials) and "reached flops" in study.user_attrs["netadapt.result"]["reason"]
    chosen = {}
    for i, rows in history[history.candidate != FINAL].groupby("iteration"):
        for n in rows.trial:
            t = trials[int(n)]
            base = t.user_attrs["netadapt.base"]
            if i == 0:
                assert base is None and "init_from" not in t.user_attrs and t.params["netadapt/init_from_trial"] == -1
                continue
            assert base == chosen[i - 1] and t.user_attrs["init_from"]["trial"] == base
            assert t.user_attrs["init_from"]["digest"] == model_digest(load_model(study, base))
        chosen[i] = int(rows[rows.chosen].trial.iloc[0])
    assert len(chosen) >= 3
    final = trials[int(history[history.candidate == FINAL].trial.iloc[0])]
    last = chosen[max(chosen)]
    assert final.user_attrs["init_from"]["trial"] == last
    assert final.user_attrs["init_from"]["digest"] == model_digest(load_model(study, last))


def test_progressive_netadapt_without_saved_models_says_why() -> None:
    task = make_mlp_task()
    study = run(task, "memory", n_trials=40, inherit_weights=True)
    reason = study.user_attrs["netadapt.result"]["reason"]
    assert "has no saved model" in reason and "inherit_weights: false" in reason
    assert set(netadapt_history(study).iteration) == {0}


def test_an_unreachable_target_ends_at_the_bounds() -> None:
    task = make_mlp_task()
    study = slimtune.search(
        task, strategy="netadapt", n_trials=60, storage="memory", space={"sensitivity": False, "max_sparsity": 0.5},
        progress=False, save_models="none", target=0.05, step=0.3, inherit_weights=False,
    )  # fmt: skip
    result = study.user_attrs["netadapt.result"]
    assert "no group can be pruned further" in result["reason"] and len(study.trials) < 60
    assert result["sparsities"] == {"features.0": 0.5, "features.2": 0.5}  # every group at its bound
    history = netadapt_history(study)
    assert history[history.chosen]["resource"].is_monotonic_decreasing


@pytest.mark.parametrize("wait", [True, False])
def test_candidates_of_one_iteration_run_on_parallel_workers(wait: bool) -> None:
    """Two threads share an in-memory study: candidates are split between them, a worker with no
    candidate left waits for the iteration (or, with ``wait=False``, ends its trial as a spare),
    and the choices equal a sequential run's."""
    task = make_mlp_task()
    graph = trace(task.model, task.example_inputs)
    space = SearchSpace(graph, SpaceOptions(sensitivity=False))
    predictor = ResourcePredictor(graph)

    def study_with(n_jobs: int) -> optuna.Study:
        strategy = get_strategy("netadapt", **PARAMS, inherit_weights=False)  # no models saved by this driver
        sampler = strategy.sampler(space, 1, 0, None)
        sampler.wait = wait
        study = optuna.create_study(sampler=sampler)
        study.set_user_attr("objectives", ["accuracy"])

        def objective(trial: optuna.trial.Trial) -> float:
            try:
                params = strategy.suggest(trial, space)
            finally:
                time.sleep(0.05)  # a trial takes time, a spare one too
            plan = strategy.plan(params, space)
            # a deterministic metric: groups differ in how much their pruning costs
            return -sum(w * s for w, s in zip((1.0, 3.0), plan.sparsities().values())) - predictor.relative(plan)["flops"]

        def stop(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            if strategy.finished(study):
                study.stop()

        study.optimize(objective, n_trials=60, n_jobs=n_jobs, callbacks=[stop])
        return study

    sequential, parallel = study_with(1), study_with(2)
    seq, par = netadapt_history(sequential), netadapt_history(parallel)
    path = lambda h: [(r.iteration, r.candidate) for r in h[h.chosen].itertuples()]  # noqa: E731
    assert path(par) == path(seq) and len(path(seq)) >= 2
    # the parallel run evaluated every candidate (duplicates at an iteration boundary are allowed)
    assert set(zip(par.iteration, par.candidate)) == set(zip(seq.iteration, seq.candidate))
    assert sum(t.state == TrialState.COMPLETE for t in parallel.trials) <= len(seq) + 2
    assert not math.isinf(par.cost.min())
    spares = [t for t in parallel.trials if t.user_attrs.get("netadapt.spare")]
    assert all(t.state == TrialState.PRUNED for t in spares)
    if wait:
        assert not spares


def test_parameter_errors_name_the_field() -> None:
    for params, field in (
        ({"step": 0}, "strategy.step"),
        ({"step": "fast"}, "strategy.step 'fast' must be in \\(0, 1\\] or 'auto'"),
        ({"step_decay": 1.5}, "strategy.step_decay"),
        ({"min_step": -0.1}, "strategy.min_step"),
        ({"long_term_finetune": {"epoch": 3}}, "strategy.long_term_finetune"),
        ({"short_term_finetune": 5}, "strategy.short_term_finetune"),
        ({"target": 0}, "strategy.target"),
    ):
        with pytest.raises(ValueError, match=field):
            get_strategy("netadapt", **params)


def test_warns_when_the_budget_cannot_reach_the_target(caplog) -> None:
    task = make_mlp_task()  # 2 groups; 1.0 to 0.1 by steps of 0.1 × 0.9^i (at least 0.02)
    params = {"target": 0.1, "step": 0.1, "step_decay": 0.9, "min_step": 0.02, "long_term_finetune": {"epochs": 1}}
    with caplog.at_level(logging.WARNING, logger="slimtune"):
        study = run(task, "memory", n_trials=4, **params)
    warned = [r.getMessage() for r in caplog.records if r.getMessage().startswith("netadapt: reaching")]
    iterations, trials = sampler_for(task, 4, **params).schedule(study)
    assert iterations >= 10 and trials > 4
    assert len(warned) == 1
    assert f"flops 0.1 takes about {trials} trials ({iterations} iterations + the long-term fine-tune)" in warned[0]
    assert "n_trials 4" in warned[0] and "without the long-term fine-tune" in warned[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="slimtune"):
        run(task, "memory", n_trials=40)  # PARAMS: 0.35 in 4 iterations, 8 trials
    assert not [r for r in caplog.records if r.getMessage().startswith("netadapt: reaching")]


def sampler_for(task: slimtune.Task, n_trials: int, **params) -> NetAdaptSampler:
    space = SearchSpace(trace(task.model, task.example_inputs), SpaceOptions(sensitivity=False))
    return NetAdaptSampler(space, {**get_strategy("netadapt").params, **PARAMS, **params}, n_trials=n_trials)


@pytest.mark.parametrize("n_trials", [7, 12])
def test_auto_step_reaches_the_target_within_the_budget(n_trials: int, caplog) -> None:
    task = make_mlp_task()  # the default step 0.1 (decay 0.9) would take 26 trials to reach 0.1
    params = {"target": 0.1, "step_decay": 0.9, "min_step": 0.02, "long_term_finetune": {"epochs": 1}}
    with caplog.at_level(logging.WARNING, logger="slimtune"):
        study = run(task, "memory", n_trials=n_trials, step="auto", **params)
    assert not [r for r in caplog.records if r.getMessage().startswith("netadapt: reaching")]
    step = study.user_attrs[STEP_ATTR]
    sampler = sampler_for(task, n_trials, **params)
    # the smallest first step on the 0.01 grid whose estimated schedule fits the budget, one iteration spare
    assert sampler.schedule(study, step)[1] <= n_trials - 2 < sampler.schedule(study, round(step - 0.01, 2))[1]
    result = study.user_attrs["netadapt.result"]
    assert "reached flops" in result["reason"] and result["final_trial"] is not None and len(study.trials) <= n_trials
    history = netadapt_history(study)
    first_budget = history[history.iteration == 0]["budget"].iloc[0]
    assert first_budget == pytest.approx(max(0.1, 1.0 - step))  # the schedule started with that step


def test_auto_step_is_chosen_once_and_kept_in_the_study(tmp_path) -> None:
    task = make_mlp_task()
    url = f"sqlite:///{tmp_path / 'auto.db'}"
    params = {"target": 0.1, "step": "auto", "step_decay": 0.9, "min_step": 0.02}
    first_run = run(task, url, n_trials=6, **params)
    first = first_run.user_attrs[STEP_ATTR]
    done = len(first_run.trials)
    resumed = run(task, url, n_trials=40, **params)  # a bigger budget would pick a smaller step: the stored one stays
    assert resumed.user_attrs[STEP_ATTR] == first
    assert sampler_for(task, 40, **params).auto_step(resumed) < first
    assert sampler_for(task, 40, **params).first_step(resumed) == first
    # the resumed run replays the stored schedule: the study stays finished, its first budget 1 - step
    assert len(resumed.trials) == done and "reached flops" in resumed.user_attrs["netadapt.result"]["reason"]
    assert netadapt_history(resumed)["budget"].iloc[0] == pytest.approx(1.0 - first)
    assert "reached flops" in resumed.user_attrs["netadapt.result"]["reason"]
