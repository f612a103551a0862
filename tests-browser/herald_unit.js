// Unit tests of herald.js's pure parts, run inside Chromium by test_herald_js.py (no npm): the
// module is imported from the edge exactly as applications import it. Returns a list of
// failures (empty: all passed) and the number of checks.
async function heraldUnitTests(base) {
  const m = await import(base + "/herald.js");
  const failures = [];
  let checks = 0;
  const eq = (what, got, want) => {
    checks++;
    const g = JSON.stringify(got);
    const w = JSON.stringify(want);
    if (g !== w) failures.push(`${what}: got ${g}, want ${w}`);
  };
  const ok = (what, cond) => {
    checks++;
    if (!cond) failures.push(what);
  };

  // Backoff: full jitter, exponential, capped.
  eq("backoff with random 0", m.backoff(5, 500, 20000, () => 0), 0);
  eq("backoff attempt 0 ceiling", m.backoff(0, 500, 20000, () => 0.999999), 499);
  eq("backoff attempt 3 ceiling", m.backoff(3, 500, 20000, () => 0.5), 2000);
  eq("backoff is capped", m.backoff(30, 500, 20000, () => 0.999999), 19999);
  eq("backoff huge attempt stays capped", m.backoff(1e9, 500, 20000, () => 0.5), 10000);
  eq("backoff negative attempt", m.backoff(-3, 500, 20000, () => 0.5), 250);
  let spread = new Set();
  for (let i = 0; i < 200; i++) spread.add(Math.floor(m.backoff(4, 500, 20000) / 1000));
  ok("backoff is jittered over the whole range", spread.size >= 6);
  for (let i = 0; i < 200; i++) {
    const d = m.backoff(i % 12, 500, 20000);
    if (d < 0 || d >= 20000) failures.push(`backoff out of range: ${d}`);
  }

  // Offset tracking.
  const at = (epoch, offset) => ({ epoch, offset });
  eq("next offset delivers", m.classify(at("e1", 4), "e1", 5), "deliver");
  eq("same offset is a duplicate", m.classify(at("e1", 4), "e1", 4), "duplicate");
  eq("older offset is a duplicate", m.classify(at("e1", 4), "e1", 1), "duplicate");
  eq("skipped offset is a gap", m.classify(at("e1", 4), "e1", 6), "gap");
  eq("another epoch voids the position", m.classify(at("e1", 4), "e2", 5), "epoch");
  eq("another epoch at offset 1 still voids it", m.classify(at("e1", 4), "e2", 1), "epoch");
  eq("an unpublished channel adopts the first epoch", m.classify(at("", 0), "e9", 1), "adopt");
  eq("no position adopts", m.classify(null, "e1", 7), "adopt");

  // Cursors: what the server makes and reads (herald-protocol's format).
  const positions = { "chat:lobby": at("6h7xsnp2", 17), "dm:#alice,bob": at("", 0) };
  const cursor = m.encodeCursor(positions);
  ok("cursor is URL-safe", /^[A-Za-z0-9_-]+$/.test(cursor));
  eq("cursor round-trips", m.decodeCursor(cursor), positions);
  eq("foreign text is no cursor", m.decodeCursor("not a cursor!"), null);
  eq("another version is no cursor", m.decodeCursor(btoa("h2\na e 1\n")), null);
  eq("non-numeric offset is no cursor", m.decodeCursor(btoa("h1\na e x\n")), null);

  // Token expiry from a JWT's claims.
  const b64 = (o) => btoa(JSON.stringify(o)).replace(/=+$/, "").replace(/\+/g, "-").replace(/\//g, "_");
  eq("exp read from a JWT", m.tokenExpiry(`${b64({ alg: "HS256" })}.${b64({ sub: "a", exp: 1795317295 })}.sig`), 1795317295);
  eq("no exp", m.tokenExpiry(`${b64({ alg: "HS256" })}.${b64({ sub: "a" })}.sig`), 0);
  eq("not a JWT", m.tokenExpiry("garbage"), 0);

  // Errors carry the wire's code and name.
  const e = new m.HeraldError("nope", { code: 102, reason: "permission_denied" });
  ok("HeraldError is an Error", e instanceof Error);
  eq("HeraldError fields", [e.name, e.code, e.reason, e.temporary], ["HeraldError", 102, "permission_denied", false]);

  // The constructor refuses an unknown transport at once.
  let threw = null;
  try {
    new m.Herald(location.origin + base, { transports: ["carrier-pigeon"], autoConnect: false });
  } catch (err) {
    threw = err;
  }
  ok("unknown transport refused", threw instanceof m.HeraldError);

  // A subscription tracks positions and drops duplicates and resumes: driven directly, with
  // no connection (autoConnect off).
  const h = new m.Herald(location.origin + base, { autoConnect: false });
  const got = [];
  const resets = [];
  const sub = h.subscribe("t:a", { onMessage: (x) => got.push(x.offset), onReset: (r) => resets.push(r) });
  sub._subscribed({ epoch: "e1", offset: 10, recovered: true }, true);
  eq("ready position", await sub.ready, { epoch: "e1", offset: 10, recovered: true });
  for (const o of [11, 12, 12, 11, 13]) sub._message({ channel: "t:a", epoch: "e1", offset: o, data: o });
  eq("duplicates dropped, order kept", got, [11, 12, 13]);
  eq("position is the last delivered", sub.position, { epoch: "e1", offset: 13 });
  sub._subscribed({ epoch: "e2", offset: 4, recovered: false }, false);
  eq("recovered:false resets once", resets.length, 1);
  eq("reset names the new position", [resets[0].epoch, resets[0].offset], ["e2", 4]);
  sub._message({ channel: "t:a", epoch: "e2", offset: 5, data: 5 });
  eq("delivery goes on from the reset position", got, [11, 12, 13, 5]);
  h.close();

  // A gap in a live stream is filled from history before anything after it is delivered; what
  // history repeats is dropped. (The connection is a stand-in with only `history`.)
  const g = new m.Herald(location.origin + base, { autoConnect: false });
  const filled = [];
  const asked = [];
  const gsub = g.subscribe("t:gap", { onMessage: (x) => filled.push(x.offset) });
  g._conn = {
    history: async (channel, query) => {
      asked.push([channel, query.since.epoch, query.since.offset]);
      const at = (o) => ({ channel, epoch: "e1", offset: o, data: o });
      return { epoch: "e1", offset: 6, recovered: true, more: false, messages: [at(3), at(4), at(5), at(6)] };
    },
  };
  gsub._subscribed({ epoch: "e1", offset: 2, recovered: true }, true);
  gsub._message({ channel: "t:gap", epoch: "e1", offset: 5, data: 5 }); // 3 and 4 are missing
  gsub._message({ channel: "t:gap", epoch: "e1", offset: 7, data: 7 }); // waits behind the fill
  for (let i = 0; i < 1000 && filled.length < 5; i++) await Promise.resolve(); // microtask turns, no clock
  eq("history asked from the position before the gap", asked, [["t:gap", "e1", 2]]);
  eq("gap filled in order, then the waiting message", filled, [3, 4, 5, 6, 7]);
  eq("position after the fill", gsub.position, { epoch: "e1", offset: 7 });
  g._conn = null;
  g.close();

  // The client's own bounds. Publishes waiting for a connection: at most maxPendingPublishes,
  // the next is refused at once (queue_full); close() refuses the waiting ones (closed).
  const b = new m.Herald(location.origin + base, { autoConnect: false, maxPendingPublishes: 2 });
  const outcomes = [];
  const settle = (p) => p.then(() => "sent", (e) => e.reason);
  const waiting = [settle(b.publish("t:q", 1)), settle(b.publish("t:q", 2))];
  outcomes.push(await settle(b.publish("t:q", 3)));
  b.close();
  outcomes.push(...(await Promise.all(waiting)));
  eq("publish queue bound", outcomes, ["queue_full", "closed", "closed"]);
  // Messages held while a gap is filled: at most maxBuffered; one more gives up the fill and
  // resumes the connection (reported as a `resync` error), never an unbounded buffer.
  const r = new m.Herald(location.origin + base, { autoConnect: false, maxBuffered: 3 });
  const rsub = r.subscribe("t:held", {});
  r._conn = { history: () => new Promise(() => {}), close() {} }; // a fill that never answers
  rsub._subscribed({ epoch: "e1", offset: 1, recovered: true }, true);
  const resynced = new Promise((resolve) => r.on("error", (e) => e.reason === "resync" && resolve(e)));
  for (const o of [5, 6, 7, 8, 9]) rsub._message({ channel: "t:held", epoch: "e1", offset: o, data: o });
  const resync = await resynced;
  ok("gap buffer bound gives up the fill", resync.message.includes("too many messages"));
  eq("and holds nothing", [rsub._buffer.length, rsub._filling], [0, false]);
  r.close();

  // An SSE stream that goes silent (no `ping` for two heartbeats) is given up and replaced,
  // even though the browser never reported an error. A stand-in EventSource: it welcomes with
  // a 0.1 s heartbeat, confirms the channel, then says nothing.
  const RealEventSource = window.EventSource;
  const opened = [];
  window.EventSource = class {
    constructor(url) {
      this.url = String(url);
      this.listeners = {};
      opened.push(this);
      setTimeout(() => {
        this.emit("welcome", { client: "c" + opened.length, node: "n", channels: ["t:quiet"], user: "", ping_interval: 0.1 });
        this.emit("subscribed", { channel: "t:quiet", epoch: "e1", offset: 0, recovered: true });
      });
    }
    addEventListener(kind, fn) {
      (this.listeners[kind] = this.listeners[kind] || []).push(fn);
    }
    emit(kind, data) {
      for (const fn of this.listeners[kind] || []) fn({ data: JSON.stringify(data), lastEventId: "" });
    }
    close() {
      this.closed = true;
    }
  };
  try {
    const q = new m.Herald(location.origin + base, { transports: ["sse"], pongTimeout: 100, minReconnectDelay: 10 });
    const gaveUp = new Promise((resolve) => q.on("error", (e) => e.message.includes("no heartbeat") && resolve(e)));
    await q.subscribe("t:quiet", {}).ready;
    const error = await gaveUp;
    ok("a silent stream is closed with 4000", error.code === 4000 && opened[0].closed === true);
    const reopened = await new Promise((resolve) => q.on("state", (st) => st === "connected" && resolve(true)));
    ok("and replaced by a new stream", reopened && opened.length >= 2);
    ok("that resumes from the position", opened[1].url.includes("since="));
    q.close();
  } finally {
    window.EventSource = RealEventSource;
  }
  return { failures, checks };
}
