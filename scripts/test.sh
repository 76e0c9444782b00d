#!/usr/bin/env bash
# The whole test suite: installs the pinned nats-server (and Chromium for
# the dashboard's browser test) if missing, then
# runs every unit and integration test against real nats-server processes,
# then the core flows on a 3-server cluster.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./scripts/install-nats-server.sh
./scripts/install-python-deps.sh
./scripts/install-chromium.sh
export NATS_SERVER_BIN="$PWD/.tools/bin/nats-server"
cargo test --all-targets "$@"
cargo test --doc
# The core flows once more on a 3-server cluster with R3 streams: tasks,
# runs with a node kill and leader failover, replication. The whole suite
# runs on a cluster with `JETWEAVE_TEST_CLUSTER=3 ./scripts/test.sh`.
if [ $# -eq 0 ] && [ -z "${JETWEAVE_TEST_CLUSTER:-}" ]; then
  echo "== core flows on a 3-server cluster"
  JETWEAVE_TEST_CLUSTER=3 cargo test --test tasks --test runs --test cluster
fi
