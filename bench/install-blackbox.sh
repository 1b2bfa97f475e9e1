#!/usr/bin/env bash
# Install the side-by-side comparison's tools from Debian's packages: Prometheus's blackbox_exporter (the other
# prober, for bench/probe_cost.py and bench/equal_load.py) and nginx with its njs module (the TLS webhook
# backends of bench/equal_load.py, bench/fairness.py and bench/profile.py: bench/nginx.py).
# Idempotent: does nothing when everything is there. Needs root (or sudo) for apt-get.
# No package's service is started here: the benchmarks run their own private instances on 127.0.0.1.
set -euo pipefail
missing=()
command -v prometheus-blackbox-exporter >/dev/null 2>&1 || missing+=(prometheus-blackbox-exporter)
[ -x /usr/sbin/nginx ] || missing+=(nginx)
[ -e /usr/lib/nginx/modules/ngx_http_js_module.so ] || missing+=(libnginx-mod-http-js)
if [ "${#missing[@]}" -eq 0 ]; then
  echo "blackbox_exporter present: $(command -v prometheus-blackbox-exporter); nginx + njs present"
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
# policy-rc.d 101: the packages' postinst must not start system-wide daemons (:9115, :80).
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null && $SUDO chmod +x "$policy" && made_policy=1
fi
trap '[ "$made_policy" = 1 ] && $SUDO rm -f "$policy"' EXIT
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "installed: ${missing[*]}"
