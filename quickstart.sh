#!/usr/bin/env bash
# Builds the watchdog, runs an example function warm, invokes it once and
# prints the answer; then runs it one-shot. See README.md.
set -euo pipefail
cd "$(dirname "$0")"

PORT="${PORT:-8080}"
echo "== building the watchdog (cargo build --release -p watchdog)"
cargo build --release -p watchdog
BIN="$PWD/target/release/watchdog"

echo "== warm: examples/python-stdio/handler.py on port $PORT"
WARM=true PORT="$PORT" EXECUTION_MODE=STDIO WATCHDOG_CMD="python3 examples/python-stdio/handler.py" \
  LOG_FORMAT=text "$BIN" &
pid=$!
trap 'kill "$pid" 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  curl -fsS "localhost:$PORT/health" >/dev/null 2>&1 && break
  sleep 0.05
done
echo "\$ curl -s -X POST localhost:$PORT/invoke -H 'X-Execution-Id: demo-1' -d '{\"input\": \"hello\"}'"
curl -sS -X POST "localhost:$PORT/invoke" -H 'X-Execution-Id: demo-1' -d '{"input": "hello"}'
echo
kill -TERM "$pid"
wait "$pid" || true
trap - EXIT

echo "== one-shot: the same function, result printed on stdout"
EXECUTION_ID=demo-2 INVOCATION_PAYLOAD='{"input": "hello"}' EXECUTION_MODE=STDIO \
  WATCHDOG_CMD="python3 examples/python-stdio/handler.py" LOG_LEVEL=warn "$BIN"
