#!/usr/bin/env bash
# Installs Debian's redis-server if `redis-server` is not on PATH. Idempotent.
# Used by benches/compare.sh (the Redis+Lua baseline) and optional loadgen tests.
set -euo pipefail
if command -v redis-server >/dev/null 2>&1; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
if ! $SUDO apt-get install -y --no-install-recommends redis-server >/dev/null 2>&1; then
    $SUDO apt-get update >/dev/null
    $SUDO apt-get install -y --no-install-recommends redis-server >/dev/null
fi
# The package may start a system instance on 6379; the benchmarks run their own on a free port.
command -v redis-server >/dev/null
