#!/usr/bin/env bash
# Installs what the test suite needs on a fresh machine (root, Debian):
# Node.js for the LOOP adapter tests, load tools for bench --quick, the
# static build's musl target and C compiler (musl-tools), a static busybox
# and openssl for the image tests, and the Python test packages into the
# same python3 the watchdog embeds.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v node >/dev/null || need+=(nodejs)
command -v hey >/dev/null || need+=(hey)
command -v wrk >/dev/null || need+=(wrk)
command -v hyperfine >/dev/null || need+=(hyperfine)
command -v "$(uname -m)-linux-musl-gcc" >/dev/null || need+=(musl-tools)
command -v openssl >/dev/null || need+=(openssl)
# The image tests build a libc-less image around /bin/busybox: it must be the static one.
[[ -x /bin/busybox && "$(ldd /bin/busybox 2>&1)" == *"not a dynamic executable"* ]] || need+=(busybox-static)
if ((${#need[@]})); then
  echo "test-deps: apt-get install ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
# dist/watchdog (./build.sh, the image tests) is built for the musl target.
static_target="$(uname -m)-unknown-linux-musl"
if ! rustup target list --installed | grep -qx "$static_target"; then
  echo "test-deps: rustup target add $static_target"
  rustup target add "$static_target"
fi
python3 -m pip install -q --disable-pip-version-check -r tests/requirements.txt -r examples/python/requirements/requirements.txt
