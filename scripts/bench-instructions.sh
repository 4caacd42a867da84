#!/usr/bin/env bash
# Instructions per request, the benchmark figure that noise cannot move: valgrind's callgrind
# counts the instructions gateway-http and agent-svc execute (release build, one tokio worker
# thread each), for N1 and N2 sequential requests on one keep-alive connection to the agent on
# the mock upstream; start-up and shutdown cancel out in (I(N2) - I(N1)) / (N2 - N1).
# Repeats to about 2% from run to run, whatever else the machine is doing (quanta's start-up
# calibration, which runs for a fixed time instead, is left out).
#
#   scripts/bench-instructions.sh [--no-build] [N1 N2]     (default: 100 600)
#
# Keeps the callgrind files under target/callgrind/ for `callgrind_annotate --inclusive=yes`.
set -euo pipefail
cd "$(dirname "$0")/.."
build=1
[ "${1:-}" = --no-build ] && { build=0; shift; }
n1="${1:-100}"
n2="${2:-600}"
command -v valgrind >/dev/null || { echo "valgrind is required (apt-get install valgrind)" >&2; exit 1; }
[ "$build" = 1 ] && cargo build -q --release -p agent-svc -p gateway-http -p openclaw-e2e --bins
rel="$(pwd)/target/release"
out="$(pwd)/target/callgrind"
rm -rf "$out" && mkdir -p "$out/bin"

# The benchmark starts whatever it finds in --bin-dir: here, the services under callgrind.
ln -s "$rel/mock-upstream" "$out/bin/mock-upstream"
for svc in agent-svc gateway-http; do
  cat > "$out/bin/$svc" <<EOF
#!/bin/sh
exec valgrind --tool=callgrind --callgrind-out-file="\$OPENCLAW_CALLGRIND_OUT.$svc" "$rel/$svc" "\$@"
EOF
  chmod +x "$out/bin/$svc"
done

# One bench run: $1 = json|sse, $2 = N. Leaves $out/$1-$2.<service> behind.
measure() {
  local mode="$1" n="$2" args
  if [ "$mode" = json ]; then args=(--requests "$n" --stream-requests 0)
  else args=(--requests 0 --stream-requests "$n"); fi
  OPENCLAW_CALLGRIND_OUT="$out/$mode-$n" TOKIO_WORKER_THREADS=1 "$rel/bench" --bin-dir "$out/bin" \
    --concurrency 1 --warmup 0 --request-timeout-ms 60000 --startup-timeout-s 120 --log-level warn \
    "${args[@]}" > "$out/$mode-$n.bench.txt" 2> "$out/$mode-$n.bench.err" \
    || { echo "bench failed ($mode, N=$n):" >&2; tail -20 "$out/$mode-$n.bench.err" >&2; exit 1; }
}

# The total instruction count a callgrind file reports.
# The total, less the start-up clock calibration of quanta (the metrics clock): it runs for a
# stretch of wall-clock time, so its instruction count moves with the machine's speed (by
# 2-3 million between two runs here, ~5,000 per request in the difference) instead of cancelling out.
# 0 for a process that does not calibrate it (agent-svc here).
total() {
  local f="$1" v calib
  v=$(sed -n 's/^summary: *\([0-9]*\).*/\1/p; s/^totals: *\([0-9]*\).*/\1/p' "$f" | head -n 1)
  [ -n "$v" ] || { echo "no instruction total in $f (did the service exit cleanly?)" >&2; exit 1; }
  # With fat LTO the calibration is inlined into the once-cell initialiser that runs it; any other
  # once-only initialiser costs the same in both runs, so leaving it out too changes no difference.
  calib=$(callgrind_annotate --inclusive=yes "$f" 2>/dev/null \
    | awk '/:quanta::Calibration::calibrate \[/ { gsub(",", "", $1); c += $1 }
           /:once_cell::imp::OnceCell<T>::initialize \[/ { gsub(",", "", $1); o += $1 }
           END { print (c > o ? c : o) + 0 }')
  echo $((v - calib))
}

printf '\ninstructions per request (callgrind, release, TOKIO_WORKER_THREADS=1, c=1, (I(%s) - I(%s)) / %s)\n' \
  "$n2" "$n1" "$((n2 - n1))"
printf '%-8s %14s %14s\n' mode gateway-http agent-svc
for mode in json sse; do
  measure "$mode" "$n1"
  measure "$mode" "$n2"
  row=()
  for svc in gateway-http agent-svc; do
    a=$(total "$out/$mode-$n1.$svc")
    b=$(total "$out/$mode-$n2.$svc")
    row+=("$(( (b - a) / (n2 - n1) ))")
  done
  printf '%-8s %14s %14s\n' "$mode" "${row[0]}" "${row[1]}"
done
echo "callgrind files: $out (callgrind_annotate --inclusive=yes FILE)"
