"""The generic Registry and the five registries built on it (criteria, quantization algorithms,
observers, training compressors, strategies)."""

from __future__ import annotations

import pickle
from collections.abc import Mapping

import pytest

from slimtune.compressors.criteria import CRITERIA, get_criterion
from slimtune.compressors.quantization import ALGORITHMS, OBSERVERS, get_algorithm, make_observer
from slimtune.compressors.training import COMPRESSORS, get_compressor
from slimtune.errors import (
    CriterionError,
    DuplicateNameError,
    PlanError,
    QuantizationError,
    SlimtuneError,
    UnknownNameError,
)
from slimtune.registry import Registry, closest_name
from slimtune.strategies import STRATEGIES, get_strategy


def square(x: int) -> int:
    return x * x


def cube(x: int) -> int:
    return x**3


@pytest.fixture
def shapes() -> Registry:
    reg: Registry = Registry("shape")
    reg.register("square", square)
    reg.register("cube")(cube)  # as a decorator
    return reg


# ---------------------------------------------------------------------------------------- the type
def test_register_get_names(shapes: Registry) -> None:
    assert shapes.get("square") is square and shapes["cube"] is cube
    assert shapes.names() == ["cube", "square"]
    assert shapes.kind == "shape"
    assert "Registry('shape': cube, square)" == repr(shapes)


def test_register_returns_the_object() -> None:
    reg: Registry = Registry("thing")
    assert reg.register("a", square) is square

    @reg.register("b")
    def b() -> None: ...

    assert reg["b"] is b


def test_duplicate_is_refused_unless_the_same_definition(shapes: Registry) -> None:
    with pytest.raises(DuplicateNameError, match=r"shape 'square' is already registered \(by .*square\)") as info:
        shapes.register("square", cube)
    assert isinstance(info.value, ValueError) and isinstance(info.value, SlimtuneError)
    assert shapes["square"] is square
    shapes.register("square", square)  # the same object again: fine
    shapes.register("square", cube, overwrite=True)
    assert shapes["square"] is cube


def test_same_definition_again_replaces_the_entry() -> None:
    """A module reload makes new function objects of the same module and qualified name."""
    reg: Registry = Registry("shape")
    reg.register("square", square)
    namespace: dict = {"__name__": __name__}
    exec("def square(x):\n    return x * x\n", namespace)
    reloaded = namespace["square"]
    assert reloaded is not square and reloaded.__qualname__ == square.__qualname__
    reg.register("square", reloaded)
    assert reg["square"] is reloaded


def test_lambdas_are_never_the_same_definition() -> None:
    reg: Registry = Registry("shape")
    reg.register("f", lambda x: x)
    with pytest.raises(DuplicateNameError):
        reg.register("f", lambda x: x)


def test_bad_names_are_refused(shapes: Registry) -> None:
    with pytest.raises(DuplicateNameError, match="non-empty string"):
        shapes.register("", square)


def test_unknown_name_suggests_and_lists(shapes: Registry) -> None:
    with pytest.raises(UnknownNameError) as info:
        shapes.get("sqare")
    e = info.value
    assert str(e) == "unknown shape 'sqare'; did you mean 'square'? known: cube, square"
    assert (e.kind, e.name, e.known, e.suggestion, e.field) == ("shape", "sqare", ["cube", "square"], "square", None)
    assert isinstance(e, KeyError) and isinstance(e, ValueError) and isinstance(e, SlimtuneError)
    with pytest.raises(UnknownNameError, match="^unknown shape 'zzz'; known: cube, square$"):  # no close name
        shapes["zzz"]
    with pytest.raises(UnknownNameError):
        shapes.get(["unhashable"])  # type: ignore[arg-type]


def test_get_with_a_default(shapes: Registry) -> None:
    assert shapes.get("nope", None) is None
    assert shapes.get("square", None) is square


def test_mapping_behaviour(shapes: Registry) -> None:
    assert isinstance(shapes, Mapping)
    assert "square" in shapes and "nope" not in shapes and ["unhashable"] not in shapes
    assert sorted(shapes) == ["cube", "square"] and list(shapes) == ["square", "cube"]  # registration order
    assert len(shapes) == 2
    assert dict(shapes.items()) == {"square": square, "cube": cube}
    assert list(shapes.keys()) == ["square", "cube"] and list(shapes.values()) == [square, cube]
    assert shapes == {"square": square, "cube": cube}
    with pytest.raises(TypeError):
        shapes["x"] = square  # type: ignore[index]  # read-only: register() is the way in


def test_unregister(shapes: Registry) -> None:
    shapes.unregister("cube")
    assert "cube" not in shapes and shapes.names() == ["square"]
    with pytest.raises(UnknownNameError, match="unknown shape 'cube'"):
        shapes.unregister("cube")


def test_field_prefixes_the_message() -> None:
    reg: Registry = Registry("compressor", field="plan.compressor")
    reg.register("admm", square)
    with pytest.raises(
        UnknownNameError, match=r"^plan\.compressor: unknown compressor 'amdm'; did you mean 'admm'\?"
    ) as info:
        reg.get("amdm")
    assert info.value.field == "plan.compressor"


def test_unknown_name_error_pickles() -> None:
    e = UnknownNameError("strategy", "nsga", ["nsga2", "tpe"], field="strategy.name")
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is UnknownNameError and str(back) == str(e)
    assert (back.kind, back.name, back.known, back.suggestion, back.field) == (
        "strategy",
        "nsga",
        ["nsga2", "tpe"],
        "nsga2",
        "strategy.name",
    )


def test_closest_name() -> None:
    assert closest_name("l11", ["l1", "l2", "fpgm"]) == "l1"
    assert closest_name("xyz", ["l1"]) is None
    assert closest_name(3, ["l1"]) is None


# ---------------------------------------------------------------------------------------- the five registries
def test_every_registry_is_a_registry() -> None:
    for reg, kind in [
        (CRITERIA, "criterion"),
        (ALGORITHMS, "quantization algorithm"),
        (OBSERVERS, "observer"),
        (COMPRESSORS, "compressor"),
        (STRATEGIES, "strategy"),
    ]:
        assert isinstance(reg, Registry) and reg.kind == kind
        assert reg.names() == sorted(reg) and len(reg) >= 4


def test_criteria_did_you_mean() -> None:
    with pytest.raises(
        UnknownNameError, match=r"^unknown criterion 'l11'; did you mean 'l1'\? known: apoz, bn_scale, fpgm, l1, "
    ) as info:
        get_criterion("l11")
    assert isinstance(info.value, CriterionError)  # the criteria's own error type too
    with pytest.raises(CriterionError, match="did you mean 'fpgm'"):
        CRITERIA["fgpm"]


def test_criteria_duplicate_is_a_criterion_error() -> None:
    with pytest.raises(CriterionError, match="criterion 'l1' is already registered"):
        CRITERIA.register("l1", lambda group, ctx: None)


def test_algorithms_did_you_mean() -> None:
    with pytest.raises(
        UnknownNameError, match=r"unknown quantization algorithm 'pacts'; did you mean 'pact'\?"
    ) as info:
        get_algorithm("pacts")
    assert isinstance(info.value, QuantizationError)


def test_observers_did_you_mean() -> None:
    with pytest.raises(
        UnknownNameError, match=r"unknown observer 'min_max'; did you mean 'minmax'\? known: kl, minmax"
    ) as info:
        make_observer("min_max")
    assert isinstance(info.value, QuantizationError)


def test_compressors_did_you_mean() -> None:
    with pytest.raises(
        UnknownNameError, match=r"^plan\.compressor: unknown compressor 'amdm'; did you mean 'admm'\?"
    ) as info:
        get_compressor("amdm")
    assert isinstance(info.value, PlanError) and info.value.field == "plan.compressor"
    assert get_compressor("agp") is COMPRESSORS["agp"] and COMPRESSORS["agp"].trains


def test_strategies_did_you_mean() -> None:
    with pytest.raises(
        UnknownNameError, match=r"^unknown strategy 'nsga'; did you mean 'nsga2'\? known: admm, "
    ) as info:
        get_strategy("nsga")
    assert isinstance(info.value, ValueError)
    assert get_strategy("nsga2").name == "nsga2"
