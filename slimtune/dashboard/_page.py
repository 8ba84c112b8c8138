"""The page's HTML and the files it loads, shared by the server and the static report."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from slimtune.errors import SlimtuneError

STATIC = Path(__file__).resolve().parent / "static"


def plotly_js_path() -> Path:
    """plotly.min.js as shipped inside the installed ``plotly`` Python package (no CDN)."""
    try:
        import plotly
    except ImportError:
        raise SlimtuneError("the dashboard needs plotly: pip install 'slimtune[dashboard]'") from None
    path = Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"
    if not path.is_file():
        raise SlimtuneError(f"plotly {plotly.__version__} has no package_data/plotly.min.js; reinstall plotly")
    return path


COMPILE_HINT = "//# allFunctionsCalledOnLoad\n"
"""V8's explicit compile hint (Chromium 136+; to other browsers just a comment): the browser compiles every
function of the script on a background thread while the file streams in, instead of lazily on the main
thread as the page first calls them. plotly.js runs most of its code at load and at the first plot, so
the hint makes a first visit's page ready sooner (``benchmarks/dashboard.py``)."""


def plotly_js_source() -> str:
    """plotly.js as the page gets it: the installed package's file after :data:`COMPILE_HINT`."""
    return COMPILE_HINT + plotly_js_path().read_text(encoding="utf-8")


def page_html(head: str) -> str:
    """``static/index.html`` with ``head`` (styles, scripts, configuration) put in its head."""
    return (STATIC / "index.html").read_text(encoding="utf-8").replace("<!--slimtune:head-->", head)


def no_nan(v: Any) -> Any:
    """``v`` with every NaN or infinity replaced by None (JSON has neither)."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: no_nan(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [no_nan(x) for x in v]
    return v


def to_json(data: Any) -> str:
    """Compact JSON; NaN and infinities become null."""
    try:
        return json.dumps(data, allow_nan=False, separators=(",", ":"))
    except ValueError:
        return json.dumps(no_nan(data), separators=(",", ":"))


def script_json(data: Any) -> str:
    """JSON safe to put inside a ``<script>`` element."""
    return to_json(data).replace("</", "<\\/").replace("<!--", "<\\!--")
