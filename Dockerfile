# syntax=docker/dockerfile:1
# The exporter's image: a virtualenv with the exporter's wheel and its runtime dependencies (no test or dev
# extras), on the official Python slim image, running as a non-root numeric user.
#
#   docker build -t admission-webhook-exporter:0.1.0 .
#
# Base image: pinned by tag and by the digest of its multi-architecture index (amd64 and arm64 resolve from the
# same digest). Refresh both together: `docker buildx imagetools inspect python:3.11.<x>-slim-bookworm`.
# The test suite builds on a base made from Debian's packages instead (tests/image/build.sh passes
# --build-arg PYTHON_IMAGE=localhost/awe-python:3.11-bookworm): any image with python3.11 and its venv module.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d

# ---- builder: build the wheel, install it and its runtime dependencies into /opt/venv ----
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python3 -m venv /opt/venv
# The dependencies first, from pyproject.toml alone: this layer is rebuilt only when they change, not on every
# source change. [project.dependencies] only: no [test]/[dev] extras. Every dependency ships manylinux wheels
# (cryptography, aiohttp, ...), so no compiler is needed.
COPY pyproject.toml ./
RUN /opt/venv/bin/python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' >/tmp/requirements.txt \
 && /opt/venv/bin/pip install -r /tmp/requirements.txt
COPY README.md ./
COPY exporter ./exporter
RUN /opt/venv/bin/pip wheel --no-deps --wheel-dir /tmp/wheels . \
 && /opt/venv/bin/pip install --no-deps /tmp/wheels/admission_webhook_exporter-*.whl \
 && /opt/venv/bin/pip uninstall --yes pip setuptools wheel \
 && /opt/venv/bin/python -m compileall -q /opt/venv/lib

# ---- runtime: the base image plus the virtualenv, nothing else ----
FROM ${PYTHON_IMAGE} AS runtime
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# 65532: the conventional "nonroot" id (distroless); numeric so that runAsNonRoot can verify it without /etc/passwd.
USER 65532:65532
EXPOSE 10047
ENTRYPOINT ["admission-webhook-exporter"]
CMD ["serve"]
