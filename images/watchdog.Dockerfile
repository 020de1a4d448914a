# ember/watchdog: the watchdog binary alone (no Python), on an empty (scratch) base with
# only the shared libraries it links: glibc (libc, libm), libgcc_s and the dynamic loader.
#
# Use it to put the watchdog into any glibc image (glibc 2.34 or newer, e.g. Debian 12,
# Ubuntu 22.04, RHEL 9), for a function in any language:
#
#     COPY --from=ember/watchdog /watchdog /usr/local/bin/watchdog
#
# Build (the context is dist/, where build.sh puts the host-built binaries):
#
#     docker build -f images/watchdog.Dockerfile -t ember/watchdog dist/
#
# The binary is built on the host (./build.sh) and copied in, not compiled in a builder
# stage: the release toolchain (Rust >= 1.85) is not available from Debian's archive and
# image builds here may not reach rustup; a host build also shares cargo's cache between
# builds. The binary is glibc-dynamic (rustls, no OpenSSL), so the libraries it needs are
# taken, by `ldd`, from BASE_IMAGE: use a base at least as new as the build host's glibc.

ARG BASE_IMAGE=debian:bookworm-slim

FROM ${BASE_IMAGE} AS libs
COPY watchdog /watchdog
# Copy every library `ldd` lists (with the path the loader looks for), plus the ELF
# interpreter; a /tmp for the FILE runner and a passwd entry for the non-root user.
# Only the result of this stage, not the layer above, reaches the final image.
RUN set -eu; \
    mkdir -p /out/tmp /out/etc; chmod 1777 /out/tmp; \
    if ldd /watchdog | grep 'not found'; then echo "watchdog: libraries missing in BASE_IMAGE" >&2; exit 1; fi; \
    for lib in $(ldd /watchdog | grep -o '/[^ ]*'); do cp --parents -L "$lib" /out/; done; \
    printf 'root:x:0:0:root:/root:/sbin/nologin\nember:x:10001:10001:ember:/tmp:/sbin/nologin\n' > /out/etc/passwd; \
    printf 'root:x:0:\nember:x:10001:\n' > /out/etc/group

FROM scratch
# Libraries first, binary last: a new binary reuses the library layer.
COPY --from=libs /out/ /
COPY watchdog /watchdog
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["/watchdog"]
