#!/usr/bin/env bash
# Regenerate every committed generated file, or check that each is current. Each generator writes its outputs
# straight where they are consumed (docs/generation.md):
#
#   1. alerts/render.py        alerts/src/*.yaml + alerts/config.yaml -> alerts/rules/*.yaml, the chart's
#                              files/rules/*.yaml, its prometheusRule.config defaults in values.yaml and
#                              files/rule-defaults.yaml
#   2. dashboards/build.py     -> the chart's files/dashboards/*.json, docs/dashboards.md
#   3. deploy/render.sh        the chart (after 1 and 2) -> deploy/manifests/ (needs helm)
#
#   scripts/generate.sh           # write
#   scripts/generate.sh --check   # write nothing; exit 1 if any file is stale (the test suite runs this)
#
# Python: $PYTHON, else .venv/bin/python when it exists (dashboards/build.py needs grafana-foundation-sdk, a dev
# dependency), else python3. helm: as deploy/render.sh finds it.
# Exit codes: 0 ok, 1 something stale (--check), 2 a generator failed (broken source, missing tool).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2

CHECK=()
case "${1:-}" in
  --check) CHECK=(--check) ;;
  "") ;;
  *) echo "usage: scripts/generate.sh [--check]" >&2; exit 2 ;;
esac
if [[ -z ${PYTHON:-} ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHON

worst=0
step() {
  echo "--- $*"
  "$@"
  local rc=$?
  if (( rc != 0 )); then
    echo "scripts/generate.sh: $1 exited $rc" >&2
    # A broken generator (2) outranks a stale file (1); in write mode later steps still run on what exists.
    (( rc > worst )) && worst=$rc
    (( rc > 2 )) && worst=2
  fi
  return 0
}
step "$PYTHON" alerts/render.py "${CHECK[@]}"
step "$PYTHON" -m dashboards.build "${CHECK[@]}"
step deploy/render.sh "${CHECK[@]}"
if (( worst == 0 )); then echo "scripts/generate.sh: ${CHECK:+checked: }every generated file is current"; fi
exit "$worst"
