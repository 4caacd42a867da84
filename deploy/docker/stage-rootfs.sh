#!/usr/bin/env bash
# Stages the app image's root filesystem: the binaries in BIN_DIR (debug info stripped),
# exactly the shared libraries they load (from ldd), CA certificates, the default config,
# a non-root user (10001) and /tmp. Used by build-images.sh and by the multi-stage
# Dockerfile, so both give the same runtime.
#
#   deploy/docker/stage-rootfs.sh BIN_DIR OUT_DIR CONFIG
set -euo pipefail
bin_dir="$1"
out="$2"
config="$3"
rm -rf "$out"
mkdir -p "$out/rootfs/usr/local/bin" "$out/rootfs/etc/ssl/certs" "$out/rootfs/etc/openclaw" "$out/rootfs/tmp" "$out/data"
for b in gateway-http agent-svc agent-call mock-upstream; do
  src="$bin_dir/$b"
  [ -x "$src" ] || { echo "missing $src" >&2; exit 1; }
  objcopy --strip-debug "$src" "$out/rootfs/usr/local/bin/$b"
  # `name => /path (addr)` lines, and the loader's own `/lib64/ld-linux… (addr)` line.
  ldd "$src" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | while read -r lib; do
    mkdir -p "$out/rootfs$(dirname "$lib")"
    cp -n "$(readlink -f "$lib")" "$out/rootfs$lib"
  done
done
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  cp /etc/ssl/certs/ca-certificates.crt "$out/rootfs/etc/ssl/certs/"
fi
cp "$config" "$out/rootfs/etc/openclaw/openclaw.json5"
printf 'root:x:0:0:root:/root:/sbin/nologin\nopenclaw:x:10001:10001:openclaw:/data:/sbin/nologin\n' \
  > "$out/rootfs/etc/passwd"
printf 'root:x:0:\nopenclaw:x:10001:\n' > "$out/rootfs/etc/group"
printf 'hosts: files dns\n' > "$out/rootfs/etc/nsswitch.conf"
chmod 1777 "$out/rootfs/tmp"
