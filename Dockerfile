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
# Left out of the image (they stay in pyproject.toml for pip users): `kubernetes`, 126 MB of the 203 MB
# virtualenv with what only it pulls in, is needed only for a kubeconfig's legacy `auth-provider`
# (exporter/kubeconfig.py reads everything else itself, and says so clearly if one is met without it).
ARG OMIT_DEPENDENCIES="kubernetes"
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python3 -m venv /opt/venv
# The dependencies first, from pyproject.toml alone: this layer is rebuilt only when they change, not on every
# source change. [project.dependencies] only: no [test]/[dev] extras. Every dependency ships manylinux wheels
# (cryptography, aiohttp, ...), so no compiler is needed.
# common-expression-language's package __init__ imports its interactive REPL (cel.cli: typer, rich, prompt_toolkit,
# pygments, pydantic; 30 MB on disk, 250 modules loaded at start-up), while the exporter only compiles and
# evaluates expressions: the image drops that import, the REPL and what only it needs. If a release changes that
# line, the sed does nothing, `import cel` then fails without cli.py, and so does the build: nothing unreviewed.
COPY pyproject.toml ./
RUN /opt/venv/bin/python -c 'import re, sys, tomllib; omit = set(sys.argv[1].lower().split()); \
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]; \
print("\n".join(d for d in deps if re.match(r"[A-Za-z0-9._-]+", d).group().lower() not in omit))' \
    "$OMIT_DEPENDENCIES" >/tmp/requirements.txt \
 && /opt/venv/bin/pip install -r /tmp/requirements.txt \
 && cel=$(/opt/venv/bin/python -c 'import cel, os; print(os.path.dirname(cel.__file__))') \
 && sed -i 's/^from \. import cli, stdlib$/from . import stdlib  # the image leaves out cli, the REPL/' "$cel/__init__.py" \
 && rm "$cel/cli.py" "$cel/__main__.py" \
 && /opt/venv/bin/pip uninstall --yes typer rich prompt-toolkit pygments wcwidth markdown-it-py mdurl shellingham \
      annotated-doc pydantic pydantic-core typing-inspection annotated-types \
 && /opt/venv/bin/python -c 'import sys, cel, cel.stdlib; ctx = cel.Context(); cel.stdlib.add_stdlib_to_context(ctx); \
assert cel.evaluate("1 + 1 == 2", ctx) is True and "cel.cli" not in sys.modules'
COPY README.md ./
COPY exporter ./exporter
RUN /opt/venv/bin/pip wheel --no-deps --wheel-dir /tmp/wheels . \
 && /opt/venv/bin/pip install --no-deps /tmp/wheels/admission_webhook_exporter-*.whl \
 && /opt/venv/bin/pip uninstall --yes pip setuptools wheel \
 && /opt/venv/bin/python -m compileall -q /opt/venv/lib \
 && /opt/venv/bin/python -c 'import exporter.cli, exporter.audit'

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
