#!/usr/bin/env bash
# Soak at the bucket cap: a release `tollgate` with a small `server.max_buckets`, one loadgen
# at a steady rate on a fixed set of keys (the traffic that must not suffer) and a second one
# flooding distinct keys far past the cap, for DURATION; then COOLDOWN more seconds of the
# steady load alone, during which the flood's buckets go idle and are swept.
#
# Samples the server's RSS (/proc/PID/status) every SAMPLE seconds, reads the steady load's
# p99 per interval from its progress lines and the shards' live buckets from their
# `buckets` log lines, and checks, after the warm-up (the cap filling up):
#   - 0 errors on both loads;
#   - RSS flat: (max - min) <= RSS_TOLERANCE (default 10%) of its median;
#   - p99 flat: every interval's p99 <= P99_TOLERANCE (default 3) x the median interval;
#   - live buckets at the cap;
#   - memory returns: RSS at the end of the cool-down < 80% of the soak's median.
# Exit 1 if a check fails. Writes the `section:soak` part of docs/performance.md.
#
#   benches/soak.sh                        # 10 minutes + 2 of cool-down
#   DURATION=60 COOLDOWN=90 NO_DOCS=1 benches/soak.sh
#   RENDER_ONLY=1 benches/soak.sh          # re-check and re-render the last run in $OUT
#
# Every load targets 127.0.0.1 only. All processes started here are stopped on exit.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DURATION="${DURATION:-600}"          # seconds of soak
COOLDOWN="${COOLDOWN:-120}"          # seconds of steady load alone afterwards
WARMUP="${WARMUP:-90}"               # seconds excluded from the flatness checks
SAMPLE="${SAMPLE:-10}"               # seconds between RSS samples and progress lines
CAP="${CAP:-1000000}"                # server.max_buckets
SHARDS="${SHARDS:-2}"
STEADY_RATE="${STEADY_RATE:-5000}"   # checks/s on STEADY_KEYS keys
STEADY_KEYS="${STEADY_KEYS:-10000}"
FLOOD_RATE="${FLOOD_RATE:-30000}"    # checks/s, each on a key never seen before
MAX_IDLE="${MAX_IDLE:-60s}"          # the policy's max_idle_time
RSS_TOLERANCE="${RSS_TOLERANCE:-0.10}"
P99_TOLERANCE="${P99_TOLERANCE:-3}"
OUT="${OUT:-$ROOT/target/soak}"
TOLLGATE="$ROOT/target/release/tollgate"
LOADGEN="$ROOT/target/release/tollgate-loadgen"

mkdir -p "$OUT"
if [ -z "${RENDER_ONLY:-}" ]; then
    rm -f "$OUT"/*.log "$OUT"/*.csv "$OUT"/*.json
    PIDS=()
    cleanup() {
        for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
        for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    }
    trap cleanup EXIT
    log() { echo "== $*" >&2; }

    log "building release binaries"
    cargo build --release -q -p tollgate-server -p tollgate-loadgen

    cat > "$OUT/soak.yaml" <<EOF
server: { listen: 127.0.0.1:0, grpc: off, shards: $SHARDS, max_buckets: $CAP }
policies:
  - policy_name: soak
    rate_limiter:
      bucket_capacity: 100
      fill_amount: 10
      parameters: { interval: 1s, limit_by_label_key: user, max_idle_time: $MAX_IDLE }
      selectors: [ { control_point: bench } ]
EOF
    RUST_LOG=info "$TOLLGATE" serve --config "$OUT/soak.yaml" 2> "$OUT/server.log" &
    SERVER=$!
    PIDS+=("$SERVER")
    for _ in $(seq 300); do
        grep -q "tollgate ready" "$OUT/server.log" && break
        sleep 0.1
    done
    LISTEN="$(grep -m1 "tollgate ready" "$OUT/server.log" | sed -E 's/.*listen=([^ ]+).*/\1/')"
    [ -n "$LISTEN" ] || { cat "$OUT/server.log" >&2; exit 1; }
    {
        echo "loadavg_start=\"$(cut -d' ' -f1-3 /proc/loadavg)\""
        echo "commit=\"$(git rev-parse --short HEAD)\""
        echo "date=\"$(date -u '+%Y-%m-%d %H:%M UTC')\""
    } > "$OUT/meta.env"
    log "server $SERVER on $LISTEN: cap $CAP, steady $STEADY_RATE/s, flood $FLOOD_RATE/s, ${DURATION}s + ${COOLDOWN}s"

    rss() { awk '/VmRSS/ {print $2}' "/proc/$SERVER/status"; }
    START=$(date +%s.%N)
    # The steady load: open loop on a fixed key set, for the soak and the cool-down.
    "$LOADGEN" --target "tollgate://$LISTEN" --rate "$STEADY_RATE" --keys "$STEADY_KEYS" \
        --key-prefix steady- -c 4 -d 8 --duration "$((DURATION + COOLDOWN))s" --warmup 0s \
        --progress-interval "${SAMPLE}s" --timeout 1s --json "$OUT/steady.json" \
        > "$OUT/steady-report.log" 2> "$OUT/steady.log" &
    STEADY=$!
    PIDS+=("$STEADY")
    # The flood: every request a key never seen before (seq over a key space far larger
    # than it can reach). The short prefix keeps every flood key within the store's inline
    # key size (13 bytes, up to key 99,999,999,999) for the whole run: with `flood-` the keys
    # reached 14 bytes at key 10,000,000 (~330 s in), and from then on the flood's buckets
    # moved from the inline-key table to the heap-key table (a second key population whose
    # keys cost a heap allocation each: RSS settled ~35% higher), which is a test of a
    # change of key lengths rather than of a steady flood (docs/performance.md, "Soak").
    "$LOADGEN" --target "tollgate://$LISTEN" --rate "$FLOOD_RATE" --distribution seq \
        --keys 1000000000000 --key-prefix f- -c 4 -d 32 --duration "${DURATION}s" \
        --warmup 0s --progress-interval "${SAMPLE}s" --timeout 1s --json "$OUT/flood.json" \
        > "$OUT/flood-report.log" 2> "$OUT/flood.log" &
    FLOOD=$!
    PIDS+=("$FLOOD")
    echo "t_s,rss_kb" > "$OUT/rss.csv"
    while kill -0 "$STEADY" 2>/dev/null; do
        now=$(date +%s.%N)
        echo "$(echo "$now - $START" | bc),$(rss)" >> "$OUT/rss.csv"
        sleep "$SAMPLE"
    done
    wait "$STEADY" || { log "steady loadgen failed"; cat "$OUT/steady.log" >&2; exit 1; }
    wait "$FLOOD" || { log "flood loadgen failed"; cat "$OUT/flood.log" >&2; exit 1; }
    echo "loadavg_end=\"$(cut -d' ' -f1-3 /proc/loadavg)\"" >> "$OUT/meta.env"
fi

ROOT="$ROOT" OUT="$OUT" DURATION="$DURATION" COOLDOWN="$COOLDOWN" WARMUP="$WARMUP" \
CAP="$CAP" SHARDS="$SHARDS" STEADY_RATE="$STEADY_RATE" STEADY_KEYS="$STEADY_KEYS" \
FLOOD_RATE="$FLOOD_RATE" MAX_IDLE="$MAX_IDLE" RSS_TOLERANCE="$RSS_TOLERANCE" \
P99_TOLERANCE="$P99_TOLERANCE" python3 - <<'PY'
import json, os, re, statistics, sys

sys.path.insert(0, os.path.join(os.environ["ROOT"], "benches"))
from docs_section import write_section

env = os.environ
out = env["OUT"]
duration, cooldown, warmup = (float(env[k]) for k in ("DURATION", "COOLDOWN", "WARMUP"))
cap = int(env["CAP"])
meta = dict(re.findall(r'(\w+)="([^"]*)"', open(os.path.join(out, "meta.env")).read()))

def progress(name):
    """(elapsed s, dec/s, errors, p99 us) per progress line of a loadgen."""
    rows = []
    for line in open(os.path.join(out, name)):
        m = re.search(r"\[run\s+([\d.]+)s\]\s+([\d,]+) dec/s.*errors ([\d,]+)\s+p99 ([\d.]+)us", line)
        if m:
            rows.append((float(m[1]), int(m[2].replace(",", "")), int(m[3].replace(",", "")), float(m[4])))
    return rows

steady, flood = progress("steady.log"), progress("flood.log")
rss = [(float(t), int(kb) / 1024) for t, kb in
       (l.strip().split(",") for l in open(os.path.join(out, "rss.csv")).readlines()[1:]) if kb]

# Live buckets: the latest `buckets` line of each shard, in log order.
live, evicted_full, evicted_not_full, refused = {}, {}, {}, {}
for line in open(os.path.join(out, "server.log")):
    m = re.search(r": buckets shard=(\d+) live=(\d+) max=\d+ evicted_full=(\d+) evicted_not_full=(\d+) evicted_idle=\d+ refused=(\d+)", line)
    if m:
        s = int(m[1])
        live[s], evicted_full[s], evicted_not_full[s], refused[s] = (int(m[i]) for i in range(2, 6))
# The live count at the cap: the largest total the log showed during the soak.
peak_live = 0
cur = {}
for line in open(os.path.join(out, "server.log")):
    m = re.search(r": buckets shard=(\d+) live=(\d+)", line)
    if m:
        cur[int(m[1])] = int(m[2])
        peak_live = max(peak_live, sum(cur.values()))

def report(name):
    try:
        return json.load(open(os.path.join(out, name)))
    except (OSError, ValueError):
        return {}

soak_rss = [r for t, r in rss if warmup <= t <= duration]
soak_p99 = [p for t, _, _, p in steady if warmup <= t <= duration]
errors = sum(e for _, _, e, _ in steady) + sum(e for _, _, e, _ in flood)
end_rss = rss[-1][1] if rss else float("nan")
if not soak_rss or not soak_p99:
    sys.exit("soak.sh: no samples after the warm-up: was the run shorter than WARMUP?")
rss_med, p99_med = statistics.median(soak_rss), statistics.median(soak_p99)
rss_spread = (max(soak_rss) - min(soak_rss)) / rss_med
p99_worst = max(soak_p99)
flood_keys = sum(d * 10 for _, d, _, _ in flood)  # dec/s x 10 s intervals, approximately
checks = [
    ("errors on both loads", errors == 0, f"{errors}"),
    (f"RSS flat after {warmup:.0f} s: (max - min) <= {float(env['RSS_TOLERANCE']):.0%} of median",
     rss_spread <= float(env["RSS_TOLERANCE"]),
     f"{min(soak_rss):.1f}-{max(soak_rss):.1f} MiB, median {rss_med:.1f} ({rss_spread:.1%})"),
    (f"steady p99 flat: every {int(float(env.get('SAMPLE', 10)))} s interval <= {env['P99_TOLERANCE']} x median",
     p99_worst <= float(env["P99_TOLERANCE"]) * p99_med,
     f"median {p99_med:,.0f} us, worst {p99_worst:,.0f} us"),
    ("live buckets reach the cap and stay there", peak_live == cap, f"{peak_live:,} of {cap:,}"),
    ("memory returns after the flood: end RSS < 80% of the soak median", end_rss < 0.8 * rss_med,
     f"{end_rss:.1f} MiB at the end vs {rss_med:.1f}"),
]
for what, ok, value in checks:
    print(f"{'ok  ' if ok else 'FAIL'} {what}: {value}")

rows = ["| t (s) | server RSS (MiB) | steady dec/s | steady p99 (us) | flood dec/s |", "|---:|---:|---:|---:|---:|"]
def at(series, t):
    near = [r for r in series if abs(r[0] - t) <= 5]
    return near[0] if near else None
for t in range(60, int(duration + cooldown) + 1, 60):
    r = min(rss, key=lambda x: abs(x[0] - t))[1] if rss else float("nan")
    s, f = at(steady, t), at(flood, t)
    flood_cell = f"{f[1]:,}" if f else "(stopped)"
    rows.append(f"| {t} | {r:.1f} | {s[1]:,} | {s[3]:,.0f} | {flood_cell} |" if s else f"| {t} | {r:.1f} | | | {flood_cell} |")

totals = (sum(evicted_full.values()), sum(evicted_not_full.values()), sum(refused.values()))
section = f"""### Soak at the bucket cap

Measured by `benches/soak.sh` on {meta.get('date', '?')} at commit `{meta.get('commit', '?')}` (load
average {meta.get('loadavg_start', '?')} before, {meta.get('loadavg_end', '?')} after): a release
`tollgate` with {env['SHARDS']} shards and `server.max_buckets: {cap:,}`, one loadgen at
{int(env['STEADY_RATE']):,} checks/s on {int(env['STEADY_KEYS']):,} keys (open loop, 1 s
timeout) for {duration:.0f} s plus {cooldown:.0f} s, and one flooding {int(env['FLOOD_RATE']):,}
never-seen keys a second for {duration:.0f} s (about {flood_keys / cap:.0f}x the cap in all),
policy 100 + 10/s per key, `max_idle_time: {env['MAX_IDLE']}`; the loadgens share the 2 cores
with the server. Checks after {warmup:.0f} s of warm-up (the cap filling up):

| check | result | |
|---|---|---|
""" + "\n".join(f"| {w} | {v} | {'met' if ok else '**missed**'} |" for w, ok, v in checks) + f"""

At the end the shards had evicted {totals[0]:,} full buckets (refilled: no decision changed),
{totals[1]:,} that were not full and refused {totals[2]:,} keys. Every {60} s:

""" + "\n".join(rows) + """
"""
print(section)
if not os.environ.get("NO_DOCS"):
    write_section(os.path.join(env["ROOT"], "docs/performance.md"), "soak", section)
if not all(ok for _, ok, _ in checks):
    sys.exit(1)
PY
