# Sourced by the scripts that run the service binaries (bench, soak, streams): builds
# mock-upstream, agent-svc, gateway-http and the load drivers, in debug when the first
# argument is --debug (the caller then shifts it away), else in release, and sets `profile`
# and `bin_dir` (where they are).
profile=release
if [ "${1:-}" = "--debug" ]; then
  profile=debug
fi
if [ "$profile" = release ]; then
  cargo build --release -p agent-svc -p gateway-http -p openclaw-e2e --bins
else
  cargo build -p agent-svc -p gateway-http -p openclaw-e2e --bins
fi
target_dir="$(cargo metadata --format-version 1 --no-deps 2>/dev/null \
  | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
bin_dir="${target_dir:-target}/$profile"
