#!/usr/bin/env bash
# Build actionlint from source (Go module proxy only) into the test cache, and install shellcheck from apt, so
# tests/test_workflows.py can lint .github/workflows: the release pipeline cannot run here, but its syntax,
# expressions, action inputs and every `run:` script (through shellcheck) can be checked.
#
# Why from source: like tests/helm/install.sh, CI has the Go toolchain and the Go module proxy but no release
# downloads. actionlint is pinned; a second run with it built and shellcheck present only compares a stamp file
# and exits at once (no go, no apt, no network).
#
# Env knobs (all optional):
#   AWE_CACHE                cache root (default $HOME/.cache/admission-webhook-exporter); the binary goes to
#                            $AWE_CACHE/bin/actionlint, its stamp to $AWE_CACHE/bin/actionlint.VERSION
#   AWE_ACTIONLINT_VERSION   github.com/rhysd/actionlint version (default pinned below)
#   AWE_GO_TIMEOUT           seconds allowed for the build (default 1800)
# Exit codes: 0 ok (built or cached), 2 prerequisite missing (go / module proxy / shellcheck), 1 build failed.
set -euo pipefail

ACTIONLINT_VERSION=${AWE_ACTIONLINT_VERSION:-v1.7.12}   # newest served by proxy.golang.org when pinned
CACHE=${AWE_CACHE:-$HOME/.cache/admission-webhook-exporter}
BIN=$CACHE/bin
STAMP=$BIN/actionlint.VERSION
GO_TIMEOUT=${AWE_GO_TIMEOUT:-1800}
WANT="actionlint=$ACTIONLINT_VERSION"

die2() { echo "tests/actionlint/install.sh: $*" >&2; exit 2; }

# shellcheck is what actionlint runs on every `run:` block; without it those checks are silently skipped.
if ! command -v shellcheck >/dev/null 2>&1; then
  [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1 \
    || die2 "shellcheck not found and cannot apt-get install it here: install shellcheck"
  log=${TMPDIR:-/tmp}/awe-shellcheck-apt.log
  { DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends shellcheck \
      || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends shellcheck; }
  } >"$log" 2>&1 || die2 "apt-get install shellcheck failed (log: $log): $(tail -1 "$log")"
fi

cached() { [[ -f $STAMP && -x $BIN/actionlint && "$(<"$STAMP")" == "$WANT" ]]; }
# ---- fast path: already built at the pinned version (no go, no network) ----
if cached; then
  echo "actionlint cached: $ACTIONLINT_VERSION in $BIN ($(shellcheck --version | sed -n 's/^version: /shellcheck /p'))"
  exit 0
fi

command -v go >/dev/null 2>&1 || die2 "cannot build actionlint $ACTIONLINT_VERSION: 'go' not found on PATH"
mkdir -p "$BIN" "$CACHE/go"
# One builder at a time (CI and a developer shell may race); re-check the stamp once we hold the lock.
exec 9>"$CACHE/actionlint-install.lock"
flock -w "$GO_TIMEOUT" 9 || { echo "tests/actionlint/install.sh: timed out waiting for the lock" >&2; exit 1; }
if cached; then
  echo "actionlint cached: $ACTIONLINT_VERSION in $BIN"
  exit 0
fi

export GOMODCACHE=$CACHE/go/mod GOCACHE=$CACHE/go/build
export GOFLAGS="-modcacherw -buildvcs=false"
export CGO_ENABLED=0 GOWORK=off GO111MODULE=on
t_start=$(date +%s)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/awe-actionlint-build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# ---- prerequisite: the module proxy must answer (one clear line if not) ----
if ! timeout 300 go mod download -json "github.com/rhysd/actionlint@$ACTIONLINT_VERSION" >"$WORK/mod.json" 2>"$WORK/mod.err"; then
  why=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("Error") or "")' "$WORK/mod.json" 2>/dev/null || true)
  [[ -n $why ]] || why=$(grep -m1 -v '^$' "$WORK/mod.err" || echo "timed out or failed")
  die2 "cannot reach the Go module proxy ($(go env GOPROXY)) for github.com/rhysd/actionlint@$ACTIONLINT_VERSION: ${why:0:300}"
fi

echo "building actionlint $ACTIONLINT_VERSION ..."
rm -f "$STAMP"
# The same -X stamp as actionlint's release builds, so `actionlint -version` names the version.
GOBIN=$WORK/bin timeout "$GO_TIMEOUT" go install -trimpath \
  -ldflags="-s -w -X github.com/rhysd/actionlint.version=$ACTIONLINT_VERSION" \
  "github.com/rhysd/actionlint/cmd/actionlint@$ACTIONLINT_VERSION" \
  || { echo "tests/actionlint/install.sh: go install actionlint@$ACTIONLINT_VERSION failed (or exceeded ${GO_TIMEOUT}s)" >&2; exit 1; }
mv -f "$WORK/bin/actionlint" "$BIN/actionlint"
echo "$WANT" >"$STAMP"
echo "built actionlint in $(( $(date +%s) - t_start )) s: $("$BIN/actionlint" -version | head -1)"
