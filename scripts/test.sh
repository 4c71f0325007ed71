#!/usr/bin/env bash
# Tollgate's whole test suite, from a fresh clone. CI (.ci/run) runs exactly this.
#
# 1. Installs what the tests need beyond cargo, into git-ignored folders:
#    the Aperture SDKs (aperture-py in .sdk/py, aperture-js in .sdk/js) and, when
#    possible, Debian's redis-server (for the Redis+Lua baseline tests).
# 2. Runs every crate's tests: cargo test --workspace.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

echo "==> installing the Aperture SDKs used by the gRPC compat tests"
scripts/setup-sdk.sh
export TOLLGATE_SDK_TESTS=1

if [[ -x scripts/install-redis.sh ]]; then
  echo "==> installing redis-server for the Redis+Lua baseline tests (best effort)"
  scripts/install-redis.sh || echo "redis-server could not be installed: the Redis tests will print why they skip"
fi

echo "==> cargo test --workspace"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace "$@" 2>&1 | tee "$log" || status=$?
# One closing line for the whole run (cargo prints one "test result" line per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1); if ($i ~ /^ignored/) s += $(i-1) } }
     END { printf "summary: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
exit "$status"
