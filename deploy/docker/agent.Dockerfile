# pgfleet-agent, as a container (for the Kubernetes sidecar in deploy/kubernetes).
#   docker build -f deploy/docker/agent.Dockerfile -t pgfleet-agent .
# Build stage: the workspace, compiled once (protoc is vendored; no system protoc needed).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p pgfleet-agent --bin pgfleet-agent

# Run stage: the binary alone, as an unprivileged user.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/pgfleet-agent --create-home pgfleet
COPY --from=build /src/target/release/pgfleet-agent /usr/local/bin/pgfleet-agent
USER 10001
# Where applications report their pools (PoolReporter).
EXPOSE 7602
ENTRYPOINT ["/usr/local/bin/pgfleet-agent"]
