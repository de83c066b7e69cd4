#!/usr/bin/env bash
# Start the loratrainer GUI at http://127.0.0.1:7860 and open the browser.
# The first run creates .venv and installs everything (again whenever pyproject.toml changes).
# Options go to `loratrainer gui`, e.g. ./gui.sh --port 7861 --no-browser --language ko
set -euo pipefail
cd "$(dirname "$0")"
PYTHON_BIN="${PYTHON:-$(command -v python3 || command -v python)}"
"$PYTHON_BIN" scripts/bootstrap.py
exec .venv/bin/loratrainer gui "$@"
