#!/usr/bin/env bash
# Open-streams check of the gateway pair: starts mock-upstream, agent-svc and gateway-http on
# 127.0.0.1 and holds 10,000 SSE streams open through them at once, each on its own client
# connection, while the mock trickles a delta into every one; then releases them. Fails unless
# every stream opens and ends with the whole answer and `[DONE]`, and every probe request on
# another connection meanwhile is answered. Prints the RSS per open stream of each process, their
# open files and CPU, and the probes' latency before and during (README "Benchmark"). The bench
# raises its own open-file limit to the hard limit (the services raise theirs too).
#
#   scripts/streams.sh [--debug] [bench options, e.g. --streams-tick-ms 2000]
#   OPENCLAW_STREAMS=N scripts/streams.sh     (another number of streams; not --streams)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/build-bins.sh "${1:-}"
if [ "$profile" = debug ]; then shift; fi
streams="${OPENCLAW_STREAMS:-10000}"
hard="$(ulimit -Hn)"
# Every stream is a socket in the bench and in each of the three services.
if [ "$hard" != unlimited ] && [ "$hard" -lt $((streams + 1024)) ]; then
  if [ "$hard" -lt 2048 ]; then
    echo "streams: the hard open-file limit ($hard) leaves no room for the streams; raise it with 'ulimit -Hn' as root" >&2
    exit 1
  fi
  echo "streams: WARNING: the hard open-file limit ($hard) is below what $streams streams need" \
    "($((streams + 1024))): running $((hard - 1024)) instead (raise it with 'ulimit -Hn' as root)" >&2
  streams=$((hard - 1024))
fi
exec "$bin_dir/bench" --requests 0 --stream-requests 0 --ready-runs 0 \
  --streams "$streams" "$@"
