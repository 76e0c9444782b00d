#!/usr/bin/env bash
# What an idle node costs the server: the messages it sends (its
# connection's in_msgs in the server's /connz; out_msgs for what it gets) over W seconds, with one
# coordinator and one idle `jetweave node` (release build, default timings
# unless NODE_ARGS says otherwise). Never in CI.
# Usage: scripts/idle-cost.sh [W=60]   e.g. NODE_ARGS="--ack-wait 10" scripts/idle-cost.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
W="${1:-60}"
./scripts/install-nats-server.sh
cargo build --release --bin jetweave -q
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
P=$(port); M=$(port); d=$(mktemp -d)
.tools/bin/nats-server -js -a 127.0.0.1 -p "$P" -m "$M" -sd "$d" >"$d/nats.log" 2>&1 &
pids=($!)
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$d"' EXIT
sleep 0.5
jw=target/release/jetweave
$jw --nats-url "nats://127.0.0.1:$P" coordinator --id c1 >"$d/c.log" 2>&1 &
pids+=($!)
sleep 2
# shellcheck disable=SC2086
$jw --nats-url "nats://127.0.0.1:$P" node --node-id idle1 ${NODE_ARGS:-} >"$d/n.log" 2>&1 &
pids+=($!)
sleep 6
counts() {
  curl -s "http://127.0.0.1:$M/connz?limit=1000" | python3 -c '
import json, sys
for c in json.load(sys.stdin)["connections"]:
    if "idle1" in c.get("name", ""):
        print(c["in_msgs"], c["out_msgs"])'
}
read -r a_in a_out < <(counts); sleep "$W"; read -r b_in b_out < <(counts)
python3 -c "print(f'idle node: {($b_in - $a_in) / $W:.2f} messages/s to the server, {($b_out - $a_out) / $W:.2f} from it, over $W s')"
