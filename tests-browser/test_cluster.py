"""The browser demo in real headless Chromium, through nginx, on the native three-edge cluster.

`deploy/cluster.sh up` starts redis, edge1..edge3 (target/release/herald), nginx and Prometheus as
plain processes on free loopback ports, in a state directory of its own (.run/browser-cluster/
run-PID, where the logs stay); the module's finalizer always brings it down. Three browsers open the demo through nginx's URL in the
same room: one over WebSocket (page A), one over SSE + POST (B), one over long-poll (C). They
exchange messages; then the edge page A is on is killed (SIGKILL, and in a second test drained with
SIGTERM) while B and the HTTP API (`POST /publish` through nginx) keep publishing.
The cluster runs with identity on (cluster.sh's default HERALD_CLUSTER_AUTH=dev: an HMAC secret
and deploy/herald.toml with the development token endpoint): every page gets its connection token
from `/dev/token` through nginx and must be welcomed as the user it asked the token for. Page A still
holds the `herald_node` cookie naming the dead edge, so nginx must fail over to a backup; the page
must reconnect to another edge, resume from its cursor (history lives in Redis, so with
`recovered: true`), and end with every message, in order, with no gap, no duplicate and no
"could not be recovered" notice. Screenshots: tests-browser/out/cluster.png (SIGKILL) and
cluster-drain.png (SIGTERM).

Run: python3 -m pytest -q tests-browser/test_cluster.py
Environment: HERALD_BIN (default: `cargo build --release -p herald-edge`, then
target/release/herald), CHROMIUM, CHROMEDRIVER.
"""

from __future__ import annotations

import re
import time
import uuid
from urllib.parse import urlencode

import pytest
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.support.ui import WebDriverWait

from herald_browser import DemoPage, assert_in_order_without_gaps, chromium, wait_until
from herald_cluster import WAIT, Cluster

# Recorded in every page before app.js runs: the close code of each WebSocket, so a test can tell
# a crash (1006, the connection just vanished) from a drain (1012, service restart).
RECORD_WS_CLOSES = """
(() => {
  const Native = window.WebSocket;
  window.__wsCloses = [];
  window.WebSocket = class extends Native {
    constructor(...args) {
      super(...args);
      this.addEventListener('close', (e) => window.__wsCloses.push({code: e.code, reason: e.reason}));
    }
  };
})();
"""


@pytest.fixture
def room():
    return "cluster-" + uuid.uuid4().hex[:8]


@pytest.fixture
def pages(cluster, room):
    opened: list[DemoPage] = []

    def open_page(transport: str, user: str) -> DemoPage:
        driver = chromium()
        opened.append(DemoPage(driver, user))
        driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": RECORD_WS_CLOSES})
        driver.get(f"{cluster.url}/?{urlencode({'transport': transport, 'room': room, 'user': user})}")
        page = opened[-1]
        wait_js(page, "window.heraldDemo && heraldDemo.connected && heraldDemo.transport === arguments[0]"
                      " && heraldDemo.node", f"{user} connected over {transport} with a known edge",
                transport)
        return page

    yield open_page
    try:
        for page in opened:
            errors = page.console_errors()
            # Network errors while an edge is down are expected; script errors are not.
            assert not [e for e in errors if "Uncaught" in e or "TypeError" in e], errors
    finally:
        for page in opened:
            page.close()
        # Bring back whatever a test stopped, so the next test has three edges again.
        cluster.run("up")


# ------------------------------------------------------------------------------------- helpers

def wait_js(page: DemoPage, expression: str, what: str, *args, timeout: float = WAIT):
    """Waits until the JS expression is truthy in the page; returns its value."""
    try:
        return WebDriverWait(page.driver, timeout, poll_frequency=0.1).until(
            lambda d: d.execute_script(f"return {expression};", *args))
    except TimeoutException:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; {page.name}: {page.state()}")


def wait_texts(page: DemoPage, texts: list[str], timeout: float = WAIT):
    wait_js(page, "(t => t.every(x => heraldDemo.received.some(m => m.data && m.data.text === x)))(arguments[0])",
            f"{page.name} to receive {len(texts)} messages", texts, timeout=timeout)


def node_cookie(page: DemoPage) -> str | None:
    cookie = page.driver.get_cookie("herald_node")  # HttpOnly: visible to WebDriver, not to JS
    return cookie and cookie["value"]


def ws_closes(page: DemoPage) -> list[dict]:
    return page.js("window.__wsCloses")


def check_page(page: DemoPage, expected: list[str], channel: str):
    """Everything expected, once each, in offset order with no gap, and no loss notice."""
    got = page.received()
    assert got and all(m["channel"] == channel for m in got)
    assert len({m["epoch"] for m in got}) == 1, f"{page.name}: history epoch changed: {got}"
    assert_in_order_without_gaps(got)
    texts = page.texts()
    dupes = sorted({t for t in texts if texts.count(t) > 1})
    assert not dupes, f"{page.name} received these twice: {dupes}"
    missing = [t for t in expected if t not in texts]
    assert not missing, f"{page.name} is missing {missing}"
    s = page.state()
    assert s["gaps"] == [] and s["pending"] == 0, s
    assert not [n for n in s["notices"] if "could not be recovered" in n], s["notices"]
    assert s["notices"] == [], s["notices"]


def failover_while_publishing(cluster: Cluster, pages, room: str, command: str, shot: str):
    """Pages A (ws), B (sse), C (longpoll); `cluster.sh <command>` A's edge while B and the API
    publish; A must come back on another edge with nothing lost."""
    channel = f"chat:{room}"
    a = pages("ws", "alice")
    b = pages("sse", "bob")
    c = pages("longpoll", "carol")
    expected: list[str] = []

    def send(page: DemoPage, text: str):
        page.send(text)
        expected.append(text)

    # Identity: each page got a token for its name from /dev/token (through nginx) and the edge
    # that welcomed it (WebSocket and SSE; a poll has no welcome) names that same user.
    for page in (a, b, c):
        auth = page.js("{token: heraldDemo.token, tokenUser: heraldDemo.tokenUser, welcomeUser: heraldDemo.welcomeUser}")
        assert auth["token"] and auth["tokenUser"] == page.name, auth
    for page in (a, b):
        assert page.js("heraldDemo.welcomeUser") == page.name, page.js("heraldDemo.welcomeUser")

    for page in (a, b, c):
        send(page, f"hello from {page.name}")
    for page in (a, b, c):
        wait_texts(page, expected)

    victim = a.state()["node"]
    placement = {p.name: p.state()["node"] for p in (a, b, c)}
    print(f"\n{command} {victim}; pages on {placement}")
    assert victim in cluster.edges
    # The browser names the victim in its cookie: nginx routes it there first and must fail over.
    assert node_cookie(a) == victim
    survivors = [e for e in cluster.edges if e != victim]
    before = cluster.recoveries(survivors)
    closes_before = len(ws_closes(a))

    started = time.monotonic()
    proc = cluster.background(command, victim)
    # B keeps talking while the edge goes away (a drain takes up to the 3 s grace) and until A is
    # back; the pause only paces the messages, the waits below are on the pages' state.
    i = 0
    while proc.poll() is None or i < 5:
        send(b, f"bob during {command} #{i}")
        i += 1
        time.sleep(0.25)
        if i > 200:
            break
    out, _ = proc.communicate(timeout=WAIT)
    assert proc.returncode == 0, out
    print(out.strip())

    # The HTTP API through nginx, no cookie: least_conn over the edges, the dead one skipped.
    for j in range(3):
        text = f"api after {command} #{j}"
        reply = cluster.publish(channel, {"text": text, "user": "api", "seq": j})
        assert reply["node"] != victim, reply
        expected.append(text)

    # A sees its WebSocket close, reconnects through nginx to another edge and resumes.
    close = wait_js(a, "window.__wsCloses.length > arguments[0] && window.__wsCloses[arguments[0]]",
                    f"{a.name}'s WebSocket to close", closes_before)
    wait_js(a, "heraldDemo.connected && heraldDemo.node && heraldDemo.node !== arguments[0] && heraldDemo.node",
            f"{a.name} to reconnect to an edge other than {victim}", victim)
    reconnected_in = time.monotonic() - started
    new_node = a.state()["node"]
    assert new_node in survivors
    # The edge that took A over set the cookie to itself (on the WebSocket handshake).
    WebDriverWait(a.driver, WAIT).until(lambda d: node_cookie(a) == new_node)

    for j in range(3):
        send(b, f"bob after {command} #{j}")
        send(a, f"alice after {command} #{j}")
    send(c, f"carol after {command}")
    for page in (a, b, c):
        wait_texts(page, expected)
        wait_js(page, "heraldDemo.pending === 0", f"{page.name}'s outbox to empty")
    for page in (a, b, c):
        check_page(page, expected, channel)
    # Same channel, same epoch, one order: every page holds the same conversation.
    assert a.texts() == b.texts() == c.texts()

    after = cluster.recoveries(survivors)
    assert after["recovered"] > before["recovered"], (before, after)
    assert after["not_recovered"] == before["not_recovered"], (before, after)
    shot_path = a.screenshot(shot)

    # nginx's own account of the failover: the reconnect named the victim in its cookie and was
    # answered (101) by another edge. nginx logs a WebSocket when it ends, so A closes it (by
    # moving to short polling: leaving the page may keep it open in the back-forward cache).
    # The page's WebSocket URL carries its token (`?token=`, no `?user=`): that names A's sockets.
    token = a.js("heraldDemo.token")
    a.set_transport("poll")
    dead = cluster.edge_address(victim)

    def failover_logged():
        for line in cluster.access_log().splitlines():
            m = re.search(r'"GET /ws\?token=' + re.escape(token) + r' [^"]*" 101 .* cookie=(\S*) upstream=(.*) ustatus=(.*)$', line)
            if m and m[1] == victim and m[2].split(", ")[-1] != dead and m[3].split(", ")[-1] == "101":
                return line
    print("nginx:", wait_until(failover_logged, WAIT, what="nginx to log the WebSocket failover"))
    print(f"{a.name}: {victim} -> {new_node} (close {close['code']}) in {reconnected_in:.1f}s; "
          f"{len(expected)} messages; screenshot {shot_path}")
    return victim, close


# ------------------------------------------------------------------------------------- tests

def test_sigkill_edge_page_fails_over_through_nginx_and_loses_nothing(cluster, pages, room):
    victim, close = failover_while_publishing(cluster, pages, room, "kill", "cluster.png")
    assert close["code"] == 1006, close  # no close frame: the edge just vanished


def test_sigterm_drain_page_moves_with_1012_and_loses_nothing(cluster, pages, room):
    victim, close = failover_while_publishing(cluster, pages, room, "stop", "cluster-drain.png")
    assert close["code"] == 1012, close  # service restart: the drain said goodbye
