#!/usr/bin/env bash
# Render nginx/nginx.conf.template for a list of edges.
#
#   nginx/render.sh [options] NODE=HOST:PORT ...  > nginx.conf
#
# Options:
#   --listen ADDR       listen address/port of nginx (default 8080)
#   --error-log PATH    error_log target (default /dev/stderr)
#   --access-log PATH   access_log target (default /dev/stdout)
#   --temp-dir DIR      put nginx's temp files under DIR (default: the build's own paths)
#   --template FILE     template (default: nginx.conf.template next to this script)
#   Rate limits per client address on /ws, /sse, /poll and /publish (deploy/README.md, "Rate limits"):
#   --limit-conn N      requests in progress per address on those four together: open WebSockets,
#                       SSE streams, waiting polls, publishes (default 1000; 0 = no limit)
#   --limit-open R/B    new WebSocket + SSE connections per address: R per second, B more at once
#                       (default 20/40; 0 = no limit)
#   --limit-req R/B     polls + POST /publish per address: R per second, B more at once
#                       (default 100/200; 0 = no limit)
#   --no-limits         all three off (benchmarks: thousands of sockets from one address)
#
# The committed nginx/nginx.conf is the compose rendering:
#   nginx/render.sh edge1=edge1:8080 edge2=edge2:8080 edge3=edge3:8080 > nginx/nginx.conf
# (tests-deploy/nginx-test.sh checks it is up to date). deploy/cluster.sh renders the same
# template for the native cluster on loopback ports.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
template="$here/nginx.conf.template"
listen=8080
error_log=/dev/stderr
access_log=/dev/stdout
temp_dir=""
nodes=()
# Defaults: the edge's own per-address defaults (max_connections_per_ip, connect_rate_per_ip,
# command_rate; docs/SECURITY.md), enforced here across the whole cluster.
limit_conn=1000
limit_open=20/40
limit_req=100/200

while [[ $# -gt 0 ]]; do
  case "$1" in
    --listen) listen="$2"; shift 2 ;;
    --error-log) error_log="$2"; shift 2 ;;
    --access-log) access_log="$2"; shift 2 ;;
    --temp-dir) temp_dir="$2"; shift 2 ;;
    --template) template="$2"; shift 2 ;;
    --limit-conn) limit_conn="$2"; shift 2 ;;
    --limit-open) limit_open="$2"; shift 2 ;;
    --limit-req) limit_req="$2"; shift 2 ;;
    --no-limits) limit_conn=0; limit_open=0; limit_req=0; shift ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    -*) echo "render.sh: unknown option $1" >&2; exit 64 ;;
    *=*) nodes+=("$1"); shift ;;
    *) echo "render.sh: expected NODE=HOST:PORT, got '$1'" >&2; exit 64 ;;
  esac
done
[[ ${#nodes[@]} -gt 0 ]] || { echo "render.sh: no edges given (NODE=HOST:PORT ...)" >&2; exit 64; }

[[ "$limit_conn" =~ ^[0-9]+$ ]] || { echo "render.sh: --limit-conn wants a number, got '$limit_conn'" >&2; exit 64; }
for v in "$limit_open" "$limit_req"; do
  [[ "$v" == 0 || "$v" =~ ^[1-9][0-9]*/[0-9]+$ ]] || { echo "render.sh: --limit-open/--limit-req want RATE/BURST or 0, got '$v'" >&2; exit 64; }
done

names=(); addrs=()
for n in "${nodes[@]}"; do
  name="${n%%=*}"; addr="${n#*=}"
  [[ "$name" =~ ^[A-Za-z0-9_.-]+$ ]] || { echo "render.sh: bad node id '$name'" >&2; exit 64; }
  [[ "$addr" =~ ^[^[:space:]\;]+:[0-9]+$ ]] || { echo "render.sh: bad address '$addr'" >&2; exit 64; }
  names+=("$name"); addrs+=("$addr")
done

node_map=""; all_servers=""; node_upstreams=""
for i in "${!names[@]}"; do
  name="${names[$i]}"
  node_map+="        ${name} herald_${name//[.-]/_};"$'\n'
  all_servers+="        server ${addrs[$i]} max_fails=1 fail_timeout=5s;"$'\n'
  node_upstreams+="    upstream herald_${name//[.-]/_} {"$'\n'"        zone herald_${name//[.-]/_} 64k;"$'\n'"        least_conn;"$'\n'
  node_upstreams+="        server ${addrs[$i]} max_fails=1 fail_timeout=5s;"$'\n'
  for j in "${!names[@]}"; do
    [[ $j == "$i" ]] && continue
    node_upstreams+="        server ${addrs[$j]} max_fails=1 fail_timeout=5s backup;"$'\n'
  done
  # keepalive: see the comment on herald_all in the template
  node_upstreams+="        keepalive 1024;"$'\n'"        keepalive_timeout 9s;"$'\n'"    }"$'\n'
done

temp_paths=""
if [[ -n "$temp_dir" ]]; then
  for t in client_body proxy fastcgi uwsgi scgi; do
    temp_paths+="    ${t}_temp_path ${temp_dir}/${t};"$'\n'
  done
fi

# The limit directives: zones in the http block, one line per location.
limit_zones="    # Rate limits, first layer, per client address (deploy/README.md), rendered with"$'\n'
limit_zones+="    #   nginx/render.sh --limit-conn ${limit_conn} --limit-open ${limit_open} --limit-req ${limit_req}"$'\n'
limit_zones+="    #   herald_addr  requests in progress per address on /ws, /sse, /poll and /publish together"$'\n'
limit_zones+="    #                (a WebSocket or SSE stream holds one for its whole life, a long-poll while"$'\n'
limit_zones+="    #                it waits)"$'\n'
limit_zones+="    #   herald_open  new WebSocket and SSE connections per address on /ws and /sse (rate, burst)"$'\n'
limit_zones+="    #   herald_req   polls and POST /publish per address (rate, burst)"$'\n'
limit_zones+="    # Over a limit: 429 (@herald_limited below). \`nodelay\`: a request within the burst is served at"$'\n'
limit_zones+="    # once and one beyond it refused at once; nothing waits in nginx. 10 MB per zone holds the"$'\n'
limit_zones+="    # state of ~80k (req) / ~160k (conn) addresses. Rejections are logged at notice (below the"$'\n'
limit_zones+="    # error_log level, so a flood does not flood the log); the access log shows each 429."$'\n'
limit_conn_line=""; limit_open_line=""; limit_req_line=""
if [[ "$limit_conn" != 0 ]]; then
  limit_zones+="    limit_conn_zone \$binary_remote_addr zone=herald_addr:10m;"$'\n'
  limit_conn_line="            limit_conn herald_addr ${limit_conn};"
fi
if [[ "$limit_open" != 0 ]]; then
  limit_zones+="    limit_req_zone \$binary_remote_addr zone=herald_open:10m rate=${limit_open%/*}r/s;"$'\n'
  limit_open_line="            limit_req zone=herald_open burst=${limit_open#*/} nodelay;"
fi
if [[ "$limit_req" != 0 ]]; then
  limit_zones+="    limit_req_zone \$binary_remote_addr zone=herald_req:10m rate=${limit_req%/*}r/s;"$'\n'
  limit_req_line="            limit_req zone=herald_req burst=${limit_req#*/} nodelay;"
fi
limit_zones+="    limit_conn_status 429;"$'\n'"    limit_req_status 429;"$'\n'
limit_zones+="    limit_conn_log_level notice;"$'\n'"    limit_req_log_level notice;"

note="GENERATED by nginx/render.sh from nginx/nginx.conf.template for: ${nodes[*]} (listen ${listen}). Edit the template, not this file."

# Substitute line-wise with awk (values may contain '/' and '&', so no sed).
awk -v listen="$listen" -v elog="$error_log" -v alog="$access_log" -v note="$note" \
    -v node_map="${node_map%$'\n'}" -v all_servers="${all_servers%$'\n'}" \
    -v node_upstreams="${node_upstreams%$'\n'}" -v temp_paths="$temp_paths" \
    -v limit_zones="$limit_zones" -v limit_conn="$limit_conn_line" -v limit_open="$limit_open_line" \
    -v limit_req="$limit_req_line" '
  function subst(s, key, val,   i) {
    while ((i = index(s, key)) > 0) s = substr(s, 1, i - 1) val substr(s, i + length(key))
    return s
  }
  /^@NODE_MAP@$/       { print node_map; next }
  /^@ALL_SERVERS@$/    { print all_servers; next }
  /^@NODE_UPSTREAMS@$/ { print node_upstreams; next }
  /^@TEMP_PATHS@$/     { printf "%s", temp_paths; next }
  /^@LIMIT_ZONES@$/    { print limit_zones; next }
  /^@LIMIT_CONN@$/     { if (limit_conn != "") print limit_conn; next }
  /^@LIMIT_OPEN@$/     { if (limit_open != "") print limit_open; next }
  /^@LIMIT_REQ@$/      { if (limit_req != "") print limit_req; next }
  {
    line = $0
    line = subst(line, "@LISTEN@", listen)
    line = subst(line, "@ERROR_LOG@", elog)
    line = subst(line, "@ACCESS_LOG@", alog)
    line = subst(line, "@GENERATED_NOTE@", note)
    print line
  }' "$template"
