#!/usr/bin/env bash
# Build a real kube-apiserver and etcd from source (Go module proxy only) into a cache folder, so
# the test harness (tests/controlplane/harness.py) can run a genuine control plane on loopback.
#
# Why from source: this project's CI has the Go toolchain and the Go module proxy but no container
# engine and no release-binary downloads. Both binaries are pinned; a second run with the pinned
# versions already built only compares a stamp file and exits at once (no network, no `go`).
#
# Env knobs (all optional):
#   AWE_CACHE         cache root (default $HOME/.cache/admission-webhook-exporter); binaries go
#                     to $AWE_CACHE/bin, Go module/build caches to $AWE_CACHE/go
#   AWE_K8S_VERSION   k8s.io/kubernetes version (default pinned below)
#   AWE_ETCD_VERSION  go.etcd.io/etcd/server/v3 version (default pinned below)
#   AWE_GO_TIMEOUT    seconds allowed for the whole build (default 3600)
# Exit codes: 0 ok (built or cached), 2 prerequisite missing (go / module proxy), 1 build failed.
set -euo pipefail
# The whole body is one compound command, so bash parses it before running any of it: editing
# this file while a (minutes-long) build runs cannot break that run.
{
K8S_PINNED=v1.34.12                           # newest v1.34.x served by proxy.golang.org when pinned
K8S_PINNED_COMMIT=26c89157669bdc7e3657302bc1abde758507095b  # its tag's commit, for `kube-apiserver --version`
K8S_VERSION=${AWE_K8S_VERSION:-$K8S_PINNED}
ETCD_VERSION=${AWE_ETCD_VERSION:-v3.6.16}   # newest v3.6.x served by proxy.golang.org when pinned
CACHE=${AWE_CACHE:-$HOME/.cache/admission-webhook-exporter}
BIN=$CACHE/bin
STAMP=$BIN/VERSIONS
GO_TIMEOUT=${AWE_GO_TIMEOUT:-3600}
WANT="kube-apiserver=$K8S_VERSION etcd=$ETCD_VERSION"

# ---- fast path: already built at the pinned versions (no go, no network) ----
if [[ -f $STAMP && -x $BIN/kube-apiserver && -x $BIN/etcd && "$(<"$STAMP")" == "$WANT" ]]; then
  echo "control plane binaries cached: $WANT in $BIN"
  exit 0
fi

die2() { echo "install.sh: $*" >&2; exit 2; }
command -v go >/dev/null 2>&1 || die2 "cannot build kube-apiserver/etcd: 'go' not found on PATH (install Go >= 1.25)"

mkdir -p "$BIN" "$CACHE/go"
# One builder at a time (CI and a developer shell may race); re-check the stamp once we hold the lock.
exec 9>"$CACHE/install.lock"
flock -w "$GO_TIMEOUT" 9 || { echo "install.sh: timed out waiting for $CACHE/install.lock" >&2; exit 1; }
if [[ -f $STAMP && -x $BIN/kube-apiserver && -x $BIN/etcd && "$(<"$STAMP")" == "$WANT" ]]; then
  echo "control plane binaries cached: $WANT in $BIN"
  exit 0
fi

export GOMODCACHE=$CACHE/go/mod GOCACHE=$CACHE/go/build
export GOFLAGS="-mod=mod -modcacherw -buildvcs=false"
export CGO_ENABLED=0 GOWORK=off GO111MODULE=on
# -mod=mod lets `go build` resolve the throw-away module's requirements; checksums are still
# verified against sum.golang.org (reached through the proxy's /sumdb endpoint when direct fails).

t_start=$(date +%s)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/awe-cp-build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# ---- prerequisite: the module proxy must answer (one clear line if not) ----
json_field() {  # $1 = file from `go mod download -json`, $2 = python expression on d
  python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]) or "")' "$1" "$2" 2>/dev/null || true
}
if ! timeout 600 go mod download -json "k8s.io/kubernetes@$K8S_VERSION" >"$WORK/k8s.json" 2>"$WORK/k8s.err"; then
  why=$(json_field "$WORK/k8s.json" 'd.get("Error")')
  [[ -n $why ]] || why=$(grep -m1 -v '^$' "$WORK/k8s.err" || echo "timed out or failed")
  die2 "cannot reach the Go module proxy ($(go env GOPROXY)) for k8s.io/kubernetes@$K8S_VERSION: ${why:0:300}"
fi
K8S_GOMOD=$(json_field "$WORK/k8s.json" 'd["GoMod"]')
K8S_COMMIT=$(json_field "$WORK/k8s.json" 'd.get("Origin", {}).get("Hash")')  # not every proxy reply has it
[[ -z $K8S_COMMIT && $K8S_VERSION == "$K8S_PINNED" ]] && K8S_COMMIT=$K8S_PINNED_COMMIT

# ---- etcd ----
build_etcd() {
  local d=$WORK/etcd t0=$(date +%s)
  mkdir -p "$d"
  cat >"$d/go.mod" <<EOF
module awe.local/etcdbuild

go 1.26.0

require go.etcd.io/etcd/server/v3 $ETCD_VERSION
EOF
  echo "building etcd $ETCD_VERSION ..."
  # go.etcd.io/etcd/server/v3 (the module root) is etcd's `package main`.
  (cd "$d" && timeout "$GO_TIMEOUT" go build -trimpath -ldflags="-s -w" -o "$BIN/.etcd.tmp" go.etcd.io/etcd/server/v3)
  mv -f "$BIN/.etcd.tmp" "$BIN/etcd"
  echo "built etcd $ETCD_VERSION in $(( $(date +%s) - t0 )) s: $("$BIN/etcd" --version | head -1)"
}

# ---- kube-apiserver ----
build_apiserver() {
  local d=$WORK/k8s t0=$(date +%s) ver=${K8S_VERSION#v} minor major
  major=${ver%%.*}; minor=${ver#*.}; minor=${minor%%.*}
  mkdir -p "$d"
  {
    echo "module awe.local/k8sbuild"
    echo
    # Same go / godebug settings as k8s.io/kubernetes' own go.mod (godebug only applies to the main module).
    grep -E '^(go|godebug) ' "$K8S_GOMOD"
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    echo "replace ("
    # Every `k8s.io/X => ./staging/src/k8s.io/X` becomes `k8s.io/X => k8s.io/X v0.<minor>.<patch>`.
    sed -nE 's#^[[:space:]]*(k8s\.io/[A-Za-z0-9._-]+)[[:space:]]+=>[[:space:]]+\./staging/src/.*#\t\1 => \1 v0.'"${ver#*.}"'#p' "$K8S_GOMOD"
    echo ")"
  } >"$d/go.mod"
  grep -q 'k8s.io/api => k8s.io/api v0' "$d/go.mod" || { echo "install.sh: no staging replace lines found in $K8S_GOMOD" >&2; exit 1; }
  echo "building kube-apiserver $K8S_VERSION ($(grep -c '=> k8s.io/' "$d/go.mod") staging replaces; a cold build takes many minutes) ..."
  local pkg=k8s.io/component-base/version
  local ld="-s -w -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
  [[ -n $K8S_COMMIT ]] && ld="$ld -X $pkg.gitCommit=$K8S_COMMIT"
  (cd "$d" && timeout "$GO_TIMEOUT" go build -trimpath -ldflags="$ld" -o "$BIN/.kube-apiserver.tmp" k8s.io/kubernetes/cmd/kube-apiserver)
  mv -f "$BIN/.kube-apiserver.tmp" "$BIN/kube-apiserver"
  echo "built kube-apiserver $K8S_VERSION in $(( $(date +%s) - t0 )) s: $("$BIN/kube-apiserver" --version)"
}

rm -f "$STAMP"
build_etcd
build_apiserver
echo "$WANT" >"$STAMP"
echo "control plane binaries ready in $BIN after $(( $(date +%s) - t_start )) s ($(go env GOVERSION))"
exit 0
}
