"""The static report: the dashboard's page and plots in one self-contained HTML file.

The file holds plotly.js (from the installed ``plotly`` package), the dashboard's script and style,
and a snapshot of what the live page would ask the server for, so it opens anywhere, offline,
without slimtune: the same views (studies, Pareto fronts, progress, trials, sensitivity), frozen
at the time it was written. Models cannot be downloaded from it; each trial view shows the
``slimtune export`` command instead.

Example:
    >>> import os, tempfile, optuna
    >>> from slimtune.dashboard import write_report
    >>> tmp = tempfile.mkdtemp()
    >>> url = "sqlite:///" + os.path.join(tmp, "doc.db")
    >>> optuna.create_study(study_name="doc", storage=url).add_trial(optuna.trial.create_trial(value=1.0))
    >>> path = write_report(url, os.path.join(tmp, "report.html"))
    >>> "plotly" in path.read_text()[:200_000].lower()
    True
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path

from slimtune.dashboard._page import STATIC, page_html, plotly_js_source, script_json
from slimtune.dashboard.data import StorageReader
from slimtune.errors import ArgumentError, SlimtuneError

__all__ = ["build_report", "write_report"]


def build_report(storage: str | StorageReader, studies: Sequence[str] | None = None, details: str = "all") -> str:
    """The report's HTML.

    Args:
        storage: A storage URL or an open :class:`~slimtune.dashboard.data.StorageReader`.
        studies: Names of the studies to include (default: every study of the storage).
        details: Which trials get a trial view: ``"all"``, ``"front"`` (Pareto trials only) or
            ``"none"``.
    """
    if details not in ("all", "front", "none"):
        raise ArgumentError(f"details must be 'all', 'front' or 'none', got {details!r}")
    reader = storage if isinstance(storage, StorageReader) else StorageReader.open(storage)
    snapshot = reader.snapshot(studies, details=details)
    config = {
        "mode": "report",
        "storage": reader.url,
        "generated": dt.datetime.now().isoformat(timespec="seconds"),
        "details": details,
        "snapshot": snapshot,
    }
    plotly_js = plotly_js_source()
    if "</script" in plotly_js.lower():  # would end the inline element early
        plotly_js = plotly_js.replace("</script", "<\\/script").replace("</SCRIPT", "<\\/SCRIPT")
    head = "\n".join(
        [
            f"<style>{(STATIC / 'dashboard.css').read_text(encoding='utf-8')}</style>",
            f"<script>window.SLIMTUNE = {script_json(config)};</script>",
            f"<script>{(STATIC / 'dashboard.js').read_text(encoding='utf-8')}</script>",
            f"<script>{plotly_js}</script>",
        ]
    )
    return page_html(head)


def write_report(
    storage: str | StorageReader, out: str | Path, studies: Sequence[str] | None = None, details: str = "all"
) -> Path:
    """Write :func:`build_report` to ``out`` (parent folders are created); returns the path."""
    html = build_report(storage, studies, details)
    path = Path(out)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(html, encoding="utf-8")
    except OSError as e:
        raise SlimtuneError(f"cannot write {out}: {e.strerror or e}") from e
    return path
