#!/usr/bin/env bash
# The gRPC compat port against its transport floor: h2load drives Envoy RLS `ShouldRateLimit`
# and Aperture `Check` at two shapes (50 connections x 1 stream, 8 connections x 64 streams)
# against, in the same run:
#   - the floor: `grpc_floor` (benches/src/bin), a unary tonic server on the port's own stack
#     (tonic 0.14 / hyper / h2, one current-thread tokio thread, same HTTP/2 settings) that
#     answers a constant reply and decides nothing;
#   - the same floor served on SHARDS glommio shards (`grpc_shard_floor`: hyper over io_uring,
#     SO_REUSEPORT, writes corked): what serving the port on the shards would start from
#     (reported, no target);
#   - the same floor without tonic (`grpc_lean_floor`, RLS only): hyper's HTTP/2 server over a
#     plain service function, and the h2 crate's server alone; what a lighter HTTP/2 path than
#     tonic's could start from (reported, no target);
#   - Tollgate (`tollgate serve`, SHARDS shards, one rate limiter of 100 per second per user);
#   - both again with THREADS2 (default 2) gRPC threads: Tollgate with `server.grpc_threads`,
#     the floor with as many threads, each its own runtime and SO_REUSEPORT listener
#     (reported, no target: the targets compare the default, one thread, with its floor);
#   - Limitador (Kuadrant's limitador-server, in-memory storage, the same limit) when
#     LIMITADOR names its binary; the row is skipped with a note otherwise;
# plus the loadgen's own gRPC driver (tonic client, uniform over 1M users) against Tollgate and
# the floor. For every h2load run it also keeps each server thread's CPU time (Tollgate's split
# into its gRPC threads, its shards and the rest) and, with perf, the shards' sleeps. Each
# h2load figure is the best of REPEAT runs, the targets interleaved so that a
# neighbour's burst on the shared machine hits all of them alike.
#
# h2load sends one request body for every request (`grpc_bodies` writes them at bench time), so
# its rows use one user (`user=h2load`): after the first 100 requests of each second the answer
# is OVER_LIMIT / REJECTED, which costs Tollgate and Limitador a full decision all the same.
#
# Prints the table, keeps every raw output and a summary (grpc.json) in $GRPC_OUT (default
# target/compare/grpc), and rewrites the `section:grpc` of docs/performance.md (NO_DOCS=1:
# leave it alone).
#
#   benches/grpc_compare.sh
#   LIMITADOR=/path/to/limitador-server benches/grpc_compare.sh
#   SECONDS_PER_RUN=3 REPEAT=1 NO_DOCS=1 benches/grpc_compare.sh
#   NO_BUILD=1 benches/grpc_compare.sh     # use the release binaries already in target/
#   TOLLGATE_BIN=/tmp/tollgate-before NO_BUILD=1 NO_DOCS=1 benches/grpc_compare.sh  # an A/B
#   RENDER_ONLY=1 benches/grpc_compare.sh  # re-render the table from the last run in $GRPC_OUT
#
# Every load targets 127.0.0.1 only. All processes started here are stopped on exit.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=benches/common.sh
. "$ROOT/benches/common.sh"
cd "$ROOT"
SECONDS_PER_RUN="${SECONDS_PER_RUN:-5}"
WARMUP_SECONDS="${WARMUP_SECONDS:-1}"
REPEAT="${REPEAT:-3}"
SHARDS="${SHARDS:-2}"
# The second thread count measured (Tollgate's `server.grpc_threads`, the floor's THREADS).
THREADS2="${THREADS2:-2}"
# Not $OUT: benches/compare.sh exports that for its own directory and calls this script.
OUT="${GRPC_OUT:-$ROOT/target/compare/grpc}"
LIMITADOR="${LIMITADOR:-}"
TOLLGATE="${TOLLGATE_BIN:-$ROOT/target/release/tollgate}"  # TOLLGATE_BIN: another build to measure (an A/B)
LOADGEN="$ROOT/target/release/tollgate-loadgen"
FLOOR="$ROOT/target/release/grpc_floor"
SHARD_FLOOR="$ROOT/target/release/grpc_shard_floor"
LEAN_FLOOR="$ROOT/target/release/grpc_lean_floor"
BODIES="$ROOT/target/release/grpc_bodies"
# The limit every server enforces: 100 requests per second per user.
LIMIT=100

command -v h2load >/dev/null || { echo "h2load is needed (Debian: apt-get install nghttp2-client)" >&2; exit 1; }

if [ -n "${RENDER_ONLY:-}" ]; then
    # Re-render the table from the last run's outputs in $OUT.
    # shellcheck disable=SC1091
    . "$OUT/meta.env"
    export OUT LOADAVG_START LOADAVG_END SHARDS THREADS2 REPEAT SECONDS_PER_RUN WARMUP_SECONDS LIMITADOR_NOTE
    export MEASURED_AT GIT_REV H2LOAD_VERSION NO_DOCS="${NO_DOCS:-}"
    exec python3 "$ROOT/benches/grpc_compare_report.py" "$ROOT/docs/performance.md"
fi
rm -rf "$OUT"
mkdir -p "$OUT/runs"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

LOADAVG_START="$(cut -d' ' -f1-3 /proc/loadavg)"
if [ -z "${NO_BUILD:-}" ]; then
    log "building release binaries"
    cargo build --release -q -p tollgate-server -p tollgate-loadgen -p tollgate-benches \
        --bin tollgate --bin tollgate-loadgen --bin grpc_floor --bin grpc_shard_floor --bin grpc_lean_floor --bin grpc_bodies
fi
"$BODIES" "$OUT"


# start_tollgate NAME SERVER: a Tollgate whose `server:` line is SERVER, with the bench's limit,
# config and log in $OUT/NAME.*; sets STARTED_PID and STARTED_GRPC (its gRPC address).
start_tollgate() {
    bench_config "$OUT/$1.yaml" "$2" "$LIMIT" "$LIMIT"
    RUST_LOG=info "$TOLLGATE" serve --config "$OUT/$1.yaml" 2> "$OUT/$1.log" &
    STARTED_PID=$!
    PIDS+=("$STARTED_PID")
    STARTED_GRPC="$(sed -E 's/.*grpc=([^ ]+).*/\1/' <<<"$(wait_line "$OUT/$1.log" "tollgate ready")")"
}
start_tollgate tollgate "{ listen: 127.0.0.1:0, grpc: 127.0.0.1:0, shards: $SHARDS }"
TOLLGATE_PID="$STARTED_PID" TG_GRPC="$STARTED_GRPC"
log "tollgate gRPC on $TG_GRPC"
start_tollgate tollgate2t "{ listen: 127.0.0.1:0, grpc: 127.0.0.1:0, admin: off, shards: $SHARDS, grpc_threads: $THREADS2 }"
TOLLGATE2_PID="$STARTED_PID" TG2_GRPC="$STARTED_GRPC"
log "tollgate gRPC on $THREADS2 threads on $TG2_GRPC"

"$FLOOR" 127.0.0.1:0 > "$OUT/floor.log" 2>&1 &
FLOOR_PID=$!
PIDS+=("$FLOOR_PID")
FLOOR_ADDR="$(wait_line "$OUT/floor.log" "listening" | sed -E 's/.*listening //')"
log "floor on $FLOOR_ADDR"

"$FLOOR" 127.0.0.1:0 "$THREADS2" > "$OUT/floor2t.log" 2>&1 &
FLOOR2_PID=$!
PIDS+=("$FLOOR2_PID")
FLOOR2_ADDR="$(wait_line "$OUT/floor2t.log" "listening" | sed -E 's/.*listening //')"
log "floor on $THREADS2 threads on $FLOOR2_ADDR"

"$SHARD_FLOOR" 127.0.0.1:0 "$SHARDS" > "$OUT/shard-floor.log" 2>&1 &
SHARD_FLOOR_PID=$!
PIDS+=("$SHARD_FLOOR_PID")
SHARD_FLOOR_ADDR="$(wait_line "$OUT/shard-floor.log" "listening" | sed -E 's/.*listening ([^ ]+).*/\1/')"
log "floor on $SHARDS shards on $SHARD_FLOOR_ADDR"

for stack in hyper h2; do
    "$LEAN_FLOOR" 127.0.0.1:0 "$stack" > "$OUT/lean-floor-$stack.log" 2>&1 &
    PIDS+=("$!")
    printf -v "LEAN_${stack^^}_PID" '%s' "$!"
    printf -v "LEAN_${stack^^}_ADDR" '%s' "$(wait_line "$OUT/lean-floor-$stack.log" "listening" | sed -E 's/.*listening //')"
done
log "floor without tonic: hyper on $LEAN_HYPER_ADDR, h2 on $LEAN_H2_ADDR"

LIMITADOR_ADDR=""
LIMITADOR_NOTE="not run: set LIMITADOR to a limitador-server binary built with in-memory storage"
if [ -n "$LIMITADOR" ]; then
    cat > "$OUT/limitador.yaml" <<EOF
- namespace: bench
  max_value: $LIMIT
  seconds: 1
  conditions: []
  variables:
    - descriptors[0].user
EOF
    LIMITADOR_PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
    LIMITADOR_HTTP="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
    "$LIMITADOR" --rls-ip 127.0.0.1 --rls-port "$LIMITADOR_PORT" --http-ip 127.0.0.1 \
        --http-port "$LIMITADOR_HTTP" "$OUT/limitador.yaml" memory > "$OUT/limitador.log" 2>&1 &
    LIMITADOR_PID=$!
    PIDS+=("$LIMITADOR_PID")
    for _ in $(seq 300); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$LIMITADOR_PORT") 2>/dev/null; then
            LIMITADOR_ADDR="127.0.0.1:$LIMITADOR_PORT"
            break
        fi
        sleep 0.1
    done
    if [ -n "$LIMITADOR_ADDR" ]; then
        LIMITADOR_NOTE="$("$LIMITADOR" --version 2>/dev/null | head -1), in-memory storage"
        log "limitador on $LIMITADOR_ADDR"
    else
        LIMITADOR_NOTE="not run: limitador-server did not start (see limitador.log)"
        log "$LIMITADOR_NOTE"
    fi
fi

# perf counts syscalls when it may (perf installed, tracepoints readable); else no such column.
PERF=""
if command -v perf >/dev/null && perf stat -e syscalls:sys_enter_writev -- true >/dev/null 2>&1; then
    PERF="$(command -v perf)"
fi

RLS_PATH=/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit
CHECK_PATH=/aperture.flowcontrol.check.v1.FlowControlService/Check


# h2 NAME SERVER_PID ADDR PATH BODY CONNECTIONS STREAMS: one h2load run, its output and the
# server's CPU seconds over it (warm-up included) kept as runs/NAME.N.txt.
h2 () {
    local name="$1" spid="$2" addr="$3" path="$4" body="$5" conns="$6" streams="$7" n=0 file perf_pid=""
    while [ -e "$OUT/runs/$name.$n.txt" ]; do n=$((n + 1)); done
    file="$OUT/runs/$name.$n.txt"
    # With perf: the server's write/writev/sendto calls and context switches over the measured
    # part (what batching replies into fewer flushes and wake-ups would save). Each thread's
    # voluntary context switches (`thread sleeps` lines) count, for Tollgate and the floor on
    # shards, the shards' sleeps.
    if [ -n "$PERF" ]; then
        (sleep "$WARMUP_SECONDS"; exec "$PERF" stat -x, -o "$file.perf" -p "$spid" \
            -e syscalls:sys_enter_writev,syscalls:sys_enter_write,syscalls:sys_enter_sendto,context-switches \
            -- sleep "$SECONDS_PER_RUN") >/dev/null 2>&1 &
        perf_pid=$!
    fi
    {
        echo "loadavg before: $(cut -d' ' -f1-3 /proc/loadavg)"
        echo "server cpu before: $(cpu_seconds "$spid")"
        echo "thread cpu before: $(thread_cpu_seconds "$spid")"
        echo "thread sleeps before: $(thread_sleeps "$spid")"
        h2load -D "$SECONDS_PER_RUN" --warm-up-time "$WARMUP_SECONDS" -t 1 -c "$conns" -m "$streams" \
            -d "$body" -H 'content-type: application/grpc' -H 'te: trailers' \
            "http://$addr$path" 2>&1
        echo "thread cpu after: $(thread_cpu_seconds "$spid")"
        echo "thread sleeps after: $(thread_sleeps "$spid")"
        echo "server cpu after: $(cpu_seconds "$spid")"
        echo "loadavg after: $(cut -d' ' -f1-3 /proc/loadavg)"
    } > "$file"
    if [ -n "$perf_pid" ]; then wait "$perf_pid" || true; fi
    log "$name: $(grep -m1 -E '^finished in' "$file" || echo 'no result')"
}

SHAPES=("c50m1:50:1" "c8m64:8:64")
for _ in $(seq "$REPEAT"); do
    for shape in "${SHAPES[@]}"; do
        IFS=: read -r sname conns streams <<<"$shape"
        h2 "floor-rls-$sname" "$FLOOR_PID" "$FLOOR_ADDR" "$RLS_PATH" "$OUT/rls.bin" "$conns" "$streams"
        h2 "shardfloor-rls-$sname" "$SHARD_FLOOR_PID" "$SHARD_FLOOR_ADDR" "$RLS_PATH" "$OUT/rls.bin" "$conns" "$streams"
        h2 "leanhyper-rls-$sname" "$LEAN_HYPER_PID" "$LEAN_HYPER_ADDR" "$RLS_PATH" "$OUT/rls.bin" "$conns" "$streams"
        h2 "leanh2-rls-$sname" "$LEAN_H2_PID" "$LEAN_H2_ADDR" "$RLS_PATH" "$OUT/rls.bin" "$conns" "$streams"
        h2 "tollgate-rls-$sname" "$TOLLGATE_PID" "$TG_GRPC" "$RLS_PATH" "$OUT/rls.bin" "$conns" "$streams"
        h2 "floor2t-rls-$sname" "$FLOOR2_PID" "$FLOOR2_ADDR" "$RLS_PATH" "$OUT/rls.bin" "$conns" "$streams"
        h2 "tollgate2t-rls-$sname" "$TOLLGATE2_PID" "$TG2_GRPC" "$RLS_PATH" "$OUT/rls.bin" "$conns" "$streams"
        if [ -n "$LIMITADOR_ADDR" ]; then
            h2 "limitador-rls-$sname" "$LIMITADOR_PID" "$LIMITADOR_ADDR" "$RLS_PATH" "$OUT/rls.bin" "$conns" "$streams"
        fi
        h2 "floor-check-$sname" "$FLOOR_PID" "$FLOOR_ADDR" "$CHECK_PATH" "$OUT/check.bin" "$conns" "$streams"
        h2 "shardfloor-check-$sname" "$SHARD_FLOOR_PID" "$SHARD_FLOOR_ADDR" "$CHECK_PATH" "$OUT/check.bin" "$conns" "$streams"
        h2 "tollgate-check-$sname" "$TOLLGATE_PID" "$TG_GRPC" "$CHECK_PATH" "$OUT/check.bin" "$conns" "$streams"
        h2 "floor2t-check-$sname" "$FLOOR2_PID" "$FLOOR2_ADDR" "$CHECK_PATH" "$OUT/check.bin" "$conns" "$streams"
        h2 "tollgate2t-check-$sname" "$TOLLGATE2_PID" "$TG2_GRPC" "$CHECK_PATH" "$OUT/check.bin" "$conns" "$streams"
    done
done

# The loadgen's gRPC driver (FlowControlService/Check through tonic, uniform over 1M users).
lg() {
    local name="$1" addr="$2"
    shift 2
    {
        echo "loadavg before: $(cut -d' ' -f1-3 /proc/loadavg)"
        "$LOADGEN" --target "grpc://$addr" --duration "${SECONDS_PER_RUN}s" --warmup "${WARMUP_SECONDS}s" \
            --quiet --capacity "$LIMIT" --fill-amount "$LIMIT" --interval 1s \
            --distribution uniform --keys 1000000 --json "$OUT/runs/$name.json" "$@" 2>&1
        echo "loadavg after: $(cut -d' ' -f1-3 /proc/loadavg)"
    } > "$OUT/runs/$name.txt"
    log "$name: $(grep -m1 'decisions/s' "$OUT/runs/$name.txt" || echo 'no result')"
}
for shape in "c50m1:-c 50 -d 1" "c8m64:-c 8 -d 64"; do
    sname="${shape%%:*}"; sargs="${shape#*:}"
    # shellcheck disable=SC2086
    lg "loadgen-floor-check-$sname" "$FLOOR_ADDR" $sargs
    # shellcheck disable=SC2086
    lg "loadgen-tollgate-check-$sname" "$TG_GRPC" $sargs
done

LOADAVG_END="$(cut -d' ' -f1-3 /proc/loadavg)"
export OUT LOADAVG_START LOADAVG_END SHARDS THREADS2 REPEAT SECONDS_PER_RUN WARMUP_SECONDS LIMITADOR_NOTE
export MEASURED_AT="$(date -u '+%Y-%m-%d %H:%M UTC')"
export GIT_REV="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
export H2LOAD_VERSION="$(h2load --version 2>/dev/null | head -1)"
export NO_DOCS="${NO_DOCS:-}"
for v in LOADAVG_START LOADAVG_END SHARDS THREADS2 REPEAT SECONDS_PER_RUN WARMUP_SECONDS LIMITADOR_NOTE \
    MEASURED_AT GIT_REV H2LOAD_VERSION; do
    printf "%s=%q\n" "$v" "${!v}"
done > "$OUT/meta.env"
python3 "$ROOT/benches/grpc_compare_report.py" "$ROOT/docs/performance.md"
