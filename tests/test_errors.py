"""Every exception type lives in slimtune.errors; public entry points raise them, with the field named."""

from __future__ import annotations

import ast
import builtins
import inspect
import pickle
from pathlib import Path

import pytest

import slimtune
from slimtune import errors
from slimtune.errors import ConfigError, PlanError, SlimtuneError

PACKAGE = Path(slimtune.__file__).parent
BUILTIN_EXCEPTIONS = {
    n for n, obj in vars(builtins).items() if isinstance(obj, type) and issubclass(obj, BaseException)
}


def _base_name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):  # optuna.TrialPruned, errors.SlimtuneError
        return node.attr
    if isinstance(node, ast.Subscript):
        return _base_name(node.value)
    return None


def _classes() -> list[tuple[Path, ast.ClassDef]]:
    """Every class of the package not defined inside a function."""
    found = []

    def visit(path: Path, body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.ClassDef):
                found.append((path, node))
                visit(path, node.body)
            elif isinstance(node, (ast.If, ast.Try)):
                visit(path, node.body)

    for path in sorted(PACKAGE.rglob("*.py")):
        visit(path, ast.parse(path.read_text(encoding="utf-8")).body)
    return found


def test_no_exception_class_outside_errors_py() -> None:
    classes = _classes()
    exception_names = set(BUILTIN_EXCEPTIONS) | {"TrialPruned", "OptunaError"}
    changed = True
    while changed:  # classes deriving (through any chain) from an exception are exceptions
        changed = False
        for _, node in classes:
            if node.name not in exception_names and any(_base_name(b) in exception_names for b in node.bases):
                exception_names.add(node.name)
                changed = True
    outside = [
        f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}"
        for path, node in classes
        if path.name != "errors.py" or path.parent != PACKAGE
        if node.name in exception_names and not node.name.startswith("_") and node.name not in BUILTIN_EXCEPTIONS
    ]
    assert outside == [], "public exception classes belong in slimtune/errors.py"


def test_errors_py_defines_each_class_once() -> None:
    tree = ast.parse((PACKAGE / "errors.py").read_text(encoding="utf-8"))
    names = [n.name for n in tree.body if isinstance(n, ast.ClassDef)]
    assert sorted(names) == sorted(set(names))


def test_every_error_is_a_slimtune_error() -> None:
    defined = [obj for obj in vars(errors).values() if inspect.isclass(obj) and obj.__module__ == errors.__name__]
    assert len(defined) >= 20
    for cls in defined:
        assert issubclass(cls, SlimtuneError), cls
        assert cls.__doc__, cls


@pytest.mark.parametrize(
    "error",
    [
        ConfigError("must be in (0, 1)", field="space.max_sparsity"),
        errors.SpecError("bad", source="a.yaml", field="strategy.name"),
        errors.PlanConfigError("must be > 0", field="finetune.lr"),
        errors.UnknownCriterionError("criterion", "l11", ["l1", "l2"]),
        errors.StrategyError("strategy 'tpe': strategy.x bad", field="strategy.x"),
        errors.StudyNotFoundError("no study 'x'"),
    ],
)
def test_errors_pickle(error: SlimtuneError) -> None:
    """Errors cross process boundaries (workers, Ray): they come back whole, whatever their constructor."""
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is type(error) and str(back) == str(error) and back.__dict__ == error.__dict__


def test_old_import_paths_still_work() -> None:
    from slimtune.compressors.frontends import ModelFailsError
    from slimtune.compressors.handlers.conv import SlicingError
    from slimtune.compressors.quantization import QuantExportError, QuantizationError
    from slimtune.compressors.speedup import SpeedupError
    from slimtune.compressors.training import CompressorError
    from slimtune.dashboard.data import NotFound
    from slimtune.trials.objective import TrialFailure

    assert (
        ModelFailsError,
        SlicingError,
        QuantExportError,
        QuantizationError,
        SpeedupError,
        CompressorError,
        NotFound,
        TrialFailure,
    ) == (
        errors.ModelFailsError,
        errors.SlicingError,
        errors.QuantExportError,
        errors.QuantizationError,
        errors.SpeedupError,
        errors.CompressorError,
        errors.NotFound,
        errors.TrialFailure,
    )
    assert issubclass(SlicingError, ValueError)  # as before the move


# ---------------------------------------------------------------------------------------- fields
def test_space_options_name_the_field() -> None:
    from slimtune.search_spaces import SpaceOptions

    with pytest.raises(ConfigError) as info:
        SpaceOptions(max_sparsity=2)
    assert info.value.field == "space.max_sparsity" and info.value.problem == "2 must be in (0, 1)"
    assert str(info.value) == "space.max_sparsity: 2 must be in (0, 1)"
    with pytest.raises(ConfigError) as info:
        SpaceOptions(max_sparsity="high")  # type: ignore[arg-type]
    assert info.value.field == "space.max_sparsity"
    with pytest.raises(ConfigError) as info:
        SpaceOptions(criterion="l11")
    assert info.value.field == "space.criterion" and "did you mean 'l1'?" in str(info.value)
    with pytest.raises(ConfigError) as info:
        SpaceOptions.from_dict({"max_sparse": 0.5, "zzz": 1})
    assert info.value.field == "space.max_sparse" and "did you mean 'max_sparsity'?" in str(info.value)


def test_finetune_config_names_the_field() -> None:
    from slimtune.compressors.training import FinetuneConfig, check_finetune_overrides

    with pytest.raises(ConfigError) as info:
        FinetuneConfig(lr=-1.0)
    assert isinstance(info.value, PlanError) and info.value.field == "finetune.lr"
    assert str(info.value).startswith("finetune.lr: must be a number in [0, inf)")
    with pytest.raises(ConfigError) as info:
        FinetuneConfig().merged({"optimizer": "lion"})
    assert info.value.field == "finetune.optimizer"
    with pytest.raises(ConfigError) as info:
        FinetuneConfig().merged({"kd": {"temperature": 0}})
    assert info.value.field == "finetune.kd.temperature"
    with pytest.raises(ConfigError) as info:
        FinetuneConfig().merged({"epoch": 3})
    assert info.value.field == "finetune" and "did you mean 'epochs'?" in str(info.value)
    with pytest.raises(ConfigError) as info:
        check_finetune_overrides({"steps": -1})
    assert info.value.field == "plan.finetune.steps"


def test_compressor_params_name_the_field() -> None:
    from slimtune.compressors.training import check_compressor_params

    with pytest.raises(ConfigError) as info:
        check_compressor_params("admm", {"roh": 1.0})
    assert isinstance(info.value, PlanError) and info.value.field == "plan.compressor_params"
    assert str(info.value).startswith("plan.compressor_params: unknown parameter(s) ['roh'] of compressor 'admm'")


def test_strategy_errors_name_the_field() -> None:
    from slimtune.strategies import get_strategy

    with pytest.raises(errors.StrategyError) as info:
        get_strategy("tpe", n_startup=3)
    assert info.value.field == "strategy.n_startup" and "did you mean 'n_startup_trials'?" in str(info.value)
    with pytest.raises(errors.StrategyError) as info:
        get_strategy("simulated_annealing", cooling="fast")
    assert info.value.field == "strategy.cooling" and isinstance(info.value, ValueError)
