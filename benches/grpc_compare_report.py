"""Renders the runs of benches/grpc_compare.sh: prints the table, writes $OUT/grpc.json and,
unless NO_DOCS is set, the `section:grpc` of docs/performance.md (argv[1]).

Each h2load figure is the best of its runs (the machine is shared: a neighbour's burst only
ever slows a run down), each ratio is against the floor measured in the same run. Beside them,
round by round, each of Tollgate's RLS runs against the floor's and Limitador's runs and its
own `Check` run of the same round, and the median of those ratios: the best runs of two
servers may come from different moments of a host whose speed drifts, a round's runs from
neighbouring minutes.
"""

import glob
import json
import os
import re
import sys

from docs_section import write_section

OUT = os.environ["OUT"]
SHAPES = [("c50m1", "50 conn x 1 stream"), ("c8m64", "8 conn x 64 streams")]
CALLS = [("rls", "Envoy RLS `ShouldRateLimit`"), ("check", "Aperture `Check`")]
TARGET_FLOOR = 0.8
TARGET_CHECK_VS_RLS = 0.9
# What the issue expects ≥ 0.8x the floor to bring against Limitador, per h2load shape (RLS).
TARGET_VS_LIMITADOR = {"c50m1": 1.25, "c8m64": 1.8}


# Tollgate's threads by the name they are given: the gRPC port's tokio threads
# (`tollgate-grpc-N`), the shards (`shard-N-CPU`; glommio's helper threads share the name),
# and the rest (the main thread, the admin and gossip threads).
THREAD_GROUPS = ("grpc", "shards", "rest")


def thread_groups(words):
    """Sums per thread group from a `thread cpu` (seconds) or `thread sleeps` (voluntary
    context switches) line of `name=value` words."""
    groups = dict.fromkeys(THREAD_GROUPS, 0.0)
    # A thread's name may hold spaces (another server's threads), never `=`.
    for name, seconds in re.findall(r"([^=]+?)=(\d+(?:\.\d+)?)\s*", words):
        group = ("grpc" if name.startswith("tollgate-grpc") else
                 "shards" if name.startswith("shard-") else "rest")
        groups[group] += float(seconds)
    return groups


def parse_h2load(path):
    """One h2load run: requests per second, requests done / failed / errored, data bytes per
    response (a gRPC error is a trailers-only answer: no message bytes), load averages."""
    text = open(path).read()
    finished = re.search(r"^finished in [\d.]+\w*, ([\d.]+) req/s", text, re.M)
    requests = re.search(
        r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored",
        text, re.M)
    traffic = re.search(r"^traffic: .*, [\d.]+\w* \((\d+)\) data", text, re.M)
    loads = re.findall(r"^loadavg (?:before|after): (.*)$", text, re.M)
    cpu = [float(x) for x in re.findall(r"^server cpu (?:before|after): ([\d.]+)$", text, re.M)]
    threads = [thread_groups(x) for x in re.findall(r"^thread cpu (?:before|after): (.*)$", text, re.M)]
    blocked = [thread_groups(x) for x in re.findall(r"^thread sleeps (?:before|after): (.*)$", text, re.M)]
    if not finished or not requests:
        return None
    # The server's CPU covers the warm-up too: spread it over the requests of the whole window
    # at the measured rate.
    window_s = float(os.environ["SECONDS_PER_RUN"]) + float(os.environ["WARMUP_SECONDS"])
    served = float(finished.group(1)) * window_s
    cpu_us = (cpu[1] - cpu[0]) * 1e6 / served if len(cpu) == 2 and served > 0 else None
    thread_cpu_us = ({group: (threads[1].get(group, 0.0) - threads[0].get(group, 0.0)) * 1e6 / served
                      for group in THREAD_GROUPS} if len(threads) == 2 and served > 0 else None)
    # The shards' sleeps per request, over the same window as the CPU.
    shard_sleeps = ((blocked[1]["shards"] - blocked[0]["shards"]) / served
                    if len(blocked) == 2 and served > 0 else None)
    done = int(requests.group(3))
    data = int(traffic.group(1)) if traffic else 0
    per_request = {}
    if os.path.exists(path + ".perf") and done:
        measured = float(finished.group(1)) * float(os.environ["SECONDS_PER_RUN"])
        for line in open(path + ".perf"):
            fields = line.strip().split(",")
            if len(fields) > 2 and fields[0].replace(".", "").isdigit() and measured > 0:
                per_request[fields[2].replace("syscalls:sys_enter_", "")] = float(fields[0]) / measured
    return {
        "perf_per_request": per_request,
        "file": os.path.basename(path),
        "req_per_s": float(finished.group(1)),
        "done": done,
        "failed": int(requests.group(5)),
        "errored": int(requests.group(6)),
        "data_bytes_per_response": data / done if done else 0.0,
        "server_cpu_us_per_request": cpu_us,
        "thread_cpu_us_per_request": thread_cpu_us,
        "shard_sleeps_per_request": shard_sleeps,
        "loadavg": loads,
    }


def best(name):
    """The best of `name`'s runs, with every run's req/s (`runs`) and, by round, the req/s of
    the run each round made (`by_round`: round n is runs/NAME.n.txt)."""
    by_round = {}
    for path in glob.glob(f"{OUT}/runs/{name}.*.txt"):
        r = parse_h2load(path)
        if r:
            by_round[int(path.rsplit(".", 2)[-2])] = r
    if not by_round:
        return None
    runs = [by_round[n] for n in sorted(by_round)]
    top = max(runs, key=lambda r: r["req_per_s"])
    return dict(top, runs=[r["req_per_s"] for r in runs],
                by_round={n: r["req_per_s"] for n, r in by_round.items()})


def loadgen(name):
    try:
        with open(f"{OUT}/runs/{name}.json") as f:
            r = json.load(f)
        text = open(f"{OUT}/runs/{name}.txt").read()
        r["loadavg"] = re.findall(r"^loadavg (?:before|after): (.*)$", text, re.M)
        return r
    except FileNotFoundError:
        return None


def ratio(a, b):
    return a / b if a and b else None


def round_rates(name):
    """req/s of each round's run of `name` (from `best`), in round order: the servers' runs of
    one round follow each other within a minute or two."""
    by_round = (h2.get(name) or {}).get("by_round", {})
    return [by_round.get(n) for n in range(int(os.environ.get("REPEAT", "3")))]


def median(xs):
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2


def fx(x, digits=2):
    return "n/a" if x is None else f"{x:.{digits}f}x"


def rate(x):
    return "n/a" if x is None else f"{x:,.0f}"


def verdict(x, bar):
    if x is None:
        return "n/a"
    return "met" if x >= bar else "**missed**"


h2 = {}
for call, _ in CALLS:
    for shape, _ in SHAPES:
        for who in ("floor", "tollgate", "limitador", "shardfloor", "floor2t", "tollgate2t",
                    "leanhyper", "leanh2"):
            h2[f"{who}-{call}-{shape}"] = best(f"{who}-{call}-{shape}")
lg = {f"loadgen-{who}-check-{shape}": loadgen(f"loadgen-{who}-check-{shape}")
      for who in ("floor", "tollgate") for shape, _ in SHAPES}


def rps(name):
    r = h2.get(name)
    return r["req_per_s"] if r else None


def cpu_us(name):
    r = h2.get(name)
    return r["server_cpu_us_per_request"] if r else None


def us(x):
    return "n/a" if x is None else f"{x:.1f}"


rows = []
for call, call_label in CALLS:
    for shape, shape_label in SHAPES:
        floor, tg, lim = (rps(f"{w}-{call}-{shape}") for w in ("floor", "tollgate", "limitador"))
        rows.append({
            "call": call, "shape": shape, "floor": floor, "tollgate": tg, "limitador": lim,
            "tollgate_vs_floor": ratio(tg, floor), "limitador_vs_floor": ratio(lim, floor),
            "tollgate_vs_limitador": ratio(tg, lim),
            "server_cpu_us": {w: cpu_us(f"{w}-{call}-{shape}") for w in ("floor", "tollgate", "limitador")},
            "label": f"{call_label}, {shape_label}",
        })
lg_rows = []
for shape, shape_label in SHAPES:
    f = lg[f"loadgen-floor-check-{shape}"]
    t = lg[f"loadgen-tollgate-check-{shape}"]
    fr = f["decisions_per_sec"] if f else None
    tr = t["decisions_per_sec"] if t else None
    lg_rows.append({"shape": shape, "label": shape_label, "floor": fr, "tollgate": tr,
                    "tollgate_vs_floor": ratio(tr, fr),
                    "tollgate_p50_p99_us": [t["latency_us"]["p50"], t["latency_us"]["p99"]] if t else None,
                    "errors": t["errors"] if t else None})

# Each target judged on throughput (the measure) and, next to it, on server CPU per
# request (floor's / Tollgate's: the throughput ratio a CPU-bound server would reach with an equal
# share of the cores), which a busy neighbour disturbs far less.
targets = []
for shape, shape_label in SHAPES:
    for call, call_label in CALLS:
        x = ratio(rps(f"tollgate-{call}-{shape}"), rps(f"floor-{call}-{shape}"))
        c = ratio(cpu_us(f"floor-{call}-{shape}"), cpu_us(f"tollgate-{call}-{shape}"))
        targets.append((f"{call_label} >= {TARGET_FLOOR}x floor, {shape_label}", fx(x, 3),
                        verdict(x, TARGET_FLOOR), fx(c, 3), verdict(c, TARGET_FLOOR)))
    x = ratio(rps(f"tollgate-check-{shape}"), rps(f"tollgate-rls-{shape}"))
    c = ratio(cpu_us(f"tollgate-rls-{shape}"), cpu_us(f"tollgate-check-{shape}"))
    targets.append((f"Check within 10% of RLS (Check / RLS >= {TARGET_CHECK_VS_RLS}), {shape_label}",
                    fx(x, 3), verdict(x, TARGET_CHECK_VS_RLS), fx(c, 3), verdict(c, TARGET_CHECK_VS_RLS)))

for shape, shape_label in SHAPES:
    bar = TARGET_VS_LIMITADOR[shape]
    x = ratio(rps(f"tollgate-rls-{shape}"), rps(f"limitador-rls-{shape}"))
    c = ratio(cpu_us(f"limitador-rls-{shape}"), cpu_us(f"tollgate-rls-{shape}"))
    targets.append((f"Envoy RLS Tollgate / Limitador >= {bar}x, {shape_label}", fx(x, 3),
                    verdict(x, bar), fx(c, 3), verdict(c, bar)))

# Round by round: each round's Tollgate RLS run against the floor's and Limitador's next to
# it, and against Tollgate's own `Check` run of the same round.
# Best-of-runs figures may pair runs from different moments of a drifting host; a round's own
# ratio pairs neighbours, and the median of the rounds is the steadier reading.
round_rows = []
round_lines = ["| h2load shape | round | floor RLS req/s | Tollgate RLS req/s | Limitador RLS req/s | "
               "Tollgate `Check` req/s | Tollgate / floor (RLS) | Tollgate / Limitador (RLS) | "
               "`Check` / RLS |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
for shape, shape_label in SHAPES:
    floors, tgs, lims = (round_rates(f"{w}-rls-{shape}") for w in ("floor", "tollgate", "limitador"))
    checks = round_rates(f"tollgate-check-{shape}")
    vs_floor = [ratio(t, f) for t, f in zip(tgs, floors)]
    vs_lim = [ratio(t, l) for t, l in zip(tgs, lims)]
    check_vs_rls = [ratio(c, t) for c, t in zip(checks, tgs)]
    round_rows.append({"shape": shape, "floor": floors, "tollgate": tgs, "limitador": lims,
                       "tollgate_check": checks, "tollgate_vs_floor": vs_floor,
                       "tollgate_vs_limitador": vs_lim, "check_vs_rls": check_vs_rls,
                       "median_vs_floor": median(vs_floor), "median_vs_limitador": median(vs_lim),
                       "median_check_vs_rls": median(check_vs_rls)})
    for n, (f, t, l, c) in enumerate(zip(floors, tgs, lims, checks)):
        round_lines.append(f"| {shape_label} | {n + 1} | {rate(f)} | {rate(t)} | {rate(l)} | {rate(c)} | "
                           f"{fx(vs_floor[n])} | {fx(vs_lim[n])} | {fx(check_vs_rls[n])} |")
    round_lines.append(f"| {shape_label} | **median** | | | | | **{fx(median(vs_floor))}** | "
                       f"**{fx(median(vs_lim))}** | **{fx(median(check_vs_rls))}** |")
round_table = "\n".join(round_lines)

# The floor served on the shards (no target): what a port served there would start from.
sends = lambda r: (None if not r or not r["perf_per_request"] else
                   sum(r["perf_per_request"].get(ev, 0.0) for ev in ("writev", "sendto")))
shard_rows = []
sf_lines = ["| call, h2load shape | floor req/s (tokio, 1 thread) | floor on shards req/s | "
            "shards / tokio | server CPU us per request: tokio / shards | "
            "sends (writev + sendto) per request: tokio / shards |", "|---|---:|---:|---:|---:|---:|"]
for call, call_label in CALLS:
    for shape, shape_label in SHAPES:
        f, s_ = h2.get(f"floor-{call}-{shape}"), h2.get(f"shardfloor-{call}-{shape}")
        fr, sr = rps(f"floor-{call}-{shape}"), rps(f"shardfloor-{call}-{shape}")
        fc, sc = cpu_us(f"floor-{call}-{shape}"), cpu_us(f"shardfloor-{call}-{shape}")
        shard_rows.append({"call": call, "shape": shape, "floor": fr, "shardfloor": sr,
                           "shardfloor_vs_floor": ratio(sr, fr), "server_cpu_us": [fc, sc],
                           "sends_per_request": [sends(f), sends(s_)]})
        fs, ss = sends(f), sends(s_)
        sf_lines.append(f"| {call_label}, {shape_label} | {rate(fr)} | {rate(sr)} | {fx(ratio(sr, fr))} | "
                        f"{us(fc)} / {us(sc)} | {'n/a' if fs is None else f'{fs:.3f}'} / "
                        f"{'n/a' if ss is None else f'{ss:.3f}'} |")
sf_table = "\n".join(sf_lines)

# The floor without tonic (no target, RLS only): hyper over a plain service function, and h2
# alone. Their ratio to the tonic floor is the most a lighter HTTP/2 path could gain.
lean_rows = []
lean_lines = ["| h2load shape (RLS) | floor req/s (tonic) | hyper alone req/s | hyper / tonic | "
              "h2 alone req/s | h2 / tonic | Tollgate / hyper alone | "
              "server CPU us per request: tonic / hyper / h2 |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
for shape, shape_label in SHAPES:
    fr, hr, h2r = (rps(f"{w}-rls-{shape}") for w in ("floor", "leanhyper", "leanh2"))
    tr = rps(f"tollgate-rls-{shape}")
    cpu = [cpu_us(f"{w}-rls-{shape}") for w in ("floor", "leanhyper", "leanh2")]
    lean_rows.append({"shape": shape, "floor": fr, "hyper": hr, "h2": h2r,
                      "hyper_vs_floor": ratio(hr, fr), "h2_vs_floor": ratio(h2r, fr),
                      "tollgate_vs_hyper": ratio(tr, hr), "server_cpu_us": cpu})
    lean_lines.append(f"| {shape_label} | {rate(fr)} | {rate(hr)} | {fx(ratio(hr, fr))} | {rate(h2r)} | "
                      f"{fx(ratio(h2r, fr))} | {fx(ratio(tr, hr))} | {' / '.join(us(c) for c in cpu)} |")
lean_table = "\n".join(lean_lines)

# More gRPC threads (no target): Tollgate with `server.grpc_threads`, the floor with as many.
threads2 = os.environ.get("THREADS2", "2")
t2_rows = []
t2_lines = [f"| call, h2load shape | floor, {threads2} threads req/s | Tollgate, {threads2} threads req/s | "
            f"Tollgate / floor, {threads2} threads each | Tollgate {threads2} threads / 1 thread | "
            f"Tollgate {threads2} threads / Limitador | server CPU us per request: floor / Tollgate, "
            f"{threads2} threads |", "|---|---:|---:|---:|---:|---:|---:|"]
for call, call_label in CALLS:
    for shape, shape_label in SHAPES:
        f2, t2 = rps(f"floor2t-{call}-{shape}"), rps(f"tollgate2t-{call}-{shape}")
        t1, lim = rps(f"tollgate-{call}-{shape}"), rps(f"limitador-{call}-{shape}")
        fc, tc = cpu_us(f"floor2t-{call}-{shape}"), cpu_us(f"tollgate2t-{call}-{shape}")
        t2_rows.append({"call": call, "shape": shape, "floor": f2, "tollgate": t2,
                        "tollgate_vs_floor": ratio(t2, f2), "vs_one_thread": ratio(t2, t1),
                        "vs_limitador": ratio(t2, lim), "server_cpu_us": [fc, tc]})
        t2_lines.append(f"| {call_label}, {shape_label} | {rate(f2)} | {rate(t2)} | {fx(ratio(t2, f2))} | "
                        f"{fx(ratio(t2, t1))} | {fx(ratio(t2, lim))} | {us(fc)} / {us(tc)} |")
t2_table = "\n".join(t2_lines)

# Where Tollgate's CPU goes per request, by thread (no target): its share on the gRPC thread(s)
# against the floor's whole process, and the shards' sleeps that the hop costs.
def sleeps(name):
    r = h2.get(name)
    return r["shard_sleeps_per_request"] if r else None


def per_request(x):
    return "n/a" if x is None else f"{x:.3f}"


def by_thread(split):
    return "n/a" if not split else " / ".join(f"{split[g]:.1f}" for g in THREAD_GROUPS)


split_rows = []
split_lines = ["| call, h2load shape | floor, whole process | Tollgate: gRPC thread / shards / rest "
               "| Tollgate's shard sleeps per request | floor on shards: sleeps per request | "
               f"Tollgate, {threads2} threads: gRPC threads / shards / rest |",
               "|---|---:|---:|---:|---:|---:|"]
have_split = False
for call, call_label in CALLS:
    for shape, shape_label in SHAPES:
        t1, t2 = h2.get(f"tollgate-{call}-{shape}"), h2.get(f"tollgate2t-{call}-{shape}")
        s1 = t1["thread_cpu_us_per_request"] if t1 else None
        s2 = t2["thread_cpu_us_per_request"] if t2 else None
        have_split = have_split or bool(s1 or s2)
        split_rows.append({"call": call, "shape": shape, "floor_cpu_us": cpu_us(f"floor-{call}-{shape}"),
                           "tollgate_thread_cpu_us": s1, "tollgate2t_thread_cpu_us": s2,
                           "tollgate_shard_sleeps": sleeps(f"tollgate-{call}-{shape}"),
                           "shardfloor_sleeps": sleeps(f"shardfloor-{call}-{shape}")})
        split_lines.append(f"| {call_label}, {shape_label} | {us(cpu_us(f'floor-{call}-{shape}'))} | "
                           f"{by_thread(s1)} | {per_request(sleeps(f'tollgate-{call}-{shape}'))} | "
                           f"{per_request(sleeps(f'shardfloor-{call}-{shape}'))} | {by_thread(s2)} |")
split_table = "\n".join(split_lines) if have_split else "(no per-thread CPU figures in this run)"

meta = {k: os.environ.get(k, "") for k in (
    "MEASURED_AT", "GIT_REV", "LOADAVG_START", "LOADAVG_END", "SHARDS", "REPEAT",
    "SECONDS_PER_RUN", "WARMUP_SECONDS", "LIMITADOR_NOTE", "H2LOAD_VERSION")}
with open(f"{OUT}/grpc.json", "w") as f:
    json.dump({"meta": meta, "h2load": h2, "loadgen": lg, "rows": rows, "loadgen_rows": lg_rows,
               "round_rows": round_rows, "shard_floor_rows": shard_rows, "lean_floor_rows": lean_rows, "threads2_rows": t2_rows, "thread_split_rows": split_rows,
               "targets": targets},
              f, indent=2)

lines = []
lines.append("| call, h2load shape | floor req/s | Tollgate req/s | Tollgate / floor | "
             "Limitador req/s | Limitador / floor | Tollgate / Limitador | "
             "server CPU us per request: floor / Tollgate / Limitador |")
lines.append("|---|---:|---:|---:|---:|---:|---:|---:|")
for r in rows:
    c = r["server_cpu_us"]
    lines.append(f"| {r['label']} | {rate(r['floor'])} | {rate(r['tollgate'])} | "
                 f"**{fx(r['tollgate_vs_floor'])}** | {rate(r['limitador'])} | "
                 f"{fx(r['limitador_vs_floor'])} | {fx(r['tollgate_vs_limitador'])} | "
                 f"{us(c['floor'])} / {us(c['tollgate'])} / {us(c['limitador'])} |")
table = "\n".join(lines)
perf_lines = ["| call, h2load shape | writev per request: floor / Tollgate | write per request "
              "(Tollgate: eventfd wake-ups) : floor / Tollgate | context switches per request: floor / Tollgate |",
              "|---|---:|---:|---:|"]
have_perf = False
for call, call_label in CALLS:
    for shape, shape_label in SHAPES:
        f, t = h2.get(f"floor-{call}-{shape}"), h2.get(f"tollgate-{call}-{shape}")
        if not f or not t or not f["perf_per_request"] or not t["perf_per_request"]:
            continue
        have_perf = True
        cells = []
        for ev in ("writev", "write", "context-switches"):
            a, b = f["perf_per_request"].get(ev), t["perf_per_request"].get(ev)
            cells.append(f"{'n/a' if a is None else f'{a:.3f}'} / {'n/a' if b is None else f'{b:.3f}'}")
        perf_lines.append(f"| {call_label}, {shape_label} | " + " | ".join(cells) + " |")
perf_table = "\n".join(perf_lines) if have_perf else "(perf was not available: no syscall counts)"
lg_lines = ["| loadgen `Check`, uniform 1M users | floor dec/s | Tollgate dec/s | Tollgate / floor | "
            "Tollgate p50 / p99 us |", "|---|---:|---:|---:|---:|"]
for r in lg_rows:
    lat = r["tollgate_p50_p99_us"]
    lat = "n/a" if not lat else f"{lat[0]:,.0f} / {lat[1]:,.0f}"
    lg_lines.append(f"| {r['label']} | {rate(r['floor'])} | {rate(r['tollgate'])} | "
                    f"{fx(r['tollgate_vs_floor'])} | {lat} |")
lg_table = "\n".join(lg_lines)
t_lines = ["| target | throughput ratio | verdict | CPU-per-request ratio | verdict |",
           "|---|---:|---|---:|---|"]
t_lines += [f"| {t} | {m} | {v} | {cm} | {cv} |" for t, m, v, cm, cv in targets]
t_table = "\n".join(t_lines)

print(table)
print()
print(round_table)
print()
print(perf_table)
print()
print(split_table)
print()
print(lg_table)
print()
print(sf_table)
print()
print(lean_table)
print()
print(t2_table)
print()
print(t_table)

if os.environ.get("NO_DOCS"):
    sys.exit(0)

notes_path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "grpc_compare_notes.md")
notes = open(notes_path).read().strip() if os.path.exists(notes_path) else ""
section = f"""## gRPC compat port

Measured by `benches/grpc_compare.sh` on {meta['MEASURED_AT']} at commit `{meta['GIT_REV']}`
({meta['H2LOAD_VERSION']}; load average {meta['LOADAVG_START']} before, {meta['LOADAVG_END']} after;
each run's own load averages are in `target/compare/grpc/runs/`). Tollgate runs
{meta['SHARDS']} shards with one rate limiter of 100 requests per second per user. The **floor** is
`grpc_floor` (`benches/src/bin/grpc_floor.rs`): a unary tonic server on the compat port's own
stack (tonic 0.14 over hyper/h2, one current-thread tokio thread, the same HTTP/2 settings)
answering a constant reply. Limitador ({meta['LIMITADOR_NOTE']}) is given the same limit
(`descriptors[0].user`, 100 per 1 s). h2load runs one client thread for {meta['SECONDS_PER_RUN']} s after
{meta['WARMUP_SECONDS']} s of warm-up; each figure is the best of {meta['REPEAT']} runs, the targets
interleaved. h2load sends one body for every request (`grpc_bodies`, made at bench time), so its
rows use one user (`user=h2load`): past the first 100 requests of each second the answer is
OVER_LIMIT / REJECTED, a full decision all the same. All processes share the machine's 2 cores.

{table}

Round by round: the figures above are each server's best run, which may come from
different rounds; here each round's Tollgate RLS run is set against the floor's and
Limitador's RLS runs and Tollgate's `Check` run of the same round, a minute or two apart, and
the median of the rounds is the steadier reading (reported; the verdicts below are on the
best runs).

{round_table}

What each server did per request over the same runs (`perf stat`, whole process; h2load's
best run of each row):

{perf_table}

Where Tollgate's CPU goes, by thread (µs per request, from each thread's CPU time over the
same runs). The floor's whole process is beside it: HTTP/2 and tonic cost Tollgate's gRPC thread
what they cost the floor, so the gRPC thread's excess over it is the handler and the hop's
sending side, and the shards' figure is the decision and the hop's receiving side. A shard
sleeps (glommio's executor parks) whenever it has nothing to run and is woken by the next
batch; each sleep is a voluntary context switch of a shard thread (`voluntary_ctxt_switches` in
`/proc/PID/task/TID/status`, before and after each run, warm-up included).

{split_table}

The loadgen's own gRPC driver (`tollgate-loadgen --target grpc://...`, tonic client, uniform over
1M users) against the same two servers:

{lg_table}

The same floor served the thread-per-core way (`grpc_shard_floor`, `benches/src/bin`): hyper's
HTTP/2 server over glommio on each of the {meta['SHARDS']} shards, accepting with SO_REUSEPORT,
each connection's writes gathered until the shard has run its other ready tasks
(`benches/src/cork.rs`). No target: it is what serving the compat port on the shards would
start from.

{sf_table}

The same floor without tonic (`grpc_lean_floor`, `benches/src/bin`, `ShouldRateLimit` only), on one
current-thread tokio thread as the floor: hyper's HTTP/2 server over a plain service function,
and the h2 crate's server alone. No target: their ratio to the floor is the most a lighter
HTTP/2 path could gain, and Tollgate against the hyper one is how far the port is from it
(its hot calls skip tonic's routes and codec, `server/grpc/src/hot_calls.rs`, but not tonic's
server).

{lean_table}

The port on {threads2} threads (`server.grpc_threads: {threads2}`: each thread its own tokio
runtime and listener on the port, SO_REUSEPORT), against the floor on as many threads (`grpc_floor
ADDR {threads2}`), the same run. No target: the targets below compare the default, one thread,
with the one-thread floor.

{t2_table}

{t_table}

{notes}
"""

write_section(sys.argv[1], "grpc", section)
