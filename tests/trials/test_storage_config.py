"""Storage URLs and their errors, SearchConfig's checks (``.field``), the warnings before trials run,
and the one search entry point."""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
from pathlib import Path

import optuna
import pytest
import torch

import slimtune
from slimtune.compressors import CompressionPlan, compress, trace
from slimtune.errors import PlanError, SlimtuneError, StorageError, StudyNotFoundError
from slimtune.examples.models import mlp
from slimtune.trials import SearchConfig, make_storage, open_study, search
from slimtune.trials.config import MAX_STUDY_NAME
from slimtune.trials.cost import Cost
from slimtune.trials.storage import artifacts_dir, parse_url


# ---------------------------------------------------------------------- storage URLs
def test_urls_parse_to_scheme_and_file(tmp_path: Path) -> None:
    assert parse_url("sqlite:///runs/a.db").path == Path("runs/a.db")
    assert parse_url(f"sqlite:///{tmp_path}/a.db").absolute() == f"sqlite:///{tmp_path}/a.db"
    assert parse_url("sqlite:///rel.db").absolute() == f"sqlite:///{Path('rel.db').resolve()}"
    assert parse_url("journal:///x/j.log").path == Path("/x/j.log")
    assert parse_url("postgresql+psycopg://u@h/db").scheme == "postgresql" and not parse_url("postgresql://h/db").is_file
    assert not parse_url("memory").shareable and not parse_url("sqlite:///:memory:").shareable
    assert artifacts_dir(f"sqlite:///{tmp_path}/runs.db") == tmp_path / "runs-artifacts"


def test_an_unknown_scheme_lists_the_known_ones() -> None:
    with pytest.raises(StorageError, match=r"unknown scheme 'redis'; known: sqlite, postgresql, mysql, journal, memory") as e:
        make_storage("redis://localhost:6379")
    assert e.value.field == "storage"


def test_a_corrupt_sqlite_file_says_malformed(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'good.db'}"
    make_storage(url)  # a real study database
    broken = tmp_path / "broken.db"
    data = (tmp_path / "good.db").read_bytes()
    broken.write_bytes(data[:100] + os.urandom(len(data) - 100))  # header kept, pages garbage
    with pytest.raises(StorageError, match=r"is corrupt \(database disk image is malformed"):
        make_storage(f"sqlite:///{broken}")
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(os.urandom(8192))
    with pytest.raises(StorageError, match="database disk image is malformed"):
        make_storage(f"sqlite:///{garbage}")


def test_a_missing_directory_is_named(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match=rf"the directory {tmp_path / 'nowhere'} does not exist"):
        make_storage(f"sqlite:///{tmp_path / 'nowhere' / 's.db'}")


def test_a_read_only_directory_is_refused_before_sqlite_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """(Tests run as root here, who may write anywhere: ``os.access`` is made to answer as it
    would for a user without write permission.)"""
    folder = tmp_path / "ro"
    folder.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == folder and mode == os.W_OK else real(p, mode))
    with pytest.raises(StorageError, match=rf"the directory {folder} is read-only"):
        make_storage(f"sqlite:///{folder / 's.db'}")


def test_open_study_lists_the_studies_there(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    optuna.create_study(study_name="one", storage=make_storage(url))
    with pytest.raises(StudyNotFoundError, match=r"study 'two' does not exist in .*; studies there: \['one'\]"):
        open_study(url, "two")


def test_stale_trials_get_a_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A RUNNING trial whose heartbeat went stale is failed by Optuna; its reason says why."""
    monkeypatch.setenv("SLIMTUNE_HEARTBEAT_INTERVAL", "1")
    monkeypatch.setenv("SLIMTUNE_GRACE_PERIOD", "2")
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(study_name="s", storage=make_storage(url))
    with pytest.warns(UserWarning, match="Heartbeat of storage is supposed to be used with Study.optimize"):
        trial = study.ask()  # (a worker's trial, asked by hand)
    study._storage.record_heartbeat(trial._trial_id)  # noqa: SLF001 - a worker's heartbeat, then silence
    import time

    time.sleep(3.2)
    with pytest.warns(optuna.exceptions.ExperimentalWarning):
        optuna.storages.fail_stale_trials(study)
    failed = study.get_trials(deepcopy=False)[0]
    assert failed.state == optuna.trial.TrialState.FAIL
    assert failed.user_attrs["fail_reason"].startswith("WorkerDied: its worker stopped sending heartbeats for 2 s")
    assert len(study.get_trials(deepcopy=False)) == 2  # and it was queued again (retried once)


# ---------------------------------------------------------------------- SearchConfig
@pytest.mark.parametrize(
    ("kwargs", "field", "message"),
    [
        ({"n_trials": 0}, "n_trials", "must be >= 1"),
        ({"n_trials": None}, "n_trials", "give n_trials or timeout"),
        ({"timeout": -1}, "timeout", "must be a number of seconds > 0"),
        ({"objectives": ["accuracy", "flop"]}, "objectives[1]", "did you mean 'flops'"),
        ({"constraints": ["flops <= 0.5", "flop <= 1"]}, "constraints[1]", "unknown measure 'flop'"),
        ({"weights": {"accuracy": 1}}, "weights", "exactly one weight per objective"),
        ({"weights": {"accuracy": 1, "flops": -1}}, "weights.flops", "finite number >= 0"),
        ({"storage": "sqlite:/x.db"}, "storage", "sqlite:///relative.db"),
        ({"study_name": "x" * (MAX_STUDY_NAME + 1)}, "study_name", f"at most {MAX_STUDY_NAME}"),
        ({"save_models": "some"}, "save_models", "'all' or 'none'"),
        ({"backend": "dask"}, "backend", "local, ray"),
        ({"ray": {"max_concurrent_trials": 2}}, "ray", "backend is 'local'"),
        ({"backend": "ray", "ray": {"max_retries": -1}}, "ray.max_retries", "must be ≥ 0"),
        ({"space": {"max_sparsity": 2}}, "space.max_sparsity", "(0, 1)"),
    ],
)
def test_config_errors_name_their_field(kwargs: dict, field: str, message: str) -> None:
    with pytest.raises(SlimtuneError) as e:  # ConfigError, StorageError for the URL
        SearchConfig(**kwargs)
    assert e.value.field == field and message in str(e.value), (e.value.field, str(e.value))


def test_config_round_trips_as_data() -> None:
    config = SearchConfig(
        strategy="tpe", n_trials=5, storage="sqlite:///a.db", space={"levels": [0.3]}, constraints=["flops <= 0.5"]
    )
    again = SearchConfig.from_dict(config.to_dict())
    assert again == config and again.study == "slimtune-tpe"


# ---------------------------------------------------------------------- warnings before trials
def test_impossible_constraints_and_absurd_metrics_are_named() -> None:
    cost = Cost(["accuracy", "flops"], constraints=["accuracy_drop >= 5", "flops >= 2", "flops <= 0.5"])
    problems = cost.check({"accuracy": 0.9})
    assert len(problems) == 2
    assert "constraint 'accuracy_drop >= 5' cannot be met" in problems[0] and "more than 0.9" in problems[0]
    assert "constraint 'flops >= 2' cannot be met" in problems[1]
    assert Cost(["accuracy"]).check({"accuracy": 1e300})[0].startswith("task.evaluate returns 1e+300")
    assert Cost(["accuracy"], constraints=["accuracy_drop <= 0.02"]).check({"accuracy": 0.9}) == []


def _tiny_task(value: float | None = None) -> slimtune.Task:
    torch.manual_seed(0)
    model = mlp(8, (16,), 3).eval()
    x = torch.randn(32, 8)
    y = model(x).argmax(1)

    def evaluate(m: torch.nn.Module) -> float:
        with torch.no_grad():
            acc = float((m(x).argmax(1) == y).float().mean())
        return acc if value is None else value

    return slimtune.Task(model, x[:1], evaluate, name="tiny")


def test_search_warns_before_trials_and_logs_nothing_to_run(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    with caplog.at_level(logging.INFO, logger="slimtune"):
        search(
            _tiny_task(), strategy="random", n_trials=2, storage=url, study_name="w", progress=False,
            space={"sensitivity": False}, constraints=["accuracy_drop >= 5"],
        )  # fmt: skip
    assert "constraint 'accuracy_drop >= 5' cannot be met" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="slimtune"):
        study = search(
            _tiny_task(), strategy="random", n_trials=2, storage=url, study_name="w", progress=False,
            space={"sensitivity": False}, constraints=["accuracy_drop >= 5"],
        )  # fmt: skip
    assert "nothing to run: 2 of 2 trials already finished" in caplog.text
    assert len(study.trials) == 2
    # a later run with a larger budget records it: `status` shows the study's budget, not the first run's
    search(
        _tiny_task(), strategy="random", n_trials=3, storage=url, study_name="w", progress=False,
        space={"sensitivity": False}, constraints=["accuracy_drop >= 5"],
    )  # fmt: skip
    assert optuna.load_study(study_name="w", storage=url).user_attrs["n_trials"] == 3


def test_an_absurd_metric_is_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="slimtune"):
        search(
            _tiny_task(value=1e300), strategy="random", n_trials=1, storage=f"sqlite:///{tmp_path / 's.db'}",
            progress=False, space={"sensitivity": False},
        )  # fmt: skip
    assert "task.evaluate returns 1e+300 on the original model" in caplog.text


def test_run_study_is_the_deprecated_name_of_search(tmp_path: Path) -> None:
    with pytest.warns(DeprecationWarning, match="use slimtune.search"):
        study = slimtune.run_study(
            _tiny_task(), strategy="random", n_trials=1, storage=f"sqlite:///{tmp_path / 's.db'}", progress=False,
            space={"sensitivity": False},
        )  # fmt: skip
    assert len(study.trials) == 1


def test_compress_refuses_a_plan_that_needs_training() -> None:
    model = mlp(8, (16,), 3).eval()
    x = torch.randn(1, 8)
    plan = CompressionPlan.uniform(trace(model, x), 0.5)
    plan.compressor = "admm"
    with pytest.raises(PlanError, match=r"plan.compressor is 'admm'.*run_compressor"):
        compress(model, plan, x)


def test_sqlite_sees_what_the_storage_wrote(tmp_path: Path) -> None:
    """WAL mode is on for SQLite file storages (readers work while workers write)."""
    path = tmp_path / "w.db"
    storage = make_storage(f"sqlite:///{path}")
    optuna.create_study(study_name="s", storage=storage)
    with sqlite3.connect(path) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    shutil.rmtree(tmp_path, ignore_errors=True)
