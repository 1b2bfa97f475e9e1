#!/usr/bin/env bash
# Checks the alerting bundle; installs nothing (alerts/install-promtool.sh does that).
#   1. the committed rendered files are what alerts/render.py makes from alerts/src + alerts/config.yaml
#   2. promtool check rules  alerts/rules/*.yaml
#   3. promtool test rules   alerts/tests/*.yaml
# Runs every step and exits non-zero if any failed.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2

if ! command -v promtool >/dev/null 2>&1; then
    echo "alerts/check.sh: promtool not found on PATH; run alerts/install-promtool.sh" >&2
    exit 127
fi

failed=0
step() {
    echo "--- $*"
    "$@" || { echo "alerts/check.sh: FAILED: $*" >&2; failed=1; }
}
step "${PYTHON:-python3}" alerts/render.py --check
step promtool check rules alerts/rules/*.yaml
step promtool test rules alerts/tests/*.yaml
if [ "$failed" -eq 0 ]; then echo "alerts/check.sh: OK ($(promtool --version 2>&1 | head -n1))"; fi
exit "$failed"
