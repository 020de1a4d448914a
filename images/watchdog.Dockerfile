# ember/watchdog: the watchdog alone (no Python), a fully static binary on an empty base.
# Nothing else is in the image: no libc, no loader, no shell, no CA file.
#
# Use it to put the watchdog into any image, with or without a libc (Debian, Alpine,
# distroless, a static busybox, FROM scratch), for a function in any language:
#
#     COPY --from=ember/watchdog /watchdog /watchdog
#
# Build (the context is dist/, where build.sh puts the host-built binaries):
#
#     docker build -f images/watchdog.Dockerfile -t ember/watchdog dist/
#
# dist/watchdog is built by ./build.sh for the x86_64-unknown-linux-musl target, so it
# needs no shared library at all (`ldd` says "statically linked"); it is copied in rather
# than compiled in a builder stage because the Rust toolchain the project needs (1.85+)
# is not in Debian's archive and image builds may not reach rustup.
#
# TLS callbacks (https:// CALLBACK_URL) work from here as they are: the trusted roots are
# the Mozilla set compiled into the binary (webpki-roots), so no CA file is needed in the
# image, and none in the image is read. Host names resolve from /etc/hosts, then the DNS
# servers of /etc/resolv.conf (musl's resolver; both files are provided by the engine).
FROM scratch
COPY watchdog /watchdog
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["/watchdog"]
