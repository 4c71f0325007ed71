#!/usr/bin/env python3
"""Drives aperture-py (2.26.0) against the quota and concurrency components of a Tollgate
gRPC compat port.

Usage: aperture_py_sched.py ADDRESS SCENARIO [options]
Prints one JSON object per line on stdout and a final {"event": "done"} line; SDK logging goes
to stderr.

Scenarios:
  hold      --control-point CP --label k=v [--second-timeout S] [--async]
            flow "a" starts and is held; flow "b" starts while "a" runs; "a" ends (FlowEnd);
            flow "c" starts; "b" and "c" end.
  sequence  --control-point CP --label k=v --timeouts S,S,...
            one flow per timeout, in order, each with that check_timeout, each ended at once.
  crowd     --control-point CP --groups JSON --timeout S
            (async) every flow of every group at once: JSON is [{"name":..,"count":N,
            "labels":{..}}, ...]; prints one record per flow.
  pile      --control-point CP --label k=v --count N --timeout S --expiry-wait S
            (async) N flows at once, none ended; then one flow every 100 ms (each ended at
            once) until one is admitted, i.e. until the held flows expired
            (max_inflight_duration): prints {"event": "freed", "refused_before": n} or
            {"event": "never_freed"}.
  cache     --control-point CP --label k=v [--async]
            every cache call: set/lookup/delete of a result key and of a global key.
"""

import argparse
import asyncio
import datetime
import json
import logging
import sys
import time

from aperture_sdk._gen.aperture.flowcontrol.check.v1 import check_pb2
from aperture_sdk.client import ApertureClient, FlowParams
from aperture_sdk.client_async import ApertureClientAsync
from sdk_common import emit, grpc_code, labels_of


def decision_record(name, flow, elapsed):
    resp = flow.check_response
    rec = {
        "event": "flow",
        "name": name,
        "should_run": flow.should_run(),
        "decision": flow.decision.name,
        "elapsed_s": elapsed,
        "error_code": grpc_code(flow.error()) if flow.error() else None,
    }
    if resp is not None:
        limiters = []
        for d in resp.limiter_decisions:
            kind = d.WhichOneof("details")
            info = getattr(d, kind) if kind else None
            limiters.append(
                {
                    "policy_name": d.policy_name,
                    "kind": kind,
                    "dropped": d.dropped,
                    "label": getattr(info, "label", ""),
                    "request_id": getattr(info, "request_id", ""),
                    "workload_index": getattr(info, "workload_index", ""),
                    "priority": getattr(info, "priority", 0.0),
                }
            )
        rec.update(
            decision_type=check_pb2.CheckResponse.DecisionType.Name(resp.decision_type),
            reject_reason=check_pb2.CheckResponse.RejectReason.Name(resp.reject_reason),
            http_code=flow.http_response_code(),
            expect_end=resp.expect_end,
            limiters=limiters,
        )
    return rec


def end_record(name, end):
    statuses = []
    if end.flow_end_response is not None:
        statuses = [
            {"request_id": s.inflight_request_ref.request_id, "returned": s.returned, "error": s.error}
            for s in end.flow_end_response.token_return_statuses
        ]
    return {
        "event": "end",
        "name": name,
        "error": str(end.get_error()) if end.get_error() else None,
        "statuses": statuses,
    }


def params(args, timeout_s, labels=None, **extra):
    return FlowParams(
        explicit_labels=labels if labels is not None else labels_of(args.label),
        check_timeout=datetime.timedelta(seconds=timeout_s),
        **extra,
    )


async def maybe(value):
    """Awaits `value` when the async client returned a coroutine."""
    if asyncio.iscoroutine(value):
        return await value
    return value


async def start(client, args, name, timeout_s, labels=None):
    t0 = time.monotonic()
    flow = await maybe(client.start_flow(args.control_point, params(args, timeout_s, labels)))
    emit(**decision_record(name, flow, time.monotonic() - t0))
    return flow


async def end(name, flow):
    emit(**end_record(name, await maybe(flow.end())))


async def scenario_hold(client, args):
    a = await start(client, args, "a", 5)
    b = await start(client, args, "b", args.second_timeout)
    await end("a", a)
    c = await start(client, args, "c", 5)
    await end("b", b)
    await end("c", c)


async def scenario_sequence(client, args):
    for i, timeout in enumerate(float(t) for t in args.timeouts.split(",")):
        flow = await start(client, args, str(i), timeout)
        await end(str(i), flow)


async def scenario_crowd(client, args):
    origin = time.monotonic()

    async def one(name, labels):
        t0 = time.monotonic()
        flow = await client.start_flow(args.control_point, params(args, args.timeout, labels))
        done = time.monotonic()
        rec = decision_record(name, flow, done - t0)
        # When, from the start of the crowd, the flow was sent and answered: the caller tells
        # the admissions made while flows were still arriving from those made after.
        rec.update(started_s=t0 - origin, done_s=done - origin)
        await flow.end()
        return rec

    jobs = []
    for group in json.loads(args.groups):
        jobs += [one(group["name"], group["labels"]) for _ in range(group["count"])]
    for rec in await asyncio.gather(*jobs):
        emit(**rec)


async def scenario_pile(client, args):
    async def one(i):
        t0 = time.monotonic()
        flow = await client.start_flow(args.control_point, params(args, args.timeout))
        return decision_record(f"p{i}", flow, time.monotonic() - t0)

    for rec in await asyncio.gather(*[one(i) for i in range(args.count)]):
        emit(**rec)
    deadline = time.monotonic() + args.expiry_wait
    refused = 0
    while time.monotonic() < deadline:
        flow = await client.start_flow(args.control_point, params(args, 1))
        admitted = flow.should_run() and flow.decision.name == "Accepted"
        await flow.end()
        if admitted:
            emit(event="freed", refused_before=refused)
            return
        refused += 1
        await asyncio.sleep(0.1)  # the poll period, not an ordering wait
    emit(event="never_freed", refused_before=refused)


async def scenario_cache(client, args):
    def err(resp):
        e = resp.get_error()
        return str(e) if e else None

    def lookup(resp):
        value = resp.get_value()
        return {
            "status": resp.get_lookup_status().name,
            "value": value.decode("utf-8") if value else None,
            "error": err(resp),
        }

    key, gkey = "result-" + args.control_point, "global-" + args.control_point
    ttl = datetime.timedelta(seconds=60)
    p = params(args, 5, result_cache_key=key, global_cache_keys=[gkey])
    first = await maybe(client.start_flow(args.control_point, p))
    before = {"result": lookup(first.result_cache()), "global": lookup(first.global_cache(gkey))}
    set_result = err(await maybe(first.set_result_cache("result value", ttl)))
    set_global = err(await maybe(first.set_global_cache(gkey, "global value", ttl)))
    await maybe(first.end())
    second = await maybe(client.start_flow(args.control_point, p))
    after = {"result": lookup(second.result_cache()), "global": lookup(second.global_cache(gkey))}
    delete_result = err(await maybe(second.delete_result_cache()))
    delete_global = err(await maybe(second.delete_global_cache(gkey)))
    await maybe(second.end())
    third = await maybe(client.start_flow(args.control_point, p))
    deleted = {"result": lookup(third.result_cache()), "global": lookup(third.global_cache(gkey))}
    await maybe(third.end())
    emit(
        event="cache",
        should_run=first.should_run(),
        before=before,
        set_result=set_result,
        set_global=set_global,
        after=after,
        delete_result=delete_result,
        delete_global=delete_global,
        deleted=deleted,
    )


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("address")
    ap.add_argument("scenario", choices=["hold", "sequence", "crowd", "pile", "cache"])
    ap.add_argument("--count", type=int, default=10)
    ap.add_argument("--expiry-wait", type=float, default=30)
    ap.add_argument("--control-point", default="cp")
    ap.add_argument("--label", action="append")
    ap.add_argument("--second-timeout", type=float, default=0.3)
    ap.add_argument("--timeouts", default="5")
    ap.add_argument("--groups", default="[]")
    ap.add_argument("--timeout", type=float, default=3)
    ap.add_argument("--async", dest="use_async", action="store_true")
    args = ap.parse_args()

    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    use_async = args.use_async or args.scenario in ("crowd", "pile")
    cls = ApertureClientAsync if use_async else ApertureClient
    client = cls.new_client(address=args.address, insecure=True)
    emit(event="client", kind=cls.__name__)
    await {
        "hold": scenario_hold,
        "sequence": scenario_sequence,
        "crowd": scenario_crowd,
        "pile": scenario_pile,
        "cache": scenario_cache,
    }[args.scenario](client, args)
    from opentelemetry import trace

    trace.get_tracer_provider().force_flush()
    client.close()
    emit(event="done")


if __name__ == "__main__":
    asyncio.run(main())
