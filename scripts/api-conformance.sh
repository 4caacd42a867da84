#!/usr/bin/env bash
# API conformance: runs schemathesis (PyPI, pinned) against a live gateway with the
# document it serves at GET /openapi.json. Fails on any 5xx and on any response whose
# status, content type, headers or body the document does not allow, and on a request
# the document calls invalid that the gateway accepts.
#
# The document itself is first checked against the OpenAPI 3.1 meta-schema
# (openapi-spec-validator, pinned too).
#
# One process: gateway-http in embedded mode on the offline `echo` model, bound to a
# free 127.0.0.1 port, sessions in memory. The venv lives in target/api-conformance/
# (reused across runs). Bounded: chat completions get API_CONFORMANCE_EXAMPLES test cases
# per phase (default 300) within API_CONFORMANCE_MAX_TIME seconds (default 120); the other
# operations 100 cases within 30 s.
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION=4.32.5
SPEC_VALIDATOR_VERSION=0.9.0
EXAMPLES=${API_CONFORMANCE_EXAMPLES:-300}
MAX_TIME=${API_CONFORMANCE_MAX_TIME:-120}
TOKEN=api-conformance-token
WORK=target/api-conformance
VENV=$WORK/venv

mkdir -p "$WORK"
if ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION" \
  || ! "$VENV/bin/pip" show openapi-spec-validator 2>/dev/null | grep -qx "Version: $SPEC_VALIDATOR_VERSION"; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check \
    "schemathesis==$SCHEMATHESIS_VERSION" "openapi-spec-validator==$SPEC_VALIDATOR_VERSION"
fi

# The committed document against the OpenAPI 3.1 meta-schema.
"$VENV/bin/openapi-spec-validator" gateway-http/openapi.json

cargo build --quiet -p gateway-http
GATEWAY_BIN=${CARGO_TARGET_DIR:-target}/debug/gateway-http

# Wrong secrets are what the ignored_auth check sends: answer them at once (no loopback
# delay, no lockout, no global ceiling) so that the run measures the API, not the limiter.
CONFIG=$WORK/gateway.json5
cat >"$CONFIG" <<EOF
{
  gateway: {
    bind: "loopback",
    auth: { mode: "token", token: "$TOKEN",
            rateLimit: { maxAttempts: 1000000000, exemptLoopback: false, maxFailuresPerSecond: 0 } },
    http: { endpoints: { chatCompletions: { enabled: true } } },
  },
  agents: {
    defaults: { model: "echo/echo", timeoutSeconds: 30 },
    list: [ { id: "main", default: true }, { id: "beta" } ],
  },
  session: { store: "memory" },
}
EOF

LOG=$WORK/gateway.log
OUT=$WORK/gateway.out
: >"$OUT"
RUST_LOG=${RUST_LOG:-warn} "$GATEWAY_BIN" --config "$CONFIG" --port 0 >"$OUT" 2>"$LOG" &
GATEWAY_PID=$!
stop_gateway() {
  kill "$GATEWAY_PID" 2>/dev/null || true
  wait "$GATEWAY_PID" 2>/dev/null || true
}
trap stop_gateway EXIT

# The gateway prints its address once it accepts connections; then wait for /readyz.
BASE=
for _ in $(seq 1 600); do
  if ! kill -0 "$GATEWAY_PID" 2>/dev/null; then
    echo "api-conformance: gateway-http exited before it was ready:" >&2
    cat "$LOG" >&2
    exit 1
  fi
  BASE=$(sed -n 's/^gateway-http listening on \(http:\/\/127\.0\.0\.1:[0-9]*\)$/\1/p' "$OUT")
  [ -n "$BASE" ] && break
  sleep 0.1
done
[ -n "$BASE" ] || { echo "api-conformance: gateway-http did not start within 60 s" >&2; exit 1; }
ready=0
for _ in $(seq 1 300); do
  if python3 -c "import sys,urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)" "$BASE/readyz" 2>/dev/null; then
    ready=1
    break
  fi
  sleep 0.1
done
[ "$ready" = 1 ] || { echo "api-conformance: $BASE/readyz did not answer 200 within 30 s" >&2; exit 1; }
echo "api-conformance: gateway-http ready at $BASE; schemathesis $SCHEMATHESIS_VERSION, $EXAMPLES examples per operation"

# The agent and model headers are fixed to ones this config has: any other value is a 400
# (unknown agent or model), and random ones would keep almost every turn from running.
# The WebSocket upgrade is left out: schemathesis speaks HTTP only, and a 101 hands the
# connection to another protocol (tests/tests/gateway_ws.rs covers it). Run from $WORK so
# that schemathesis' own cache (.schemathesis/) stays under target/.
st() {
  (cd "$WORK" && venv/bin/schemathesis run "$BASE/openapi.json" \
    --header "Authorization: Bearer $TOKEN" \
    --header "x-openclaw-agent-id: main" --header "x-openclaw-model: echo/echo" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance,negative_data_rejection,missing_required_header,unsupported_method,ignored_auth \
    --exclude-operation-id websocketUpgrade \
    --phases examples,coverage,fuzzing \
    --request-timeout 20 \
    --seed "${API_CONFORMANCE_SEED:-20261130}" \
    --workers 2 \
    "$@")
}
# Chat completions get most of the time: their bodies are where the rules are. The simple
# GET operations are done after a bounded number of cases.
status=0
st --include-operation-id createChatCompletion --max-examples "$EXAMPLES" --max-time "$MAX_TIME" \
  --report junit --report-dir report/chat || status=$?
st --exclude-operation-id createChatCompletion --max-examples 100 --max-time 30 \
  --report junit --report-dir report/other || status=$?

# What the gateway answered, by route and status (a run that never reached a 200 tests little).
python3 - "$BASE/metrics" <<'PY' || true
import re, sys, urllib.request
text = urllib.request.urlopen(sys.argv[1], timeout=5).read().decode()
for line in text.splitlines():
    m = re.match(r'openclaw_gateway_requests_total\{(.*)\} (\S+)', line)
    if m:
        print("api-conformance: requests", m.group(1), int(float(m.group(2))))
PY
exit "$status"
