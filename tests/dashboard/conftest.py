"""Fixtures of the dashboard tests: a storage with known studies, the real server, a real browser.

The server is ``python -m slimtune dashboard --port 0`` in a subprocess (it prints its URL); the
browser is Debian's headless Chromium (``scripts/system_deps.sh`` installs it) driven by Playwright.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import optuna
import pytest

from dashboard_harness import ARTIFACT_TRIALS, STUDIES, Server, chromium_path, launch_dashboard, stop, wait_for_url
from fake_studies import add_sensitivity_cache, add_study
from slimtune.trials import make_storage

@pytest.fixture(scope="session")
def storage_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dashboard")


@pytest.fixture(scope="session")
def _dashboard(storage_dir: Path) -> Iterator[tuple[str, Server]]:
    """The shared storage and its dashboard. The server starts on the empty storage while the
    studies are written (it shows studies that appear while it runs): its start-up overlaps theirs."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{storage_dir / 'studies.db'}"
    st = make_storage(url)
    proc = launch_dashboard(url, storage_dir, "--poll", "0.5")
    try:
        add_study(
            st, "nsga2-a", STUDIES["nsga2-a"], failed_every=9, pruned_every=13, running=1,
            artifacts_dir=storage_dir / "artifacts", artifact_trials=ARTIFACT_TRIALS,
        )  # fmt: skip
        add_study(st, "tpe-b", STUDIES["tpe-b"], strategy="tpe", seed=1, quantize=True)
        add_sensitivity_cache(st)
        server = wait_for_url(proc)
    except BaseException:
        proc.kill()
        raise
    yield url, server
    stop(server)


@pytest.fixture(scope="session")
def storage_url(_dashboard: tuple[str, Server]) -> str:
    """A SQLite storage with two studies (failed, pruned, running trials; saved models; bit-widths)
    and a cached sensitivity table."""
    return _dashboard[0]


@pytest.fixture(scope="session")
def server(_dashboard: tuple[str, Server]) -> Server:
    """The dashboard of the shared storage (``slimtune dashboard`` polled by the page every 0.5 s)."""
    return _dashboard[1]


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Headless Chromium (the system's, not a downloaded build) under Playwright."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), headless=True, args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield b
        b.close()


@pytest.fixture(scope="session")
def browser_context(browser: Any) -> Iterator[Any]:
    """One browser context for the session: its HTTP cache keeps plotly.js between the tests' pages."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    yield context
    context.close()


@pytest.fixture
def page(browser_context: Any) -> Iterator[Any]:
    """A fresh page that fails the test on a JavaScript error."""
    pg = browser_context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.set_default_timeout(30_000)
    yield pg
    pg.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
