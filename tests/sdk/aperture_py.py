#!/usr/bin/env python3
"""Drives aperture-py (2.26.0) against a Tollgate gRPC compat port.

Usage: aperture_py.py ADDRESS SCENARIO [options]
Prints one JSON object per line on stdout (machine-readable; see each scenario), and a final
{"event": "done", ...} line. Python/SDK logging goes to stderr so the caller can check that
nothing logged an error (e.g. a failed OTLP span export).

Scenarios:
  flows  --count N --control-point CP --label k=v ...   start N flows, end each one
  cache  --control-point CP --label k=v ...             set a result cache entry, read it back
  auth   --api-key KEY --ca PEM --control-point CP      one flow over TLS with an API key
  labelled --flows JSON --control-point CP              one flow per element of the JSON list of
                                                        label maps, in order, each ended
"""

import argparse
import datetime
import json
import logging
import sys

from aperture_sdk.client import ApertureClient, FlowParams
from aperture_sdk._gen.aperture.flowcontrol.check.v1 import check_pb2
from sdk_common import emit, grpc_code, labels_of


def flow_record(i, flow):
    resp = flow.check_response
    rec = {
        "event": "flow",
        "i": i,
        "should_run": flow.should_run(),
        "decision": flow.decision.name,
        "error_code": grpc_code(flow.error()) if flow.error() else None,
    }
    if resp is not None:
        rec.update(
            decision_type=check_pb2.CheckResponse.DecisionType.Name(resp.decision_type),
            reject_reason=check_pb2.CheckResponse.RejectReason.Name(resp.reject_reason),
            http_code=flow.http_response_code(),
            flow_label_keys=list(resp.flow_label_keys),
            limiters=[
                {
                    "policy_name": d.policy_name,
                    "dropped": d.dropped,
                    "label": d.rate_limiter_info.label,
                    "remaining": d.rate_limiter_info.tokens_info.remaining,
                }
                for d in resp.limiter_decisions
            ],
        )
    return rec


def scenario_flows(client, args):
    accepted = 0
    for i in range(args.count):
        flow = client.start_flow(
            args.control_point,
            FlowParams(explicit_labels=labels_of(args.label), check_timeout=datetime.timedelta(seconds=2)),
        )
        rec = flow_record(i, flow)
        accepted += 1 if flow.should_run() else 0
        end = flow.end()
        rec["end_error"] = str(end.get_error()) if end.get_error() else None
        emit(**rec)
    emit(event="summary", accepted=accepted, total=args.count)


def scenario_labelled(client, args):
    for i, labels in enumerate(json.loads(args.flows)):
        flow = client.start_flow(
            args.control_point,
            FlowParams(explicit_labels=labels, check_timeout=datetime.timedelta(seconds=2)),
        )
        rec = flow_record(i, flow)
        rec["labels"] = labels
        end = flow.end()
        rec["end_error"] = str(end.get_error()) if end.get_error() else None
        emit(**rec)


def scenario_cache(client, args):
    params = FlowParams(
        explicit_labels=labels_of(args.label),
        result_cache_key=args.key,
        check_timeout=datetime.timedelta(seconds=2),
    )
    first = client.start_flow(args.control_point, params)
    before = first.result_cache()
    upsert = first.set_result_cache(args.value, datetime.timedelta(seconds=60))
    first.end()
    second = client.start_flow(args.control_point, params)
    after = second.result_cache()
    second.end()
    emit(
        event="cache",
        first_should_run=first.should_run(),
        before_status=before.get_lookup_status().name,
        set_error=str(upsert.get_error()) if upsert.get_error() else None,
        after_status=after.get_lookup_status().name,
        after_value=after.get_value().decode("utf-8") if after.get_value() else None,
        after_error=str(after.get_error()) if after.get_error() else None,
    )


def scenario_auth(client, args):
    flow = client.start_flow(
        args.control_point,
        FlowParams(explicit_labels=labels_of(args.label), check_timeout=datetime.timedelta(seconds=5)),
    )
    rec = flow_record(0, flow)
    rec["event"] = "auth"
    flow.end()
    emit(**rec)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("address")
    ap.add_argument("scenario", choices=["flows", "cache", "auth", "labelled"])
    ap.add_argument("--count", type=int, default=8)
    ap.add_argument("--control-point", default="checkout")
    ap.add_argument("--label", action="append")
    ap.add_argument("--flows", default="[]", help="JSON list of label maps (labelled scenario)")
    ap.add_argument("--key", default="result-key")
    ap.add_argument("--value", default="cached-value")
    ap.add_argument("--api-key")
    ap.add_argument("--ca", help="PEM of the CA that signed the server certificate (enables TLS)")
    args = ap.parse_args()

    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    if args.ca:
        import grpc

        with open(args.ca, "rb") as f:
            creds = grpc.ssl_channel_credentials(root_certificates=f.read())
        client = ApertureClient.new_client(address=args.address, api_key=args.api_key, insecure=False, credentials=creds)
    else:
        client = ApertureClient.new_client(address=args.address, api_key=args.api_key, insecure=True)

    {
        "flows": scenario_flows,
        "cache": scenario_cache,
        "auth": scenario_auth,
        "labelled": scenario_labelled,
    }[args.scenario](client, args)
    # The SDK batches its "Aperture Check" spans (BatchSpanProcessor on the global tracer
    # provider) and exports them to the same address; close() only shuts the exporter down, so
    # flush first or the spans are dropped.
    from opentelemetry import trace

    trace.get_tracer_provider().force_flush()
    client.close()
    emit(event="done")


if __name__ == "__main__":
    main()
