#!/usr/bin/env bash
# Server memory with many live keys: starts a fresh release `tollgate` (binary port only),
# drives KEYS distinct keys through it once (`--distribution seq`: request i uses user-i), and
# reads the server's VmRSS from /proc before and after.
#
#   benches/memory.sh                  # 10M keys
#   KEYS=1000000 benches/memory.sh
#
# Prints one line: `memory keys=N rss_before_kb=A rss_after_kb=B bytes_per_key=C`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=benches/common.sh
. "$ROOT/benches/common.sh"
KEYS="${KEYS:-10000000}"
SHARDS="${SHARDS:-2}"
OUT="${OUT:-$ROOT/target/compare}"
mkdir -p "$OUT"
cargo build --release -q -p tollgate-server -p tollgate-loadgen --manifest-path "$ROOT/Cargo.toml"

bench_config "$OUT/memory.yaml" "{ listen: 127.0.0.1:0, grpc: off, shards: $SHARDS }" 100 10
RUST_LOG=info "$ROOT/target/release/tollgate" serve --config "$OUT/memory.yaml" 2> "$OUT/memory-server.log" &
PID=$!
trap 'kill $PID 2>/dev/null || true; wait $PID 2>/dev/null || true' EXIT
for _ in $(seq 300); do
    grep -q "tollgate ready" "$OUT/memory-server.log" && break
    sleep 0.1
done
LISTEN="$(grep -m1 "tollgate ready" "$OUT/memory-server.log" | sed -E 's/.*listen=([^ ]+).*/\1/')"
rss() { awk '/VmRSS/ {print $2}' "/proc/$PID/status"; }
BEFORE="$(rss)"
echo "== memory: $KEYS distinct keys into pid $PID ($LISTEN), RSS before ${BEFORE} kB" >&2
"$ROOT/target/release/tollgate-loadgen" --target "tollgate://$LISTEN" \
    --distribution seq --keys "$KEYS" --requests "$KEYS" --warmup 0s --quiet \
    -c 4 -d 8 --batch 64 --timeout 5s --json "$OUT/memory-load.json" \
    | sed -n 's/^\(requests\|decisions\/s\|first error\)/   \1/p' >&2
AFTER="$(rss)"
PER_KEY=$(( (AFTER - BEFORE) * 1024 / KEYS ))
echo "memory keys=$KEYS rss_before_kb=$BEFORE rss_after_kb=$AFTER bytes_per_key=$PER_KEY"
