#!/usr/bin/env bash
# The whole test suite: installs the pinned nats-server if missing, then
# runs every unit and integration test against real nats-server processes.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./scripts/install-nats-server.sh
./scripts/install-python-deps.sh
export NATS_SERVER_BIN="$PWD/.tools/bin/nats-server"
cargo test --all-targets "$@"
cargo test --doc
