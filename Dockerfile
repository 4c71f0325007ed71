# Tollgate's container image. Build and run (docs/deploy.md):
#   podman build -t tollgate:0.1.0 .        # or: buildah bud, docker build
#   podman run --rm --security-opt seccomp=unconfined -p 7070:7070 -p 8089:8089 tollgate:0.1.0
# scripts/build-image.sh builds it and runs `tollgate --help` inside.
#
# Runtime needs (docs/deploy.md, "Container image"): io_uring must not be blocked by the
# seccomp profile (Docker 25+ and containerd 2.x defaults block it, hence
# seccomp=unconfined above), and RLIMIT_MEMLOCK must be at least 512 KiB (Linux's default
# since 5.16 is 8 MiB; otherwise add --ulimit memlock=-1).

# Build stage: the toolchain CI builds and tests with; Cargo.toml's rust-version (1.88) is
# the oldest that may work. Debian bookworm, as the runtime stage, so glibc matches.
FROM docker.io/library/rust:1.95.0-bookworm AS build
WORKDIR /src
COPY . .
# The README's build command (server/tests/deploy.rs checks they stay the same).
RUN cargo build --release --locked

# Runtime stage: the binary and the default policy, run as a non-root user.
FROM docker.io/library/debian:bookworm-slim
RUN groupadd --gid 10001 tollgate \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin tollgate
COPY --from=build /src/target/release/tollgate /usr/local/bin/tollgate
COPY server/default-policy.yaml /etc/tollgate/tollgate.yaml
USER 10001:10001
# What CMD serves: the binary protocol's shared port and the gRPC port. (Shard-aware ports
# follow the shared one, one per shard; gossip needs a `cluster:` section.)
EXPOSE 7070 8089
ENTRYPOINT ["/usr/local/bin/tollgate"]
# The default policy, on every interface of the container rather than its loopback.
CMD ["serve", "--config", "/etc/tollgate/tollgate.yaml", "--listen", "0.0.0.0:7070", "--grpc", "0.0.0.0:8089"]
