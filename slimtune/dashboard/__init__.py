"""The dashboard of Pareto fronts: a local web page that reads an Optuna storage live, and a static report.

.. code-block:: text

    slimtune dashboard --storage sqlite:///slimtune.db [--host 127.0.0.1] [--port 8080]
    slimtune report --storage sqlite:///slimtune.db --out report.html

Views: the studies of the storage (strategy, objectives, trials by state, front size, best values,
hypervolume, running or finished); Pareto fronts of any two measures (a third as colour), absolute or
relative to the original model, several studies overlaid; hypervolume and best-so-far over the
trials; one trial (its plan per layer, measures against the original, parameters, error, its model
to download); the sensitivity tables as heatmaps. The page polls the server and redraws when a
study changes. The server (:mod:`slimtune.dashboard.app`, Starlette on uvicorn) needs the
``dashboard`` extra (``pip install 'slimtune[dashboard]'``); it only reads the storage.
plotly.js comes from the installed ``plotly`` package, so everything works offline.

Python: :class:`StorageReader` (``StorageReader.open(url).studies()`` …), :func:`write_report`,
:func:`slimtune.dashboard.app.serve`.
"""

from __future__ import annotations

from slimtune.dashboard.data import NotFound, StorageReader, check_storage
from slimtune.dashboard.report import build_report, write_report

__all__ = ["NotFound", "StorageReader", "build_report", "check_storage", "write_report"]
