#!/usr/bin/env bash
# Micro-benchmarks: runs the criterion benches of tollgate-benches (decision path at 10K and
# 1M keys, codec, shard hop, bytes per bucket, gRPC handlers) and writes the `section:micro` part of
# docs/performance.md from criterion's own JSON (target/criterion/**/new/*.json), each
# figure next to the baseline measured in the same run.
#
#   benches/micro.sh                  # run everything (about 8 minutes), then write the section
#   NO_DOCS=1 benches/micro.sh        # print the section, leave docs/performance.md alone
#   RENDER_ONLY=1 benches/micro.sh    # re-render from the last run's JSON and memory log
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="$ROOT/target/micro"
mkdir -p "$OUT"

if [ -z "${RENDER_ONLY:-}" ]; then
    cut -d' ' -f1-3 /proc/loadavg > "$OUT/loadavg-start"
    rm -rf "$ROOT/target/criterion"
    cargo bench -p tollgate-benches 2>&1 | tee "$OUT/bench.log"
    cut -d' ' -f1-3 /proc/loadavg > "$OUT/loadavg-end"
    git rev-parse --short HEAD > "$OUT/commit"
    date -u '+%Y-%m-%d %H:%M UTC' > "$OUT/date"
fi

ROOT="$ROOT" OUT="$OUT" python3 - <<'PY'
import glob, json, os, re

root, out = os.environ["ROOT"], os.environ["OUT"]

def read(name):
    with open(os.path.join(out, name)) as f:
        return f.read().strip()

medians = {}
for path in glob.glob(os.path.join(root, "target/criterion/**/new/benchmark.json"), recursive=True):
    with open(path) as f:
        bench = json.load(f)
    with open(os.path.join(os.path.dirname(path), "estimates.json")) as f:
        est = json.load(f)
    m = est["median"]
    medians[bench["full_id"]] = (m["point_estimate"], m["confidence_interval"]["lower_bound"],
                                 m["confidence_interval"]["upper_bound"])

def ns(full_id, per=1):
    if full_id not in medians:
        raise SystemExit(f"micro.sh: no criterion result for {full_id!r}: did the bench run?")
    return tuple(v / per for v in medians[full_id])

def fmt(v):
    p, lo, hi = v
    if p >= 10_000:
        return f"{p / 1000:,.1f} us [{lo / 1000:,.1f}, {hi / 1000:,.1f}]"
    return f"{p:,.1f} ns [{lo:,.1f}, {hi:,.1f}]"

memory = re.findall(r"buckets=(\d+) bytes/bucket=([\d.]+) \(table ([\d.]+) \+ long-key heap slices ([\d.]+); avg key ([\d.]+) bytes",
                    read("bench.log"))
if not memory:
    raise SystemExit("micro.sh: no bucket_memory line in bench.log")

# (name, label, criterion id, baseline id or None, iterations per criterion iteration)
BENCHES = [
    ("d1m", "decision, 1M keys: check (plan + hash + lookup + update)", "decision_1M_keys/check (plan + take)",
     "decision_1M_keys/baseline: hashbrown lookup + increment", 1),
    ("t1m", "decision, 1M keys: store.take (hash + lookup + update)", "decision_1M_keys/store.take (hash + lookup + update)",
     "decision_1M_keys/baseline: hashbrown lookup + increment", 1),
    ("d10k", "decision, 10K keys (in cache): check (plan + take)", "decision_10K_keys/check (plan + take)",
     "decision_10K_keys/baseline: hashbrown lookup + increment", 1),
    ("t10k", "decision, 10K keys (in cache): store.take", "decision_10K_keys/store.take (hash + lookup + update)",
     "decision_10K_keys/baseline: hashbrown lookup + increment", 1),
    ("b1m", "decision, 1M keys, batch of 64 (per batch): prefetch pass + take pass", "decision_1M_keys/batch of 64: hashes, store.prefetch_batch, then store.take x64",
     "decision_1M_keys/baseline: hashbrown lookup + increment x64", 1),
    ("n1m", "decision, 1M keys, batch of 64 (per batch): take pass only, no prefetch", "decision_1M_keys/batch of 64: store.take x64, no prefetch",
     "decision_1M_keys/baseline: hashbrown lookup + increment x64", 1),
    ("b10k", "decision, 10K keys, batch of 64 (per batch): prefetch pass + take pass", "decision_10K_keys/batch of 64: hashes, store.prefetch_batch, then store.take x64",
     "decision_10K_keys/baseline: hashbrown lookup + increment x64", 1),
    ("ins", "new key (insert path), per key", "decision_insert/new key (insert path)", None, 512),
    ("codec", "CHECK decode + label walk + CHECK_REPLY encode", "codec/decode CHECK + walk labels + encode CHECK_REPLY",
     "codec/baseline: read the length prefix", 1),
    ("hop0", "one cross-shard hop (idle_spin 0, the default)", "shard_hop/cross-shard decision, idle_spin 0",
     "shard_hop/baseline: local decision on the owner, idle_spin 0", 1),
    ("hop_spin", "one cross-shard hop (server.idle_spin: 100us)", "shard_hop/cross-shard decision, idle_spin 100us",
     "shard_hop/baseline: local decision on the owner, idle_spin 100us", 1),
    ("gcheck", "gRPC `Check` handled: decode, handler with an in-process decision, encode", "grpc_handler/check",
     "grpc_handler/check_floor", 1),
    ("grls", "gRPC `ShouldRateLimit` handled: decode, handler with an in-process decision, encode", "grpc_handler/rls",
     "grpc_handler/rls_floor", 1),
]

rows, m = [], {}
for name, label, full_id, base_id, per in BENCHES:
    v = m[name] = ns(full_id, per)
    b = ns(base_id) if base_id else None
    rows.append((label, fmt(v), fmt(b) if b else "", f"{v[0] / b[0]:.2f}x" if b else ""))
d1m, t1m, d10k, t10k, codec, hop0, hop_spin = (m[k] for k in ("d1m", "t1m", "d10k", "t10k", "codec", "hop0", "hop_spin"))

table = ["| what | median [95% CI] | baseline, same run | ratio |", "|---|---:|---:|---:|"]
table += [f"| {w} | {v} | {b} | {r} |" for w, v, b, r in rows]

mem_rows = ["| live buckets | bytes per bucket | table | long-key heap | avg key bytes |", "|---:|---:|---:|---:|---:|"]
mem_rows += [f"| {int(n):,} | {float(t):.1f} | {float(tb):.1f} | {float(h):.1f} | {float(k):.1f} |" for n, t, tb, h, k in memory]
# The target is about short keys (stored inline); long-key rows add their key.
worst_mem = max(float(t) for _, t, _, _, k in memory if float(k) <= 13)

def verdict(ok):
    return "met" if ok else "**missed**"

targets = [
    "| target | measured | verdict |",
    "|---|---|---|",
    f"| bucket decision (hash + lookup + update) on 1M keys <= 100 ns median | {t1m[0]:.0f} ns (store.take); {d1m[0]:.0f} ns with the selector plan; in cache (10K keys): {t10k[0]:.0f} ns / {d10k[0]:.0f} ns | {verdict(t1m[0] <= 100)} at 1M keys, {verdict(t10k[0] <= 100)} in cache |",
    f"| batch decision path (64 keys: prefetch, then take) at 1M keys <= 1.5x a bare hashbrown lookup + increment of the same 64 keys | {m['b1m'][0] / ns('decision_1M_keys/baseline: hashbrown lookup + increment x64')[0]:.2f}x ({m['b1m'][0] / 64:.0f} ns per decision; {m['n1m'][0] / 64:.0f} ns without the prefetch pass) | {verdict(m['b1m'][0] <= 1.5 * ns('decision_1M_keys/baseline: hashbrown lookup + increment x64')[0])} |",
    f"| CHECK decode + reply encode <= 100 ns | {codec[0]:.0f} ns | {verdict(codec[0] <= 100)} |",
    f"| gRPC handlers, measured and reported (no target of their own: the port's is in section:grpc) | Check {m['gcheck'][0]:,.0f} ns ({m['gcheck'][0] / ns('grpc_handler/check_floor')[0]:.2f}x the floor's handler), ShouldRateLimit {m['grls'][0]:,.0f} ns ({m['grls'][0] / ns('grpc_handler/rls_floor')[0]:.2f}x) | reported |",
    f"| one cross-shard hop, measured and reported | {hop0[0] / 1000:.1f} us idle (both cores parked between hops), {hop_spin[0] / 1000:.1f} us with idle_spin 100us | reported |",
    f"| bytes per live bucket <= 96 plus the key | {worst_mem:.1f} (keys <= 13 bytes inline, so this includes the key) | {verdict(worst_mem <= 96)} |",
]

section = f"""<!-- section:micro (owner: core) -->
## Micro-benchmarks (criterion)

Measured by `benches/micro.sh` (`cargo bench -p tollgate-benches`, criterion medians with 95%
confidence intervals) on {read('date')} at commit `{read('commit')}`, load average
{read('loadavg-start')} before and {read('loadavg-end')} after. Each row has a baseline from the
same run: the machine is a shared 2-core VM, so ratios travel better than nanoseconds.

{chr(10).join(table)}

Bytes per live bucket (`benches/bucket_memory.rs`, a counting global allocator: bytes requested,
before the allocator rounds them up; keys like `user-123456`, then zero-padded to 32 and 100
bytes, past the 13 bytes stored inline; 917,505 was the worst size of the single-table store,
one key past a doubling):

{chr(10).join(mem_rows)}

Targets:

{chr(10).join(targets)}

Reading the decision rows: at 1M keys the table is ~80 MiB, far beyond the 32 MiB L3, and a
uniformly random key costs a DRAM miss for the hashbrown control group and another for the
entry, each also a TLB miss under the VM's nested paging: the baseline, a bare hashbrown
lookup-and-increment on the same keys in the same order, pays the same misses. In a `perf record`
of the 1M-key `store.take` bench, ~93% of the samples inside `BucketStore::take` sit on those two
loads (the control-group load and the key compare). The baseline is cheaper still because its loop body is so small
that the CPU overlaps the next iteration's misses with the current one; `take` (bucket refill
math, insert-or-get) is long enough to stop that overlap. The 10K-key rows keep the table
(~650 KiB) and the keys in L2/L3, so they show the code's cost plus cache (not DRAM) latency:
the ~100 ns a decision costs once its bucket is cached. In the server, popular keys stay cached (zipf rows of the
end-to-end section), and a request's own network round trip dwarfs either figure.

Batch decision rows (`decision.rs`, `batch of 64`, per batch): a `CHECK_BATCH`'s path as the
server runs it: the 64 keys' bucket hashes (`BucketStore::bucket_hash`; the server collects
them while it plans), then `BucketStore::prefetch_batch` in two short loops (each probe start:
segment, the control byte where hashbrown starts probing, that bucket's entry; then each key's
first tag match in its now-arriving control group, the entry a lookup will stop at), then the
take pass, so the 64 DRAM misses overlap. The baseline is a bare hashbrown lookup-and-increment
of the same 64 keys; the row without the prefetch pass shows what the pass buys (end-to-end
section, "CHECK_BATCH at 1M keys").

gRPC handler rows (`grpc_handler.rs`): one request message decoded, awaited through the
service's handler on a current-thread tokio runtime, and its answer encoded, as the compat port
does between HTTP/2 and the wire. Tollgate's handlers decide on an in-process limiter whose
future is ready at once, so the row is the handler's own work (request into flow, decision into
reply, one bucket decision in cache) without the hop to a shard; the baseline is the transport
floor's handler (`benches/src/floor.rs`, a constant reply) on the same request. The whole port,
HTTP/2 and hop included, is in section:grpc.

The cross-shard hop is one check forwarded from shard 0 to its owner, shard 1, and answered,
one at a time: with both executors parked between hops it is two cross-core wake-ups on this
VM (compare the cross-core raw TCP echo in the end-to-end placement table), which `server.idle_spin`
trades for a spinning core. Shard-aware clients avoid the hop altogether.
<!-- /section:micro -->"""

print(section)
if not os.environ.get("NO_DOCS"):
    path = os.path.join(root, "docs/performance.md")
    with open(path) as f:
        doc = f.read()
    new, count = re.subn(r"<!-- section:micro .*?<!-- /section:micro -->", lambda _: section, doc, flags=re.S)
    if count != 1:
        raise SystemExit("micro.sh: docs/performance.md has no section:micro markers")
    with open(path, "w") as f:
        f.write(new)
    print("wrote docs/performance.md (section:micro)")
PY
