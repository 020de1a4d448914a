#!/usr/bin/env bash
# Builds Ember: the two release binaries, then the images.
#
#   ./build.sh               cargo builds + images
#   ./build.sh --no-cargo    images only, from the binaries already in dist/
#   ./build.sh --help
#
# Binaries (copied to dist/):
#   dist/watchdog          cargo build --release -p watchdog --target $STATIC_TARGET
#                          (no Python; fully static: musl, no shared library at all)
#   dist/watchdog-python   cargo build --release -p watchdog --features python
#                          (glibc-dynamic, links libpython3.11)
# Images (context dist/; Dockerfiles in images/):
#   ember/watchdog:$VERSION and :latest   images/watchdog.Dockerfile (FROM scratch + the binary)
#   ember/python:$VERSION and :latest     images/python.Dockerfile   (Python 3.11 base)
#
# The static build needs the Rust target (`rustup target add x86_64-unknown-linux-musl`,
# done here when rustup is there) and a musl C compiler for the crates that compile C
# (ring, mimalloc): Debian's musl-tools (`apt-get install musl-tools`).
#
# Environment:
#   VERSION            image tag (default: the workspace version in Cargo.toml)
#   ENGINE             docker or podman (default: docker if its daemon answers, else podman)
#   STATIC_TARGET      Rust target of dist/watchdog (default: $(uname -m)-unknown-linux-musl)
#   PYTHON_BASE_IMAGE  base of ember/python, CPython 3.11 with libpython (default python:3.11-slim)
#   IMAGE_PREFIX       repository prefix (default ember/, e.g. registry.example.com/ember/)
#   BUILD_ARGS         extra arguments for every image build (e.g. --pull=never)
#   CARGO_TARGET_DIR   cargo's target directory (default target/), as cargo reads it
set -euo pipefail

cd "$(dirname "$0")"
ROOT=$PWD

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
die() { printf 'build.sh: ERROR: %s\n' "$*" >&2; exit 1; }
log() { printf '==> %s\n' "$*" >&2; }

CARGO=1
for arg in "$@"; do
  case "$arg" in
    --no-cargo) CARGO=0 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument '$arg' (accepted: --no-cargo, --help)" ;;
  esac
done

if [[ -z "${VERSION:-}" ]]; then
  # The `version` key of the [workspace.package] table.
  VERSION=$(awk '/^\[/{s=($0=="[workspace.package]")} s && /^version *=/{gsub(/[" ]/,"",$0); sub(/^version=/,"",$0); print; exit}' Cargo.toml)
  [[ -n "$VERSION" ]] || die "could not read [workspace.package] version from Cargo.toml; set VERSION"
fi
PYTHON_BASE_IMAGE=${PYTHON_BASE_IMAGE:-python:3.11-slim}
IMAGE_PREFIX=${IMAGE_PREFIX:-ember/}
read -r -a EXTRA <<<"${BUILD_ARGS:-}"

# --- engine ------------------------------------------------------------------------------
if [[ -z "${ENGINE:-}" ]]; then
  if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    ENGINE=docker
  elif command -v podman >/dev/null 2>&1; then
    ENGINE=podman
  elif command -v docker >/dev/null 2>&1; then
    die "docker is installed but its daemon does not answer ('docker info' failed), and podman is not installed (scripts/podman-setup.sh installs it)"
  else
    die "no container engine: install docker or podman (scripts/podman-setup.sh installs podman)"
  fi
fi
command -v "$ENGINE" >/dev/null 2>&1 || die "ENGINE=$ENGINE is not installed"

# --- binaries ----------------------------------------------------------------------------
mkdir -p dist
if [[ $CARGO == 1 ]]; then
  TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
  command -v cargo >/dev/null 2>&1 || die "cargo not found (install Rust >= 1.85, or use --no-cargo with binaries in dist/)"
  STATIC_TARGET=${STATIC_TARGET:-$(uname -m)-unknown-linux-musl}
  if command -v rustup >/dev/null 2>&1 && ! rustup target list --installed | grep -qx "$STATIC_TARGET"; then
    log "rustup target add $STATIC_TARGET"
    rustup target add "$STATIC_TARGET" || die "rustup target add $STATIC_TARGET failed"
  fi
  # The static build compiles C (ring, mimalloc) for musl: cc-rs looks for
  # <arch>-linux-musl-gcc (Debian's musl-tools), unless CC_<target> names another compiler.
  musl_cc=${STATIC_TARGET%%-*}-linux-musl-gcc
  cc_var=CC_${STATIC_TARGET//-/_}
  [[ -n "${!cc_var:-}" ]] || command -v "$musl_cc" >/dev/null 2>&1 \
    || die "$musl_cc not found: the static build compiles C (ring, mimalloc) for musl; install it with 'apt-get install musl-tools' (or set $cc_var)"
  if [[ "${EMBER_PGO:-0}" == 1 ]]; then
    # Opt-in: optimized with the committed profile (scripts/pgo; README "Building").
    flags=$(scripts/pgo-flags) || die "EMBER_PGO=1, but scripts/pgo-flags gave no flags (above)"
    export CARGO_ENCODED_RUSTFLAGS=$flags
    log "EMBER_PGO=1: building with watchdog/pgo.profdata"
  fi
  log "cargo build --release -p watchdog --target $STATIC_TARGET"
  cargo build --release -p watchdog --target "$STATIC_TARGET"
  cp "$TARGET_DIR/$STATIC_TARGET/release/watchdog" dist/watchdog
  log "cargo build --release -p watchdog --features python"
  cargo build --release -p watchdog --features python
  cp "$TARGET_DIR/release/watchdog" dist/watchdog-python
fi
for bin in watchdog watchdog-python; do
  [[ -x dist/$bin ]] || die "dist/$bin is missing: run ./build.sh without --no-cargo"
done
# ember/watchdog has nothing but the binary: it must need no loader and no library.
if ldd_out=$(ldd dist/watchdog 2>&1); [[ "$ldd_out" != *"not a dynamic executable"* && "$ldd_out" != *"statically linked"* ]]; then
  die "dist/watchdog is not static (ldd: $ldd_out); it cannot run FROM scratch"
fi

# --- images ------------------------------------------------------------------------------
build_image() { # name dockerfile [base-image]
  local name=$1 file=$2 base=${3:-} args=()
  [[ -n "$base" ]] && args=(--build-arg "BASE_IMAGE=$base")
  log "$ENGINE build $name:$VERSION (FROM ${base:-scratch})"
  "$ENGINE" build "${EXTRA[@]}" "${args[@]}" \
    -f "$file" -t "$name:$VERSION" -t "$name:latest" dist/ \
    || die "$ENGINE build of $name failed${base:+ (BASE_IMAGE=$base)}"
}
WATCHDOG_IMAGE=${IMAGE_PREFIX}watchdog
PYTHON_IMAGE=${IMAGE_PREFIX}python
build_image "$WATCHDOG_IMAGE" images/watchdog.Dockerfile
build_image "$PYTHON_IMAGE" images/python.Dockerfile "$PYTHON_BASE_IMAGE"

human() { awk -v b="$1" 'BEGIN{split("B KB MB GB",u); i=1; while (b>=1000 && i<4) {b/=1000; i++} printf (i==1?"%d %s":"%.1f %s"), b, u[i]}'; }
echo
echo "Built with $ENGINE (version $VERSION):"
printf '  %-36s %10s   (static)\n' "dist/watchdog" "$(human "$(stat -c %s dist/watchdog)")"
printf '  %-36s %10s\n' "dist/watchdog-python" "$(human "$(stat -c %s dist/watchdog-python)")"
for img in "$WATCHDOG_IMAGE" "$PYTHON_IMAGE"; do
  size=$("$ENGINE" image inspect --format '{{.Size}}' "$img:$VERSION")
  printf '  %-36s %10s   (also :latest)\n' "$img:$VERSION" "$(human "$size")"
done
