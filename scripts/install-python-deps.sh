#!/usr/bin/env bash
# Creates .tools/py, a virtualenv with nats-py (pinned), for the Python
# worker example and its test. Idempotent.
set -euo pipefail
VERSION="${NATS_PY_VERSION:-2.16.0}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.tools/py"
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(0 if m.version('nats-py') == '$VERSION' else 1)" 2>/dev/null; then
  exit 0
fi
echo "installing nats-py $VERSION into .tools/py" >&2
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "nats-py==$VERSION" >&2
