# taskgate: Flask service served by gunicorn (gthread), or granian with SERVER=granian.
#
#   DOCKER_BUILDKIT=1 docker build -t taskgate .
#   docker run --env-file .env -p 8000:8000 --read-only --tmpfs /tmp taskgate
#
# Behind a TLS-intercepting proxy, hand pip the proxy's CA as a BuildKit secret
# (it is mounted for the pip step only and never stored in a layer):
#   docker build --secret id=ca,src="$PIP_CERT" -t taskgate .
#
# PYTHON_IMAGE is any Debian bookworm image with Python 3.11 and venv: the
# official python:3.11-slim-bookworm, or one made from Debian packages
# (debootstrap with python3, python3-venv and python-is-python3, then
# `docker import`; tests/support/containers.py does that where no registry is reachable).
# Both stages must use the same base image: the virtualenv copied from the
# builder points at the base image's python3.11.
ARG PYTHON_IMAGE=python:3.11.17-slim-bookworm

# ---------------------------------------------------------------------------
# builder: resolve and install the runtime dependencies into /opt/venv.
# Only requirements.txt is used (never requirements-dev.txt), and it is copied
# alone so this layer stays cached until the dependencies change.
# ---------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

# pip byte-compiles what it installs: the runtime user cannot write .pyc files.
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

COPY requirements.txt /tmp/requirements.txt
# The secret is optional: without it (no proxy in the way) pip uses its own CA bundle.
RUN --mount=type=secret,id=ca \
    if [ -f /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
 && pip install --no-cache-dir -r /tmp/requirements.txt

# ---------------------------------------------------------------------------
# runtime
# ---------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

ARG PYTHON_IMAGE
ARG VERSION=0.0.0-dev
ARG REVISION=unknown
ARG CREATED=unknown
ARG SOURCE=""

LABEL org.opencontainers.image.title="taskgate" \
      org.opencontainers.image.description="taskgate Flask API served by gunicorn" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    APP_ENV=production \
    PORT=8000

# Unprivileged runtime user; it has no home and owns only /app/instance.
RUN groupadd --system --gid 10001 taskgate \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin taskgate

COPY --from=builder /opt/venv /opt/venv

WORKDIR /app
# The build context is filtered by .dockerignore (no tests, venvs, .env, ...).
# Files stay owned by root and read-only for the runtime user.
COPY . /app

# Byte-compile the sources now: /app is not writable at run time, so without
# this every worker would recompile every module on each start.
RUN chmod 0755 /app/docker/entrypoint.sh \
 && mkdir -p /app/instance \
 && chown 10001:10001 /app/instance \
 && chmod 0750 /app/instance \
 && python -m compileall -q -j 0 /app

USER 10001:10001

EXPOSE 8000

# Liveness only (/healthz answers while the process runs); /readyz (DB and
# Redis) is for load balancers / orchestrator readiness. The start period
# covers the entrypoint's database wait (DB_WAIT_SECONDS) and migrations.
# It follows $PORT; a custom GUNICORN_BIND on another port needs PORT to match.
HEALTHCHECK --interval=15s --timeout=5s --start-period=90s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; r = urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8000'), timeout=4); sys.exit(0 if r.status == 200 else 1)"]

# Each gunicorn worker listens on its own socket (GUNICORN_REUSE_PORT); run the
# container with --sysctl net.ipv4.tcp_migrate_req=1 so a worker that exits hands
# its queued connections to the others (docker-compose.yml sets it).
# serve.py execs gunicorn (the default), or runs granian with SERVER=granian.
ENTRYPOINT ["/app/docker/entrypoint.sh"]
CMD ["python", "serve.py"]
