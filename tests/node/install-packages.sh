#!/usr/bin/env bash
# Install the host packages the test node (tests/node/harness.py) runs on, from Debian's archive only:
# containerd (+ ctr, the runc shim), runc, the CNI plugins (bridge, host-local, loopback), catatonit (the
# pause image's init, built by tests/image/build.sh) and iproute2 (bridge, netns, policy routing).
#
#   tests/node/install-packages.sh     # idempotent: ~0.1 s when every package is installed
#
# Why Debian's: CI reaches Debian's archive and the Go module proxy, no release downloads. containerd 1.6 and
# runc 1.1 (bookworm) run a kubelet 1.34's Pods here; crun does not (it refuses hybrid cgroups).
# The containerd package ships a service that its postinst starts on a machine with a running init. The
# tests run a private containerd (own config, root, state and socket) and want only the binaries: a
# temporary policy-rc.d keeps the postinst from starting it, and it is stopped and disabled in case it
# started anyway. Nothing is left running or listening.
# Exit codes: 0 ok, 2 cannot install (no apt-get, not root), 1 apt failed.
set -euo pipefail
PACKAGES=(containerd runc containernetworking-plugins catatonit iproute2)
log() { printf 'tests/node/install-packages.sh: %s\n' "$*" >&2; }

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
missing=()
for p in "${PACKAGES[@]}"; do installed "$p" || missing+=("$p"); done
if [ ${#missing[@]} -eq 0 ]; then
  echo "node packages installed: $(dpkg-query -W -f='${Package}=${Version} ' "${PACKAGES[@]}")"
  exit 0
fi

command -v apt-get >/dev/null 2>&1 || { log "apt-get not found; install ${missing[*]} by hand"; exit 2; }
[ "$(id -u)" -eq 0 ] || { log "need root to install ${missing[*]}"; exit 2; }

t0=$(date +%s)
policy=/usr/sbin/policy-rc.d added_policy=0
if [ ! -e "$policy" ]; then
  # 101 = "action forbidden": invoke-rc.d and deb-systemd-invoke then skip starting the service.
  printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && added_policy=1
fi
rc=0
{
  apt-get update -qq &&
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
} || rc=$?
[ "$added_policy" = 1 ] && rm -f "$policy"
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
  systemctl disable --now containerd.service >/dev/null 2>&1 || true
fi
[ "$rc" = 0 ] || { log "apt-get install ${missing[*]} failed (exit $rc)"; exit 1; }
for p in "${PACKAGES[@]}"; do installed "$p" || { log "$p still not installed"; exit 1; }; done
echo "installed ${missing[*]} in $(( $(date +%s) - t0 )) s: $(dpkg-query -W -f='${Package}=${Version} ' "${PACKAGES[@]}")"
