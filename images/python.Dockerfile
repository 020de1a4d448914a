# ember/python: the base image for Python functions. The watchdog runs the handler
# in-process (embedded CPython through libpython3.11), warm or one-shot.
#
# A function image (see images/examples/python/):
#
#     FROM ember/python
#     COPY requirements.txt .
#     RUN pip install -r requirements.txt      # works as the non-root user, see PIP_USER below
#     COPY handler.py /app/
#
# Build (the context is dist/, where build.sh puts the host-built binaries):
#
#     docker build -f images/python.Dockerfile -t ember/python dist/
#
# BASE_IMAGE must provide CPython 3.11 with its shared library libpython3.11.so.1.0 on the
# loader's path: python:3.11-slim has it in /usr/local/lib, Debian's python3.11 in
# /usr/lib/x86_64-linux-gnu (package libpython3.11). Any 3.11.x works: the binary uses the
# stable-within-3.11 ABI, and the build below checks with `ldd` that everything resolves.
#
# The binary (dist/watchdog-python, built by ./build.sh with `--features python`) is built
# on the host and copied in, not compiled in a builder stage: the release toolchain
# (Rust >= 1.85) is not available from Debian's archive and image builds may not reach
# rustup; a host build also shares cargo's cache between builds.

ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

# The non-root user (uid/gid 10001) and the places it owns. Rarely changes: cached.
# /opt/ember/python is the user site (PYTHONUSERBASE) that `pip install` writes to as
# that user; the code directory /app stays owned by root, read-only to the function.
RUN set -eu; \
    groupadd --gid 10001 ember; \
    useradd --uid 10001 --gid 10001 --home-dir /home/ember --create-home \
        --shell /usr/sbin/nologin ember; \
    mkdir -p /app /opt/ember/python; \
    chown 10001:10001 /opt/ember/python

ENV HANDLER_PATH=/app \
    HANDLER_MODULE=handler \
    HANDLER_FUNCTION=handle \
    EXECUTION_MODE=PYTHON \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUSERBASE=/opt/ember/python \
    PIP_USER=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PATH=/opt/ember/python/bin:$PATH

# The binary last, so that a new build only replaces this layer. Fail the build here,
# not at run time, if libpython (or anything else) cannot be found.
COPY watchdog-python /usr/local/bin/watchdog
RUN set -eu; \
    if ldd /usr/local/bin/watchdog | grep 'not found'; then \
      echo "ember/python: the watchdog's libraries are missing in this BASE_IMAGE (libpython3.11.so.1.0 must be on the loader path)" >&2; \
      exit 1; \
    fi; \
    ldd /usr/local/bin/watchdog

WORKDIR /app
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/watchdog"]
