#!/usr/bin/env bash
# Runs every test: unit tests, the black-box suite against the built binary,
# the image tests (podman) and a smoke run of the benchmark harness.
# Installs what it needs first (scripts/test-deps.sh, scripts/podman-setup.sh).
set -euo pipefail
cd "$(dirname "$0")"

scripts/test-deps.sh

# One interpreter for build, tests and run time: the python3 on PATH. The
# build records its LIBDIR as an rpath (watchdog/build.rs).
PYO3_PYTHON="$(python3 -c 'import sys; print(sys.executable)')"
export PYO3_PYTHON

echo "== cargo build: watchdog without Python (links no libpython)"
cargo build -p watchdog
cp target/debug/watchdog target/debug/watchdog-nopy
echo "== cargo build: watchdog with the python feature"
cargo build -p watchdog --features python

echo "== cargo test"
cargo test --workspace --features watchdog/python

echo "== black-box tests (pytest)"
export WATCHDOG_BIN="$PWD/target/debug/watchdog"
export WATCHDOG_NOPY_BIN="$PWD/target/debug/watchdog-nopy"
python3 -m pytest -q -p no:cacheprovider tests --ignore=tests/images

echo "== image tests (podman)"
tests/images/run

echo "== benchmark harness smoke run (fails if the Python echo is below 1.5x granian)"
bench/run --quick
