#!/usr/bin/env bash
# Builds jetweave and starts a whole local cluster (`jetweave up`): the
# pinned nats-server with nats-server.conf, a coordinator, one hybrid node
# and the HTTP sidecar. Ctrl-C stops everything. Extra arguments go to
# `jetweave up` (e.g. --nats-port 4333 --http 127.0.0.1:9200).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./scripts/install-nats-server.sh
cargo build --release --bin jetweave
export NATS_SERVER_BIN="$PWD/.tools/bin/nats-server"
exec ./target/release/jetweave up "$@"
