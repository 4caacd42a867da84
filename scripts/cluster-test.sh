#!/usr/bin/env bash
# The cluster test: builds the images (no registry), starts PostgreSQL + 3 agent-svc + the
# gateway + a mock upstream with docker compose, and puts them through kills, drains and a
# database outage under load (tests/src/bin/cluster-test). Skips, with one line, when no
# Docker engine answers. Everything is torn down at the end, whatever happened.
#
#   scripts/cluster-test.sh [--profile debug|release]   (default: debug, the test build)
set -euo pipefail
cd "$(dirname "$0")/.."
profile=debug
[ "${1:-}" = --profile ] && profile="$2"
if ! docker info >/dev/null 2>&1; then
  echo "cluster test skipped: no Docker engine answers (docker info failed)"
  exit 0
fi
if docker compose version >/dev/null 2>&1; then compose="docker compose"
elif command -v docker-compose >/dev/null; then compose="docker-compose"
else echo "cluster test skipped: Docker answers but there is no compose (docker compose / docker-compose)"; exit 0
fi
project="openclaw-cluster-$$"
trap '$compose -p "$project" -f docker-compose.yml -f deploy/compose/cluster-test.yml down -v --remove-orphans -t 5 >/dev/null 2>&1 || true' EXIT
deploy/docker/build-images.sh --profile "$profile"
cargo build -q -p openclaw-e2e --bin cluster-test
OPENCLAW_GATEWAY_TOKEN=unused target/debug/cluster-test --compose "$compose" --project "$project"
