"""The cost function: constraint parsing, objectives, directions, weighted scalars, relative measures."""

from __future__ import annotations

import math

import pytest

from slimtune.trials.cost import (
    CONSTRAINT_MEASURES,
    OBJECTIVES,
    Constraint,
    Cost,
    parse_constraint,
    relative_measures,
)


# ---------------------------------------------------------------------- parse_constraint
@pytest.mark.parametrize(
    ("text", "measure", "op", "bound"),
    [
        ("flops <= 0.5", "flops", "<=", 0.5),
        ("accuracy_drop<=0.01", "accuracy_drop", "<=", 0.01),
        ("  accuracy >= 0.9  ", "accuracy", ">=", 0.9),
        ("latency_abs <= 1.5e1", "latency_abs", "<=", 15.0),
        ("size_abs <= 4096", "size_abs", "<=", 4096.0),
        ("accuracy_drop >= -0.02", "accuracy_drop", ">=", -0.02),
    ],
)
def test_parse_valid_constraints(text: str, measure: str, op: str, bound: float) -> None:
    c = parse_constraint(text)
    assert c == Constraint(measure, op, bound)
    assert isinstance(c.bound, float)
    # the canonical text parses back to the same constraint
    assert parse_constraint(c.text) == c


def test_parse_constraint_passes_constraint_objects_through() -> None:
    c = Constraint("flops", "<=", 0.5)
    assert parse_constraint(c) is c
    assert c.text == "flops <= 0.5"


@pytest.mark.parametrize(
    "text",
    ["flops < 0.5", "flops == 0.5", "flops <=", "<= 0.5", "0.5 >= flops", "flops <= half", "", "FLOPS <= 0.5 x"],
)
def test_parse_constraint_bad_syntax_says_how_it_should_look(text: str) -> None:
    with pytest.raises(ValueError, match="must look like '<measure> <= <number>'") as info:
        parse_constraint(text)
    assert repr(text) in str(info.value)


def test_parse_constraint_number_that_is_not_a_number() -> None:
    with pytest.raises(ValueError, match=r"'1\.2\.3' is not a number"):
        parse_constraint("flops <= 1.2.3")


@pytest.mark.parametrize("measure", ["foo", "latency_ms", "flops_rel", "acc"])
def test_parse_constraint_unknown_measure_lists_known(measure: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_constraint(f"{measure} <= 0.5")
    msg = str(info.value)
    assert f"unknown measure {measure!r}" in msg
    for known in CONSTRAINT_MEASURES:
        assert known in msg


# ---------------------------------------------------------------------- Constraint.value
def test_constraint_value_is_nonpositive_when_satisfied() -> None:
    le = parse_constraint("flops <= 0.5")
    assert le.value({"flops": 0.4}) == pytest.approx(-0.1)
    assert le.value({"flops": 0.5}) == 0.0
    assert le.value({"flops": 0.7}) == pytest.approx(0.2)
    ge = parse_constraint("accuracy >= 0.9")
    assert ge.value({"accuracy": 0.95}) == pytest.approx(-0.05)
    assert ge.value({"accuracy": 0.9}) == 0.0
    assert ge.value({"accuracy": 0.8}) == pytest.approx(0.1)


def test_constraint_value_missing_or_nan_measure_is_infeasible() -> None:
    c = parse_constraint("latency <= 0.5")
    assert c.value({}) == math.inf
    assert c.value({"latency": None}) == math.inf
    assert c.value({"latency": float("nan")}) == math.inf


# ---------------------------------------------------------------------- Cost
def test_cost_directions_follow_objectives_and_metric_direction() -> None:
    assert Cost(["accuracy", "flops"]).directions == ["maximize", "minimize"]
    assert Cost(["flops", "accuracy", "size"]).directions == ["minimize", "maximize", "minimize"]
    assert Cost(["accuracy", "params"], metric_direction="minimize").directions == ["minimize", "minimize"]
    assert Cost(["accuracy", "latency"]).directions == ["maximize", "minimize"]
    for name, direction in OBJECTIVES.items():
        assert Cost([name]).directions == [direction or "maximize"]


def test_cost_weighted_is_one_minimised_scalar() -> None:
    cost = Cost(["accuracy", "flops"], weights={"accuracy": 2.0, "flops": 0.5})
    assert cost.directions == ["minimize"]
    m = {"accuracy": 0.9, "flops": 0.4}
    # maximised objectives enter with a minus sign
    assert cost.values(m) == [pytest.approx(-2.0 * 0.9 + 0.5 * 0.4)]
    # a better accuracy lowers the cost, more FLOPs raise it
    assert cost.values({"accuracy": 0.95, "flops": 0.4})[0] < cost.values(m)[0]
    assert cost.values({"accuracy": 0.9, "flops": 0.6})[0] > cost.values(m)[0]


def test_cost_weighted_with_minimised_metric() -> None:
    cost = Cost(["accuracy", "flops"], metric_direction="minimize", weights={"accuracy": 1.0, "flops": 1.0})
    assert cost.values({"accuracy": 0.3, "flops": 0.5}) == [pytest.approx(0.8)]


def test_cost_values_in_objective_order() -> None:
    m = {"accuracy": 0.97, "accuracy_drop": 0.02, "flops": 0.4, "params": 0.3, "size": 0.25, "latency": 0.6}
    assert Cost(["accuracy", "flops"]).values(m) == [0.97, 0.4]
    assert Cost(["size", "params", "accuracy"]).values(m) == [0.25, 0.3, 0.97]
    assert Cost(["latency"]).values(m) == [0.6]


def test_cost_constraint_values_keyed_by_text() -> None:
    cost = Cost(["accuracy", "flops"], constraints=["accuracy_drop <= 0.01", "flops<=0.5", "accuracy >= 0.9"])
    m = {"accuracy": 0.97, "accuracy_drop": 0.02, "flops": 0.4}
    vals = cost.constraint_values(m)
    assert list(vals) == ["accuracy_drop <= 0.01", "flops <= 0.5", "accuracy >= 0.9"]
    assert vals["accuracy_drop <= 0.01"] == pytest.approx(0.01)  # violated: > 0
    assert vals["flops <= 0.5"] == pytest.approx(-0.1)  # satisfied: <= 0
    assert vals["accuracy >= 0.9"] == pytest.approx(-0.07)
    assert Cost(["accuracy"]).constraint_values(m) == {}


def test_cost_needs_latency() -> None:
    assert not Cost(["accuracy", "flops"]).needs_latency
    assert Cost(["accuracy", "latency"]).needs_latency
    assert Cost(["accuracy"], constraints=["latency_abs <= 3"]).needs_latency
    assert Cost(["accuracy"], constraints=["latency <= 0.5"]).needs_latency


def test_cost_needs_memory() -> None:
    assert not Cost(["accuracy", "latency"]).needs_memory
    assert Cost(["accuracy", "memory"]).needs_memory and Cost(["accuracy", "memory"]).directions[1] == "minimize"
    assert Cost(["accuracy"], constraints=["memory_abs <= 3e6"]).needs_memory
    assert not Cost(["accuracy"], constraints=["memory <= 0.5"]).needs_latency
    problems = Cost(["accuracy"], constraints=["memory <= 0"]).check({"accuracy": 0.9})
    assert problems == ["constraint 'memory <= 0' cannot be met: memory is always above 0; every trial will be infeasible"]


def test_cost_to_dict() -> None:
    d = Cost(["accuracy", "flops"], weights={"accuracy": 1, "flops": 2}, constraints=["flops <= 0.5"]).to_dict()
    assert d == {
        "objectives": ["accuracy", "flops"],
        "directions": ["minimize"],
        "weights": {"accuracy": 1, "flops": 2},
        "constraints": ["flops <= 0.5"],
        "latency": {"runtime": "torch", "batch": None, "threads": 1},
    }
    d = Cost(["accuracy", "latency"], latency={"runtime": "onnxruntime", "batch": 1}).to_dict()
    assert d["latency"] == {"runtime": "onnxruntime", "batch": 1, "threads": 1}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"objectives": []}, "at least one objective"),
        ({"objectives": ["accuracy", "speed"]}, "unknown objective 'speed'"),
        ({"objectives": ["flops", "flops"]}, "twice"),
        ({"objectives": ["accuracy", "flops"], "weights": {"accuracy": 1.0}}, r"missing \['flops'\]"),
        ({"objectives": ["accuracy"], "weights": {"accuracy": 1.0, "size": 1.0}}, r"extra \['size'\]"),
        ({"objectives": ["accuracy"], "constraints": ["speed <= 2"]}, "unknown measure 'speed'"),
    ],
)
def test_cost_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Cost(**kwargs)


# ---------------------------------------------------------------------- relative_measures
def test_relative_measures_maximize() -> None:
    baseline = {"accuracy": 0.9, "flops": 200.0, "params": 1000, "size": 4000, "latency": 2.0}
    raw = {"accuracy": 0.85, "flops": 50.0, "params": 250, "size": 1000, "latency": 1.5}
    out = relative_measures(raw, baseline, "maximize")
    assert out["accuracy"] == 0.85
    assert out["accuracy_drop"] == pytest.approx(0.05)
    assert out["flops"] == pytest.approx(0.25) and out["flops_abs"] == 50.0
    assert out["params"] == pytest.approx(0.25) and out["params_abs"] == 250
    assert out["size"] == pytest.approx(0.25) and out["size_abs"] == 1000
    assert out["latency"] == pytest.approx(0.75) and out["latency_abs"] == 1.5
    assert out["memory"] is None and out["memory_abs"] is None  # not measured
    assert set(out) == {
        "accuracy", "accuracy_drop", "flops", "flops_abs", "params", "params_abs",
        "size", "size_abs", "latency", "latency_abs", "memory", "memory_abs",
    }  # fmt: skip


def test_relative_measures_minimize_drop_is_positive_when_worse() -> None:
    baseline = {"accuracy": 0.2, "flops": 10.0, "params": 10, "size": 10}
    out = relative_measures({"accuracy": 0.5, "flops": 5.0, "params": 5, "size": 5}, baseline, "minimize")
    assert out["accuracy_drop"] == pytest.approx(0.3)
    out = relative_measures({"accuracy": 0.1, "flops": 5.0, "params": 5, "size": 5}, baseline, "minimize")
    assert out["accuracy_drop"] == pytest.approx(-0.1)


def test_relative_measures_missing_latency_and_zero_baseline() -> None:
    baseline = {"accuracy": 1.0, "flops": 0.0, "params": 10, "size": 10, "latency": None}
    out = relative_measures({"accuracy": 1.0, "flops": 0.0, "params": 10, "size": 10, "latency": None}, baseline, "maximize")
    assert out["latency"] is None and out["latency_abs"] is None
    assert out["flops"] is None and out["flops_abs"] == 0.0  # no division by zero
    assert out["accuracy_drop"] == 0.0
    assert out["params"] == 1.0
