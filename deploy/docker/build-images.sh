#!/usr/bin/env bash
# Builds the container images from what this machine has: no registry is needed.
#
#   deploy/docker/build-images.sh [--profile release|debug] [--skip-cargo] [--no-postgres]
#
# - openclaw:local          gateway-http, agent-svc, agent-call (an internal gRPC caller) and
#                           mock-upstream (one image; compose picks the binary per service). FROM scratch: the binaries built here with
#                           cargo, exactly the shared libraries they load (from ldd), CA
#                           certificates, a non-root user (10001) and a /data volume.
# - openclaw-postgres:local PostgreSQL 15 from Debian's packages: a bookworm root filesystem made
#                           with debootstrap (cached under target/docker/), imported with
#                           `docker import`, plus an entrypoint that takes the same variables as
#                           the official image (POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB).
#
# The images carry their own health checks' tools: `gateway-http --healthcheck`,
# `agent-svc --healthcheck` and `pg_isready`, so no curl is needed.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
profile=release
skip_cargo=0
postgres=1
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile="$2"; shift 2 ;;
    --skip-cargo) skip_cargo=1; shift ;;
    --no-postgres) postgres=0; shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
case "$profile" in release|debug) ;; *) echo "--profile is release or debug" >&2; exit 2 ;; esac

if [ "$skip_cargo" = 0 ]; then
  flag=(); [ "$profile" = release ] && flag=(--release)
  cargo build "${flag[@]}" -p gateway-http -p agent-svc -p openclaw-e2e \
    --bin gateway-http --bin agent-svc --bin agent-call --bin mock-upstream
fi
work="$root/target/docker"
stage="$work/app"
"$root/deploy/docker/stage-rootfs.sh" "$root/target/$profile" "$stage" "$root/examples/compose.json5"
cp "$root/deploy/docker/Dockerfile.runtime" "$stage/Dockerfile"
docker build -q -t openclaw:local "$stage" >/dev/null
echo "built openclaw:local ($(docker image inspect -f '{{.Size}}' openclaw:local | awk '{printf "%.1f MB", $1/1e6}'))"

[ "$postgres" = 1 ] || exit 0
# PostgreSQL: a Debian root filesystem, made once and cached.
pgroot="$work/postgres-rootfs"
if [ ! -x "$pgroot/usr/lib/postgresql/15/bin/postgres" ]; then
  command -v debootstrap >/dev/null || {
    [ "$(id -u)" = 0 ] || { echo "debootstrap is needed (apt-get install debootstrap)" >&2; exit 1; }
    apt-get install -y -qq debootstrap >/dev/null
  }
  rm -rf "$pgroot.tmp"
  mirror=$(sed -n 's/^URIs: *\(http[^ ]*debian\)$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n 1)
  debootstrap --variant=minbase --include=postgresql-15 bookworm "$pgroot.tmp" "${mirror:-http://deb.debian.org/debian}" >"$work/debootstrap.log" 2>&1 \
    || { tail -n 20 "$work/debootstrap.log" >&2; exit 1; }
  # What a database server does not need at run time: package caches, docs, translations,
  # and the JIT compiler (LLVM: the entrypoint runs with jit=off).
  rm -rf "$pgroot.tmp"/var/cache/apt/archives/*.deb "$pgroot.tmp"/var/lib/apt/lists/* \
    "$pgroot.tmp"/usr/share/doc "$pgroot.tmp"/usr/share/man "$pgroot.tmp"/usr/share/info \
    "$pgroot.tmp"/usr/share/locale "$pgroot.tmp"/usr/share/i18n \
    "$pgroot.tmp"/usr/lib/x86_64-linux-gnu/libLLVM-* "$pgroot.tmp"/usr/lib/x86_64-linux-gnu/libz3.so* \
    "$pgroot.tmp"/usr/lib/postgresql/15/lib/llvmjit* "$pgroot.tmp"/usr/lib/postgresql/15/lib/bitcode
  mv "$pgroot.tmp" "$pgroot"
fi
if ! docker image inspect openclaw-postgres-base:local >/dev/null 2>&1; then
  tar -C "$pgroot" -c . | docker import - openclaw-postgres-base:local >/dev/null
fi
docker build -q -t openclaw-postgres:local -f "$root/deploy/docker/Dockerfile.postgres" "$root/deploy/docker" >/dev/null
echo "built openclaw-postgres:local ($(docker image inspect -f '{{.Size}}' openclaw-postgres:local | awk '{printf "%.1f MB", $1/1e6}'))"
