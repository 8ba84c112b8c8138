"""Fixtures of the dashboard tests: a storage with known studies, the real server, a real browser.

The server is ``python -m slimtune dashboard --port 0`` in a subprocess (it prints its URL); the
browser is Debian's headless Chromium (``scripts/system_deps.sh`` installs it) driven by Playwright.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import optuna
import pytest

from dashboard_harness import ARTIFACT_TRIALS, STUDIES, Server, chromium_path, start_dashboard, stop
from fake_studies import add_sensitivity_cache, add_study
from slimtune.trials.runner import make_storage

@pytest.fixture(scope="session")
def storage_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dashboard")


@pytest.fixture(scope="session")
def storage_url(storage_dir: Path) -> str:
    """A SQLite storage with two studies (failed, pruned, running trials; saved models; bit-widths)
    and a cached sensitivity table."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{storage_dir / 'studies.db'}"
    st = make_storage(url)
    add_study(
        st, "nsga2-a", STUDIES["nsga2-a"], failed_every=9, pruned_every=13, running=1,
        artifacts_dir=storage_dir / "artifacts", artifact_trials=ARTIFACT_TRIALS,
    )  # fmt: skip
    add_study(st, "tpe-b", STUDIES["tpe-b"], strategy="tpe", seed=1, quantize=True)
    add_sensitivity_cache(st)
    return url


@pytest.fixture(scope="session")
def server(storage_url: str, storage_dir: Path) -> Iterator[Server]:
    """The dashboard of the shared storage, polling every 0.5 s."""
    s = start_dashboard(storage_url, storage_dir, "--poll", "0.5")
    yield s
    stop(s)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Headless Chromium (the system's, not a downloaded build) under Playwright."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), headless=True, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh page (own context: no cache, no storage) that fails the test on a JavaScript error."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.set_default_timeout(30_000)
    yield pg
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
