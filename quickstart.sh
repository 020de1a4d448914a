#!/usr/bin/env bash
# Builds the watchdog with the in-process Python runtime, runs a Python
# handler (examples/python/uppercase/handler.py) warm, invokes it once and
# prints the answer, then runs the same handler one-shot. See README.md.
set -euo pipefail
cd "$(dirname "$0")"

PORT="${PORT:-8080}"
# Build against the python3 on PATH; the binary keeps its libpython (rpath).
PYO3_PYTHON="$(python3 -c 'import sys; print(sys.executable)')"
export PYO3_PYTHON
echo "== building the watchdog (cargo build --release -p watchdog --features python)"
cargo build --release -p watchdog --features python
BIN="$PWD/target/release/watchdog"
HANDLER_DIR="$PWD/examples/python/uppercase"

echo "== warm: $HANDLER_DIR/handler.py on port $PORT"
WARM=true PORT="$PORT" HANDLER_PATH="$HANDLER_DIR" LOG_FORMAT=text "$BIN" &
pid=$!
trap 'kill "$pid" 2>/dev/null || true' EXIT
for _ in $(seq 200); do
  curl -fsS "localhost:$PORT/health" >/dev/null 2>&1 && break
  sleep 0.05
done
echo "\$ curl -s -X POST localhost:$PORT/invoke -H 'X-Execution-Id: demo-1' -d '{\"input\": \"hello\"}'"
curl -sS -X POST "localhost:$PORT/invoke" -H 'X-Execution-Id: demo-1' -d '{"input": "hello"}'
echo
kill -TERM "$pid"
wait "$pid" || true
trap - EXIT

echo "== one-shot: the same handler, the result printed as the last line of stdout"
echo "\$ EXECUTION_ID=demo-2 INVOCATION_PAYLOAD='{\"input\": \"hello\"}' watchdog"
EXECUTION_ID=demo-2 INVOCATION_PAYLOAD='{"input": "hello"}' HANDLER_PATH="$HANDLER_DIR" \
  LOG_LEVEL=warn "$BIN"
