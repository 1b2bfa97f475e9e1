#!/usr/bin/env bash
# Build kube-prometheus-stack's machinery here, for tests/monitoring/: prometheus-operator and
# prometheus-config-reloader from the Go module proxy, their CRDs from the same module, and the container
# images the operator's Pods run (Prometheus and Alertmanager from Debian's packages), with no registry.
#
# Why this operator version: kube-prometheus-stack pins prometheus-operator v0.95.x today (chart 92.x/93.x),
# but the Go module proxy here serves exactly one version of github.com/prometheus-operator/prometheus-operator,
# v0.85.0 (v0.95.0/.1/.2 answer "403 This module version is not available"). v0.85.0 is what
# kube-prometheus-stack 77.x pinned (77.0.0, 2025-08-23, "bump to 0.85.0"); tests/monitoring/README.md says
# what that changes and what it does not.
#
# What it makes ($AWE_CACHE, default ~/.cache/admission-webhook-exporter):
#   bin/prometheus-operator, bin/prometheus-config-reloader   (stamp bin/prometheus-operator.VERSION)
#   monitoring/crds/*.yaml                                     the module's example/prometheus-operator-crd/
#   images/monitoring.tar     docker-archive, `ctr -n k8s.io images import` keeps every name:
#       localhost/prometheus-operator:v0.85.0            FROM scratch, /bin/operator
#       localhost/prometheus-config-reloader:v0.85.0     FROM scratch, /bin/prometheus-config-reloader
#       localhost/debian-prometheus:v2.42.0              Debian bookworm's prometheus package
#       localhost/debian-alertmanager:v0.25.0            Debian bookworm's prometheus-alertmanager package
#       localhost/debian-python:3.11                     the same rootfs, for the test's alert receiver Pod
#   images/monitoring.env     shell-sourceable names and versions (read by tests/monitoring/images.py)
# The two Debian images share one rootfs made by mmdebstrap (minbase + prometheus, prometheus-alertmanager,
# python3: dpkg installs them with their dependencies), cached as images/debian-monitoring.rootfs.tar.
# Images are built with the project's private podman (tests/image/build.sh --env: its own storage and
# configuration, never /etc/containers).
#
# A second run with everything at the pinned versions compares stamps and exits (no go, no podman, no network).
#
# Env knobs: AWE_CACHE, AWE_GO_TIMEOUT (default 3600 s for the Go build), AWE_IMAGE_TIMEOUT (1800 s per image
# step), AWE_DEBIAN_MIRROR (default: the mirror apt uses here).
# Exit codes: 0 ok (built or cached), 2 prerequisite missing (one line says which), 1 build failed.
set -euo pipefail
{
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=../lib/gobuild.sh
source "$ROOT/tests/lib/gobuild.sh"
gb_init "tests/monitoring/install.sh"
OPERATOR_VERSION=v0.85.0   # the only version of the root module the Go module proxy serves (see above)
SUITE=bookworm
PROMETHEUS_DEB_VERSION=2.42.0      # bookworm's prometheus (2.42.0+ds-5+deb12u1)
ALERTMANAGER_DEB_VERSION=0.25.0    # bookworm's prometheus-alertmanager (0.25.0-1+b4)
IMAGES=$CACHE/images
CRDS=$CACHE/monitoring/crds
IMAGE_TIMEOUT=${AWE_IMAGE_TIMEOUT:-1800}
OPERATOR_WANT="prometheus-operator=$OPERATOR_VERSION"
RELOADER_WANT="prometheus-config-reloader=$OPERATOR_VERSION"
ROOTFS=$IMAGES/debian-monitoring.rootfs.tar
ROOTFS_STAMP=$ROOTFS.stamp
ROOTFS_WANT="$SUITE minbase prometheus=$PROMETHEUS_DEB_VERSION prometheus-alertmanager=$ALERTMANAGER_DEB_VERSION python3 (no doc, man, locale, moment-timezone data)"
ARCHIVE=$IMAGES/monitoring.tar
ARCHIVE_STAMP=$ARCHIVE.stamp
ENV_FILE=$IMAGES/monitoring.env
OPERATOR_IMAGE=localhost/prometheus-operator:$OPERATOR_VERSION
RELOADER_IMAGE=localhost/prometheus-config-reloader:$OPERATOR_VERSION
PROMETHEUS_IMAGE=localhost/debian-prometheus:v$PROMETHEUS_DEB_VERSION
ALERTMANAGER_IMAGE=localhost/debian-alertmanager:v$ALERTMANAGER_DEB_VERSION
PYTHON_IMAGE=localhost/debian-python:3.11
# Everything the archive is made from: a change to any of these rebuilds it.
ARCHIVE_WANT="$OPERATOR_WANT $RELOADER_WANT | $ROOTFS_WANT | $OPERATOR_IMAGE $RELOADER_IMAGE $PROMETHEUS_IMAGE $ALERTMANAGER_IMAGE $PYTHON_IMAGE | $(sha256sum "$0" | cut -c1-16)"

stamp_is() { [[ -f $1 && "$(<"$1")" == "$2" ]]; }
go_cached() {
  gb_cached prometheus-operator "$OPERATOR_WANT" && gb_cached prometheus-config-reloader "$RELOADER_WANT" \
    && stamp_is "$CRDS/VERSION" "$OPERATOR_VERSION"
}
all_cached() { go_cached && stamp_is "$ARCHIVE_STAMP" "$ARCHIVE_WANT" && [[ -f $ARCHIVE && -f $ENV_FILE ]]; }

write_env() {
  cat >"$ENV_FILE.new" <<EOF
# Written by tests/monitoring/install.sh
AWE_MONITORING_ARCHIVE=$ARCHIVE
AWE_OPERATOR_VERSION=$OPERATOR_VERSION
AWE_OPERATOR_IMAGE=$OPERATOR_IMAGE
AWE_RELOADER_IMAGE=$RELOADER_IMAGE
AWE_PROMETHEUS_IMAGE=$PROMETHEUS_IMAGE
AWE_PROMETHEUS_VERSION=v$PROMETHEUS_DEB_VERSION
AWE_ALERTMANAGER_IMAGE=$ALERTMANAGER_IMAGE
AWE_ALERTMANAGER_VERSION=v$ALERTMANAGER_DEB_VERSION
AWE_RECEIVER_IMAGE=$PYTHON_IMAGE
AWE_CRDS_DIR=$CRDS
AWE_OPERATOR_BIN=$BIN/prometheus-operator
AWE_RELOADER_BIN=$BIN/prometheus-config-reloader
EOF
  mv -f "$ENV_FILE.new" "$ENV_FILE"
}

# ---- fast path: everything at the pinned versions (no go, no podman, no network) ----
if all_cached; then
  echo "monitoring cached: prometheus-operator $OPERATOR_VERSION, Prometheus $PROMETHEUS_DEB_VERSION, Alertmanager $ALERTMANAGER_DEB_VERSION ($ARCHIVE)"
  exit 0
fi
# One builder at a time (CI and a developer shell may race); re-check the stamps once we hold the lock.
gb_lock monitoring-install.lock
mkdir -p "$IMAGES"
if all_cached; then
  echo "monitoring cached (built meanwhile by another run)"
  exit 0
fi

# ---- 1. prometheus-operator and prometheus-config-reloader from the Go module proxy ----
build_go() {
  local module=github.com/prometheus-operator/prometheus-operator t0 dir
  t0=$(date +%s)
  gb_go_env
  gb_mod_download "$module@$OPERATOR_VERSION" "$WORK/op.json"
  dir=$(gb_json_field "$WORK/op.json" 'd["Dir"]')
  # The module's own go.mod replaces pkg/apis/monitoring and pkg/client with ./pkg/..., directories that are
  # separate modules and not in its zip: a throw-away main module requires all three at the same version.
  mkdir -p "$WORK/build"
  cat >"$WORK/build/go.mod" <<EOF
module awe.local/prometheusoperatorbuild

go 1.24.0

require (
	$module $OPERATOR_VERSION
	$module/pkg/apis/monitoring $OPERATOR_VERSION
	$module/pkg/client $OPERATOR_VERSION
)
EOF
  # The same -X stamps as the module's Makefile (GO_BUILD_LDFLAGS): the operator labels what it creates with it.
  local ld="-s -w -X github.com/prometheus/common/version.Version=${OPERATOR_VERSION#v} -X github.com/prometheus/common/version.Branch=$OPERATOR_VERSION -X github.com/prometheus/common/version.BuildUser=awe-tests"
  echo "building prometheus-operator and prometheus-config-reloader $OPERATOR_VERSION (a cold build takes minutes) ..."
  (cd "$WORK/build" && cp "$dir/go.sum" go.sum && chmod u+w go.sum \
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
go_cached || build_go
if [[ -z ${WORK:-} ]]; then  # gb_go_env made it when Go was needed
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/awe-monitoring-build.XXXXXX")
  trap 'rm -rf "$WORK"' EXIT
fi

# ---- 2. the images (private podman) ----
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
  echo "making the Debian $SUITE rootfs with prometheus $PROMETHEUS_DEB_VERSION and prometheus-alertmanager $ALERTMANAGER_DEB_VERSION ($mirror) ..."
  rm -f "$ROOTFS_STAMP"
  # minbase + the two packages as dpkg installs them (their dependencies included); no recommends (node-exporter).
  # Documentation, manual pages, translations and the timezone data of the web UI's moment-timezone (220 MB of
  # JSON) are left out (dpkg path-exclude): the tests use Prometheus' HTTP API, never its web UI.
  local tmp=$IMAGES/.debian-monitoring.rootfs.new.tar  # mmdebstrap picks its output format by the extension
  rm -rf "$tmp"
  timeout "$IMAGE_TIMEOUT" nice -n 10 mmdebstrap --quiet --variant=minbase --mode=root --format=tar \
    --aptopt='APT::Install-Recommends "false"' \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/javascript/moment-timezone/data/*' \
    --include="prometheus=$PROMETHEUS_DEB_VERSION*,prometheus-alertmanager=$ALERTMANAGER_DEB_VERSION*,python3" \
    "$SUITE" "$tmp" "$mirror" || gb_die "mmdebstrap failed"
  mv -f "$tmp" "$ROOTFS"
  echo "$ROOTFS_WANT" >"$ROOTFS_STAMP"
  echo "made the rootfs in $(( $(date +%s) - t0 )) s ($(du -h "$ROOTFS" | cut -f1))"
}
stamp_is "$ROOTFS_STAMP" "$ROOTFS_WANT" && [[ -f $ROOTFS ]] || build_rootfs

build_images() {
  local t0 ctx=$WORK/ctx base=localhost/debian-monitoring-base:$SUITE
  t0=$(date +%s)
  podman import --quiet "$ROOTFS" "$base" >/dev/null || gb_die "podman import $ROOTFS failed"
  mkdir -p "$ctx"
  cp "$BIN/prometheus-operator" "$BIN/prometheus-config-reloader" "$ctx/"
  # Static Go binaries: nothing but the binary, as the upstream images (distroless/busybox) are in effect.
  printf 'FROM scratch\nCOPY prometheus-operator /bin/operator\nUSER 65534:65534\nENTRYPOINT ["/bin/operator"]\n' >"$ctx/Containerfile.operator"
  printf 'FROM scratch\nCOPY prometheus-config-reloader /bin/prometheus-config-reloader\nUSER 65534:65534\nENTRYPOINT ["/bin/prometheus-config-reloader"]\n' >"$ctx/Containerfile.reloader"
  # The operator sets only args for Prometheus and Alertmanager: the entrypoint must be the binary. Debian's
  # paths differ from upstream's (/bin/prometheus), which the operator never names. /prometheus and
  # /alertmanager are the working directories upstream images have (the operator mounts its volumes there).
  printf 'FROM %s\nUSER 65534:65534\nWORKDIR /prometheus\nENTRYPOINT ["/usr/bin/prometheus"]\n' "$base" >"$ctx/Containerfile.prometheus"
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
  echo "built the monitoring images in $(( $(date +%s) - t0 )) s: $ARCHIVE ($(du -h "$ARCHIVE" | cut -f1))"
}
build_images
echo "monitoring ready after $(gb_elapsed) s"
exit 0
}
