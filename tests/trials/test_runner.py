"""Running studies in-process on a temporary SQLite storage.

What every trial records, the Pareto front, resuming, failing / NaN evaluations, the sensitivity
cache, single-objective (weighted / constrained) studies, fine-tune reporting and pruning.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import optuna
import pytest
import torch
from optuna.study import StudyDirection
from optuna.trial import TrialState

import slimtune
from slimtune.compressors import compress, count_flops, count_params, model_size_bytes, trace
from slimtune.compressors.plan import CompressionPlan
from slimtune.compressors.sensitivity import max_safe_level, min_safe_bits
from slimtune.errors import SlimtuneError
from slimtune.examples.models import mlp
from slimtune.trials import bit_sensitivity_table, export_model, load_model, open_study, pareto_front, search, sensitivity_table, studies_summary, trials_table
from slimtune.trials.sensitivity import SENSITIVITY_PREFIX

MEASURE_KEYS = {
    "accuracy", "accuracy_drop", "flops", "flops_abs", "params", "params_abs",
    "size", "size_abs", "latency", "latency_abs", "memory", "memory_abs",
}  # fmt: skip
TIME_KEYS = {"compress", "finetune", "evaluate", "measure", "save", "total"}
NO_SENS = {"sensitivity": False}


class Tiny:
    """An MLP (two prunable groups) on random data labelled by its own predictions.

    ``evaluate`` counts its calls; ``hook(call_number, model, accuracy_fn)`` may replace the
    metric (raise, return NaN ...). Two instances built with the same arguments hold identical
    weights (same sensitivity-cache fingerprint).
    """

    def __init__(
        self,
        name: str = "tiny-runner",
        hook: Callable[[int, torch.nn.Module, Callable[[torch.nn.Module], float]], Any] | None = None,
        finetune: Callable[..., Any] | None = None,
    ) -> None:
        g = torch.Generator().manual_seed(0)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.model = mlp(16, (32, 16), 4).eval()
        self.x = torch.randn(256, 16, generator=g)
        with torch.no_grad():
            self.y = self.model(self.x).argmax(1)
        self.calls = 0
        self.hook = hook
        self.task = slimtune.Task(self.model, self.x[:1], self.evaluate, finetune=finetune, name=name)

    def accuracy(self, m: torch.nn.Module) -> float:
        with torch.no_grad():
            return float((m(self.x).argmax(1) == self.y).float().mean())

    def evaluate(self, m: torch.nn.Module) -> Any:
        self.calls += 1
        if self.hook is not None:
            return self.hook(self.calls, m, self.accuracy)
        return self.accuracy(m)


def sqlite(tmp_path: Path, name: str = "study.db") -> str:
    return f"sqlite:///{tmp_path / name}"


def states(study: optuna.Study) -> dict[TrialState, int]:
    out: dict[TrialState, int] = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state] = out.get(t.state, 0) + 1
    return out


def snapshot(study: optuna.Study) -> list[tuple]:
    return [(t.number, t.state, t.params, t.values, t.user_attrs) for t in study.get_trials(deepcopy=True)]


def dominates(a: list[float], b: list[float], directions: list[StudyDirection]) -> bool:
    sa = [v if d == StudyDirection.MINIMIZE else -v for v, d in zip(a, directions)]
    sb = [v if d == StudyDirection.MINIMIZE else -v for v, d in zip(b, directions)]
    return all(x <= y for x, y in zip(sa, sb)) and any(x < y for x, y in zip(sa, sb))


# ---------------------------------------------------------------------- what a trial records
@pytest.fixture(scope="module")
def digits_study(tmp_path_factory: pytest.TempPathFactory):
    from slimtune.examples.digits import make_task

    task = make_task(finetune_epochs=0)
    url = sqlite(tmp_path_factory.mktemp("digits"), "digits.db")
    study = search(task, strategy="random", n_trials=3, storage=url, study_name="digits", space=NO_SENS, progress=False)
    return task, study, url


def test_complete_trials_record_plan_measures_and_times(digits_study) -> None:
    task, study, _ = digits_study
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 3 and all(t.state == TrialState.COMPLETE for t in trials)
    baseline = study.user_attrs["baseline"]
    assert baseline["accuracy"] == task.evaluate(task.model)
    assert baseline["flops"] == float(count_flops(task.model, task.example_inputs)["macs"].sum())
    groups = [g.name for g in trace(task.model, task.example_inputs).prunable_groups()]
    for t in trials:
        # the plan rebuilds the same model
        plan = CompressionPlan.from_dict(t.user_attrs["plan"])
        assert plan.sparsities() == {g: t.params[f"sparsity/{g}"] for g in groups}
        m = t.user_attrs["measures"]
        assert set(m) == MEASURE_KEYS
        rebuilt = compress(task.model, plan, task.example_inputs, data=task.calibration)
        assert float(count_flops(rebuilt, task.example_inputs)["macs"].sum()) == m["flops_abs"]
        assert count_params(rebuilt)[0] == m["params_abs"]
        assert model_size_bytes(rebuilt).total_bytes == m["size_abs"]
        # relative measures and the objective values agree with the absolute ones
        assert m["flops"] == pytest.approx(m["flops_abs"] / baseline["flops"])
        assert m["params"] == pytest.approx(m["params_abs"] / baseline["params"])
        assert m["size"] == pytest.approx(m["size_abs"] / baseline["size"])
        assert m["accuracy_drop"] == pytest.approx(baseline["accuracy"] - m["accuracy"])
        assert 0.0 < m["flops"] < 1.0
        assert m["latency"] is None and m["latency_abs"] is None  # latency not asked for
        assert m["memory"] is None and m["memory_abs"] is None  # nor memory
        assert t.values == [m["accuracy"], m["flops"]]
        assert t.user_attrs["constraints"] == {}
        times = t.user_attrs["times"]
        assert set(times) == TIME_KEYS
        assert all(v >= 0.0 for v in times.values())
        assert times["total"] >= max(v for k, v in times.items() if k != "total")
        assert t.user_attrs["hostname"]
        assert t.user_attrs["model_artifact"]


def test_load_model_evaluates_to_the_stored_accuracy(
    digits_study, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    task, study, _ = digits_study
    for t in study.get_trials(deepcopy=False):
        model = load_model(study, t.number, task.model)  # rebuilt from the original and the plan: no pickle
        assert isinstance(model, torch.nn.Module)
        m = t.user_attrs["measures"]
        assert task.evaluate(model) == m["accuracy"]
        assert float(count_flops(model, task.example_inputs)["macs"].sum()) == m["flops_abs"]
    out = export_model(study, 1, tmp_path / "sub" / "model.safetensors")
    exported = slimtune.load(out, task.model)
    assert task.evaluate(exported) == study.trials[1].user_attrs["measures"]["accuracy"]
    with pytest.raises(SlimtuneError, match="has no trial 99"):
        load_model(study, 99, task.model)
    # in the process that ran the search the task's model is remembered; elsewhere it must be given
    assert task.evaluate(load_model(study, 1)) == study.trials[1].user_attrs["measures"]["accuracy"]
    import weakref

    from slimtune.trials import results

    monkeypatch.setattr(results, "_BASE_MODELS", weakref.WeakValueDictionary())
    with pytest.raises(SlimtuneError, match=r"needs the model the study compressed: load_model\(study, 1, task.model\)"):
        load_model(study, 1)


def test_reopened_study_loads_models(digits_study) -> None:
    task, study, url = digits_study
    again = open_study(url, "digits")
    assert task.evaluate(load_model(again, 0)) == study.trials[0].user_attrs["measures"]["accuracy"]
    with pytest.raises(SlimtuneError) as info:
        open_study(url, "nope")
    assert "'nope'" in str(info.value) and "digits" in str(info.value)
    assert SENSITIVITY_PREFIX not in str(info.value)


def test_trials_table_and_front_columns(digits_study) -> None:
    _, study, _ = digits_study
    table = trials_table(study)
    assert list(table["trial"]) == [0, 1, 2]
    for col in ("objective:accuracy", "objective:flops", "accuracy", "accuracy_drop", "flops", "flops_rel",
                "params", "params_rel", "size_bytes", "size_rel", "plan", "plan_json", "feasible"):  # fmt: skip
        assert col in table.columns, col
    assert table["feasible"].all()  # no constraint: every trial is feasible
    front = pareto_front(study)
    assert 1 <= len(front) <= 3
    assert list(front["objective:accuracy"]) == sorted(front["objective:accuracy"], reverse=True)


def test_save_models_none(tmp_path: Path) -> None:
    tiny = Tiny()
    study = search(tiny.task, strategy="random", n_trials=2, storage=sqlite(tmp_path), study_name="s", space=NO_SENS,
                   progress=False, save_models="none")  # fmt: skip
    assert all("model_artifact" not in t.user_attrs for t in study.trials)
    with pytest.raises(SlimtuneError, match="saving was off"):
        load_model(study, 0)


# ---------------------------------------------------------------------- Pareto front
def test_pareto_front_is_the_feasible_nondominated_set(tmp_path: Path) -> None:
    tiny = Tiny()
    study = search(tiny.task, strategy="random", n_trials=16, storage=sqlite(tmp_path), study_name="p", space=NO_SENS,
                   progress=False, constraints=["flops <= 0.35"], save_models="none")  # fmt: skip
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    assert len(complete) == 16

    def feasible(t) -> bool:
        return all(v <= 0 for v in t.user_attrs["constraints"].values())

    for t in complete:
        assert set(t.user_attrs["constraints"]) == {"flops <= 0.35"}
        assert feasible(t) == (t.user_attrs["measures"]["flops"] <= 0.35)
    ok = [t for t in complete if feasible(t)]
    bad = [t for t in complete if not feasible(t)]
    assert ok and bad, "the constraint should split the trials"
    expected = {t.number for t in ok if not any(dominates(u.values, t.values, study.directions) for u in ok)}
    front = pareto_front(study)
    assert set(front["trial"]) == expected
    assert len(front) == len(expected)
    assert not set(front["trial"]) & {t.number for t in bad}
    assert front["feasible"].all()
    # an infeasible trial that would dominate the whole front still stays out of it
    assert "state" not in front.columns


def test_pareto_front_empty_when_every_trial_fails(tmp_path: Path) -> None:
    def hook(n: int, m: torch.nn.Module, acc: Callable) -> float:
        if n > 1:  # the baseline works, every trial fails
            raise ValueError("broken metric")
        return acc(m)

    tiny = Tiny(hook=hook)
    study = search(tiny.task, strategy="random", n_trials=3, storage=sqlite(tmp_path), study_name="f", space=NO_SENS,
                   progress=False, save_models="none")  # fmt: skip
    assert states(study) == {TrialState.FAIL: 3}
    assert pareto_front(study).empty
    summary = studies_summary(sqlite(tmp_path))
    assert list(summary["study"]) == ["f"]
    assert summary.loc[0, "fail"] == 3 and summary.loc[0, "front_size"] == 0


# ---------------------------------------------------------------------- resuming
def test_rerun_does_not_add_trials_and_raising_the_budget_adds_the_difference(tmp_path: Path) -> None:
    url = sqlite(tmp_path)
    tiny = Tiny()
    kw = dict(strategy="random", storage=url, study_name="r", space=NO_SENS, progress=False, save_models="none")
    study = search(tiny.task, n_trials=3, **kw)
    assert len(study.trials) == 3
    before = snapshot(study)
    calls = tiny.calls
    study = search(tiny.task, n_trials=3, **kw)
    assert len(study.trials) == 3
    assert snapshot(study) == before
    assert tiny.calls == calls  # not even the baseline is evaluated again
    study = search(tiny.task, n_trials=5, **kw)
    assert len(study.trials) == 5
    assert states(study) == {TrialState.COMPLETE: 5}
    assert snapshot(study)[:3] == before
    assert tiny.calls == calls + 2
    # a smaller budget than what is done runs nothing
    study = search(tiny.task, n_trials=2, **kw)
    assert len(study.trials) == 5


def test_budget_smaller_than_the_seed_trials_runs_them_in_order(tmp_path: Path) -> None:
    # with sensitivity on, two seed trials are queued; a budget of 1 runs the first one (it must
    # not be mistaken for an over-budget trial) and leaves the second queued for a larger budget
    url = sqlite(tmp_path)
    tiny = Tiny()
    kw = dict(strategy="nsga2", storage=url, study_name="seeds", progress=False, save_models="none")
    study = search(tiny.task, n_trials=1, **kw)
    assert [(t.number, t.state) for t in study.trials] == [(0, TrialState.COMPLETE), (1, TrialState.WAITING)]
    study = search(tiny.task, n_trials=3, **kw)
    assert states(study) == {TrialState.COMPLETE: 3}
    assert all("over_budget" not in t.user_attrs for t in study.trials)


@pytest.mark.parametrize("strategy", ["random", "tpe", "nsga2"])
def test_resumed_study_proposes_new_points(tmp_path: Path, strategy: str) -> None:
    """Resuming must continue the search, not replay the sampler's first proposals (same seed)."""
    tiny = Tiny()
    kw: dict[str, Any] = dict(strategy=strategy, storage=sqlite(tmp_path), study_name="r", space=NO_SENS, progress=False,
                              save_models="none")  # fmt: skip
    search(tiny.task, n_trials=3, **kw)
    study = search(tiny.task, n_trials=6, **kw)
    assert len(study.trials) == 6
    points = [tuple(sorted(t.params.items())) for t in study.trials]
    repeated = [t.number for t, p in zip(study.trials, points) if points.index(p) != t.number]
    assert not repeated, f"trials {repeated} repeat earlier trials' parameters"


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"objectives": ["accuracy", "params"]}, ["objectives", "'flops'", "'params'"]),
        ({"objectives": ["accuracy"]}, ["objectives", "['accuracy', 'flops']", "['accuracy']"]),
        ({"strategy": "tpe"}, ["strategy", "'random'", "'tpe'"]),
        ({"constraints": ["flops <= 0.5"]}, ["constraints", "flops <= 0.5"]),
    ],
)
def test_resume_with_other_settings_is_an_error(tmp_path: Path, change: dict, words: list[str]) -> None:
    url = sqlite(tmp_path)
    tiny = Tiny()
    kw: dict[str, Any] = dict(strategy="random", storage=url, study_name="r", space=NO_SENS, progress=False, save_models="none")
    search(tiny.task, n_trials=2, **kw)
    with pytest.raises(SlimtuneError) as info:
        search(tiny.task, n_trials=4, **{**kw, **change})
    msg = str(info.value)
    assert "'r'" in msg
    for w in words:
        assert w in msg, (w, msg)
    assert len(open_study(url, "r").trials) == 2


def test_resume_with_weights_is_an_error(tmp_path: Path) -> None:
    """A Pareto study resumed as a weighted (single-value) one must be refused, not fail every trial."""
    url = sqlite(tmp_path)
    tiny = Tiny()
    kw: dict[str, Any] = dict(strategy="random", storage=url, study_name="r", space=NO_SENS, progress=False, save_models="none")
    search(tiny.task, n_trials=2, **kw)
    with pytest.raises(SlimtuneError, match="weights"):
        search(tiny.task, n_trials=4, weights={"accuracy": 1.0, "flops": 0.5}, **kw)
    assert len(open_study(url, "r").trials) == 2


def test_join_needs_an_existing_study(tmp_path: Path) -> None:
    with pytest.raises(SlimtuneError, match="does not exist yet"):
        search(Tiny().task, strategy="random", n_trials=2, storage=sqlite(tmp_path), study_name="missing", space=NO_SENS,
               progress=False, join=True)  # fmt: skip


# ---------------------------------------------------------------------- failing evaluations
def test_raising_evaluate_fails_those_trials_and_the_budget_completes(tmp_path: Path) -> None:
    def hook(n: int, m: torch.nn.Module, acc: Callable) -> float:
        if n % 2 == 0:  # call 1 is the baseline; calls 2, 4, 6 ... fail
            raise RuntimeError(f"boom on call {n}")
        return acc(m)

    tiny = Tiny(hook=hook)
    study = search(tiny.task, strategy="random", n_trials=6, storage=sqlite(tmp_path), study_name="f", space=NO_SENS,
                   progress=False)  # fmt: skip
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 6  # FAIL counts as finished
    assert states(study) == {TrialState.FAIL: 3, TrialState.COMPLETE: 3}
    for t in trials:
        if t.state == TrialState.FAIL:
            assert t.user_attrs["fail_reason"].startswith("RuntimeError: boom on call ")
            assert "measures" not in t.user_attrs
            assert "plan" in t.user_attrs and "times" in t.user_attrs
        else:
            assert "fail_reason" not in t.user_attrs
    assert [t.number for t in trials if t.state == TrialState.FAIL] == [0, 2, 4]
    table = trials_table(study, states=(TrialState.FAIL,))
    assert table["fail_reason"].str.contains("boom").all()
    assert set(pareto_front(study)["trial"]) <= {1, 3, 5}


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (float("nan"), "TrialFailure: evaluate returned nan"),
        (float("inf"), "TrialFailure: evaluate returned inf"),
        ("high", "TrialFailure: evaluate returned 'high', not a number"),
        (None, "TrialFailure: evaluate returned None, not a number"),
    ],
)
def test_non_finite_metric_fails_the_trial(tmp_path: Path, bad: Any, reason: str) -> None:
    def hook(n: int, m: torch.nn.Module, acc: Callable) -> Any:
        return bad if n in (3, 4) else acc(m)  # trials 1 and 2 (calls 3, 4) are bad

    tiny = Tiny(hook=hook)
    study = search(tiny.task, strategy="random", n_trials=4, storage=sqlite(tmp_path), study_name="n", space=NO_SENS,
                   progress=False, save_models="none")  # fmt: skip
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.FAIL, TrialState.COMPLETE]
    for t in trials[1:3]:
        assert t.user_attrs["fail_reason"] == reason
    for t in (trials[0], trials[3]):
        assert all(not (isinstance(v, float) and math.isnan(v)) for v in t.values)


# ---------------------------------------------------------------------- sensitivity cache
LEVELS = {"levels": [0.25, 0.5, 0.75]}


def test_sensitivity_table_is_computed_once_per_storage(tmp_path: Path) -> None:
    url = sqlite(tmp_path)
    tiny = Tiny(name="tiny-sens")
    groups = [g.name for g in trace(tiny.model, tiny.x[:1]).prunable_groups()]
    first = sensitivity_table(tiny.task, url, LEVELS, progress=False)
    assert tiny.calls == 1 + len(groups) * 3  # baseline + one evaluation per group and level
    assert first.attrs["cached"] is False
    assert len(first) == len(groups) * 3
    assert sorted(set(first["group"])) == sorted(groups)
    assert sorted(set(first["level"])) == [0.25, 0.5, 0.75]
    assert first.groupby("group").size().to_dict() == {g: 3 for g in groups}

    second = sensitivity_table(tiny.task, url, LEVELS, progress=False)
    assert tiny.calls == 1 + len(groups) * 3  # nothing evaluated
    assert second.attrs["cached"] is True
    assert second.attrs["baseline"] == first.attrs["baseline"] == 1.0
    assert list(second.columns) == list(first.columns)
    assert list(second["group"]) == list(first["group"])
    for col in ("level", "channels", "removed", "metric", "drop"):
        assert list(second[col]) == list(first[col]), col
    for col in ("flops_rel", "seconds"):
        assert list(second[col]) == pytest.approx(list(first[col]), rel=1e-9), col

    # another Task object over the same weights (another process, a resumed study) hits the cache
    other = Tiny(name="tiny-sens")
    third = sensitivity_table(other.task, url, LEVELS, progress=False)
    assert other.calls == 0 and third.attrs["cached"] is True
    # another criterion is another analysis
    fourth = sensitivity_table(other.task, url, {**LEVELS, "criterion": "l2"}, progress=False)
    assert fourth.attrs["cached"] is False and other.calls == 1 + len(groups) * 3
    # the cache studies are not listed as slimtune studies
    assert studies_summary(url).empty


def test_studies_reuse_the_cached_sensitivity(tmp_path: Path) -> None:
    url = sqlite(tmp_path)
    tiny = Tiny(name="tiny-sens2")
    space = {**LEVELS, "tolerance": 0.3, "headroom": 0.1}
    table = sensitivity_table(tiny.task, url, space, progress=False)
    after_table = tiny.calls
    for name in ("a", "b"):
        before = tiny.calls
        study = search(tiny.task, strategy="random", n_trials=3, storage=url, study_name=name, space=space,
                       progress=False, save_models="none")  # fmt: skip
        assert tiny.calls == before + 1 + 3, name  # the study's baseline and its trials only
        safe = max_safe_level(table, 0.3)
        upper = study.user_attrs["space"]["upper"]
        assert upper == {g: pytest.approx(min(0.9, safe[g] + 0.1)) for g in safe}
        for t in study.trials:
            for key, value in t.params.items():
                assert value <= upper[key[len("sparsity/") :]] + 1e-12
    assert tiny.calls == after_table + 2 * 4


def test_bit_sensitivity_is_cached_and_seeds_the_search(tmp_path: Path) -> None:
    url = sqlite(tmp_path)
    tiny = Tiny(name="tiny-bits")
    layers = trace(tiny.model, tiny.x[:1]).quantizable_layers()
    space = {**LEVELS, "bits_w": [2, 4, 8, 32], "tolerance": 0.02}
    first = bit_sensitivity_table(tiny.task, url, space, progress=False)
    assert tiny.calls == 1 + len(layers) * 3  # baseline + one evaluation per layer and bit-width below 32
    assert first.attrs["cached"] is False
    assert first.groupby("layer")["bits_w"].apply(sorted).to_dict() == {n: [2, 4, 8] for n in layers}
    # 8-bit weights barely move this MLP's predictions, 2-bit weights do
    by = first.set_index(["layer", "bits_w"])["drop"]
    assert all(by[(n, 8)] <= 0.02 for n in layers)
    assert max(by[(n, 2)] for n in layers) > by[(layers[0], 8)]

    calls = tiny.calls
    study = search(tiny.task, strategy="random", n_trials=2, storage=url, study_name="bits", space=space,
                   progress=False, save_models="none")  # fmt: skip
    # the pruning table is computed (not cached yet), the bit table is reused
    groups = [g.name for g in trace(tiny.model, tiny.x[:1]).prunable_groups()]
    assert tiny.calls == calls + (1 + len(groups) * 3) + 1 + 2
    safe = min_safe_bits(first, 0.02)
    assert study.user_attrs["space"]["safe_bits"] == {n: safe[n] for n in layers}
    seed = study.trials[1].params  # the second enqueued seed: sensitivity-safe sparsity and bits
    assert {n: seed[f"bits_w/{n}"] for n in layers} == {n: safe[n] for n in layers}
    assert study.trials[1].user_attrs["plan"]["quantize"]
    assert bit_sensitivity_table(Tiny(name="tiny-bits").task, url, space, progress=False).attrs["cached"] is True
    assert studies_summary(url)["study"].tolist() == ["bits"]  # neither cache is listed


# ---------------------------------------------------------------------- single objective
def test_weighted_study_minimises_one_scalar(tmp_path: Path) -> None:
    tiny = Tiny()
    weights = {"accuracy": 1.0, "flops": 0.5}
    study = search(tiny.task, strategy="random", n_trials=5, storage=sqlite(tmp_path), study_name="w", space=NO_SENS,
                   progress=False, weights=weights, save_models="none")  # fmt: skip
    assert study.directions == [StudyDirection.MINIMIZE]
    assert study.user_attrs["weights"] == weights
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    assert len(complete) == 5
    for t in complete:
        m = t.user_attrs["measures"]
        assert t.values == [pytest.approx(-1.0 * m["accuracy"] + 0.5 * m["flops"])]
    front = pareto_front(study)
    assert len(front) == 1
    assert front.loc[0, "cost"] == min(t.value for t in complete)
    assert front.loc[0, "trial"] == study.best_trial.number


def test_accuracy_only_with_a_constraint(tmp_path: Path) -> None:
    tiny = Tiny()
    study = search(tiny.task, strategy="random", n_trials=8, storage=sqlite(tmp_path), study_name="a", space=NO_SENS,
                   progress=False, objectives=["accuracy"], constraints=["flops <= 0.35"], save_models="none")  # fmt: skip
    assert study.directions == [StudyDirection.MAXIMIZE]
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    assert len(complete) == 8
    feasible = [t for t in complete if t.user_attrs["measures"]["flops"] <= 0.35]
    assert feasible and len(feasible) < len(complete)
    for t in complete:
        assert t.values == [t.user_attrs["measures"]["accuracy"]]
    front = pareto_front(study)
    assert len(front) == 1 and bool(front.loc[0, "feasible"])
    assert front.loc[0, "accuracy"] == max(t.value for t in feasible)
    assert front.loc[0, "flops_rel"] <= 0.35


def test_finetune_gets_a_report_callable_in_single_objective_studies(tmp_path: Path) -> None:
    got: list[Any] = []

    def finetune(model: torch.nn.Module, report: Callable[[int, float], None]) -> None:
        got.append(report)
        for step in range(3):
            report(step, 0.5 + 0.1 * step)

    tiny = Tiny(finetune=finetune)
    study = search(tiny.task, strategy="random", n_trials=3, storage=sqlite(tmp_path), study_name="ft", space=NO_SENS,
                   progress=False, objectives=["accuracy"], save_models="none")  # fmt: skip
    assert len(got) == 3 and all(callable(r) for r in got)
    assert states(study) == {TrialState.COMPLETE: 3}
    for t in study.trials:
        assert t.intermediate_values == {0: 0.5, 1: pytest.approx(0.6), 2: pytest.approx(0.7)}
        assert t.user_attrs["times"]["finetune"] >= 0.0


def test_one_argument_finetune_is_called_without_report(tmp_path: Path) -> None:
    got: list[torch.nn.Module] = []
    tiny = Tiny(finetune=lambda m: got.append(m))
    study = search(tiny.task, strategy="random", n_trials=2, storage=sqlite(tmp_path), study_name="ft1", space=NO_SENS,
                   progress=False, objectives=["accuracy"], save_models="none")  # fmt: skip
    assert len(got) == 2 and states(study) == {TrialState.COMPLETE: 2}
    assert all(isinstance(m, torch.nn.Module) and m is not tiny.model for m in got)


def test_two_argument_finetune_works_in_multi_objective_studies(tmp_path: Path) -> None:
    """``finetune(model, report)`` is a documented signature; a Pareto study must not fail its trials."""
    got: list[Any] = []

    def finetune(model: torch.nn.Module, report: Any) -> None:
        got.append(report)
        if report is not None:
            report(0, 0.5)

    tiny = Tiny(finetune=finetune)
    study = search(tiny.task, strategy="random", n_trials=2, storage=sqlite(tmp_path), study_name="ftm", space=NO_SENS,
                   progress=False, save_models="none")  # fmt: skip
    reasons = [t.user_attrs.get("fail_reason") for t in study.trials]
    assert states(study) == {TrialState.COMPLETE: 2}, reasons
    assert len(got) == 2


def _reporting_finetune(first: float, later: float) -> Callable[..., None]:
    """The first 4 fine-tunes report ``first`` at steps 0-2, later ones ``later``."""
    count = [0]

    def finetune(model: torch.nn.Module, report: Callable[[int, float], None]) -> None:
        count[0] += 1
        value = first if count[0] <= 4 else later
        for step in range(3):
            report(step, value)

    return finetune


def test_bad_intermediate_values_are_pruned(tmp_path: Path) -> None:
    tiny = Tiny(finetune=_reporting_finetune(first=1.0, later=0.0))
    study = search(tiny.task, strategy="random", n_trials=7, storage=sqlite(tmp_path), study_name="prune", space=NO_SENS,
                   progress=False, objectives=["accuracy"], save_models="none")  # fmt: skip
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 7  # PRUNED counts as finished
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4 + [TrialState.PRUNED] * 3
    for t in trials[4:]:
        assert t.intermediate_values == {0: 0.0}  # stopped at the first report
        assert "measures" not in t.user_attrs
    assert set(pareto_front(study)["trial"]) <= {0, 1, 2, 3}


@pytest.mark.parametrize(("first", "later", "pruned"), [(0.0, 1.0, False), (1.0, 0.0, True)])
def test_pruning_in_weighted_studies_follows_the_metric_direction(tmp_path: Path, first: float, later: float, pruned: bool) -> None:
    """``report(step, metric)`` reports the task's metric (here: accuracy, higher is better).

    A weighted study minimises a cost, but a trial whose reported accuracy is *better* than the
    others' must not be pruned, and a worse one must be.
    """
    tiny = Tiny(finetune=_reporting_finetune(first, later))
    study = search(tiny.task, strategy="random", n_trials=6, storage=sqlite(tmp_path), study_name="wp", space=NO_SENS,
                   progress=False, weights={"accuracy": 1.0, "flops": 0.1}, save_models="none")  # fmt: skip
    later_states = [t.state for t in study.get_trials(deepcopy=False)[4:]]
    expected = TrialState.PRUNED if pruned else TrialState.COMPLETE
    assert later_states == [expected] * 2


def test_repeated_parameters_reuse_the_completed_result(tmp_path: Path) -> None:
    # the uniform grid with 2 points and a budget of 4 makes the sampler repeat both points
    url = sqlite(tmp_path)
    tiny = Tiny()
    study = search(tiny.task, strategy="uniform", points=2, n_trials=4, storage=url, study_name="dup",
                   space=NO_SENS, progress=False)
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    firsts = {t.params["sparsity/uniform"]: t for t in done if "duplicate_of" not in t.user_attrs}
    dups = [t for t in done if "duplicate_of" in t.user_attrs]
    assert len(firsts) == 2 and len(dups) == 2
    for t in dups:
        original = study.trials[t.user_attrs["duplicate_of"]]
        assert original.params == t.params and original.values == t.values
        assert t.user_attrs["measures"] == original.user_attrs["measures"]
    assert tiny.calls == 1 + 2  # the baseline and the two distinct points only


def test_search_over_bit_widths_on_digits(tmp_path: Path) -> None:
    from slimtune.compressors.quantization import quant_wrappers
    from slimtune.examples.digits import make_task

    task = make_task(finetune_epochs=0, cache_dir=tmp_path / "cache")
    study = search(task, strategy="random", n_trials=3, storage=sqlite(tmp_path), study_name="bits",
                   space={"sensitivity": False, "bits_w": [4, 8], "bits_a": [8]}, progress=False)
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(done) == 3
    for t in done:
        plan = CompressionPlan.from_dict(t.user_attrs["plan"])
        assert plan.quantize and all(q.bits_w in (4, 8) and q.bits_a == 8 for q in plan.quantize.values())
        # quantized weights make the stored size far smaller than the pruned float model's
        assert t.user_attrs["measures"]["size"] < t.user_attrs["measures"]["params"] * 0.5
    model = load_model(study, done[0].number)
    assert set(quant_wrappers(model)) == set(CompressionPlan.from_dict(done[0].user_attrs["plan"]).quantize)
    with pytest.raises(SlimtuneError, match="calibration"):
        no_data = make_task(finetune_epochs=0, cache_dir=tmp_path / "cache")
        no_data.calibration = None
        search(no_data, strategy="random", n_trials=1, storage=sqlite(tmp_path), study_name="nodata",
               space={"sensitivity": False, "bits_a": [8]}, progress=False)


def test_a_dead_workers_trial_keeps_its_place_in_the_budget() -> None:
    """Trials 0 and 1 finished, trial 2's worker died (failed, its copy queued with a later number): with a
    budget of 3, a new trial asked before the copy runs is over budget, and the copy itself runs."""
    from slimtune.optuna_internals import _RETRIED_FROM  # noqa: PLC2701 - the attribute Optuna's retry writes
    from slimtune.trials.driver import Budgeted

    study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    ran: list[int] = []

    class Objective:
        def __call__(self, trial: optuna.trial.Trial) -> float:
            ran.append(trial.number)
            return 0.0

    budgeted = Budgeted(Objective(), n_trials=3)  # type: ignore[arg-type]
    for _ in range(2):
        study.optimize(budgeted, n_trials=1)
    dead = study.ask()  # trial 2: its worker dies
    study.tell(dead, state=TrialState.FAIL)

    def asked_before_the_copy(trial: optuna.trial.Trial) -> float:  # trial 3
        copy = optuna.trial.create_trial(state=TrialState.WAITING, system_attrs={_RETRIED_FROM: dead.number})
        study.add_trial(copy)  # trial 4: trial 2's copy, queued while trial 3 runs
        return budgeted(trial)

    study.optimize(asked_before_the_copy, n_trials=1)
    new = study.trials[3]
    assert new.state == TrialState.PRUNED and new.user_attrs["over_budget"] is True
    study.optimize(budgeted, n_trials=1)  # runs the queued copy
    assert ran == [0, 1, 4]
