#!/usr/bin/env bash
# Kept for old links: jetweave next to Celery (and taskiq) is
# scripts/bench-peers.sh. Usage: scripts/bench-celery.sh [N] [SEQ]
exec "$(dirname "${BASH_SOURCE[0]}")/bench-peers.sh" "$@"
