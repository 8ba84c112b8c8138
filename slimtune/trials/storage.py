"""Where studies live: storage URLs, opening an Optuna storage, heartbeats, the artifacts folder.

Every part of slimtune that opens a storage (the search, the local and Ray workers, the CLI, the
dashboard) goes through this module, so a URL means the same everywhere and a bad one gives the
same clear error.

URLs:

- ``sqlite:///file.db`` (the default, ``sqlite:///slimtune.db``; a relative path is relative to
  the current directory, Optuna's rule): Optuna's RDB storage on a SQLite file in write-ahead
  logging mode, with an atomic pop of queued trials (several workers on one machine).
- ``postgresql://user@host/db`` (and other SQLAlchemy URLs, e.g. ``mysql://``): the RDB storage
  on a database server (many workers, many machines).
- ``journal:///path/file.log``: Optuna's journal file storage (no heartbeats).
- ``memory``: an in-memory storage for one process.

The RDB storages record heartbeats: a trial whose worker stopped sending them for
:attr:`Heartbeat.grace_period` seconds is failed (``fail_reason`` says so) and queued once more.

Example:
    >>> parse_url("sqlite:///runs/a.db").path.name
    'a.db'
    >>> parse_url("redis://host").scheme  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    slimtune.errors.StorageError: storage 'redis://host': unknown scheme 'redis'; known: sqlite, postgresql, ...
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from slimtune.attributes import Trial
from slimtune.errors import StorageError, StudyNotFoundError

if TYPE_CHECKING:
    from optuna.storages import BaseStorage

DEFAULT_STORAGE = "sqlite:///slimtune.db"
SCHEMES = ("sqlite", "postgresql", "mysql", "journal", "memory")
#: studies whose names start with this hold cached analyses, not searches
CACHE_PREFIX = "slimtune-sensitivity-"


@dataclass(frozen=True)
class Heartbeat:
    """How workers show they are alive: a heartbeat every ``interval`` seconds; a trial without
    one for ``grace_period`` seconds is failed and retried (at most ``max_retry`` times).

    :meth:`from_env` reads ``SLIMTUNE_HEARTBEAT_INTERVAL`` and ``SLIMTUNE_GRACE_PERIOD``.
    """

    interval: int = 5
    grace_period: int = 20
    max_retry: int = 1

    def __post_init__(self) -> None:
        if self.interval < 1 or self.grace_period <= self.interval:
            raise StorageError(
                f"heartbeat: interval must be >= 1 s and grace_period longer than it, got interval={self.interval}, "
                f"grace_period={self.grace_period}",
                field="heartbeat",
            )

    @classmethod
    def from_env(cls) -> Heartbeat:
        return cls(
            interval=int(os.environ.get("SLIMTUNE_HEARTBEAT_INTERVAL", "5")),
            grace_period=int(os.environ.get("SLIMTUNE_GRACE_PERIOD", "20")),
        )


@dataclass(frozen=True)
class StorageURL:
    """A parsed storage URL: ``scheme`` (one of :data:`SCHEMES`) and, for file storages, ``path``."""

    url: str
    scheme: str
    path: Path | None = None

    @property
    def is_file(self) -> bool:
        """A SQLite or journal file (shared by processes of one machine only)."""
        return self.path is not None

    @property
    def shareable(self) -> bool:
        """Other processes can open it (not ``memory``, not an in-memory SQLite)."""
        return self.scheme != "memory" and ":memory:" not in self.url

    def absolute(self) -> str:
        """The URL with a relative file path made absolute (for processes in other directories)."""
        if self.path is None or self.path.is_absolute():
            return self.url
        if self.scheme == "sqlite":
            query = self.url.partition("?")[2]
            return f"sqlite:///{self.path.resolve()}" + (f"?{query}" if query else "")
        return f"journal:///{str(self.path.resolve()).lstrip('/')}"


def parse_url(url: str) -> StorageURL:
    """Parse a storage URL; the error lists the known schemes."""
    if not isinstance(url, str) or not url:
        raise StorageError(f"storage must be a URL string such as {DEFAULT_STORAGE}, got {url!r}", field="storage")
    if url == "memory":
        return StorageURL(url, "memory")
    scheme = url.split(":", 1)[0].split("+", 1)[0].lower() if ":" in url else ""
    if scheme not in SCHEMES:
        raise StorageError(f"storage {url!r}: unknown scheme {scheme!r}; known: {', '.join(SCHEMES)}", field="storage")
    if scheme == "journal":
        rest = url[len("journal:") :]
        rest = rest[2:] if rest.startswith("//") else rest
        if not rest:
            raise StorageError(
                f"storage {url!r}: a journal URL names a file, e.g. journal:///runs/study.log", field="storage"
            )
        return StorageURL(url, "journal", Path(rest))
    if scheme == "sqlite":
        if not url.startswith("sqlite:///"):
            raise StorageError(
                f"storage {url!r}: a SQLite URL is sqlite:///relative.db or sqlite:////absolute.db", field="storage"
            )
        path = url[len("sqlite:///") :].split("?", 1)[0]
        if not path or path == ":memory:" or path.startswith("file:"):
            return StorageURL(url, "sqlite")
        return StorageURL(url, "sqlite", Path(path))
    return StorageURL(url, scheme)


def url_of(storage: str | BaseStorage | None) -> str | None:
    """The URL of a storage given as a URL, None (the default) or an RDB storage object."""
    if storage is None:
        return DEFAULT_STORAGE
    if isinstance(storage, str):
        return storage
    return getattr(storage, "url", None)


def check_exists(url: str) -> None:
    """For commands that only read: fail clearly when a file storage does not exist, instead of
    creating an empty one."""
    parsed = parse_url(url)
    if parsed.path is not None and not parsed.path.is_file():
        raise StorageError(
            f"storage {url}: no such file {parsed.path.resolve()} (a relative sqlite:/// path is relative to the "
            "current directory: run this command where `slimtune run` ran, or give --storage)",
            field="storage",
        )


def check_writable(url: str) -> None:
    """For commands that write: the folder of a file storage exists and can be written."""
    parsed = parse_url(url)
    if parsed.path is None:
        return
    folder = parsed.path.resolve().parent
    if not folder.is_dir():
        raise StorageError(f"storage {url}: the directory {folder} does not exist (create it first)", field="storage")
    target = parsed.path if parsed.path.exists() else folder
    if not os.access(target, os.W_OK):
        what = "file" if target == parsed.path else "directory"
        raise StorageError(f"storage {url}: the {what} {target.resolve()} is read-only", field="storage")


def make_storage(url: str | BaseStorage | None = None, heartbeat: Heartbeat | None = None) -> BaseStorage:
    """The Optuna storage for ``url`` (a storage object is returned as it is)."""
    if url is None:
        url = DEFAULT_STORAGE
    if not isinstance(url, str):
        return url
    parsed = parse_url(url)
    if parsed.scheme == "memory":
        return optuna.storages.InMemoryStorage()
    if parsed.scheme == "journal":
        from optuna.storages.journal import JournalFileBackend

        check_writable(url)
        return optuna.storages.JournalStorage(JournalFileBackend(str(parsed.path)))
    heartbeat = heartbeat or Heartbeat.from_env()
    sqlite_file = parsed.scheme == "sqlite" and parsed.path is not None
    if sqlite_file:
        check_writable(url)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = (_SQLiteStorage if sqlite_file else _RDBStorage)(
                url,
                engine_kwargs={"connect_args": {"timeout": 60}} if parsed.scheme == "sqlite" else {},
                heartbeat_interval=heartbeat.interval,
                grace_period=heartbeat.grace_period,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=heartbeat.max_retry),
            )
    except Exception as e:
        raise _open_error(url, parsed, e) from e
    if sqlite_file:
        _sqlite_wal(storage)
    return storage


def _open_error(url: str, parsed: StorageURL, e: Exception) -> StorageError:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if parsed.scheme == "sqlite" and ("not a database" in text or "malformed" in text):
        return StorageError(
            f"storage {url}: the SQLite file {parsed.path.resolve() if parsed.path else '?'} is corrupt "
            f"(database disk image is malformed: {text}); restore it from a copy or use another file",
            field="storage",
        )
    if parsed.scheme in ("sqlite", "journal") and ("readonly" in text or "read-only" in text):
        return StorageError(f"storage {url}: the file is read-only ({text})", field="storage")
    return StorageError(f"storage {url!r} cannot be opened: {type(e).__name__}: {text}", field="storage")


class _RDBStorage(optuna.storages.RDBStorage):
    """Optuna's RDB storage; a trial failed for a stale heartbeat gets a ``fail_reason`` saying so.

    (Optuna fails such trials without a word; the reason is written while the trial is still
    running, just before Optuna fails it, from the one hook Optuna calls at that moment.)
    """

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        stale = []
        for trial_id in super()._get_stale_trial_ids(study_id):
            try:
                reason = (
                    f"WorkerDied: its worker stopped sending heartbeats for {self.grace_period} s (killed, or its "
                    "machine was lost); the trial is queued again with the same parameters"
                )
                self.set_trial_user_attr(trial_id, Trial.FAIL_REASON, reason)
            except UpdateFinishedTrialError:  # it finished meanwhile
                continue
            stale.append(trial_id)
        return stale


class _SQLiteStorage(_RDBStorage):
    """Optuna's RDB storage on a SQLite file, with an atomic pop of a queued trial.

    Optuna moves a WAITING trial (a seed, a retry, an enqueued point) to RUNNING by reading its
    state with ``SELECT ... FOR UPDATE`` and then writing it. SQLite has no row locks and its
    Python driver opens the transaction only at the write, so two workers asking at the same
    moment could both read WAITING and both run the trial (the second then crashes with "Cannot
    tell a COMPLETE trial"). Here the move is one conditional ``UPDATE``: exactly one worker gets
    the trial, the others go on to the next. (PostgreSQL's row locks already make Optuna's read
    and write atomic.)
    """

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        if state != TrialState.RUNNING or values is not None:
            return super().set_trial_state_values(trial_id, state, values)
        from optuna.storages._rdb.models import TrialModel

        table = TrialModel.__table__
        now = datetime.now(timezone.utc).replace(tzinfo=None)  # Optuna stores naive UTC
        query = table.update().where(table.c.trial_id == trial_id, table.c.state == TrialState.WAITING)
        with self.engine.begin() as connection:
            won = connection.execute(query.values(state=TrialState.RUNNING, datetime_start=now)).rowcount == 1
        # lost: running elsewhere (False), finished (UpdateFinishedTrialError) or unknown (KeyError)
        return won or super().set_trial_state_values(trial_id, state)


def _sqlite_wal(storage: optuna.storages.RDBStorage) -> None:
    """Write-ahead logging with ``synchronous=NORMAL`` on every connection to a SQLite file.

    Halves the cost of a trial's storage writes (each attribute is a commit) and lets readers
    (the dashboard, ``slimtune status``) work while workers write. A killed process loses no
    committed transaction in this mode; only an operating-system crash may lose the last ones.
    """
    from sqlalchemy import event

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    event.listen(storage.engine, "connect", on_connect)
    storage.engine.dispose()  # connections opened while creating the schema get the pragmas too


def artifacts_dir(url: str | None) -> Path:
    """Where a storage's compressed models go: ``<file stem>-artifacts`` beside a SQLite or
    journal file, else ``./slimtune-artifacts`` (``SLIMTUNE_ARTIFACTS`` overrides both)."""
    env = os.environ.get("SLIMTUNE_ARTIFACTS")
    if env:
        return Path(env).resolve()
    parsed = parse_url(url or DEFAULT_STORAGE)
    if parsed.path is None:
        return Path("slimtune-artifacts").resolve()
    path = parsed.path.resolve()
    return path.parent / (path.stem + "-artifacts")


def study_names(storage: str | BaseStorage | None) -> list[str]:
    """The studies of a storage, without slimtune's cached analyses."""
    return [n for n in optuna.get_all_study_names(make_storage(storage)) if not n.startswith(CACHE_PREFIX)]


def open_study(storage: str | BaseStorage | None, study_name: str) -> optuna.Study:
    """Load an existing study; the error names it and lists the studies the storage holds."""
    st = make_storage(storage)
    try:
        return optuna.load_study(study_name=study_name, storage=st)
    except KeyError:
        names = [n for n in optuna.get_all_study_names(st) if not n.startswith(CACHE_PREFIX)]
        raise StudyNotFoundError(
            f"study {study_name!r} does not exist in {url_of(storage) or 'the storage'}; "
            f"studies there: {names or 'none'}",
            field="study_name",
        ) from None


__all__ = [
    "CACHE_PREFIX",
    "DEFAULT_STORAGE",
    "SCHEMES",
    "Heartbeat",
    "StorageURL",
    "artifacts_dir",
    "check_exists",
    "check_writable",
    "make_storage",
    "open_study",
    "parse_url",
    "study_names",
    "url_of",
]
