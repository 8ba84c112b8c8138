"""Hypervolume and best-so-far (slimtune.dashboard.progress) against direct computations."""

from __future__ import annotations

import numpy as np
import pytest

from slimtune.dashboard.progress import History, hypervolume, objective_directions, reference_point


def brute_force_area(points: list[list[float]], ref: list[float]) -> float:
    """2-D hypervolume (accuracy maximised, flops minimised) on a fine grid: the dominated share."""
    xs = np.linspace(0.0, ref[1], 801)[:-1] + ref[1] / 1600  # flops cell centres
    ys = np.linspace(ref[0], 1.0, 801)[:-1] + (1.0 - ref[0]) / 1600  # accuracy cell centres
    gx, gy = np.meshgrid(xs, ys)
    covered = np.zeros_like(gx, dtype=bool)
    for acc, flops in points:
        covered |= (gx >= flops) & (gy <= acc)
    return covered.mean() * ref[1] * (1.0 - ref[0])


def test_hypervolume_matches_a_grid_count() -> None:
    rng = np.random.default_rng(0)
    points = [[float(a), float(f)] for a, f in zip(rng.uniform(0.5, 1.0, 12), rng.uniform(0.0, 1.2, 12))]
    ref = [0.5, 1.0]
    assert hypervolume(points, ["maximize", "minimize"], ref) == pytest.approx(brute_force_area(points, ref), abs=5e-3)


def test_history_equals_the_hypervolume_of_each_prefix() -> None:
    rng = np.random.default_rng(1)
    directions, ref = ["maximize", "minimize", "minimize"], [0.9, 1.0, 1.0]
    points = rng.uniform([0.85, 0.0, 0.0], [1.0, 1.1, 1.1], size=(40, 3)).tolist()
    history = History(directions, ref)
    for k, p in enumerate(points):
        history.add(p)
        assert history.value == pytest.approx(hypervolume(points[: k + 1], directions, ref), rel=1e-12, abs=1e-15)
        assert history.best == [max(q[0] for q in points[: k + 1]), min(q[1] for q in points[: k + 1]), min(q[2] for q in points[: k + 1])]
    history.add(None)  # an infeasible trial changes nothing
    history.add([float("nan"), 0.0, 0.0])
    assert history.value == pytest.approx(hypervolume(points, directions, ref))


def test_reference_point_follows_the_study_definition() -> None:
    base = {"accuracy": 0.97, "flops": 1e6}
    assert reference_point(["accuracy", "flops"], ["maximize", "minimize"], base, ["accuracy_drop <= 0.02"]) == pytest.approx([0.95, 1.0])
    assert reference_point(["accuracy", "size"], ["maximize", "minimize"], base, ["accuracy >= 0.9", "accuracy_drop <= 0.05"]) == pytest.approx([0.92, 1.0])
    assert reference_point(["accuracy", "params"], ["maximize", "minimize"], base) == [0.0, 1.0]
    assert reference_point(["accuracy"], ["minimize"], {"accuracy": 0.3}) == [0.6]  # a loss: twice the original
    assert reference_point(["value_0", "value_1"], ["minimize", "maximize"], None, observed=[[1, 5], [3, 2]]) == [3.0, 2.0]
    # a weighted study stores one direction for its scalar; each objective keeps its own
    assert objective_directions(["accuracy", "flops"], "maximize", ["minimize"]) == ["maximize", "minimize"]
