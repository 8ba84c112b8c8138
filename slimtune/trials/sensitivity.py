"""The sensitivity tables of a task, computed once per task and storage and cached there.

A search whose space uses sensitivity (``space.sensitivity``, the default) first measures how
much the metric drops when each prunable group is pruned alone at each level of
``space.levels`` (:func:`~slimtune.compressors.sensitivity.analyze_sensitivity`), and, when the
space searches weight bit-widths, when each layer alone is quantized
(:func:`~slimtune.compressors.sensitivity.analyze_bit_sensitivity`). The tables are stored in
the study's storage (a study named ``slimtune-sensitivity-<key>``, keyed by the model's weights,
the metric, the criterion and the levels), so resuming a study or starting another one on the
same task reuses them.

The analysis is resumable: each evaluation is stored as it finishes, as one trial of the cache
study (user attributes ``row``, the table's row, and ``baseline``, the original model's metric
it was measured against; state COMPLETE with the metric as its value, FAIL when the metric is
not finite). A killed analysis started again evaluates only the missing (group, level) or
(layer, bit-width) pairs. The cache study's user attributes hold ``baseline`` and ``direction``
from the start, and ``table`` (the whole table, what the dashboard reads) and ``criterion`` once
complete; a later call returns that table without evaluating anything.

Inserting one trial per row is a plain insert in every Optuna storage (SQLite, PostgreSQL,
MySQL, journal), atomic with its attributes, so several processes may write rows of the same
analysis at once; a pair stored twice is read once (the first one). Rows are used only with
the baseline they were measured against: when the original model's metric is no longer the
stored one (within 1e-6 relative; e.g. the task's evaluation data changed while the weights,
hence the key, did not), the stored rows are ignored and the analysis starts over.

Example:
    >>> import optuna, slimtune, torch
    >>> from slimtune.examples.models import mlp
    >>> from slimtune.trials.sensitivity import sensitivity_table
    >>> model, x = mlp(), torch.randn(32, 64)
    >>> ref = model(x).detach()
    >>> task = slimtune.Task(model, x[:1], lambda m: -float((m(x) - ref).square().mean().detach()), name="doc")
    >>> storage = optuna.storages.InMemoryStorage()
    >>> first = sensitivity_table(task, storage, {"levels": [0.5]}, progress=False)
    >>> len(first), first.attrs["cached"]
    (2, False)
    >>> sensitivity_table(task, storage, {"levels": [0.5]}, progress=False).attrs["cached"]
    True
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import optuna
import pandas as pd
from optuna.trial import TrialState

from slimtune.attributes import SensitivityCache as C
from slimtune.compressors.graph import trace
from slimtune.compressors.sensitivity import analyze_bit_sensitivity, analyze_sensitivity
from slimtune.errors import SlimtuneError
from slimtune.search_spaces import SpaceOptions
from slimtune.trials.driver import quiet_optuna
from slimtune.trials.storage import CACHE_PREFIX, make_storage
from slimtune.trials.task import evaluate_original

if TYPE_CHECKING:
    from optuna.storages import BaseStorage

    from slimtune.trials.task import Task

logger = logging.getLogger("slimtune")

SENSITIVITY_PREFIX = CACHE_PREFIX
#: bit-width tables share the prefix, so listings that skip caches skip both
BIT_SENSITIVITY_PREFIX = SENSITIVITY_PREFIX + "bits-"
RANK_SENSITIVITY_PREFIX = SENSITIVITY_PREFIX + "ranks-"

#: user attributes of a row trial of a cache study: the table's row, the baseline it was measured against
ROW_ATTR = C.ROW
ROW_BASELINE_ATTR = C.ROW_BASELINE

Rows = dict[tuple[str, Any], dict[str, Any]]
Compute = Callable[[float, Rows, Callable[[dict[str, Any]], None]], pd.DataFrame]


def sensitivity_table(
    task: Task,
    storage: str | BaseStorage | None = None,
    space: SpaceOptions | Mapping[str, Any] | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """The task's per-group sensitivity table, computed once per task and storage.

    The table is cached in the storage (a study named ``slimtune-sensitivity-<key>``), keyed by
    the model's weights, the metric, the criterion and the levels, so resuming a study or starting
    another one on the same task reuses it. Each (group, level) result is stored as it finishes,
    so an interrupted analysis resumes where it stopped.
    """
    options = space if isinstance(space, SpaceOptions) else SpaceOptions.from_dict(space)
    key = f"{task.fingerprint()}-{options.criterion}-{'_'.join(f'{v:g}' for v in options.levels)}"
    levels = [float(v) for v in options.levels]

    def compute(baseline: float, done: Rows, on_result: Callable[[dict[str, Any]], None]) -> pd.DataFrame:
        graph = trace(task.model, task.example_inputs)
        groups = [g.name for g in graph.prunable_groups()]
        total = len(levels) * len(groups)
        logger.info(
            "sensitivity analysis: %s levels x %s prunable groups = %s evaluations (cached in the storage)",
            len(levels),
            len(groups),
            total,
        )
        _log_resume(sum((g, lv) in done for g in groups for lv in levels), total)
        return analyze_sensitivity(
            task.model,
            task.example_inputs,
            task.evaluate,
            levels=levels,
            criterion=options.criterion,
            data=task.calibration,
            direction=task.direction,
            graph=graph,
            baseline=baseline,
            progress=progress,
            done=done,
            on_result=on_result,
        )

    table = _cached_table(task, storage, SENSITIVITY_PREFIX + key, compute, ("group", "level", float))
    table.attrs.setdefault("criterion", options.criterion)
    return table


def bit_sensitivity_table(
    task: Task,
    storage: str | BaseStorage | None = None,
    space: SpaceOptions | Mapping[str, Any] | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """The task's per-layer weight bit-width sensitivity table, computed once per task and storage.

    One row per (layer, bit-width) of ``space.bits_w`` (32 excluded) for the space's quantizable
    layers: static PTQ of that layer alone, weights only. Cached and resumable like
    :func:`sensitivity_table` (study ``slimtune-sensitivity-bits-<key>``).
    """
    options = space if isinstance(space, SpaceOptions) else SpaceOptions.from_dict(space)
    bits = tuple(b for b in (options.bits_w or ()) if b != 32)
    if not bits:
        raise SlimtuneError("space.bits_w has no bit-width below 32 to analyse (e.g. bits_w: [4, 8, 32])")
    layers = options.quantize_layers
    key = f"{task.fingerprint()}-w{'_'.join(map(str, bits))}" + (
        f"-{hashlib.sha1(','.join(layers).encode()).hexdigest()[:12]}" if layers else ""
    )

    def compute(baseline: float, done: Rows, on_result: Callable[[dict[str, Any]], None]) -> pd.DataFrame:
        graph = trace(task.model, task.example_inputs)
        names = list(layers) if layers is not None else graph.quantizable_layers()
        total = len(bits) * len(names)
        logger.info(
            "bit-width sensitivity: %s bit-widths x %s quantizable layers = %s evaluations (cached in the storage)",
            len(bits),
            len(names),
            total,
        )
        _log_resume(sum((n, int(b)) in done for n in names for b in bits), total)
        return analyze_bit_sensitivity(
            task.model,
            task.example_inputs,
            task.evaluate,
            bits=bits,
            layers=layers,
            data=task.calibration,
            direction=task.direction,
            graph=graph,
            baseline=baseline,
            progress=progress,
            done=done,
            on_result=on_result,
        )

    return _cached_table(task, storage, BIT_SENSITIVITY_PREFIX + key, compute, ("layer", "bits_w", int))


def rank_sensitivity_table(
    task: Task,
    storage: str | BaseStorage | None = None,
    space: SpaceOptions | Mapping[str, Any] | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """The task's per-layer rank sensitivity table, computed once per task and storage.

    One row per (layer, rank ratio) of ``space.ranks`` (1.0 excluded) for the space's factorizable layers: that
    layer alone factorized (``space.rank_method``), no fine-tuning. Cached and resumable like
    :func:`sensitivity_table` (study ``slimtune-sensitivity-ranks-<key>``).
    """
    from slimtune.compressors.sensitivity import analyze_rank_sensitivity

    options = space if isinstance(space, SpaceOptions) else SpaceOptions.from_dict(space)
    ratios = tuple(r for r in (options.ranks or ()) if r < 1.0)
    if not ratios:
        raise SlimtuneError("space.ranks has no rank ratio below 1 to analyse (e.g. ranks: [0.25, 0.5, 1.0])")
    layers = options.factorize_layers
    key = f"{task.fingerprint()}-r{'_'.join(f'{r:g}' for r in ratios)}-{options.rank_method}" + (
        f"-{hashlib.sha1(','.join(layers).encode()).hexdigest()[:12]}" if layers else ""
    )

    def compute(baseline: float, done: Rows, on_result: Callable[[dict[str, Any]], None]) -> pd.DataFrame:
        from slimtune.compressors.lowrank import factorizable_layers

        names = list(layers) if layers is not None else factorizable_layers(task.model)
        total = len(ratios) * len(names)
        logger.info(
            "rank sensitivity: %s rank ratios x %s factorizable layers = %s evaluations (cached in the storage)",
            len(ratios),
            len(names),
            total,
        )
        _log_resume(sum((n, float(r)) in done for n in names for r in ratios), total)
        return analyze_rank_sensitivity(
            task.model,
            task.example_inputs,
            task.evaluate,
            ratios=ratios,
            layers=names,
            method=options.rank_method,
            direction=task.direction,
            baseline=baseline,
            progress=progress,
            done=done,
            on_result=on_result,
        )

    return _cached_table(task, storage, RANK_SENSITIVITY_PREFIX + key, compute, ("layer", "rank_ratio", float))


def _log_resume(stored: int, total: int) -> None:
    if stored:
        logger.info("resuming: %s of %s evaluations already stored", stored, total)


def _cached_table(
    task: Task,
    storage: str | BaseStorage | None,
    name: str,
    compute: Compute,
    row_key: tuple[str, str, type],
) -> pd.DataFrame:
    """The table cached in study ``name`` of the storage, or ``compute(baseline, done, on_result)``
    stored there, row by row (``done``: the rows already stored, keyed by ``row_key``'s columns).
    """
    with quiet_optuna():  # Optuna's "A new study created" line: the analysis logs its own
        cache = optuna.create_study(study_name=name, storage=make_storage(storage), load_if_exists=True)
    attrs = cache.user_attrs
    cached = attrs.get(C.TABLE)
    if cached is not None:
        table = pd.DataFrame(cached)
        for key in (C.BASELINE, C.CRITERION, C.DIRECTION):
            if key in attrs:
                table.attrs[key] = attrs[key]
        table.attrs.setdefault("direction", task.direction)
        table.attrs["cached"] = True
        return table

    current = evaluate_original(task)
    baseline = attrs.get(C.BASELINE)
    if not _same(baseline, current):
        if baseline is not None:
            logger.warning(
                "sensitivity cache %s: the original model now scores %r, its stored rows were measured against %r; "
                "recomputing them",
                name,
                current,
                baseline,
            )
        baseline = current
        cache.set_user_attr(C.BASELINE, baseline)
        cache.set_user_attr(C.DIRECTION, task.direction)
    baseline = float(baseline)
    done = _stored_rows(cache, baseline, row_key)

    def store(row: dict[str, Any]) -> None:
        plain = {k: _plain(v) for k, v in row.items()}
        metric = plain.get("metric")
        finite = isinstance(metric, (int, float)) and math.isfinite(metric)
        cache.add_trial(
            optuna.trial.create_trial(
                state=TrialState.COMPLETE if finite else TrialState.FAIL,
                value=float(metric) if finite else None,
                user_attrs={ROW_ATTR: plain, ROW_BASELINE_ATTR: baseline},
            )
        )

    table = compute(baseline, done, store)
    # full precision (a cached table equals the computed one); non-finite numbers as null, like JSON
    cache.set_user_attr(C.TABLE, [{k: _finite(v) for k, v in r.items()} for r in table.to_dict("records")])
    cache.set_user_attr(C.DIRECTION, task.direction)
    for key in (C.BASELINE, C.CRITERION):
        if key in table.attrs:
            cache.set_user_attr(key, table.attrs[key])
    table.attrs["cached"] = False
    return table


def _stored_rows(cache: optuna.Study, baseline: float, row_key: tuple[str, str, type]) -> Rows:
    """The rows stored in the cache study measured against ``baseline``, by key (the first of duplicates)."""
    name_col, value_col, kind = row_key
    rows: Rows = {}
    for t in sorted(cache.get_trials(deepcopy=False), key=lambda t: t.number):
        row = t.user_attrs.get(ROW_ATTR)
        if not isinstance(row, dict) or not _same(t.user_attrs.get(ROW_BASELINE_ATTR), baseline, exact=True):
            continue
        try:
            key = (str(row[name_col]), kind(row[value_col]))
        except (KeyError, TypeError, ValueError):
            continue
        rows.setdefault(key, row)
    return rows


def _same(stored: Any, value: float, exact: bool = False) -> bool:
    """Whether a stored baseline is ``value`` (within float noise of a re-evaluation unless ``exact``)."""
    if isinstance(stored, bool) or not isinstance(stored, (int, float)) or not math.isfinite(stored):
        return False
    return float(stored) == value if exact else math.isclose(float(stored), value, rel_tol=1e-6, abs_tol=1e-9)


def _plain(value: Any) -> Any:
    """A JSON-serialisable scalar (NumPy and torch scalars as Python ones)."""
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    return value


def _finite(value: Any) -> Any:
    """:func:`_plain`, with NaN and infinities as None (strict JSON)."""
    value = _plain(value)
    return None if isinstance(value, float) and not math.isfinite(value) else value


__all__ = [
    "BIT_SENSITIVITY_PREFIX",
    "RANK_SENSITIVITY_PREFIX",
    "SENSITIVITY_PREFIX",
    "bit_sensitivity_table",
    "rank_sensitivity_table",
    "sensitivity_table",
]
