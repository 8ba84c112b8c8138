"""Per-group pruning sensitivity: how much the metric drops when only one group is pruned.

For each prunable group and each level of a sparsity grid, the group alone is pruned (with
physical speedup), the model is evaluated and the drop against the unpruned model is recorded.
The table drives the search spaces: sensitive groups get lower sparsity bounds, robust ones higher.
:func:`analyze_bit_sensitivity` does the same for quantization: one layer at a time at each weight
bit-width.

Both take the rows already computed (``done``, skipped and returned as given) and a callback for
each new row (``on_result``), so a caller can store every result as it finishes and resume an
interrupted analysis (:mod:`slimtune.trials.sensitivity` does so in the study's storage).

Example:
    >>> import torch
    >>> from slimtune.compressors.sensitivity import analyze_sensitivity
    >>> from slimtune.examples.models import mlp
    >>> model, x = mlp(), torch.randn(64, 64)
    >>> ref = model(x).detach()
    >>> score = lambda m: -float((m(x) - ref).square().mean().detach())  # higher is better
    >>> table = analyze_sensitivity(model, x[:1], score, levels=(0.25, 0.5), progress=False)
    >>> sorted(table["group"].unique()), len(table)
    (['features.0', 'features.2'], 4)

    Resuming: the rows given as ``done`` are not evaluated again.

    >>> stored = {}
    >>> first = analyze_sensitivity(model, x[:1], score, levels=(0.25,), progress=False,
    ...                             on_result=lambda row: stored.setdefault((row["group"], row["level"]), row))
    >>> calls = []
    >>> again = analyze_sensitivity(model, x[:1], lambda m: calls.append(1) or score(m), levels=(0.25, 0.5),
    ...                             baseline=first.attrs["baseline"], done=stored, progress=False)
    >>> len(calls), len(again), again["metric"].tolist()[::2] == first["metric"].tolist()
    (2, 4, True)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import pandas as pd
import torch
import torch.nn as nn

from slimtune.compressors._inputs import positional_inputs
from slimtune.compressors.compress import compress
from slimtune.compressors.graph import ModelGraph, trace
from slimtune.compressors.measures import count_flops
from slimtune.compressors.plan import CompressionPlan, PruneSpec, QuantSpec
from slimtune.errors import ArgumentError

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
    done: Mapping[tuple[str, float], Mapping[str, Any]] | None = None,
    on_result: Callable[[dict[str, Any]], None] | None = None,
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
        baseline: The unpruned model's metric, if already known (pass the one ``done`` was
            computed against when resuming, so every drop is measured from the same baseline).
        progress: Show a progress bar (the rows of ``done`` count as already done).
        done: Rows already computed, keyed by ``(group, level)``: those (group, level) are not
            evaluated again and their rows go into the table as given (keys of other analyses
            are ignored).
        on_result: Called with each newly computed row (a dict of the table's columns) right
            after its evaluation, e.g. to store it.

    Returns:
        One row per (group, level): ``group``, ``level``, ``channels`` (group size), ``removed``
        (channels removed), ``metric``, ``drop`` (baseline − metric for maximize; metric − baseline
        for minimize: positive is worse), ``flops_rel`` (whole-model MACs relative to the
        original) and ``seconds``. The baseline is in ``table.attrs["baseline"]``.
    """
    if direction not in ("maximize", "minimize"):
        raise ArgumentError(f"direction must be 'maximize' or 'minimize', got {direction!r}", field="direction")
    bad = [lv for lv in levels if not (0.0 < float(lv) < 1.0)]
    if bad:
        raise ArgumentError(f"sensitivity levels must be in (0, 1); got {bad}", field="levels")
    example_inputs = positional_inputs(model, example_inputs)
    graph = graph or trace(model, example_inputs)
    names = list(groups) if groups is not None else [g.name for g in graph.prunable_groups()]
    unknown = [n for n in names if n not in graph.groups or not graph.groups[n].prunable]
    if unknown:
        raise ArgumentError(f"not prunable group(s) for sensitivity: {unknown}", field="groups")
    if baseline is None:
        baseline = float(evaluate(model))
    base_flops = float(count_flops(model, example_inputs)["macs"].sum())
    jobs = [
        (
            f"{name} @ {level:.2f}",
            (name, level),
            {
                "group": name,
                "level": level,
                "channels": graph.groups[name].size,
                "removed": graph.groups[name].n_prune(level),
            },
            CompressionPlan({name: PruneSpec(level, criterion)}),
        )
        for name in names
        for level in (float(lv) for lv in levels)
    ]

    def flops_rel(small: nn.Module) -> dict[str, float]:
        flops = float(count_flops(small, example_inputs)["macs"].sum())
        return {"flops_rel": flops / base_flops if base_flops else 1.0}

    rows = _sweep(
        jobs,
        lambda plan: compress(model, plan, example_inputs, speedup=True, data=data, graph=graph),
        evaluate,
        baseline,
        direction,
        progress,
        "sensitivity",
        extra=flops_rel,
        done=_keyed(done, float),
        on_result=on_result,
    )
    table = pd.DataFrame(rows, columns=COLUMNS)
    table.attrs["baseline"] = baseline
    table.attrs["criterion"] = criterion
    table.attrs["direction"] = direction
    return table


BIT_COLUMNS = ["layer", "bits_w", "bits_a", "metric", "drop", "seconds"]


def analyze_bit_sensitivity(
    model: nn.Module,
    example_inputs: torch.Tensor | tuple[torch.Tensor, ...],
    evaluate: Callable[[nn.Module], float],
    bits: Sequence[int] = (2, 4, 8),
    bits_a: int | None = None,
    layers: Iterable[str] | None = None,
    data: Iterable[Any] | None = None,
    direction: str = "maximize",
    graph: ModelGraph | None = None,
    baseline: float | None = None,
    progress: bool = True,
    done: Mapping[tuple[str, int], Mapping[str, Any]] | None = None,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> pd.DataFrame:
    """Quantize one layer at a time at each weight bit-width (static PTQ) and record the metric.

    Args:
        model: The trained model (not modified).
        example_inputs: Inputs with a batch dimension.
        evaluate: ``evaluate(model) -> float``.
        bits: Weight bit-widths to try, each in 1-8.
        bits_a: Activation bit-width applied with each weight bit-width (None: float; needs
            ``data`` for calibration otherwise).
        layers: Layers to analyse (default: every quantizable layer).
        data: Calibration batches (needed when ``bits_a`` is set).
        direction: ``"maximize"`` when a higher metric is better, else ``"minimize"``.
        graph: A ready :func:`trace` of ``model``.
        baseline: The unquantized model's metric, if already known (pass the one ``done`` was
            computed against when resuming).
        progress: Show a progress bar (the rows of ``done`` count as already done).
        done: Rows already computed, keyed by ``(layer, bits_w)``: not evaluated again, their
            rows go into the table as given.
        on_result: Called with each newly computed row right after its evaluation.

    Returns:
        One row per (layer, bits): ``layer``, ``bits_w``, ``bits_a``, ``metric``, ``drop``
        (positive is worse) and ``seconds``; the baseline is in ``table.attrs["baseline"]``.
    """
    if direction not in ("maximize", "minimize"):
        raise ArgumentError(f"direction must be 'maximize' or 'minimize', got {direction!r}", field="direction")
    bad = [b for b in bits if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= 8]
    if bad or not bits:
        raise ArgumentError(f"bit-widths for sensitivity must be integers in 1-8; got {list(bits)}", field="bits")
    example_inputs = positional_inputs(model, example_inputs)
    graph = graph or trace(model, example_inputs)
    names = list(layers) if layers is not None else graph.quantizable_layers()
    unknown = [n for n in names if n not in graph.quantizable_layers()]
    if unknown:
        raise ArgumentError(f"not quantizable layer(s) for sensitivity: {unknown}", field="layers")
    if baseline is None:
        baseline = float(evaluate(model))
    jobs = [
        (
            f"{layer} @ {b} bits",
            (layer, int(b)),
            {"layer": layer, "bits_w": int(b), "bits_a": bits_a},
            CompressionPlan(quantize={layer: QuantSpec(int(b), bits_a)}),
        )
        for layer in names
        for b in bits
    ]
    rows = _sweep(
        jobs,
        lambda plan: compress(model, plan, example_inputs, data=data, graph=graph, quant_algorithm="ptq"),
        evaluate,
        baseline,
        direction,
        progress,
        "bit sensitivity",
        done=_keyed(done, int),
        on_result=on_result,
    )
    table = pd.DataFrame(rows, columns=BIT_COLUMNS)
    table.attrs["baseline"] = baseline
    table.attrs["direction"] = direction
    return table


RANK_COLUMNS = ["layer", "rank_ratio", "method", "metric", "drop", "flops_rel", "seconds"]


def analyze_rank_sensitivity(
    model: nn.Module,
    example_inputs: torch.Tensor | tuple[torch.Tensor, ...],
    evaluate: Callable[[nn.Module], float],
    ratios: Sequence[float] = (0.125, 0.25, 0.5),
    layers: Iterable[str] | None = None,
    method: str = "auto",
    direction: str = "maximize",
    graph: ModelGraph | None = None,
    baseline: float | None = None,
    progress: bool = True,
    done: Mapping[tuple[str, float], Mapping[str, Any]] | None = None,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> pd.DataFrame:
    """Factorize one layer at a time at each rank ratio (:mod:`slimtune.compressors.lowrank`, no fine-tuning)
    and record the metric.

    Args:
        model: The trained model (not modified).
        example_inputs: Inputs with a batch dimension.
        evaluate: ``evaluate(model) -> float``.
        ratios: Rank ratios to try, each in (0, 1).
        layers: Layers to analyse (default: every factorizable layer).
        method: The decomposition (``auto``, ``svd``, ``tucker2``).
        direction, graph, baseline, progress, done, on_result: As for :func:`analyze_bit_sensitivity`
            (``done`` keyed by ``(layer, rank_ratio)``).

    Returns:
        One row per (layer, ratio): ``layer``, ``rank_ratio``, ``method``, ``metric``, ``drop`` (positive is
        worse), ``flops_rel`` (the model's MACs with that layer factorized, relative to the original) and
        ``seconds``; the baseline is in ``table.attrs["baseline"]``.

    Example:
        >>> import torch
        >>> from slimtune.examples.models import mlp
        >>> model, x = mlp(16, (32,), 4).eval(), torch.randn(64, 16)
        >>> ref = model(x).detach()
        >>> table = analyze_rank_sensitivity(model, x[:1], lambda m: -float((m(x) - ref).detach().square().mean()),
        ...                                  ratios=(0.25, 0.5), progress=False)
        >>> list(table["layer"]), bool((table["drop"] >= 0).all())
        (['features.0', 'features.0', 'fc', 'fc'], True)
    """
    from slimtune.compressors.lowrank import factorizable_layers
    from slimtune.compressors.measures import count_flops
    from slimtune.compressors.plan import FactorSpec

    if direction not in ("maximize", "minimize"):
        raise ArgumentError(f"direction must be 'maximize' or 'minimize', got {direction!r}", field="direction")
    bad = [r for r in ratios if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r < 1]
    if bad or not ratios:
        raise ArgumentError(f"rank ratios for sensitivity must be in (0, 1); got {list(ratios)}", field="ratios")
    example_inputs = positional_inputs(model, example_inputs)
    graph = graph or trace(model, example_inputs)
    candidates = factorizable_layers(model)
    names = list(layers) if layers is not None else candidates
    unknown = [n for n in names if n not in candidates]
    if unknown:
        raise ArgumentError(f"not factorizable layer(s) for sensitivity: {unknown}", field="layers")
    if baseline is None:
        baseline = float(evaluate(model))
    dense = float(count_flops(model, example_inputs)["macs"].sum()) or 1.0

    jobs = [
        (
            f"{layer} @ rank {r:g}",
            (layer, float(r)),
            {"layer": layer, "rank_ratio": float(r), "method": method},
            CompressionPlan(factorize={layer: FactorSpec(rank_ratio=float(r), method=method)}),
        )
        for layer in names
        for r in ratios
    ]
    rows = _sweep(
        jobs,
        lambda plan: compress(model, plan, example_inputs, graph=graph),
        evaluate,
        baseline,
        direction,
        progress,
        "rank sensitivity",
        extra=lambda small: {"flops_rel": float(count_flops(small, example_inputs)["macs"].sum()) / dense},
        done=_keyed(done, float),
        on_result=on_result,
    )
    table = pd.DataFrame(rows, columns=RANK_COLUMNS)
    table.attrs["baseline"] = baseline
    table.attrs["direction"] = direction
    return table


def min_safe_ranks(table: pd.DataFrame, tolerance: float) -> dict[str, float]:
    """For each layer of a rank-sensitivity table, the lowest rank ratio whose drop stays within ``tolerance``
    (1.0, i.e. not factorized, if even the highest one tried is over it). Ratios are read from the highest down
    and the scan stops at the first one over the tolerance.

    Example:
        >>> import pandas as pd
        >>> t = pd.DataFrame({"layer": ["a"] * 3 + ["b"] * 3, "rank_ratio": [0.25, 0.5, 0.75] * 2,
        ...                   "drop": [0.3, 0.01, 0.0, 0.001, 0.2, 0.0]})
        >>> min_safe_ranks(t, 0.02)
        {'a': 0.5, 'b': 0.75}
    """
    return _safe_scan(table, "layer", "rank_ratio", tolerance, ascending=False, default=1.0, cast=float)


def max_safe_level(table: pd.DataFrame, tolerance: float) -> dict[str, float]:
    """For each group, the largest level whose drop stays within ``tolerance`` (0.0 if none).

    Levels are read in increasing order and the scan stops at the first level over the tolerance,
    so a noisy recovery at a higher level does not count.
    """
    return _safe_scan(table, "group", "level", tolerance, ascending=True, default=0.0, cast=float)


def min_safe_bits(table: pd.DataFrame, tolerance: float) -> dict[str, int]:
    """For each layer of a bit-sensitivity table, the lowest weight bit-width whose drop stays
    within ``tolerance`` (32, i.e. float, if even the highest one tried is over it).

    Bit-widths are read from the highest down and the scan stops at the first one over the
    tolerance, so a noisy recovery at a lower bit-width does not count.

    Example:
        >>> import pandas as pd
        >>> t = pd.DataFrame({"layer": ["a"] * 3 + ["b"] * 3, "bits_w": [2, 4, 8] * 2,
        ...                   "drop": [0.3, 0.01, 0.0, 0.001, 0.2, 0.0]})
        >>> min_safe_bits(t, 0.02)
        {'a': 4, 'b': 8}
    """
    return _safe_scan(table, "layer", "bits_w", tolerance, ascending=False, default=32, cast=int)


def _safe_scan(
    table: pd.DataFrame, name_col: str, value_col: str, tolerance: float, ascending: bool, default: Any, cast: type
) -> dict[str, Any]:
    """Per ``name_col``, the last ``value_col`` (scanned in that order) before the first drop over ``tolerance``
    (``default`` when the first one is already over it)."""
    out: dict[str, Any] = {}
    for name, rows in table.groupby(name_col, sort=False):
        rows = rows.sort_values(value_col, ascending=ascending)
        best = default
        for value, drop in zip(rows[value_col], rows["drop"]):
            if drop > tolerance:
                break
            best = cast(value)
        out[str(name)] = best
    return out


def _sweep(
    jobs: list[tuple[str, tuple[str, Any], dict[str, Any], CompressionPlan]],
    build: Callable[[CompressionPlan], nn.Module],
    evaluate: Callable[[nn.Module], float],
    baseline: float,
    direction: str,
    progress: bool,
    desc: str,
    extra: Callable[[nn.Module], dict[str, float]] | None = None,
    done: Mapping[tuple[str, Any], Mapping[str, Any]] | None = None,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Build and evaluate one compressed model per job: its row plus metric, drop and seconds.

    A job whose key is in ``done`` is not evaluated: its row is ``done[key]``, as given.
    """
    done = done or {}
    sign = 1.0 if direction == "maximize" else -1.0
    bar = _progress(len(jobs), progress, desc, initial=sum(key in done for _, key, _, _ in jobs))
    rows = []
    for label, key, row, plan in jobs:
        if key in done:
            rows.append(dict(done[key]))
            continue
        start = time.perf_counter()
        compressed = build(plan)
        metric = float(evaluate(compressed))
        drop = sign * (baseline - metric) if math.isfinite(metric) else math.inf
        result = {
            **row,
            "metric": metric,
            "drop": drop,
            **(extra(compressed) if extra else {}),
            "seconds": time.perf_counter() - start,
        }
        rows.append(result)
        if on_result is not None:
            on_result(dict(result))
        if bar is not None:
            bar.set_postfix_str(f"{label}: drop {drop:+.4f}")
            bar.update(1)
    if bar is not None:
        bar.close()
    return rows


def _keyed(
    done: Mapping[tuple[str, Any], Mapping[str, Any]] | None, kind: type
) -> dict[tuple[str, Any], Mapping[str, Any]]:
    """``done`` with its keys as ``(str, kind)`` (a level 0.5 given as ``"0.5"`` or 1/2 still matches)."""
    return {(str(name), kind(value)): row for (name, value), row in (done or {}).items()}


def _progress(total: int, enabled: bool, desc: str = "sensitivity", initial: int = 0) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="eval", leave=False)
