#!/usr/bin/env bash
# The storm's --kill-cmd: sends SIGNAL (default KILL) to node 1 of the target under test, read
# from the environment bench/run.sh gives every loadtest run (BENCH_TARGET, BENCH_RUN_DIR):
#   herald   edge1 of bench/herald-cluster.sh     ($BENCH_RUN_DIR/cluster/pids/edge1.pid)
#   sockudo  node1 of start_sockudo (SOCKUDO_NODES=3) ($BENCH_RUN_DIR/sockudo/node1/pid)
# Exits non-zero (the loadtest reports kill_command_ok: false) when there is no such node.
set -euo pipefail
sig="${1:-KILL}"
run="${BENCH_RUN_DIR:?run me from bench/run.sh (BENCH_RUN_DIR unset)}"
case "${BENCH_TARGET:?run me from bench/run.sh (BENCH_TARGET unset)}" in
    herald) pidfile="$run/cluster/pids/edge1.pid" ;;
    sockudo) pidfile="$run/sockudo/node1/pid" ;;
    *) echo "kill-node.sh: no node to kill for target $BENCH_TARGET" >&2; exit 2 ;;
esac
[[ -f $pidfile ]] || { echo "kill-node.sh: no $pidfile" >&2; exit 1; }
exec kill "-$sig" "$(cat "$pidfile")"
