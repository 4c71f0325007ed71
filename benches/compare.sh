#!/usr/bin/env bash
# End-to-end comparison: Tollgate (binary protocol and gRPC compat port) against the
# do-it-yourself baseline, Redis + a Lua token bucket, with the same loadgen scenarios in one
# run, plus the loopback floor (raw TCP echo) and server memory with 10M live keys.
#
# Writes the results between the `section:e2e` and `section:grpc` markers of
# docs/performance.md (nothing else in that file is touched) and keeps every JSON report in
# $OUT (default target/compare).
#
#   benches/compare.sh                 # everything, a few minutes
#   DURATION=3s WARMUP=1s benches/compare.sh
#   MEMORY_KEYS=0 benches/compare.sh   # skip the 10M-key memory run
#   NO_DOCS=1 benches/compare.sh       # print the tables, leave docs/performance.md alone
#   RENDER_ONLY=1 benches/compare.sh   # re-render the tables from the last run's JSON in $OUT
#
# Every load targets 127.0.0.1 only. All processes started here are stopped on exit.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DURATION="${DURATION:-5s}"
WARMUP="${WARMUP:-1s}"
SHARDS="${SHARDS:-2}"
MEMORY_KEYS="${MEMORY_KEYS:-10000000}"
OUT="${OUT:-$ROOT/target/compare}"
TOLLGATE="$ROOT/target/release/tollgate"
LOADGEN="$ROOT/target/release/tollgate-loadgen"
# The limit both systems enforce: 100 tokens per user, 10 more per second.
CAPACITY=100
FILL=10
INTERVAL=1s

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

log() { echo "== $*" >&2; }

LOADAVG_START="$(cut -d' ' -f1-3 /proc/loadavg)"
log "building release binaries"
cargo build --release -q -p tollgate-server -p tollgate-loadgen

log "redis-server"
"$ROOT/scripts/install-redis.sh"

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# --- Tollgate -------------------------------------------------------------------------------
cat > "$OUT/tollgate.yaml" <<EOF
server: { listen: 127.0.0.1:0, grpc: 127.0.0.1:0, shards: $SHARDS }
policies:
  - policy_name: bench
    rate_limiter:
      bucket_capacity: $CAPACITY
      fill_amount: $FILL
      parameters: { interval: $INTERVAL, limit_by_label_key: user }
      selectors: [ { control_point: bench } ]
EOF
# Waits for a line matching $2 in file $1 (up to 30 s) and prints it.
wait_line() {
    local file="$1" pattern="$2" i
    for i in $(seq 300); do
        if grep -q "$pattern" "$file" 2>/dev/null; then
            grep -m1 "$pattern" "$file"
            return 0
        fi
        sleep 0.1
    done
    echo "timed out waiting for '$pattern' in $file:" >&2
    cat "$file" >&2
    return 1
}
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
GRPC="grpc://$TG_GRPC"
REDIS="redis://127.0.0.1:$REDIS_PORT"
ECHO="echo://$ECHO_ADDR"

# CPU seconds (user + system, every thread) a process has used so far.
cpu_seconds() {
    awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$1/stat"
}

# The server process answering TARGET (its CPU is recorded next to each run).
server_pid_for() {
    case "$1" in
        tollgate://*|grpc://*) echo "$TOLLGATE_PID" ;;
        redis://*) echo "$REDIS_PID" ;;
        echo://*) echo "$ECHO_PID" ;;
    esac
}

# lg NAME TARGET ARGS...: one loadgen run, JSON to $OUT/NAME.json, and the CPU the server
# and the loadgen used during it to $OUT/cpu/NAME.json (whole run, connect and warm-up
# included: the report divides by decisions/s x wall time, so warm-up at the same rate is fine).
lg() {
    local name="$1" target="$2" spid cpu_before cpu_after wall user sys
    shift 2
    log "$name: $target $*"
    spid="$(server_pid_for "$target")"
    cpu_before="$(cpu_seconds "$spid")"
    local TIMEFORMAT='%R %U %S'
    # The loadgen's output goes to fd 3 (stderr); only `time`'s line goes to the file.
    { time ${LOADGEN_PREFIX:-} "$LOADGEN" --target "$target" --duration "$DURATION" --warmup "$WARMUP" --quiet \
        --capacity "$CAPACITY" --fill-amount "$FILL" --interval "$INTERVAL" \
        --json "$OUT/$name.json" "$@" 2>&3 | sed -n 's/^\(decisions\/s\|latency\)/   \1/p' >&3 ; } 3>&2 2>"$OUT/cpu/$name.time"
    cpu_after="$(cpu_seconds "$spid")"
    read -r wall user sys < <(tail -n 1 "$OUT/cpu/$name.time")
    printf '{"wall_s": %s, "server_cpu_s": %s, "loadgen_cpu_s": %s}\n' \
        "$wall" "$(awk -v a="$cpu_after" -v b="$cpu_before" 'BEGIN { printf "%.2f", a - b }')" \
        "$(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.2f", u + s }')" > "$OUT/cpu/$name.json"
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
    done
done

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
lg_best "latency-grpc-check" "$GRPC" -c 1 -d 1 --keys 1000000

# gRPC compat port.
lg "grpc-uniform-c50d1" "$GRPC" --distribution uniform --keys 1000000 -c 50 -d 1
lg "grpc-uniform-c8d64" "$GRPC" --distribution uniform --keys 1000000 -c 8 -d 64

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
META
fi  # RENDER_ONLY

# --- Report ----------------------------------------------------------------------------------
export OUT DURATION WARMUP SHARDS REDIS_VERSION MEMORY_KEYS RSS_BEFORE_KB RSS_AFTER_KB
export CAPACITY FILL INTERVAL
# shellcheck disable=SC1091
. "$OUT/meta.env"
CPU_MODEL="$(sed -nE 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"
export GIT_REV CPU_MODEL LOADAVG_START LOADAVG_END MEASURED_AT NO_DOCS="${NO_DOCS:-}"
python3 - "$ROOT/docs/performance.md" <<'PY'
import json, os, sys, datetime

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

def fmt_ratio(x):
    return "n/a" if x is None else f"**{x:.1f}x**"

def cpu(name):
    """(server, loadgen) CPU microseconds per decision for run `name`, or None."""
    r = load(name)
    c = load(os.path.join("cpu", name))
    if not r or not c or r["decisions_per_sec"] <= 0 or c["wall_s"] <= 0:
        return None
    decisions = r["decisions_per_sec"] * c["wall_s"]
    return (c["server_cpu_s"] * 1e6 / decisions, c["loadgen_cpu_s"] * 1e6 / decisions)

def fmt_cpu(name):
    x = cpu(name)
    return "n/a" if x is None else f"{x[0]:.1f} / {x[1]:.1f}"

def acc(r):
    a = r and r.get("accuracy")
    return "n/a" if not a else f"{a['ratio']:.3f} / {a['worst_ratio']:.3f}"

def met(ok):
    return "met" if ok else "**missed**"

dists = [("hot", "hot key (1 key)"), ("uniform", "uniform, 1M keys"), ("zipf", "zipf 1.1, 1M keys")]
loads = [("c50d1", "50 conn x depth 1"), ("c8d64", "8 conn x depth 64"),
         ("c4d8b64", "4 conn x depth 8 x batch 64")]
now = os.environ.get("MEASURED_AT") or datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
cores = os.cpu_count()
e = []
e.append("## End to end: Tollgate vs Redis+Lua (loadgen)")
e.append("")
e.append(f"Measured by `benches/compare.sh` on {now} at commit `{os.environ.get('GIT_REV')}`: "
         f"{cores} cores ({os.environ.get('CPU_MODEL')}) shared by the loadgen, the server and Redis, "
         f"{os.environ['DURATION']} measured after {os.environ['WARMUP']} of warm-up per row "
         f"(load average {os.environ.get('LOADAVG_START')} before, {os.environ.get('LOADAVG_END')} after: "
         "anything above ~2 means other jobs shared the cores too). "
         f"Tollgate: release build, {os.environ['SHARDS']} shards, binary protocol through the "
         f"shard-aware Rust client. Redis {os.environ.get('REDIS_VERSION')}: `EVALSHA` of "
         "`loadgen/src/token_bucket.lua` (same bucket semantics, server `TIME`), through a pipelined "
         "connection of the same shape as Tollgate's client. Both enforce "
         f"{os.environ['CAPACITY']} tokens + {os.environ['FILL']} per {os.environ['INTERVAL']} per user. "
         "Closed loop; `batch 64` = `CHECK_BATCH` frames for Tollgate, 64 `EVALSHA`s per write for Redis. "
         "Accuracy = admitted/allowed tokens, overall / worst key (<= 1 means never over-admitted; "
         "well below 1 is expected when keys are far from saturation). JSON reports: `target/compare/`.")
e.append("")
throughput_rows, cpu_rows = [], []
for d, dn in dists:
    for l, ln in loads:
        tn, rn = f"tollgate-{d}-{l}", f"redis-{d}-{l}"
        t, r = load(tn), load(rn)
        throughput_rows.append(f"| {dn} | {ln} | {rate(t)} | {rate(r)} | {fmt_ratio(ratio(t, r))} | {lat(t)} | {lat(r)} | {acc(t)} | {acc(r)} |")
        cpu_rows.append(f"| {dn} | {ln} | {fmt_cpu(tn)} | {fmt_cpu(rn)} |")
e.append("| keys | load | Tollgate dec/s | Redis+Lua dec/s | Tollgate / Redis | Tollgate p50 / p99 us | Redis p50 / p99 us | accuracy T | accuracy R |")
e.append("|---|---|---:|---:|---:|---:|---:|---:|---:|")
e.extend(throughput_rows)
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
        ("latency-tollgate-ping", "Tollgate PING/PONG (server IO path, no decision; shared port, so the kernel picks the answering shard and both placements may be cross-core)"),
        ("latency-tollgate-check", "Tollgate check, uniform 1M keys (binary protocol; checks alternate between the two shards' connections)"),
        ("latency-tollgate-check-hot", "Tollgate check, one key (one shard connection)"),
        ("latency-redis-check", "Redis+Lua check (EVALSHA)"),
        ("latency-grpc-check", "Tollgate gRPC check (FlowControlService/Check)")]
for name, label in rows:
    r = load(name)
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
        cpu, server = tag.split(".")
        where = f"loadgen on {cpu[3:]}" + ("" if server == "serverany" else f", server on {server[6:]}")
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
tu, ru = load("tollgate-uniform-c4d8b64"), load("redis-uniform-c4d8b64")
tp, rp = load("tollgate-uniform-c8d64"), load("redis-uniform-c8d64")
t1, r1 = load("tollgate-uniform-c50d1"), load("redis-uniform-c50d1")
g1 = load("grpc-uniform-c50d1")
best_pipe = max([x for x in (tu, tp) if x], key=lambda x: x["decisions_per_sec"], default=None)
best_pipe_r = max([x for x in (ru, rp) if x], key=lambda x: x["decisions_per_sec"], default=None)
e.append("Targets (2-core machine, loadgen and server sharing it):")
e.append("")
e.append("| target | measured | verdict |")
e.append("|---|---|---|")
if best_pipe and best_pipe_r:
    x = ratio(best_pipe, best_pipe_r)
    e.append(f"| pipelined uniform 1M keys >= 10x Redis+Lua | {x:.1f}x ({rate(best_pipe)} vs best Redis {rate(best_pipe_r)} dec/s) | {met(x >= 10)} |")
    e.append(f"| pipelined uniform 1M keys >= 1,000,000 dec/s | {rate(best_pipe)} dec/s | {met(best_pipe['decisions_per_sec'] >= 1e6)} |")
if t1 and r1:
    x = ratio(t1, r1)
    e.append(f"| 50 conn x depth 1 >= 1.5x Redis+Lua | {x:.1f}x | {met(x >= 1.5)} |")
if gap is not None:
    e.append(f"| 1 conn depth 1: p50 within 20 us of raw echo, uniform keys | +{gap:.1f} us ({tcheck['latency_us']['p50']:.1f} vs {echo['latency_us']['p50']:.1f}) | {met(gap <= 20)} |")
if gap_hot is not None:
    e.append(f"| 1 conn depth 1: p50 within 20 us of raw echo, one key (same placement rule as echo) | +{gap_hot:.1f} us ({thot['latency_us']['p50']:.1f} vs {echo['latency_us']['p50']:.1f}) | {met(gap_hot <= 20)} |")
if mem_after:
    gib = int(mem_after) / 1024 / 1024
    e.append(f"| 10M live keys <= 1.5 GiB RSS | {gib:.2f} GiB | {met(gib <= 1.5)} |")
if g1 and r1:
    x = ratio(g1, r1)
    e.append(f"| gRPC >= 2x Redis+Lua (50 conn x depth 1) | {x:.1f}x | {met(x >= 2)} |")

g = []
g.append("## gRPC compat port")
g.append("")
g.append(f"Measured by `benches/compare.sh` in the same run as the end-to-end section ({now}): "
         "`tollgate-loadgen --target grpc://...` calls Aperture's `FlowControlService/Check` through "
         "tonic (one HTTP/2 connection per `conn`), uniform over 1M keys, same limit and machine; "
         "the Redis+Lua figures are the same run's.")
g.append("")
g.append("| load | gRPC dec/s | gRPC p50 / p99 us | Redis+Lua dec/s | gRPC / Redis | binary protocol dec/s | CPU us per decision, server / loadgen: gRPC | Redis | binary |")
g.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for l, ln in [("c50d1", "50 conn x depth 1"), ("c8d64", "8 conn x depth 64")]:
    gr, rr, tr = load(f"grpc-uniform-{l}"), load(f"redis-uniform-{l}"), load(f"tollgate-uniform-{l}")
    g.append(f"| {ln} | {rate(gr)} | {lat(gr)} | {rate(rr)} | {fmt_ratio(ratio(gr, rr))} | {rate(tr)} "
             f"| {fmt_cpu(f'grpc-uniform-{l}')} | {fmt_cpu(f'redis-uniform-{l}')} | {fmt_cpu(f'tollgate-uniform-{l}')} |")
gc, rc, tc = cpu("grpc-uniform-c50d1"), cpu("redis-uniform-c50d1"), cpu("tollgate-uniform-c50d1")
if gc and rc and tc and r1:
    g.append("")
    g.append(f"Where the gRPC figure goes (50 conn x depth 1, CPU columns above): a gRPC check costs the "
             f"server {gc[0]:.0f} us of CPU (HTTP/2 framing, HPACK, protobuf, and two thread hops: the tonic "
             f"thread to the owning shard and back), against {tc[0]:.0f} us for the binary protocol and "
             f"{rc[0]:.0f} us for Redis+Lua, and the loadgen's tonic client costs another {gc[1]:.0f} us. On "
             f"{cores} shared cores that caps gRPC near {cores} s / ({gc[0]:.0f} + {gc[1]:.0f}) us = "
             f"{cores * 1e6 / (gc[0] + gc[1]):,.0f} decisions/s, while 2x Redis is "
             f"{2 * r1['decisions_per_sec']:,.0f}/s. Even a server that cost nothing would leave the "
             f"client's {gc[1]:.0f} us, at most {cores * 1e6 / gc[1]:,.0f} checks/s from these cores, so no "
             "server-side change can meet that target with the load generated on the same machine; with the load generated "
             f"elsewhere the server's own cost would cap it near {cores * 1e6 / gc[0]:,.0f}/s. A `perf` profile "
             "of the gRPC thread shows no single hot spot: kernel scheduling and TCP (context switches, "
             "wake-ups) and hyper/h2 stream bookkeeping dominate; Tollgate's own handler code is about 2% of it.")
gl = load("latency-grpc-check")
if gl:
    g.append("")
    g.append(f"One connection, depth 1: p50 {gl['latency_us']['p50']:.1f} us, p99 {gl['latency_us']['p99']:.1f} us.")
if g1 and r1:
    x = ratio(g1, r1)
    g.append("")
    g.append(f"Target gRPC >= 2x Redis+Lua at 50 connections x depth 1: {x:.1f}x, {met(x >= 2)}.")

def replace(text, section, body):
    begin = f"<!-- section:{section} (owner: loadgen) -->"
    end = f"<!-- /section:{section} -->"
    i, j = text.find(begin), text.find(end)
    if i < 0 or j < i:
        sys.exit(f"markers for section {section} not found")
    return text[: i + len(begin)] + "\n" + body + "\n" + text[j:]

e_text, g_text = "\n".join(e), "\n".join(g)
print(e_text)
print()
print(g_text)
if not os.environ.get("NO_DOCS"):
    path = sys.argv[1]
    with open(path) as f:
        doc = f.read()
    doc = replace(doc, "e2e", e_text)
    doc = replace(doc, "grpc", g_text)
    with open(path, "w") as f:
        f.write(doc)
    print(f"updated {path}", file=sys.stderr)
PY
# The gRPC port against its transport floor and Limitador: benches/grpc_compare.sh owns section:grpc.
[ -n "${RENDER_ONLY:-}${NO_GRPC:-}" ] || "$ROOT/benches/grpc_compare.sh"
