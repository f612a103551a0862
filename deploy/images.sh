#!/usr/bin/env bash
# Make the compose cluster's images locally, with no registry pull, then (optionally) run
# docker-compose on the same docker-compose.yml with the image variables pointing at them.
#
#   deploy/images.sh                 # build herald-base:local (cached) and herald-edge:local
#   deploy/images.sh base            # only the cached base image
#   deploy/images.sh env             # print the `export ...` lines (eval "$(deploy/images.sh env)")
#   deploy/images.sh up -d --no-build   # build images, then `docker-compose up -d --no-build`
#   deploy/images.sh <compose args>  # any docker-compose command, with the variables exported
#
# Why: the build machines have a Docker engine but no registry (see DOCKER-HERE.md). Users run
# `docker compose up --build` with the official images; CI runs the very same compose file on:
#   herald-base:local  debootstrap bookworm minbase + redis-server, nginx-light, prometheus,
#                      ca-certificates, curl, imported with `docker import` (cached when present)
#   herald-edge:local  FROM herald-base:local + the host-built target/release/herald
#
# Environment:
#   HERALD_BASE_IMAGE   (herald-base:local)   HERALD_EDGE_IMAGE (herald-edge:local)
#   HERALD_REBUILD_BASE=1   rebuild the base even if it exists
#   HERALD_SKIP_CARGO=1     do not run cargo; use the existing target/release/herald
#   DEBIAN_MIRROR       (first deb.debian.org-style URI found in apt sources, else deb.debian.org)
#   DEBIAN_SUITE        (bookworm; must match the host's glibc, since the edge binary is host-built)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BASE_IMAGE="${HERALD_BASE_IMAGE:-herald-base:local}"
EDGE_IMAGE="${HERALD_EDGE_IMAGE:-herald-edge:local}"
SUITE="${DEBIAN_SUITE:-bookworm}"
PACKAGES="redis-server,nginx-light,prometheus,ca-certificates,curl"

log() { printf '[images] %s\n' "$*" >&2; }

print_env() {
  cat <<ENV
export REDIS_IMAGE=$BASE_IMAGE
export NGINX_IMAGE=$BASE_IMAGE
export PROMETHEUS_IMAGE=$BASE_IMAGE
export HERALD_IMAGE=$EDGE_IMAGE
ENV
}

detect_mirror() {
  if [[ -n "${DEBIAN_MIRROR:-}" ]]; then echo "$DEBIAN_MIRROR"; return; fi
  local uri
  uri="$(grep -hsE '^(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | grep -oE 'https?://[^ ]+/debian/?$|https?://[^ ]+/debian ' | grep -v security | head -n1 | tr -d ' ')" || true
  echo "${uri:-http://deb.debian.org/debian}"
}

build_base() {
  if [[ "${HERALD_REBUILD_BASE:-0}" != 1 ]] && docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    log "$BASE_IMAGE present (cached); HERALD_REBUILD_BASE=1 rebuilds it"
    return
  fi
  command -v debootstrap >/dev/null || { log "debootstrap missing: apt-get install debootstrap"; exit 1; }
  [[ $(id -u) == 0 ]] || { log "debootstrap needs root"; exit 1; }
  local mirror work rootfs
  mirror="$(detect_mirror)"
  work="$(mktemp -d "${TMPDIR:-/tmp}/herald-rootfs.XXXXXX")"
  rootfs="$work/rootfs"
  # shellcheck disable=SC2064
  trap "rm -rf '$work'" EXIT
  log "debootstrap $SUITE minbase + $PACKAGES from $mirror"
  if ! debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1; then
    tail -n 40 "$work/debootstrap.log" >&2
    [[ -f "$rootfs/debootstrap/debootstrap.log" ]] && tail -n 40 "$rootfs/debootstrap/debootstrap.log" >&2
    exit 1
  fi
  # Slim it down and make it behave like a container base: no apt lists or caches, no docs.
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
         "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* || true
  # Debian's nginx-light ships a site config that listens on :80; our config does not include it,
  # but remove it anyway so nobody is surprised.
  rm -f "$rootfs"/etc/nginx/sites-enabled/default || true
  mkdir -p "$rootfs/prometheus"
  log "docker import -> $BASE_IMAGE"
  tar -C "$rootfs" -c . | docker import \
      -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      -c 'ENV LANG=C.UTF-8' \
      -c 'CMD ["/bin/bash"]' \
      -m "herald base: debootstrap $SUITE minbase + $PACKAGES" \
      - "$BASE_IMAGE" >/dev/null
  rm -rf "$work"
  trap - EXIT
}

build_edge() {
  local bin="$ROOT/target/release/herald"
  if [[ "${HERALD_SKIP_CARGO:-0}" != 1 ]]; then
    log "cargo build --release -p herald-edge"
    (cd "$ROOT" && cargo build --release -p herald-edge)
  fi
  [[ -x "$bin" ]] || { log "$bin not found (build it: cargo build --release -p herald-edge)"; exit 1; }
  local ctx
  ctx="$(mktemp -d "${TMPDIR:-/tmp}/herald-edge-ctx.XXXXXX")"
  cp "$bin" "$ctx/herald"
  log "docker build -> $EDGE_IMAGE (FROM $BASE_IMAGE + target/release/herald)"
  docker build -q -t "$EDGE_IMAGE" -f - "$ctx" >/dev/null <<DOCKERFILE
FROM $BASE_IMAGE
COPY herald /usr/local/bin/herald
RUN useradd --uid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin herald
USER herald
EXPOSE 8080 9091
STOPSIGNAL SIGTERM
ENTRYPOINT []
CMD ["herald"]
DOCKERFILE
  rm -rf "$ctx"
}

case "${1:-}" in
  env) print_env; exit 0 ;;
  base) build_base; exit 0 ;;
  -h|--help|help) sed -n '2,22p' "$0"; exit 0 ;;
esac

build_base
build_edge
log "images ready: $BASE_IMAGE, $EDGE_IMAGE"

if [[ $# -gt 0 ]]; then
  eval "$(print_env)"
  cd "$ROOT"
  exec docker-compose -f "$ROOT/docker-compose.yml" "$@"
else
  print_env
fi
