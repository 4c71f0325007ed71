#!/usr/bin/env python3
"""Compares Tollgate's aperture.flowcontrol.check.v1 proto with the one aperture-py was generated from.

Usage: compare_descriptors.py FILE_DESCRIPTOR_SET_PATH
  FILE_DESCRIPTOR_SET_PATH: Tollgate's encoded descriptor set (tollgate_proto::FILE_DESCRIPTOR_SET).
Prints one JSON line: {"event": "descriptors", "compared": N, "diffs": [...], "services_equal": bool}.
Every message, nested message and enum is compared by field name, number, type, label and type name.
"""

import json
import sys

from aperture_sdk._gen.aperture.flowcontrol.check.v1 import check_pb2
from google.protobuf import descriptor_pb2

PACKAGE = "aperture.flowcontrol.check.v1"


def walk(messages, prefix, out):
    for m in messages:
        name = prefix + m.name
        out[name] = {f.name: [f.number, f.type, f.label, f.type_name.split(".")[-1]] for f in m.field}
        for e in m.enum_type:
            out[name + "." + e.name] = {v.name: v.number for v in e.value}
        walk(m.nested_type, name + ".", out)
    return out


def shape(fdp):
    out = walk(fdp.message_type, "", {})
    for e in fdp.enum_type:
        out[e.name] = {v.name: v.number for v in e.value}
    services = {
        s.name: [[m.name, m.input_type.split(".")[-1], m.output_type.split(".")[-1]] for m in s.method]
        for s in fdp.service
    }
    return out, services


def main():
    fds = descriptor_pb2.FileDescriptorSet()
    with open(sys.argv[1], "rb") as f:
        fds.ParseFromString(f.read())
    ours = [f for f in fds.file if f.package == PACKAGE]
    theirs = descriptor_pb2.FileDescriptorProto()
    check_pb2.DESCRIPTOR.CopyToProto(theirs)
    if len(ours) != 1:
        print(json.dumps({"event": "descriptors", "compared": 0, "diffs": [f"{len(ours)} files in {PACKAGE}"], "services_equal": False}))
        return
    a, sa = shape(ours[0])
    b, sb = shape(theirs)
    diffs = [{"name": k, "ours": a.get(k), "sdk": b.get(k)} for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    print(json.dumps({"event": "descriptors", "compared": len(set(a) | set(b)), "diffs": diffs, "services_equal": sa == sb}))


if __name__ == "__main__":
    main()
