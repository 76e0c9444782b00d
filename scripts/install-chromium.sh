#!/usr/bin/env bash
# Installs Debian's Chromium and ChromeDriver (packages chromium and
# chromium-driver: /usr/bin/chromium, /usr/bin/chromedriver) for the
# dashboard's browser test (tests/ui.rs), unless both are there.
# Idempotent; needs root (or sudo) and Debian's package registry.
set -euo pipefail
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  exit 0
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
  sudo="sudo"
fi
echo "installing Debian chromium and chromium-driver (for tests/ui.rs)" >&2
export DEBIAN_FRONTEND=noninteractive
# Stale package lists (a fresh machine's) are refreshed once on failure.
if ! $sudo apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null; then
  $sudo apt-get update -q >/dev/null
  $sudo apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null
fi
/usr/bin/chromium --version >&2
