"""Starts what the Centrifugo SDK tests talk to: herald edges (real processes, the binary of this
checkout) on free loopback ports, alone on the embedded broker or three over one real
redis-server, plus a small TCP relay that lets a test cut a client's connection and send its
reconnect to another edge.

Environment: HERALD_BIN (default: `cargo build -p herald-edge --bin herald`, then
$CARGO_TARGET_DIR or target/debug/herald), REDIS_SERVER (default: redis-server on PATH).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import jwt
import pytest

REPO = Path(__file__).resolve().parent.parent
OUT = Path(__file__).resolve().parent / "out"
WAIT = 15.0  # seconds: generous for loaded CI machines
SECRET = "tests-centrifugo-hs256-secret-0123456789"

CONFIG = f"""
[auth]
hmac_secret = "{SECRET}"
leeway_secs = 2

[namespaces.chat]
subscribe = "user"
publish = "user"
presence = true
join_leave = true
history_size = 1000
history_ttl_secs = 600

[namespaces.vip]
subscribe = "token"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def token(user: str, expires_in: int = 3600, **claims) -> str:
    """An HS256 connection token (docs/SECURITY.md: `sub`, `exp`)."""
    return jwt.encode({"sub": user, "exp": int(time.time()) + expires_in, **claims}, SECRET, algorithm="HS256")


def wait_until(predicate, what: str, timeout: float = WAIT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def herald_binary() -> Path:
    if os.environ.get("HERALD_BIN"):
        return Path(os.environ["HERALD_BIN"])
    subprocess.run(["cargo", "build", "-q", "-p", "herald-edge", "--bin", "herald"], cwd=REPO, check=True)
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    return target / "debug" / "herald"


class Edge:
    """One herald process."""

    def __init__(self, binary: Path, node_id: str, config: Path, redis_url: str | None):
        self.node_id, self.port = node_id, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws = f"ws://127.0.0.1:{self.port}/connection/websocket"
        args = [str(binary), "--listen", f"127.0.0.1:{self.port}", "--metrics-listen", "127.0.0.1:0",
                "--node-id", node_id, "--shutdown-grace", "1", "--config", str(config)]
        if redis_url:
            args += ["--redis-url", redis_url]
        OUT.mkdir(exist_ok=True)
        with open(OUT / f"{node_id}.log", "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        wait_until(self.ready, f"{node_id} ready")

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.node_id} exited with {self.proc.returncode}; see {OUT}")
        try:
            with urllib.request.urlopen(self.url + "/readyz", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Redis:
    """A redis-server with no persistence: a restart comes back empty."""

    def __init__(self, workdir: Path):
        self.port, self.workdir = free_port(), workdir
        self.url = f"redis://127.0.0.1:{self.port}"
        self.start()

    def start(self):
        binary = os.environ.get("REDIS_SERVER") or shutil.which("redis-server") or "/usr/bin/redis-server"
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )
        wait_until(self.ping, "redis-server")

    def restart_empty(self):
        self.stop()
        self.start()

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture(scope="session")
def binary() -> Path:
    return herald_binary()


@pytest.fixture(scope="session")
def config_file():
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "herald.toml"
        path.write_text(CONFIG)
        yield path


@pytest.fixture(scope="session")
def single(binary, config_file):
    """One edge on the embedded broker."""
    edge = Edge(binary, "cf-single", config_file, None)
    yield [edge]
    edge.stop()


@pytest.fixture(scope="session")
def cluster(binary, config_file):
    """Three edges over one real redis-server."""
    with tempfile.TemporaryDirectory() as d:
        redis = Redis(Path(d))
        edges = []
        try:
            for i in range(3):
                edges.append(Edge(binary, f"cf-edge{i + 1}", config_file, redis.url))
            yield edges
        finally:
            for e in edges:
                e.stop()
            redis.stop()


@pytest.fixture
def own_cluster(binary, config_file):
    """One edge over its own redis-server, for a test that restarts Redis."""
    with tempfile.TemporaryDirectory() as d:
        redis = Redis(Path(d))
        edge = Edge(binary, "cf-own", config_file, redis.url)
        try:
            yield edge, redis
        finally:
            edge.stop()
            redis.stop()


@pytest.fixture(params=["single", "cluster"])
def edges(request):
    """Every test that takes `edges` runs against one edge and against the Redis cluster."""
    return request.getfixturevalue(request.param)


class Relay:
    """A TCP relay in front of the edges: `cut()` closes every relayed connection and holds new
    ones until `release(target)` names the edge they go to. The SDK has one address; this is
    how its reconnect lands on another edge (as nginx does when an edge dies)."""

    def __init__(self, target: Edge):
        self.target = target
        self.open = asyncio.Event()
        self.open.set()
        self.pipes: set[asyncio.StreamWriter] = set()
        self.server: asyncio.base_events.Server | None = None
        self.port = 0

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/connection/websocket"

    async def start(self):
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader, writer):
        await self.open.wait()
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target.port)
        except OSError:
            writer.close()
            return
        self.pipes.update((writer, up_writer))

        async def pump(src, dst):
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        self.pipes.discard(writer)
        self.pipes.discard(up_writer)

    def cut(self):
        self.open.clear()
        for w in list(self.pipes):
            w.transport.abort()
        self.pipes.clear()

    def release(self, target: Edge):
        self.target = target
        self.open.set()

    async def stop(self):
        self.cut()
        self.server.close()
        await self.server.wait_closed()


@pytest.fixture
async def relay(edges):
    r = Relay(edges[0])
    await r.start()
    yield r
    await r.stop()
