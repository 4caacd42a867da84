# Both services in one image; docker-compose.yml picks the binary per service.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p agent-svc -p gateway-http \
 && cp target/release/agent-svc target/release/gateway-http /usr/local/bin/

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /data openclaw && mkdir -p /data && chown openclaw /data
COPY --from=build /usr/local/bin/agent-svc /usr/local/bin/gateway-http /usr/local/bin/
USER openclaw
WORKDIR /data
