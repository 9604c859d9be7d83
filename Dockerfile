# syntax=docker/dockerfile:1.7
# One image with every binary of the platform: follow-graph, publish,
# fanout-worker, timeline, notify, feedd (and feedctl for operators).
# Each Deployment picks its binary with `command`.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Dependencies are cached across builds: the registry and the target
# directory live in BuildKit cache mounts, so a source change recompiles
# only the workspace's own crates. (No protoc: protos compile with protox.)
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked \
        -p follow-graph -p publish -p timeline -p notify -p feed-all-in-one \
    && mkdir -p /out \
    && cp target/release/follow-graph target/release/publish target/release/fanout-worker \
          target/release/timeline target/release/notify target/release/feedd target/release/feedctl /out/

# The same Debian release as the build stage (same glibc); nothing added but
# the binaries and an unprivileged user. The root filesystem can be mounted
# read-only: state lives in /var/lib/feed (a volume) or in Redis/ScyllaDB.
FROM debian:bookworm-slim
RUN useradd --system --uid 65532 --user-group --no-create-home --shell /usr/sbin/nologin feed
COPY --from=build /out/ /usr/local/bin/
USER 65532:65532
EXPOSE 50051 9090
ENV FEED_CONFIG=/etc/feed/config.toml
ENTRYPOINT ["/usr/local/bin/feedd"]
