#!/usr/bin/env bash
# Runs every test. (First slice: unit tests; the black-box suite follows.)
set -euo pipefail
cd "$(dirname "$0")"
cargo build -p watchdog
cargo test -p runtime-sdk -p watchdog
