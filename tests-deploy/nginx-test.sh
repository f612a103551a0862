#!/usr/bin/env bash
# Tests of nginx/nginx.conf.template that need no herald binary:
#   1. nginx/nginx.conf is the up-to-date compose rendering of the template;
#   2. `nginx -t` accepts a loopback rendering (and the compose file inside herald-base:local
#      with edge1..3 resolvable, when that image exists);
#   3. routing behaviour against three stand-in edges (tiny nginx servers that answer with their
#      node id and set the herald_node cookie like the edge does): cookie affinity, least_conn
#      spread for new clients, failover when the named edge is down or answers 503, WebSocket
#      upgrade headers passed upstream, /metrics 404, /api proxied from loopback, X-Forwarded-For
#      set to the client's address (a client-supplied one is not passed on);
#   4. the rate limits, on a second rendering with tiny limits: limit_req on /ws+/sse and on
#      /poll+/publish answers nginx's own 429 (JSON, Retry-After) beyond rate+burst, per client
#      address (another loopback address is still served), the demo page / healthz / api are not
#      limited, and limit_conn counts requests in progress (against a stand-in that never answers).
# Everything runs as plain processes on random free ports under a temp dir, removed at exit.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
T="$(mktemp -d "${TMPDIR:-/tmp}/herald-nginx-test.XXXXXX")"
pids=()
cleanup() {
  for f in "$T"/*/nginx.pid; do [[ -f $f ]] && kill "$(cat "$f")" 2>/dev/null || true; done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.2; rm -rf "$T"
}
trap cleanup EXIT

fail=0
ok()   { printf 'ok   %s\n' "$*"; }
bad()  { printf 'FAIL %s\n' "$*"; fail=1; }
check() { local what="$1"; shift; if "$@"; then ok "$what"; else bad "$what"; fi; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# 1. committed compose rendering is in sync with the template
"$ROOT/nginx/render.sh" edge1=edge1:8080 edge2=edge2:8080 edge3=edge3:8080 > "$T/compose.conf"
check "nginx/nginx.conf is the current rendering of nginx.conf.template (run: nginx/render.sh edge1=edge1:8080 edge2=edge2:8080 edge3=edge3:8080 > nginx/nginx.conf)" \
  diff -u "$ROOT/nginx/nginx.conf" "$T/compose.conf"

# stand-in edges
P=$(free_port)
declare -A EP
start_standin() {  # name mode(ok|draining)
  local name=$1 mode=$2 dir="$T/$1" port=${EP[$1]}
  mkdir -p "$dir"
  local body='return 200 "node=NAME upgrade=$http_upgrade connection=$http_connection uri=$request_uri xff=$http_x_forwarded_for\n";'
  [[ $mode == draining ]] && body='return 503 "draining NAME\n";'
  cat > "$dir/nginx.conf" <<CONF
worker_processes 1;
error_log $dir/error.log warn;
pid $dir/nginx.pid;
events { worker_connections 128; }
http {
  access_log off;
  client_body_temp_path $dir; proxy_temp_path $dir; fastcgi_temp_path $dir; uwsgi_temp_path $dir; scgi_temp_path $dir;
  map \$cookie_herald_node \$set_cookie { default "herald_node=NAME; Path=/; HttpOnly; SameSite=Lax"; NAME ""; }
  server {
    listen 127.0.0.1:$port;
    location / { add_header Set-Cookie \$set_cookie always; default_type text/plain; ${body//NAME/$name} }
  }
}
CONF
  sed -i "s/NAME/$name/g" "$dir/nginx.conf"
  nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log"
}
stop_standin() { kill "$(cat "$T/$1/nginx.pid")"; for _ in $(seq 50); do [[ -f "$T/$1/nginx.pid" ]] || break; sleep 0.1; done; }

args=()
for n in edge1 edge2 edge3; do EP[$n]=$(free_port); args+=("$n=127.0.0.1:${EP[$n]}"); done
mkdir -p "$T/proxy/tmp"
"$ROOT/nginx/render.sh" --listen "127.0.0.1:$P" --error-log "$T/proxy/error.log" \
  --access-log "$T/proxy/access.log" --temp-dir "$T/proxy/tmp" "${args[@]}" > "$T/proxy/nginx.conf"
for t in client_body proxy fastcgi uwsgi scgi; do mkdir -p "$T/proxy/tmp/$t"; done

# 2. syntax
check "nginx -t (loopback rendering)" \
  nginx -q -t -p "$T/proxy" -c "$T/proxy/nginx.conf" -e "$T/proxy/error.log" -g "pid $T/proxy/nginx.pid;"
if docker image inspect herald-base:local >/dev/null 2>&1; then
  check "nginx -t (committed compose nginx.conf, inside herald-base:local)" \
    docker run --rm --add-host edge1:127.0.0.1 --add-host edge2:127.0.0.1 --add-host edge3:127.0.0.1 \
      -v "$ROOT/nginx/nginx.conf:/etc/nginx/nginx.conf:ro" herald-base:local nginx -q -t
else
  echo "skip nginx -t of the compose file: herald-base:local not built (deploy/images.sh base)"
fi

# 3. behaviour
for n in edge1 edge2 edge3; do start_standin $n ok; done
nginx -p "$T/proxy" -c "$T/proxy/nginx.conf" -e "$T/proxy/error.log" -g "pid $T/proxy/nginx.pid;"
for _ in $(seq 50); do curl -fs -o /dev/null "http://127.0.0.1:$P/healthz" && break; sleep 0.1; done
U="http://127.0.0.1:$P"

node_of() { grep -o 'node=[a-z0-9]*' | head -n1 | cut -d= -f2; }
get() { curl -s --max-time 10 "$@"; }

first_cookie="$(curl -s -D - -o /dev/null "$U/" | tr -d '\r' | grep -i '^set-cookie: herald_node=' | sed 's/^[^=]*=\([^;]*\).*/\1/')"
check "no cookie: the edge's Set-Cookie reaches the client (got '$first_cookie')" test -n "$first_cookie"

seen="$(for _ in $(seq 12); do get "$U/" | node_of; done | sort -u | tr '\n' ' ')"
check "no cookie: least_conn spreads new clients over all edges (saw: $seen)" test "$seen" = "edge1 edge2 edge3 "

for n in edge1 edge2 edge3; do
  got="$(for _ in $(seq 10); do get -b "herald_node=$n" "$U/" | node_of; done | sort -u | tr '\n' ' ')"
  check "cookie herald_node=$n: 10/10 requests on $n (saw: $got)" test "$got" = "$n "
done
got="$(for _ in $(seq 6); do get -b "herald_node=nosuch" "$U/" | node_of; done | sort -u | wc -l)"
check "unknown cookie: balanced like no cookie ($got edges)" test "$got" -ge 2

resp="$(get -H 'Upgrade: websocket' -H 'Connection: Upgrade' -b herald_node=edge2 "$U/ws")"
check "WebSocket: Upgrade/Connection forwarded upstream ($resp)" grep -q 'upgrade=websocket connection=upgrade' <<<"$resp"
resp="$(get -b herald_node=edge2 "$U/poll?channel=a")"
check "plain request: empty Connection upstream (keepalive) ($resp)" grep -q 'upgrade= connection= ' <<<"$resp"

resp="$(get -H 'X-Forwarded-For: 6.6.6.6' -b herald_node=edge2 "$U/healthz")"
check "X-Forwarded-For is set to the client's address, a client-supplied one is dropped ($resp)" \
  grep -q 'xff=127.0.0.1$' <<<"$resp"

code="$(curl -s -o /dev/null -w '%{http_code}' "$U/metrics")"
check "/metrics through nginx is 404 ($code)" test "$code" = 404
code="$(curl -s -o /dev/null -w '%{http_code}' "$U/metrics/x")"
check "/metrics/x through nginx is 404 ($code)" test "$code" = 404
resp="$(get "$U/api/info")"
check "/api/* from loopback is proxied ($resp)" grep -q 'uri=/api/info' <<<"$resp"
check "nginx.conf denies /api from public addresses" grep -q 'deny all;' "$T/proxy/nginx.conf"

# 4. rate limits: a second nginx in front of the same stand-ins, with tiny limits, plus an edge
# "slow" that accepts connections and never answers (a request to it stays in progress).
L=$(free_port); SLOW=$(free_port)
python3 -c "import socket,time; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('127.0.0.1',$SLOW)); s.listen(64); time.sleep(120)" &
pids+=($!)
mkdir -p "$T/limits/tmp"; for t in client_body proxy fastcgi uwsgi scgi; do mkdir -p "$T/limits/tmp/$t"; done
"$ROOT/nginx/render.sh" --listen "127.0.0.1:$L" --error-log "$T/limits/error.log" --access-log "$T/limits/access.log" \
  --temp-dir "$T/limits/tmp" --limit-conn 2 --limit-open 1/3 --limit-req 1/5 \
  edge1="127.0.0.1:${EP[edge1]}" slow="127.0.0.1:$SLOW" > "$T/limits/nginx.conf"
nginx -p "$T/limits" -c "$T/limits/nginx.conf" -e "$T/limits/error.log" -g "pid $T/limits/nginx.pid;"
LU="http://127.0.0.1:$L"
for _ in $(seq 50); do curl -fs -o /dev/null "$LU/healthz" && break; sleep 0.1; done
codes() {  # N ARGS... -> the status of N requests in a row, space separated
  local n=$1 i; shift
  for ((i = 0; i < n; i++)); do curl -s -o /dev/null -m 5 -w '%{http_code} ' -b herald_node=edge1 "$@"; done
}
count() { tr ' ' '\n' | grep -c "^$1$" || true; }
got="$(codes 10 "$LU/ws")"
check "limit_req /ws (1 r/s, burst 3): the first 4 of 10 at once are served, the rest get 429 ($got)" \
  test "$(count 200 <<<"$got")" -ge 4 -a "$(count 200 <<<"$got")" -le 5 -a "$(count 429 <<<"$got")" -ge 5
got="$(codes 3 "$LU/sse")"
check "limit_req: /sse shares the /ws zone, so it is refused too ($got)" test "$(count 429 <<<"$got")" -ge 2
got="$(codes 4 "$LU/poll" && codes 4 -X POST -d '{}' "$LU/publish")"
check "limit_req /poll + /publish (1 r/s, burst 5): 6 of 8 at once served, then 429 ($got)" \
  test "$(count 200 <<<"$got")" -ge 6 -a "$(count 200 <<<"$got")" -le 7 -a "$(count 429 <<<"$got")" -ge 1
codes 4 --interface 127.0.0.5 "$LU/ws" >/dev/null
hdrs="$(curl -s -D - --interface 127.0.0.5 -b herald_node=edge1 "$LU/ws" | tr -d '\r')"
check "nginx's 429 carries Retry-After: 1 ($(head -n1 <<<"$hdrs"))" \
  grep -q '^Retry-After: 1$' <<<"$hdrs"
check "nginx's 429 body is JSON with code 112 ($(tail -n1 <<<"$hdrs"))" grep -q '"code":112' <<<"$hdrs"
got="$(codes 12 "$LU/" ; codes 12 "$LU/healthz"; codes 6 "$LU/api/info")"
check "the demo page, /healthz and /api are not rate limited (30 requests at once: $(count 200 <<<"$got") served)" \
  test "$(count 200 <<<"$got")" = 30
got="$(codes 4 --interface 127.0.0.2 "$LU/ws")"
check "another client address is served while 127.0.0.1 is limited ($got)" test "$got" = "200 200 200 200 "
# limit_conn 2: two requests held by the slow edge; a third from the same address is refused at
# once (whatever the location), other paths and other addresses still work.
curl -s -o /dev/null -m 4 --interface 127.0.0.3 -b herald_node=slow "$LU/sse" & pids+=($!)
curl -s -o /dev/null -m 4 --interface 127.0.0.3 -b herald_node=slow "$LU/poll" & pids+=($!)
sleep 1
got="$(codes 1 --interface 127.0.0.3 "$LU/ws")$(codes 1 --interface 127.0.0.3 -X POST -d '{}' "$LU/publish")"
check "limit_conn 2: with 2 requests in progress, a 3rd and 4th from that address get 429 ($got)" test "$got" = "429 429 "
got="$(codes 1 --interface 127.0.0.3 "$LU/healthz")$(codes 1 --interface 127.0.0.4 "$LU/ws")"
check "limit_conn: other paths and other addresses are still served ($got)" test "$got" = "200 200 "
kill "$(cat "$T/limits/nginx.pid")" 2>/dev/null || true

stop_standin edge1
hdrs="$(curl -s -D - --max-time 10 -b herald_node=edge1 "$U/sse?channel=a" | tr -d '\r')"
got="$(node_of <<<"$hdrs")"
check "edge1 down: herald_node=edge1 client is served by a live edge ($got)" grep -qE '^edge[23]$' <<<"$got"
check "edge1 down: the live edge re-names itself in the cookie" grep -qi "^set-cookie: herald_node=$got" <<<"$hdrs"
got="$(for _ in $(seq 6); do get -b herald_node=edge1 "$U/" | node_of; done | sort -u | tr '\n' ' ')"
check "edge1 down: every request still answered by edge2/edge3 (saw: $got)" grep -qE '^(edge[23] )+$' <<<"$got"

start_standin edge1 draining
sleep 5.5   # let fail_timeout for edge1 pass so nginx tries it again
got="$(for _ in $(seq 4); do curl -s -o /dev/null -w '%{http_code} ' -b herald_node=edge1 "$U/readyz"; done)"
check "edge1 draining (503): requests fail over, clients see 200 ($got)" test "$got" = "200 200 200 200 "

stop_standin edge2; stop_standin edge3
code="$(curl -s -o /dev/null -w '%{http_code}' -b herald_node=edge2 "$U/")"
check "every edge down/draining: nginx answers 502/503, does not hang ($code)" grep -qE '^50[23]$' <<<"$code"

if [[ $fail != 0 ]]; then
  echo "--- proxy error.log"; tail -n 30 "$T/proxy/error.log" || true
  echo "nginx-test: FAILED"; exit 1
fi
echo "nginx-test: all passed"
