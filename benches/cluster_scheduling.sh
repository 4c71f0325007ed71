#!/usr/bin/env bash
# Quota and concurrency scheduling across a 3-node cluster on this host: is the global
# limit kept when every node queues its own waiters and replicates consumption?
#
# Three release nodes (1 shard each, sync_interval SYNC) run one quota scheduler (QUOTA
# tokens per second, burst QUOTA, one bucket for every flow) and one concurrency scheduler
# (at most LIMIT flows in flight, one counter). Three `tollgate-loadgen flows` runs, one per
# node, load each at the same time for DURATION, open loop above the limits (RATE requests/s
# per node, wait budget WAIT); the concurrency run holds each flow HOLD_MIN..HOLD_MAX.
#
# Reports:
# - quota: tokens admitted by all nodes together, over what the quota allows in the window
#   the admissions took (the QUOTA burst once, plus QUOTA per second);
# - concurrency: the sum over nodes of each node's most flows in flight (an upper bound of
#   the cluster's simultaneous maximum: the nodes' peaks need not coincide), and the sum of
#   the means, over LIMIT.
#
#   benches/cluster_scheduling.sh
#   SYNC=10ms DURATION=20s benches/cluster_scheduling.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
QUOTA="${QUOTA:-100}"
LIMIT="${LIMIT:-12}"
RATE="${RATE:-100}"
DURATION="${DURATION:-10s}"
WAIT="${WAIT:-500ms}"
HOLD_MIN="${HOLD_MIN:-50ms}"
HOLD_MAX="${HOLD_MAX:-150ms}"
SYNC="${SYNC:-50ms}"
OUT="${OUT:-$ROOT/target/cluster-scheduling}"
TOLLGATE="$ROOT/target/release/tollgate"
LOADGEN="$ROOT/target/release/tollgate-loadgen"

mkdir -p "$OUT"
rm -f "$OUT"/*
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
log() { echo "== $*" >&2; }

if [ -z "${NO_BUILD:-}" ]; then
    log "building release binaries"
    cargo build --release -q -p tollgate-server -p tollgate-loadgen
fi

read -r -a PORTS <<< "$(python3 -c '
import socket
socks = []
for kind in [socket.SOCK_STREAM, socket.SOCK_DGRAM] * 3:
    s = socket.socket(socket.AF_INET, kind); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))')"
declare -A LISTEN GOSSIP
i=0
for n in a b c; do LISTEN[$n]=${PORTS[$i]}; GOSSIP[$n]=${PORTS[$((i + 1))]}; i=$((i + 2)); done

for n in a b c; do
    seeds=""
    for m in a b c; do [ "$m" = "$n" ] || seeds="$seeds${seeds:+, }127.0.0.1:${GOSSIP[$m]}"; done
    cat > "$OUT/$n.yaml" <<YAML
server: { listen: 127.0.0.1:${LISTEN[$n]}, grpc: off, admin: off, shards: 1 }
cluster:
  node_id: node-$n
  gossip: 127.0.0.1:${GOSSIP[$n]}
  seeds: [ $seeds ]
  sync_interval: $SYNC
  secret: cluster-scheduling-bench
policies:
  - policy_name: quota
    quota_scheduler:
      bucket_capacity: $QUOTA
      fill_amount: $QUOTA
      rate_limiter: { interval: 1s }
      scheduler:
        decision_deadline_margin: 50ms
        workloads:
          - label_matcher: { match_labels: { tier: gold } }
            parameters: { priority: 4 }
        default_workload_parameters: { priority: 1 }
      selectors: [ { control_point: llm } ]
  - policy_name: pool
    concurrency_scheduler:
      max_concurrency: $LIMIT
      concurrency_limiter: { max_inflight_duration: 60s }
      scheduler: { decision_deadline_margin: 50ms }
      selectors: [ { control_point: db } ]
YAML
    RUST_LOG=warn "$TOLLGATE" serve --config "$OUT/$n.yaml" 2>> "$OUT/$n.log" &
    PIDS+=($!)
done
for n in a b c; do
    for _ in $(seq 1 300); do
        "$TOLLGATE" check --server "127.0.0.1:${LISTEN[$n]}" --control-point none --timeout 200ms \
            > /dev/null 2>&1 && break
        sleep 0.1
    done
done
# Until every node lists three alive members.
for _ in $(seq 1 300); do
    alive=$("$TOLLGATE" members --server "127.0.0.1:${LISTEN[a]}" 2>/dev/null | grep -c alive || true)
    [ "$alive" -ge 3 ] && break
    sleep 0.1
done
log "3 nodes up, members alive: $alive"

cat > "$OUT/quota.yaml" <<YAML
kind: quota
control_point: llm
rate: $RATE
duration: $DURATION
wait: $WAIT
quota: $(python3 -c "print($QUOTA / 3)")
workloads:
  - { name: gold, weight: 1, labels: { tier: gold } }
  - { name: free, weight: 1, labels: { tier: free } }
YAML
cat > "$OUT/concurrency.yaml" <<YAML
kind: concurrency
control_point: db
rate: $RATE
duration: $DURATION
wait: $WAIT
limit: $LIMIT
hold: { min: $HOLD_MIN, max: $HOLD_MAX }
workloads:
  - { name: all, weight: 1, labels: { tenant: t } }
YAML

for run in quota concurrency; do
    log "$run: 3 loadgens x $RATE req/s for $DURATION"
    lg=()
    for n in a b c; do
        "$LOADGEN" flows "$OUT/$run.yaml" --server "127.0.0.1:${LISTEN[$n]}" \
            --json "$OUT/$run-$n.json" > "$OUT/$run-$n.txt" 2>&1 &
        lg+=($!)
    done
    for pid in "${lg[@]}"; do wait "$pid"; done
done

python3 - "$OUT" "$QUOTA" "$LIMIT" "$SYNC" <<'PY'
import json, sys
out, quota, limit, sync = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
def load(run, n):
    with open(f"{out}/{run}-{n}.json") as f:
        return json.load(f)
q = [load("quota", n) for n in "abc"]
c = [load("concurrency", n) for n in "abc"]
def find(d, *keys):
    for k in keys:
        if k in d:
            return d[k]
    raise KeyError(f"none of {keys} in {sorted(d)}")
# Tokens admitted, over what the quota allows in the window the admissions happened in: from
# the first request to the last answer (the runs' longest elapsed time: requests still
# waiting when sending stops are answered up to one budget later), at QUOTA per second plus
# the QUOTA burst once.
admitted = sum(w["admitted_tokens"] for r in q for w in r["workloads"])
window = max(find(r, "elapsed_secs") for r in q)
allowed = quota + quota * window
print(f"sync_interval {sync}, 3 nodes, admissions over {window:.1f} s")
print(f"quota: admitted {admitted:.0f} tokens, allowed {allowed:.0f} (burst {quota:.0f} + {quota:.0f}/s): "
      f"ratio {admitted / allowed:.3f}; {admitted / window:.1f} tokens/s against {quota:.0f}/s")
gold = sum(w["admitted"] for r in q for w in r["workloads"] if w["name"] == "gold")
free = sum(w["admitted"] for r in q for w in r["workloads"] if w["name"] == "free")
print(f"quota: gold (priority 4) : free (priority 1) admitted {gold} : {free} = {gold / max(free, 1):.2f}")
mx = sum(find(r, "max_in_flight") for r in c)
mean = sum(find(r, "mean_in_flight") for r in c)
print(f"concurrency: sum of per-node max in flight {mx} over limit {limit:.0f}: {mx / limit:.3f}; "
      f"sum of means {mean:.2f}: {mean / limit:.3f}")
PY
