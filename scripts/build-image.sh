#!/usr/bin/env bash
# Builds Tollgate's container image from the Dockerfile with the container builder this
# machine has (podman, buildah, or docker with a running engine), then checks the image:
# `tollgate --help` runs in it, the policy it ships passes `tollgate validate`, it runs as a
# non-root user, and `tollgate serve` starts in it and stops cleanly on SIGTERM.
#
# Not part of the test suite (the release build inside takes minutes and needs the base
# images from a registry); server/tests/deploy.rs checks the Dockerfile without building.
#
#   scripts/build-image.sh                        # builds tollgate:VERSION (Cargo.toml)
#   IMAGE=registry.example/tollgate:0.1.0 scripts/build-image.sh
#   BUILDER=buildah scripts/build-image.sh        # choose the builder
#
# When it cannot build on this machine it prints `skipped: REASON` and exits 0: no builder,
# a base image that can be neither found locally nor pulled, or a builder that cannot run a
# container here. It exits 1 when the build or a check of the image fails.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

VERSION="$(sed -n '/^\[workspace.package\]/,/^\[/ s/^version = "\(.*\)"/\1/p' Cargo.toml)"
IMAGE="${IMAGE:-tollgate:$VERSION}"
log() { echo "== $*" >&2; }
skip() { echo "skipped: $*"; exit 0; }
fail() { echo "FAILED: $*" >&2; exit 1; }

# --- 1. a builder ---------------------------------------------------------------------------
why_not=()
usable() {
    case "$1" in
        podman | buildah) command -v "$1" >/dev/null 2>&1 || { why_not+=("$1 is not installed"); return 1; } ;;
        docker)
            command -v docker >/dev/null 2>&1 || { why_not+=("docker is not installed"); return 1; }
            docker info >/dev/null 2>&1 || { why_not+=("docker is installed but its engine is not reachable"); return 1; }
            ;;
        *) fail "BUILDER=$1: use podman, buildah or docker" ;;
    esac
}
if [ -n "${BUILDER:-}" ]; then
    usable "$BUILDER" || skip "${why_not[*]}"
else
    for candidate in podman buildah docker; do
        if usable "$candidate"; then BUILDER="$candidate"; break; fi
    done
    [ -n "${BUILDER:-}" ] || skip "no container builder: $(IFS=';'; echo "${why_not[*]}") (Debian: apt-get install podman, or buildah)"
fi
log "builder: $BUILDER"

# --- 2. the base images the Dockerfile names --------------------------------------------------
mapfile -t BASES < <(awk 'toupper($1) == "FROM" { print $2 }' Dockerfile)
image_present() {
    case "$BUILDER" in
        podman) podman image exists "$1" ;;
        buildah) buildah inspect --type image "$1" >/dev/null 2>&1 ;;
        docker) docker image inspect "$1" >/dev/null 2>&1 ;;
    esac
}
for base in "${BASES[@]}"; do
    if image_present "$base"; then
        log "base image $base: present"
        continue
    fi
    log "pulling $base"
    if ! out="$("$BUILDER" pull "$base" 2>&1)"; then
        skip "cannot pull base image $base: $(echo "$out" | grep -v '^\s*$' | tail -n 1)"
    fi
done
RUNTIME_BASE="${BASES[${#BASES[@]}-1]}"

# --- 3. can this builder run a container here? -------------------------------------------------
# buildah can fall back to chroot isolation where the OCI runtime cannot create containers
# (e.g. no cgroup setup it supports); podman and docker run through their OCI runtime only.
ISOLATION=()
# Containers run with seccomp unconfined: the default profiles block io_uring (docs/deploy.md).
runs_in() { # IMAGE CMD...: run CMD in a fresh container of IMAGE as the image's user
    local image="$1"; shift
    case "$BUILDER" in
        podman) podman run --rm --security-opt seccomp=unconfined --entrypoint "$1" "$image" "${@:2}" ;;
        docker) docker run --rm --security-opt seccomp=unconfined --entrypoint "$1" "$image" "${@:2}" ;;
        buildah)
            local ctr status=0
            ctr="$(buildah from -q --security-opt seccomp=unconfined "$image")"
            buildah run "${ISOLATION[@]}" "$ctr" -- "$@" || status=$?
            buildah rm "$ctr" >/dev/null
            return "$status"
            ;;
    esac
}
if ! out="$(runs_in "$RUNTIME_BASE" true 2>&1)"; then
    reason="$(echo "$out" | grep -v '^\s*$' | head -n 1)"
    if [ "$BUILDER" = buildah ]; then
        ISOLATION=(--isolation chroot)
        out="$(runs_in "$RUNTIME_BASE" true 2>&1)" \
            || skip "buildah cannot run a container here, neither through its OCI runtime ($reason) nor with chroot isolation ($(echo "$out" | head -n 1))"
        log "buildah: the OCI runtime cannot create containers here ($reason); using chroot isolation"
    else
        skip "$BUILDER cannot run a container here: $reason"
    fi
fi

# --- 4. build --------------------------------------------------------------------------------
log "building $IMAGE (a release build: several minutes)"
case "$BUILDER" in
    podman) podman build -t "$IMAGE" . ;;
    buildah) buildah bud "${ISOLATION[@]}" -t "$IMAGE" . ;;
    docker) docker build -t "$IMAGE" . ;;
esac || fail "$BUILDER could not build $IMAGE"

# --- 5. check the image ------------------------------------------------------------------------
case "$BUILDER" in
    buildah) user="$(buildah inspect --type image --format '{{.OCIv1.Config.User}}' "$IMAGE")" ;;
    *) user="$("$BUILDER" image inspect --format '{{.Config.User}}' "$IMAGE")" ;;
esac
case "${user%%:*}" in
    "" | 0 | root) fail "$IMAGE runs as root (USER '$user')" ;;
esac
log "user: $user"

help="$(runs_in "$IMAGE" /usr/local/bin/tollgate --help 2>&1)" || fail "tollgate --help failed in $IMAGE: $help"
grep -q '^Usage: tollgate' <<<"$help" || fail "tollgate --help printed no usage: $help"
echo "$help"

runs_in "$IMAGE" /usr/local/bin/tollgate validate /etc/tollgate/tollgate.yaml \
    || fail "the policy in $IMAGE does not validate"

# serve: the shipped policy on loopback ports the OS picks, stopped by SIGTERM after 3 s; a
# clean stop exits 0 (`timeout --preserve-status` passes the server's own status on).
serve_log="$(runs_in "$IMAGE" timeout --preserve-status -s TERM 3 /usr/local/bin/tollgate serve \
    --config /etc/tollgate/tollgate.yaml --listen 127.0.0.1:0 --grpc 127.0.0.1:0 --shards 1 2>&1)" \
    || fail "tollgate serve did not run and stop cleanly in $IMAGE:
$serve_log"
grep -q 'tollgate ready' <<<"$serve_log" || fail "tollgate serve never got ready in $IMAGE:
$serve_log"
log "serve: ready, stopped cleanly on SIGTERM"

echo "image $IMAGE built with $BUILDER${ISOLATION[*]:+ (${ISOLATION[*]})}: --help, validate, non-root user $user, serve ready and stopped: ok"
