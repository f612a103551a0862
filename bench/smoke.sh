#!/usr/bin/env bash
# Smoke run of every loadtest scenario, tiny (seconds each), against whatever target is
# available: Herald (target/<profile>/herald, built if missing), nginx+nchan+Redis (when
# installed) and sockudo (only when bench/sockudo/install.sh has a cached binary: it is never
# built here). A check fails on any connect error, loss, duplicate or reordering.
# Prints "N passed, N failed" last; exits non-zero on a failure.
#
# environment: PROFILE=debug|release (default debug), SMOKE_TARGETS="herald nchan sockudo",
#              SMOKE_TIMEOUT=60 (seconds one loadtest run may take before it counts as failed)
# Everything runs on free loopback ports under bench/.run/smoke/ and is stopped on exit.
set -uo pipefail
source "$(dirname "$0")/lib.sh"
T0=$SECONDS
log() { echo "[bench +$((SECONDS - T0))s] $*" >&2; }
RUN_DIR="${RUN_DIR:-$BENCH_DIR/.run}/smoke"
mkdir -p "$RUN_DIR"
PROFILE="${PROFILE:-debug}"
TARGETS="${SMOKE_TARGETS:-herald nchan sockudo}"
flag=(); [[ $PROFILE == release ]] && flag=(--release)
(cd "$REPO_DIR" && cargo build -q "${flag[@]}" -p herald-loadtest) || die "loadtest does not build"
LT="$REPO_DIR/target/$PROFILE/herald-loadtest"
PASS=0 FAIL=0
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    stop_nchan 2>/dev/null
    stop_sockudo 2>/dev/null
}
trap cleanup EXIT

# check NAME JSONFILE: zero loss/dup/reorder, every connection established.
check() {
    local name="$1" file="$2"
    if python3 - "$file" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
c = r["results"]["connections"]
bad = []
if c["established"] < c["attempted"] or c["errors"]:
    bad.append(f"connections {c['established']}/{c['attempted']} errors {c['errors']}")
m = r["results"].get("messages")
if m:
    s = m["seq"]
    if s["lost"] or s["duplicates"] or s["reordered"] or m["deliveries"] == 0:
        bad.append(f"seq {s} deliveries {m['deliveries']}")
st = r["results"].get("extra", {}).get("storm")
if st and (st["disconnected"] == 0 or st["never_reconnected"] or st["not_recovered"]):
    bad.append(f"storm {st}")
if bad:
    print("; ".join(bad)); sys.exit(1)
PY
    then PASS=$((PASS + 1)); log "ok   $name"
    else FAIL=$((FAIL + 1)); log "FAIL $name (see $file)"; fi
}

# smoke TARGET NAME ARGS...: runs the loadtest with --json and checks it.
smoke() {
    local target="$1" name="$2"; shift 2
    local file="$RUN_DIR/$target-$name.json"
    if timeout "${SMOKE_TIMEOUT:-60}" "$LT" "$@" --target "$target" --json --quiet >"$file" 2>"$file.log"; then
        check "$target $name" "$file"
    else
        FAIL=$((FAIL + 1)); log "FAIL $target $name: $(tail -1 "$file.log")"
    fi
}

scenarios() {
    local target="$1"; shift
    local urls=("$@") u=()
    for x in "${urls[@]}"; do u+=(--url "$x"); done
    smoke "$target" fanout-ws fanout "${u[@]}" --connections 20 --channels 2 --rate 100 --duration 2s --drain 3s
    smoke "$target" fanout-sse fanout "${u[@]}" --transport sse --connections 10 --rate 50 --duration 2s --drain 3s
    smoke "$target" fanout-longpoll fanout "${u[@]}" --transport longpoll --connections 10 --rate 50 --duration 2s --drain 3s
    smoke "$target" rooms rooms "${u[@]}" --connections 30 --room-size 10 --rate 5 --duration 2s --drain 3s
    smoke "$target" idle idle "${u[@]}" --connections 200 --ramp 1s --duration 1s
    smoke "$target" connect connect "${u[@]}" --rate 100 --duration 2s
}

start_edge() { # start_edge NAME -> prints "pid url"
    local port mport
    port=$(free_port); mport=$(free_port)
    (exec "$HERALD" --listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$mport" --node-id "$1" \
        --config "$REPO_DIR/bench/herald-bench.toml" \
        ${SMOKE_REDIS_URL:+--redis-url "$SMOKE_REDIS_URL"}) >"$RUN_DIR/$1.log" 2>&1 &
    local pid=$!
    disown "$pid" 2>/dev/null # the storm kills it: no "Killed" job notice
    PIDS+=("$pid")
    wait_for "herald $1" 30 curl -sf "http://127.0.0.1:$port/healthz"
    EDGE_PID=$pid EDGE_URL="http://127.0.0.1:$port"
}

if [[ $TARGETS == *herald* ]]; then
    if (cd "$REPO_DIR" && cargo build -q "${flag[@]}" -p herald-edge 2>"$RUN_DIR/herald-build.log"); then
        HERALD="$REPO_DIR/target/$PROFILE/herald"
        if command -v redis-server >/dev/null; then
            start_redis smoke-redis; PIDS+=("$REDIS_PID"); SMOKE_REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
        fi
        start_edge smoke-edge-1; URL1=$EDGE_URL
        scenarios herald "$URL1"
        if [[ -n ${SMOKE_REDIS_URL:-} ]]; then
            start_edge smoke-edge-2; VICTIM=$EDGE_PID URL2=$EDGE_URL
            smoke herald storm storm --url "$URL2" --url "$URL1" --publish-url "$URL1" \
                --connections 20 --rate 50 --duration 4s --kill-after 1s --drain 10s \
                --reconnect-jitter 500ms --kill-cmd "kill -9 $VICTIM"
        fi
    else
        log "skip herald: herald-edge does not build (see $RUN_DIR/herald-build.log)"
    fi
fi
if [[ $TARGETS == *nchan* ]]; then
    if command -v nginx >/dev/null && nchan_module >/dev/null 2>&1 && command -v redis-server >/dev/null; then
        RUN_DIR="$RUN_DIR" start_nchan
        scenarios nchan "$NCHAN_URL"
    else
        log "skip nchan: nginx, libnginx-mod-nchan or redis-server not installed"
    fi
fi
if [[ $TARGETS == *sockudo* ]]; then
    if sockudo_bin >/dev/null; then
        # WebSocket only (sockudo has no SSE or long-poll): fan-out, rooms (client events),
        # idle and connect against one node (local adapter).
        RUN_DIR="$RUN_DIR" start_sockudo
        u=(--url "$SOCKUDO_URLS")
        smoke sockudo fanout-ws fanout "${u[@]}" --connections 20 --channels 2 --rate 100 --duration 2s --drain 3s
        smoke sockudo rooms rooms "${u[@]}" --connections 30 --room-size 10 --rate 5 --duration 2s --drain 3s
        smoke sockudo idle idle "${u[@]}" --connections 200 --ramp 1s --duration 1s
        smoke sockudo connect connect "${u[@]}" --rate 100 --duration 2s
    else
        log "skip sockudo: not installed (no cached binary; bench/sockudo/install.sh --build makes one)"
    fi
fi
echo "smoke: $PASS passed, $FAIL failed in $((SECONDS - T0))s"
[[ $FAIL -eq 0 && $PASS -gt 0 ]]
