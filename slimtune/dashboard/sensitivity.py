"""The sensitivity tables a storage caches, as matrices for the dashboard's heatmaps.

``slimtune.trials.sensitivity.sensitivity_table`` (and the bit-width variant) store each table as the
user attributes of a study named ``slimtune-sensitivity-<key>``: the rows, the original metric
(``baseline``), the criterion and the metric's direction.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from slimtune.attributes import SensitivityCache as C
from slimtune.attributes import Study

__all__ = ["sensitivity_matrix", "uses_table"]


def sensitivity_matrix(name: str, attrs: Mapping[str, Any]) -> dict[str, Any] | None:
    """The table cached in study ``name`` (its user attributes) as a matrix of metric drops.

    Pruning tables (``group``, ``level``) give groups × sparsity levels, bit-width tables
    (``layer``, ``bits_w``) layers × bits; None for a cache without a table yet.
    """
    rows = attrs.get(C.TABLE)
    if not isinstance(rows, list) or not rows:
        return None
    first = rows[0]
    if "group" in first and "level" in first:
        kind, row_key, col_key = "pruning", "group", "level"
    elif "layer" in first and "bits_w" in first:
        kind, row_key, col_key = "bits", "layer", "bits_w"
    else:
        return None
    row_names = list(dict.fromkeys(r[row_key] for r in rows))
    columns = sorted({r[col_key] for r in rows})
    drop = [[None] * len(columns) for _ in row_names]
    metric = [[None] * len(columns) for _ in row_names]
    ri, ci = {n: i for i, n in enumerate(row_names)}, {c: i for i, c in enumerate(columns)}
    for r in rows:
        drop[ri[r[row_key]]][ci[r[col_key]]] = _number(r.get("drop"))
        metric[ri[r[row_key]]][ci[r[col_key]]] = _number(r.get("metric"))
    return {
        "name": name,
        "kind": kind,
        "rows": [str(n) for n in row_names],
        "row_label": row_key,
        "columns": columns,
        "column_label": "sparsity" if kind == "pruning" else "weight bits",
        "drop": drop,
        "metric": metric,
        "baseline": attrs.get(C.BASELINE),
        "criterion": attrs.get(C.CRITERION),
        "direction": attrs.get(C.DIRECTION),
    }


def uses_table(study_attrs: Mapping[str, Any], table: Mapping[str, Any]) -> bool:
    """Whether a study's task and space match a cached sensitivity table (same original metric)."""
    baseline = (study_attrs.get(Study.BASELINE) or {}).get("accuracy")
    if baseline is None or table.get("baseline") is None or abs(float(baseline) - float(table["baseline"])) > 1e-9:
        return False
    space = study_attrs.get(Study.SPACE) or {}
    if table["kind"] == "pruning":
        levels = [float(v) for v in space.get("levels") or []]
        return space.get("criterion") == table.get("criterion") and sorted(levels) == [
            float(c) for c in table["columns"]
        ]
    bits = [b for b in space.get("bits_w") or [] if b != 32]
    return sorted(bits) == [int(c) for c in table["columns"]]


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None
