#!/usr/bin/env bash
# Run the test suite: installs .venv with the test extras on first run, and Debian's chromium for the browser
# tests when it is missing and this is a root shell with apt-get. Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON_BIN="${PYTHON:-$(command -v python3 || command -v python)}"
"$PYTHON_BIN" scripts/bootstrap.py --extra test
# Debian's chromium drives the browser tests; the CJK fonts make Korean readable in their screenshots.
if { [ ! -x /usr/bin/chromium ] || ! fc-list 2>/dev/null | grep -qi "noto sans cjk"; } \
   && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "Installing Debian's chromium and CJK fonts for the browser tests..."
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-noto-cjk >/dev/null
fi
exec .venv/bin/python -m pytest "$@"
