"""A killed sensitivity analysis resumes where it stopped: each evaluation is stored as it finishes.

Real storages (a SQLite file) and a real kill: the analysis runs in a child process whose
evaluation SIGKILLs it on its N-th call; the analysis started again in this process evaluates only
the missing (group, level) / (layer, bits) pairs, keeps the stored rows as they are, and ends with
the table a from-scratch analysis gives (the digits evaluation is deterministic).
"""

from __future__ import annotations

import logging
import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import pytest

import slimtune
from slimtune.compressors.graph import trace
from slimtune.trials.sensitivity import (
    BIT_SENSITIVITY_PREFIX,
    SENSITIVITY_PREFIX,
    bit_sensitivity_table,
    sensitivity_table,
)

PRUNE_SPACE = {"levels": [0.25, 0.5, 0.75]}
BITS_SPACE = {"bits_w": [4, 8], "quantize_layers": ["features.0", "fc1"]}
#: the repository this test imports slimtune from, for the child process
ROOT = str(Path(slimtune.__file__).resolve().parents[1])

CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from slimtune.examples.digits import make_task
    from slimtune.trials.sensitivity import bit_sensitivity_table, sensitivity_table

    url, kind, count_file, kill_at = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    task = make_task(finetune_epochs=0)
    inner, calls = task.evaluate, [0]

    def evaluate(m):
        calls[0] += 1
        with open(count_file, "a") as f:
            f.write("call\\n")
        if calls[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return inner(m)

    task.evaluate = evaluate
    if kind == "prune":
        sensitivity_table(task, url, {PRUNE_SPACE!r}, progress=False)
    else:
        bit_sensitivity_table(task, url, {BITS_SPACE!r}, progress=False)
    """
).replace("{PRUNE_SPACE!r}", repr(PRUNE_SPACE)).replace("{BITS_SPACE!r}", repr(BITS_SPACE))


class Counting:
    """The digits task with an evaluation that counts its calls."""

    def __init__(self) -> None:
        from slimtune.examples.digits import make_task

        self.task = make_task(finetune_epochs=0)
        self.calls = 0
        inner = self.task.evaluate

        def evaluate(m: Any) -> float:
            self.calls += 1
            return inner(m)

        self.task.evaluate = evaluate


@pytest.fixture(scope="module")
def shapes() -> dict[str, int]:
    task = Counting().task
    graph = trace(task.model, task.example_inputs)
    return {
        "prune": len(graph.prunable_groups()) * len(PRUNE_SPACE["levels"]),
        "bits": len(BITS_SPACE["quantize_layers"]) * len(BITS_SPACE["bits_w"]),
    }


def run_killed(tmp_path: Path, url: str, kind: str, kill_at: int) -> int:
    """Run the analysis in a child process killed on its ``kill_at``-th evaluation; its evaluation count."""
    script, count_file = tmp_path / "child.py", tmp_path / f"{kind}-calls.txt"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(script), url, kind, str(count_file), str(kill_at)],
                          env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    return len(count_file.read_text().splitlines())


def stored_rows(url: str, prefix: str) -> list[dict[str, Any]]:
    """The rows stored so far in the storage's cache study of that kind (read with Optuna directly)."""
    names = [n for n in optuna.get_all_study_names(url) if n.startswith(prefix)]
    if prefix == SENSITIVITY_PREFIX:
        names = [n for n in names if not n.startswith(BIT_SENSITIVITY_PREFIX)]
    assert len(names) == 1, names
    study = optuna.load_study(study_name=names[0], storage=url)
    assert "table" not in study.user_attrs  # killed before the table was complete
    return [t.user_attrs["row"] for t in study.trials]


def same_values(a: Any, b: Any) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def check_resumed(table: pd.DataFrame, stored: list[dict[str, Any]], fresh: pd.DataFrame, keys: list[str]) -> None:
    # the rows finished before the kill are in the table exactly as stored (their timings too)
    by_key = {tuple(r[k] for k in keys): r for r in table.to_dict("records")}
    for row in stored:
        kept = by_key[tuple(row[k] for k in keys)]
        assert set(kept) == set(row) and all(same_values(kept[c], row[c]) for c in row), (kept, row)
    # the same table as a from-scratch analysis: rows, order, values (all but the timings)
    assert list(table.columns) == list(fresh.columns)
    assert table.attrs["baseline"] == fresh.attrs["baseline"]
    values = [c for c in table.columns if c != "seconds"]
    pd.testing.assert_frame_equal(
        table[values].reset_index(drop=True), fresh[values].reset_index(drop=True), check_exact=True
    )


def test_killed_sensitivity_analysis_resumes(
    tmp_path: Path, shapes: dict[str, int], caplog: pytest.LogCaptureFixture
) -> None:
    url, total, kill_at = f"sqlite:///{tmp_path / 'killed.db'}", shapes["prune"], 8
    before_kill = run_killed(tmp_path, url, "prune", kill_at)
    finished = kill_at - 2  # the baseline, then rows until the kill on the 8th call
    assert before_kill == kill_at
    stored = stored_rows(url, SENSITIVITY_PREFIX)
    assert len(stored) == finished

    resumed = Counting()
    with caplog.at_level(logging.INFO, logger="slimtune"):
        table = sensitivity_table(resumed.task, url, PRUNE_SPACE, progress=False)
    assert resumed.calls == 1 + total - finished  # the baseline, then only the missing evaluations
    assert f"= {total} evaluations" in caplog.text
    assert f"resuming: {finished} of {total} evaluations already stored" in caplog.text
    assert table.attrs["cached"] is False and len(table) == total

    scratch = Counting()
    fresh = sensitivity_table(scratch.task, f"sqlite:///{tmp_path / 'fresh.db'}", PRUNE_SPACE, progress=False)
    assert scratch.calls == 1 + total
    check_resumed(table, stored, fresh, ["group", "level"])

    # complete now: returned at once, without any evaluation
    again = Counting()
    cached = sensitivity_table(again.task, url, PRUNE_SPACE, progress=False)
    assert again.calls == 0 and cached.attrs["cached"] is True
    assert cached[["group", "level", "metric", "drop"]].equals(table[["group", "level", "metric", "drop"]])
    print(f"\nprune: {total} evaluations, {finished} stored before the kill, {resumed.calls - 1} on resume")


def test_killed_bit_sensitivity_analysis_resumes(
    tmp_path: Path, shapes: dict[str, int], caplog: pytest.LogCaptureFixture
) -> None:
    url, total, kill_at = f"sqlite:///{tmp_path / 'killed.db'}", shapes["bits"], 4
    assert run_killed(tmp_path, url, "bits", kill_at) == kill_at
    finished = kill_at - 2
    stored = stored_rows(url, BIT_SENSITIVITY_PREFIX)
    assert len(stored) == finished

    resumed = Counting()
    with caplog.at_level(logging.INFO, logger="slimtune"):
        table = bit_sensitivity_table(resumed.task, url, BITS_SPACE, progress=False)
    assert resumed.calls == 1 + total - finished
    assert "2 bit-widths x 2 quantizable layers = 4 evaluations" in caplog.text
    assert f"resuming: {finished} of {total} evaluations already stored" in caplog.text

    scratch = Counting()
    fresh = bit_sensitivity_table(scratch.task, f"sqlite:///{tmp_path / 'fresh.db'}", BITS_SPACE, progress=False)
    check_resumed(table, stored, fresh, ["layer", "bits_w"])

    again = Counting()
    assert bit_sensitivity_table(again.task, url, BITS_SPACE, progress=False).attrs["cached"] is True
    assert again.calls == 0
    print(f"\nbits: {total} evaluations, {finished} stored before the kill, {resumed.calls - 1} on resume")


def test_complete_table_is_returned_without_evaluating(tmp_path: Path, shapes: dict[str, int]) -> None:
    url = f"sqlite:///{tmp_path / 'done.db'}"
    first = Counting()
    table = sensitivity_table(first.task, url, PRUNE_SPACE, progress=False)
    assert first.calls == 1 + shapes["prune"] and table.attrs["cached"] is False

    second = Counting()

    def refuse(m: Any) -> float:
        raise AssertionError("a cached table must not evaluate")

    second.task.evaluate = refuse
    cached = sensitivity_table(second.task, url, PRUNE_SPACE, progress=False)
    assert cached.attrs["cached"] is True and cached.attrs["baseline"] == table.attrs["baseline"]
    assert cached["metric"].tolist() == table["metric"].tolist()
    # the dashboard still reads the complete table from the cache study's user attributes
    from slimtune.dashboard.sensitivity import sensitivity_matrix

    name = next(n for n in optuna.get_all_study_names(url) if n.startswith(SENSITIVITY_PREFIX))
    matrix = sensitivity_matrix(name, optuna.load_study(study_name=name, storage=url).user_attrs)
    assert matrix is not None and matrix["kind"] == "pruning" and len(matrix["rows"]) * 3 == shapes["prune"]


def test_rows_of_another_baseline_are_not_reused(
    tmp_path: Path, shapes: dict[str, int], caplog: pytest.LogCaptureFixture
) -> None:
    """An analysis stopped by an error keeps its rows; a later one whose original model scores
    differently (same weights, other evaluation) recomputes them instead of mixing them."""
    url, total = f"sqlite:///{tmp_path / 'b.db'}", shapes["bits"]
    failing = Counting()
    inner = failing.task.evaluate

    def fail_third(m: Any) -> float:
        if failing.calls == 2:  # the baseline and one row, then an error
            raise RuntimeError("interrupted")
        return inner(m)

    failing.task.evaluate = fail_third
    with pytest.raises(RuntimeError, match="interrupted"):
        bit_sensitivity_table(failing.task, url, BITS_SPACE, progress=False)
    assert len(stored_rows(url, BIT_SENSITIVITY_PREFIX)) == 1

    shifted = Counting()
    plain = shifted.task.evaluate
    shifted.task.evaluate = lambda m: plain(m) - 0.5
    with caplog.at_level(logging.INFO, logger="slimtune"):
        table = bit_sensitivity_table(shifted.task, url, BITS_SPACE, progress=False)
    assert shifted.calls == 1 + total and "resuming" not in caplog.text and "recomputing" in caplog.text
    # every row measured with the shifted metric (the stale row scored about 1.0)
    assert table.attrs["baseline"] <= 0.5 and (table["metric"] <= 0.5).all() and len(table) == total
