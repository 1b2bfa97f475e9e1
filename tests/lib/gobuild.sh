# shellcheck shell=bash
# The skeleton every tests/*/install.sh shares to build a pinned Go binary from the module proxy into the
# test cache. Sourced, not run. Why shared: the cache layout, the stamp fast path, the lock, the Go
# environment and the "module proxy unreachable" message must be the same for every binary, or one script
# drifts (a missing lock, a stamp written before the binary, a cache outside $AWE_CACHE).
#
#   source tests/lib/gobuild.sh
#   gb_init "tests/helm/install.sh"        # CACHE, BIN, GO_TIMEOUT; messages prefixed with that name
#   gb_cached helm "helm=v3.22.0" && exit 0  # fast path: no go, no network
#   gb_lock helm-install.lock              # one builder per lock; re-check gb_cached after it
#   gb_go_env                              # go on PATH (else exit 2), Go caches under $CACHE/go, $WORK
#   gb_mod_download helm.sh/helm/v3@v3.22.0 "$WORK/helm.json"   # exit 2 with the proxy's reason
#   ... go build -o "$BIN/.helm.tmp" ...
#   gb_install helm "helm=v3.22.0"         # move into $BIN, then write its stamp (stamp last)
#
# Cache layout: $AWE_CACHE (default ~/.cache/admission-webhook-exporter)/bin/<name> with its stamp
# bin/<name>.VERSION ("<name>=<version>"); Go module and build caches in $AWE_CACHE/go.
# Exit codes used by the scripts: 0 ok (built or cached), 2 prerequisite missing (go, module proxy),
# 1 build failed.

gb_init() {  # $1 = name used in messages
  GB_NAME=$1
  CACHE=${AWE_CACHE:-$HOME/.cache/admission-webhook-exporter}
  BIN=$CACHE/bin
  GO_TIMEOUT=${AWE_GO_TIMEOUT:-3600}
  GB_T0=$(date +%s)
}

gb_die() { echo "$GB_NAME: $*" >&2; exit 1; }
gb_die2() { echo "$GB_NAME: $*" >&2; exit 2; }
gb_elapsed() { echo $(( $(date +%s) - ${1:-$GB_T0} )); }

gb_stamp() { echo "$BIN/$1.VERSION"; }

gb_cached() {  # $1 = binary name, $2 = wanted stamp text; true when built at that version
  local s
  s=$(gb_stamp "$1")
  [[ -x $BIN/$1 && -f $s && "$(<"$s")" == "$2" ]]
}

gb_lock() {  # $1 = lock file name under $CACHE; waits up to GO_TIMEOUT for another builder
  mkdir -p "$BIN" "$CACHE/go"
  exec 9>"$CACHE/$1"
  flock -w "$GO_TIMEOUT" 9 || gb_die "timed out waiting for $CACHE/$1"
}

gb_go_env() {  # needs go; exports the Go environment; makes $WORK (removed on exit)
  command -v go >/dev/null 2>&1 || gb_die2 "'go' not found on PATH (install Go >= 1.25)"
  export GOMODCACHE=$CACHE/go/mod GOCACHE=$CACHE/go/build
  # -mod=mod lets `go build` resolve a throw-away module's requirements; checksums are still verified
  # against sum.golang.org (through the proxy's /sumdb endpoint when direct fails).
  export GOFLAGS="-mod=mod -modcacherw -buildvcs=false"
  export CGO_ENABLED=0 GOWORK=off GO111MODULE=on
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/awe-gobuild.XXXXXX")
  # shellcheck disable=SC2064  # expand $WORK now
  trap "rm -rf '$WORK'" EXIT
}

gb_json_field() {  # $1 = file from `go mod download -json`, $2 = python expression on d
  python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]) or "")' "$1" "$2" 2>/dev/null || true
}

gb_mod_download() {  # $1 = module@version, $2 = where to write `go mod download -json`; exit 2 if unreachable
  local why
  if ! timeout 600 go mod download -json "$1" >"$2" 2>"$2.err"; then
    why=$(gb_json_field "$2" 'd.get("Error")')
    [[ -n $why ]] || why=$(grep -m1 -v '^$' "$2.err" || echo "timed out or failed")
    gb_die2 "cannot reach the Go module proxy ($(go env GOPROXY)) for $1: ${why:0:300}"
  fi
}

gb_install() {  # $1 = name (built as $BIN/.$1.tmp), $2 = stamp text; the stamp is written last
  rm -f "$(gb_stamp "$1")"
  mv -f "$BIN/.$1.tmp" "$BIN/$1"
  echo "$2" >"$(gb_stamp "$1")"
}
