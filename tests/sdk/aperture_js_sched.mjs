// Drives @fluxninja/aperture-js (2.5.0) against the concurrency components and the cache of a
// Tollgate gRPC compat port.
//
// Usage: node aperture_js_sched.mjs SDK_JS_DIR ADDRESS SCENARIO CONTROL_POINT [k=v ...]
//   hold:  flow "a" starts and is held; flow "b" starts while "a" runs; "a" ends and the spans
//          are flushed (aperture-js sends no FlowEnd: its span ends the flow); flow "c" starts.
//   cache: every cache call: set/lookup/delete of a result key and of a global key.
// Prints one JSON line per flow / cache record, then {"event":"done"}.
import path from "node:path";
import { pathToFileURL } from "node:url";

const [sdkDir, address, scenario, controlPoint, ...labelArgs] = process.argv.slice(2);
if (!sdkDir || !address || !scenario || !controlPoint) {
  console.error("usage: node aperture_js_sched.mjs SDK_JS_DIR ADDRESS hold|cache CONTROL_POINT [k=v ...]");
  process.exit(2);
}
const labels = Object.fromEntries(labelArgs.map((kv) => [kv.split("=")[0], kv.split("=").slice(1).join("=")]));

const mod = (p) => import(pathToFileURL(path.join(path.resolve(sdkDir), "node_modules", p)).href);
const { ApertureClient } = await mod("@fluxninja/aperture-js/lib/index.js");
const grpcMod = await mod("@grpc/grpc-js/build/src/index.js");
const grpc = grpcMod.default ?? grpcMod;

const emit = (o) => console.log(JSON.stringify(o));
const client = new ApertureClient({ address, channelCredentials: grpc.credentials.createInsecure() });
const errText = (e) => (e ? String(e.message ?? e) : null);

async function start(name, extra = {}) {
  const flow = await client.startFlow(controlPoint, {
    labels,
    grpcCallOptions: { deadline: Date.now() + 5000 },
    ...extra,
  });
  const resp = flow.checkResponse();
  emit({
    event: "flow",
    name,
    should_run: flow.shouldRun(),
    error: errText(flow.error()),
    decision_type: resp ? resp.decisionType : null,
    reject_reason: resp ? resp.rejectReason : null,
    http_code: resp ? flow.httpResponseCode() : null,
    telemetry_flow_labels: resp ? resp.telemetryFlowLabels : null,
  });
  return flow;
}

async function hold() {
  const a = await start("a");
  const b = await start("b");
  a.end();
  b.end();
  // The export is answered after the flows its spans name have ended.
  await client.tracerProvider.forceFlush();
  const c = await start("c");
  c.end();
}

async function cache() {
  const key = `result-${controlPoint}`;
  const gkey = `global-${controlPoint}`;
  const ttl = { seconds: 60, nanos: 0 };
  const params = { resultCacheKey: key, globalCacheKeys: [gkey] };
  const lookup = (r) => {
    const v = r.getValue();
    return { status: r.getLookupStatus(), value: v ? Buffer.from(v).toString("utf8") : null, error: errText(r.getError()) };
  };
  const both = (f) => ({ result: lookup(f.resultCache()), global: lookup(f.globalCache(gkey)) });
  const first = await start("first", params);
  const before = both(first);
  const setResult = errText((await first.setResultCache({ value: Buffer.from("result value"), ttl })).getError());
  const setGlobal = errText((await first.setGlobalCache(gkey, { value: Buffer.from("global value"), ttl })).getError());
  first.end();
  const second = await start("second", params);
  const after = both(second);
  const deleteResult = errText((await second.deleteResultCache()).getError());
  const deleteGlobal = errText((await second.deleteGlobalCache(gkey)).getError());
  second.end();
  const third = await start("third", params);
  const deleted = both(third);
  third.end();
  emit({
    event: "cache",
    before,
    set_result: setResult,
    set_global: setGlobal,
    after,
    delete_result: deleteResult,
    delete_global: deleteGlobal,
    deleted,
  });
}

await { hold, cache }[scenario]();
await client.tracerProvider.forceFlush();
client.shutdown();
emit({ event: "done" });
