#!/usr/bin/env bash
# Build `helm` (v3) from source, Go module proxy only, into the test cache, so tests/test_deploy.py can run
# `helm lint` / `helm template` on deploy/helm/admission-webhook-exporter, deploy/render.sh can render
# deploy/manifests/, and the node tests (tests/node/) can `helm install` the chart.
#
# Why from source: like tests/controlplane/install.sh, CI has the Go toolchain and the Go module proxy but
# no release-binary downloads. helm is pinned; a second run with the pinned version already built only
# compares a stamp file and exits at once (no network, no `go`). The skeleton (cache, lock, Go env, stamp)
# is tests/lib/gobuild.sh.
#
# Env knobs (all optional):
#   AWE_CACHE          cache root (default $HOME/.cache/admission-webhook-exporter); the binary goes to
#                      $AWE_CACHE/bin/helm, its stamp to $AWE_CACHE/bin/helm.VERSION, Go caches to $AWE_CACHE/go
#   AWE_HELM_VERSION   helm.sh/helm/v3 version (default pinned below)
#   AWE_GO_TIMEOUT     seconds allowed for the build (default 3600)
# Exit codes: 0 ok (built or cached), 2 prerequisite missing (go / module proxy), 1 build failed.
set -euo pipefail
# shellcheck source=tests/lib/gobuild.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/gobuild.sh"
gb_init "tests/helm/install.sh"
HELM_VERSION=${AWE_HELM_VERSION:-v3.22.0}   # newest v3.x served by proxy.golang.org when pinned
WANT="helm=$HELM_VERSION"

# ---- fast path: already built at the pinned version (no go, no network) ----
if gb_cached helm "$WANT"; then
  echo "helm cached: $HELM_VERSION in $BIN"
  exit 0
fi
# One builder at a time (CI and a developer shell may race); re-check the stamp once we hold the lock.
gb_lock helm-install.lock
if gb_cached helm "$WANT"; then
  echo "helm cached: $HELM_VERSION in $BIN"
  exit 0
fi
gb_go_env
export GOFLAGS="-modcacherw -buildvcs=false"  # `go install module@version`: no -mod=mod (no main module)
gb_mod_download "helm.sh/helm/v3@$HELM_VERSION" "$WORK/helm.json"
GOMOD=$(gb_json_field "$WORK/helm.json" 'd["GoMod"]')

# The same -X stamps as helm's Makefile: its version, and the Kubernetes version `helm template` and `helm lint`
# assume (Capabilities.KubeVersion), derived from the client-go it is built with (v0.N.x -> 1.N).
client_go=$(sed -nE 's#^[[:space:]]*k8s\.io/client-go[[:space:]]+v0\.([0-9]+)\..*#\1#p' "$GOMOD" | head -1)
[[ -n $client_go ]] || gb_die "no k8s.io/client-go requirement in $GOMOD"
ld="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
  ld="$ld -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$client_go"
done

echo "building helm $HELM_VERSION (Kubernetes 1.$client_go client libraries; a cold build takes minutes) ..."
# helm's go.mod has no replace/exclude directives, so `go install module@version` builds it with its own go.sum.
GOBIN=$WORK/bin timeout "$GO_TIMEOUT" go install -trimpath -ldflags="$ld" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" \
  || gb_die "go install helm.sh/helm/v3/cmd/helm@$HELM_VERSION failed (or exceeded ${GO_TIMEOUT}s)"
mv -f "$WORK/bin/helm" "$BIN/.helm.tmp"
gb_install helm "$WANT"
echo "built helm in $(gb_elapsed) s: $("$BIN/helm" version --short) ($(go env GOVERSION))"
