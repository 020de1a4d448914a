#!/usr/bin/env bash
# Runs every test: unit tests and the black-box suite against the built binary.
# Installs what it needs first (scripts/test-deps.sh).
set -euo pipefail
cd "$(dirname "$0")"

scripts/test-deps.sh

echo "== cargo build"
cargo build -p watchdog
echo "== cargo test"
cargo test -p runtime-sdk -p watchdog

echo "== black-box tests (pytest)"
export WATCHDOG_BIN="$PWD/target/debug/watchdog"
python3 -m pytest -q -p no:cacheprovider \
  tests/test_config.py tests/test_oneshot.py tests/test_warm.py tests/test_http_runner.py tests/test_loop.py
