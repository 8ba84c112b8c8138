"""Helpers to run the dashboard and look at it: the server subprocess, HTTP, the browser.

Used by the tests of this folder and by ``benchmarks/dashboard.py``.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"
STUDIES = {"nsga2-a": 40, "tpe-b": 30}
"""The studies of the tests' shared storage and their finished trials (``conftest.storage_url``)."""
ARTIFACT_TRIALS = (0, 1, 2, 3, 4, 5, 6, 7)
"""Trials of ``nsga2-a`` with a saved model."""


def slimtune_env() -> dict[str, str]:
    """The environment of a ``python -m slimtune`` subprocess: the repository and ``tests/`` importable."""
    env = {k: v for k, v in os.environ.items() if k != "SLIMTUNE_ARTIFACTS"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(TESTS), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


class Server:
    """A running ``slimtune dashboard`` subprocess."""

    def __init__(self, url: str, proc: subprocess.Popen[str]) -> None:
        self.url = url
        self.proc = proc

    def get(self, path: str) -> tuple[int, Any]:
        """GET ``path``; (status, parsed JSON body)."""
        try:
            with urllib.request.urlopen(self.url + path.lstrip("/"), timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def raw(self, path: str) -> tuple[int, bytes, dict[str, str]]:
        try:
            with urllib.request.urlopen(self.url + path.lstrip("/"), timeout=30) as r:
                return r.status, r.read(), dict(r.headers)
        except urllib.error.HTTPError as e:
            return e.code, e.read(), dict(e.headers)


def launch_dashboard(storage: str, cwd: Path, *extra: str) -> subprocess.Popen[str]:
    """Start ``slimtune dashboard`` on a free port (:func:`wait_for_url` gives its URL)."""
    return subprocess.Popen(
        [sys.executable, "-m", "slimtune", "dashboard", "--storage", storage, "--port", "0", *extra],
        cwd=cwd, env=slimtune_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def wait_for_url(proc: subprocess.Popen[str], timeout: float = 90) -> Server:
    """Wait for the URL a launched dashboard prints once it listens."""
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            line = proc.stdout.readline()
            if "http://" in line:
                url = line[line.index("http://") :].split()[0]
                return Server(url, proc)
        if proc.poll() is not None:
            raise AssertionError(f"slimtune dashboard exited with {proc.returncode}: {proc.stderr.read()}")  # type: ignore[union-attr]
    proc.kill()
    raise AssertionError("slimtune dashboard printed no URL in time")


def start_dashboard(storage: str, cwd: Path, *extra: str, timeout: float = 90) -> Server:
    """Start ``slimtune dashboard`` on a free port and wait until it listens."""
    return wait_for_url(launch_dashboard(storage, cwd, *extra), timeout)


def stop(server: Server) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()


def chromium_path() -> str:
    path = os.environ.get("SLIMTUNE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        raise AssertionError("Chromium is not installed: run `bash scripts/system_deps.sh` (Debian package chromium)")
    return path
