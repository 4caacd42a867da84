# The conventional build, for machines that can pull from a registry: compiles in
# rust:1-bookworm and stages the same runtime as deploy/docker/build-images.sh (which
# needs no registry and is what the tests run): FROM scratch, the binaries and exactly
# their libraries, CA certificates, user 10001, a /data volume.
#
#   docker build -t openclaw:local .
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p gateway-http -p agent-svc -p openclaw-e2e \
      --bin gateway-http --bin agent-svc --bin agent-call --bin mock-upstream \
 && deploy/docker/stage-rootfs.sh target/release /stage examples/compose.json5

FROM scratch
COPY --from=build /stage/rootfs/ /
COPY --from=build --chown=10001:10001 /stage/data /data
ENV PATH=/usr/local/bin
USER 10001:10001
WORKDIR /data
VOLUME /data
EXPOSE 18789 50051
