#!/usr/bin/env bash
# Soak test of the gateway pair: starts mock-upstream, agent-svc and gateway-http on 127.0.0.1,
# keeps a mixed load on them (JSON, SSE, WebSocket, stable sessions, mid-stream disconnects) for
# --duration (default 30m), samples RSS and open fds of each process every --sample-secs (default
# 60), and fails on any failed request or on RSS or fds that do not plateau (the rule: --help).
#
#   scripts/soak.sh [--duration 30m] [--sample-secs 60] [--concurrency 24] ...   (release build)
#   scripts/soak.sh --debug [...]    (debug build: what the test command builds anyway)
#   scripts/soak.sh --help
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/build-bins.sh "${1:-}"
if [ "$profile" = debug ]; then shift; fi
exec "$bin_dir/soak" "$@"
