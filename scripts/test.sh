#!/usr/bin/env bash
# Set up and run the whole test suite: a virtualenv with the project and its pinned test tools, the real
# test infrastructure (every Kubernetes binary and helm built from source, the node's host packages, the
# images, promtool), lint, types, then pytest.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
step() { printf '\n== %s\n' "$*"; }

step "python environment ($VENV)"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check -e '.[dev]'
export PATH="$PWD/$VENV/bin:$PATH"

for installer in tests/controlplane/install.sh tests/helm/install.sh tests/node/install-packages.sh \
                 alerts/install-promtool.sh tests/image/build.sh tests/actionlint/install.sh \
                 tests/monitoring/install.sh; do
  if [ -x "$installer" ]; then step "$installer"; "$installer"; fi
done

step "lint, types and import layers"
ruff check exporter tests bench dashboards alerts scripts
mypy
lint-imports  # .importlinter: the one-way pipeline (docs/architecture.md)

step "pytest"
set +e
pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi
exit "$rc"
