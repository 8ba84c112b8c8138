#!/usr/bin/env bash
# Install the Debian packages the test suite needs (servers and a browser the tests start), if missing.
# Each line: `need COMMAND PACKAGE...` installs PACKAGE(s) with apt-get when COMMAND is not found.
set -euo pipefail
_updated=0
need() {
  local cmd=$1; shift
  if command -v "$cmd" >/dev/null 2>&1; then return 0; fi
  local SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  if [ "$_updated" = 0 ]; then $SUDO apt-get update -qq; _updated=1; fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
# (packages are added below by the features that need them)
need chromium chromium        # headless browser for the dashboard's browser tests (tests/dashboard)
# PostgreSQL server for tests/trials/test_postgres.py (the test starts its own on 127.0.0.1); Debian puts
# initdb/pg_ctl in /usr/lib/postgresql/<ver>/bin, off PATH; no cluster is created or started at install
if ! command -v pg_ctl >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
  _sudo=""; [ "$(id -u)" != 0 ] && _sudo="sudo"
  $_sudo mkdir -p /etc/postgresql-common/createcluster.d
  echo "create_main_cluster = false" | $_sudo tee /etc/postgresql-common/createcluster.d/slimtune.conf >/dev/null
  need pg_ctl postgresql
fi
