#!/usr/bin/env bash
# Benchmark of the gateway pair (release build). Starts mock-upstream, agent-svc and
# gateway-http on 127.0.0.1 and prints latency, throughput, CPU and memory tables.
#
#   scripts/bench.sh [--requests N] [--concurrency 1,64] [--stream-requests N] [--warmup N] ...
#   scripts/bench.sh --help
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/build-bins.sh release
exec "$bin_dir/bench" "$@"
