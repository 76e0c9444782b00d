#!/usr/bin/env bash
# Renders docs/bench.png from the last `cargo bench --bench tasks` run, or
# with `pools`, docs/pools.png from the last `cargo bench --bench pools`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
venv=.tools/chart
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import matplotlib" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "matplotlib==3.9.2"
fi
if [ "${1:-}" = pools ]; then
  exec "$venv/bin/python" scripts/pools-chart.py
fi
exec "$venv/bin/python" scripts/bench-chart.py "$@"
