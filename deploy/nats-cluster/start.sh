#!/usr/bin/env bash
# Starts a 3-server NATS cluster with JetStream on loopback ports, for
# trying failover locally. jetweave sees the cluster and creates its streams
# and buckets with 3 replicas.
#
#   deploy/nats-cluster/start.sh [BASE_PORT] [DATA_DIR]
#
# Client ports BASE, BASE+1, BASE+2 (default 4222..4224); cluster ports
# BASE+100..; monitoring BASE+4000... Runs in the foreground; Ctrl-C (or
# SIGTERM) stops all three. Kill one server to watch the others carry on.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
base="${1:-4222}"
data="${2:-$root/.jetweave/cluster}"
bin="${NATS_SERVER_BIN:-$root/.tools/bin/nats-server}"
[ -x "$bin" ] || "$root/scripts/install-nats-server.sh"
mkdir -p "$data"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM
for i in 0 1 2; do
  name="n$((i + 1))"
  conf="$data/$name.conf"
  sed -e "s|@NAME@|$name|" \
      -e "s|@CLIENT_PORT@|$((base + i))|" \
      -e "s|@MONITOR_PORT@|$((base + 4000 + i))|" \
      -e "s|@CLUSTER_PORT@|$((base + 100 + i))|" \
      -e "s|@ROUTE1@|$((base + 100))|" \
      -e "s|@ROUTE2@|$((base + 101))|" \
      -e "s|@ROUTE3@|$((base + 102))|" \
      -e "s|@STORE@|$data/$name|" \
      "$here/cluster.conf.template" > "$conf"
  "$bin" -c "$conf" > "$data/$name.log" 2>&1 &
  pids+=("$!")
done
urls="nats://127.0.0.1:$base,nats://127.0.0.1:$((base + 1)),nats://127.0.0.1:$((base + 2))"
# Ready when JetStream has a meta leader on all three.
for _ in $(seq 1 100); do
  ok=0
  for i in 0 1 2; do
    # python3 rather than curl: the project needs Python anyway.
    if python3 -c "import urllib.request, sys; urllib.request.urlopen(sys.argv[1], timeout=1)" \
        "http://127.0.0.1:$((base + 4000 + i))/healthz" >/dev/null 2>&1; then ok=$((ok + 1)); fi
  done
  [ "$ok" = 3 ] && break
  sleep 0.2
done
if [ "$ok" != 3 ]; then
  echo "cluster not healthy after 20 s; see $data/n*.log" >&2
  exit 1
fi
echo "cluster ready: $urls"
echo "try: jetweave --nats-url $urls up ... or jetweave --nats-url $urls node --node-id n1"
wait
