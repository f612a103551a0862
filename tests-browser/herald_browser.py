"""Helpers for driving the Herald browser demo in real headless Chromium.

Nothing here is tied to one edge: `DemoPage.open(base_url, ...)` works against a single edge
started by `Edge.start()`, or against nginx in front of a cluster (pass its URL).

Environment:
  HERALD_BIN          the herald binary to run (default: `cargo build -p herald-edge`, then
                      target/debug/herald)
  CHROMIUM, CHROMEDRIVER   browser and driver (default: /usr/bin/chromium, /usr/bin/chromedriver)
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlencode

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

REPO = Path(__file__).resolve().parent.parent
OUT = Path(__file__).resolve().parent / "out"
WAIT = 15.0  # seconds: generous for loaded CI machines


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def herald_binary() -> Path:
    """The herald binary: $HERALD_BIN, or a fresh debug build (cargo is quick when up to date)."""
    if os.environ.get("HERALD_BIN"):
        return Path(os.environ["HERALD_BIN"])
    subprocess.run(["cargo", "build", "-q", "-p", "herald-edge", "--bin", "herald"], cwd=REPO, check=True)
    return REPO / "target" / "debug" / "herald"


def wait_until(predicate, timeout: float = WAIT, every: float = 0.1, what: str = "condition"):
    """Calls `predicate` until it returns something truthy; returns that, or raises."""
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as err:  # a page mid-reload, a connection refused...
            last_error = err
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last_error})" if last_error else ""))


class Edge:
    """One herald process on loopback with the in-process broker."""

    def __init__(self, binary: Path, port: int, node_id: str, log_path: Path, extra_args: list[str]):
        self.binary, self.port, self.node_id = binary, port, node_id
        self.log_path, self.extra_args = log_path, extra_args
        self.proc: subprocess.Popen | None = None
        self.url = f"http://127.0.0.1:{port}"

    @classmethod
    def start(cls, node_id: str = "edge-test", port: int | None = None, extra_args: list[str] | None = None) -> "Edge":
        OUT.mkdir(exist_ok=True)
        edge = cls(herald_binary(), port or free_port(), node_id, OUT / f"{node_id}.log", extra_args or [])
        edge.spawn()
        return edge

    def spawn(self):
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [str(self.binary), "--listen", f"127.0.0.1:{self.port}", "--metrics-listen", "127.0.0.1:0",
             "--node-id", self.node_id, "--shutdown-grace", "1", *self.extra_args],
            stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        wait_until(self.ready, what=f"{self.node_id} ready on {self.url}")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/readyz", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGTERM):
        """Stops the process (SIGTERM: a graceful drain; SIGKILL: a crash)."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self):
        self.stop()
        self.spawn()


def chromium(window: str = "1200,800") -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={window}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
    return webdriver.Chrome(options=options, service=service)


class DemoPage:
    """The demo page (`/`) in its own browser, seen through `window.heraldDemo`."""

    def __init__(self, driver: webdriver.Chrome, name: str):
        self.driver, self.name = driver, name

    @classmethod
    def open(cls, base_url: str, transport: str, room: str, user: str) -> "DemoPage":
        driver = chromium()
        page = cls(driver, user)
        query = urlencode({"transport": transport, "room": room, "user": user})
        driver.get(f"{base_url.rstrip('/')}/?{query}")
        page.wait_connected(transport)
        return page

    def js(self, expression: str, *args):
        return self.driver.execute_script(f"return {expression};", *args)

    def state(self) -> dict:
        return self.js(
            "({transport: heraldDemo.transport, node: heraldDemo.node, connected: heraldDemo.connected,"
            " room: heraldDemo.room, pending: heraldDemo.pending, gaps: heraldDemo.gaps,"
            " notices: heraldDemo.notices.map(n => n.text)})"
        )

    def wait_connected(self, transport: str | None = None, timeout: float = WAIT):
        def ok():
            s = self.js("window.heraldDemo && {t: heraldDemo.transport, c: heraldDemo.connected}")
            return s and s["c"] and (transport is None or s["t"] == transport)
        wait_until(ok, timeout, what=f"{self.name} connected over {transport}")

    def send(self, text: str):
        self.driver.execute_script("window.heraldDemo.send(arguments[0]);", text)

    def set_transport(self, transport: str):
        self.driver.execute_script("window.heraldDemo.setTransport(arguments[0]);", transport)

    def join(self, room: str):
        self.driver.execute_script("window.heraldDemo.join(arguments[0]);", room)

    def received(self) -> list[dict]:
        return self.js("heraldDemo.received.map(m => ({channel: m.channel, epoch: m.epoch, offset: m.offset, data: m.data}))")

    def texts(self) -> list[str]:
        return [m["data"].get("text") for m in self.received() if isinstance(m["data"], dict)]

    def wait_texts(self, texts: list[str], timeout: float = WAIT):
        wait_until(lambda: set(texts) <= set(self.texts()), timeout,
                   what=f"{self.name} to receive {texts} (has {self.texts()})")

    def text_of(self, element_id: str) -> str:
        return self.driver.find_element("id", element_id).text

    def console_errors(self) -> list[str]:
        return [e["message"] for e in self.driver.get_log("browser") if e["level"] == "SEVERE"]

    def screenshot(self, name: str) -> Path:
        OUT.mkdir(exist_ok=True)
        path = OUT / name
        self.driver.save_screenshot(str(path))
        return path

    def close(self):
        self.driver.quit()


def assert_in_order_without_gaps(received: list[dict]):
    """Within each channel and epoch, offsets grow by exactly one: nothing lost, nothing twice."""
    last: dict[tuple[str, str], int] = {}
    for m in received:
        key = (m["channel"], m["epoch"])
        if key in last:
            assert m["offset"] == last[key] + 1, f"offset {m['offset']} after {last[key]} in {key}: {json.dumps(received)}"
        last[key] = m["offset"]
