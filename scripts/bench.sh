#!/usr/bin/env bash
# Benchmark of the gateway pair (release build). Starts mock-upstream, agent-svc and
# gateway-http on 127.0.0.1 and prints latency, throughput, CPU and memory tables.
#
#   scripts/bench.sh [--requests N] [--concurrency 1,64] [--stream-requests N] [--warmup N] ...
#   scripts/bench.sh --help
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p agent-svc -p gateway-http -p openclaw-e2e --bins
target_dir="$(cargo metadata --format-version 1 --no-deps 2>/dev/null \
  | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
exec "${target_dir:-target}/release/bench" "$@"
