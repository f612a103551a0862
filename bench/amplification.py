#!/usr/bin/env python3
"""The history amplification attack of issue 11, measured on one edge binary.

An anonymous client fills 40 channels with 60 KB messages (4,000 publishes: every channel's
history full), then 8 concurrent `GET /poll` requests with a forged cursor (a foreign epoch at
offset 0) over those 40 channels. Before history paging each poll answered with every message
of every channel (~240 MB per request); with paging each answers one `max_reply_bytes` page.

Prints one JSON object: the edge's RSS before the polls, its peak while they run (sampled every
20 ms from /proc), after, and the reply sizes.

usage: bench/amplification.py EDGE_BINARY [--channels 40] [--per-channel 100] [--size 60000]
       [--polls 8]
Needs redis-server on PATH. Starts its own Redis and edge on free loopback ports and stops them.
"""

import argparse
import base64
import concurrent.futures
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def wait_http(url, seconds=20):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{url} did not come up")


def post_json(url, body):
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def forged_cursor(channels):
    # The cursor format herald-protocol documents: base64url("h1\n<channel> <epoch> <offset>\n"…).
    raw = "h1\n" + "".join(f"{ch} x 0\n" for ch in channels)
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("edge")
    ap.add_argument("--channels", type=int, default=40)
    ap.add_argument("--per-channel", type=int, default=100)
    ap.add_argument("--size", type=int, default=60000)
    ap.add_argument("--polls", type=int, default=8)
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="herald-amp-")
    rport, port, mport = free_port(), free_port(), free_port()
    redis = subprocess.Popen(
        ["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", work],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    edge = None
    try:
        time.sleep(0.3)
        edge = subprocess.Popen(
            [args.edge, "--listen", f"127.0.0.1:{port}", "--metrics-listen",
             f"127.0.0.1:{mport}", "--node-id", "amp", "--redis-url",
             f"redis://127.0.0.1:{rport}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/readyz")
        channels = [f"amp{i}" for i in range(args.channels)]
        data = "x" * args.size
        for n in range(args.per_channel):
            for ch in channels:
                post_json(f"{base}/api/publish", {"channel": ch, "data": data})
        time.sleep(0.5)
        before = rss_bytes(edge.pid)
        query = "&".join(f"channel={ch}" for ch in channels)
        url = f"{base}/poll?{query}&cursor={forged_cursor(channels)}&timeout=0"
        peak = [before]
        done = threading.Event()

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], rss_bytes(edge.pid))
                time.sleep(0.02)

        sampler = threading.Thread(target=sample)
        sampler.start()

        def poll():
            with urllib.request.urlopen(url, timeout=120) as r:
                return len(r.read())

        started = time.time()
        with concurrent.futures.ThreadPoolExecutor(args.polls) as pool:
            sizes = list(pool.map(lambda _: poll(), range(args.polls)))
        elapsed = time.time() - started
        done.set()
        sampler.join()
        time.sleep(0.5)
        after = rss_bytes(edge.pid)
        mib = 1024 * 1024
        print(json.dumps({
            "edge": args.edge,
            "history_bytes": args.channels * args.per_channel * args.size,
            "rss_before_mib": round(before / mib, 1),
            "rss_peak_mib": round(peak[0] / mib, 1),
            "rss_after_mib": round(after / mib, 1),
            "reply_bytes": sizes,
            "polls_secs": round(elapsed, 2),
        }))
    finally:
        for p in (edge, redis):
            if p is not None:
                p.terminate()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()


if __name__ == "__main__":
    sys.exit(main())
