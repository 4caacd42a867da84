#!/usr/bin/env bash
# Starts a throwaway PostgreSQL on 127.0.0.1 for the postgres session-store tests and prints
# the URL to use as OPENCLAW_TEST_POSTGRES_URL. Installs Debian's postgresql when missing.
# Usage: eval "$(scripts/start-test-postgres.sh)"   (prints `export OPENCLAW_TEST_POSTGRES_URL=...`)
set -euo pipefail
port="${PGTEST_PORT:-55432}"
bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "$bindir" ] || [ ! -x "$bindir/initdb" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >&2
    bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  else
    echo "postgres not available; the postgres store tests will fail (they need OPENCLAW_TEST_POSTGRES_URL)" >&2
    exit 0
  fi
fi
dir=$(mktemp -d /tmp/openclaw-pg.XXXXXX)
run() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
[ "$(id -u)" = 0 ] && chown postgres "$dir"
run "$bindir/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 >&2
run "$bindir/pg_ctl" -D "$dir/data" -l "$dir/log" -w \
  -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$dir -c fsync=off" start >&2
echo "export OPENCLAW_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:$port/postgres"
echo "export OPENCLAW_TEST_POSTGRES_DIR=$dir"
