#!/usr/bin/env bash
# Sets up Podman for Ember's image builds and tests, idempotently.
#
#   eval "$(scripts/podman-setup.sh)"     # installs, configures, builds the local bases
#
# What it does (each step is skipped when already done):
#   1. apt-get installs podman, runc, debootstrap, uidmap, fuse-overlayfs (needs root);
#   2. writes a containers.conf (runc, cgroupfs, file events, raised ulimits) to a
#      project-owned path, $EMBER_CONTAINERS_CONF or /etc/ember/containers.conf
#      (~/.config/ember/containers.conf when not root);
#   3. builds two local base images, for machines that cannot reach a registry:
#        ember-base/debian:bookworm  a debootstrap --variant=minbase of bookworm
#        ember-base/python:3.11      that + python3, python3-pip, libpython3.11,
#                                    shaped like python:3.11-slim (pip installs as root)
#   4. checks that Podman can run a container, and fails with the reason if it cannot.
# The only thing printed on stdout is `export CONTAINERS_CONF=...`; progress goes to stderr.
#
# Environment: EMBER_CONTAINERS_CONF (config path), EMBER_SKIP_APT=1 (do not install),
# EMBER_SKIP_BASES=1 (do not build base images), EMBER_DEBIAN_MIRROR (debootstrap mirror;
# default: the first deb.debian.org-style URI configured for apt).
set -euo pipefail

log() { printf 'podman-setup: %s\n' "$*" >&2; }
die() { printf 'podman-setup: ERROR: %s\n' "$*" >&2; exit 1; }

DEBIAN_BASE=ember-base/debian:bookworm
PYTHON_BASE=ember-base/python:3.11

# --- 1. packages -----------------------------------------------------------------------
need_pkgs=()
for cmd_pkg in podman:podman runc:runc debootstrap:debootstrap newuidmap:uidmap fuse-overlayfs:fuse-overlayfs; do
  command -v "${cmd_pkg%%:*}" >/dev/null 2>&1 || need_pkgs+=("${cmd_pkg##*:}")
done
if ((${#need_pkgs[@]})) && [[ "${EMBER_SKIP_APT:-0}" != 1 ]]; then
  [[ $(id -u) -eq 0 ]] || die "missing ${need_pkgs[*]}; run as root or install them: apt-get install ${need_pkgs[*]}"
  command -v apt-get >/dev/null || die "missing ${need_pkgs[*]} and no apt-get to install them with"
  log "installing ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2 || die "apt-get update failed"
  apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >&2 \
    || die "apt-get install ${need_pkgs[*]} failed"
fi
command -v podman >/dev/null || die "podman is not installed (apt-get install podman runc)"

# --- 2. containers.conf ----------------------------------------------------------------
if [[ -n "${EMBER_CONTAINERS_CONF:-}" ]]; then
  CONF=$EMBER_CONTAINERS_CONF
elif [[ $(id -u) -eq 0 ]]; then
  CONF=/etc/ember/containers.conf
else
  CONF=${XDG_CONFIG_HOME:-$HOME/.config}/ember/containers.conf
fi
desired_conf='# Written by Ember scripts/podman-setup.sh; use with CONTAINERS_CONF=<this file>.
[containers]
# The default nofile limit is too low for load tests of a warm watchdog.
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]

[engine]
# runc and cgroupfs work without systemd (crun and the systemd manager may not).
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
'
if [[ ! -f "$CONF" ]] || [[ "$(cat "$CONF")" != "${desired_conf%$'\n'}" ]]; then
  mkdir -p "$(dirname "$CONF")"
  printf '%s' "$desired_conf" > "$CONF"
  log "wrote $CONF"
fi
export CONTAINERS_CONF=$CONF

# --- 4 (first half). can Podman work at all? -------------------------------------------
podman info >/dev/null 2>/tmp/ember-podman-info.$$ \
  || { cat /tmp/ember-podman-info.$$ >&2; rm -f /tmp/ember-podman-info.$$; die "'podman info' failed (see above): Podman cannot run here"; }
rm -f /tmp/ember-podman-info.$$

# --- 3. base images --------------------------------------------------------------------
if [[ "${EMBER_SKIP_BASES:-0}" != 1 ]]; then
  if ! podman image exists "$DEBIAN_BASE"; then
    command -v debootstrap >/dev/null || die "debootstrap is needed to build $DEBIAN_BASE (apt-get install debootstrap)"
    mirror=${EMBER_DEBIAN_MIRROR:-}
    if [[ -z "$mirror" ]]; then
      mirror=$(grep -hsE '^(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null \
        | grep -oE 'https?://[^ ]*/debian/?' | grep -v security | head -1 || true)
      mirror=${mirror:-http://deb.debian.org/debian}
    fi
    root=$(mktemp -d /tmp/ember-debootstrap.XXXXXX)
    trap 'rm -rf "$root"' EXIT
    log "debootstrap --variant=minbase bookworm from $mirror (about 30 s)"
    debootstrap --variant=minbase bookworm "$root" "$mirror" >/tmp/ember-debootstrap.log 2>&1 \
      || { tail -20 /tmp/ember-debootstrap.log >&2; die "debootstrap failed (log: /tmp/ember-debootstrap.log)"; }
    # Make it look like debian:bookworm-slim: no apt caches, and the same sources.
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    log "podman import -> $DEBIAN_BASE"
    tar -C "$root" -c . | podman import -q --change 'CMD ["bash"]' --change 'ENV LANG=C.UTF-8' - "$DEBIAN_BASE" >/dev/null \
      || die "podman import of $DEBIAN_BASE failed"
    rm -rf "$root"; trap - EXIT
  else
    log "$DEBIAN_BASE exists"
  fi

  if ! podman image exists "$PYTHON_BASE"; then
    log "building $PYTHON_BASE (apt-get in podman build --network=host)"
    # Shaped like python:3.11-slim: `python`/`pip` on PATH, pip may install as root
    # (Debian marks its Python externally managed; the official image does not).
    ctx=$(mktemp -d /tmp/ember-ctx.XXXXXX)
    podman build --network=host --pull=never -t "$PYTHON_BASE" -f - "$ctx" >/tmp/ember-python-base.log 2>&1 <<CONTAINERFILE \
      || { tail -20 /tmp/ember-python-base.log >&2; die "building $PYTHON_BASE failed (log: /tmp/ember-python-base.log; does apt reach the Debian mirror from a container?)"; }
FROM $DEBIAN_BASE
RUN apt-get update \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \\
      python3 python3-pip libpython3.11 ca-certificates \\
 && rm -rf /var/lib/apt/lists/* /usr/lib/python3.11/EXTERNALLY-MANAGED \\
 && ln -sf /usr/bin/python3 /usr/local/bin/python \\
 && ln -sf /usr/bin/pip3 /usr/local/bin/pip
ENV LANG=C.UTF-8
CMD ["python3"]
CONTAINERFILE
    rmdir "$ctx"
  else
    log "$PYTHON_BASE exists"
  fi

  # --- 4. a container must start, or nothing else can be tested ------------------------
  out=$(podman run --rm --network=none "$DEBIAN_BASE" true 2>&1) \
    || die "podman cannot run a container ('podman run --rm $DEBIAN_BASE true' failed): $out"
fi

echo "export CONTAINERS_CONF=$CONF"
