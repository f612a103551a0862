"""The browser demo in real headless Chromium against one edge.

Two browsers open the demo in the same room, one over WebSocket and one over SSE + POST, and
exchange messages both ways; then the second switches to long-poll and to short polling, and
must not miss what was sent while it switched; then the edge restarts (its in-process history
is gone) and both pages must reconnect on their own and say plainly that messages could not be
recovered. Screenshots land in tests-browser/out/.

Run: pip install -r tests-browser/requirements.txt && python -m pytest tests-browser -v
"""

from __future__ import annotations

import time
import uuid

import pytest

from herald_browser import OUT, DemoPage, Edge, assert_in_order_without_gaps, chromium, wait_until

NODE = "edge-browser-test"


@pytest.fixture(scope="module")
def edge():
    e = Edge.start(NODE)
    yield e
    e.stop()


@pytest.fixture
def room():
    return "test-" + uuid.uuid4().hex[:8]


@pytest.fixture
def pages(edge, room):
    opened: list[DemoPage] = []

    def open_page(transport: str, user: str) -> DemoPage:
        page = DemoPage.open(edge.url, transport, room, user)
        opened.append(page)
        return page

    yield open_page
    for page in opened:
        errors = page.console_errors()
        page.close()
        # Network errors while an edge is down are expected; script errors are not.
        assert not [e for e in errors if "Uncaught" in e or "TypeError" in e], errors


def exchange(a: DemoPage, b: DemoPage, tag: str):
    """a and b each send one message; both must receive both."""
    texts = [f"{tag} from {a.name}", f"{tag} from {b.name}"]
    a.send(texts[0])
    b.send(texts[1])
    a.wait_texts(texts)
    b.wait_texts(texts)
    return texts


def test_two_transports_chat_switch_and_resume(pages, room):
    alice = pages("ws", "alice")
    bob = pages("sse", "bob")
    channel = f"chat:{room}"
    for page in (alice, bob):
        s = page.state()
        assert s["node"] == NODE, s
        assert s["room"] == room
        assert page.text_of("node") == NODE
        # This edge has no key and no /dev/token endpoint (404): the page connects anonymously,
        # named by `?user=`.
        assert page.js("heraldDemo.token") is None
        assert page.text_of("identity") == "anonymous"

    exchange(alice, bob, "hello")

    # Presence: the WebSocket page asks with the presence op, the SSE page with GET /presence
    # (no API key on this edge). Each sees both names.
    for page in (alice, bob):
        wait_until(lambda p=page: {"alice", "bob"} <= set(p.text_of("presence").split()),
                   what=f"{page.name}'s presence list to show alice and bob")

    # Long-poll, then short poll: messages sent while bob switches are not lost, because the
    # page resumes from the last position it saw.
    for transport in ("longpoll", "poll"):
        bob.set_transport(transport)
        during = [f"during switch to {transport} #{i}" for i in range(3)]
        for text in during:
            alice.send(text)
        bob.wait_connected(transport)
        bob.wait_texts(during)
        exchange(alice, bob, f"over {transport}")

    # And back to SSE: the page makes its SSE cursor from the position it reached by polling.
    bob.set_transport("sse")
    alice.send("while bob returns to SSE")
    bob.wait_connected("sse")
    bob.wait_texts(["while bob returns to SSE"])
    exchange(alice, bob, "back on sse")

    # Alice leaves WebSocket for short polling: her first poll's cursor is made from the
    # {epoch, offset} she reached over WebSocket, so what bob sends meanwhile still arrives.
    alice.set_transport("poll")
    bob.send("while alice moves to polling")
    alice.wait_connected("poll")
    alice.wait_texts(["while alice moves to polling"])
    alice.set_transport("ws")
    alice.wait_connected("ws")
    exchange(alice, bob, "all back")

    for page in (alice, bob):
        got = page.received()
        assert all(m["channel"] == channel for m in got)
        assert_in_order_without_gaps(got)
        s = page.state()
        assert s["gaps"] == [] and s["pending"] == 0 and s["notices"] == [], s
        data = [m["data"] for m in got if m["data"]["user"] == page.name]
        # Every message the page sent carries {text, user, seq} with seq counting up.
        assert [d["seq"] for d in data] == sorted(d["seq"] for d in data)
        assert all(set(d) == {"text", "user", "seq"} for d in data), data

    # Both pages hold the whole conversation, in the same order.
    assert alice.texts() == bob.texts()
    shot = alice.screenshot("demo.png")
    bob.screenshot("demo-poll-page.png")
    print("screenshot:", shot)


def test_pages_reconnect_after_edge_restart_and_flag_lost_history(edge, pages):
    alice = pages("ws", "alice")
    bob = pages("sse", "bob")
    exchange(alice, bob, "before restart")

    # The in-process broker forgets everything on restart: the pages' positions are in an
    # epoch that no longer exists, so resuming must say recovered:false, visibly.
    edge.restart()
    for page in (alice, bob):
        page.wait_connected(timeout=30)
        wait_until(lambda p=page: p.state()["notices"], what=f"{page.name} to show a notice")
        assert not page.driver.find_element("id", "notice").get_attribute("hidden")
        assert "could not be recovered" in page.text_of("notice")

    exchange(alice, bob, "after restart")
    # Messages sent while the edge was down wait in the outbox and go out after the reconnect.
    edge.stop()
    alice.send("queued while down")
    wait_until(lambda: alice.state()["pending"] == 1, what="alice's message to wait in the outbox")
    edge.spawn()
    alice.wait_connected(timeout=30)
    bob.wait_connected(timeout=30)
    # Alice subscribes before she flushes her outbox, so her own copy proves it was published.
    # (Bob may re-subscribe after it went out: with the history wiped, the server resets him to
    # the current position, recovered:false, and he never sees it. That is the contract.)
    alice.wait_texts(["queued while down"], timeout=30)
    wait_until(lambda: alice.state()["pending"] == 0, what="alice's outbox to empty")
    exchange(alice, bob, "after second restart")
    alice.screenshot("demo-after-restart.png")


def test_status_page_shows_the_node_connections_and_rates(edge, pages):
    carol = pages("ws", "carol")
    dave = pages("longpoll", "dave")
    driver = chromium()
    try:
        driver.get(edge.url + "/status")

        def row():
            cells = driver.find_elements("css selector", f'#nodes tr[data-node="{NODE}"] td')
            return [c.text for c in cells] if cells else None

        # Columns: node, address, ws, sse, longpoll, poll, total, channels, delivered/s, ...
        cells = wait_until(lambda: (r := row()) and int(r[2]) >= 1 and int(r[4]) >= 1 and r,
                           what="the status page to list the node with WebSocket and long-poll clients")
        assert cells[0] == NODE
        assert driver.find_element("id", "answered-by").text == NODE
        # The page's own herald.js connection: a publish to itself comes back.
        wait_until(lambda: driver.find_element("id", "probe-rtt").text.endswith(" ms"),
                   what="the status page's herald.js round trip")
        assert driver.find_element("id", "probe-transport").text == "websocket"
        assert driver.find_element("id", "probe-node").text == NODE
        assert driver.find_element("id", "probe-state").text == "connected"

        # Some traffic for the rates and the chart: about 3 messages a second for 8 seconds.
        for i in range(24):
            carol.send(f"traffic #{i}")
            time.sleep(0.33)
        dave.wait_texts([f"traffic #{i}" for i in range(24)])

        def peak(name):
            return driver.execute_script(
                f"return Math.max(0, ...window.heraldStatus.series.map(p => p.{name} || 0))")
        wait_until(lambda: peak("published") > 1 and peak("delivered") > 2,
                   what="published and delivered rates on the status page")
        assert float(row()[9]) >= 0  # published/s column renders a number
        driver.save_screenshot(str(OUT / "status.png"))
    finally:
        driver.quit()


def test_with_an_api_key_presence_still_works_and_the_status_page_asks_for_the_key(room):
    keyed = Edge.start("edge-keyed", extra_args=["--api-key", "s3cret"])
    page = DemoPage.open(keyed.url, "sse", room, "erin")
    driver = chromium()
    try:
        # The page reads presence with its own identity (GET /presence), not the keyed /api.
        wait_until(lambda: "erin" in page.text_of("presence"), what="presence to show erin")
        # A poll has no welcome frame and /api/info is guarded, but every answer names its edge
        # in X-Herald-Node.
        page.set_transport("longpoll")
        page.wait_connected("longpoll")
        wait_until(lambda: page.state()["node"] == "edge-keyed", what="the poll page's edge from X-Herald-Node")
        page.send("still works")
        page.wait_texts(["still works"])

        driver.get(keyed.url + "/status")
        wait_until(lambda: driver.find_element("id", "state").text == "needs API key",
                   what="the status page to ask for the key")
        driver.find_element("id", "apikey").send_keys("s3cret")
        driver.find_element("css selector", "#key-form button").click()
        wait_until(lambda: driver.find_elements("css selector", '#nodes tr[data-node="edge-keyed"]'),
                   what="the node row once the key is given")
        assert driver.execute_script("return localStorage.getItem('herald.apikey')") == "s3cret"
    finally:
        driver.quit()
        page.close()
        keyed.stop()
