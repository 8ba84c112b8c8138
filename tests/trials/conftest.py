"""Fixtures of the scale-out tests: a local Ray session, Ray's environment, a real PostgreSQL server.

Everything listens on 127.0.0.1 only (Ray's multi-node test, in ``test_ray_cluster.py``, is the
exception Ray imposes: see there), every server is started by the fixture and stopped by it,
and nothing outside the test's temporary directories is written (Ray's token lives in the
environment, not in ``~/.ray``).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from _scale import free_port, ray_env


@pytest.fixture(scope="module")
def local_ray() -> Iterator[Any]:
    """One local Ray (2 CPUs) for a test module; slimtune's Ray backend uses the running session."""
    env = ray_env(single_node=True)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # before Ray reads its settings
    import ray

    tmp = tempfile.mkdtemp(prefix="slimray-")  # the session's files (short: Ray's socket paths have a length limit)
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING", _temp_dir=tmp)
    try:
        yield ray
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# ---------------------------------------------------------------------- PostgreSQL
def postgres_bindir() -> Path:
    """The directory of PostgreSQL's initdb and pg_ctl: on PATH, else Debian's /usr/lib/postgresql/<ver>/bin."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if versions:
        return Path(versions[-1]).parent
    pytest.fail(
        "PostgreSQL server binaries not found (initdb and pg_ctl on PATH or in /usr/lib/postgresql/<version>/bin): "
        "run `bash scripts/system_deps.sh` (installs Debian's postgresql package)"
    )


class PostgresServer:
    """A PostgreSQL server in a temporary data directory on 127.0.0.1:<free port> (no Unix socket).

    PostgreSQL refuses to run as root: as root the server runs as the ``postgres`` user (Debian's
    package creates it), else ``nobody``.
    """

    def __init__(self) -> None:
        self.bindir = postgres_bindir()
        self.user = None
        if os.geteuid() == 0:
            self.user = "postgres" if _user_exists("postgres") else "nobody"
        self.root = Path(tempfile.mkdtemp(prefix="slimtune-pg-"))
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = 0
        self._run("initdb", "-D", str(self.data), "-U", "slimtune", "--auth=trust", "-E", "UTF8", "--no-sync")
        for attempt in range(3):  # a free port can be taken between the check and the start
            self.port = free_port()
            options = (
                f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories='' "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
            )
            result = self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-o", options, "start", check=False)
            if result.returncode == 0:
                return
        raise RuntimeError(f"PostgreSQL did not start: {result.stdout}{result.stderr}\n{self._log_tail()}")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://slimtune@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new empty database; returns its URL."""
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=slimtune dbname=postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(self.bindir / tool), *args], user=self.user, capture_output=True, text=True, timeout=120, cwd=self.root
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"{tool} failed ({result.returncode}): {result.stderr or result.stdout}")
        return result

    def _log_tail(self) -> str:
        try:
            return self.log.read_text()[-2000:]
        except OSError:
            return ""


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the test session (each test makes its own database)."""
    server = PostgresServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer, request: pytest.FixtureRequest) -> str:
    """A fresh database on the session's PostgreSQL server, as a ``postgresql://`` storage URL."""
    name = f"t{int(time.time() * 1000) % 10**9}_{request.node.name[:30].lower()}".replace("[", "_").replace("]", "_").replace("-", "_")
    return postgres_server.create_database(name)
