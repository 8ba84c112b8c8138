"""Hypervolume and best-so-far of a study, trial after trial.

Everything is computed in the space of the study's objectives as its trials store them
(``accuracy`` absolute, resources relative to the original model), over its *feasible* completed
trials (constraints all ≤ 0), with Optuna's exact hypervolume (WFG).

The reference point of the hypervolume is fixed by the study's definition, not by its trials, so
that it does not move while the study runs and studies of one task compare:

* a resource objective (``flops``, ``params``, ``size``, ``latency``): ``1.0``, the original model;
* the metric (``accuracy``): the bound of the study's constraint on it (``accuracy_drop <= d``
  gives the original's value minus ``d``; ``accuracy >= a`` gives ``a``), else ``0`` for a
  maximised metric and twice the original's value for a minimised one;
* objectives of a study slimtune did not create: the worst value its trials reached.

Points worse than the reference in some objective add nothing.

Example:
    >>> hypervolume([[0.9, 0.5], [0.8, 0.25]], ["maximize", "minimize"], [0.0, 1.0])
    0.65
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from optuna._hypervolume import compute_hypervolume  # Optuna's exact WFG hypervolume (optuna >= 4.0)

from slimtune.trials.cost import OBJECTIVES, parse_constraint

__all__ = ["History", "hypervolume", "objective_directions", "reference_point"]


def objective_directions(
    objectives: Sequence[str], metric_direction: str, study_directions: Sequence[str]
) -> list[str]:
    """The direction of each objective (a weighted study stores one direction for its scalar)."""
    if len(study_directions) == len(objectives):
        return list(study_directions)
    return [OBJECTIVES.get(o) or metric_direction for o in objectives]


def reference_point(
    objectives: Sequence[str],
    directions: Sequence[str],
    baseline: Mapping[str, Any] | None,
    constraints: Sequence[str] = (),
    observed: Sequence[Sequence[float]] = (),
) -> list[float]:
    """The hypervolume's reference point (see the module's docstring for the rule)."""
    baseline = baseline or {}
    ref = []
    for i, (name, direction) in enumerate(zip(objectives, directions)):
        value: float | None = None
        if name in OBJECTIVES and name != "accuracy":
            value = 1.0
        elif name == "accuracy":
            value = _metric_reference(direction, baseline.get("accuracy"), constraints)
        if value is None:  # a foreign objective: the worst value seen
            column = [p[i] for p in observed if p[i] is not None and math.isfinite(p[i])]
            if column:
                value = min(column) if direction == "maximize" else max(column)
            else:
                value = 0.0
        ref.append(float(value))
    return ref


def _metric_reference(direction: str, original: Any, constraints: Sequence[str]) -> float | None:
    bounds = []
    for text in constraints:
        try:
            c = parse_constraint(text)
        except ValueError:
            continue
        if c.measure == "accuracy_drop" and c.op == "<=" and original is not None:
            bounds.append(float(original) - c.bound if direction == "maximize" else float(original) + c.bound)
        elif c.measure == "accuracy" and ((c.op == ">=") == (direction == "maximize")):
            bounds.append(c.bound)
    if bounds:  # the tightest constraint on the metric
        return max(bounds) if direction == "maximize" else min(bounds)
    if direction == "maximize":
        return 0.0
    return 2.0 * float(original) if original is not None and float(original) > 0 else None


def _as_losses(points: np.ndarray, directions: Sequence[str], ref: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Points and reference turned into a minimisation problem, points clipped to the reference."""
    signs = np.array([-1.0 if d == "maximize" else 1.0 for d in directions])
    r = signs * np.asarray(ref, dtype=float)
    return np.minimum(points * signs, r), r


def hypervolume(points: Sequence[Sequence[float]], directions: Sequence[str], ref: Sequence[float]) -> float:
    """The hypervolume dominated by ``points`` (one row per trial) up to ``ref``."""
    arr = np.asarray(points, dtype=float).reshape(-1, len(directions))
    arr = arr[np.isfinite(arr).all(axis=1)]
    if arr.size == 0:
        return 0.0
    losses, r = _as_losses(arr, directions, ref)
    return _hv(losses, r)


def _hv(losses: np.ndarray, r: np.ndarray, assume_pareto: bool = False) -> float:
    if losses.shape[1] == 1:
        return float(max(0.0, r[0] - losses[:, 0].min()))
    return float(compute_hypervolume(losses, r, assume_pareto=assume_pareto))


class History:
    """Hypervolume and best value per objective after each trial, fed one trial at a time.

    Args:
        directions: One per objective.
        ref: The reference point.
    """

    def __init__(self, directions: Sequence[str], ref: Sequence[float]) -> None:
        self.directions = list(directions)
        self.signs = np.array([-1.0 if d == "maximize" else 1.0 for d in directions])
        self.ref = self.signs * np.asarray(ref, dtype=float)
        self.front = np.empty((0, len(directions)))
        self.value = 0.0
        self.best: list[float | None] = [None] * len(directions)

    def add(self, point: Sequence[float | None] | None) -> None:
        """Take one trial's objective values (None: infeasible or unmeasured; nothing changes)."""
        if point is None or any(v is None or not math.isfinite(v) for v in point):
            return
        p = np.asarray(point, dtype=float)
        for i, v in enumerate(p):
            b = self.best[i]
            if b is None or (v > b if self.directions[i] == "maximize" else v < b):
                self.best[i] = float(v)
        loss = np.minimum(p * self.signs, self.ref)
        if len(self.front) and (self.front <= loss).all(axis=1).any():
            return  # dominated by (or equal to) a point already on the front
        keep = ~(loss <= self.front).all(axis=1)
        self.front = np.vstack([self.front[keep], loss])
        self.value = _hv(self.front, self.ref, assume_pareto=True)
