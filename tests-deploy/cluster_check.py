#!/usr/bin/env python3
"""End-to-end checks of a running Herald cluster, through nginx only.

Used by deploy/compose-test.sh (the docker-compose cluster) and tests-deploy/native-test.sh
(deploy/cluster.sh). It talks to nginx's public port like a browser would, keeping a cookie jar
per client, and checks:

  * nginx: /healthz answers, /metrics is 404, the edge's herald_node cookie comes through with
    Path=/; HttpOnly; SameSite=Lax, /api/* is guarded by the API key;
  * stickiness: a client with the cookie lands on the same edge every time, on every transport;
    clients without it are spread over all edges (least_conn);
  * fan-out: a message published on one edge reaches WebSocket, SSE and long-poll clients on the
    other edges; SSE clients publish with POST /publish;
  * Prometheus (optional): every edge's target is up, via /api/v1/targets;
  * drain (optional, --stop-cmd): SIGTERM one edge while messages flow: its WebSockets are closed
    with 1012, every client of it reconnects through nginx to another edge and resumes from its
    cursor with no gap and no duplicate; the edge is started again and nginx routes back to it;
  * kill (--kill-cmd): SIGKILL one edge while messages flow: the same, with no warning.
  * identity (--auth dev, or found by itself with --auth auto): requests without a connection
    token are refused (HTTP 401 on /sse, /poll, POST /publish; close 4501 on a WebSocket), one
    with a token from the development endpoint GET /dev/token works, and `?user=` is refused next
    to a token. Every client of the checks above then carries its own token (WebSocket:
    `Authorization: Bearer`; SSE and poll: `?token=`; POST /publish: `Authorization: Bearer` and
    `client` naming the caller's SSE stream, so it publishes as a subscriber), and every welcome
    must name the token's user.
  * nginx rate limits (last, --nginx-limits): a burst from one address beyond rate+burst on
    /ws+/sse and on /poll+/publish gets nginx's own 429 (JSON body, code 112, Retry-After) for the
    excess while nginx let at least the burst through; meanwhile a client from another address
    (--other-client-cmd, or 127.0.0.2 when nginx is on loopback) is served; and once the bucket
    has refilled the first address is served again.

Exit status 0 when every check passed. Only the `websockets` package is needed
(tests-deploy/requirements.txt).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import string
import sys
import time
import urllib.parse
from dataclasses import dataclass, field

from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

# ----------------------------------------------------------------------------- reporting

FAILURES: list[str] = []
T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T0:7.2f}s] {msg}", flush=True)


def check(cond: bool, what: str, detail: str = "") -> bool:
    if cond:
        log(f"ok   {what}" + (f" ({detail})" if detail else ""))
    else:
        log(f"FAIL {what}" + (f" ({detail})" if detail else ""))
        FAILURES.append(what)
    return cond


def rand_id(n: int = 8) -> str:
    return "".join(random.choices(string.ascii_lowercase + string.digits, k=n))


# ----------------------------------------------------------------------------- identity


class Identity:
    """Connection tokens from the cluster's development endpoint GET /dev/token, one per user
    (cached: a token lasts an hour, a check run a few minutes)."""

    def __init__(self, http: "Http"):
        self.http = http
        self.tokens: dict[str, str] = {}

    async def token(self, user: str) -> str:
        if user not in self.tokens:
            last = None
            for _ in range(20):  # nginx may answer 502 for a moment while an edge goes away
                r = await self.http.request("GET", f"/dev/token?user={urllib.parse.quote(user)}")
                if r.status == 200:
                    self.tokens[user] = json.loads(r.body)["token"]
                    break
                last = f"{r.status} {r.body[:200]!r}"
                await asyncio.sleep(0.5)
            else:
                raise RuntimeError(f"GET /dev/token?user={user} failed: {last}")
        return self.tokens[user]


# Set by main_async when the cluster requires tokens; None: clients connect anonymously.
IDENTITY: Identity | None = None


async def auth_header(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {await IDENTITY.token(user)}"} if IDENTITY else {}


async def auth_query(user: str) -> str:
    """`&token=<jwt>` for SSE and poll URLs (empty without identity)."""
    return f"&token={urllib.parse.quote(await IDENTITY.token(user))}" if IDENTITY else ""


# ----------------------------------------------------------------------------- cookies


class Jar:
    """The one cookie that matters: herald_node."""

    def __init__(self, node: str | None = None):
        self.node = node
        self.raw_set_cookies: list[str] = []

    def header(self) -> dict[str, str]:
        return {"Cookie": f"herald_node={self.node}"} if self.node else {}

    def update(self, set_cookies: list[str]) -> None:
        for sc in set_cookies:
            self.raw_set_cookies.append(sc)
            first = sc.split(";", 1)[0].strip()
            if first.startswith("herald_node="):
                self.node = first.split("=", 1)[1]


# ----------------------------------------------------------------------------- raw HTTP/1.1


class Http:
    """A minimal HTTP/1.1 client over asyncio streams (chunked + content-length), so SSE and
    long-poll can be read incrementally and no proxy settings from the environment apply."""

    def __init__(self, base: str, source: str | None = None):
        u = urllib.parse.urlsplit(base)
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or 80
        self.local_addr = (source, 0) if source else None  # the client address to connect from

    async def open(self, method: str, path: str, headers: dict[str, str] | None = None,
                   body: bytes | None = None, timeout: float = 10.0) -> "Response":
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port, local_addr=self.local_addr), timeout)
        h = {"Host": f"{self.host}:{self.port}", "User-Agent": "herald-cluster-check",
             "Accept": "*/*", "Connection": "close"}
        h.update(headers or {})
        if body is not None:
            h["Content-Length"] = str(len(body))
        req = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items()) + "\r\n"
        writer.write(req.encode() + (body or b""))
        await writer.drain()
        resp = Response(reader, writer)
        await asyncio.wait_for(resp.read_head(), timeout)
        return resp

    async def request(self, method: str, path: str, headers: dict[str, str] | None = None,
                      body: bytes | None = None, timeout: float = 10.0) -> "Response":
        resp = await self.open(method, path, headers, body, timeout)
        try:
            resp.body = await asyncio.wait_for(resp.read_all(), timeout)
        finally:
            resp.close()
        return resp


class Response:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.body = b""
        self._chunked = False
        self._remaining: int | None = None
        self._done = False

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    async def read_head(self) -> None:
        line = await self.reader.readline()
        if not line:
            raise ConnectionError("connection closed before the status line")
        self.status = int(line.split()[1])
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            k, _, v = line.decode("latin-1").partition(":")
            self.headers.append((k.strip(), v.strip()))
        te = (self.header("Transfer-Encoding") or "").lower()
        self._chunked = "chunked" in te
        cl = self.header("Content-Length")
        self._remaining = int(cl) if cl is not None and not self._chunked else None

    async def read_some(self) -> bytes:
        """The next piece of the body; b'' at its end."""
        if self._done:
            return b""
        if self._chunked:
            line = await self.reader.readline()
            if not line:
                self._done = True
                return b""
            size = int(line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                await self.reader.readline()
                self._done = True
                return b""
            data = await self.reader.readexactly(size)
            await self.reader.readline()
            return data
        if self._remaining is not None:
            if self._remaining == 0:
                self._done = True
                return b""
            data = await self.reader.read(min(65536, self._remaining))
            if not data:
                self._done = True
            self._remaining -= len(data)
            return data
        data = await self.reader.read(65536)
        if not data:
            self._done = True
        return data

    async def read_all(self) -> bytes:
        out = bytearray()
        while True:
            d = await self.read_some()
            if not d:
                return bytes(out)
            out += d

    def close(self) -> None:
        try:
            self.writer.close()
        except Exception:
            pass


def node_cookie(resp_headers: list[str]) -> str | None:
    for sc in resp_headers:
        first = sc.split(";", 1)[0].strip()
        if first.startswith("herald_node="):
            return first.split("=", 1)[1]
    return None


# ----------------------------------------------------------------------------- WebSocket client


class WsClient:
    """A WebSocket client that tracks replies by id, received messages and stream positions."""

    def __init__(self, name: str, ws_url: str, jar: Jar | None = None, user: str | None = None):
        self.name, self.ws_url = name, ws_url
        self.user = user or name  # the token's `sub` when the cluster requires tokens
        self.jar = jar or Jar()
        self.ws = None
        self.node: str | None = None
        self.welcome: dict | None = None
        self.next_id = 1
        self.pending: dict[int, asyncio.Future] = {}
        self.messages: dict[str, list[dict]] = {}
        self.positions: dict[str, dict] = {}  # channel -> {"epoch", "offset"}
        self.events: list[dict] = []
        self.reader: asyncio.Task | None = None
        self.closed = asyncio.Event()
        self.close_code: int | None = None
        self.got_message = asyncio.Event()

    async def connect(self, timeout: float = 10.0) -> str:
        self.closed.clear()
        self.close_code = None
        headers = {**self.jar.header(), **await auth_header(self.user)}
        self.ws = await ws_connect(self.ws_url, additional_headers=headers, proxy=None,
                                   open_timeout=timeout, ping_interval=None, close_timeout=2,
                                   max_size=None)
        self.set_cookies = self.ws.response.headers.get_all("Set-Cookie")
        self.jar.update(self.set_cookies)
        self.welcome = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
        if self.welcome.get("op") != "welcome":
            raise RuntimeError(f"{self.name}: first frame is not welcome: {self.welcome}")
        if IDENTITY and self.welcome.get("user") != self.user:
            raise RuntimeError(f"{self.name}: welcome names user {self.welcome.get('user')!r}, "
                               f"the token was for {self.user!r}")
        self.node = self.welcome.get("node")
        self.reader = asyncio.create_task(self._read())
        return self.node

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                if isinstance(raw, bytes):
                    self.events.append({"op": "binary", "len": len(raw)})
                    continue
                f = json.loads(raw)
                op = f.get("op")
                if op == "message":
                    ch = f.get("channel")
                    self.messages.setdefault(ch, []).append(f)
                    self.positions[ch] = {"epoch": f.get("epoch"), "offset": f.get("offset")}
                    self.got_message.set()
                elif f.get("id") is not None and f["id"] in self.pending:
                    fut = self.pending.pop(f["id"])
                    if not fut.done():
                        fut.set_result(f)
                else:
                    self.events.append(f)
        except ConnectionClosed:
            pass
        except Exception as e:  # noqa: BLE001
            self.events.append({"op": "reader-error", "error": repr(e)})
        finally:
            if self.ws is not None:
                self.close_code = self.ws.close_code
            for fut in self.pending.values():
                if not fut.done():
                    fut.set_exception(ConnectionError(f"{self.name}: connection closed"))
            self.pending.clear()
            self.closed.set()

    async def request(self, frame: dict, timeout: float = 10.0) -> dict:
        rid = self.next_id
        self.next_id += 1
        frame = dict(frame, id=rid)
        fut = asyncio.get_running_loop().create_future()
        self.pending[rid] = fut
        await self.ws.send(json.dumps(frame))
        return await asyncio.wait_for(fut, timeout)

    async def subscribe(self, channel: str, since: dict | None = None) -> dict:
        frame = {"op": "subscribe", "channel": channel}
        if since is not None:
            frame["since"] = since
        reply = await self.request(frame)
        if reply.get("op") == "subscribed" and channel not in self.positions:
            self.positions[channel] = {"epoch": reply.get("epoch"), "offset": reply.get("offset")}
        return reply

    async def publish(self, channel: str, data, **extra) -> dict:
        return await self.request({"op": "publish", "channel": channel, "data": data, **extra})

    async def close(self) -> None:
        if self.ws is not None:
            try:
                await self.ws.close()
            except Exception:
                pass
        if self.reader is not None:
            try:
                await asyncio.wait_for(self.reader, 3)
            except Exception:
                pass

    def datas(self, channel: str) -> list:
        return [m.get("data") for m in self.messages.get(channel, [])]


async def wait_until(pred, timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        await asyncio.sleep(step)
    return pred()


# ----------------------------------------------------------------------------- SSE client


def parse_sse(buf: str) -> tuple[list[dict], str]:
    """Splits complete events off the buffer: [{event, data, id, comment}], rest."""
    buf = buf.replace("\r\n", "\n")
    events = []
    while "\n\n" in buf:
        block, buf = buf.split("\n\n", 1)
        ev: dict = {"event": "message", "data": [], "id": None, "comment": False}
        lines = block.split("\n")
        if all(line.startswith(":") for line in lines if line):
            events.append({"comment": True})
            continue
        for line in lines:
            if not line or line.startswith(":"):
                continue
            k, _, v = line.partition(":")
            v = v[1:] if v.startswith(" ") else v
            if k == "data":
                ev["data"].append(v)
            elif k == "event":
                ev["event"] = v
            elif k == "id":
                ev["id"] = v
            elif k == "retry":
                ev["retry"] = v
        ev["data"] = "\n".join(ev["data"])
        events.append(ev)
    return events, buf


@dataclass
class Resilient:
    """State of a client that reconnects and resumes (WS, SSE or poll)."""
    name: str
    kind: str
    channel: str
    jar: Jar
    seqs: list = field(default_factory=list)        # data.seq values in arrival order
    nodes: list = field(default_factory=list)       # edge of each (re)connection
    closes: list = field(default_factory=list)      # close codes / reasons
    recovered: list = field(default_factory=list)   # recovered flags on resume
    reconnects: int = 0
    stop: bool = False
    errors: list = field(default_factory=list)
    client: str | None = None                       # SSE: the stream's client id (welcome)
    users: list = field(default_factory=list)       # SSE: `user` of each welcome


async def run_ws_resilient(st: Resilient, ws_url: str, ready: asyncio.Event) -> None:
    since = None
    backoff = 0.2
    while not st.stop:
        c = WsClient(st.name, ws_url, st.jar)
        try:
            st.nodes.append(await c.connect())
            reply = await c.subscribe(st.channel, since)
            if reply.get("op") != "subscribed":
                raise RuntimeError(f"subscribe failed: {reply}")
            if since is not None:
                st.recovered.append(reply.get("recovered"))
            since = since or {"epoch": reply["epoch"], "offset": reply["offset"]}
            ready.set()
            backoff = 0.2
            seen = 0
            while not st.stop:
                msgs = c.messages.get(st.channel, [])
                for m in msgs[seen:]:
                    st.seqs.append((m.get("data") or {}).get("seq"))
                    since = {"epoch": m["epoch"], "offset": m["offset"]}
                seen = len(msgs)
                if c.closed.is_set() and seen == len(c.messages.get(st.channel, [])):
                    break
                c.got_message.clear()
                try:
                    await asyncio.wait_for(c.got_message.wait(), 0.1)
                except asyncio.TimeoutError:
                    pass
            if st.stop:
                await c.close()
                return
            st.closes.append(c.close_code)
        except Exception as e:  # noqa: BLE001
            st.errors.append(f"{type(e).__name__}: {e}")
            await c.close()
        st.reconnects += 1
        await asyncio.sleep(backoff * (0.5 + random.random()))
        backoff = min(backoff * 2, 2.0)


async def run_sse_resilient(st: Resilient, http: Http, ready: asyncio.Event) -> None:
    last_id = None
    backoff = 0.2
    while not st.stop:
        resp = None
        try:
            headers = {"Accept": "text/event-stream", **st.jar.header()}
            if last_id:
                headers["Last-Event-ID"] = last_id
            resumed = last_id is not None
            resp = await http.open("GET", f"/sse?channel={urllib.parse.quote(st.channel)}"
                                   + await auth_query(st.name), headers)
            st.jar.update(resp.all("Set-Cookie"))
            if resp.status != 200:
                raise RuntimeError(f"/sse answered {resp.status}")
            buf = ""
            node = None
            while not st.stop:
                try:
                    chunk = await asyncio.wait_for(resp.read_some(), 0.2)
                except asyncio.TimeoutError:
                    continue
                if not chunk:
                    break
                events, buf = parse_sse(buf + chunk.decode())
                for ev in events:
                    if ev.get("comment"):
                        continue
                    if ev["event"] == "welcome":
                        try:
                            w = json.loads(ev["data"])
                        except ValueError:
                            w = {}
                        node = w.get("node") or st.jar.node
                        st.nodes.append(node)
                        st.client = w.get("client")
                        st.users.append(w.get("user"))
                        ready.set()
                    elif ev["event"] == "subscribed":
                        if resumed:
                            try:
                                st.recovered.append(json.loads(ev["data"]).get("recovered"))
                            except ValueError:
                                st.recovered.append("unparsable")
                        if ev["id"]:
                            last_id = ev["id"]
                    elif ev["event"] == "message":
                        m = json.loads(ev["data"])
                        if m.get("channel") == st.channel:
                            st.seqs.append((m.get("data") or {}).get("seq"))
                        if ev["id"]:
                            last_id = ev["id"]
                    elif ev["id"]:
                        last_id = ev["id"]
            st.closes.append("eof")
            backoff = 0.2
        except Exception as e:  # noqa: BLE001
            st.errors.append(f"{type(e).__name__}: {e}")
        finally:
            if resp is not None:
                resp.close()
        if st.stop:
            return
        st.reconnects += 1
        await asyncio.sleep(backoff * (0.5 + random.random()))
        backoff = min(backoff * 2, 2.0)


async def run_poll_resilient(st: Resilient, http: Http, ready: asyncio.Event, timeout: int = 20) -> None:
    cursor = None
    backoff = 0.2
    while not st.stop:
        try:
            q = {"channel": st.channel, "timeout": "0" if cursor is None else str(timeout)}
            if cursor:
                q["cursor"] = cursor
            resp = await http.request("GET", "/poll?" + urllib.parse.urlencode(q) + await auth_query(st.name),
                                      st.jar.header(), timeout=timeout + 15)
            st.jar.update(resp.all("Set-Cookie"))
            if resp.status != 200:
                raise RuntimeError(f"/poll answered {resp.status}: {resp.body[:200]!r}")
            if not st.nodes or st.nodes[-1] != st.jar.node:
                st.nodes.append(st.jar.node)
            body = json.loads(resp.body)
            if cursor is not None and body.get("recovered") is False:
                st.recovered.append(False)  # every poll with a cursor is a resume
            for m in body.get("messages", []):
                if m.get("channel") == st.channel:
                    st.seqs.append((m.get("data") or {}).get("seq"))
            cursor = body.get("cursor") or cursor
            ready.set()
            backoff = 0.2
        except Exception as e:  # noqa: BLE001
            st.errors.append(f"{type(e).__name__}: {e}")
            st.reconnects += 1
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, 2.0)


# ----------------------------------------------------------------------------- the checks


class Cluster:
    def __init__(self, args):
        self.args = args
        self.url = args.url.rstrip("/")
        u = urllib.parse.urlsplit(self.url)
        self.ws_url = f"ws://{u.hostname}:{u.port or 80}/ws"
        self.http = Http(self.url)
        self.nodes = args.nodes.split(",")

    async def ws_on(self, node: str | None, name: str) -> WsClient:
        c = WsClient(name, self.ws_url, Jar(node))
        await c.connect()
        return c


async def check_basics(cl: Cluster) -> None:
    r = await cl.http.request("GET", "/healthz")
    check(r.status == 200, "GET /healthz through nginx is 200", f"{r.status}")
    r = await cl.http.request("GET", "/readyz")
    check(r.status == 200, "GET /readyz through nginx is 200", f"{r.status}")
    r = await cl.http.request("GET", "/metrics")
    check(r.status == 404, "GET /metrics through nginx is 404 (metrics only on the metrics listener)", f"{r.status}")
    r = await cl.http.request("GET", "/")
    scs = r.all("Set-Cookie")
    node = node_cookie(scs)
    check(r.status == 200, "GET / (demo page) through nginx is 200", f"{r.status}")
    check(node in cl.nodes, "a request without the cookie gets Set-Cookie herald_node=<edge>", "; ".join(scs) or "none")
    attrs = {a.strip().lower() for sc in scs if sc.startswith("herald_node=") for a in sc.split(";")[1:]}
    check({"path=/", "httponly", "samesite=lax"} <= attrs, "the cookie has Path=/; HttpOnly; SameSite=Lax", str(sorted(attrs)))
    if node:
        r2 = await cl.http.request("GET", "/", {"Cookie": f"herald_node={node}"})
        check(node_cookie(r2.all("Set-Cookie")) is None,
              "a request that already names its edge gets no new Set-Cookie", "; ".join(r2.all("Set-Cookie")) or "none")
    r = await cl.http.request("GET", "/status")
    check(r.status == 200, "GET /status through nginx is 200", f"{r.status}")
    # Plain HTTP requests (POST /publish of SSE clients, polls) stick too; X-Herald-Node names the edge.
    for n in cl.nodes:
        seen = []
        for _ in range(5):
            r = await cl.http.request("GET", "/healthz", {"Cookie": f"herald_node={n}"})
            seen.append(r.header("X-Herald-Node"))
        check(set(seen) == {n}, f"HTTP requests with cookie herald_node={n} land on {n} 5/5 (X-Herald-Node)", str(seen))


async def check_api_guard(cl: Cluster, ch: str, listener: WsClient) -> None:
    body = json.dumps({"channel": ch, "data": {"api": 1}}).encode()
    hdr = {"Content-Type": "application/json"}
    r = await cl.http.request("POST", "/api/publish", hdr, body)
    if cl.args.api_key:
        check(r.status in (401, 403), "POST /api/publish without the API key is refused by the edge", f"{r.status}")
        r = await cl.http.request("POST", "/api/publish", {**hdr, "Authorization": f"apikey {cl.args.api_key}"}, body)
        check(r.status == 200, "POST /api/publish with the API key (from a private address) is accepted",
              f"{r.status} {r.body[:120]!r}")
        got = await wait_until(lambda: {"api": 1} in listener.datas(ch), 5)
        check(got, "the API publish reaches a WebSocket subscriber")
        r = await cl.http.request("GET", "/api/info", {"Authorization": f"apikey {cl.args.api_key}"})
        text = r.body.decode(errors="replace")
        check(r.status == 200 and all(n in text for n in cl.nodes),
              "GET /api/info lists every edge of the cluster", f"{r.status} {text[:300]}")
    else:
        log(f"info /api/publish without a key answered {r.status} (no --api-key given)")


async def check_stickiness_and_spread(cl: Cluster) -> dict[str, WsClient]:
    """Opens cookie-less WebSockets until every edge has one; checks the cookie pins clients."""
    by_node: dict[str, WsClient] = {}
    extra: list[WsClient] = []
    for i in range(4 * len(cl.nodes)):
        c = WsClient(f"spread{i}", cl.ws_url, Jar())
        await c.connect()
        cookie = node_cookie(c.set_cookies)
        if cookie != c.node:
            check(False, "the WebSocket handshake response sets herald_node to the edge that answered",
                  f"cookie={cookie} welcome.node={c.node}")
        if c.node in by_node:
            extra.append(c)
        else:
            by_node[c.node] = c
        if len(by_node) == len(cl.nodes):
            break
    check(sorted(by_node) == sorted(cl.nodes),
          "new clients (no cookie) are spread over every edge by least_conn", f"reached {sorted(by_node)} in {len(by_node) + len(extra)} connections")
    for c in extra:
        await c.close()

    # The cookie pins the client on every transport.
    for node in sorted(by_node):
        seen = []
        for _ in range(5):
            c = WsClient("pinned", cl.ws_url, Jar(node))
            seen.append(await c.connect())
            await c.close()
        check(set(seen) == {node}, f"WebSocket with cookie herald_node={node} lands on {node} 5/5", str(seen))
    for node in sorted(by_node):
        seen = []
        for _ in range(3):
            resp = await cl.http.open("GET", "/sse?channel=sticky:probe" + await auth_query("sticky-probe"),
                                      {"Cookie": f"herald_node={node}", "Accept": "text/event-stream"})
            buf, got = "", None
            deadline = time.monotonic() + 5
            while got is None and time.monotonic() < deadline:
                chunk = await asyncio.wait_for(resp.read_some(), 5)
                if not chunk:
                    break
                events, buf = parse_sse(buf + chunk.decode())
                for ev in events:
                    if ev.get("event") == "welcome":
                        try:
                            got = json.loads(ev["data"]).get("node")
                        except ValueError:
                            got = "?"
            resp.close()
            seen.append(got)
        check(set(seen) == {node}, f"SSE with cookie herald_node={node} lands on {node} 3/3 (welcome event)", str(seen))
    return by_node


async def check_fanout(cl: Cluster, by_node: dict[str, WsClient]) -> str:
    ch = f"deploy:fanout-{rand_id()}"
    clients = [by_node[n] for n in sorted(by_node)]
    for c in clients:
        r = await c.subscribe(ch)
        check(r.get("op") == "subscribed", f"WebSocket on {c.node} subscribes {ch}", str(r)[:200])
    # SSE readers pinned to each edge
    sse_states = []
    tasks = []
    for n in sorted(by_node):
        st = Resilient(f"sse-{n}", "sse", ch, Jar(n))
        ready = asyncio.Event()
        tasks.append(asyncio.create_task(run_sse_resilient(st, cl.http, ready)))
        await asyncio.wait_for(ready.wait(), 10)
        sse_states.append(st)
    # a long-poll reader
    pst = Resilient("poll", "poll", ch, Jar(sorted(by_node)[-1]))
    pready = asyncio.Event()
    tasks.append(asyncio.create_task(run_poll_resilient(pst, cl.http, pready)))
    await asyncio.wait_for(pready.wait(), 10)
    await asyncio.sleep(0.3)

    # publish from each edge over WebSocket; every WS client on every edge gets it
    seq = 0
    for pub in clients:
        seq += 1
        ack = await pub.publish(ch, {"seq": seq, "from": pub.node})
        check(ack.get("op") == "ack" and isinstance(ack.get("offset"), int),
              f"publish on {pub.node} is acknowledged with an offset", str(ack)[:200])
        want = {"seq": seq, "from": pub.node}
        ok = await wait_until(lambda: all(want in c.datas(ch) for c in clients), 5)
        check(ok, f"a message published on {pub.node} reaches the WebSocket clients on "
                  f"{', '.join(c.node for c in clients if c is not pub)}",
              ", ".join(f"{c.node}:{len(c.datas(ch))}" for c in clients))
    # SSE publish path: POST /publish through nginx, pinned to one edge
    seq += 1
    sse_node = sorted(by_node)[0]
    body = {"channel": ch, "data": {"seq": seq, "from": "post"}}
    hdr = {"Content-Type": "application/json", "Cookie": f"herald_node={sse_node}"}
    if IDENTITY:
        # As the SSE reader on that edge, naming its stream: a subscriber of the channel may
        # publish (the default `publish = "subscriber"` rule once a key is configured).
        sse = sse_states[0]
        check(sse.nodes[:1] == [sse_node] and sse.client is not None and sse.users[:1] == [sse.name],
              f"the SSE welcome on {sse_node} names the token's user and a client id", f"users={sse.users} client={sse.client}")
        body["client"] = sse.client
        hdr.update(await auth_header(sse.name))
    r = await cl.http.request("POST", "/publish", hdr, json.dumps(body).encode())
    check(r.status == 200, f"POST /publish (the SSE/poll clients' publish) on {sse_node} is accepted", f"{r.status} {r.body[:120]!r}")
    want = {"seq": seq, "from": "post"}
    ok = await wait_until(lambda: all(want in c.datas(ch) for c in clients), 5)
    check(ok, "a POST /publish message reaches WebSocket clients on every edge")
    ok = await wait_until(lambda: all(s.seqs == list(range(1, seq + 1)) for s in sse_states), 5)
    check(ok, "SSE clients on every edge receive every message, in order",
          "; ".join(f"{s.name}:{s.seqs}" for s in sse_states))
    ok = await wait_until(lambda: pst.seqs == list(range(1, seq + 1)), 25)
    check(ok, "a long-poll client receives every message, in order", f"{pst.seqs} errors={pst.errors[:3]}")
    offsets = [m["offset"] for m in clients[0].messages.get(ch, [])]
    check(offsets == list(range(offsets[0], offsets[0] + len(offsets))) if offsets else False,
          "offsets grow by exactly 1 per publish", str(offsets))
    await stop_all(sse_states + [pst], tasks)
    return ch


async def check_prometheus(cl: Cluster, want_up: int, want_down: list[str] | None = None, timeout: float = 40) -> None:
    if not cl.args.prometheus:
        return
    ph = Http(cl.args.prometheus)
    last = ""

    def summary(targets):
        return sorted((t["labels"].get("node") or t["labels"].get("instance"), t["health"]) for t in targets)

    deadline = time.monotonic() + timeout
    ok = False
    while time.monotonic() < deadline:
        try:
            r = await ph.request("GET", "/api/v1/targets?state=active")
            targets = [t for t in json.loads(r.body)["data"]["activeTargets"] if t["labels"].get("job") == "herald"]
            s = summary(targets)
            last = str(s)
            up = [n for n, h in s if h == "up"]
            down = [n for n, h in s if h != "up"]
            if len(up) == want_up and (want_down is None or sorted(down) == sorted(want_down)):
                ok = True
                break
        except Exception as e:  # noqa: BLE001
            last = repr(e)
        await asyncio.sleep(1)
    what = f"Prometheus /api/v1/targets reports {want_up} herald targets up"
    if want_down:
        what += f" and {', '.join(want_down)} down"
    check(ok, what, last)


async def check_rule_metrics(cl: Cluster) -> None:
    """Every herald_* series named in the alert/recording rules is really exported by the edges."""
    if not (cl.args.prometheus and cl.args.rules):
        return
    import re
    text = "".join(open(f, encoding="utf-8").read() for f in cl.args.rules)
    names = ", ".join(f.split("/")[-1] for f in cl.args.rules)
    wanted = sorted(set(re.findall(r"\b(herald_[a-z_]+|process_[a-z_]+)\b", text)))
    ph = Http(cl.args.prometheus)
    missing = wanted
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        r = await ph.request("GET", f"/api/v1/label/__name__/values?start={time.time() - 120:.0f}")
        have = set(json.loads(r.body)["data"])
        missing = [m for m in wanted if m not in have and f"{m}_bucket" not in have]
        if not missing:
            break
        await asyncio.sleep(1)
    # A labelled metric has no series until its first sample (e.g. nothing dropped yet). Accept
    # those when the server's source declares the name; a name found nowhere is a typo in the rules.
    import pathlib
    root = pathlib.Path(__file__).resolve().parent.parent
    src = "".join(p.read_text(errors="replace") for p in (root / "crates").rglob("*.rs"))
    base = lambda m: re.sub(r"_(bucket|sum|count)$", "", m)  # noqa: E731
    unknown = [m for m in missing if f'"{base(m)}"' not in src]
    quiet = [m for m in missing if m not in unknown]
    if quiet:
        log(f"info declared by the edge but no samples yet (labelled, never incremented): {quiet}")
    check(not unknown, f"every metric named in {names} is exported by the edges",
          f"unknown: {unknown}" if unknown else f"{len(wanted) - len(quiet)} scraped, {len(quiet)} without samples yet")


async def failover(cl: Cluster, victim: str, cmd: str, mode: str, messages: int, restart_cmd: str | None) -> None:
    """Clients of `victim` (WS, SSE, long-poll) keep receiving a stream of messages published on
    another edge while `cmd` stops the victim (mode 'kill' or 'drain')."""
    ch = f"deploy:{mode}-{rand_id()}"
    others = [n for n in cl.nodes if n != victim]
    publisher = WsClient("publisher", cl.ws_url, Jar(others[0]))
    await publisher.connect()
    # Subscribed, so it may publish also where only subscribers may (with identity on).
    r = await publisher.subscribe(ch)
    check(r.get("op") == "subscribed", f"[{mode}] the publisher on {others[0]} subscribes {ch}", str(r)[:200])
    bystander = WsClient("bystander", cl.ws_url, Jar(others[-1]))
    await bystander.connect()
    await bystander.subscribe(ch)

    states = [Resilient(f"{mode}-ws", "ws", ch, Jar(victim)),
              Resilient(f"{mode}-ws2", "ws", ch, Jar(victim)),
              Resilient(f"{mode}-sse", "sse", ch, Jar(victim)),
              Resilient(f"{mode}-poll", "poll", ch, Jar(victim))]
    tasks = []
    for st in states:
        ready = asyncio.Event()
        if st.kind == "ws":
            tasks.append(asyncio.create_task(run_ws_resilient(st, cl.ws_url, ready)))
        elif st.kind == "sse":
            tasks.append(asyncio.create_task(run_sse_resilient(st, cl.http, ready)))
        else:
            tasks.append(asyncio.create_task(run_poll_resilient(st, cl.http, ready)))
        await asyncio.wait_for(ready.wait(), 10)
    check(all(st.nodes and st.nodes[0] == victim for st in states),
          f"[{mode}] WebSocket, SSE and long-poll clients pinned to {victim} by the cookie",
          "; ".join(f"{st.name}:{st.nodes}" for st in states))

    acked = []
    stop_at = messages // 4
    stop_task = None
    t_stop = None
    for i in range(1, messages + 1):
        if i == stop_at:
            log(f"[{mode}] running: {cmd}")
            t_stop = time.monotonic()
            stop_task = asyncio.create_task(run_cmd(cmd))
        try:
            ack = await publisher.publish(ch, {"seq": i})
            if ack.get("op") == "ack":
                acked.append(i)
            else:
                log(f"publish {i} not acked: {ack}")
        except Exception as e:  # noqa: BLE001
            log(f"publish {i} failed: {e!r}")
        await asyncio.sleep(0.08)
    t_last = time.monotonic()
    rc, out = await stop_task
    check(rc == 0, f"[{mode}] `{cmd}` succeeded", out.strip()[-300:])
    check(acked == list(range(1, messages + 1)), f"[{mode}] every publish on {others[0]} was acknowledged", f"{len(acked)}/{messages}")
    want = list(range(1, messages + 1))
    ok = await wait_until(lambda: all(st.seqs == want or len(st.seqs) > messages for st in states)
                          and bystander.datas(ch) == [{"seq": i} for i in want], 40)
    if ok and t_stop is not None:
        log(f"[{mode}] publishing went on {t_last - t_stop:.1f}s after the stop command; every client had "
            f"every message {max(0.0, time.monotonic() - t_last):.2f}s after the last publish")
    for st in states:
        after = st.nodes[1:]
        detail = (f"nodes={st.nodes} reconnects={st.reconnects} closes={st.closes} recovered={st.recovered} "
                  f"got={len(st.seqs)} errors={st.errors[:3]}")
        if st.seqs != want:
            missing = sorted(set(want) - set(st.seqs))
            dups = len(st.seqs) - len(set(st.seqs))
            detail += f" missing={missing[:20]} dups={dups} head={st.seqs[:10]}"
        check(st.seqs == want, f"[{mode}] {st.name} client of {victim} got all {messages} messages once, in order", detail)
        if st.kind != "poll":
            check(bool(after) and all(n != victim for n in after),
                  f"[{mode}] {st.name} client reconnected through nginx to another edge", detail)
        check(all(r is not False for r in st.recovered), f"[{mode}] {st.name} client's resume reported recovered", detail)
        if mode == "drain" and st.kind == "ws":
            check(1012 in st.closes, f"[{mode}] WebSocket closed with 1012 (service restart) by the draining edge", detail)
    check(bystander.datas(ch) == [{"seq": i} for i in want] and not bystander.closed.is_set(),
          f"[{mode}] a client of {others[-1]} was not disturbed and got every message", f"{len(bystander.datas(ch))}")
    await stop_all(states, tasks)
    await publisher.close()
    await bystander.close()

    if restart_cmd:
        log(f"[{mode}] running: {restart_cmd}")
        rc, out = await run_cmd(restart_cmd)
        check(rc == 0, f"[{mode}] `{restart_cmd}` succeeded", out.strip()[-300:])
        back = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                c = WsClient("back", cl.ws_url, Jar(victim))
                back = await c.connect()
                await c.close()
                if back == victim:
                    break
            except Exception as e:  # noqa: BLE001
                back = repr(e)
            await asyncio.sleep(1)
        check(back == victim, f"[{mode}] after the restart nginx routes herald_node={victim} to {victim} again", str(back))


async def stop_all(states: list[Resilient], tasks: list[asyncio.Task]) -> None:
    for st in states:
        st.stop = True
    for st, t in zip(states, tasks):
        if st.kind == "poll":
            t.cancel()  # a pending long-poll would hold until its timeout
        try:
            await asyncio.wait_for(t, 10)
        except (asyncio.CancelledError, asyncio.TimeoutError):
            pass
        except Exception as e:  # noqa: BLE001
            log(f"{st.name} ended with {e!r}")


async def run_cmd(cmd: str) -> tuple[int, str]:
    p = await asyncio.create_subprocess_shell(cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await p.communicate()
    return p.returncode, out.decode(errors="replace")


async def check_identity(cl: Cluster) -> None:
    """With identity on: no token, no service; a development token gets in, as its user."""
    ch = f"deploy:auth-{rand_id()}"
    q = urllib.parse.quote(ch)
    r = await cl.http.request("GET", f"/poll?channel={q}&timeout=0")
    check(r.status == 401, "GET /poll without a token is refused with 401", f"{r.status} {r.body[:160]!r}")
    resp = await cl.http.open("GET", f"/sse?channel={q}", {"Accept": "text/event-stream"})
    resp.close()
    check(resp.status == 401, "GET /sse without a token is refused with 401", f"{resp.status}")
    body = json.dumps({"channel": ch, "data": {"anonymous": True}}).encode()
    r = await cl.http.request("POST", "/publish", {"Content-Type": "application/json"}, body)
    check(r.status == 401, "POST /publish without a token is refused with 401", f"{r.status} {r.body[:160]!r}")
    # A WebSocket without a token is upgraded but may only authenticate ({"op":"connect"}):
    # anything else (or nothing within auth_timeout_secs) is closed with 4501.
    ws = await ws_connect(cl.ws_url, proxy=None, open_timeout=10, ping_interval=None, close_timeout=2)
    code = None
    try:
        await ws.send(json.dumps({"op": "subscribe", "channel": ch, "id": 1}))
        try:
            while True:
                frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
                if frame.get("op") == "welcome":
                    break
        except ConnectionClosed:
            pass
        except asyncio.TimeoutError:
            pass
        code = ws.close_code
    finally:
        await ws.close()
    check(code == 4501, "a WebSocket without a token is closed with 4501 (unauthorized)", f"close code {code}")

    token = await IDENTITY.token("deploy-checker")
    r = await cl.http.request("GET", f"/poll?channel={q}&timeout=0&token={urllib.parse.quote(token)}")
    check(r.status == 200, "GET /poll with a token from /dev/token works", f"{r.status} {r.body[:160]!r}")
    r = await cl.http.request("GET", f"/poll?channel={q}&timeout=0&user=mallory", await auth_header("deploy-checker"))
    check(r.status == 400, "`?user=` next to a token is refused with 400 (the user comes from the token)", f"{r.status} {r.body[:160]!r}")
    # The WebSocket's auth-after-connect: the token in the first frame.
    ws = await ws_connect(cl.ws_url, proxy=None, open_timeout=10, ping_interval=None, close_timeout=2)
    try:
        await ws.send(json.dumps({"op": "connect", "token": token}))
        welcome = json.loads(await asyncio.wait_for(ws.recv(), 10))
    finally:
        await ws.close()
    check(welcome.get("op") == "welcome" and welcome.get("user") == "deploy-checker",
          "a WebSocket that sends {op: connect, token} first is welcomed as the token's user", str(welcome)[:200])
    r = await cl.http.request("POST", "/publish", {"Content-Type": "application/json", **await auth_header("deploy-checker")}, body)
    check(r.status == 403, "POST /publish with a token to a channel the caller is not subscribed to is refused (403)",
          f"{r.status} {r.body[:160]!r}")


def parse_limits(spec: str) -> dict[str, tuple[int, int]]:
    """`open=20/40,req=100/200` -> {"open": (20, 40), "req": (100, 200)}; a zone set to 0 is left out."""
    out = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        zone, _, value = part.partition("=")
        if value.strip() != "0":
            rate, _, burst = value.partition("/")
            out[zone.strip()] = (int(rate), int(burst))
    return out


def is_proxy_429(r: "Response") -> bool:
    """nginx's own 429 (@herald_limited), not one passed on from an edge (which names itself)."""
    return r.status == 429 and b"(proxy)" in r.body and r.header("X-Herald-Node") is None


async def other_client_status(cl: Cluster, path: str) -> str:
    """The status of GET `path` sent from another client address than this process's."""
    if cl.args.other_client_cmd:
        import shlex
        rc, out = await run_cmd(cl.args.other_client_cmd.replace("{path}", shlex.quote(path)))
        return out.strip()[-200:] if rc == 0 else f"command failed ({rc}): {out.strip()[-200:]}"
    r = await Http(cl.url, source="127.0.0.2").request("GET", path)
    return str(r.status)


async def check_nginx_limits(cl: Cluster) -> None:
    """limit_req per client address: a burst of 3x(burst+1) requests at once from this address;
    nginx must let at least burst+1 through and refuse the excess with its own 429."""
    limits = parse_limits(cl.args.nginx_limits)
    local = cl.http.host in ("127.0.0.1", "localhost", "::1")
    if not cl.args.other_client_cmd and not local:
        log("info no --other-client-cmd and nginx is not on loopback: the other-address check is skipped")
    zones = [("open", "/ws", "WebSocket/SSE opens"), ("req", "/poll", "polls/publishes")]
    for zone, path, what in zones:
        if zone not in limits:
            log(f"info nginx zone {zone} not checked (not in --nginx-limits)")
            continue
        rate, burst = limits[zone]
        n = 3 * (burst + 1)
        target = f"{path}?channel=deploy:limit-{rand_id()}&timeout=0"
        sem = asyncio.Semaphore(128)

        async def one() -> tuple[int, bool, str | None]:
            async with sem:
                try:
                    r = await cl.http.request("GET", target, timeout=15)
                    return r.status, is_proxy_429(r), r.header("Retry-After")
                except Exception as e:  # noqa: BLE001
                    return -1, False, repr(e)

        for attempt in (1, 2):
            t0 = time.monotonic()
            results = await asyncio.gather(*(one() for _ in range(n)))
            elapsed = time.monotonic() - t0
            # Conclusive only if the burst came faster than the bucket refills (a slow machine or
            # proxy path): else wait for the refill and send it once more.
            if n > burst + 1 + rate * elapsed + 10 or attempt == 2:
                break
            log(f"info {n} requests took {elapsed:.2f}s, too slow to exceed rate+burst; once more")
            await asyncio.sleep(burst / rate + 0.5)
        refused = [r for r in results if r[1]]
        passed = [r for r in results if not r[1] and r[0] > 0]
        errors = [r for r in results if r[0] <= 0]
        allowed = burst + 1 + rate * elapsed
        detail = (f"{n} requests in {elapsed:.2f}s: {len(passed)} passed on to the edges, {len(refused)} "
                  f"refused by nginx, {len(errors)} errors; rate {rate}/s burst {burst} allow <= {allowed:.0f}")
        check(not errors and len(refused) > 0 and burst + 1 <= len(passed) <= allowed + 2,
              f"nginx limit_req on {path} ({what}): a burst beyond rate+burst from one address gets nginx's 429, "
              f"the burst itself is served", detail)
        if refused:
            check(all(r[2] == "1" for r in refused), "nginx's 429 carries Retry-After: 1",
                  str({r[2] for r in refused}))
        if cl.args.other_client_cmd or local:
            status = await other_client_status(cl, target)
            check(status.isdigit() and status != "429",
                  f"while this address is limited on {path}, a client from another address is served",
                  f"status {status}")
        await asyncio.sleep(burst / rate + 0.5)
        r = await cl.http.request("GET", target)
        check(not is_proxy_429(r), f"{burst / rate + 0.5:.1f}s later (the bucket refilled) this address is served again on {path}",
              f"{r.status}")


async def main_async(args) -> None:
    global IDENTITY
    cl = Cluster(args)
    log(f"cluster {cl.url} edges {cl.nodes}")
    if args.auth != "off":
        r = await cl.http.request("GET", "/dev/token?user=deploy-probe")
        if args.auth == "dev":
            check(r.status == 200, "GET /dev/token (the development token endpoint) answers through nginx",
                  f"{r.status} {r.body[:160]!r}")
        if r.status == 200:
            IDENTITY = Identity(cl.http)
    log("identity: " + ("tokens from /dev/token" if IDENTITY else "none (anonymous clients)"))
    if IDENTITY:
        await check_identity(cl)
    await check_basics(cl)
    by_node = await check_stickiness_and_spread(cl)
    ch = await check_fanout(cl, by_node)
    await check_api_guard(cl, ch, next(iter(by_node.values())))
    for c in by_node.values():
        await c.close()
    await check_prometheus(cl, len(cl.nodes))
    await check_rule_metrics(cl)
    if args.stop_cmd:
        victim = args.drain_victim
        await failover(cl, victim, args.stop_cmd.format(node=victim), "drain", args.messages,
                       args.start_cmd.format(node=victim) if args.start_cmd else None)
        if args.start_cmd:
            await check_prometheus(cl, len(cl.nodes))
    if args.kill_cmd:
        victim = args.kill_victim
        await failover(cl, victim, args.kill_cmd.format(node=victim), "kill", args.messages, None)
        await check_prometheus(cl, len(cl.nodes) - 1, [victim])
    if args.nginx_limits:
        await check_nginx_limits(cl)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8080", help="nginx's public URL")
    ap.add_argument("--nodes", default="edge1,edge2,edge3", help="the edges' node ids")
    ap.add_argument("--prometheus", help="Prometheus URL (checks /api/v1/targets)")
    ap.add_argument("--rules", action="append", help="rules file or dashboard whose herald_* metrics must exist (needs --prometheus; repeatable)")
    ap.add_argument("--api-key", help="the edges' API key (checks /api/* is guarded)")
    ap.add_argument("--kill-cmd", help="shell command that SIGKILLs edge {node}")
    ap.add_argument("--kill-victim", default="edge2")
    ap.add_argument("--stop-cmd", help="shell command that SIGTERMs edge {node} and waits for it to exit")
    ap.add_argument("--start-cmd", help="shell command that starts edge {node} again")
    ap.add_argument("--drain-victim", default="edge1")
    ap.add_argument("--messages", type=int, default=80, help="messages published during each failover")
    ap.add_argument("--auth", choices=["auto", "dev", "off"], default="auto",
                    help="dev: the cluster must require tokens and serve GET /dev/token (checked); "
                         "off: connect anonymously; auto: dev when /dev/token answers 200")
    ap.add_argument("--nginx-limits", default="open=20/40,req=100/200",
                    help="nginx's limit_req values (nginx/render.sh --limit-open / --limit-req) to check, "
                         "as open=RATE/BURST,req=RATE/BURST; '' skips the check")
    ap.add_argument("--other-client-cmd",
                    help="shell command that GETs {path} from nginx from another client address and prints "
                         "only the HTTP status (default when nginx is on loopback: connect from 127.0.0.2)")
    args = ap.parse_args()
    try:
        asyncio.run(asyncio.wait_for(main_async(args), args.messages * 0.5 + 400))
    except Exception as e:  # noqa: BLE001
        import traceback
        traceback.print_exc()
        check(False, f"the check run finished without an exception: {type(e).__name__}: {e}")
    if FAILURES:
        print(f"\n{len(FAILURES)} check(s) FAILED:", *FAILURES, sep="\n  - ")
        return 1
    print("\nall cluster checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
