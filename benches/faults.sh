#!/usr/bin/env bash
# Faults in a 3-node cluster on this host under steady load: kill -9 one node and restart
# it, drop a fraction of gossip datagrams, SIGSTOP one node for longer than the failure
# detector. Nodes a and b are the healthy ones; c is the victim.
#
# Gossip goes through benches/udp_lossy_proxy.py (each node advertises a proxy port; the
# relay keeps source addresses as peers expect and drops DROP of the datagrams while the
# drop phase runs). No firewall rules, no test hooks in the server.
#
# Load (release loadgen, open loop): one loadgen at RATE checks/s on KEYS keys spread
# round-robin over a and b (its errors are client errors on healthy nodes; its accuracy
# report is the cluster's admitted/allowed for those keys, since every admission for them
# is made by a or b), and one at VICTIM_RATE on other keys against c. Policy: 100 + 10/s
# per key. Before the faults a key of a second policy (20 tokens, no refill) is exhausted
# on a; after each fault, c is asked for it: it must stay exhausted.
#
# Reports, per phase: errors on the healthy nodes, how long until a and b saw c down and
# alive again (`tollgate members`), c's time to ready after restart, the exhausted key's
# decision on c, and the cluster's accuracy. Writes the `section:faults` part of
# docs/performance.md (NO_DOCS=1: print only). Exit 1 if a check fails.
#
#   benches/faults.sh
#   DROP=0.3 STOP_FOR=20 NO_DOCS=1 benches/faults.sh
#
# Every process binds 127.0.0.1 only; all processes started here are stopped on exit.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
RATE="${RATE:-2000}"               # checks/s on the healthy nodes
VICTIM_RATE="${VICTIM_RATE:-500}"  # checks/s on c
KEYS="${KEYS:-200}"
DROP="${DROP:-0.2}"                # fraction of gossip datagrams dropped in the drop phase
DROP_FOR="${DROP_FOR:-30}"         # seconds of the drop phase
DOWN_FOR="${DOWN_FOR:-5}"          # seconds c stays dead after kill -9
STOP_FOR="${STOP_FOR:-15}"         # seconds c stays stopped (failure detector: ~5 s)
SETTLE="${SETTLE:-15}"             # seconds between phases
OUT="${OUT:-$ROOT/target/faults}"
TOLLGATE="$ROOT/target/release/tollgate"
LOADGEN="$ROOT/target/release/tollgate-loadgen"

mkdir -p "$OUT"
rm -f "$OUT"/*.log "$OUT"/*.json "$OUT"/*.yaml "$OUT"/events "$OUT"/drop "$OUT"/proxy.stats
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill -CONT "$pid" 2>/dev/null || true; kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
log() { echo "== $*" >&2; }
now() { date +%s.%N; }
T0=$(now)
event() { echo "$(echo "$(now) - $T0" | bc) $*" >> "$OUT/events"; log "$*"; }

if [ -z "${NO_BUILD:-}" ]; then
    log "building release binaries"
    cargo build --release -q -p tollgate-server -p tollgate-loadgen
fi

# Nine free ports: binary, real gossip and proxy gossip per node.
read -r -a PORTS <<< "$(python3 -c '
import socket
socks = []
for kind in [socket.SOCK_STREAM, socket.SOCK_DGRAM, socket.SOCK_DGRAM] * 3:
    s = socket.socket(socket.AF_INET, kind); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))')"
declare -A LISTEN REAL PROXY
i=0
for n in a b c; do
    LISTEN[$n]=${PORTS[$i]}; REAL[$n]=${PORTS[$((i + 1))]}; PROXY[$n]=${PORTS[$((i + 2))]}
    i=$((i + 3))
done

echo 0 > "$OUT/drop"
python3 "$ROOT/benches/udp_lossy_proxy.py" "$OUT/drop" "$OUT/proxy.stats" \
    "a=${REAL[a]}:${PROXY[a]}" "b=${REAL[b]}:${PROXY[b]}" "c=${REAL[c]}:${PROXY[c]}" \
    2> "$OUT/proxy.log" &
PIDS+=($!)

for n in a b c; do
    seeds=""
    for m in a b c; do [ "$m" = "$n" ] || seeds="$seeds${seeds:+, }127.0.0.1:${PROXY[$m]}"; done
    cat > "$OUT/$n.yaml" <<EOF
server: { listen: 127.0.0.1:${LISTEN[$n]}, grpc: off, shards: 1 }
cluster:
  node_id: node-$n
  gossip: 127.0.0.1:${REAL[$n]}
  advertise: 127.0.0.1:${PROXY[$n]}
  seeds: [ $seeds ]
  stats_interval: 5s
policies:
  - policy_name: steady
    rate_limiter:
      bucket_capacity: 100
      fill_amount: 10
      parameters: { interval: 1s, limit_by_label_key: user }
      selectors: [ { control_point: bench } ]
  - policy_name: exhaust
    rate_limiter:
      bucket_capacity: 20
      fill_amount: 0
      parameters: { interval: 1s, limit_by_label_key: user, max_idle_time: 3600s }
      selectors: [ { control_point: drain } ]
EOF
done

declare -A PID
start_node() { # name
    RUST_LOG=info "$TOLLGATE" serve --config "$OUT/$1.yaml" 2>> "$OUT/$1.log" &
    PID[$1]=$!
    PIDS+=("${PID[$1]}")
}
# Seconds until `tollgate check` answers on node $1 (up to $2 s), or "never".
wait_ready() {
    local start; start=$(now)
    local deadline; deadline=$(echo "$start + $2" | bc)
    while (( $(echo "$(now) < $deadline" | bc) )); do
        if "$TOLLGATE" check --server "127.0.0.1:${LISTEN[$1]}" --control-point none \
            --timeout 200ms > /dev/null 2>&1; then
            echo "$(now) - $start" | bc; return
        fi
        # Exit 1 (rejected) also means it answered; 2 is an error.
        rc=0; "$TOLLGATE" check --server "127.0.0.1:${LISTEN[$1]}" --control-point none \
            --timeout 200ms > /dev/null 2>&1 || rc=$?
        [ "$rc" = 1 ] && { echo "$(now) - $start" | bc; return; }
        sleep 0.1
    done
    echo never
}
# State of node-$2 in node $1's member list ("absent" if not listed, "error" if $1 does
# not answer).
state_of() {
    "$TOLLGATE" members --server "127.0.0.1:${LISTEN[$1]}" --json 2> /dev/null |
        python3 -c 'import json, sys
try:
    ms = json.load(sys.stdin)
except ValueError:
    print("error"); sys.exit()
print(next((m["state"] for m in ms if m["node_id"] == sys.argv[1]), "absent"))' "node-$2" ||
        echo error
}
# Seconds until node $1 sees node-$2 in a state matching $3 (a regex, e.g. "down|absent"),
# up to $4 s, or "never".
wait_state() {
    local start; start=$(now)
    local deadline; deadline=$(echo "$start + $4" | bc)
    while (( $(echo "$(now) < $deadline" | bc) )); do
        [[ "$(state_of "$1" "$2")" =~ ^($3)$ ]] && { echo "$(now) - $start" | bc; return; }
        sleep 0.1
    done
    echo never
}
# The exhausted key's decision on node $1: accepted, rejected or error.
exhausted_on() {
    local rc=0
    "$TOLLGATE" check --server "127.0.0.1:${LISTEN[$1]}" --control-point drain \
        --label user=drained --tokens 1 --timeout 1s > /dev/null 2>&1 || rc=$?
    case $rc in 0) echo accepted ;; 1) echo rejected ;; *) echo error ;; esac
}

for n in a b c; do start_node $n; done
for n in a b c; do
    t=$(wait_ready $n 30)
    [ "$t" != never ] || { log "node $n not ready"; cat "$OUT/$n.log" >&2; exit 1; }
done
for n in a b; do
    [ "$(wait_state $n c alive 30)" != never ] || { log "$n never saw c"; exit 1; }
done
event "cluster up"

# Exhaust one key on a; it must read exhausted on c once replicated.
"$TOLLGATE" check --server "127.0.0.1:${LISTEN[a]}" --control-point drain --label user=drained \
    --tokens 20 > /dev/null
for _ in $(seq 50); do [ "$(exhausted_on c)" = rejected ] && break; sleep 0.1; done
EXHAUSTED_BEFORE=$(exhausted_on c)
event "exhausted key on c before faults: $EXHAUSTED_BEFORE"

TOTAL=$((10 + DOWN_FOR + 30 + SETTLE + DROP_FOR + SETTLE + STOP_FOR + 30 + SETTLE))
"$LOADGEN" --target "tollgate://127.0.0.1:${LISTEN[a]}" "tollgate://127.0.0.1:${LISTEN[b]}" \
    --rate "$RATE" --keys "$KEYS" -c 4 -d 4 --duration "${TOTAL}s" --warmup 0s \
    --capacity 100 --fill-amount 10 --interval 1s --timeout 1s --progress-interval 1s \
    --json "$OUT/healthy.json" > "$OUT/healthy-report.log" 2> "$OUT/healthy.log" &
HEALTHY=$!
PIDS+=("$HEALTHY")
"$LOADGEN" --target "tollgate://127.0.0.1:${LISTEN[c]}" --key-prefix victim- \
    --rate "$VICTIM_RATE" --keys "$KEYS" -c 2 -d 4 --duration "${TOTAL}s" --warmup 0s \
    --timeout 1s --progress-interval 1s --json "$OUT/victim.json" \
    > "$OUT/victim-report.log" 2> "$OUT/victim.log" &
VICTIM=$!
PIDS+=("$VICTIM")
LOAD_T0=$(echo "$(now) - $T0" | bc)
echo "$LOAD_T0 load start" >> "$OUT/events"
sleep 10

# 1. kill -9 c, restart it.
event "kill -9 c"
kill -9 "${PID[c]}"
wait "${PID[c]}" 2>/dev/null || true
DOWN_SEEN_KILL=$(wait_state a c "down|absent" $((DOWN_FOR + 30)))
event "a saw c down after ${DOWN_SEEN_KILL}s"
sleep "$DOWN_FOR"
event "restart c"
start_node c
READY_AFTER_RESTART=$(wait_ready c 30)
event "c ready after ${READY_AFTER_RESTART}s"
REJOIN_A=$(wait_state a c alive 30)
REJOIN_B=$(wait_state b c alive 30)
event "a, b saw c alive: ${REJOIN_A}s, ${REJOIN_B}s after c was ready"
EXHAUSTED_AFTER_RESTART=$(exhausted_on c)
event "exhausted key on c after restart: $EXHAUSTED_AFTER_RESTART"
sleep "$SETTLE"

# 2. Drop a fraction of gossip.
event "drop $DROP of gossip for ${DROP_FOR}s (relay so far: $(cat "$OUT/proxy.stats"))"
read -r FWD0 DROP0 <<< "$(sed -E 's/forwarded=([0-9]+) dropped=([0-9]+)/\1 \2/' "$OUT/proxy.stats")"
echo "$DROP" > "$OUT/drop"
# SWIM may suspect a member while probes are lost (harmless); declaring one down is not.
DOWNS=0
SUSPECTS=0
deadline=$(echo "$(now) + $DROP_FOR" | bc)
while (( $(echo "$(now) < $deadline" | bc) )); do
    for pair in "a b" "a c" "b a" "b c"; do
        s=$(state_of ${pair% *} ${pair#* })
        case $s in
            alive) ;;
            suspect) SUSPECTS=$((SUSPECTS + 1)); event "during drop: ${pair% *} sees ${pair#* } $s" ;;
            *) DOWNS=$((DOWNS + 1)); event "during drop: ${pair% *} sees ${pair#* } $s" ;;
        esac
    done
    sleep 1
done
echo 0 > "$OUT/drop"
sleep 1.5 # the relay writes its counters every second
read -r FWD1 DROP1 <<< "$(sed -E 's/forwarded=([0-9]+) dropped=([0-9]+)/\1 \2/' "$OUT/proxy.stats")"
DROPPED_IN_PHASE=$((DROP1 - DROP0))
RELAYED_IN_PHASE=$((FWD1 - FWD0 + DROPPED_IN_PHASE))
event "drop over: $DROPPED_IN_PHASE of $RELAYED_IN_PHASE datagrams dropped"
EXHAUSTED_AFTER_DROP=$(exhausted_on c)
sleep "$SETTLE"

# 3. SIGSTOP c longer than the failure detector.
event "SIGSTOP c for ${STOP_FOR}s"
kill -STOP "${PID[c]}"
DOWN_SEEN_STOP=$(wait_state a c "down|absent" "$STOP_FOR")
event "a saw c down after ${DOWN_SEEN_STOP}s"
B_DOWN_STOP=$(state_of b c)
remaining=$(echo "$STOP_FOR - ${DOWN_SEEN_STOP/never/$STOP_FOR}" | bc)
sleep "$remaining"
event "SIGCONT c"
kill -CONT "${PID[c]}"
ALIVE_AFTER_CONT_A=$(wait_state a c alive 30)
ALIVE_AFTER_CONT_B=$(wait_state b c alive 30)
event "a, b saw c alive again: ${ALIVE_AFTER_CONT_A}s, ${ALIVE_AFTER_CONT_B}s"
EXHAUSTED_AFTER_STOP=$(exhausted_on c)
EXHAUSTED_ON_A=$(exhausted_on a)
event "exhausted key after SIGSTOP: c $EXHAUSTED_AFTER_STOP, a $EXHAUSTED_ON_A"

wait "$HEALTHY" || { log "healthy loadgen failed"; tail "$OUT/healthy.log" >&2; exit 1; }
wait "$VICTIM" || log "victim loadgen exited non-zero (c was killed under it)"
event "load over"
{
    echo "loadavg=\"$(cut -d' ' -f1-3 /proc/loadavg)\""
    echo "commit=\"$(git rev-parse --short HEAD)\""
    echo "date=\"$(date -u '+%Y-%m-%d %H:%M UTC')\""
} > "$OUT/meta.env"

ROOT="$ROOT" OUT="$OUT" RATE="$RATE" VICTIM_RATE="$VICTIM_RATE" KEYS="$KEYS" DROP="$DROP" \
DROP_FOR="$DROP_FOR" DOWN_FOR="$DOWN_FOR" STOP_FOR="$STOP_FOR" LOAD_T0="$LOAD_T0" \
DOWN_SEEN_KILL="$DOWN_SEEN_KILL" READY_AFTER_RESTART="$READY_AFTER_RESTART" \
REJOIN_A="$REJOIN_A" REJOIN_B="$REJOIN_B" DOWNS="$DOWNS" SUSPECTS="$SUSPECTS" \
DROPPED_IN_PHASE="$DROPPED_IN_PHASE" RELAYED_IN_PHASE="$RELAYED_IN_PHASE" DOWN_SEEN_STOP="$DOWN_SEEN_STOP" \
B_DOWN_STOP="$B_DOWN_STOP" ALIVE_AFTER_CONT_A="$ALIVE_AFTER_CONT_A" \
ALIVE_AFTER_CONT_B="$ALIVE_AFTER_CONT_B" EXHAUSTED_BEFORE="$EXHAUSTED_BEFORE" \
EXHAUSTED_AFTER_RESTART="$EXHAUSTED_AFTER_RESTART" EXHAUSTED_AFTER_DROP="$EXHAUSTED_AFTER_DROP" \
EXHAUSTED_AFTER_STOP="$EXHAUSTED_AFTER_STOP" EXHAUSTED_ON_A="$EXHAUSTED_ON_A" python3 - <<'PY'
import json, os, re, sys

sys.path.insert(0, os.path.join(os.environ["ROOT"], "benches"))
from docs_section import write_section

env = os.environ
out = env["OUT"]
meta = dict(re.findall(r'(\w+)="([^"]*)"', open(os.path.join(out, "meta.env")).read()))
events = []
for line in open(os.path.join(out, "events")):
    t, what = line.split(" ", 1)
    events.append((float(t) - float(env["LOAD_T0"]), what.strip()))

def progress(name):
    rows = []
    for line in open(os.path.join(out, name)):
        m = re.search(r"\[run\s+([\d.]+)s\]\s+([\d,]+) dec/s.*errors ([\d,]+)\s+p99 ([\d.]+)us", line)
        if m:
            rows.append((float(m[1]), int(m[2].replace(",", "")), int(m[3].replace(",", "")), float(m[4])))
    return rows

def when(prefix):
    return next(t for t, w in events if w.startswith(prefix))

healthy, victim = progress("healthy.log"), progress("victim.log")
phases = [
    ("kill -9 c, restart", when("kill -9 c"), when("restart c") + 10),
    (f"drop {float(env['DROP']):.0%} of gossip", when("drop "), when("drop over")),
    ("SIGSTOP c", when("SIGSTOP c"), when("SIGCONT c") + 10),
]
def errors_in(rows, t0, t1):
    return sum(e for t, _, e, _ in rows if t0 <= t <= t1 + 1)
def p99_in(rows, t0, t1):
    ps = [p for t, _, _, p in rows if t0 <= t <= t1 + 1]
    return max(ps) if ps else float("nan")
report = json.load(open(os.path.join(out, "healthy.json")))
acc = report.get("accuracy") or {}
quiet = [p for t, _, _, p in healthy if not any(a - 2 <= t <= b + 2 for _, a, b in phases)]
quiet_p99 = sorted(quiet)[len(quiet) // 2] if quiet else float("nan")

def secs(v):
    return "never" if v == "never" else f"{float(v):.1f} s"

checks = [
    ("no client errors on the healthy nodes", report["errors"] == 0, f"{report['errors']:,} of {report['requests']:,}"),
    ("a, b see c down after kill -9", env["DOWN_SEEN_KILL"] != "never", secs(env["DOWN_SEEN_KILL"])),
    ("c ready after restart, then alive in a and b", "never" not in (env["READY_AFTER_RESTART"], env["REJOIN_A"], env["REJOIN_B"]),
     f"ready {secs(env['READY_AFTER_RESTART'])}, then alive in a {secs(env['REJOIN_A'])}, b {secs(env['REJOIN_B'])}"),
    ("no member declared down during the gossip drop", env["DOWNS"] == "0",
     f"{env['DROPPED_IN_PHASE']} of {env['RELAYED_IN_PHASE']} datagrams dropped; {env['DOWNS']} down and {env['SUSPECTS']} suspect observations in 1 s polls of 4 pairs"),
    ("SIGSTOP: c seen down, alive again after SIGCONT", "never" not in (env["DOWN_SEEN_STOP"], env["ALIVE_AFTER_CONT_A"], env["ALIVE_AFTER_CONT_B"]),
     f"down after {secs(env['DOWN_SEEN_STOP'])} (b: {env['B_DOWN_STOP']}), alive again in a {secs(env['ALIVE_AFTER_CONT_A'])}, b {secs(env['ALIVE_AFTER_CONT_B'])}"),
    ("exhausted key stays exhausted on c", all(env[k] == "rejected" for k in ("EXHAUSTED_BEFORE", "EXHAUSTED_AFTER_RESTART", "EXHAUSTED_AFTER_DROP", "EXHAUSTED_AFTER_STOP", "EXHAUSTED_ON_A")),
     f"before {env['EXHAUSTED_BEFORE']}, after restart {env['EXHAUSTED_AFTER_RESTART']}, after drop {env['EXHAUSTED_AFTER_DROP']}, after SIGSTOP {env['EXHAUSTED_AFTER_STOP']} (a: {env['EXHAUSTED_ON_A']})"),
    ("accuracy on the healthy nodes: admitted/allowed <= 1.05", acc.get("ratio", 9) <= 1.05,
     f"{acc.get('ratio', float('nan')):.4f} (worst key {acc.get('worst_ratio', float('nan')):.3f})"),
]
for what, ok, value in checks:
    print(f"{'ok  ' if ok else 'FAIL'} {what}: {value}")

rows = ["| phase | from (s) | to (s) | errors, healthy nodes | worst 1 s p99, healthy (us) | errors, c |", "|---|---:|---:|---:|---:|---:|"]
for name, a, b in phases:
    rows.append(f"| {name} | {a:.0f} | {b:.0f} | {errors_in(healthy, a, b):,} | {p99_in(healthy, a, b):,.0f} | {errors_in(victim, a, b):,} |")
vict = json.load(open(os.path.join(out, "victim.json"))) if os.path.exists(os.path.join(out, "victim.json")) else {}
section = f"""## Faults: a node killed, gossip lost, a node stopped

Measured by `benches/faults.sh` on {meta.get('date', '?')} at commit `{meta.get('commit', '?')}` (load
average {meta.get('loadavg', '?')} at the end): three release nodes on this 2-core VM (one shard
each; SWIM defaults: probe 1 s, suspect-to-down 3 s), gossip through a UDP relay that can drop
datagrams (`benches/udp_lossy_proxy.py`). Load: {int(env['RATE']):,} checks/s on {int(env['KEYS'])} keys
round-robin over nodes a and b (100 + 10/s per key), {int(env['VICTIM_RATE']):,}/s on other keys
against c. Faults on c: `kill -9`, restart after {env['DOWN_FOR']} s; then {float(env['DROP']):.0%} of all gossip
datagrams dropped for {env['DROP_FOR']} s; then `SIGSTOP` for {env['STOP_FOR']} s. A key of a no-refill
policy was exhausted on a before the faults and asked for on c after each.

| check | result | |
|---|---|---|
""" + "\n".join(f"| {w} | {v} | {'met' if ok else '**missed**'} |" for w, ok, v in checks) + f"""

Per phase (seconds from the start of the load; a phase's window runs 10 s past its end):

""" + "\n".join(rows) + f"""

Outside the phases the healthy nodes' 1 s p99 had a median of {quiet_p99:,.0f} us. Over the whole run
the healthy nodes answered {report['requests']:,} checks ({report['errors']:,} errors, p99
{report['latency_us']['p99']:,.0f} us); c's loadgen saw {vict.get('errors', 0):,} errors of {vict.get('requests', 0):,}
(expected: c was dead or stopped). Accuracy is the loadgen's own ledger: tokens admitted by a and
b together against what the limit allows each key over the run.
"""
print(section)
if not env.get("NO_DOCS"):
    write_section(os.path.join(env["ROOT"], "docs/performance.md"), "faults", section)
if not all(ok for _, ok, _ in checks):
    sys.exit(1)
PY
