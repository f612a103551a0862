"""herald.js, the browser client, in real headless Chromium against the native three-edge cluster.

The pages load herald.js from the cluster as an application would (`import "/herald.js"`) and drive
it through tests-browser/herald_harness.js. Between Chromium and the cluster's nginx sits a second
nginx of this test's own, playing the proxies a user's network may have:

  /direct/      passes everything (the WebSocket upgrade included) to the cluster
  /noupgrade/   does not pass the upgrade: a WebSocket cannot open, SSE and polls work
  /buffered/    no upgrade, and an event stream never answers (as behind a buffering proxy);
                polls work

Covered: the pure parts (backoff, offset tracking, cursors) as unit tests inside the browser;
WebSocket → SSE → long-poll fallback with receiving and publishing on each; the page's edge
SIGKILLed and SIGTERMed while messages flow, on every transport, with every message once, in
order; the browser offline for 10 s (Chromium's network emulation); short-lived tokens renewed
through the token function; a terminal close code without a reconnect loop.

Run: python3 -m pytest -q tests-browser/test_herald_js.py
"""

from __future__ import annotations

import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.support.ui import WebDriverWait

from herald_browser import OUT, Edge, chromium, free_port, wait_until
from herald_cluster import STATE_DIR, WAIT, Cluster

HERE = Path(__file__).resolve().parent
HARNESS = (HERE / "herald_harness.js").read_text()
UNIT = (HERE / "herald_unit.js").read_text()

# Counts WebSocket constructions, installed before any page script runs.
COUNT_WEBSOCKETS = """
(() => {
  const Native = window.WebSocket;
  window.__ws = 0;
  window.WebSocket = class extends Native {
    constructor(...args) { super(...args); window.__ws += 1; }
  };
})();
"""

NGINX_CONF = """
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/tmp;
    proxy_temp_path {dir}/tmp;
    map $http_upgrade $connection_upgrade {{ default upgrade; '' ''; }}
    server {{
        listen 127.0.0.1:{port};
        proxy_http_version 1.1;
        proxy_read_timeout 120s;
        location = /blank.html {{
            default_type text/html;
            return 200 "<!doctype html><meta charset=utf-8><title>herald.js test</title>";
        }}
        location /direct/ {{
            proxy_pass http://{upstream}/;
            proxy_set_header Host $http_host;  # (set per location: nginx inherits none of a level's headers once it sets one)
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_buffering off;
        }}
        # A proxy that does not speak WebSocket: the upgrade headers are dropped.
        location /noupgrade/ {{
            proxy_pass http://{upstream}/;
            proxy_set_header Host $http_host;  # (set per location: nginx inherits none of a level's headers once it sets one)
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
        # ...and one that also holds event streams without answering, as a proxy that buffers
        # whole responses does (nginx itself passes data on as it comes, so a listening socket
        # that never answers stands in for the upstream of /sse).
        location /buffered/ {{
            proxy_pass http://{upstream}/;
            proxy_set_header Host $http_host;
            proxy_set_header Connection "";
        }}
        location = /buffered/sse {{
            proxy_pass http://127.0.0.1:{blackhole};
        }}
    }}
}}
"""


class Proxy:
    def __init__(self, upstream: str):
        self.dir = STATE_DIR / "test-proxy"
        (self.dir / "tmp").mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        # Accepts connections (the kernel does, up to the backlog) and never reads or answers.
        self.blackhole = socket.socket()
        self.blackhole.bind(("127.0.0.1", 0))
        self.blackhole.listen(64)
        conf = self.dir / "nginx.conf"
        conf.write_text(NGINX_CONF.format(dir=self.dir, port=self.port, upstream=upstream,
                                          blackhole=self.blackhole.getsockname()[1]))
        self.proc = subprocess.Popen(["nginx", "-p", str(self.dir), "-c", str(conf), "-e", str(self.dir / "error.log")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"
        import urllib.request

        def up():
            with urllib.request.urlopen(self.url + "/blank.html", timeout=2) as r:
                return r.status == 200
        wait_until(up, what="the test proxy")

    def stop(self):
        self.blackhole.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="module")
def proxy(cluster: Cluster):
    p = Proxy(cluster.url.removeprefix("http://"))
    yield p
    p.stop()


class Page:
    def __init__(self, driver, name: str):
        self.driver, self.name = driver, name

    def js(self, expression: str, *args):
        return self.driver.execute_script(f"return {expression};", *args)

    def call(self, expression: str, *args, timeout: float = WAIT):
        """Awaits a promise-valued expression in the page."""
        self.driver.set_script_timeout(timeout)
        return self.driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            f"Promise.resolve().then(() => {expression}).then((v) => done({{ok: v === undefined ? null : v}}),"
            " (e) => done({err: String(e && e.stack || e)}));", *args)

    def wait(self, expression: str, what: str, *args, timeout: float = WAIT):
        try:
            return WebDriverWait(self.driver, timeout, poll_frequency=0.1).until(
                lambda d: d.execute_script(f"return {expression};", *args))
        except TimeoutException:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; {self.name}: "
                                 f"{self.js('H.state()')} errors={self.js('H.rec.errors.slice(-5)')}")

    def rec(self) -> dict:
        return self.js("H.rec")


@pytest.fixture
def open_page(proxy):
    opened: list[Page] = []

    def open_(name: str = "page") -> Page:
        driver = chromium()
        driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": COUNT_WEBSOCKETS})
        driver.get(proxy.url + "/blank.html")
        driver.execute_script(HARNESS)
        page = Page(driver, name)
        opened.append(page)
        return page

    yield open_
    for page in opened:
        try:
            errors = [e["message"] for e in page.driver.get_log("browser") if e["level"] == "SEVERE"]
            assert not [e for e in errors if "Uncaught" in e or "TypeError" in e], errors
        finally:
            page.driver.quit()


@pytest.fixture
def channel():
    return "chat:js-" + uuid.uuid4().hex[:8]


def start(page: Page, base: str, channel: str, user: str, transports=None, **extra) -> dict:
    args = {"base": base, "user": user, "channels": [channel], **extra}
    if transports:
        args["transports"] = transports
    got = page.call("H.start(arguments[0])", args)
    assert "ok" in got, got
    return got["ok"]


def check_stream(page: Page, channel: str, expected: list[str]):
    """Every expected text once, offsets contiguous in one epoch, and no reset."""
    rec = page.rec()
    got = [m for m in rec["messages"] if m["channel"] == channel]
    texts = [m["data"]["text"] for m in got]
    dupes = sorted({t for t in texts if texts.count(t) > 1})
    assert not dupes, f"{page.name} received these twice: {dupes}"
    missing = [t for t in expected if t not in texts]
    assert not missing, f"{page.name} is missing {missing}"
    assert len({m["epoch"] for m in got}) == 1, got
    offsets = [m["offset"] for m in got]
    assert offsets == list(range(offsets[0], offsets[0] + len(offsets))), offsets
    assert rec["resets"] == [], rec["resets"]


# ------------------------------------------------------------------------------------- tests

def test_pure_parts_pass_their_unit_tests_in_the_browser(open_page):
    page = open_page("unit")
    page.driver.execute_script(UNIT + "\nwindow.heraldUnitTests = heraldUnitTests;")
    result = page.call("heraldUnitTests('/direct')")
    assert "ok" in result, result
    assert result["ok"]["failures"] == [], result["ok"]["failures"]
    assert result["ok"]["checks"] >= 41, result["ok"]


@pytest.mark.parametrize("base,transport", [("/direct", "websocket"), ("/noupgrade", "sse"), ("/buffered", "poll")])
def test_falls_back_until_a_transport_works_and_then_receives_and_publishes(cluster, open_page, channel, base, transport):
    page = open_page(transport)
    info = start(page, base, channel, "alice")
    assert info["transport"] == transport, info
    assert info["state"] == "connected"
    rec = page.rec()
    assert rec["transports"] == ["websocket", "sse", "poll"][: ["websocket", "sse", "poll"].index(transport) + 1], rec
    if transport != "poll":
        assert info["user"] == "alice", info  # the welcome (WebSocket, SSE) names the token's user
    # From the page, with the acks' positions; from the server side, through the cluster.
    for i in range(3):
        page.call("H.send(arguments[0], arguments[1])", channel, f"page {i}")
    reply = cluster.publish(channel, {"text": "api 0"})
    page.wait("H.texts(arguments[0]).length >= 4", "4 messages", channel)
    check_stream(page, channel, ["page 0", "page 1", "page 2", "api 0"])
    acks = page.rec()["acks"]
    assert [a["offset"] for a in acks] == sorted(a["offset"] for a in acks) and len(acks) == 3, acks
    assert reply["offset"] == acks[-1]["offset"] + 1
    # Messages carry the publisher the server proved (the token's user).
    assert {m["user"] for m in page.rec()["messages"] if m["data"]["text"].startswith("page")} == {"alice"}
    # Presence and history with the page's own token, over whatever transport it has.
    presence = page.call("H.herald.presence(arguments[0])", channel)["ok"]
    if transport == "poll":
        assert presence == [], presence  # a poller holds no connection between polls
    else:
        assert [c["user"] for c in presence] == ["alice"], presence
    history = page.call("H.herald.history(arguments[0], {limit: 10})", channel)["ok"]
    assert [m["data"]["text"] for m in history["messages"]][-4:] == ["page 0", "page 1", "page 2", "api 0"], history
    since = page.call("H.herald.history(arguments[0], {since: {epoch: arguments[1], offset: arguments[2]}})",
                      channel, acks[0]["epoch"], acks[0]["offset"])["ok"]
    assert [m["data"]["text"] for m in since["messages"]] == ["page 1", "page 2", "api 0"], since
    # skipSelf: acknowledged, published, but not delivered back to this page.
    page.call("H.send(arguments[0], 'quiet', {skipSelf: true})", channel)
    cluster.publish(channel, {"text": "after quiet"})
    page.wait("H.texts(arguments[0]).includes('after quiet')", "the message after the quiet one", channel)
    assert "quiet" not in page.js("H.texts(arguments[0])", channel)
    assert page.rec()["acks"][-1]["text"] == "quiet"
    assert page.js("H.subs[arguments[0]].position.offset", channel) == reply["offset"] + 2
    assert page.rec()["rejects"] == []


def test_a_quiet_retry_of_the_better_transport_falls_back_again_without_loss(cluster, open_page, channel):
    # Behind the proxy that drops upgrades: SSE, and every 1.5 s a try of WebSocket again.
    page = open_page("retry")
    start(page, "/noupgrade", channel, "frank", options={"retryBetterTransportAfter": 1500})
    assert page.js("H.herald.transport") == "sse"
    expected = []
    for i in range(12):
        cluster.publish(channel, {"text": f"r{i}"})
        expected.append(f"r{i}")
        time.sleep(0.25)  # paces the messages across a few retries
    page.wait("H.rec.transports.filter(t => t === 'websocket').length >= 3", "three tries of WebSocket")
    page.wait("H.herald.state === 'connected' && H.herald.transport === 'sse'", "SSE again")
    page.wait("(t => t.every(x => H.texts(arguments[1]).includes(x)))(arguments[0])", "every message",
              expected, channel)
    check_stream(page, channel, expected)


@pytest.mark.parametrize("transport", ["websocket", "sse", "poll"])
def test_channels_come_and_go_on_one_connection_and_a_resubscribe_resumes(cluster, open_page, channel, transport):
    a, b = channel + "-a", channel + "-b"
    page = open_page(f"{transport}-channels")
    start(page, "/direct", a, "hana", transports=[transport])
    page.call("H.subscribe(arguments[0])", b)
    for ch in (a, b):
        cluster.publish(ch, {"text": f"one {ch}"})
    page.wait("H.texts(arguments[0]).length === 1 && H.texts(arguments[1]).length === 1", "one message on each", a, b)
    position = page.js("H.subs[arguments[0]].position", a)
    page.driver.execute_script("H.subs[arguments[0]].unsubscribe()", a)
    for ch in (a, b):
        cluster.publish(ch, {"text": f"two {ch}"})
    page.wait("H.texts(arguments[0]).length === 2", "the second message on b", b)
    assert page.js("H.texts(arguments[0])", a) == [f"one {a}"]  # a is no longer delivered
    # Subscribing again from the position it had: the message it missed comes first, once.
    page.driver.execute_script(
        "H.herald.subscribe(arguments[0], {since: arguments[1], onMessage: (m) => H.rec.messages.push("
        "{channel: arguments[0], epoch: m.epoch, offset: m.offset, data: m.data}), onReset: (r) => H.rec.resets.push(r)})",
        a, position)
    cluster.publish(a, {"text": f"three {a}"})
    page.wait("H.texts(arguments[0]).length === 3", "the missed and the new message on a", a)
    assert page.js("H.texts(arguments[0])", a) == [f"one {a}", f"two {a}", f"three {a}"]
    check_stream(page, a, [f"one {a}", f"two {a}", f"three {a}"])
    check_stream(page, b, [f"one {b}", f"two {b}"])


@pytest.mark.parametrize("transport", ["websocket", "sse", "poll"])
def test_a_page_on_another_origin_uses_the_edge_with_cors(proxy, open_page, transport, tmp_path):
    # An edge that lists the test proxy's origin (the page's) in allowed_origins; the page loads
    # herald.js from the edge's origin and uses it there.
    config = tmp_path / "cors.toml"
    config.write_text(f'[limits]\nallowed_origins = ["{proxy.url}"]\n')
    edge = Edge.start(f"edge-cors-{transport}", extra_args=["--config", str(config)])
    try:
        page = open_page(f"cors-{transport}")
        channel = "cors-" + uuid.uuid4().hex[:8]
        got = page.call("H.start(arguments[0])", {"url": edge.url, "anonymous": True, "user": "gina",
                                                  "channels": [channel], "transports": [transport]})
        assert "ok" in got, got
        assert got["ok"]["transport"] == transport
        for i in range(3):
            page.call("H.send(arguments[0], arguments[1])", channel, f"x{i}")
        page.call("H.send(arguments[0], 'quiet', {skipSelf: true})", channel)
        page.call("H.send(arguments[0], 'after')", channel)
        page.wait("H.texts(arguments[0]).includes('after')", "the messages", channel)
        assert page.js("H.texts(arguments[0])", channel) == ["x0", "x1", "x2", "after"]
        history = page.call("H.herald.history(arguments[0], {limit: 10})", channel)["ok"]
        assert [m["data"]["text"] for m in history["messages"]] == ["x0", "x1", "x2", "quiet", "after"]
        presence = page.call("H.herald.presence(arguments[0])", channel)["ok"]
        assert isinstance(presence, list)
        assert page.rec()["rejects"] == []
    finally:
        edge.stop()


@pytest.mark.parametrize("command", ["kill", "stop"])
@pytest.mark.parametrize("transport", ["websocket", "sse", "poll"])
def test_edge_killed_or_drained_while_messages_flow_loses_nothing(cluster, open_page, channel, transport, command):
    page = open_page(f"{transport}-{command}")
    start(page, "/direct", channel, "bob", transports=[transport])
    expected = []
    for i in range(3):
        page.call("H.send(arguments[0], arguments[1])", channel, f"before {i}")
        expected.append(f"before {i}")
    page.wait("H.texts(arguments[0]).length >= 3", "the first messages", channel)
    victim = page.js("H.herald.node")
    assert victim in cluster.edges, victim
    proc = cluster.background(command, victim)
    i = 0
    while proc.poll() is None or i < 6:  # paces the messages while the edge goes away
        page.driver.execute_script("H.send(arguments[0], arguments[1])", channel, f"during {i}")
        expected.append(f"during {i}")
        cluster.publish(channel, {"text": f"api {i}"})
        expected.append(f"api {i}")
        i += 1
        time.sleep(0.2)
        assert i < 200
    out, _ = proc.communicate(timeout=WAIT)
    assert proc.returncode == 0, out
    page.wait("H.herald.state === 'connected' && H.herald.node && H.herald.node !== arguments[0]",
              "a reconnect to another edge", victim)
    for j in range(3):
        page.driver.execute_script("H.send(arguments[0], arguments[1])", channel, f"after {j}")
        expected.append(f"after {j}")
    page.wait("H.rec.acks.length + H.rec.rejects.length === arguments[0]", "every publish settled",
              sum(1 for t in expected if not t.startswith("api")))
    rec = page.rec()
    assert rec["rejects"] == [], rec["rejects"]
    page.wait("(t => t.every(x => H.texts(arguments[1]).includes(x)))(arguments[0])", "every message",
              expected, channel)
    check_stream(page, channel, expected)
    cluster.run("up")


@pytest.mark.parametrize("transport", ["websocket", "sse", "poll"])
def test_ten_seconds_offline_resumes_with_nothing_lost(cluster, open_page, channel, transport):
    page = open_page(f"{transport}-offline")
    start(page, "/direct", channel, "carol", transports=[transport])
    page.call("H.send(arguments[0], 'before')", channel)
    page.wait("H.texts(arguments[0]).includes('before')", "the first message", channel)
    page.driver.execute_cdp_cmd("Network.enable", {})
    offline = {"offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1}
    page.driver.execute_cdp_cmd("Network.emulateNetworkConditions", offline)
    went_offline = time.monotonic()
    # Chromium's emulation fails new requests but leaves open sockets be; the browser's
    # `offline` event is what tells herald.js, which drops its connection.
    page.wait("H.herald.state !== 'connected'", "the client to notice the browser is offline")
    expected = ["before"]
    for i in range(5):
        cluster.publish(channel, {"text": f"while offline {i}"})
        expected.append(f"while offline {i}")
    page.driver.execute_script("H.send(arguments[0], 'sent offline')", channel)
    expected.append("sent offline")
    time.sleep(max(0.0, 10 - (time.monotonic() - went_offline)))  # the outage itself: 10 s
    # The outage was real: the page's publish is still waiting and nothing published since
    # the network went away has arrived.
    assert len(page.rec()["acks"]) == 1, page.rec()["acks"]
    assert "while offline 0" not in page.js("H.texts(arguments[0])", channel)
    page.driver.execute_cdp_cmd("Network.emulateNetworkConditions", {**offline, "offline": False})
    page.wait("(t => t.every(x => H.texts(arguments[1]).includes(x)))(arguments[0])", "every message",
              expected, channel, timeout=WAIT)
    page.wait("H.rec.acks.length === 2", "the offline publish acknowledged")
    check_stream(page, channel, expected)
    assert page.rec()["rejects"] == []
    print(f"{transport}: states {page.rec()['states']}")


@pytest.mark.parametrize("transport", ["websocket", "sse", "poll"])
def test_short_lived_tokens_are_renewed_through_the_token_function(cluster, open_page, channel, transport):
    page = open_page(f"{transport}-token")
    start(page, "/direct", channel, "dave", transports=[transport], ttl=4)
    expected = []
    started = time.monotonic()
    i = 0
    while time.monotonic() - started < 10:  # 2.5 token lifetimes of traffic
        page.driver.execute_script("H.send(arguments[0], arguments[1])", channel, f"t{i}")
        expected.append(f"t{i}")
        i += 1
        time.sleep(0.25)
    page.wait("H.rec.acks.length + H.rec.rejects.length === arguments[0]", "every publish settled", len(expected))
    page.wait("(t => t.every(x => H.texts(arguments[1]).includes(x)))(arguments[0])", "every message",
              expected, channel)
    rec = page.rec()
    assert rec["rejects"] == [], rec["rejects"]
    assert rec["tokenCalls"] >= 3, rec["tokenCalls"]
    assert "closed" not in rec["states"], rec["states"]
    check_stream(page, channel, expected)


def test_terminal_close_code_stops_without_a_reconnect_loop(open_page, channel):
    page = open_page("terminal")
    got = page.call("H.start(arguments[0]).then(() => 'started', (e) => 'refused: ' + e.message)",
                    {"base": "/direct", "user": "eve", "channels": [channel], "badToken": True,
                     "transports": ["websocket"]})
    assert "ok" in got, got
    page.wait("H.herald && H.herald.state === 'closed'", "the client to give up")
    rec = page.rec()
    # One fresh token after the first 4501 (the server's key may have changed), then stop.
    assert rec["tokenCalls"] == 2, rec
    assert page.js("window.__ws") == 2
    assert rec["ready"][channel] == {"error": 4501}, rec["ready"]
    publish = page.call("H.herald.publish(arguments[0], {text: 'x'}).then(() => 'sent', (e) => e.reason)", channel)
    assert publish == {"ok": "closed"}, publish
    # Nothing more happens: no timer is left to try again (3 s > several backoff steps).
    time.sleep(3)
    assert page.js("window.__ws") == 2
    assert page.rec()["tokenCalls"] == 2
    OUT.mkdir(exist_ok=True)
