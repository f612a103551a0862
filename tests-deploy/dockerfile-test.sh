#!/usr/bin/env bash
# Builds the users' multi-stage deploy/Dockerfile on a machine with no registry, and checks the
# image it makes. The Dockerfile's two base images are build arguments; here they point at local
# stand-ins for the official ones:
#   RUST_IMAGE=herald-rust:local     herald-base:local + gcc + the host's Rust toolchain and its
#                                    cargo registry cache (CARGO_NET_OFFLINE=true; no network)
#   RUNTIME_IMAGE=herald-base:local  (Debian bookworm like debian:bookworm-slim; apt works)
# The context is the working tree without target/, .run/ and .git (what a .dockerignore
# would leave). Slow: a full release build inside Docker (~8 min on 2 cores).
# HERALD_REBUILD_RUST=1 rebuilds herald-rust:local.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TAG=herald-edge:dockerfile-test
say() { printf '[dockerfile-test] %s\n' "$*" >&2; }

"$ROOT/deploy/images.sh" base
if [[ "${HERALD_REBUILD_RUST:-0}" == 1 ]] || ! docker image inspect herald-rust:local >/dev/null 2>&1; then
  sysroot="$(realpath "$(rustc --print sysroot)")"
  registry="${CARGO_HOME:-$HOME/.cargo}/registry"
  [[ -d "$registry" ]] || { say "no cargo registry cache at $registry (run cargo fetch first)"; exit 1; }
  ctx="$(mktemp -d)"; trap 'rm -rf "$ctx"' EXIT
  cat >"$ctx/Dockerfile" <<'DOCKERFILE'
FROM herald-base:local
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
COPY toolchain /usr/local/rust
COPY registry /usr/local/cargo/registry
ENV CARGO_HOME=/usr/local/cargo CARGO_NET_OFFLINE=true \
    PATH=/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
DOCKERFILE
  say "building herald-rust:local from $sysroot and $registry"
  tar -c -C "$ctx" Dockerfile \
      --transform "s|^$(basename "$sysroot")|toolchain|" -C "$(dirname "$sysroot")" --exclude=share/doc "$(basename "$sysroot")" \
      -C "$(dirname "$registry")" registry \
    | docker build -q -t herald-rust:local - >/dev/null
fi

say "docker build -f deploy/Dockerfile (RUST_IMAGE=herald-rust:local RUNTIME_IMAGE=herald-base:local)"
start=$SECONDS
tar -c -C "$ROOT" --exclude=./target --exclude=./.run --exclude=./.git --exclude='*/.run' --exclude='__pycache__' . \
  | docker build -f deploy/Dockerfile --build-arg RUST_IMAGE=herald-rust:local \
      --build-arg RUNTIME_IMAGE=herald-base:local -t "$TAG" - >"$ROOT/.run/dockerfile-test.log" 2>&1 \
  || { tail -n 40 "$ROOT/.run/dockerfile-test.log"; say "FAILED: docker build"; exit 1; }
say "built $TAG in $((SECONDS - start))s"

fail=0
user="$(docker run --rm "$TAG" id -un)"
[[ "$user" == herald ]] && say "ok   runs as the unprivileged user 'herald'" || { say "FAIL runs as '$user'"; fail=1; }
docker run --rm "$TAG" herald --help >/dev/null && say "ok   herald --help" || { say "FAIL herald --help"; fail=1; }
name="herald-dockerfile-test-$$"
docker run -d --name "$name" -e HERALD_NODE_ID=solo "$TAG" >/dev/null
trap 'docker rm -f "$name" >/dev/null 2>&1 || true' EXIT
health=starting
for _ in $(seq 60); do
  health="$(docker inspect -f '{{.State.Health.Status}}' "$name")"
  [[ "$health" == healthy ]] && break
  sleep 1
done
[[ "$health" == healthy ]] && say "ok   the image's HEALTHCHECK (curl /readyz) reports healthy (single node, in-process broker)" \
  || { say "FAIL health: $health"; docker logs "$name" 2>&1 | tail -n 20; fail=1; }
code="$(docker exec "$name" curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:9091/metrics)"
[[ "$code" == 200 ]] && say "ok   /metrics on :9091" || { say "FAIL /metrics on :9091: $code"; fail=1; }
t0=$SECONDS; docker stop -t 30 "$name" >/dev/null; took=$((SECONDS - t0))
ec="$(docker inspect -f '{{.State.ExitCode}}' "$name")"
[[ "$ec" == 0 ]] && say "ok   SIGTERM: clean exit in ${took}s" || { say "FAIL SIGTERM: exit code $ec after ${took}s"; fail=1; }
[[ $fail == 0 ]] && say "PASSED" || { say "FAILED"; exit 1; }
