"""The YAML spec: loading, validation errors that name the file and the field, building the task."""

from __future__ import annotations

import sys
from pathlib import Path
from textwrap import dedent

import pytest

from slimtune.errors import SlimtuneError, SpecError
from slimtune.trials.spec import DEFAULT_STORAGE, Spec, load_spec
from slimtune.trials.task import Task

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent

VALID = """\
study: tiny
storage: sqlite:///tiny.db
task: _tasks:tiny_task
task_args: {hidden: 8}
strategy: {name: nsga2, population_size: 4}
space: {max_sparsity: 0.8, min_sparsity: 0.1, levels: [0.25, 0.5], criterion: l2, sensitivity: false}
objectives: [accuracy, params]
constraints: ["flops <= 0.5", "accuracy_drop <= 0.02"]
n_trials: 3
timeout: 60
seed: 7
save_models: none
backend: local
"""
MINIMAL = "study: s\ntask: _tasks:tiny_task\nn_trials: 2\n"


@pytest.fixture(autouse=True)
def _tests_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", [str(TESTS), *sys.path])


def write(tmp_path: Path, text: str, name: str = "bad.yaml") -> Path:
    path = tmp_path / name
    path.write_text(dedent(text))
    return path


def spec_error(tmp_path: Path, text: str) -> SpecError:
    path = write(tmp_path, text)
    with pytest.raises(SpecError) as info:
        load_spec(path).make_task()
    return info.value


# -------------------------------------------------------------------------------------------------
# valid specs


def test_valid_spec_loads(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, VALID, "good.yaml"))
    assert spec.path == tmp_path / "good.yaml"
    assert spec.study == "tiny" and spec.storage == "sqlite:///tiny.db"
    assert spec.task == "_tasks:tiny_task" and spec.task_args == {"hidden": 8}
    assert spec.strategy_name == "nsga2" and spec.strategy_params == {"population_size": 4}
    assert spec.strategy == {"name": "nsga2", "population_size": 4}
    assert spec.space == {
        "max_sparsity": 0.8, "min_sparsity": 0.1, "levels": [0.25, 0.5], "criterion": "l2", "sensitivity": False
    }
    assert spec.objectives == ["accuracy", "params"]
    assert spec.constraints == ["flops <= 0.5", "accuracy_drop <= 0.02"]
    assert (spec.n_trials, spec.timeout, spec.seed) == (3, 60.0, 7)
    assert (spec.save_models, spec.backend) == ("none", "local")


def test_defaults() -> None:
    spec = Spec.from_yaml(MINIMAL)
    assert spec.storage is None and spec.storage_url == DEFAULT_STORAGE
    assert spec.strategy == spec.strategy_name == "nsga2" and spec.strategy_params == {}
    assert spec.objectives == ["accuracy", "flops"] and spec.constraints == []
    assert spec.space is None and spec.timeout is None
    assert (spec.seed, spec.save_models, spec.backend) == (0, "all", "local")
    assert Spec.from_yaml("study: s\ntask: m:f\ntimeout: 5").n_trials is None


@pytest.mark.parametrize("text", [VALID, MINIMAL, "study: s\ntask: a.b:c.d\ntimeout: 1.5\nstrategy: random\n"])
def test_round_trip(text: str) -> None:
    spec = Spec.from_yaml(text)
    assert Spec.from_dict(spec.to_dict()) == spec
    assert Spec.from_yaml(spec.to_yaml()) == spec


def test_search_kwargs() -> None:
    kwargs = Spec.from_yaml(VALID).search_kwargs()
    assert kwargs["strategy"] == "nsga2" and kwargs["population_size"] == 4
    assert kwargs["study_name"] == "tiny" and kwargs["objectives"] == ("accuracy", "params")
    assert kwargs["space"]["levels"] == [0.25, 0.5] and kwargs["n_trials"] == 3
    assert Spec.from_yaml(MINIMAL).search_kwargs()["constraints"] is None


def test_space_names_the_quantization_algorithm() -> None:
    spec = Spec.from_yaml(MINIMAL + "\nspace: {bits_w: [2, 4, 32], quant_algorithm: [ste, slb]}\n")
    assert spec.space["quant_algorithm"] == ["ste", "slb"]
    assert Spec.from_yaml(spec.to_yaml()) == spec
    from slimtune.search_spaces import SpaceOptions

    assert SpaceOptions.from_dict(spec.search_kwargs()["space"]).quant_algorithms == ("ste", "slb")


def test_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, "study: s\ntask: m:f\n")
    spec = load_spec(path, overrides={"n_trials": 5, "study": "other", "storage": None})
    assert (spec.n_trials, spec.study, spec.storage) == (5, "other", None)


def test_bundled_example_is_valid() -> None:
    spec = load_spec(REPO / "examples" / "digits.yaml")
    assert spec.task == "slimtune.examples.digits:make_task"
    assert spec.strategy_name == "nsga2" and spec.n_trials
    assert spec.objectives == ["accuracy", "flops"] and spec.constraints


# -------------------------------------------------------------------------------------------------
# validation errors: each names the file and the field

BASE = "study: s\ntask: m:f\nn_trials: 1\n"
ERRORS = [
    # (spec text, field, part of the message)
    ("task: m:f\nn_trials: 1\n", "study", "missing required field"),
    ("study: s\nn_trials: 1\n", "task", "missing required field"),
    ("study: s\ntask: m:f\nn_trails: 1\n", "n_trails", "did you mean 'n_trials'"),
    (BASE + "strategie: tpe\n", "strategie", "did you mean 'strategy'"),
    ("study: 2024\ntask: m:f\nn_trials: 1\n", "study", "expected a string, got an integer"),
    ("study: s\ntask: nocolon\nn_trials: 1\n", "task", "expected 'module:function'"),
    ("study: s\ntask: m:f\nn_trials: ten\n", "n_trials", "expected an integer"),
    ("study: s\ntask: m:f\nn_trials: 0\n", "n_trials", "must be ≥ 1"),
    ("study: s\ntask: m:f\nn_trials: 2.0\n", "n_trials", "expected an integer"),
    ("study: s\ntask: m:f\ntimeout: -1\n", "timeout", "must be > 0"),
    ("study: s\ntask: m:f\n", "n_trials", "missing budget"),
    (BASE + "seed: 1.5\n", "seed", "expected an integer"),
    (BASE + "task_args: [1, 2]\n", "task_args", "expected a mapping"),
    (BASE + "storage: slimtune.db\n", "storage", "sqlite:///slimtune.db"),
    (BASE + "save_models: some\n", "save_models", "known: all, none"),
    (BASE + "backend: ray\nray: {max_concurrent_trials: 0}\n", "ray.max_concurrent_trials", "must be ≥ 1"),
    (BASE + "backend: ray\nray: {adress: 127.0.0.1:6379}\n", "ray.adress", "did you mean 'address'"),
    (BASE + "ray: {resources_per_trial: {cpu: -1}}\n", "ray.resources_per_trial.cpu", "expected a number ≥ 0"),
    (BASE + "ray: [1]\n", "ray", "expected a mapping"),
    (BASE + "backend: dask\n", "backend", "unknown backend 'dask'"),
    # strategy
    (BASE + "strategy: {name: foo}\n", "strategy.name", "unknown strategy 'foo'; known: "),
    (BASE + "strategy: nsag2\n", "strategy", "did you mean 'nsga2'"),
    (BASE + "strategy: {population_size: 4}\n", "strategy.name", "missing required field"),
    (BASE + "strategy: [nsga2]\n", "strategy", "expected a strategy name or a mapping"),
    (BASE + "strategy: {name: nsga2, populaton_size: 4}\n", "strategy.populaton_size", "'population_size'?"),
    (BASE + "strategy: {name: tpe, seed: 3}\n", "strategy.seed", "top level"),
    # objectives and constraints
    (BASE + "objectives: [accuracy, flop]\n", "objectives[1]", "unknown objective 'flop' (did you mean 'flops'?)"),
    (BASE + "objectives: accuracy\n", "objectives", "expected a list"),
    (BASE + "objectives: []\n", "objectives", "at least one objective"),
    (BASE + "objectives: [flops, flops]\n", "objectives[1]", "listed twice"),
    (BASE + "constraints: ['flops < 0.5']\n", "constraints[0]", "flops < 0.5"),
    (BASE + "constraints: ['flop <= 0.5']\n", "constraints[0]", "unknown measure 'flop'"),
    (BASE + "constraints: flops <= 0.5\n", "constraints", "expected a list"),
    # space
    (BASE + "space: 0.5\n", "space", "expected a mapping"),
    (BASE + "space: {max_sparsty: 0.5}\n", "space.max_sparsty", "did you mean 'max_sparsity'"),
    (BASE + "space: {max_sparsity: 1.5}\n", "space.max_sparsity", "must be in (0, 1)"),
    (BASE + "space: {max_sparsity: high}\n", "space.max_sparsity", "expected a number"),
    (BASE + "space: {min_sparsity: 0.5, max_sparsity: 0.4}\n", "space.min_sparsity", "below max_sparsity"),
    (BASE + "space: {tolerance: -0.1}\n", "space.tolerance", "≥ 0"),
    (BASE + "space: {levels: [0.5, 1.0]}\n", "space.levels[1]", "must be in (0, 1)"),
    (BASE + "space: {levels: []}\n", "space.levels", "at least one"),
    (BASE + "space: {criterion: l3}\n", "space.criterion", "unknown criterion 'l3'"),
    (BASE + "space: {sensitivity: 1}\n", "space.sensitivity", "expected true or false"),
    (BASE + "space: {groups: [fc, 3]}\n", "space.groups[1]", "expected a string"),
    (BASE + "space: {bits_w: [2, 8], quant_algorithm: slb}\n", "space.quant_algorithm", "at most 4 bit"),
    (BASE + "space: {bits_w: [4], quant_algorithm: [ste, sbl]}\n", "space.quant_algorithm", "unknown algorithm"),
]


@pytest.mark.parametrize(("text", "field", "problem"), ERRORS, ids=[f"{e[1]}-{i}" for i, e in enumerate(ERRORS)])
def test_errors_name_file_and_field(tmp_path: Path, text: str, field: str, problem: str) -> None:
    error = spec_error(tmp_path, text)
    message = str(error)
    assert message.startswith(f"{tmp_path / 'bad.yaml'}: {field}: "), message
    assert problem in message, message
    assert (error.source, error.field) == (str(tmp_path / "bad.yaml"), field)


def test_unknown_strategy_message_lists_the_strategies(tmp_path: Path) -> None:
    from slimtune.strategies import STRATEGIES

    message = str(spec_error(tmp_path, "study: s\ntask: m:f\nn_trials: 1\nstrategy: {name: foo}\n"))
    assert message.endswith(f"strategy.name: unknown strategy 'foo'; known: {', '.join(sorted(STRATEGIES))}")


def test_spec_error_types() -> None:
    with pytest.raises(SpecError) as info:
        Spec.from_dict({"task": "m:f", "n_trials": 1})
    assert isinstance(info.value, SlimtuneError) and isinstance(info.value, ValueError)
    assert str(info.value).startswith("<string>: study: ")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("study: s\ntask: [unclosed\nn_trials: 1\n", "invalid YAML at line 3"),
        ("study: s\n  task: x\n", "invalid YAML at line 2, column 7"),
        ("study: s\ntask: m:f\nstudy: t\nn_trials: 1\n", 
         "line 3, column 1: duplicate key 'study' (first given on line 1)"),
        ("", "the spec is empty"),
        ("- study\n- task\n", "a spec must be a mapping"),
    ],
)
def test_file_level_errors(tmp_path: Path, text: str, problem: str) -> None:
    message = str(spec_error(tmp_path, text))
    assert message.startswith(f"{tmp_path / 'bad.yaml'}: ") and problem in message, message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"nope\.yaml: spec file not found"):
        load_spec(tmp_path / "nope.yaml")
    with pytest.raises(SpecError, match="is a directory"):
        load_spec(tmp_path)


# -------------------------------------------------------------------------------------------------
# make_task


def test_make_task(tmp_path: Path) -> None:
    task = load_spec(write(tmp_path, VALID, "good.yaml")).make_task()
    assert isinstance(task, Task)
    assert task.model[0].out_features == 8
    assert 0.5 < task.evaluate(task.model) <= 1.0


@pytest.mark.parametrize(
    ("task_line", "field", "problem"),
    [
        ("task: no_such_module_xyz:f", "task", "cannot import module 'no_such_module_xyz'"),
        ("task: _tasks:tiny_tsk", "task", "module '_tasks' has no attribute 'tiny_tsk' (did you mean 'tiny_task'"),
        ("task: _tasks:tiny_task.nope", "task", "'_tasks:tiny_task' has no attribute 'nope'"),
        ("task: _tasks:NOT_CALLABLE", "task", "is not callable"),
        ("task: _tasks:failing_task", "task", "raised RuntimeError: cannot build the task (on purpose)"),
        ("task: _tasks:not_a_task", "task", "returned an integer (42), expected a slimtune Task"),
        ("task: _tasks:tiny_task\ntask_args: {width: 3}", "task_args", "does not accept these arguments"),
    ],
)
def test_make_task_errors(tmp_path: Path, task_line: str, field: str, problem: str) -> None:
    error = spec_error(tmp_path, f"study: s\n{task_line}\nn_trials: 1\n")
    assert str(error).startswith(f"{tmp_path / 'bad.yaml'}: {field}: ") and problem in str(error), str(error)
    if problem.startswith(("cannot import", "raised", "does not accept")):
        assert error.__cause__ is not None  # the original exception, for --debug tracebacks


def test_make_task_module_next_to_spec(tmp_path: Path) -> None:
    (tmp_path / "spec_side_task_mod.py").write_text(
        "import sys\nsys.path.insert(0, %r)\nfrom _tasks import tiny_task\n" % str(TESTS)
    )
    spec = load_spec(write(tmp_path, "study: s\ntask: spec_side_task_mod:tiny_task\nn_trials: 1\n", "spec.yaml"))
    assert isinstance(spec.make_task(), Task)


def test_make_task_module_failing_import(tmp_path: Path) -> None:
    (tmp_path / "broken_task_mod.py").write_text("import no_such_dependency_xyz\n")
    (tmp_path / "raising_task_mod.py").write_text("raise ValueError('bad config')\n")
    for module, problem in [
        ("broken_task_mod", "importing module 'broken_task_mod' failed: ModuleNotFoundError"),
        ("raising_task_mod", "importing module 'raising_task_mod' failed: ValueError: bad config"),
    ]:
        error = spec_error(tmp_path, f"study: s\ntask: {module}:f\nn_trials: 1\n")
        assert f"bad.yaml: task: {problem}" in str(error), str(error)
