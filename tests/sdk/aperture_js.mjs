// Drives @fluxninja/aperture-js (2.5.0) against a Tollgate gRPC compat port.
//
// Usage: node aperture_js.mjs SDK_JS_DIR ADDRESS [COUNT] [CONTROL_POINT] [k=v ...]
//   SDK_JS_DIR: the node project holding node_modules (scripts/setup-sdk.sh: .sdk/js).
// Starts COUNT flows with insecure credentials, ends each, prints one JSON line per flow, then
// {"event":"summary",...} and {"event":"done"} after the client (and its OTLP exporter) shut down.
import path from "node:path";
import { pathToFileURL } from "node:url";

const [sdkDir, address, countArg, controlPointArg, ...labelArgs] = process.argv.slice(2);
if (!sdkDir || !address) {
  console.error("usage: node aperture_js.mjs SDK_JS_DIR ADDRESS [COUNT] [CONTROL_POINT] [k=v ...]");
  process.exit(2);
}
const count = Number(countArg ?? 8);
const controlPoint = controlPointArg ?? "checkout";
const labels = Object.fromEntries(labelArgs.map((kv) => [kv.split("=")[0], kv.split("=").slice(1).join("=")]));

const mod = (p) => import(pathToFileURL(path.join(path.resolve(sdkDir), "node_modules", p)).href);
const { ApertureClient } = await mod("@fluxninja/aperture-js/lib/index.js");
const grpcMod = await mod("@grpc/grpc-js/build/src/index.js");
const grpc = grpcMod.default ?? grpcMod;

const emit = (o) => console.log(JSON.stringify(o));

const client = new ApertureClient({ address, channelCredentials: grpc.credentials.createInsecure() });
let accepted = 0;
for (let i = 0; i < count; i++) {
  const flow = await client.startFlow(controlPoint, {
    labels,
    grpcCallOptions: { deadline: Date.now() + 2000 },
  });
  const resp = flow.checkResponse();
  const err = flow.error();
  const rec = {
    event: "flow",
    i,
    should_run: flow.shouldRun(),
    error: err ? String(err.message ?? err) : null,
    decision_type: resp ? resp.decisionType : null,
    reject_reason: resp ? resp.rejectReason : null,
    http_code: resp ? flow.httpResponseCode() : null,
  };
  if (flow.shouldRun()) accepted++;
  flow.end();
  emit(rec);
}
emit({ event: "summary", accepted, total: count });
// Flush the spans before shutting down the exporter.
await client.tracerProvider.forceFlush();
client.shutdown();
emit({ event: "done" });
