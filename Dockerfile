# syntax=docker/dockerfile:1
#
# ClawTerm container images (see docs/deploy.md).
#
#   docker build -t clawterm/clawtermd:0.1.0 .                        # daemon (default target)
#   docker build --target agent -t clawterm/clawterm-agent:0.1.0 .    # agent (demo by default)
#
# Stages:
#   builder  compilers + pip; builds the project wheel and every runtime
#            dependency wheel, then installs them into the venv /opt/clawterm
#   runtime  python:3.11-slim + the venv + a fixed non-root user; no compilers,
#            no pip (shared base of the two images below)
#   agent    `clawterm-agent demo`
#   daemon   `clawtermd -p 7220 -s /run/claw/sockets` (last stage: the default)
#
# Both images run as UID/GID 10001; the Kubernetes manifests in k8s/ pin the
# same numbers. deploy/image_env.py rebuilds the venv of this file's builder
# stage outside Docker and reports its size.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

# DL3008: Debian package versions are deliberately not pinned. This stage is
# thrown away (nothing from it but /opt/clawterm reaches an image), and pinned
# versions disappear from the Debian mirror with every security update, which
# would break the build. The compilers are only a fallback for a dependency
# that has no wheel for the build platform.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /src
# .dockerignore admits only what the wheel is built from.
COPY . .

# Wheels of the project and of its runtime dependencies (no extras: no test,
# bench or dev tools), then a venv without pip holding exactly those wheels.
# Bytecode is compiled here (pip's default): the image's root filesystem is
# read-only in Kubernetes, so Python could never cache it at run time and
# would recompile every module on every start. Debug symbols are stripped
# from the extension modules (uvloop alone ships ~12 MB of them); code and
# symbol tables stay, so tracebacks and profilers still work.
RUN pip wheel --wheel-dir /wheels . \
    && python -m venv --without-pip /opt/clawterm \
    && pip --python /opt/clawterm/bin/python install --no-index --find-links /wheels /wheels/clawterm-*.whl \
    && find /opt/clawterm -name '*.so' -type f -exec strip --strip-debug {} +

# --------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

# A fixed numeric user (Kubernetes runAsNonRoot can only verify a numeric
# USER), its state and socket directories, and no pip/setuptools/wheel in the
# base interpreter: nothing in the final image can install or build code.
RUN groupadd --system --gid 10001 clawterm \
    && useradd --system --uid 10001 --gid clawterm \
        --home-dir /var/lib/clawterm --no-create-home --shell /usr/sbin/nologin clawterm \
    && install -d -o 10001 -g 10001 -m 0700 /var/lib/clawterm \
    && install -d -o 10001 -g 10001 -m 0755 /run/claw/sockets \
    && python -m pip uninstall --yes --no-input pip setuptools wheel \
    && rm -rf /root/.cache

COPY --from=builder /opt/clawterm /opt/clawterm

ENV PATH=/opt/clawterm/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CLAWTERM_STATE_DIR=/var/lib/clawterm

LABEL org.opencontainers.image.title="ClawTerm" \
      org.opencontainers.image.description="Session-persistent binary protocol for AI-agent terminals" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0"

WORKDIR /var/lib/clawterm
USER 10001:10001

# --------------------------------------------------------------------------
# An agent: the PTY runner, demo or echo agent. It creates its socket in
# /run/claw/sockets/<tenant>/<agent>.sock; mount only that tenant's directory.
# Run it with `docker run --init` (or shareProcessNamespace in Kubernetes) so
# that orphans of the programs the PTY runner starts are reaped.
FROM runtime AS agent
ENV HOME=/tmp
ENTRYPOINT ["clawterm-agent"]
CMD ["demo"]

# --------------------------------------------------------------------------
# The node daemon. Last stage, so it is what a plain `docker build` produces.
FROM runtime AS daemon
EXPOSE 7220/tcp 7221/udp 9720/tcp
ENTRYPOINT ["clawtermd"]
CMD ["-p", "7220", "-s", "/run/claw/sockets"]
