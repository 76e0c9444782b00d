#!/usr/bin/env bash
# jetweave next to Celery (Redis broker and backend) on this machine, in one
# run: no-op task throughput and sequential submit-to-result latency.
# Installs redis-server (Debian package) and Celery (PyPI) into .tools/;
# never part of CI. Usage: scripts/bench-celery.sh [N] [SEQ]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
N="${1:-2000}"; SEQ="${2:-200}"
if ! command -v redis-server >/dev/null; then
  apt-get update -qq && apt-get install -y -qq redis-server >/dev/null
fi
venv=.tools/celery
if [ ! -x "$venv/bin/celery" ]; then
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "celery[redis]==5.7.0" "kombu==5.7.0" "packaging"
fi
work=$(mktemp -d)
redis-server --port 6391 --save '' --appendonly no --dir "$work" --daemonize no >"$work/redis.log" 2>&1 &
redis=$!
trap 'kill $worker $redis 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
sleep 0.5
(cd bench/celery && exec "../../$venv/bin/celery" -A tasks worker --concurrency 2 --loglevel WARNING >"$work/worker.log" 2>&1) &
worker=$!
sleep 3
celery=$(cd bench/celery && "../../$venv/bin/python" drive.py "$N" "$SEQ")

./scripts/install-nats-server.sh
cargo build --release --bin jetweave -q
export NATS_SERVER_BIN="$PWD/.tools/bin/nats-server"
jw=$(cargo run --release -q --example compare -- "$N" "$SEQ")

python3 - "$celery" "$jw" <<'PY'
import json, sys
c, j = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"{'':34} {'jetweave':>12} {'Celery+Redis':>14}")
print(f"{'no-op throughput, tasks/s':34} {j['tasks_per_s']:>12.0f} {c['tasks_per_s']:>14.0f}")
print(f"{'sequential latency p50, ms':34} {j['seq_p50_ms']:>12.2f} {c['seq_p50_ms']:>14.2f}")
print(f"{'sequential latency p99, ms':34} {j['seq_p99_ms']:>12.2f} {c['seq_p99_ms']:>14.2f}")
PY
