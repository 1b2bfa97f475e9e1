#!/usr/bin/env bash
# Build the exporter's container image here, with no container registry, and export it (and a pause image) as
# archives containerd imports keeping their full names. Called by scripts/test.sh; tests/image/ and the real
# node (tests/node/) use its outputs.
#
# What it builds, with a PRIVATE podman (its own containers.conf, storage.conf and registries.conf under
# $AWE_CACHE/containers; /etc/containers and the system's image store are never read or written):
#   1. localhost/awe-python:3.11-bookworm: Debian bookworm (minbase) with Debian's python3 (3.11), python3-venv,
#      python-is-python3 and ca-certificates, made by mmdebstrap from the Debian mirror apt uses here. The
#      rootfs tar is cached as $AWE_CACHE/images/awe-python-3.11-bookworm.r<recipe>.rootfs.tar and `podman import`ed.
#   2. ghcr.io/admission-webhook-exporter/admission-webhook-exporter:<chart appVersion>: the project's Dockerfile
#      with --build-arg PYTHON_IMAGE=localhost/awe-python:3.11-bookworm (the Dockerfile's default stays the
#      official python image for users). pip inside the build reaches PyPI with the host's trust store and pip
#      configuration, bind-mounted read-only for the build only (`-v ...:ro`): neither is in any layer
#      (tests/image/test_image.py proves it). Tagged exactly as the chart's default image.
#   3. registry.k8s.io/pause:3.10: FROM scratch, Debian's static /usr/bin/catatonit as /pause, `/pause -P`.
#
# Outputs (docker-archive, `ctr -n k8s.io images import <file>` keeps the full name):
#   $AWE_CACHE/images/admission-webhook-exporter.tar   the exporter image (name and tag as above)
#   $AWE_CACHE/images/pause.tar                         registry.k8s.io/pause:3.10
#   $AWE_CACHE/images/images.env                        AWE_IMAGE=..., AWE_IMAGE_ARCHIVE=..., AWE_PAUSE_IMAGE=...,
#                                                       AWE_PAUSE_ARCHIVE=..., AWE_BASE_IMAGE=... (shell-sourceable)
# Each archive has a .stamp with the content hash it was built from: the exporter image is rebuilt when the
# Dockerfile, .dockerignore, pyproject.toml, README.md or any file under exporter/ changes (or the base does).
# A second run with nothing changed only hashes those files and exits (no podman, no network).
#
# The private podman, for tests and by hand:  source <(tests/image/build.sh --env); podman images
#
# Env knobs (all optional):
#   AWE_CACHE            cache root (default $HOME/.cache/admission-webhook-exporter)
#   AWE_DEBIAN_MIRROR    Debian mirror for mmdebstrap (default: the one apt uses here, from `apt-cache policy`)
#   AWE_IMAGE_TIMEOUT    seconds allowed for waiting on the lock and for each build step (default 1800)
# Exit codes: 0 ok (built or cached), 2 prerequisite missing (one line says which), 1 build failed.
set -euo pipefail
{
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${AWE_CACHE:-$HOME/.cache/admission-webhook-exporter}
IMAGES=$CACHE/images
PODMAN_HOME=$CACHE/containers
# podman's run root and tmp dir (locks, attach sockets, exit files) live on a SHORT path: with the run root under
# a long cache path, every attached `podman run` waited 20 s for its container to exit ("Exceeded conmon timeout
# waiting for container ... to exit"), and `podman --runroot` refuses paths over 50 characters outright.
PODMAN_RUN=/run/awe-podman-$(printf %s "$PODMAN_HOME" | sha256sum | cut -c1-8)
TIMEOUT=${AWE_IMAGE_TIMEOUT:-1800}
SUITE=bookworm
BASE_IMAGE=localhost/awe-python:3.11-$SUITE
BASE_RECIPE=3  # bump when the mmdebstrap command below changes
# The recipe is in the file name: worktrees on older versions of this script share the cache, and must not
# rebuild the base (minutes) back and forth over one file.
BASE_TAR=$IMAGES/awe-python-3.11-$SUITE.r$BASE_RECIPE.rootfs.tar
BASE_PACKAGES=python3,python3-venv,python-is-python3,ca-certificates
PAUSE_IMAGE=registry.k8s.io/pause:3.10
HOST_CA=/etc/ssl/certs/ca-certificates.crt

die2() { echo "tests/image/build.sh: $*" >&2; exit 2; }
die1() { echo "tests/image/build.sh: $*" >&2; exit 1; }

chart=$ROOT/deploy/helm/admission-webhook-exporter
app_version=$(sed -nE 's/^appVersion:[[:space:]]*"?([^"[:space:]]+)"?.*/\1/p' "$chart/Chart.yaml")
repository=$(sed -nE '/^image:/,/^[^[:space:]#]/s/^[[:space:]]+repository:[[:space:]]*"?([^"[:space:]]+)"?.*/\1/p' "$chart/values.yaml")
[[ -n $app_version && -n $repository ]] || die1 "cannot read appVersion/image.repository from $chart"
IMAGE=$repository:$app_version

# ---- the private podman's configuration (written every run: cheap, and a changed script takes effect) ----
private_podman_env() {
  mkdir -p "$PODMAN_HOME"/{storage,net} "$PODMAN_RUN"/{run,tmp}
  cat >"$PODMAN_HOME/containers.conf.new" <<EOF
# Written by tests/image/build.sh: the project's private podman (never /etc/containers).
[containers]
# Root here lacks CAP_SYS_RESOURCE: podman's defaults (1048576 files) make the runtime's setrlimit fail.
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
# crun refuses this machine's hybrid cgroup v1 layout; runc works.
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$PODMAN_HOME/events.log"
tmp_dir = "$PODMAN_RUN/tmp"
[network]
network_config_dir = "$PODMAN_HOME/net"
EOF
  cat >"$PODMAN_HOME/storage.conf.new" <<EOF
# Written by tests/image/build.sh.
[storage]
driver = "overlay"
graphroot = "$PODMAN_HOME/storage"
runroot = "$PODMAN_RUN/run"
EOF
  cat >"$PODMAN_HOME/registries.conf.new" <<EOF
# Written by tests/image/build.sh: no registry is reachable here; short names never resolve to one.
unqualified-search-registries = []
short-name-mode = "disabled"
EOF
  local f
  for f in containers storage registries; do
    cmp -s "$PODMAN_HOME/$f.conf.new" "$PODMAN_HOME/$f.conf" 2>/dev/null \
      && rm -f "$PODMAN_HOME/$f.conf.new" || mv -f "$PODMAN_HOME/$f.conf.new" "$PODMAN_HOME/$f.conf"
  done
}
env_lines() {
  echo "export CONTAINERS_CONF=$PODMAN_HOME/containers.conf"
  echo "export CONTAINERS_STORAGE_CONF=$PODMAN_HOME/storage.conf"
  echo "export CONTAINERS_REGISTRIES_CONF=$PODMAN_HOME/registries.conf"
}
if [[ ${1:-} == --env ]]; then private_podman_env; env_lines; exit 0; fi
[[ $# -eq 0 ]] || die1 "usage: tests/image/build.sh [--env]"

# ---- content hashes: what each output is built from ----
context_hash() {  # the Dockerfile's build context (.dockerignore: pyproject.toml, README.md, exporter/)
  (cd "$ROOT" && {
    printf '%s\n' Dockerfile .dockerignore pyproject.toml README.md
    find exporter -type f ! -path '*/__pycache__/*' ! -name '*.pyc' | LC_ALL=C sort
  } | while IFS= read -r f; do printf '%s  %s\n' "$(sha256sum <"$f" | cut -d' ' -f1)" "$f"; done | sha256sum | cut -d' ' -f1)
}
base_want() { echo "suite=$SUITE packages=$BASE_PACKAGES recipe=$BASE_RECIPE"; }
image_want() { echo "image=$IMAGE base=$(base_want) context=$(context_hash)"; }
pause_want() { echo "image=$PAUSE_IMAGE catatonit=$(sha256sum </usr/bin/catatonit | cut -d' ' -f1) recipe=1"; }
fresh() {  # $1 = archive, $2 = wanted stamp
  [[ -s $1 && -f $1.stamp && "$(<"$1.stamp")" == "$2" ]]
}
write_env() {
  cat >"$IMAGES/images.env.new" <<EOF
AWE_IMAGE=$IMAGE
AWE_IMAGE_ARCHIVE=$IMAGES/admission-webhook-exporter.tar
AWE_PAUSE_IMAGE=$PAUSE_IMAGE
AWE_PAUSE_ARCHIVE=$IMAGES/pause.tar
AWE_BASE_IMAGE=$BASE_IMAGE
EOF
  mv -f "$IMAGES/images.env.new" "$IMAGES/images.env"
}
all_fresh() {
  [[ -x /usr/bin/catatonit ]] && fresh "$IMAGES/admission-webhook-exporter.tar" "$(image_want)" \
    && fresh "$IMAGES/pause.tar" "$(pause_want)" && [[ -f $IMAGES/images.env ]]
}

# ---- fast path: both archives built from exactly these sources ----
if all_fresh; then
  echo "images cached: $IMAGE, $PAUSE_IMAGE in $IMAGES"
  exit 0
fi

# ---- prerequisites: install from apt when missing (a fresh CI machine has none of them) ----
need=()
for pair in podman:podman buildah:buildah mmdebstrap:mmdebstrap catatonit:catatonit runc:runc newuidmap:uidmap; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
[[ -x /usr/bin/catatonit ]] || need+=(catatonit)
if ((${#need[@]})); then
  [[ $(id -u) -eq 0 ]] || die2 "missing ${need[*]} and not root: apt-get install ${need[*]}"
  command -v apt-get >/dev/null 2>&1 || die2 "missing ${need[*]} and no apt-get on this machine"
  echo "installing from apt: ${need[*]}"
  { DEBIAN_FRONTEND=noninteractive timeout "$TIMEOUT" apt-get install -y -q --no-install-recommends "${need[@]}" \
      || { timeout "$TIMEOUT" apt-get update -q && DEBIAN_FRONTEND=noninteractive timeout "$TIMEOUT" \
             apt-get install -y -q --no-install-recommends "${need[@]}"; }; } >"${TMPDIR:-/tmp}/awe-image-apt.log" 2>&1 \
    || die2 "apt-get install ${need[*]} failed (log: ${TMPDIR:-/tmp}/awe-image-apt.log): $(tail -1 "${TMPDIR:-/tmp}/awe-image-apt.log")"
fi
[[ $(id -u) -eq 0 ]] || die2 "needs root (mmdebstrap --mode=root and podman's overlay storage); run as root"
[[ -r $HOST_CA ]] || die2 "no host trust store at $HOST_CA (pip inside the build verifies PyPI with it)"

mkdir -p "$IMAGES"
# One builder at a time (CI and a developer shell may race); re-check once we hold the lock.
exec 9>"$CACHE/image-build.lock"
flock -w "$TIMEOUT" 9 || die1 "timed out waiting for $CACHE/image-build.lock"
if all_fresh; then
  echo "images cached: $IMAGE, $PAUSE_IMAGE in $IMAGES"
  exit 0
fi

private_podman_env
eval "$(env_lines)"
podman() { timeout "$TIMEOUT" /usr/bin/podman "$@"; }
# podman's state database remembers the run root and tmp dir it was made with, and prefers them to the
# configuration: a store made by an older version of this script keeps its long paths. That database holds
# containers only, never images: start it over when its paths are not ours.
if [[ "$(podman info --format '{{.Store.RunRoot}}' 2>/dev/null)" != "$PODMAN_RUN/run" ]]; then
  echo "resetting the private podman's state database (run root: $PODMAN_RUN/run)"
  rm -f "$PODMAN_HOME/storage/libpod/bolt_state.db"
fi
WORK=$(mktemp -d "${TMPDIR:-/tmp}/awe-image-build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
t_all=$(date +%s)

# ---- 1. the Debian base image ----
debian_mirrors() {  # "deb URI SUITE main" for the suite, -updates and -security, as apt here resolves them
  if [[ -n ${AWE_DEBIAN_MIRROR:-} ]]; then echo "deb $AWE_DEBIAN_MIRROR $SUITE main"; return; fi
  apt-cache policy 2>/dev/null | awk -v s="$SUITE" '
    $1 ~ /^[0-9]+$/ && $3 ~ "^" s "(-updates|-security)?/main$" && !seen[$3]++ {
      split($3, p, "/"); print "deb " $2 " " p[1] " main" }' | sort -u
}
if [[ ! -s $BASE_TAR || ! -f $BASE_TAR.stamp || "$(<"$BASE_TAR.stamp")" != "$(base_want)" ]]; then
  mapfile -t mirrors < <(debian_mirrors)
  ((${#mirrors[@]})) || die2 "no Debian $SUITE mirror in apt's sources here (apt-cache policy); set AWE_DEBIAN_MIRROR"
  printf '%s\n' "${mirrors[@]}" | grep -q " $SUITE main$" || die2 "apt here has no '$SUITE main' mirror (found: ${mirrors[*]}); set AWE_DEBIAN_MIRROR"
  echo "building the base rootfs with mmdebstrap ($SUITE, $BASE_PACKAGES) from: ${mirrors[*]}"
  t0=$(date +%s)
  rm -f "$BASE_TAR.stamp"
  # Documentation, man pages and translations are never read in the image (copyright files stay). Merged /usr
  # by mmdebstrap's hook (usr-is-merged), as debootstrap does it, not by the usrmerge package, whose perl
  # (47 MB) would otherwise stay in the image.
  timeout "$TIMEOUT" mmdebstrap --variant=minbase --mode=root --format=tar --include="$BASE_PACKAGES" \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    --customize-hook='rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/* "$1"/var/log/*.log' \
    "$SUITE" "$WORK/base.tar" "${mirrors[@]}" >"$WORK/mmdebstrap.log" 2>&1 \
    || die1 "mmdebstrap failed: $(grep -m3 -E '^E:|error' "$WORK/mmdebstrap.log" | tr '\n' ' ') (full log was $WORK/mmdebstrap.log)"
  mv -f "$WORK/base.tar" "$BASE_TAR"
  base_want >"$BASE_TAR.stamp"
  podman rmi -f "$BASE_IMAGE" >/dev/null 2>&1 || true
  echo "base rootfs built in $(( $(date +%s) - t0 )) s: $(du -h "$BASE_TAR" | cut -f1)"
fi
# The store may have been wiped while the tar stayed: import from the cached tar (seconds, no network).
if ! podman image exists "$BASE_IMAGE" \
   || [[ "$(podman image inspect --format '{{index .Labels "awe.base"}}' "$BASE_IMAGE" 2>/dev/null)" != "$(base_want)" ]]; then
  podman rmi -f "$BASE_IMAGE" >/dev/null 2>&1 || true
  # `podman import` has no --label: the base's recipe goes in as a label through a one-step build instead.
  tmp_tag=localhost/awe-python-import:$$
  podman import -q --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["python3"]' "$BASE_TAR" "$tmp_tag" >/dev/null
  printf 'FROM %s\nLABEL awe.base="%s"\n' "$tmp_tag" "$(base_want)" >"$WORK/Containerfile.base"
  podman build --pull=never -q -t "$BASE_IMAGE" -f "$WORK/Containerfile.base" "$WORK" >/dev/null
  podman rmi "$tmp_tag" >/dev/null 2>&1 || true
  # A new base invalidates the cached build layers made on the old one: drop those (untagged, and carrying the old
  # base's label) so the store does not grow. Only ours: other images in this store are left alone.
  podman images -a -f dangling=true --format '{{.ID}} {{index .Labels "awe.base"}}' 2>/dev/null \
    | awk -v want="$(base_want)" '{id = $1; $1 = ""; sub(/^ /, "")} $0 ~ /^suite=/ && $0 != want {print id}' \
    | xargs -r /usr/bin/podman rmi -f >/dev/null 2>&1 || true
  echo "base image imported: $BASE_IMAGE"
fi

# ---- 2. the exporter image from the project's Dockerfile ----
want=$(image_want)
if ! fresh "$IMAGES/admission-webhook-exporter.tar" "$want"; then
  t0=$(date +%s)
  old_id=$(podman image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
  mounts=(-v "$HOST_CA:$HOST_CA:ro")
  # pip's configuration: the file pip would read here, at the path pip reads inside the build; a CA file it
  # names (cert = ...) comes along at its own path. Build-time mounts only: no layer ever holds them.
  pipconf=${PIP_CONFIG_FILE:-/etc/pip.conf}
  if [[ -r $pipconf ]]; then
    mounts+=(-v "$pipconf:/etc/pip.conf:ro")
    pipcert=$(python3 -c 'import configparser,sys; c=configparser.ConfigParser(); c.read(sys.argv[1]); print(c.get("global","cert",fallback="") or c.get("install","cert",fallback=""))' "$pipconf" 2>/dev/null || true)
    [[ -n $pipcert && -r $pipcert && $pipcert != "$HOST_CA" ]] && mounts+=(-v "$pipcert:$pipcert:ro")
  fi
  echo "building $IMAGE from the Dockerfile (base $BASE_IMAGE; mounts: ${mounts[*]}) ..."
  # The stamp goes first: a failed or interrupted build leaves no stamp that claims the old archive is current.
  rm -f "$IMAGES/admission-webhook-exporter.tar.stamp"
  podman build --pull=never --network host --layers --build-arg "PYTHON_IMAGE=$BASE_IMAGE" "${mounts[@]}" \
    -t "$IMAGE" -f "$ROOT/Dockerfile" "$ROOT" >"$WORK/build.log" 2>&1 \
    || die1 "podman build failed: $(tail -5 "$WORK/build.log" | tr '\n' ' ')"
  new_id=$(podman image inspect --format '{{.Id}}' "$IMAGE")
  # The previous build's final image is now untagged: drop it (its builder-stage layers stay as build cache).
  [[ -n $old_id && $old_id != "$new_id" ]] && { podman rmi "$old_id" >/dev/null 2>&1 || true; }
  # Builder stages of earlier sources (~200 MB each) would pile up in the cache with every change: keep a day's.
  podman image prune -f --filter until=24h >/dev/null 2>&1 || true
  podman save -q --format docker-archive -o "$WORK/image.tar" "$IMAGE" >/dev/null
  mv -f "$WORK/image.tar" "$IMAGES/admission-webhook-exporter.tar"
  echo "$want" >"$IMAGES/admission-webhook-exporter.tar.stamp"
  echo "exporter image built in $(( $(date +%s) - t0 )) s: $IMAGE $(podman image inspect --format '{{.Size}}' "$IMAGE") bytes"
fi

# ---- 3. the pause image ----
want=$(pause_want)
if ! fresh "$IMAGES/pause.tar" "$want"; then
  t0=$(date +%s)
  mkdir -p "$WORK/pause"
  cp /usr/bin/catatonit "$WORK/pause/pause"
  # catatonit -P: no child, just reap and wait for a signal; the kubelet's sandbox needs nothing else.
  printf 'FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause", "-P"]\n' >"$WORK/pause/Containerfile"
  rm -f "$IMAGES/pause.tar.stamp"
  podman build --pull=never -q -t "$PAUSE_IMAGE" -f "$WORK/pause/Containerfile" "$WORK/pause" >/dev/null \
    || die1 "podman build of $PAUSE_IMAGE failed"
  podman save -q --format docker-archive -o "$WORK/pause.tar" "$PAUSE_IMAGE" >/dev/null
  mv -f "$WORK/pause.tar" "$IMAGES/pause.tar"
  echo "$want" >"$IMAGES/pause.tar.stamp"
  echo "pause image built in $(( $(date +%s) - t0 )) s: $PAUSE_IMAGE"
fi

write_env
echo "images ready in $(( $(date +%s) - t_all )) s: $IMAGES/admission-webhook-exporter.tar ($IMAGE), $IMAGES/pause.tar ($PAUSE_IMAGE)"
exit 0
}
