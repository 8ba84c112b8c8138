"""Per-group pruning sensitivity: how much the metric drops when only one group is pruned.

For each prunable group and each level of a sparsity grid, the group alone is pruned (with
physical speedup), the model is evaluated and the drop against the unpruned model is recorded.
The table drives the search spaces: sensitive groups get lower sparsity bounds, robust ones higher.

Example:
    >>> import torch
    >>> from slimtune.compressors.sensitivity import analyze_sensitivity
    >>> from slimtune.examples.models import mlp
    >>> model, x = mlp(), torch.randn(64, 64)
    >>> ref = model(x).detach()
    >>> score = lambda m: -float((m(x) - ref).square().mean())  # higher is better
    >>> table = analyze_sensitivity(model, x[:1], score, levels=(0.25, 0.5), progress=False)
    >>> sorted(table["group"].unique()), len(table)
    (['features.0', 'features.2'], 4)
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Iterable, Sequence

import pandas as pd
import torch
import torch.nn as nn

from slimtune.compressors.compress import compress
from slimtune.compressors.graph import ModelGraph, trace
from slimtune.compressors.measures import count_flops
from slimtune.compressors.plan import CompressionPlan, PruneSpec

DEFAULT_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
COLUMNS = ["group", "level", "channels", "removed", "metric", "drop", "flops_rel", "seconds"]


def analyze_sensitivity(
    model: nn.Module,
    example_inputs: torch.Tensor | tuple[torch.Tensor, ...],
    evaluate: Callable[[nn.Module], float],
    levels: Sequence[float] = DEFAULT_LEVELS,
    criterion: str = "l1",
    groups: Iterable[str] | None = None,
    data: Iterable[Any] | None = None,
    direction: str = "maximize",
    graph: ModelGraph | None = None,
    baseline: float | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Prune one group at a time at each level and record the metric.

    Args:
        model: The trained model (not modified).
        example_inputs: Inputs with a batch dimension.
        evaluate: ``evaluate(model) -> float``, the task's metric.
        levels: Sparsity grid, each in (0, 1).
        criterion: Pruning criterion used for every group.
        groups: Groups to analyse (default: every prunable group).
        data: Batches for data-driven criteria.
        direction: ``"maximize"`` when a higher metric is better, else ``"minimize"``.
        graph: A ready :func:`trace` of ``model`` (traced here when omitted).
        baseline: The unpruned model's metric, if already known.
        progress: Show a progress bar.

    Returns:
        One row per (group, level): ``group``, ``level``, ``channels`` (group size), ``removed``
        (channels removed), ``metric``, ``drop`` (baseline − metric for maximize; metric − baseline
        for minimize: positive is worse), ``flops_rel`` (whole-model MACs relative to the
        original) and ``seconds``. The baseline is in ``table.attrs["baseline"]``.
    """
    if direction not in ("maximize", "minimize"):
        raise ValueError(f"direction must be 'maximize' or 'minimize', got {direction!r}")
    bad = [lv for lv in levels if not (0.0 < float(lv) < 1.0)]
    if bad:
        raise ValueError(f"sensitivity levels must be in (0, 1); got {bad}")
    graph = graph or trace(model, example_inputs)
    names = list(groups) if groups is not None else [g.name for g in graph.prunable_groups()]
    unknown = [n for n in names if n not in graph.groups or not graph.groups[n].prunable]
    if unknown:
        raise ValueError(f"not prunable group(s) for sensitivity: {unknown}")
    if baseline is None:
        baseline = float(evaluate(model))
    base_flops = float(count_flops(model, example_inputs)["macs"].sum())
    sign = 1.0 if direction == "maximize" else -1.0

    jobs = [(n, float(lv)) for n in names for lv in levels]
    bar = _progress(len(jobs), progress)
    rows = []
    for name, level in jobs:
        start = time.perf_counter()
        group = graph.groups[name]
        plan = CompressionPlan({name: PruneSpec(level, criterion)})
        small = compress(model, plan, example_inputs, speedup=True, data=data)
        metric = float(evaluate(small))
        flops = float(count_flops(small, example_inputs)["macs"].sum())
        drop = sign * (baseline - metric) if math.isfinite(metric) else math.inf
        rows.append(
            {
                "group": name,
                "level": level,
                "channels": group.size,
                "removed": group.n_prune(level),
                "metric": metric,
                "drop": drop,
                "flops_rel": flops / base_flops if base_flops else 1.0,
                "seconds": time.perf_counter() - start,
            }
        )
        if bar is not None:
            bar.set_postfix_str(f"{name} @ {level:.2f}: drop {drop:+.4f}")
            bar.update(1)
    if bar is not None:
        bar.close()
    table = pd.DataFrame(rows, columns=COLUMNS)
    table.attrs["baseline"] = baseline
    table.attrs["criterion"] = criterion
    table.attrs["direction"] = direction
    return table


def max_safe_level(table: pd.DataFrame, tolerance: float) -> dict[str, float]:
    """For each group, the largest level whose drop stays within ``tolerance`` (0.0 if none).

    Levels are read in increasing order and the scan stops at the first level over the tolerance,
    so a noisy recovery at a higher level does not count.
    """
    out: dict[str, float] = {}
    for name, rows in table.sort_values("level").groupby("group", sort=False):
        best = 0.0
        for level, drop in zip(rows["level"], rows["drop"]):
            if drop > tolerance:
                break
            best = float(level)
        out[str(name)] = best
    return out


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="sensitivity", unit="eval", leave=False)
