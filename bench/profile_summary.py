#!/usr/bin/env python3
"""Inclusive share of CPU samples per category, from folded stacks (inferno-collapse-perf),
plain or gzipped. A sample counts for every category whose pattern appears in its stack.

usage: bench/profile_summary.py docs/profiles/edge-fanout.folded.gz
"""
import collections
import gzip
import re
import sys

CATEGORIES = {
    "ws Session::flush (socket flush: the send syscall)": r"ws::Session::flush",
    "send syscalls (sendto, incl. loopback receive path run in the sender's context)": r"__sys_sendto|__libc_send|\b__send\b",
    "ws Session::feed (frame into the write buffer)": r"ws::Session::feed",
    "tungstenite frame format": r"format_into_buf",
    "Subscriptions::on_live (per delivery per connection bookkeeping)": r"Subscriptions::on_live",
    "Hub fan-out (broker event -> every subscriber queue)": r"hub::Hub.*fan_out|Hub as herald_broker",
    "mpsc queue (try_send / recv)": r"mpsc::bounded::Sender<T>::try_send|mpsc::list::Rx|chan::Rx<T,S>::recv",
    "CancellationToken: cancelled() futures, is_cancelled": r"WaitForCancellationFuture|tree_node::is_cancelled|NotifiedProject",
    "CancellationToken: clone/drop (tree node mutex)": r"cancellation_token::tree_node::(increase|decrease)_handle_refcount",
    "prometheus (with_label_values, observe, inc)": r"prometheus::",
    "tracing span enter/exit (Instrumented)": r"tracing::span::Span::(enter|exit|do_enter|do_exit)|Entered",
    "Redis client / broker": r"herald_broker|redis::",
    "socket reads (recv/read)": r"__sys_recvfrom|ksys_read|sock_recvmsg",
    "epoll_wait": r"epoll_wait",
    "netfilter on loopback (conntrack, iptables)": r"nf_conntrack|ipt_do_table|nf_hook_slow",
    "memory allocation (malloc/free)": r"\bmalloc\b|\bfree\b|_int_malloc|_int_free|cfree|realloc",
}


def main():
    path = sys.argv[1]
    opener = gzip.open if path.endswith(".gz") else open
    total = 0
    inc = collections.Counter()
    with opener(path, "rt") as f:
        for line in f:
            stack, n = line.rsplit(" ", 1)
            n = int(n)
            total += n
            for name, pat in CATEGORIES.items():
                if re.search(pat, stack):
                    inc[name] += n
    print(f"inclusive share of {total} samples (categories overlap)")
    for name, v in sorted(inc.items(), key=lambda x: -x[1]):
        print(f"{100 * v / total:6.1f}%  {name}")


if __name__ == "__main__":
    main()
