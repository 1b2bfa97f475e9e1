#!/usr/bin/env bash
# Make `promtool` and `prometheus` available on a fresh Debian machine, from the package registries only.
#
#   alerts/install-promtool.sh                   # idempotent; ~0.1 s when a recent enough promtool is on PATH
#   PROMTOOL_FROM=go alerts/install-promtool.sh  # skip apt, build from the Go module proxy
# Other knobs: PROMTOOL_MIN_VERSION (2.42.0), PROMTOOL_GO_MODULE_VERSION (v0.53.4), PROMTOOL_GOBIN (/usr/local/bin).
#
# Order of preference:
#   1. an existing `promtool` (and `prometheus`) on PATH, promtool >= PROMTOOL_MIN_VERSION: nothing to do;
#   2. Debian's `prometheus` package (bookworm: 2.42, which has every promtool feature alerts/tests use;
#      about 10 s including apt-get update);
#   3. a build of cmd/promtool and cmd/prometheus from the source of github.com/prometheus/prometheus on the
#      Go module proxy (Prometheus 2.x is published there as v0.<minor>.<patch>: 2.53.4 is v0.53.4), when apt
#      is missing or too old. Needs `go`; about 4 minutes on 2 cores with an empty module and build cache.
#
# The Debian package ships a systemd unit / init script and its postinst starts it (port 9090) on a machine
# with a running init. We only want the binaries: a temporary policy-rc.d stops the postinst from starting
# it, and the service is then disabled and stopped in case it started anyway. `--no-install-recommends`
# keeps prometheus-node-exporter (another daemon, port 9100) out.
set -euo pipefail

MIN_VERSION="${PROMTOOL_MIN_VERSION:-2.42.0}"
# Module version for the Go fallback (= Prometheus 2.53.x LTS).
GO_MODULE_VERSION="${PROMTOOL_GO_MODULE_VERSION:-v0.53.4}"
GOBIN_DIR="${PROMTOOL_GOBIN:-/usr/local/bin}"

log() { printf 'install-promtool: %s\n' "$*" >&2; }

# version_of BINARY -> "2.42.0" (empty if the binary is absent or prints no version)
version_of() {
    command -v "$1" >/dev/null 2>&1 || return 0
    "$1" --version 2>&1 | sed -n 's/.*version \([0-9][0-9.]*\).*/\1/p' | head -n1
}

# version_ge A B: true when A >= B (dotted numeric)
version_ge() {
    [ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -n1)" = "$2" ]
}

have_recent() {
    local v
    v="$(version_of promtool)"
    [ -n "$v" ] && version_ge "$v" "$MIN_VERSION" && command -v prometheus >/dev/null 2>&1
}

report() {
    promtool --version 2>&1 | head -n1
    prometheus --version 2>&1 | head -n1
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo "$@"; else
        log "need root (or sudo) for: $*"; return 1
    fi
}

# Keep the Debian service from running and from starting at boot. Nothing may be left listening.
disable_service() {
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        as_root systemctl disable --now prometheus.service >/dev/null 2>&1 || true
    fi
    if [ -x /etc/init.d/prometheus ]; then
        as_root /etc/init.d/prometheus stop >/dev/null 2>&1 || true
        command -v update-rc.d >/dev/null 2>&1 && as_root update-rc.d prometheus disable >/dev/null 2>&1 || true
    fi
}

install_apt() {
    command -v apt-get >/dev/null 2>&1 || { log "apt-get not found"; return 1; }
    local policy=/usr/sbin/policy-rc.d added_policy=0
    if [ ! -e "$policy" ]; then
        # 101 = "action forbidden": invoke-rc.d and deb-systemd-invoke then skip starting the service.
        as_root sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod 755 $policy"
        added_policy=1
    fi
    local rc=0
    {
        as_root apt-get update -qq &&
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    } || rc=$?
    [ "$added_policy" -eq 1 ] && as_root rm -f "$policy"
    [ "$rc" -eq 0 ] || { log "apt-get install prometheus failed ($rc)"; return "$rc"; }
    disable_service
}

install_go() {
    command -v go >/dev/null 2>&1 || { log "go not found: cannot build from the Go module proxy"; return 1; }
    log "building promtool and prometheus ${GO_MODULE_VERSION} from the Go module proxy into ${GOBIN_DIR} (several minutes)"
    # `go install ...@version` refuses modules whose go.mod has replace/exclude directives, and Prometheus'
    # has both: download the module and build it as the main module instead, so its go.mod and go.sum apply.
    local dir work
    dir="$(go mod download -json "github.com/prometheus/prometheus@${GO_MODULE_VERSION}" |
        sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
    [ -n "$dir" ] || { log "go mod download gave no source directory"; return 1; }
    work="$(mktemp -d)"
    cp -R "$dir/." "$work/" && chmod -R u+w "$work"
    # Prometheus stamps its version at link time (its Makefile uses promu); without this --version is empty.
    local v="github.com/prometheus/common/version"
    local release
    release="$(printf '%s' "$GO_MODULE_VERSION" | sed -n 's/^v0\.\([0-9]*\)\.\([0-9]*\)$/2.\1.\2/p')"
    local ldflags="-s -w -X $v.Version=${release:-$GO_MODULE_VERSION} -X $v.Branch=module-proxy -X $v.BuildUser=install-promtool"
    local rc=0
    (cd "$work" && GOFLAGS="${GOFLAGS:-} -buildvcs=false" \
        go build -trimpath -ldflags "$ldflags" -o "$work/bin/" ./cmd/promtool ./cmd/prometheus) || rc=$?
    if [ "$rc" -eq 0 ]; then
        as_root install -d "$GOBIN_DIR" && as_root install -m 0755 "$work/bin/promtool" "$work/bin/prometheus" "$GOBIN_DIR/" || rc=$?
    fi
    rm -rf "$work"
    return "$rc"
}

main() {
    if have_recent; then
        report
        return 0
    fi
    if [ "${PROMTOOL_FROM:-apt}" = apt ]; then
        install_apt || true
        if ! have_recent; then
            log "apt gave promtool '$(version_of promtool)', need >= ${MIN_VERSION}: falling back to the Go module proxy"
        fi
    fi
    if ! have_recent; then
        install_go
        hash -r
    fi
    if ! have_recent; then
        log "no promtool >= ${MIN_VERSION} after install"
        return 1
    fi
    report
}

main "$@"
