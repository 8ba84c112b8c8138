"""``python -m slimtune``: the same as the ``slimtune`` command (see :mod:`slimtune.cli`)."""

from __future__ import annotations

from slimtune.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
