#!/usr/bin/env bash
# Installs what the test suite needs on a fresh machine (root, Debian):
# Node.js for the LOOP adapter tests, load tools for bench --quick, and
# the Python test packages into the same python3 the watchdog embeds.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v node >/dev/null || need+=(nodejs)
command -v hey >/dev/null || need+=(hey)
command -v wrk >/dev/null || need+=(wrk)
command -v hyperfine >/dev/null || need+=(hyperfine)
if ((${#need[@]})); then
  echo "test-deps: apt-get install ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
python3 -m pip install -q --disable-pip-version-check -r tests/requirements.txt -r examples/python/requirements/requirements.txt
