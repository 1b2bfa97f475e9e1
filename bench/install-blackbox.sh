#!/usr/bin/env bash
# Install Prometheus's blackbox_exporter from Debian's packages, for bench/probe_cost.py's side-by-side run.
# Idempotent: does nothing when the binary is already there. Needs root (or sudo) for apt-get.
# The package's service is never started here: the benchmark runs its own instance on 127.0.0.1.
set -euo pipefail
if command -v prometheus-blackbox-exporter >/dev/null 2>&1; then
  echo "blackbox_exporter present: $(command -v prometheus-blackbox-exporter)"
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
# policy-rc.d 101: the package's postinst must not start a system-wide daemon on :9115.
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null && $SUDO chmod +x "$policy" && made_policy=1
fi
trap '[ "$made_policy" = 1 ] && $SUDO rm -f "$policy"' EXIT
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends prometheus-blackbox-exporter >/dev/null
echo "blackbox_exporter installed: $(command -v prometheus-blackbox-exporter)"
