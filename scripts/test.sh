#!/usr/bin/env bash
# The test command (README): formatting, lints, every test in the workspace, the
# HTTP API against its OpenAPI document (schemathesis on a live gateway, 3-4 min; skipped
# with OPENCLAW_SKIP_API_CONFORMANCE=1), a 3-minute soak test on the debug build (skipped
# with OPENCLAW_SKIP_SOAK=1), 10,000 SSE streams held open at once through the debug build
# (about 35 s; skipped with OPENCLAW_SKIP_STREAMS=1), the Kubernetes manifests against the API schemas, then the
# cluster test (real containers with docker compose; skipped with one line when no Docker
# engine answers, or with OPENCLAW_SKIP_CLUSTER=1). Starts a throwaway PostgreSQL for the postgres
# session-store tests unless OPENCLAW_TEST_POSTGRES_URL already names one.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
if [ -z "${OPENCLAW_TEST_POSTGRES_URL:-}" ]; then
  eval "$(scripts/start-test-postgres.sh || true)"
  stop_pg() {
    if [ -n "${OPENCLAW_TEST_POSTGRES_DIR:-}" ]; then
      bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
      if [ "$(id -u)" = 0 ]; then run=(runuser -u postgres --); else run=(); fi
      "${run[@]}" "$bindir/pg_ctl" -D "$OPENCLAW_TEST_POSTGRES_DIR/data" -m immediate stop >/dev/null 2>&1 || true
      rm -rf "$OPENCLAW_TEST_POSTGRES_DIR"
    fi
  }
  trap stop_pg EXIT
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "cargo-nextest not found: install it with 'cargo install --locked cargo-nextest'" >&2
  exit 1
fi
cargo nextest run --workspace --no-fail-fast "$@"
if [ "${OPENCLAW_SKIP_API_CONFORMANCE:-0}" = 1 ]; then
  echo "API conformance skipped: OPENCLAW_SKIP_API_CONFORMANCE=1"
else
  scripts/api-conformance.sh
fi
if [ "${OPENCLAW_SKIP_SOAK:-0}" = 1 ]; then
  echo "soak test skipped: OPENCLAW_SKIP_SOAK=1"
else
  # The debug build the tests just used (only the service binaries are linked on top). The
  # RSS slack covers the gateway's chat.send idempotency map, which fills for longer than
  # a 3-minute run can warm up (README "Soak test").
  scripts/soak.sh --debug --duration 3m --sample-secs 15 --rss-slack-mb 12
fi
if [ "${OPENCLAW_SKIP_STREAMS:-0}" = 1 ]; then
  echo "open-streams check skipped: OPENCLAW_SKIP_STREAMS=1"
else
  # A delta every 2 s: the debug build's CPU, not the memory, would bound a faster tick.
  scripts/streams.sh --debug --streams-tick-ms 2000
fi
scripts/validate-k8s.sh
if [ "${OPENCLAW_SKIP_CLUSTER:-0}" = 1 ]; then
  echo "cluster test skipped: OPENCLAW_SKIP_CLUSTER=1"
else
  scripts/cluster-test.sh
fi
