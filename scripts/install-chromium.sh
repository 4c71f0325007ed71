#!/usr/bin/env bash
# Installs Debian's chromium if it is not on PATH. Idempotent. The admin status page's test
# (server/tests/status_page.rs) loads the page in it, headless.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
if ! $SUDO apt-get install -y --no-install-recommends chromium >/dev/null 2>&1; then
    $SUDO apt-get update >/dev/null
    $SUDO apt-get install -y --no-install-recommends chromium >/dev/null
fi
command -v chromium >/dev/null
