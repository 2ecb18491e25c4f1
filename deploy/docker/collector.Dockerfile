# pgfleet-collector and the pgfleet CLI, as a container.
#   docker build -f deploy/docker/collector.Dockerfile -t pgfleet-collector .
# Build stage: the workspace, compiled once (protoc is vendored; no system protoc needed).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p pgfleet-collector -p pgfleet-cli --bin pgfleet-collector --bin pgfleet

# Run stage: the binaries alone, as an unprivileged user, with a volume for the history.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/pgfleet --create-home pgfleet
COPY --from=build /src/target/release/pgfleet-collector /usr/local/bin/pgfleet-collector
COPY --from=build /src/target/release/pgfleet /usr/local/bin/pgfleet
USER 10001
VOLUME /var/lib/pgfleet
# gRPC (agents, tools) and HTTP (/metrics, /healthz).
EXPOSE 7600 7601
ENTRYPOINT ["/usr/local/bin/pgfleet-collector", "--data-dir", "/var/lib/pgfleet", "--listen", "0.0.0.0:7600", "--http-listen", "0.0.0.0:7601"]
