#!/usr/bin/env bash
# jetweave next to its peers on this machine, in one run: Celery (Redis
# broker and backend, apply_async in a loop, prefork pool of 2) and taskiq
# (its NATS JetStream pull broker and NATS object-store result backend,
# 2 worker processes, on a nats-server of the same pinned version).
# Workloads: N no-op tasks submitted then all awaited, SEQ sequential
# submit-to-result round trips, and a killed worker (a 1 s task whose
# worker process gets SIGKILL once it runs: the time from the kill to the
# task's result, and whether it completed). Installs redis-server (Debian), Celery and
# taskiq (PyPI) into .tools/; never part of CI.
# Usage: scripts/bench-peers.sh [N] [SEQ]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
N="${1:-2000}"; SEQ="${2:-200}"
./scripts/install-nats-server.sh
if ! command -v redis-server >/dev/null; then
  apt-get update -qq && apt-get install -y -qq redis-server >/dev/null
fi
celery_venv=.tools/celery
if [ ! -x "$celery_venv/bin/celery" ]; then
  python3 -m venv "$celery_venv"
  "$celery_venv/bin/python" -m pip install --quiet --disable-pip-version-check "celery[redis]==5.7.0" "kombu==5.7.0" "packaging"
fi
taskiq_venv=.tools/taskiq
if [ ! -x "$taskiq_venv/bin/taskiq" ]; then
  python3 -m venv "$taskiq_venv"
  "$taskiq_venv/bin/python" -m pip install --quiet --disable-pip-version-check "taskiq==0.13.0" "taskiq-nats==0.7.0"
fi
work=$(mktemp -d)
export PEERS_MARK="$work"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT

# Celery + Redis
redis-server --port 6391 --save '' --appendonly no --dir "$work" --daemonize no >"$work/redis.log" 2>&1 &
pids+=($!)
sleep 0.5
(cd bench/celery && exec "../../$celery_venv/bin/celery" -A tasks worker --concurrency 2 --loglevel WARNING >"$work/celery.log" 2>&1) &
pids+=($!)
sleep 3
celery=$(cd bench/celery && "../../$celery_venv/bin/python" drive.py "$N" "$SEQ")
kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; pids=()

# taskiq on NATS JetStream
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
.tools/bin/nats-server -js -a 127.0.0.1 -p "$port" -sd "$work/js" >"$work/nats.log" 2>&1 &
pids+=($!)
export NATS_URL="nats://127.0.0.1:$port"
sleep 0.5
(cd bench/taskiq && exec "../../$taskiq_venv/bin/taskiq" worker tasks:broker --workers 2 --log-level WARNING >"$work/taskiq.log" 2>&1) &
pids+=($!)
sleep 3
taskiq=$(cd bench/taskiq && "../../$taskiq_venv/bin/python" drive.py "$N" "$SEQ")
kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; pids=()
unset NATS_URL

# jetweave (its own nats-server, same binary)
export NATS_SERVER_BIN="$PWD/.tools/bin/nats-server"
cargo build --release -q --bin jetweave  # the killed-worker part runs node processes
jw=$(cargo run --release -q --example compare -- "$N" "$SEQ")

python3 - "$jw" "$celery" "$taskiq" <<'PY'
import json, sys
j, c, t = (json.loads(a) for a in sys.argv[1:4])
print(f"{'':34} {'jetweave':>10} {'Celery+Redis':>13} {'taskiq+NATS':>12}")
for key, label, fmt in [("tasks_per_s", "no-op throughput, tasks/s", ".0f"),
                        ("seq_p50_ms", "sequential round trip p50, ms", ".2f"),
                        ("seq_p99_ms", "sequential round trip p99, ms", ".2f"),
                        ("killed_worker_s", "killed worker: kill to result, s", ".2f")]:
    print(f"{label:34} {j[key]:>10{fmt}} {c[key]:>13{fmt}} {t[key]:>12{fmt}}")
print(f"{'killed worker: outcome':34} {'completed':>10} {c['killed_worker_outcome']:>13} {t['killed_worker_outcome']:>12}")
PY
