#!/usr/bin/env bash
# Tollgate's whole test suite, from a fresh clone. CI (.ci/run) runs exactly this, so a green run
# here is a green CI run.
#
# 1. Installs what the tests need beyond cargo, into git-ignored folders:
#    the Aperture SDKs (aperture-py in .sdk/py, aperture-js in .sdk/js) and, when
#    possible, Debian's redis-server (for the Redis+Lua baseline tests) and chromium (the
#    admin status page, loaded headless).
# 2. Lints: cargo fmt --check, then clippy on every crate and target with warnings as errors,
#    and on tollgate-protocol without its client feature (a style slip fails before the long
#    part starts).
# 3. Runs every crate's tests: cargo test --workspace. A test whose dependency (SDKs,
#    redis-server, openssl) is missing fails under CI (CI=true) and skips with a printed
#    reason elsewhere.
# 4. Checks that the fuzz targets build (cargo check in fuzz/, which sets --cfg fuzzing through
#    fuzz/.cargo/config.toml; fuzzing itself needs nightly and cargo-fuzz, see fuzz/README.md).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# A one-off build gains nothing from incremental state (1.6 GB on a clean clone); CI builds once.
if [[ "${CI:-}" == true ]]; then
  export CARGO_INCREMENTAL=0
fi

step() { echo "==> $* ($(date +%T))"; }

# A clean build of the suite takes about 2 GB under target/ and 0.2 GB under fuzz/target/ (see
# the dev profile in Cargo.toml). Say so up front: a full disk otherwise shows up as a linker
# error halfway through.
free_kb="$(df -Pk "$ROOT" 2>/dev/null | awk 'NR == 2 { print $4 }')" || free_kb=""
if [[ -n "$free_kb" && "$free_kb" -lt $((3 * 1024 * 1024)) ]]; then
  echo "warning: $((free_kb / 1024)) MiB free on $ROOT's disk; a clean build of the suite needs about 2.5 GB"
fi

step "installing the Aperture SDKs used by the gRPC compat tests"
scripts/setup-sdk.sh

if [[ -x scripts/install-redis.sh ]]; then
  step "installing redis-server for the Redis+Lua baseline tests (best effort)"
  scripts/install-redis.sh || echo "redis-server could not be installed: the Redis tests fail under CI and skip elsewhere"
fi

step "installing chromium for the status page's browser test"
scripts/install-chromium.sh || echo "chromium could not be installed: the status page's browser test fails under CI and skips elsewhere"

step "cargo fmt --all -- --check"
cargo fmt --all -- --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
# The codec without the tokio client (what a non-tokio user of tollgate-protocol builds).
cargo clippy -p tollgate-protocol --no-default-features --lib -- -D warnings

step "cargo test --workspace"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace "$@" 2>&1 | tee "$log" || status=$?
# One closing line for the whole run (cargo prints one "test result" line per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1); if ($i ~ /^ignored/) s += $(i-1) } }
     END { printf "summary: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"

step "fuzz targets build (cargo check in fuzz/ with --cfg fuzzing)"
fuzz_status=0
(cd fuzz && cargo check --locked --bins) || fuzz_status=$?
if [[ "$fuzz_status" != 0 ]]; then
  echo "the fuzz targets do not build (exit $fuzz_status)"
fi

step "done"
if [[ "$status" != 0 ]]; then
  exit "$status"
fi
exit "$fuzz_status"
