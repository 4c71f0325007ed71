#!/usr/bin/env bash
# Installs the FluxNinja Aperture SDKs that Tollgate's gRPC compat port is tested against:
#   .sdk/py  python venv with aperture-py==2.26.0
#   .sdk/js  node project with @fluxninja/aperture-js@2.5.0 and @grpc/grpc-js
# Idempotent: a stamp file records what was installed; a second run with the same pins returns at once.
# Used by server/tests/sdk_compat.rs and server/grpc/tests/sdk_local.rs (without it they skip,
# or fail under CI).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SDK="$ROOT/.sdk"

# Pins. aperture-py 2.26.0 needs protobuf<5, and only OpenTelemetry 1.24.0 still accepts protobuf 4;
# without these pins pip's resolver gives up.
PY_PKGS=(
  "aperture-py==2.26.0"
  "opentelemetry-api==1.24.0"
  "opentelemetry-sdk==1.24.0"
  "opentelemetry-exporter-otlp==1.24.0"
  "protobuf<5"
)
JS_PKGS=(
  "@fluxninja/aperture-js@2.5.0"
  # aperture-js depends on @grpc/grpc-js ^1.9.5; the scripts need the same (deduplicated) copy
  # for grpc.credentials.createInsecure().
  "@grpc/grpc-js@^1.9.5"
)
STAMP_CONTENT="v2 ${PY_PKGS[*]} | ${JS_PKGS[*]}"
STAMP="$SDK/.installed"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$STAMP_CONTENT" \
      && -x "$SDK/py/bin/python" && -d "$SDK/js/node_modules/@fluxninja/aperture-js" ]]; then
  echo "setup-sdk: already installed ($SDK)"
  exit 0
fi

PYTHON="${PYTHON:-python3}"
command -v "$PYTHON" >/dev/null || { echo "setup-sdk: $PYTHON not found" >&2; exit 1; }
command -v npm >/dev/null || { echo "setup-sdk: npm not found" >&2; exit 1; }

mkdir -p "$SDK"
rm -f "$STAMP"

echo "setup-sdk: python venv at $SDK/py"
if [[ ! -x "$SDK/py/bin/python" ]]; then
  "$PYTHON" -m venv "$SDK/py"
fi
"$SDK/py/bin/python" -m pip install --quiet --disable-pip-version-check "${PY_PKGS[@]}"
"$SDK/py/bin/python" -c 'import aperture_sdk, sys; print("setup-sdk: aperture_sdk ok", file=sys.stderr)'

echo "setup-sdk: node project at $SDK/js"
mkdir -p "$SDK/js"
if [[ ! -f "$SDK/js/package.json" ]]; then
  printf '{\n  "name": "tollgate-sdk-compat",\n  "private": true\n}\n' > "$SDK/js/package.json"
fi
(cd "$SDK/js" && npm install --silent --no-audit --no-fund --save-exact "${JS_PKGS[@]}")

echo "$STAMP_CONTENT" > "$STAMP"
echo "setup-sdk: done"
