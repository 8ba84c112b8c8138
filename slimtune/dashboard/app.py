"""The dashboard's HTTP server: the page, its static files and a read-only JSON API over a storage.

Endpoints (``NAME`` is a study's name, URL-encoded; all answers are JSON unless said otherwise):

=================================================  ==================================================
``GET /``                                          the page (``static/index.html``)
``GET /static/plotly.min.js``                      plotly.js from the installed ``plotly`` package
``GET /api/version``                               a token per study, changed when the study changes
                                                   (the page polls it to update itself live)
``GET /api/studies``                               one summary per study
``GET /api/studies/NAME``                          the summary of one study
``GET /api/studies/NAME/trials``                   its trials column by column (states, measures, front …)
``GET /api/studies/NAME/front``                    its Pareto front (the rows of ``pareto_front``)
``GET /api/studies/NAME/progress``                 hypervolume and best-so-far after each trial
``GET /api/studies/NAME/trials/N``                 one trial (plan, measures, parameters, error …)
``GET /api/studies/NAME/trials/N/model``           the trial's compressed model (a ``torch.save`` file)
``GET /api/sensitivity``                           the sensitivity tables cached in the storage
=================================================  ==================================================

An unknown study, trial (or a trial ``N`` that is no number) or model answers 404 with
``{"error": "<message>"}`` naming it; a storage that fails
while the server runs answers 503 the same way.

Example (serves until Ctrl-C):
    >>> from slimtune.dashboard.app import serve
    >>> serve("sqlite:///slimtune.db", host="127.0.0.1", port=8080)   # doctest: +SKIP
"""

from __future__ import annotations

import logging
import re
import socket
import sys
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from slimtune.dashboard._page import STATIC, page_html, plotly_js_source, script_json, to_json
from slimtune.dashboard.data import NotFound, StorageReader
from slimtune.errors import SlimtuneError

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "bind", "create_app", "serve"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
logger = logging.getLogger("slimtune")

# (a trial "number" that is no integer reaches the reader, whose 404 names it)
_STUDY_PATHS = [
    (re.compile(r"^(?P<name>.+)/trials/(?P<number>[^/]+)/model$"), "model"),
    (re.compile(r"^(?P<name>.+)/trials/(?P<number>[^/]+)$"), "trial"),
    (re.compile(r"^(?P<name>.+)/trials$"), "trials"),
    (re.compile(r"^(?P<name>.+)/front$"), "front"),
    (re.compile(r"^(?P<name>.+)/progress$"), "progress"),
]


def create_app(reader: StorageReader, poll_seconds: float = 1.5, warm: bool = True) -> Starlette:
    """The Starlette application serving ``reader``'s storage.

    Args:
        reader: The storage to show.
        poll_seconds: How often the page asks whether a study changed.
        warm: Read every study once in the background at start-up, so the first page is fast.
    """
    config = {"mode": "live", "poll_ms": int(poll_seconds * 1000), "storage": reader.url}
    head = (
        '<link rel="stylesheet" href="static/dashboard.css">\n'
        f"<script>window.SLIMTUNE = {script_json(config)};</script>\n"
        '<script src="static/dashboard.js"></script>\n'  # first: it starts fetching the data
        '<script src="static/plotly.min.js"></script>'
    )
    page = page_html(head)

    def index(request: Request) -> Response:
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    plotly_source = plotly_js_source().encode("utf-8")  # read once; 4.8 MB

    def plotly_js(request: Request) -> Response:
        return Response(plotly_source, media_type="text/javascript", headers={"Cache-Control": "max-age=86400"})

    def version(request: Request) -> Response:
        return _json(reader.version())

    def studies(request: Request) -> Response:
        return _json(reader.studies())

    def sensitivity(request: Request) -> Response:
        return _json(reader.sensitivity())

    def study_path(request: Request) -> Response:
        rest = request.path_params["rest"].rstrip("/")  # already URL-decoded: a name may hold "/"
        if rest in _names(reader):
            return _json(reader.study(rest))
        for pattern, kind in _STUDY_PATHS:
            m = pattern.match(rest)
            if not m:
                continue
            name = m.group("name")
            if kind == "model":
                path, filename = reader.artifact(name, m.group("number"))
                from slimtune.compressors.state import MIMETYPE

                return FileResponse(path, media_type=MIMETYPE, filename=filename)
            if kind == "trial":
                return _json(reader.trial(name, m.group("number")))
            return _json(getattr(reader, kind)(name))
        return _json(reader.study(rest))  # raises NotFound with the list of studies

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if warm:
            threading.Thread(target=_warm, args=(reader,), name="slimtune-dashboard-warm", daemon=True).start()
        yield

    routes = [
        Route("/", index),
        Route("/static/plotly.min.js", plotly_js),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
        Route("/api/version", version),
        Route("/api/studies", studies),
        Route("/api/sensitivity", sensitivity),
        Route("/api/studies/{rest:path}", study_path),
    ]
    handlers: dict[Any, Callable[..., Any]] = {
        NotFound: lambda request, exc: _json({"error": str(exc)}, 404),
        SlimtuneError: lambda request, exc: _json({"error": str(exc)}, 503),
        HTTPException: lambda request, exc: _json(
            {
                "error": f"{request.url.path}: {exc.detail}"
                + ("; the API lives under /api/" if exc.status_code == 404 else "")
            },
            exc.status_code,
        ),
        Exception: lambda request, exc: _json({"error": f"{type(exc).__name__}: {exc}"}, 503),
    }
    return Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)


def _names(reader: StorageReader) -> list[str]:
    return [s.study_name for s in reader._listing()]


def _warm(reader: StorageReader) -> None:
    try:
        reader.studies()
    except Exception as e:  # the page will show the error when it asks
        logger.warning("dashboard: reading the studies failed: %s", e)


def _json(data: Any, status: int = 200) -> Response:
    return Response(
        to_json(data), status_code=status, media_type="application/json", headers={"Cache-Control": "no-store"}
    )


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: a free one); a clear error when it is taken."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise SlimtuneError(f"cannot listen on {host}:{port}: unknown host ({e.strerror})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise SlimtuneError(
            f"cannot listen on {host}:{port}: {e.strerror or e}; choose another --port (0: any free port)"
        ) from None
    sock.set_inheritable(True)
    return sock


def serve(url: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, poll_seconds: float = 1.5) -> None:
    """Serve the dashboard of the storage at ``url`` until interrupted.

    The storage is opened (and its studies listed) before the server starts: a missing file or an
    unreachable database is a :class:`~slimtune.errors.SlimtuneError` at once.
    """
    import uvicorn

    reader = StorageReader.open(url)
    app = create_app(reader, poll_seconds)
    sock = bind(host, port)
    bound = sock.getsockname()
    shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    print(f"slimtune dashboard of {url}: http://{shown}:{bound[1]}/  (Ctrl-C to stop)", flush=True)
    if bound[0] not in ("127.0.0.1", "::1", "localhost"):
        print(
            f"warning: listening on {bound[0]}: anyone who can reach this machine can read the studies and "
            "download their models (the dashboard has no login)",
            file=sys.stderr,
            flush=True,
        )
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    server.run(sockets=[sock])
