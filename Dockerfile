# The image the deploy recipes (deploy/kubernetes, deploy/ecs) run: the release binary and the CA
# certificates it needs to reach AWS, nothing else, as a non-root user.
#
#   docker build -t rekey:0.1.0 .
#
# CI here does not build it (no container registry is reachable from the test machine); the binary
# inside is the same `cargo build --release --locked` the README's Install section gives.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin rekey \
 && install -m 0755 target/release/rekey /usr/local/bin/rekey

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/rekey --create-home rekey
COPY --from=build /usr/local/bin/rekey /usr/local/bin/rekey
# Journals live here; mount a volume (or use --journal-table) so `rekey resume` survives the task.
ENV REKEY_STATE_DIR=/var/lib/rekey
USER 10001
WORKDIR /var/lib/rekey
ENTRYPOINT ["/usr/local/bin/rekey"]
CMD ["--help"]
