#!/usr/bin/env bash
# Build `helm` (v3) from source, Go module proxy only, into the test cache, so tests/test_deploy.py can run
# `helm lint` / `helm template` on deploy/helm/admission-webhook-exporter and deploy/render.sh can render
# deploy/manifests/.
#
# Why from source: like tests/controlplane/install.sh, CI has the Go toolchain and the Go module proxy but
# no release-binary downloads. helm is pinned; a second run with the pinned version already built only
# compares a stamp file and exits at once (no network, no `go`).
#
# Env knobs (all optional):
#   AWE_CACHE          cache root (default $HOME/.cache/admission-webhook-exporter); the binary goes to
#                      $AWE_CACHE/bin/helm, its stamp to $AWE_CACHE/bin/helm.VERSION, Go caches to $AWE_CACHE/go
#   AWE_HELM_VERSION   helm.sh/helm/v3 version (default pinned below)
#   AWE_GO_TIMEOUT     seconds allowed for the build (default 1800)
# Exit codes: 0 ok (built or cached), 2 prerequisite missing (go / module proxy), 1 build failed.
set -euo pipefail

HELM_VERSION=${AWE_HELM_VERSION:-v3.22.0}   # newest v3.x served by proxy.golang.org when pinned
CACHE=${AWE_CACHE:-$HOME/.cache/admission-webhook-exporter}
BIN=$CACHE/bin
STAMP=$BIN/helm.VERSION   # its own stamp: tests/controlplane/install.sh owns $BIN/VERSIONS
GO_TIMEOUT=${AWE_GO_TIMEOUT:-1800}
WANT="helm=$HELM_VERSION"

cached() { [[ -f $STAMP && -x $BIN/helm && "$(<"$STAMP")" == "$WANT" ]]; }
# ---- fast path: already built at the pinned version (no go, no network) ----
if cached; then
  echo "helm cached: $HELM_VERSION in $BIN"
  exit 0
fi

die2() { echo "tests/helm/install.sh: $*" >&2; exit 2; }
command -v go >/dev/null 2>&1 || die2 "cannot build helm $HELM_VERSION: 'go' not found on PATH (install Go >= 1.26)"

mkdir -p "$BIN" "$CACHE/go"
# One builder at a time (CI and a developer shell may race); re-check the stamp once we hold the lock.
exec 9>"$CACHE/helm-install.lock"
flock -w "$GO_TIMEOUT" 9 || { echo "tests/helm/install.sh: timed out waiting for $CACHE/helm-install.lock" >&2; exit 1; }
if cached; then
  echo "helm cached: $HELM_VERSION in $BIN"
  exit 0
fi

export GOMODCACHE=$CACHE/go/mod GOCACHE=$CACHE/go/build
export GOFLAGS="-modcacherw -buildvcs=false"
export CGO_ENABLED=0 GOWORK=off GO111MODULE=on
t_start=$(date +%s)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/awe-helm-build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# ---- prerequisite: the module proxy must answer (one clear line if not) ----
json_field() {  # $1 = file from `go mod download -json`, $2 = python expression on d
  python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]) or "")' "$1" "$2" 2>/dev/null || true
}
if ! timeout 300 go mod download -json "helm.sh/helm/v3@$HELM_VERSION" >"$WORK/helm.json" 2>"$WORK/helm.err"; then
  why=$(json_field "$WORK/helm.json" 'd.get("Error")')
  [[ -n $why ]] || why=$(grep -m1 -v '^$' "$WORK/helm.err" || echo "timed out or failed")
  die2 "cannot reach the Go module proxy ($(go env GOPROXY)) for helm.sh/helm/v3@$HELM_VERSION: ${why:0:300}"
fi
GOMOD=$(json_field "$WORK/helm.json" 'd["GoMod"]')

# The same -X stamps as helm's Makefile: its version, and the Kubernetes version `helm template` and `helm lint`
# assume (Capabilities.KubeVersion), derived from the client-go it is built with (v0.N.x -> 1.N).
client_go=$(sed -nE 's#^[[:space:]]*k8s\.io/client-go[[:space:]]+v0\.([0-9]+)\..*#\1#p' "$GOMOD" | head -1)
[[ -n $client_go ]] || { echo "tests/helm/install.sh: no k8s.io/client-go requirement in $GOMOD" >&2; exit 1; }
ld="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
  ld="$ld -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$client_go"
done

echo "building helm $HELM_VERSION (Kubernetes 1.$client_go client libraries; a cold build takes minutes) ..."
# helm's go.mod has no replace/exclude directives, so `go install module@version` builds it with its own go.sum.
rm -f "$STAMP"
GOBIN=$WORK/bin timeout "$GO_TIMEOUT" go install -trimpath -ldflags="$ld" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" \
  || { echo "tests/helm/install.sh: go install helm.sh/helm/v3/cmd/helm@$HELM_VERSION failed (or exceeded ${GO_TIMEOUT}s)" >&2; exit 1; }
mv -f "$WORK/bin/helm" "$BIN/helm"
echo "$WANT" >"$STAMP"
echo "built helm in $(( $(date +%s) - t_start )) s: $("$BIN/helm" version --short) ($(go env GOVERSION))"
