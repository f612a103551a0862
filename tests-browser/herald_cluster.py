"""The native three-edge cluster (deploy/cluster.sh: redis, edge1..edge3, nginx, Prometheus as
plain processes on free loopback ports) for the browser tests, and the session fixture that brings
it up once for every test module that asks for `cluster`.

The state directory (.run/browser-cluster/run-PID) keeps the logs; the fixture's finalizer always
brings the cluster down.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from urllib.parse import urlencode

from herald_browser import REPO, free_port

CLUSTER_SH = REPO / "deploy" / "cluster.sh"
# One state directory per run (logs stay there), so runs in parallel never touch each other.
STATE_ROOT = REPO / ".run" / "browser-cluster"
STATE_DIR = STATE_ROOT / f"run-{os.getpid()}"
API_KEY = "browser-test-key"
WAIT = 30.0  # seconds: a loaded 2-core machine runs three Chromiums, three edges, nginx, redis

# ------------------------------------------------------------------------------------- cluster

class Cluster:
    """deploy/cluster.sh with its own state directory and free ports."""

    def __init__(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_CLUSTER")}
        env.update(
            HERALD_CLUSTER_DIR=str(STATE_DIR),
            HERALD_CLUSTER_PORT=str(free_port()),
            HERALD_CLUSTER_PROMETHEUS_PORT=str(free_port()),
            HERALD_CLUSTER_API_KEY=API_KEY,
            HERALD_CLUSTER_GRACE="3",
            # Identity on, as for a developer: a random HMAC secret, deploy/herald.toml (the
            # development token endpoint, chat rooms open to every signed-in user).
            HERALD_CLUSTER_AUTH="dev",
        )
        if os.environ.get("HERALD_BIN"):
            env["HERALD_BIN"] = os.environ["HERALD_BIN"]
        self.env = env
        self.vars: dict[str, str] = {}

    def run(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        done = subprocess.run([str(CLUSTER_SH), *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"cluster.sh {' '.join(args)} failed ({done.returncode}):\n"
                                 f"{done.stdout}\n{done.stderr}\n{self.log_tails()}")
        return done

    def background(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([str(CLUSTER_SH), *args], env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)

    def up(self):
        self.run("up")
        out = self.run("env").stdout
        # `cluster.sh env` prints shell assignments; values with spaces are %q-quoted.
        self.vars = {k: v.replace("\\ ", " ") for k, v in re.findall(r"^(\w+)=(.*)$", out, re.M)}

    @property
    def url(self) -> str:
        return self.vars["HERALD_CLUSTER_URL"]

    @property
    def edges(self) -> list[str]:
        return self.vars["HERALD_CLUSTER_EDGE_NAMES"].split()

    def edge_address(self, edge: str) -> str:
        return f"127.0.0.1:{self.vars[f'HERALD_CLUSTER_{edge.upper()}_PORT']}"

    def access_log(self) -> str:
        path = STATE_DIR / "logs" / "nginx-access.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def metrics_url(self, edge: str) -> str:
        return f"http://127.0.0.1:{self.vars[f'HERALD_CLUSTER_{edge.upper()}_METRICS_PORT']}/metrics"

    def recoveries(self, edges: list[str]) -> dict[str, float]:
        """herald_recovery_requests_total by outcome, summed over `edges` (scraped directly)."""
        total = {"recovered": 0.0, "not_recovered": 0.0}
        for edge in edges:
            with urllib.request.urlopen(self.metrics_url(edge), timeout=5) as r:
                text = r.read().decode()
            for outcome, value in re.findall(
                    r'^herald_recovery_requests_total\{[^}]*outcome="(\w+)"[^}]*\} (\S+)$', text, re.M):
                total[outcome] = total.get(outcome, 0.0) + float(value)
        return total

    def dev_token(self, user: str) -> str:
        """A connection token for `user` from the development endpoint, through nginx."""
        deadline = time.monotonic() + WAIT
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/dev/token?{urlencode({'user': user})}", timeout=10) as r:
                    return json.loads(r.read())["token"]
            except urllib.error.HTTPError as err:
                if err.code not in (502, 503, 504) or time.monotonic() > deadline:
                    raise
            time.sleep(0.2)

    def publish(self, channel: str, data: dict, user: str = "api") -> dict:
        """POST /publish through nginx with no cookie (least_conn picks the edge), as `user` (a
        dev token; the chat namespace lets any signed-in user publish), retrying what nginx could
        not deliver anywhere (502/503/504: nothing was published)."""
        body = json.dumps({"channel": channel, "data": data}).encode()
        token = self.dev_token(user)
        deadline = time.monotonic() + WAIT
        while True:
            request = urllib.request.Request(self.url + "/publish", data=body, method="POST",
                                             headers={"Content-Type": "application/json",
                                                      "Authorization": f"Bearer {token}"})
            try:
                with urllib.request.urlopen(request, timeout=10) as r:
                    reply = json.loads(r.read())
                    reply["node"] = r.headers.get("X-Herald-Node")
                    return reply
            except urllib.error.HTTPError as err:
                if err.code not in (502, 503, 504) or time.monotonic() > deadline:
                    raise
            time.sleep(0.2)  # backoff before a retry, not synchronisation

    def log_tails(self) -> str:
        logs = STATE_DIR / "logs"
        parts = []
        for path in sorted(logs.glob("*.log")) if logs.is_dir() else []:
            lines = path.read_text(errors="replace").splitlines()[-15:]
            parts.append(f"==> {path.name} <==\n" + "\n".join(lines))
        return "\n".join(parts)


def release_binary():
    """cluster.sh runs $HERALD_BIN or target/release/herald; the page is compiled into it, so
    build it (quick when up to date) unless HERALD_BIN names one."""
    if os.environ.get("HERALD_BIN"):
        return
    subprocess.run(["cargo", "build", "-q", "--release", "-p", "herald-edge", "--bin", "herald"],
                   cwd=REPO, check=True)


def start_cluster(request):
    release_binary()
    # Logs of earlier runs that were brought down (no pid file left) are not kept.
    for old in STATE_ROOT.glob("run-*"):
        if not list(old.glob("pids/*.pid")):
            shutil.rmtree(old, ignore_errors=True)
    c = Cluster()
    request.addfinalizer(lambda: c.run("down", check=False))
    c.up()
    print(f"\ncluster up: {c.url} (state and logs in {STATE_DIR})")
    return c


