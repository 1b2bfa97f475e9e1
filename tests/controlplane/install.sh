#!/usr/bin/env bash
# Build the Kubernetes test binaries from source (Go module proxy only) into the test cache: etcd and
# kube-apiserver for the control plane (tests/controlplane/harness.py), kubelet, kube-controller-manager,
# kube-scheduler for the node (tests/node/harness.py), and kubectl for the tests that run the README's
# commands. All Kubernetes binaries at one pinned version: a kubelet newer than its apiserver is unsupported,
# and one version keeps the build cache shared (each binary after the first compiles only what it adds).
#
# Why from source: this project's CI has the Go toolchain and the Go module proxy but no container engine
# and no release-binary downloads. Each binary has its own stamp ($BIN/<name>.VERSION): a run with every
# pinned binary built only compares stamps and exits at once (no network, no `go`); a run after a version
# bump, or with one binary missing, builds only what is stale. The skeleton (cache, lock, Go env, stamps)
# is tests/lib/gobuild.sh, shared with tests/helm/install.sh.
#
# Env knobs (all optional):
#   AWE_CACHE         cache root (default $HOME/.cache/admission-webhook-exporter); binaries go
#                     to $AWE_CACHE/bin, Go module/build caches to $AWE_CACHE/go
#   AWE_K8S_VERSION   k8s.io/kubernetes version (default pinned below)
#   AWE_ETCD_VERSION  go.etcd.io/etcd/server/v3 version (default pinned below)
#   AWE_GO_TIMEOUT    seconds allowed for each build (default 3600)
# Exit codes: 0 ok (built or cached), 2 prerequisite missing (go / module proxy), 1 build failed.
set -euo pipefail
# The whole body is one compound command, so bash parses it before running any of it: editing
# this file while a (minutes-long) build runs cannot break that run.
{
# shellcheck source=tests/lib/gobuild.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/gobuild.sh"
gb_init "tests/controlplane/install.sh"
K8S_PINNED=v1.34.12                           # newest v1.34.x served by proxy.golang.org when pinned
K8S_PINNED_COMMIT=26c89157669bdc7e3657302bc1abde758507095b  # its tag's commit, for `--version`
K8S_VERSION=${AWE_K8S_VERSION:-$K8S_PINNED}
ETCD_VERSION=${AWE_ETCD_VERSION:-v3.6.16}   # newest v3.6.x served by proxy.golang.org when pinned
# kube-apiserver first: the control-plane tests need only it and etcd, and it compiles most shared packages.
K8S_BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl)
# Stamp of older checkouts of this script (one file for both); still written, so they keep their fast path.
LEGACY_STAMP=$BIN/VERSIONS
LEGACY_WANT="kube-apiserver=$K8S_VERSION etcd=$ETCD_VERSION"

stale() {  # prints the binaries not built at the pinned versions
  gb_cached etcd "etcd=$ETCD_VERSION" || echo etcd
  local b
  for b in "${K8S_BINARIES[@]}"; do gb_cached "$b" "$b=$K8S_VERSION" || echo "$b"; done
}
adopt_legacy() {  # binaries built by an older checkout under the one-file stamp count as built
  if [[ -f $LEGACY_STAMP && "$(<"$LEGACY_STAMP")" == "$LEGACY_WANT" && -x $BIN/kube-apiserver && -x $BIN/etcd ]]; then
    [[ -f $(gb_stamp etcd) ]] || echo "etcd=$ETCD_VERSION" >"$(gb_stamp etcd)"
    [[ -f $(gb_stamp kube-apiserver) ]] || echo "kube-apiserver=$K8S_VERSION" >"$(gb_stamp kube-apiserver)"
  fi
  return 0
}

# ---- fast path: everything built at the pinned versions (no go, no network) ----
adopt_legacy
TODO=$(stale)
if [[ -z $TODO ]]; then
  echo "Kubernetes test binaries cached: etcd=$ETCD_VERSION ${K8S_BINARIES[*]}=$K8S_VERSION in $BIN"
  exit 0
fi

# One builder at a time (CI and a developer shell may race); re-check the stamps once we hold the lock.
gb_lock install.lock
adopt_legacy
TODO=$(stale)
if [[ -z $TODO ]]; then
  echo "Kubernetes test binaries cached (built meanwhile by another run) in $BIN"
  exit 0
fi
gb_go_env
echo "to build: $(echo $TODO)"

# ---- etcd ----
if grep -qx etcd <<<"$TODO"; then
  d=$WORK/etcd t0=$(date +%s)
  mkdir -p "$d"
  cat >"$d/go.mod" <<EOM
module awe.local/etcdbuild

go 1.26.0

require go.etcd.io/etcd/server/v3 $ETCD_VERSION
EOM
  echo "building etcd $ETCD_VERSION ..."
  # go.etcd.io/etcd/server/v3 (the module root) is etcd's `package main`.
  (cd "$d" && timeout "$GO_TIMEOUT" go build -trimpath -ldflags="-s -w" -o "$BIN/.etcd.tmp" go.etcd.io/etcd/server/v3) \
    || gb_die "go build etcd $ETCD_VERSION failed (or exceeded ${GO_TIMEOUT}s)"
  gb_install etcd "etcd=$ETCD_VERSION"
  echo "built etcd $ETCD_VERSION in $(gb_elapsed "$t0") s: $("$BIN/etcd" --version | head -1)"
fi

# ---- Kubernetes: one throw-away module requiring k8s.io/kubernetes, every staging module replaced ----
if grep -qv '^etcd$' <<<"$TODO"; then
  gb_mod_download "k8s.io/kubernetes@$K8S_VERSION" "$WORK/k8s.json"
  K8S_GOMOD=$(gb_json_field "$WORK/k8s.json" 'd["GoMod"]')
  K8S_COMMIT=$(gb_json_field "$WORK/k8s.json" 'd.get("Origin", {}).get("Hash")')  # not every proxy reply has it
  [[ -z $K8S_COMMIT && $K8S_VERSION == "$K8S_PINNED" ]] && K8S_COMMIT=$K8S_PINNED_COMMIT
  d=$WORK/k8s ver=${K8S_VERSION#v}
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
  grep -q 'k8s.io/api => k8s.io/api v0' "$d/go.mod" || gb_die "no staging replace lines found in $K8S_GOMOD"
  pkg=k8s.io/component-base/version
  ld="-s -w -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
  [[ -n $K8S_COMMIT ]] && ld="$ld -X $pkg.gitCommit=$K8S_COMMIT"
  for b in "${K8S_BINARIES[@]}"; do
    grep -qx "$b" <<<"$TODO" || continue
    t0=$(date +%s)
    echo "building $b $K8S_VERSION (the first one cold takes many minutes) ..."
    # (No `providerless` tag: 1.34 has no in-tree cloud providers left, the tag selects no file.)
    (cd "$d" && timeout "$GO_TIMEOUT" go build -trimpath -ldflags="$ld" -o "$BIN/.$b.tmp" "k8s.io/kubernetes/cmd/$b") \
      || gb_die "go build $b $K8S_VERSION failed (or exceeded ${GO_TIMEOUT}s)"
    gb_install "$b" "$b=$K8S_VERSION"
    if [[ $b == kubectl ]]; then v=$("$BIN/$b" version --client 2>&1 | head -1); else v=$("$BIN/$b" --version 2>&1 | head -1); fi
    echo "built $b $K8S_VERSION in $(gb_elapsed "$t0") s: $v"
  done
fi

echo "$LEGACY_WANT" >"$LEGACY_STAMP"
echo "Kubernetes test binaries ready in $BIN after $(gb_elapsed) s ($(go env GOVERSION))"
exit 0
}
