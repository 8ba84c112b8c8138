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
