# The pgfleet CLI alone, as a container: `pgfleet top` from a debug pod, say.
#   docker build -f deploy/docker/pgfleet.Dockerfile -t pgfleet .
#   docker run --rm -it pgfleet --collector http://collector.internal:7600 top
# Build stage: the workspace, compiled once (protoc is vendored; no system protoc needed).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p pgfleet-cli --bin pgfleet

# Run stage: the binary alone, as an unprivileged user.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --create-home pgfleet
COPY --from=build /src/target/release/pgfleet /usr/local/bin/pgfleet
USER 10001
ENTRYPOINT ["/usr/local/bin/pgfleet"]
CMD ["servers"]
