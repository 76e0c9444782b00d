#!/usr/bin/env bash
# Starts a hub (3 servers with JetStream) and two sites (site-a, site-b),
# each a leaf server linked to the hub, on loopback ports.
#
#   deploy/leaf/start.sh [BASE_PORT] [DATA_DIR]
#
# Hub clients: BASE..BASE+2 (default 5222..5224); site-a: BASE+10;
# site-b: BASE+11; leaf links: BASE+200..; monitoring: BASE+4000...
# Runs in the foreground; Ctrl-C stops everything. Then, e.g.:
#   jetweave --nats-url <hub urls> coordinator
#   jetweave --nats-url nats://127.0.0.1:BASE+10 node --node-id a1 --queues default,site-a
#   jetweave --nats-url <hub urls> submit echo '{}' --queue site-a
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
base="${1:-5222}"
data="${2:-$root/.jetweave/leaf}"
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
  name="hub$((i + 1))"
  sed -e "s|@NAME@|$name|" \
      -e "s|@CLIENT_PORT@|$((base + i))|" \
      -e "s|@MONITOR_PORT@|$((base + 4000 + i))|" \
      -e "s|@CLUSTER_PORT@|$((base + 100 + i))|" \
      -e "s|@ROUTE1@|$((base + 100))|" -e "s|@ROUTE2@|$((base + 101))|" -e "s|@ROUTE3@|$((base + 102))|" \
      -e "s|@LEAF_PORT@|$((base + 200 + i))|" \
      -e "s|@STORE@|$data/$name|" \
      "$here/hub.conf.template" > "$data/$name.conf"
  "$bin" -c "$data/$name.conf" > "$data/$name.log" 2>&1 &
  pids+=("$!")
done
for j in 0 1; do
  name="site-$([ "$j" = 0 ] && echo a || echo b)"
  sed -e "s|@NAME@|$name|" \
      -e "s|@CLIENT_PORT@|$((base + 10 + j))|" \
      -e "s|@MONITOR_PORT@|$((base + 4010 + j))|" \
      -e "s|@HUB_LEAF1@|$((base + 200))|" -e "s|@HUB_LEAF2@|$((base + 201))|" -e "s|@HUB_LEAF3@|$((base + 202))|" \
      "$here/site.conf.template" > "$data/$name.conf"
  "$bin" -c "$data/$name.conf" > "$data/$name.log" 2>&1 &
  pids+=("$!")
done
ok=0
for _ in $(seq 1 100); do
  ok=0
  for i in 0 1 2; do
    if python3 -c "import urllib.request, sys; urllib.request.urlopen(sys.argv[1], timeout=1)" \
        "http://127.0.0.1:$((base + 4000 + i))/healthz" >/dev/null 2>&1; then ok=$((ok + 1)); fi
  done
  [ "$ok" = 3 ] && break
  sleep 0.2
done
if [ "$ok" != 3 ]; then
  echo "hub not healthy after 20 s; see $data/*.log" >&2
  exit 1
fi
echo "hub ready: nats://127.0.0.1:$base,nats://127.0.0.1:$((base + 1)),nats://127.0.0.1:$((base + 2))"
echo "site-a: nats://127.0.0.1:$((base + 10))   site-b: nats://127.0.0.1:$((base + 11))"
wait
