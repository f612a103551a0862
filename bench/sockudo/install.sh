#!/usr/bin/env bash
# Prints the path of a sockudo binary for the benchmarks, building it only when asked.
#
#   bench/sockudo/install.sh          path of the cached binary; exit 1 (with a hint) if none
#   bench/sockudo/install.sh --build  build it first if missing: `cargo install sockudo --locked
#                                     --features redis` (the default features have no Redis
#                                     adapter or cache: SOCKUDO_NODES > 1 needs them) into
#                                     bench/.run/sockudo-install (git-ignored), ~20-40 min
#                                     on 2 cores, needs protobuf-compiler and libprotobuf-dev
#
# SOCKUDO_BIN=/path/to/sockudo overrides the cache; SOCKUDO_VERSION (default 5.2.0) picks the
# crate version built. Never called by CI: scripts/test.sh does not run it and bench/smoke.sh
# only asks for the cached path (it skips sockudo when there is none).
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
ROOT="${SOCKUDO_ROOT:-$BENCH_DIR/.run/sockudo-install}" # not under a RUN_DIR override: one cache
BIN="${SOCKUDO_BIN:-$ROOT/bin/sockudo}"
VERSION="${SOCKUDO_VERSION:-5.2.0}"

if [[ -x $BIN ]]; then
    echo "$BIN"
    exit 0
fi
if [[ ${1:-} != --build ]]; then
    log "no sockudo binary at $BIN: run bench/sockudo/install.sh --build (about 20-40 min)"
    exit 1
fi
# protoc and its well-known types (google/protobuf/timestamp.proto, which Debian ships in
# libprotobuf-dev, not in protobuf-compiler): metrics-exporter-tcp's build script needs both.
command -v protoc >/dev/null || die "protoc missing: apt-get install -y protobuf-compiler libprotobuf-dev"
[[ -f /usr/include/google/protobuf/timestamp.proto || -n ${PROTOC_INCLUDE:-} ]] ||
    die "google/protobuf/timestamp.proto missing: apt-get install -y libprotobuf-dev"
log "building sockudo $VERSION into $ROOT (nice 19; log: $ROOT.log)"
mkdir -p "$ROOT"
nice -n 19 cargo install sockudo --version "$VERSION" --locked --features redis --root "$ROOT" >"$ROOT.log" 2>&1 ||
    die "cargo install sockudo failed, see $ROOT.log"
echo "$BIN"
