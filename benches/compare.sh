#!/usr/bin/env bash
# End-to-end comparison: Tollgate's binary protocol against the do-it-yourself baseline,
# Redis + a Lua token bucket (one EVALSHA per check, and one EVALSHA per batch), with the same
# loadgen scenarios in one run; the IO floors (PING on Tollgate's shard ports, Redis PING, raw
# TCP echo); the loadgen's own CPU per request against redis-benchmark's; server memory with
# 10M live keys. The gRPC rows are benches/grpc_compare.sh's, run from here (one hook, at the
# end; NO_GRPC=1 skips it).
#
# Writes the results between the `section:e2e` markers of docs/performance.md (nothing else
# in that file is touched), prints the tables, and keeps every JSON report in $OUT (default
# target/compare), with the whole table and the targets in $OUT/summary.json.
#
#   benches/compare.sh                 # everything, a few minutes
#   DURATION=3s WARMUP=1s benches/compare.sh
#   MEMORY_KEYS=0 benches/compare.sh   # skip the 10M-key memory run
#   NO_DOCS=1 benches/compare.sh       # print the tables, leave docs/performance.md alone
#   RENDER_ONLY=1 benches/compare.sh   # re-render the tables from the last run's JSON in $OUT
#   NO_BUILD=1 benches/compare.sh      # use the release binaries already in target/release
#   PAIRS=5 benches/compare.sh         # adjacent check/PING pairs at 8 x 64 (default 3; 0: none)
#
# Every load targets 127.0.0.1 only. All processes started here are stopped on exit.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=benches/common.sh
. "$ROOT/benches/common.sh"
cd "$ROOT"
DURATION="${DURATION:-5s}"
WARMUP="${WARMUP:-1s}"
SHARDS="${SHARDS:-2}"
MEMORY_KEYS="${MEMORY_KEYS:-10000000}"
PAIRS="${PAIRS:-3}"
OUT="${OUT:-$ROOT/target/compare}"
TOLLGATE="$ROOT/target/release/tollgate"
LOADGEN="$ROOT/target/release/tollgate-loadgen"
# The limit both systems enforce: 100 tokens per user, 10 more per second.
CAPACITY=100
FILL=10
INTERVAL=1s  # the interval bench_config (common.sh) gives Tollgate

mkdir -p "$OUT"
if [ -n "${RENDER_ONLY:-}" ]; then
    # Re-render the tables from the JSON reports of the last run in $OUT.
    # shellcheck disable=SC1091
    . "$OUT/meta.env"
else
rm -rf "$OUT"/*.json "$OUT/cpu"
mkdir -p "$OUT/cpu"
command -v taskset >/dev/null || { echo "taskset (util-linux) is needed" >&2; exit 1; }
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
}
trap cleanup EXIT


LOADAVG_START="$(cut -d' ' -f1-3 /proc/loadavg)"
if [ -z "${NO_BUILD:-}" ]; then
    log "building release binaries"
    cargo build --release -q -p tollgate-server -p tollgate-loadgen
fi

log "redis-server"
"$ROOT/scripts/install-redis.sh"
# redis-benchmark comes with redis-server (Debian's redis-tools, a dependency of the package).
command -v redis-benchmark >/dev/null || { echo "redis-benchmark is needed (redis-tools)" >&2; exit 1; }

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# --- Tollgate -------------------------------------------------------------------------------
bench_config "$OUT/tollgate.yaml" \
    "{ listen: 127.0.0.1:0, grpc: 127.0.0.1:0, admin: \"off\", shards: $SHARDS }" "$CAPACITY" "$FILL"
RUST_LOG=info "$TOLLGATE" serve --config "$OUT/tollgate.yaml" 2> "$OUT/tollgate.log" &
TOLLGATE_PID=$!
PIDS+=("$TOLLGATE_PID")
READY="$(wait_line "$OUT/tollgate.log" "tollgate ready")"
TG_LISTEN="$(sed -E 's/.*listen=([^ ]+).*/\1/' <<<"$READY")"
TG_GRPC="$(sed -E 's/.*grpc=([^ ]+).*/\1/' <<<"$READY")"
log "tollgate ready: listen=$TG_LISTEN grpc=$TG_GRPC (pid $TOLLGATE_PID)"

# --- Redis -----------------------------------------------------------------------------------
REDIS_PORT="$(free_port)"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
    --logfile "$OUT/redis.log" &
REDIS_PID=$!
PIDS+=("$REDIS_PID")
for i in $(seq 100); do
    redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
    sleep 0.1
done
REDIS_VERSION="$(redis-server --version | sed -E 's/.*v=([^ ]+).*/\1/')"
log "redis $REDIS_VERSION on 127.0.0.1:$REDIS_PORT"

# --- Echo ------------------------------------------------------------------------------------
"$LOADGEN" echo-server --listen 127.0.0.1:0 > "$OUT/echo.log" 2>&1 &
ECHO_PID=$!
PIDS+=("$ECHO_PID")
ECHO_ADDR="$(wait_line "$OUT/echo.log" "listening on" | sed -E 's/.*listening on //')"

TG="tollgate://$TG_LISTEN"
REDIS="redis://127.0.0.1:$REDIS_PORT"
ECHO="echo://$ECHO_ADDR"


# The server process answering TARGET (its CPU is recorded next to each run).
server_pid_for() {
    case "$1" in
        tollgate://*) echo "$TOLLGATE_PID" ;;
        redis://*) echo "$REDIS_PID" ;;
        echo://*) echo "$ECHO_PID" ;;
    esac
}

# lg NAME TARGET ARGS...: one loadgen run, JSON to $OUT/NAME.json, and the CPU the server
# and the loadgen used during it to $OUT/cpu/NAME.json (whole run, connect and warm-up
# included: the report divides by decisions/s x wall time, so warm-up at the same rate is fine).
lg() {
    local name="$1" target="$2" spid user_before sys_before user_after sys_after wall user sys
    local segs_before segs_after
    shift 2
    log "$name: $target $*"
    spid="$(server_pid_for "$target")"
    read -r user_before sys_before < <(cpu_user_system "$spid")
    segs_before="$(tcp_out_segments)"
    local TIMEFORMAT='%R %U %S'
    # The loadgen's output goes to fd 3 (stderr); only `time`'s line goes to the file.
    { time ${LOADGEN_PREFIX:-} "$LOADGEN" --target "$target" --duration "$DURATION" --warmup "$WARMUP" --quiet \
        --capacity "$CAPACITY" --fill-amount "$FILL" --interval "$INTERVAL" \
        --json "$OUT/$name.json" "$@" 2>&3 | sed -n 's/^\(decisions\/s\|latency\)/   \1/p' >&3 ; } 3>&2 2>"$OUT/cpu/$name.time"
    read -r user_after sys_after < <(cpu_user_system "$spid")
    segs_after="$(tcp_out_segments)"
    read -r wall user sys < <(tail -n 1 "$OUT/cpu/$name.time")
    # User and kernel time apart too: a check's own work (decode, plan, bucket, reply) is user
    # time, while the kernel time of both sides is the IO a PING pays as well.
    awk -v w="$wall" -v ub="$user_before" -v ua="$user_after" -v sb="$sys_before" -v sa="$sys_after" \
        -v lu="$user" -v ls="$sys" -v segs="$((segs_after - segs_before))" 'BEGIN {
            printf "{\"wall_s\": %s, \"server_cpu_s\": %.2f, \"loadgen_cpu_s\": %.2f, ", w, ua - ub + sa - sb, lu + ls
            printf "\"server_user_s\": %.2f, \"server_system_s\": %.2f, ", ua - ub, sa - sb
            printf "\"loadgen_user_s\": %.2f, \"loadgen_system_s\": %.2f, ", lu, ls
            printf "\"tcp_segments\": %d}\n", segs
        }' > "$OUT/cpu/$name.json"
}

DISTS=("hot:--distribution hot --keys 1"
       "uniform:--distribution uniform --keys 1000000"
       "zipf:--distribution zipf:1.1 --keys 1000000")
LOADS=("c50d1:-c 50 -d 1"
       "c8d64:-c 8 -d 64"
       "c4d8b64:-c 4 -d 8 --batch 64")
for d in "${DISTS[@]}"; do
    dname="${d%%:*}"; dargs="${d#*:}"
    for l in "${LOADS[@]}"; do
        lname="${l%%:*}"; largs="${l#*:}"
        # shellcheck disable=SC2086
        lg "tollgate-$dname-$lname" "$TG" $dargs $largs
        # shellcheck disable=SC2086
        lg "redis-$dname-$lname" "$REDIS" $dargs $largs
        if [ "$lname" = c4d8b64 ]; then
            # The fair batch baseline: one EVALSHA of the multi-key script per batch.
            # shellcheck disable=SC2086
            lg "redis1-$dname-$lname" "$REDIS" $dargs $largs --redis-batch one-script
        fi
    done
done

# The IO floors at the same shapes: PING (Tollgate: to its shard ports, each ping to a shard
# drawn at random, as uniform keys spread checks) and Redis PING, through the same loadgen.
# Beside them, reported only, Tollgate PING with each request slot rotating over the shards
# (`--ping-spread rotate`): the requests one read's replies call for then go to one shard
# together, fuller reads and sends than checks ever get (docs/performance.md,
# section:binary-costs).
for l in "c50d1:-c 50 -d 1" "c8d64:-c 8 -d 64"; do
    lname="${l%%:*}"; largs="${l#*:}"
    # shellcheck disable=SC2086
    lg "tollgate-ping-$lname" "$TG" --mode ping $largs
    # shellcheck disable=SC2086
    lg "tollgate-ping-rotate-$lname" "$TG" --mode ping --ping-spread rotate $largs
    # shellcheck disable=SC2086
    lg "redis-ping-$lname" "$REDIS" --mode ping $largs
done

# The pipelined check and its PING floor again, in adjacent pairs: the rows above run minutes
# apart, and on a shared machine the floor drifts between them by more than the target's
# margin. Each pair's ratio, and their median, are reported beside the target (the target's
# verdict stays the rows above).
for p in $(seq 1 "$PAIRS"); do
    lg "pair$p-tollgate-uniform-c8d64" "$TG" --distribution uniform --keys 1000000 -c 8 -d 64
    lg "pair$p-tollgate-ping-c8d64" "$TG" --mode ping -c 8 -d 64
done

# The loadgen's own cost per request against redis-benchmark's, both driving Redis PING at
# 50 connections x depth 1 (the loadgen's figure is redis-ping-c50d1's CPU above).
# redis-benchmark runs a fixed number of requests: about DURATION's worth at the loadgen's rate.
RB_REQUESTS="$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); d=sys.argv[2]
secs=float(d[:-2])/1000 if d.endswith("ms") else float(d.rstrip("s"))
print(max(10000, int(r["requests_per_sec"] * secs)))' "$OUT/redis-ping-c50d1.json" "$DURATION")"
log "redis-benchmark: PING_MBULK -c 50 -P 1 -n $RB_REQUESTS"
RB_CPU_BEFORE="$(cpu_seconds "$REDIS_PID")"
{ TIMEFORMAT='%R %U %S'; time redis-benchmark -p "$REDIS_PORT" -c 50 -P 1 -n "$RB_REQUESTS" \
    -t ping_mbulk --csv > "$OUT/redis-benchmark.csv" ; } 2> "$OUT/cpu/redis-benchmark.time"
RB_CPU_AFTER="$(cpu_seconds "$REDIS_PID")"
read -r RB_WALL RB_USER RB_SYS < <(tail -n 1 "$OUT/cpu/redis-benchmark.time")
python3 - "$OUT" "$RB_REQUESTS" "$RB_WALL" "$RB_USER" "$RB_SYS" "$RB_CPU_BEFORE" "$RB_CPU_AFTER" <<'PY'
import csv, json, os, sys
out, n, wall, user, sys_, before, after = sys.argv[1:]
rows = list(csv.reader(open(os.path.join(out, "redis-benchmark.csv"))))
rps = float(rows[1][1])
json.dump({"requests": int(n), "requests_per_sec": rps, "wall_s": float(wall),
           "client_cpu_s": float(user) + float(sys_), "server_cpu_s": float(after) - float(before)},
          open(os.path.join(out, "redis-benchmark.json"), "w"))
PY

# One connection, depth 1: latency against the loopback floor. At this load a round trip is
# mostly wake-ups, so it depends on which core the loadgen's one thread lands on (next to the
# server thread that answers, or on a core busy with something else). Each row is therefore run
# with the loadgen pinned to each core in turn, and the placement with the lowest p50 is kept
# (the same rule for every row; every placement's JSON stays in $OUT).
# SERVER_PID=<pid of a single-threaded server>: its core is varied too (Tollgate's shards are
# already pinned one per core, so only the loadgen moves for it).
lg_best() {
    local name="$1" cpu scpu all scpus="any"
    shift
    all="0-$(( $(nproc) - 1 ))"
    if [ -n "${SERVER_PID:-}" ]; then scpus="$(seq 0 $(( $(nproc) - 1 )))"; fi
    for scpu in $scpus; do
        if [ -n "${SERVER_PID:-}" ]; then taskset -a -p -c "$scpu" "$SERVER_PID" >/dev/null; fi
        for cpu in $(seq 0 $(( $(nproc) - 1 ))); do
            LOADGEN_PREFIX="taskset -c $cpu" lg "$name.cpu$cpu.server$scpu" "$@"
        done
    done
    if [ -n "${SERVER_PID:-}" ]; then taskset -a -p -c "$all" "$SERVER_PID" >/dev/null; fi
    python3 - "$OUT" "$name" <<'PY'
import glob, json, os, shutil, sys
out, name = sys.argv[1], sys.argv[2]
runs = []
for path in glob.glob(os.path.join(out, f"{name}.cpu*.server*.json")):
    with open(path) as f:
        runs.append((json.load(f)["latency_us"]["p50"], path))
if runs:
    shutil.copy(min(runs)[1], os.path.join(out, f"{name}.json"))
PY
}
SERVER_PID="$ECHO_PID" lg_best "latency-echo" "$ECHO" --mode ping -c 1 -d 1
lg_best "latency-tollgate-ping" "$TG" --mode ping -c 1 -d 1
lg_best "latency-tollgate-check" "$TG" -c 1 -d 1 --keys 1000000
lg_best "latency-tollgate-check-hot" "$TG" -c 1 -d 1 --distribution hot --key-prefix lat-
SERVER_PID="$REDIS_PID" lg_best "latency-redis-check" "$REDIS" -c 1 -d 1 --keys 1000000

# --- Memory: 10M live keys -------------------------------------------------------------------
RSS_BEFORE_KB=""
RSS_AFTER_KB=""
if [ "$MEMORY_KEYS" != 0 ]; then
    # Its own fresh server, so the figure is the buckets of that run only.
    kill "$TOLLGATE_PID" 2>/dev/null || true
    wait "$TOLLGATE_PID" 2>/dev/null || true
    MEM="$(KEYS="$MEMORY_KEYS" OUT="$OUT" SHARDS="$SHARDS" "$ROOT/benches/memory.sh")"
    RSS_BEFORE_KB="$(sed -nE 's/.*rss_before_kb=([0-9]+).*/\1/p' <<<"$MEM")"
    RSS_AFTER_KB="$(sed -nE 's/.*rss_after_kb=([0-9]+).*/\1/p' <<<"$MEM")"
fi

cat > "$OUT/meta.env" <<META
REDIS_VERSION='$REDIS_VERSION'
RSS_BEFORE_KB='$RSS_BEFORE_KB'
RSS_AFTER_KB='$RSS_AFTER_KB'
LOADAVG_START='$LOADAVG_START'
LOADAVG_END='$(cut -d' ' -f1-3 /proc/loadavg)'
GIT_REV='$(git rev-parse --short HEAD 2>/dev/null || echo unknown)'
MEASURED_AT='$(date -u '+%Y-%m-%d %H:%M UTC')'
DURATION='$DURATION'
WARMUP='$WARMUP'
SHARDS='$SHARDS'
MEMORY_KEYS='$MEMORY_KEYS'
PAIRS='$PAIRS'
META
fi  # RENDER_ONLY

# --- Report ----------------------------------------------------------------------------------
export OUT DURATION WARMUP SHARDS REDIS_VERSION MEMORY_KEYS RSS_BEFORE_KB RSS_AFTER_KB PAIRS
export CAPACITY FILL INTERVAL
# shellcheck disable=SC1091
. "$OUT/meta.env"
CPU_MODEL="$(sed -nE 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"
export GIT_REV CPU_MODEL LOADAVG_START LOADAVG_END MEASURED_AT NO_DOCS="${NO_DOCS:-}"
python3 - "$ROOT/docs/performance.md" <<'PY'
import json, os, statistics, sys, datetime

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(sys.argv[1]))), "benches"))
from docs_section import write_section

out = os.environ["OUT"]

def load(name):
    try:
        with open(os.path.join(out, name + ".json")) as f:
            return json.load(f)
    except FileNotFoundError:
        return None

def rate(r):
    return f"{r['decisions_per_sec']:,.0f}" if r else "n/a"

def lat(r):
    if not r:
        return "n/a"
    l = r["latency_us"]
    return f"{l['p50']:,.0f} / {l['p99']:,.0f}"

def ratio(a, b):
    if not a or not b or b["decisions_per_sec"] <= 0:
        return None
    return a["decisions_per_sec"] / b["decisions_per_sec"]

def fmt_ratio(x, digits=1):
    return "n/a" if x is None else f"**{x:.{digits}f}x**"

def per_decision(name, fields):
    """Each of `fields` of run `name`'s CPU record (seconds) as microseconds per decision, or
    None (runs recorded before a field existed lack it)."""
    r = load(name)
    c = load(os.path.join("cpu", name))
    if not r or not c or r["decisions_per_sec"] <= 0 or c["wall_s"] <= 0 or any(f not in c for f in fields):
        return None
    decisions = r["decisions_per_sec"] * c["wall_s"]
    return tuple(c[f] * 1e6 / decisions for f in fields)

def cpu(name):
    """(server, loadgen) CPU microseconds per decision for run `name`, or None."""
    return per_decision(name, ("server_cpu_s", "loadgen_cpu_s"))

def cpu_split(name):
    """(server user, server system, loadgen user, loadgen system) CPU microseconds per
    decision for run `name`, or None."""
    return per_decision(name, ("server_user_s", "server_system_s", "loadgen_user_s", "loadgen_system_s"))

def segments_per_request(name):
    """TCP segments sent (both directions, loopback) per decision of run `name`, or None."""
    x = per_decision(name, ("tcp_segments",))
    return None if x is None else x[0] / 1e6

def fmt_cpu(name):
    x = cpu(name)
    return "n/a" if x is None else f"{x[0]:.1f} / {x[1]:.1f}"

def acc(r):
    a = r and r.get("accuracy")
    return "n/a" if not a else f"{a['ratio']:.3f} / {a['worst_ratio']:.3f}"

def met(ok):
    """A target's verdict; None for a row that is reported beside the targets, not judged."""
    return "reported" if ok is None else "met" if ok else "**missed**"

dists = [("hot", "hot key (1 key)"), ("uniform", "uniform, 1M keys"), ("zipf", "zipf 1.1, 1M keys")]
loads = [("c50d1", "50 conn x depth 1"), ("c8d64", "8 conn x depth 64"),
         ("c4d8b64", "4 conn x depth 8 x batch 64")]
now = os.environ.get("MEASURED_AT") or datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
cores = os.cpu_count()
summary = {"measured_at": now, "commit": os.environ.get("GIT_REV"), "duration": os.environ["DURATION"],
           "warmup": os.environ["WARMUP"], "loadavg_start": os.environ.get("LOADAVG_START"),
           "loadavg_end": os.environ.get("LOADAVG_END"), "rows": {}, "targets": []}
def keep(name):
    r = load(name)
    if r:
        summary["rows"][name] = {"decisions_per_sec": r["decisions_per_sec"],
                                 "requests_per_sec": r.get("requests_per_sec"),
                                 "latency_us": r.get("latency_us"), "cpu_us": cpu(name)}
    return r
e = []
e.append("## End to end: Tollgate vs Redis+Lua (loadgen)")
e.append("")
e.append(f"Measured by `benches/compare.sh` on {now} at commit `{os.environ.get('GIT_REV')}`: "
         f"{cores} cores ({os.environ.get('CPU_MODEL')}) shared by the loadgen, the server and Redis, "
         f"{os.environ['DURATION']} measured after {os.environ['WARMUP']} of warm-up per row "
         f"(load average {os.environ.get('LOADAVG_START')} before, {os.environ.get('LOADAVG_END')} after: "
         "anything above ~2 means other jobs shared the cores too). "
         f"Tollgate: release build, {os.environ['SHARDS']} shards, binary protocol, each check sent to "
         "the shard port that owns its key. Redis "
         f"{os.environ.get('REDIS_VERSION')}: `EVALSHA` of `loadgen/src/token_bucket.lua` (same bucket "
         "semantics, server `TIME`), through a pipelined connection of the same shape. Both enforce "
         f"{os.environ['CAPACITY']} tokens + {os.environ['FILL']} per {os.environ['INTERVAL']} per user. "
         "Closed loop; `batch 64` = `CHECK_BATCH` frames for Tollgate; for Redis, 64 `EVALSHA`s per "
         "write (Redis+Lua column) and one `EVALSHA` of the multi-key variant "
         "`loadgen/src/token_bucket_multi.lua` deciding all 64 (Redis 1 script column). "
         "Accuracy = admitted/allowed tokens, overall / worst key (<= 1 means never over-admitted; "
         "well below 1 is expected when keys are far from saturation). JSON reports: `target/compare/`, "
         "the whole table and the targets in `target/compare/summary.json`.")
e.append("")
throughput_rows, cpu_rows = [], []
for d, dn in dists:
    for l, ln in loads:
        tn, rn, r1n = f"tollgate-{d}-{l}", f"redis-{d}-{l}", f"redis1-{d}-{l}"
        t, r, r1 = keep(tn), keep(rn), keep(r1n)
        throughput_rows.append(f"| {dn} | {ln} | {rate(t)} | {rate(r)} | {fmt_ratio(ratio(t, r))} | {rate(r1)} | {fmt_ratio(ratio(t, r1))} | {lat(t)} | {lat(r)} | {acc(t)} | {acc(r)} |")
        cpu_rows.append(f"| {dn} | {ln} | {fmt_cpu(tn)} | {fmt_cpu(rn)} |")
e.append("| keys | load | Tollgate dec/s | Redis+Lua dec/s | Tollgate / Redis | Redis 1 script dec/s | Tollgate / Redis 1 script | Tollgate p50 / p99 us | Redis p50 / p99 us | accuracy T | accuracy R |")
e.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
e.extend(throughput_rows)
e.append("")
e.append("The IO floors, same loadgen, same run: a round trip without a decision.")
e.append("")
e.append("Tollgate PING goes to its shard ports, each ping to a shard drawn at random as uniform "
         "keys spread checks; the rotating PING (reported) moves each request slot on to the next "
         "shard at every reply, which keeps the requests of one read's replies together on one "
         "shard: fuller reads and sends than checks get (section:binary-costs).")
e.append("")
e.append("| load | Tollgate PING (shard ports) /s | Tollgate PING, rotating /s | Redis PING /s | Tollgate check, uniform 1M keys /s | check / own PING | check / rotating PING | check / Redis PING | CPU us per request, server / loadgen: Tollgate PING | rotating PING | Redis PING |")
e.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for l, ln in loads[:2]:
    tp, tr = keep(f"tollgate-ping-{l}"), keep(f"tollgate-ping-rotate-{l}")
    rp, tc = keep(f"redis-ping-{l}"), load(f"tollgate-uniform-{l}")
    e.append(f"| {ln} | {rate(tp)} | {rate(tr)} | {rate(rp)} | {rate(tc)} | {fmt_ratio(ratio(tc, tp), 2)} | {fmt_ratio(ratio(tc, tr), 2)} | {fmt_ratio(ratio(tc, rp), 2)} | {fmt_cpu(f'tollgate-ping-{l}')} | {fmt_cpu(f'tollgate-ping-rotate-{l}')} | {fmt_cpu(f'redis-ping-{l}')} |")

# Where the pipelined check's extra CPU goes: user and kernel time of both processes, the check
# run against its PING run (the rows above, then each adjacent pair).
split_rows = [("rows above", "tollgate-uniform-c8d64", "tollgate-ping-c8d64")]
split_rows += [(f"pair {p}", f"pair{p}-tollgate-uniform-c8d64", f"pair{p}-tollgate-ping-c8d64")
               for p in range(1, int(os.environ.get("PAIRS", "3")) + 1)]
# The hot key's check against the same PING: every check goes to one shard, so a request
# slot's whole window travels in one send each way.
split_rows += [("hot key (1 key), rows above", "tollgate-hot-c8d64", "tollgate-ping-c8d64")]
split_rows = [(n, c, p, cpu_split(c), cpu_split(p)) for n, c, p in split_rows]
split_rows = [row for row in split_rows if row[3] and row[4]]
if split_rows:
    e.append("")
    e.append("Where a pipelined check's extra CPU goes (8 conn x depth 64, uniform 1M keys against "
             "PING): microseconds per request in user mode and in the kernel, for the server and "
             "for the loadgen (`/proc/PID/stat` and the shell's `time`), check / PING. A check's "
             "own work (decode, plan, bucket, reply) is user time; the kernel time is the IO, "
             "which a PING pays as well. TCP segments per request (`OutSegs`, both directions) "
             "say how full the sends were: the kernel's cost follows them, and they rise with "
             "the server's time per request, since the two shards' replies then reach a request "
             "slot further apart and its next requests leave in more sends (section:binary-costs, "
             "item 17).")
    e.append("")
    e.append("| runs | check / PING | server user us | server kernel us | loadgen user us | loadgen kernel us | TCP segments per request |")
    e.append("|---|---:|---:|---:|---:|---:|---:|")
    for n, c, p, cs, ps in split_rows:
        cells = " | ".join(f"{a:.2f} / {b:.2f}" for a, b in zip(cs, ps))
        sc, sp = segments_per_request(c), segments_per_request(p)
        segs = "n/a" if sc is None or sp is None else f"{sc:.3f} / {sp:.3f}"
        e.append(f"| {n} | {fmt_ratio(ratio(load(c), load(p)), 2)} | {cells} | {segs} |")
e.append("")
e.append("CPU per decision, microseconds of CPU (all threads) for the server / for the loadgen, "
         "over each whole run (`/proc/PID/stat` and the shell's `time`, divided by decisions/s x "
         "wall time). It is what a decision costs whatever the machine's load, and shows where the "
         "two cores go: at depth 1 most of it is per-request syscalls and wake-ups on both sides.")
e.append("")
e.append("| keys | load | Tollgate server / loadgen us | Redis server / loadgen us |")
e.append("|---|---|---:|---:|")
e.extend(cpu_rows)
e.append("")
rb = load("redis-benchmark")
lgc = cpu("redis-ping-c50d1")
rp1 = load("redis-ping-c50d1")
if rb:
    summary["rows"]["redis-benchmark"] = rb
    rb_client = rb["client_cpu_s"] * 1e6 / rb["requests"]
    rb_server = rb["server_cpu_s"] * 1e6 / rb["requests"]
    e.append("### The loadgen's own cost: against redis-benchmark")
    e.append("")
    e.append("Both drive Redis PING at 50 connections x depth 1, in the same run; client CPU is the "
             "client process's user + system time (the shell's `time`) over the requests it completed.")
    e.append("")
    e.append("| client | requests/s | client CPU us per request | Redis CPU us per request |")
    e.append("|---|---:|---:|---:|")
    e.append(f"| redis-benchmark 7 (`-c 50 -P 1 -t ping_mbulk`, {rb['requests']:,} requests) | {rb['requests_per_sec']:,.0f} | {rb_client:.1f} | {rb_server:.1f} |")
    if lgc and rp1:
        e.append(f"| tollgate-loadgen (`--mode ping -c 50 -d 1`) | {rp1['requests_per_sec']:,.0f} | {lgc[1]:.1f} | {lgc[0]:.1f} |")
    e.append("")
e.append("### One connection, depth 1: latency against the loopback floor")
e.append("")
e.append("Each row: the loadgen's one thread pinned to each core in turn (and, for the "
         "single-threaded echo server and Redis, the server too; Tollgate's shards are pinned one per "
         "core already), the placement with the lowest p50 kept: the same rule for every row. At "
         "depth 1 a round trip is mostly thread wake-ups; on a loaded 2-core VM the placement alone "
         "moves p50 between ~15 and ~100 us.")
e.append("")
e.append("| round trip | p50 us | p90 us | p99 us | p99.9 us | per second |")
e.append("|---|---:|---:|---:|---:|---:|")
rows = [("latency-echo", "raw TCP echo, 32 bytes (loadgen `echo-server`)"),
        ("latency-tollgate-ping", "Tollgate PING/PONG (server IO path, no decision; each ping to a shard port drawn at random, as uniform checks go)"),
        ("latency-tollgate-check", "Tollgate check, uniform 1M keys (binary protocol; checks go to both shards' ports)"),
        ("latency-tollgate-check-hot", "Tollgate check, one key (one shard connection)"),
        ("latency-redis-check", "Redis+Lua check (EVALSHA)")]
for name, label in rows:
    r = keep(name)
    if r:
        l = r["latency_us"]
        e.append(f"| {label} | {l['p50']:.1f} | {l['p90']:.1f} | {l['p99']:.1f} | {l['p999']:.1f} | {r['requests_per_sec']:,.0f} |")
echo, tcheck = load("latency-echo"), load("latency-tollgate-check")
thot = load("latency-tollgate-check-hot")
gap = tcheck["latency_us"]["p50"] - echo["latency_us"]["p50"] if echo and tcheck else None
gap_hot = thot["latency_us"]["p50"] - echo["latency_us"]["p50"] if echo and thot else None
e.append("")
# Every placement, to show what a cross-core round trip costs on this machine.
import glob
def placements(name):
    cells = []
    for path in sorted(glob.glob(os.path.join(out, f"{name}.cpu*.server*.json"))):
        tag = os.path.basename(path)[len(name) + 1 : -len(".json")]
        with open(path) as f:
            p50 = json.load(f)["latency_us"]["p50"]
        cpu_, server = tag.split(".")
        where = f"loadgen on {cpu_[3:]}" + ("" if server == "serverany" else f", server on {server[6:]}")
        cells.append(f"{where}: {p50:.1f}")
    return "; ".join(cells)
e.append("| round trip | p50 us at each placement (core numbers) |")
e.append("|---|---|")
for name, label in rows:
    if placements(name):
        e.append(f"| {label.split(' (')[0]} | {placements(name)} |")
e.append("")
e.append("A same-core round trip is several times cheaper than a cross-core one for every system "
         "(raw echo included, see the placement table): the idle vCPU of the other core must be woken. A single-threaded "
         "client can sit next to only one of Tollgate's two pinned shards, so with uniform keys "
         "half its checks pay a cross-core round trip; with one key (one shard connection) the "
         "check is measured under the same placement rule as echo and Redis.")
e.append("")
mem_before, mem_after = os.environ.get("RSS_BEFORE_KB"), os.environ.get("RSS_AFTER_KB")
if mem_after:
    keys = int(os.environ["MEMORY_KEYS"])
    e.append(f"Memory: a fresh server driven with {keys:,} distinct keys (`benches/memory.sh`, "
             f"`--distribution seq`) went from {int(mem_before)/1024:,.0f} MiB to "
             f"{int(mem_after)/1024:,.0f} MiB RSS (VmRSS), i.e. "
             f"{(int(mem_after)-int(mem_before))*1024/keys:.0f} bytes per live key.")
    e.append("")
# Targets.
tb, rb64, r1b = load("tollgate-uniform-c4d8b64"), load("redis-uniform-c4d8b64"), load("redis1-uniform-c4d8b64")
tp, rp = load("tollgate-uniform-c8d64"), load("redis-uniform-c8d64")
t1, r1 = load("tollgate-uniform-c50d1"), load("redis-uniform-c50d1")
ping64, ping1, rping1 = load("tollgate-ping-c8d64"), load("tollgate-ping-c50d1"), load("redis-ping-c50d1")
e.append("Targets (2-core machine, loadgen and server sharing it), each a ratio within this run:")
e.append("")
e.append("| target | measured | verdict |")
e.append("|---|---|---|")
def target(name, measured, ok):
    summary["targets"].append({"target": name, "measured": measured, "met": None if ok is None else bool(ok)})
    e.append(f"| {name} | {measured} | {met(ok)} |")
if tb:
    x = tb["decisions_per_sec"]
    target("CHECK_BATCH 64, 4 conn x depth 8, uniform 1M keys >= 2,500,000 dec/s", f"{rate(tb)} dec/s", x >= 2.5e6)
if tb and r1b:
    x = ratio(tb, r1b)
    target("CHECK_BATCH against one multi-key EVALSHA per batch (reported)", f"{x:.1f}x ({rate(tb)} vs {rate(r1b)} dec/s)", None)
rot64 = load("tollgate-ping-rotate-c8d64")
if tp and ping64:
    x = ratio(tp, ping64)
    target("pipelined CHECK 8 x 64, uniform 1M keys >= 0.8x own PING (shard ports, spread as uniform checks) at 8 x 64", f"{x:.2f}x ({rate(tp)} vs {rate(ping64)}/s)", x >= 0.8)
pairs = []
for p in range(1, int(os.environ.get("PAIRS", "3")) + 1):
    x = ratio(load(f"pair{p}-tollgate-uniform-c8d64"), load(f"pair{p}-tollgate-ping-c8d64"))
    if x is not None:
        pairs.append(x)
if pairs:
    median = statistics.median(pairs)
    target(f"the same, {len(pairs)} adjacent pairs, each check run followed by its PING run (reported)",
           f"{' / '.join(f'{x:.2f}x' for x in pairs)}; median {median:.2f}x", None)
if tp and rot64:
    # The floor of the runs before 2026-12-01: the same target against it, shown so the
    # change of reference is never hidden (docs/performance.md, section:binary-costs).
    x = ratio(tp, rot64)
    target("pipelined CHECK 8 x 64, uniform 1M keys, against the rotating PING (reported)", f"{x:.2f}x ({rate(tp)} vs {rate(rot64)}/s)", None)
th = load("tollgate-hot-c8d64")
if th and rot64:
    # The same path with its bucket in cache: what a check costs beyond a ping when neither
    # side misses a 1M-key working set. One key keeps every request on one shard, whose reads
    # stay full as the rotating PING's do; measured against that floor, as in the runs before.
    x = ratio(th, rot64)
    target("pipelined CHECK 8 x 64, one hot key, against the rotating PING (reported)", f"{x:.2f}x ({rate(th)} vs {rate(rot64)}/s)", None)
if tp and rp:
    x = ratio(tp, rp)
    target("pipelined CHECK 8 x 64 >= 10x Redis+Lua 8 x 64", f"{x:.1f}x ({rate(tp)} vs {rate(rp)} dec/s)", x >= 10)
if ping64 and rp:
    # How far the IO alone reaches: a check cannot beat the ping its round trip is.
    x = ratio(ping64, rp)
    target("Tollgate PING 8 x 64 (spread as uniform checks) against Redis+Lua 8 x 64 (reported: the IO floor's own multiple)", f"{x:.1f}x ({rate(ping64)} vs {rate(rp)}/s)", None)
if t1 and rping1:
    x = ratio(t1, rping1)
    target("CHECK 50 conn x depth 1 >= 0.9x Redis PING at 50 x 1", f"{x:.2f}x ({rate(t1)} vs {rate(rping1)}/s)", x >= 0.9)
if ping1 and rping1:
    x = ratio(ping1, rping1)
    target("PING on shard ports 50 x 1 against Redis PING 50 x 1 (reported)", f"{x:.2f}x ({rate(ping1)} vs {rate(rping1)}/s)", None)
if rb and lgc:
    target("loadgen client CPU per request <= redis-benchmark's (Redis PING, 50 x 1)",
           f"{lgc[1]:.1f} us vs {rb_client:.1f} us", lgc[1] <= rb_client)
if t1 and r1:
    x = ratio(t1, r1)
    target("50 conn x depth 1 >= 1.5x Redis+Lua", f"{x:.1f}x", x >= 1.5)
if gap is not None:
    target("1 conn depth 1: p50 within 20 us of raw echo, uniform keys",
           f"+{gap:.1f} us ({tcheck['latency_us']['p50']:.1f} vs {echo['latency_us']['p50']:.1f})", gap <= 20)
if gap_hot is not None:
    target("1 conn depth 1: p50 within 20 us of raw echo, one key (same placement rule as echo)",
           f"+{gap_hot:.1f} us ({thot['latency_us']['p50']:.1f} vs {echo['latency_us']['p50']:.1f})", gap_hot <= 20)
if mem_after:
    gib = int(mem_after) / 1024 / 1024
    target("10M live keys <= 1.5 GiB RSS", f"{gib:.2f} GiB", gib <= 1.5)

e_text = "\n".join(e)
print(e_text)
with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
if not os.environ.get("NO_DOCS"):
    write_section(sys.argv[1], "e2e", e_text)
PY
# The gRPC port against its transport floor and Limitador: benches/grpc_compare.sh owns section:grpc.
[ -n "${RENDER_ONLY:-}${NO_GRPC:-}" ] || "$ROOT/benches/grpc_compare.sh"
