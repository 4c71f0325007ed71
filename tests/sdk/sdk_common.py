"""What the aperture-py driver scripts (aperture_py.py, aperture_py_sched.py) share: their
output format (one JSON object per line on stdout) and argument helpers. Imported from the
scripts' own directory, which Python puts on sys.path."""

import json


def emit(**fields):
    """Prints one record as a JSON line (what the Rust tests parse)."""
    print(json.dumps(fields, sort_keys=True), flush=True)


def labels_of(pairs):
    """`["k=v", ...]` (repeated --label options) as a dict."""
    out = {}
    for p in pairs or []:
        k, _, v = p.partition("=")
        out[k] = v
    return out


def grpc_code(err):
    """The gRPC status name of an SDK error, if it carries one."""
    code = getattr(err, "code", None)
    if callable(code):
        return code().name
    return None
