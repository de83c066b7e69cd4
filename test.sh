#!/usr/bin/env bash
# Run the test suite: installs .venv with the test extras on first run, and Debian's chromium for the browser
# tests when it is missing and this is a root shell with apt-get. Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON_BIN="${PYTHON:-$(command -v python3 || command -v python)}"
"$PYTHON_BIN" scripts/bootstrap.py --extra test
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "Installing Debian's chromium for the browser tests..."
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
exec .venv/bin/python -m pytest "$@"
