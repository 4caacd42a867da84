#!/usr/bin/env bash
# Fuzzes every parser that sees outside bytes (README, "Fuzzing"): builds the
# cargo-fuzz targets in fuzz/ once, then runs each for a bounded time on a copy
# of its committed seed corpus (so the tree stays clean). Fails when a target
# crashes (panic, stack overflow, timeout, out of memory); the input that did it
# is left under fuzz/artifacts/<target>/.
#
#   scripts/fuzz.sh [seconds-per-target] [target ...]
#
# Needs cargo-fuzz (`cargo install --locked cargo-fuzz`); installs nothing.
# libFuzzer's flags are nightly-only: RUSTC_BOOTSTRAP=1 lets the stable
# toolchain pass them. No sanitizer (-s none): the code is safe Rust, and
# AddressSanitizer would double the build and slow every run. Debug assertions
# are on, so an arithmetic overflow is a crash too.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-20}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(chat_request config ws_frame sse_parser provider_stream session_key)
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "cargo-fuzz not found: install it with 'cargo install --locked cargo-fuzz'" >&2
  exit 1
fi
export RUSTC_BOOTSTRAP=1
build=(-O --debug-assertions --sanitizer none)
start=$(date +%s)
cargo fuzz build "${build[@]}"
echo "fuzz: built the targets in $(($(date +%s) - start)) s"

work=fuzz/corpus-run
failed=()
for t in "${targets[@]}"; do
  rm -rf "${work:?}/$t"
  mkdir -p "$work/$t" "fuzz/artifacts/$t"
  cp fuzz/corpus/"$t"/* "$work/$t/"
  # -timeout: one input taking a second is a hang; -rss_limit_mb: bounded memory;
  # -max_len: bodies of a realistic size, enough for every shape.
  if ! cargo fuzz run "${build[@]}" "$t" "$work/$t" -- \
      -max_total_time="$seconds" -timeout=1 -rss_limit_mb=1024 -max_len=65536 \
      -print_final_stats=1 >"$work/$t.log" 2>&1; then
    failed+=("$t")
    tail -n 40 "$work/$t.log" >&2
  fi
  stats=$(grep -E '^stat::number_of_executed_units' "$work/$t.log" | awk '{print $2}' || true)
  echo "fuzz: $t: ${stats:-?} runs in ${seconds} s${failed[*]:+ (failures so far: ${failed[*]})}"
done
rm -rf "$work"
echo "fuzz: done in $(($(date +%s) - start)) s"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: FAILED: ${failed[*]} (crashing inputs under fuzz/artifacts/)" >&2
  exit 1
fi
