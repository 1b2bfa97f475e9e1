#!/usr/bin/env bash
# Build kube-prometheus-stack's machinery here, for tests/monitoring/: prometheus-operator,
# prometheus-config-reloader and Prometheus from the Go module proxy, the operator's CRDs from its module, and
# the container images the operator's Pods run (Alertmanager from Debian's package), with no registry.
#
# Why these versions (tests/monitoring/README.md has the whole story):
# * prometheus-operator v0.85.0: kube-prometheus-stack pins v0.95.x today (chart 92.x/93.x), but the Go module
#   proxy here serves one version of github.com/prometheus-operator/prometheus-operator, v0.85.0 (v0.95.0/.1/.2
#   answer "403 This module version is not available"); kube-prometheus-stack 77.x pinned it.
# * Prometheus v3.5.0 (module github.com/prometheus/prometheus v0.305.0), kube-prometheus-stack 77.0.0's default,
#   built from source: Debian's prometheus package (bookworm 2.42.0) is built without Kubernetes service discovery
#   ("field kubernetes_sd_configs not found in type config.ScrapeConfig"), and every scrape job and Alertmanager
#   the operator generates is discovered that way.
# * Alertmanager 0.25.0 from Debian bookworm's prometheus-alertmanager package, which the operator runs as is.
#
# What it makes ($AWE_CACHE, default ~/.cache/admission-webhook-exporter):
#   bin/prometheus-operator, bin/prometheus-config-reloader, bin/prometheus   (each with its bin/<name>.VERSION)
#   monitoring/crds/*.yaml     the operator module's example/prometheus-operator-crd/
#   images/monitoring.tar      docker-archive, `ctr -n k8s.io images import` keeps every name:
#       localhost/prometheus-operator:v0.85.0            FROM scratch, /bin/operator
#       localhost/prometheus-config-reloader:v0.85.0     FROM scratch, /bin/prometheus-config-reloader
#       localhost/prometheus:v3.5.0                      FROM scratch, /bin/prometheus (built above)
#       localhost/debian-alertmanager:v0.25.0            Debian bookworm's prometheus-alertmanager package
#       localhost/debian-python:3.11                     the same Debian rootfs, for the test's receiver Pod
#   images/monitoring.env      shell-sourceable names and versions (read by tests/monitoring/build.py)
# The Debian images share one rootfs made by mmdebstrap (minbase + prometheus-alertmanager and python3, installed by
# dpkg with their dependencies), cached as images/debian-monitoring.rootfs.tar. Images are built with the project's
# private podman (tests/image/build.sh --env: its own storage and configuration, never /etc/containers).
#
# A second run with everything at the pinned versions compares stamps and exits (no go, no podman, no network).
# Env knobs: AWE_CACHE, AWE_GO_TIMEOUT (default 3600 s per Go build), AWE_IMAGE_TIMEOUT (1800 s per image step),
# AWE_DEBIAN_MIRROR (default: the mirror apt uses here).
# Exit codes: 0 ok (built or cached), 2 prerequisite missing (one line says which), 1 build failed.
set -euo pipefail
{
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=../lib/gobuild.sh
source "$ROOT/tests/lib/gobuild.sh"
gb_init "tests/monitoring/install.sh"
OPERATOR_VERSION=v0.85.0          # the only version of the operator's root module the Go module proxy serves
PROMETHEUS_VERSION=v3.5.0         # kube-prometheus-stack 77.0.0's default Prometheus
PROMETHEUS_MODULE_VERSION=v0.305.0  # github.com/prometheus/prometheus tags 3.5.0 as v0.305.0
SUITE=bookworm
ALERTMANAGER_DEB_VERSION=0.25.0   # bookworm's prometheus-alertmanager (0.25.0-1+b4)
IMAGES=$CACHE/images
CRDS=$CACHE/monitoring/crds
IMAGE_TIMEOUT=${AWE_IMAGE_TIMEOUT:-1800}
OPERATOR_WANT="prometheus-operator=$OPERATOR_VERSION"
RELOADER_WANT="prometheus-config-reloader=$OPERATOR_VERSION"
PROMETHEUS_WANT="prometheus=$PROMETHEUS_VERSION"
ROOTFS=$IMAGES/debian-monitoring.rootfs.tar
ROOTFS_STAMP=$ROOTFS.stamp
ROOTFS_WANT="$SUITE minbase prometheus-alertmanager=$ALERTMANAGER_DEB_VERSION python3 (no doc, man, locale)"
ARCHIVE=$IMAGES/monitoring.tar
ARCHIVE_STAMP=$ARCHIVE.stamp
ENV_FILE=$IMAGES/monitoring.env
OPERATOR_IMAGE=localhost/prometheus-operator:$OPERATOR_VERSION
RELOADER_IMAGE=localhost/prometheus-config-reloader:$OPERATOR_VERSION
PROMETHEUS_IMAGE=localhost/prometheus:$PROMETHEUS_VERSION
ALERTMANAGER_IMAGE=localhost/debian-alertmanager:v$ALERTMANAGER_DEB_VERSION
PYTHON_IMAGE=localhost/debian-python:3.11
# Everything the archive is made from: a change to any of these rebuilds it.
ARCHIVE_WANT="$OPERATOR_WANT $RELOADER_WANT $PROMETHEUS_WANT | $ROOTFS_WANT | $OPERATOR_IMAGE $RELOADER_IMAGE $PROMETHEUS_IMAGE $ALERTMANAGER_IMAGE $PYTHON_IMAGE | $(sha256sum "$0" | cut -c1-16)"

stamp_is() { [[ -f $1 && "$(<"$1")" == "$2" ]]; }
operator_cached() {
  gb_cached prometheus-operator "$OPERATOR_WANT" && gb_cached prometheus-config-reloader "$RELOADER_WANT" \
    && stamp_is "$CRDS/VERSION" "$OPERATOR_VERSION"
}
all_cached() {
  operator_cached && gb_cached prometheus "$PROMETHEUS_WANT" && stamp_is "$ARCHIVE_STAMP" "$ARCHIVE_WANT" \
    && [[ -f $ARCHIVE && -f $ENV_FILE ]]
}

write_env() {
  cat >"$ENV_FILE.new" <<EOF
# Written by tests/monitoring/install.sh
AWE_MONITORING_ARCHIVE=$ARCHIVE
AWE_OPERATOR_VERSION=$OPERATOR_VERSION
AWE_OPERATOR_IMAGE=$OPERATOR_IMAGE
AWE_RELOADER_IMAGE=$RELOADER_IMAGE
AWE_PROMETHEUS_IMAGE=$PROMETHEUS_IMAGE
AWE_PROMETHEUS_VERSION=$PROMETHEUS_VERSION
AWE_ALERTMANAGER_IMAGE=$ALERTMANAGER_IMAGE
AWE_ALERTMANAGER_VERSION=v$ALERTMANAGER_DEB_VERSION
AWE_RECEIVER_IMAGE=$PYTHON_IMAGE
AWE_CRDS_DIR=$CRDS
AWE_OPERATOR_BIN=$BIN/prometheus-operator
AWE_RELOADER_BIN=$BIN/prometheus-config-reloader
AWE_PROMETHEUS_BIN=$BIN/prometheus
EOF
  mv -f "$ENV_FILE.new" "$ENV_FILE"
}

# ---- fast path: everything at the pinned versions (no go, no podman, no network) ----
if all_cached; then
  echo "monitoring cached: prometheus-operator $OPERATOR_VERSION, Prometheus $PROMETHEUS_VERSION, Alertmanager $ALERTMANAGER_DEB_VERSION ($ARCHIVE)"
  exit 0
fi
# One builder at a time (CI and a developer shell may race); re-check the stamps once we hold the lock.
gb_lock monitoring-install.lock
mkdir -p "$IMAGES"
if all_cached; then
  echo "monitoring cached (built meanwhile by another run)"
  exit 0
fi

# A throw-away main module requiring $1@$2 (with the replace directives of that module's own go.mod, which only
# apply to a main module) and its go.sum, in $WORK/$3; prints the module's directory.
main_module() {
  local module=$1 version=$2 name=$3 dir
  gb_mod_download "$module@$version" "$WORK/$name.json"
  dir=$(gb_json_field "$WORK/$name.json" 'd["Dir"]')
  mkdir -p "$WORK/$name"
  {
    printf 'module awe.local/%sbuild\n\ngo 1.24.0\n\nrequire %s %s\n' "$name" "$module" "$version"
    sed -n '/^replace[[:space:]]*(/,/^)/p; /^replace[[:space:]][^(]/p' "$dir/go.mod" | grep -v '=> \./'
  } >"$WORK/$name/go.mod"
  cp "$dir/go.sum" "$WORK/$name/go.sum" && chmod u+w "$WORK/$name/go.sum"
  echo "$dir"
}

# ---- 1. prometheus-operator and prometheus-config-reloader ----
build_operator() {
  local module=github.com/prometheus-operator/prometheus-operator t0 dir
  t0=$(date +%s)
  dir=$(main_module "$module" "$OPERATOR_VERSION" operator)
  # The module's go.mod replaces pkg/apis/monitoring and pkg/client with ./pkg/..., separate modules that are not
  # in its zip (the grep above drops those lines): require them at the same version instead.
  printf 'require (\n\t%s/pkg/apis/monitoring %s\n\t%s/pkg/client %s\n)\n' \
    "$module" "$OPERATOR_VERSION" "$module" "$OPERATOR_VERSION" >>"$WORK/operator/go.mod"
  # The same -X stamps as the module's Makefile (GO_BUILD_LDFLAGS): the operator labels what it creates with it.
  local ld="-s -w -X github.com/prometheus/common/version.Version=${OPERATOR_VERSION#v} -X github.com/prometheus/common/version.Branch=$OPERATOR_VERSION -X github.com/prometheus/common/version.BuildUser=awe-tests"
  echo "building prometheus-operator and prometheus-config-reloader $OPERATOR_VERSION (a cold build takes minutes) ..."
  (cd "$WORK/operator" \
    && timeout "$GO_TIMEOUT" nice -n 10 go build -trimpath -ldflags="$ld" -o "$BIN/.prometheus-operator.tmp" "$module/cmd/operator" \
    && timeout "$GO_TIMEOUT" nice -n 10 go build -trimpath -ldflags="$ld" -o "$BIN/.prometheus-config-reloader.tmp" "$module/cmd/prometheus-config-reloader") \
    || gb_die "go build of $module/cmd/{operator,prometheus-config-reloader}@$OPERATOR_VERSION failed (or exceeded ${GO_TIMEOUT}s)"
  # The CRDs of the same module (what kube-prometheus-stack's crds subchart is generated from).
  rm -rf "$CRDS.new" && mkdir -p "$CRDS.new"
  cp "$dir"/example/prometheus-operator-crd/monitoring.coreos.com_*.yaml "$CRDS.new/"
  chmod -R u+w "$CRDS.new"
  echo "$OPERATOR_VERSION" >"$CRDS.new/VERSION"
  rm -rf "$CRDS" && mv "$CRDS.new" "$CRDS"
  gb_install prometheus-operator "$OPERATOR_WANT"
  gb_install prometheus-config-reloader "$RELOADER_WANT"
  echo "built prometheus-operator $OPERATOR_VERSION in $(gb_elapsed "$t0") s ($(go env GOVERSION)): $("$BIN/prometheus-operator" --version 2>&1 | head -1)"
}

# ---- 2. Prometheus ----
build_prometheus() {
  local module=github.com/prometheus/prometheus t0
  t0=$(date +%s)
  main_module "$module" "$PROMETHEUS_MODULE_VERSION" prometheus >/dev/null
  # The -X stamps of its .promu.yml. No `builtinassets` tag: the web UI is not embedded (the tests use the API).
  local ld="-s -w -X github.com/prometheus/common/version.Version=${PROMETHEUS_VERSION#v} -X github.com/prometheus/common/version.Branch=$PROMETHEUS_VERSION -X github.com/prometheus/common/version.BuildUser=awe-tests"
  echo "building Prometheus $PROMETHEUS_VERSION ($module $PROMETHEUS_MODULE_VERSION; a cold build takes minutes) ..."
  (cd "$WORK/prometheus" \
    && timeout "$GO_TIMEOUT" nice -n 10 go build -trimpath -tags netgo -ldflags="$ld" -o "$BIN/.prometheus.tmp" "$module/cmd/prometheus") \
    || gb_die "go build of $module/cmd/prometheus@$PROMETHEUS_MODULE_VERSION failed (or exceeded ${GO_TIMEOUT}s)"
  gb_install prometheus "$PROMETHEUS_WANT"
  echo "built Prometheus in $(gb_elapsed "$t0") s: $("$BIN/prometheus" --version 2>&1 | head -1)"
}

if ! operator_cached || ! gb_cached prometheus "$PROMETHEUS_WANT"; then
  gb_go_env
  operator_cached || build_operator
  gb_cached prometheus "$PROMETHEUS_WANT" || build_prometheus
fi
if [[ -z ${WORK:-} ]]; then  # gb_go_env made it when Go was needed
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/awe-monitoring-build.XXXXXX")
  trap 'rm -rf "$WORK"' EXIT
fi

# ---- 3. the images (private podman) ----
[[ -x $ROOT/tests/image/build.sh ]] || gb_die2 "tests/image/build.sh (the private podman) is missing"
# shellcheck disable=SC1090  # the private podman's environment (CONTAINERS_CONF, CONTAINERS_STORAGE_CONF, ...)
source <("$ROOT/tests/image/build.sh" --env) || gb_die2 "tests/image/build.sh --env failed"
command -v podman >/dev/null 2>&1 || gb_die2 "podman not found (apt-get install podman)"

build_rootfs() {
  command -v mmdebstrap >/dev/null 2>&1 || gb_die2 "mmdebstrap not found (apt-get install mmdebstrap)"
  local mirror=${AWE_DEBIAN_MIRROR:-} t0
  t0=$(date +%s)
  if [[ -z $mirror ]]; then  # the mirror apt uses here, e.g. http://deb.debian.org/debian
    mirror=$(apt-cache policy 2>/dev/null | sed -nE "s#^ +[0-9]+ (https?://[^ ]+) $SUITE/main .*#\1#p" | head -1)
  fi
  [[ -n $mirror ]] || gb_die2 "no Debian mirror for $SUITE found in apt's configuration; set AWE_DEBIAN_MIRROR"
  echo "making the Debian $SUITE rootfs with prometheus-alertmanager $ALERTMANAGER_DEB_VERSION and python3 ($mirror) ..."
  rm -f "$ROOTFS_STAMP"
  # minbase + the packages as dpkg installs them (their dependencies included); no recommends. Documentation,
  # manual pages and translations are left out (dpkg path-exclude): nothing here reads them.
  local tmp=$IMAGES/.debian-monitoring.rootfs.new.tar  # mmdebstrap picks its output format by the extension
  rm -rf "$tmp"
  timeout "$IMAGE_TIMEOUT" nice -n 10 mmdebstrap --quiet --variant=minbase --mode=root --format=tar \
    --aptopt='APT::Install-Recommends "false"' \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --include="prometheus-alertmanager=$ALERTMANAGER_DEB_VERSION*,python3" \
    "$SUITE" "$tmp" "$mirror" || gb_die "mmdebstrap failed"
  mv -f "$tmp" "$ROOTFS"
  echo "$ROOTFS_WANT" >"$ROOTFS_STAMP"
  echo "made the rootfs in $(gb_elapsed "$t0") s ($(du -h "$ROOTFS" | cut -f1))"
}
stamp_is "$ROOTFS_STAMP" "$ROOTFS_WANT" && [[ -f $ROOTFS ]] || build_rootfs

build_images() {
  local t0 ctx=$WORK/ctx base=localhost/debian-monitoring-base:$SUITE
  t0=$(date +%s)
  podman import --quiet "$ROOTFS" "$base" >/dev/null || gb_die "podman import $ROOTFS failed"
  mkdir -p "$ctx"
  cp "$BIN/prometheus-operator" "$BIN/prometheus-config-reloader" "$BIN/prometheus" "$ctx/"
  # Static Go binaries: nothing but the binary, as the upstream images (distroless/busybox) are in effect. The
  # operator sets only arguments for Prometheus and Alertmanager, never the command: the entrypoint must be the
  # binary. /prometheus and /alertmanager are upstream's working directories (the operator mounts its volumes there).
  printf 'FROM scratch\nCOPY prometheus-operator /bin/operator\nUSER 65534:65534\nENTRYPOINT ["/bin/operator"]\n' >"$ctx/Containerfile.operator"
  printf 'FROM scratch\nCOPY prometheus-config-reloader /bin/prometheus-config-reloader\nUSER 65534:65534\nENTRYPOINT ["/bin/prometheus-config-reloader"]\n' >"$ctx/Containerfile.reloader"
  printf 'FROM scratch\nCOPY prometheus /bin/prometheus\nUSER 65534:65534\nWORKDIR /prometheus\nENTRYPOINT ["/bin/prometheus"]\n' >"$ctx/Containerfile.prometheus"
  printf 'FROM %s\nUSER 65534:65534\nWORKDIR /alertmanager\nENTRYPOINT ["/usr/bin/prometheus-alertmanager"]\n' "$base" >"$ctx/Containerfile.alertmanager"
  printf 'FROM %s\nUSER 65534:65534\nENTRYPOINT ["/usr/bin/python3"]\n' "$base" >"$ctx/Containerfile.python"
  local pair name file
  for pair in "$OPERATOR_IMAGE=operator" "$RELOADER_IMAGE=reloader" "$PROMETHEUS_IMAGE=prometheus" \
              "$ALERTMANAGER_IMAGE=alertmanager" "$PYTHON_IMAGE=python"; do
    name=${pair%=*}; file=$ctx/Containerfile.${pair#*=}
    timeout "$IMAGE_TIMEOUT" podman build --quiet --network none -f "$file" -t "$name" "$ctx" >/dev/null \
      || gb_die "podman build of $name failed"
  done
  rm -f "$ARCHIVE_STAMP" "$ARCHIVE.tmp"
  timeout "$IMAGE_TIMEOUT" podman save --quiet --multi-image-archive --format docker-archive -o "$ARCHIVE.tmp" \
    "$OPERATOR_IMAGE" "$RELOADER_IMAGE" "$PROMETHEUS_IMAGE" "$ALERTMANAGER_IMAGE" "$PYTHON_IMAGE" \
    || gb_die "podman save failed"
  mv -f "$ARCHIVE.tmp" "$ARCHIVE"
  write_env
  echo "$ARCHIVE_WANT" >"$ARCHIVE_STAMP"
  echo "built the monitoring images in $(gb_elapsed "$t0") s: $ARCHIVE ($(du -h "$ARCHIVE" | cut -f1))"
}
build_images
echo "monitoring ready after $(gb_elapsed) s"
exit 0
}
