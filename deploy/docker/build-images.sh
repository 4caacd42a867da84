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

bins=(gateway-http agent-svc agent-call mock-upstream)
if [ "$skip_cargo" = 0 ]; then
  flag=(); [ "$profile" = release ] && flag=(--release)
  cargo build "${flag[@]}" -p gateway-http -p agent-svc -p openclaw-e2e --bin gateway-http --bin agent-svc --bin agent-call --bin mock-upstream
fi
work="$root/target/docker"
stage="$work/app"
rm -rf "$stage"
mkdir -p "$stage/rootfs/usr/local/bin" "$stage/rootfs/etc/ssl/certs" "$stage/rootfs/etc/openclaw" "$stage/rootfs/tmp" "$stage/data"

# The binaries, without their debug info, and every library they load.
for b in "${bins[@]}"; do
  src="$root/target/$profile/$b"
  [ -x "$src" ] || { echo "missing $src (build it, or drop --skip-cargo)" >&2; exit 1; }
  objcopy --strip-debug "$src" "$stage/rootfs/usr/local/bin/$b"
  # `name => /path (addr)` lines, and the loader's own `/lib64/ld-linux… (addr)` line.
  ldd "$src" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | while read -r lib; do
    real=$(readlink -f "$lib")
    mkdir -p "$stage/rootfs$(dirname "$lib")"
    cp -n "$real" "$stage/rootfs$lib"
  done
done
[ -f /etc/ssl/certs/ca-certificates.crt ] && cp /etc/ssl/certs/ca-certificates.crt "$stage/rootfs/etc/ssl/certs/"
cp "$root/examples/compose.json5" "$stage/rootfs/etc/openclaw/openclaw.json5"
cat > "$stage/rootfs/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
openclaw:x:10001:10001:openclaw:/data:/sbin/nologin
PASSWD
cat > "$stage/rootfs/etc/group" <<'GROUP'
root:x:0:
openclaw:x:10001:
GROUP
printf 'hosts: files dns\n' > "$stage/rootfs/etc/nsswitch.conf"
chmod 1777 "$stage/rootfs/tmp"
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
