#!/usr/bin/env bash
# Runs experiments/quick.toml (steps already finished are skipped), checks its report in
# headless Chromium (no console errors, no broken images, no external requests) and saves
# the report's first screen as docs/report_quick.png (the screenshot linked from the README).
#   bash scripts/screenshot_report.sh [RUN_DIR]      # default runs/quick
# Needs: .venv (make setup), Fashion-MNIST IDX files, chromium (apt-get install -y chromium).
set -euo pipefail
cd "$(dirname "$0")/.."
RUN_DIR="${1:-runs/quick}"
PY="${PYTHON:-.venv/bin/python}"
SMOOTHGUARD_NO_PROGRESS=1 "$PY" -m smoothguard run experiments/quick.toml --run-dir "$RUN_DIR"
"$PY" scripts/check_report_browser.py "$RUN_DIR/report/report.html" --screenshot docs/report_quick.png \
  --width 1280 --height 900
