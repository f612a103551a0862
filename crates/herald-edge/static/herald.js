// herald.js: the Herald browser client. One dependency-free ES module, served by every edge at
// /herald.js (types: /herald.d.ts; guide: docs/CLIENT.md).
//
//   import { Herald } from "/herald.js";
//   const herald = new Herald("https://chat.example.com", { token: () => fetchToken() });
//   const sub = herald.subscribe("chat:lobby", { onMessage(m) { … } });
//   await herald.publish("chat:lobby", { text: "hi" });
//
// What it promises: every subscription delivers each message of its channel once, in offset
// order, with no gap, across reconnects, edges and transports — or it calls `onReset` (the only
// way loss is ever signalled, as on the wire). It tries WebSocket, then SSE + POST, then
// long-polling; reconnects with capped, fully jittered exponential backoff; honours the close
// codes of docs/PROTOCOL.md; and never sends a publish twice.

/** The library's version (the wire contract is docs/PROTOCOL.md). */
export const VERSION = "1.0.0";

const DEFAULTS = {
  transports: ["websocket", "sse", "poll"],
  connectTimeout: 5000, // ms for a transport to say welcome (or answer its first poll)
  requestTimeout: 10000, // ms for a reply to one request (WebSocket op, POST, GET)
  pollTimeout: 25, // seconds a long poll waits; 0: short polling every `pollInterval`
  pollInterval: 1000, // ms between short polls
  minReconnectDelay: 500, // backoff base, ms
  maxReconnectDelay: 20000, // backoff cap, ms
  retryBetterTransportAfter: 60000, // ms on a fallback transport before trying the better one
  maxPendingPublishes: 1000, // publishes waiting for a connection; more are refused at once
  publishTimeout: 30000, // ms a publish may wait for a connection and its ack
  maxBuffered: 10000, // messages held per channel while a gap is filled from history
  pongTimeout: 10000, // ms to wait for the pong of an application ping
  user: undefined, // display name of an anonymous connection (`?user=`), when no token is used
};

// Close codes after which reconnecting cannot help (docs/PROTOCOL.md).
const isTerminal = (code) => code === 1007 || code === 1008 || code === 1009 || (code >= 4500 && code <= 4999);

/**
 * An error from the server (`code` and `reason` as in docs/PROTOCOL.md's error table) or from
 * the client (`reason`: "timeout", "closed", "queue_full", "unknown_outcome", "network").
 */
export class HeraldError extends Error {
  constructor(message, { code = 0, reason = "error", status = 0, temporary = false, retryAfter = 0, unknownOutcome = false } = {}) {
    super(message);
    /** The request may or may not have taken effect (the connection died with it in flight). */
    this.unknownOutcome = unknownOutcome;
    this.name = "HeraldError";
    this.code = code;
    this.reason = reason;
    this.status = status;
    this.temporary = temporary;
    this.retryAfter = retryAfter;
  }
}

// ---------------------------------------------------------------------------------- pure parts

/** Full-jitter exponential backoff: uniform in [0, min(cap, base · 2^attempt)]. */
export function backoff(attempt, base = DEFAULTS.minReconnectDelay, cap = DEFAULTS.maxReconnectDelay, random = Math.random) {
  const ceiling = Math.min(cap, base * 2 ** Math.min(Math.max(attempt, 0), 30));
  return Math.floor(random() * ceiling);
}

/**
 * Where a message stands against a channel position: "deliver" (the next offset), "duplicate"
 * (at or before the position), "gap" (offsets are missing before it), "epoch" (another
 * generation of history: the position is void) or "adopt" (the channel had no history yet).
 */
export function classify(position, epoch, offset) {
  if (!position) return "adopt";
  if (position.epoch !== epoch) return position.epoch === "" && position.offset === 0 ? "adopt" : "epoch";
  if (offset <= position.offset) return "duplicate";
  return offset === position.offset + 1 ? "deliver" : "gap";
}

/** The cursor the server reads (herald-protocol's format) for `positions` ({channel: {epoch, offset}}). */
export function encodeCursor(positions) {
  let raw = "h1\n";
  for (const [channel, p] of Object.entries(positions)) raw += `${channel} ${p.epoch} ${p.offset}\n`;
  const bytes = new TextEncoder().encode(raw);
  let binary = "";
  for (const b of bytes) binary += String.fromCharCode(b);
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** The positions in a server cursor, or null when it is not one this version can read. */
export function decodeCursor(cursor) {
  try {
    const binary = atob(cursor.replace(/-/g, "+").replace(/_/g, "/"));
    const raw = new TextDecoder().decode(Uint8Array.from(binary, (c) => c.charCodeAt(0)));
    const lines = raw.split("\n").filter(Boolean);
    if (lines.shift() !== "h1") return null;
    const out = {};
    for (const line of lines) {
      const [channel, epoch, offset, extra] = line.split(" ");
      if (extra !== undefined || !/^\d+$/.test(offset)) return null;
      out[channel] = { epoch, offset: Number(offset) };
    }
    return out;
  } catch (_) {
    return null;
  }
}

/** The `exp` claim of a JWT (seconds), or 0 when it has none or is not a JWT. */
export function tokenExpiry(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const exp = JSON.parse(atob(part)).exp;
    return Number.isFinite(exp) ? exp : 0;
  } catch (_) {
    return 0;
  }
}

// A stable text for comparing published data with what comes back (object keys sorted).
function dataKey(data) {
  if (data instanceof Uint8Array || data instanceof ArrayBuffer) {
    return "bin:" + Array.from(new Uint8Array(data)).join(",");
  }
  const sort = (v) =>
    Array.isArray(v) ? v.map(sort) : v && typeof v === "object" ? Object.fromEntries(Object.keys(v).sort().map((k) => [k, sort(v[k])])) : v;
  return "json:" + JSON.stringify(sort(data));
}

// SSE and poll deliver binary publications as {"$binary": "<base64>"}.
function decodeData(data) {
  if (data && typeof data === "object" && !Array.isArray(data) && typeof data.$binary === "string" && Object.keys(data).length === 1) {
    try {
      return Uint8Array.from(atob(data.$binary), (c) => c.charCodeAt(0));
    } catch (_) {
      return data;
    }
  }
  return data;
}

async function errorFromResponse(response) {
  let body = {};
  try {
    body = await response.json();
  } catch (_) {
    // nginx's own pages are HTML.
  }
  const e = body.error || {};
  const retryAfter = Number(response.headers.get("retry-after")) || 0;
  const status = response.status;
  // 502/504 come from a proxy: the request may or may not have reached an edge.
  const temporary = status >= 500 || status === 429 || status === 408;
  return new HeraldError(e.message || `HTTP ${status}`, { code: e.code || 0, reason: e.name || "http_" + status, status, temporary, retryAfter });
}

function errorFromFrame(frame) {
  const temporary = frame.code === 111 || frame.code === 112 || frame.code === 100;
  return new HeraldError(frame.message || frame.name || "error", { code: frame.code, reason: frame.name || "error", temporary });
}

// The subscription a 400/403 about one channel names (the longest name the message holds, so
// `chat:a` is not taken for `chat:ab`), or the only one.
function refusedSub(subs, error) {
  const named = subs.filter((s) => error.message.includes(s.channel)).sort((a, b) => b.channel.length - a.channel.length);
  return named[0] || (subs.length === 1 ? subs[0] : null);
}

// ---------------------------------------------------------------------------------- subscription

class Subscription {
  constructor(herald, channel, options) {
    this.herald = herald;
    this.channel = channel;
    this.options = options;
    this.token = options.token; // a channel token (string or function), for namespaces that need one
    /** The last delivered position {epoch, offset}: `since` until the first `subscribed`, else null until then. */
    this.position = options.since ? { epoch: String(options.since.epoch), offset: Number(options.since.offset) } : null;
    this.active = true;
    this.established = false; // the server confirmed it on the current connection
    this._caughtUp = null; // offset a resume must reach before it counts as complete
    this._filling = false; // a gap is being filled from history; live messages wait
    this._buffer = [];
    this._selfPending = 0; // own skip-self publishes whose offset is not yet known
    this._skip = new Set(); // "epoch:offset" of own skip-self publications, not delivered
    this._held = [];
    this.ready = new Promise((resolve, reject) => {
      this._resolveReady = resolve;
      this._rejectReady = reject;
    });
    this.ready.catch(() => {}); // a failed subscription is reported through onError as well
    this._readySettled = false;
  }

  /** Stops the subscription (and tells the server). */
  unsubscribe() {
    if (!this.active) return;
    this.active = false;
    this.herald._unsubscribe(this);
  }

  _call(name, arg) {
    const fn = this.options[name];
    if (typeof fn === "function") {
      try {
        fn.call(this, arg);
      } catch (err) {
        setTimeout(() => {
          throw err;
        });
      }
    }
  }

  // The server confirmed the subscription: `info` = {epoch, offset, recovered}.
  _subscribed(info, solicited) {
    const position = { epoch: info.epoch, offset: info.offset };
    const had = this.position;
    const keep = info.recovered && had && (had.epoch === info.epoch || (had.epoch === "" && had.offset === 0));
    this.established = true;
    if (!info.recovered && had) {
      this.position = position;
      this._buffer = [];
      this._filling = false;
      this._call("onReset", { channel: this.channel, epoch: info.epoch, offset: info.offset, solicited, previous: had });
    } else if (!keep || !had) {
      this.position = position;
    } else if (had.epoch === "" && info.epoch !== "") {
      this.position = { epoch: info.epoch, offset: had.offset };
    }
    // WebSocket: recovered messages follow and end at `offset`. SSE/poll: they came first.
    this._caughtUp = info.offset;
    if (!this._readySettled) {
      this._readySettled = true;
      this._resolveReady({ epoch: info.epoch, offset: info.offset, recovered: Boolean(info.recovered) });
    }
    this._checkCaughtUp();
  }

  _failed(error) {
    this.active = false;
    this.established = false;
    this.herald._subs.delete(this.channel);
    if (!this._readySettled) {
      this._readySettled = true;
      this._rejectReady(error);
    }
    this._call("onError", error);
  }

  // A message from any transport. Returns once it is delivered, dropped or parked.
  _message(msg) {
    if (!this.active) return;
    if (this._selfPending > 0) {
      // A skip-self publish of ours is in flight: until its offset is known, a message after
      // it would look like a gap (the server did not send us our own).
      this._held.push(msg);
      return;
    }
    if (this._filling) {
      if (this._buffer.length >= this.herald.options.maxBuffered) {
        this._buffer = [];
        this._filling = false;
        this.herald._resync(this, "too many messages while filling a gap");
        return;
      }
      this._buffer.push(msg);
      return;
    }
    // Our own skip-self publications are not delivered: step over their offsets.
    while (this.position && this.position.epoch === msg.epoch && this._skip.delete(`${msg.epoch}:${this.position.offset + 1}`)) {
      this.position = { epoch: msg.epoch, offset: this.position.offset + 1 };
    }
    const verdict = classify(this.position, msg.epoch, msg.offset);
    if (verdict === "duplicate") return;
    if (verdict === "gap") {
      this._buffer.push(msg);
      this._filling = true;
      this.herald._fill(this);
      return;
    }
    if (verdict === "epoch") {
      // History was lost between our position and this message: say so, then go on from it.
      const previous = this.position;
      this.position = { epoch: msg.epoch, offset: msg.offset - 1 };
      this._call("onReset", { channel: this.channel, epoch: msg.epoch, offset: msg.offset - 1, solicited: false, previous });
    }
    this.position = { epoch: msg.epoch, offset: msg.offset };
    this.herald._sawMessage(this, msg);
    if (!this._skip.delete(`${msg.epoch}:${msg.offset}`)) this._call("onMessage", msg);
    this._checkCaughtUp();
  }

  // An own skip-self publication got its position (or failed): release what waited for it.
  _selfDone(ack) {
    this._selfPending--;
    if (ack && !(this.position && this.position.epoch === ack.epoch && ack.offset <= this.position.offset)) {
      this._skip.add(`${ack.epoch}:${ack.offset}`);
      if (this._skip.size > 10000) this._skip.clear(); // bounded; at worst an own copy shows
    }
    if (this._selfPending > 0) return;
    const held = this._held;
    this._held = [];
    for (const msg of held) this._message(msg);
    this._checkCaughtUp();
  }

  // History filled a gap: deliver it, then what waited.
  _filled(messages, recovered, position) {
    this._filling = false;
    const waiting = this._buffer;
    this._buffer = [];
    if (!recovered) {
      const previous = this.position;
      this.position = { epoch: position.epoch, offset: position.offset };
      this._call("onReset", { channel: this.channel, epoch: position.epoch, offset: position.offset, solicited: false, previous });
    }
    for (const m of messages) this._message(m);
    for (const m of waiting) this._message(m);
  }

  _checkCaughtUp() {
    if (this._caughtUp !== null && this.position && this.position.offset >= this._caughtUp && !this._filling) {
      this._caughtUp = null;
      this.herald._recoveryComplete(this);
    }
  }
}

// ---------------------------------------------------------------------------------- transports

// Every transport calls back into the Herald instance with: _welcome(info), _subscribedFrame(
// channel, info, id), _deliver(msg), _presenceEvent(kind, frame), _broadcast(data), _lost(code,
// reason, {established}). Those of a superseded transport are ignored (the generation check).

class WebSocketTransport {
  constructor(herald, gen, token) {
    this.name = "websocket";
    this.herald = herald;
    this.gen = gen;
    this.pending = new Map();
    this.nextId = 1;
    this.established = false;
    const url = herald._endpoint("/ws", true);
    if (token) url.searchParams.set("token", token);
    else if (herald.options.user) url.searchParams.set("user", herald.options.user);
    this.ws = new WebSocket(url);
    this.ws.binaryType = "arraybuffer";
    this.ws.onmessage = (event) => this._frame(event.data);
    this.ws.onclose = (event) => this._closed(event.code, event.reason);
    this.ws.onerror = () => {}; // onclose follows with the code
  }

  live() {
    return this.herald._gen === this.gen;
  }

  _frame(data) {
    if (!this.live()) return;
    this.lastSeen = Date.now();
    if (typeof data !== "string") return this._binary(new Uint8Array(data));
    let frame;
    try {
      frame = JSON.parse(data);
    } catch (_) {
      return;
    }
    const h = this.herald;
    switch (frame.op) {
      case "welcome":
        this.established = true;
        this._startPing(Number(frame.ping_interval) || 25);
        h._welcome({ node: frame.node, client: frame.client, user: frame.user });
        return;
      case "subscribed":
        this._settle(frame);
        h._subscribedFrame(frame.channel, frame, frame.id);
        return;
      case "message":
        frame.data = decodeData(frame.data);
        h._deliver(frame);
        return;
      case "join":
      case "leave":
        h._presenceEvent(frame.op, frame);
        return;
      case "broadcast":
        h._emit("broadcast", frame.data);
        return;
      case "error":
        if (!this._settle(frame)) h._emit("error", errorFromFrame(frame));
        return;
      default:
        this._settle(frame);
    }
  }

  _binary(bytes) {
    const n = bytes[0];
    if (!n || bytes.length < 1 + n + 8) return;
    const channel = new TextDecoder().decode(bytes.subarray(1, 1 + n));
    const view = new DataView(bytes.buffer, bytes.byteOffset + 1 + n, 8);
    const offset = Number(view.getBigUint64(0));
    const sub = this.herald._subs.get(channel);
    const epoch = sub && sub.position ? sub.position.epoch : "";
    this.herald._deliver({ op: "message", channel, epoch, offset, data: bytes.slice(1 + n + 8) });
  }

  _settle(frame) {
    const p = frame.id !== undefined && this.pending.get(frame.id);
    if (!p) return false;
    this.pending.delete(frame.id);
    clearTimeout(p.timer);
    if (frame.op === "error") p.reject(errorFromFrame(frame));
    else p.resolve(frame);
    return true;
  }

  _startPing(intervalSecs) {
    // Browsers answer the server's protocol pings but never show them to scripts: an
    // application ping is how this side notices a connection that died silently.
    const every = Math.max(1, intervalSecs) * 1000;
    this.pingTimer = setInterval(() => {
      this.request({ op: "ping" }, this.herald.options.pongTimeout).catch(() => {
        if (this.live() && this.ws.readyState === WebSocket.OPEN) this.ws.close(4000, "no pong");
        this._closed(4000, "no pong"); // a dead socket may take long to report its close
      });
    }, every);
  }

  request(frame, timeout = this.herald.options.requestTimeout) {
    return new Promise((resolve, reject) => {
      if (this.ws.readyState !== WebSocket.OPEN) {
        // Closing (the server's close frame came, the close event not yet): nothing was sent.
        const error = new HeraldError("not connected", { reason: "closed", temporary: true });
        error.notSent = true;
        reject(error);
        return;
      }
      const id = this.nextId++;
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new HeraldError("no reply in time", { reason: "timeout", temporary: true }));
      }, timeout);
      this.pending.set(id, { resolve, reject, timer });
      this.ws.send(JSON.stringify({ ...frame, id }));
    });
  }

  subscribe(sub, token) {
    const frame = { op: "subscribe", channel: sub.channel };
    if (sub.position) frame.since = sub.position;
    if (token) frame.token = token;
    this.request(frame).catch((err) => this.herald._subscribeFailed(sub, err, this.gen));
  }

  unsubscribe(sub) {
    this.request({ op: "unsubscribe", channel: sub.channel }).catch(() => {});
  }

  publish(channel, data, options) {
    if (data instanceof ArrayBuffer || ArrayBuffer.isView(data)) return this._publishBinary(channel, data);
    const frame = { op: "publish", channel, data };
    if (options.skipSelf) frame.skip_self = true;
    return this.request(frame);
  }

  _publishBinary(channel, data) {
    const name = new TextEncoder().encode(channel);
    const payload = data instanceof ArrayBuffer ? new Uint8Array(data) : new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    const id = this.nextId++;
    const frame = new Uint8Array(1 + name.length + 4 + payload.length);
    frame[0] = name.length;
    frame.set(name, 1);
    new DataView(frame.buffer).setUint32(1 + name.length, id);
    frame.set(payload, 1 + name.length + 4);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new HeraldError("no reply in time", { reason: "timeout", temporary: true }));
      }, this.herald.options.requestTimeout);
      this.pending.set(id, { resolve, reject, timer });
      this.ws.send(frame);
    });
  }

  presence(channel, token) {
    return this.request({ op: "presence", channel, ...(token ? { token } : {}) }).then((r) => r.clients);
  }

  history(channel, query, token) {
    const frame = { op: "history", channel };
    if (query.since) frame.since = query.since;
    if (query.limit !== undefined) frame.limit = query.limit;
    if (token) frame.token = token;
    return this.request(frame).then((r) => ({ ...r, messages: r.messages.map((m) => ({ ...m, data: decodeData(m.data) })) }));
  }

  refresh(token) {
    return this.request({ op: "refresh", token });
  }

  close() {
    this._stop();
    try {
      this.ws.close(1000, "bye");
    } catch (_) {
      // already closed
    }
  }

  _stop() {
    clearInterval(this.pingTimer);
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(new HeraldError("connection closed", { reason: "closed", temporary: true, unknownOutcome: true }));
    }
    this.pending.clear();
  }

  _closed(code, reason) {
    if (this.done) return;
    this.done = true;
    this._stop();
    if (this.live()) this.herald._lost(code, reason, { established: this.established, transport: this });
  }

  get proven() {
    return this.established;
  }
}

// SSE for receiving, POST /publish and GET /presence, /history for the rest.
class HttpTransport {
  constructor(herald, gen, token) {
    this.herald = herald;
    this.gen = gen;
    this.token = token;
    this.client = null; // our SSE connection id: names us on POST /publish (skip_self)
  }

  live() {
    return this.herald._gen === this.gen;
  }

  _query(url, extra) {
    if (this.token) url.searchParams.set("token", this.token);
    else if (this.herald.options.user) url.searchParams.set("user", this.herald.options.user);
    for (const [k, v] of Object.entries(extra || {})) if (v !== undefined && v !== null) url.searchParams.set(k, v);
    return url;
  }

  async _fetch(url, init = {}, named = null) {
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), this.herald.options.requestTimeout);
    const headers = { ...(init.headers || {}) };
    if (this.token) headers.Authorization = "Bearer " + this.token;
    let response;
    try {
      response = await fetch(url, { ...init, headers, cache: "no-store", credentials: "same-origin", signal: abort.signal });
    } catch (err) {
      throw new HeraldError("network: " + err.message, { reason: "network", temporary: true, unknownOutcome: true });
    } finally {
      clearTimeout(timer);
    }
    if (!response.ok) {
      const error = await errorFromResponse(response);
      // A proxy's 502/504 may hide an edge that did the work; an edge's own 503 (code 111) did not.
      error.unknownOutcome = (response.status === 502 || response.status === 504) && !error.code;
      // A POST naming our stream (`client`) that reached another edge (the stream's edge is
      // gone and the proxy failed over): refused, nothing published; the stream must move too.
      error.moved = response.status === 403 && named !== undefined && named !== null;
      throw error;
    }
    const node = response.headers.get("x-herald-node");
    if (node) this.herald._setNode(node);
    return response.json();
  }

  publish(channel, data, options) {
    if (data instanceof ArrayBuffer || ArrayBuffer.isView(data)) {
      return Promise.reject(new HeraldError("binary data needs the WebSocket transport", { reason: "bad_request" }));
    }
    const body = { channel, data };
    if (this.client && !this.herald._crossOrigin) body.client = this.client;
    if (options.skipSelf) body.skip_self = true;
    return this._fetch(
      this.herald._endpoint("/publish"),
      { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) },
      body.client,
    );
  }

  presence(channel, token) {
    const client = this.herald._crossOrigin ? null : this.client;
    const url = this._query(this.herald._endpoint("/presence"), { channel, channel_token: token, client });
    return this._fetch(url).then((r) => r.clients);
  }

  history(channel, query, token) {
    const since = query.since ? `${query.since.epoch}:${query.since.offset}` : undefined;
    const client = this.herald._crossOrigin ? null : this.client;
    const url = this._query(this.herald._endpoint("/history"), { channel, since, limit: query.limit, channel_token: token, client });
    return this._fetch(url).then((r) => ({ ...r, messages: r.messages.map((m) => ({ ...m, data: decodeData(m.data) })) }));
  }

  refresh(token) {
    this.token = token;
    return Promise.resolve();
  }
}

class SseTransport extends HttpTransport {
  constructor(herald, gen, token) {
    super(herald, gen, token);
    this.name = "sse";
    this.established = false;
    this.source = null;
    this.restart();
  }

  // One stream carries every subscription; a change of the set opens a new stream that resumes
  // every channel from its position (a cursor made of them).
  restart() {
    clearInterval(this.watchdog);
    if (this.source) this.source.close();
    this.source = null;
    this.streamGen = (this.streamGen || 0) + 1;
    const streamGen = this.streamGen;
    const subs = this.herald._activeSubs();
    if (!subs.length) {
      // Nothing to stream: POST and GET work without a stream.
      if (!this.established) {
        this.established = true;
        queueMicrotask(() => this.live() && this.herald._welcome({ node: null, client: null, user: undefined }, false));
      }
      return;
    }
    const url = this._query(this.herald._endpoint("/sse"));
    const positions = {};
    for (const sub of subs) {
      url.searchParams.append("channel", sub.channel);
      if (sub.position) positions[sub.channel] = sub.position;
    }
    const tokens = subs.map((s) => s._tokenValue || "");
    if (tokens.some(Boolean)) for (const t of tokens) url.searchParams.append("channel_token", t);
    if (Object.keys(positions).length) url.searchParams.set("since", encodeCursor(positions));
    const source = new EventSource(url, { withCredentials: false });
    this.source = source;
    this.subs = subs;
    const current = () => this.live() && this.streamGen === streamGen;
    clearTimeout(this.welcomeTimer);
    this.welcomeTimer = setTimeout(() => current() && !this.welcomed && this._end(0, "no welcome on the stream in time"), this.herald.options.connectTimeout);
    this.welcomed = false;
    const json = (event) => {
      try {
        return JSON.parse(event.data);
      } catch (_) {
        return null;
      }
    };
    source.addEventListener("welcome", (event) => {
      if (!current()) return;
      const w = json(event) || {};
      clearTimeout(this.welcomeTimer);
      this.welcomed = true;
      this.proven = true;
      this.client = w.client;
      this.streamNode = w.node;
      this._watch(current, Number(w.ping_interval) || 0);
      this.herald._setNode(w.node);
      this.herald.client = w.client;
      if (w.user !== undefined) this.herald.user = w.user;
      if (!this.established) {
        this.established = true;
        this.herald._welcome({ node: w.node, client: w.client, user: w.user });
      } else {
        this.herald._proven();
      }
    });
    source.addEventListener("subscribed", (event) => {
      if (!current()) return;
      const info = json(event);
      if (info) this.herald._subscribedFrame(info.channel, info, this.subs.some((s) => s.channel === info.channel && !s.established) ? 1 : undefined);
    });
    source.onmessage = (event) => {
      if (!current()) return;
      const msg = json(event);
      if (msg) {
        msg.data = decodeData(msg.data);
        this.herald._deliver(msg);
      }
    };
    for (const kind of ["join", "leave"]) {
      source.addEventListener(kind, (event) => current() && this.herald._presenceEvent(kind, json(event) || {}));
    }
    source.addEventListener("broadcast", (event) => current() && this.herald._emit("broadcast", (json(event) || {}).data ?? json(event)));
    source.addEventListener("close", (event) => {
      if (!current()) return;
      const c = json(event) || {};
      this._end(c.code || 0, c.reason || "closed by the server");
    });
    // EventSource would retry by itself, at a fixed pace and with the URL's old cursor: take
    // over, and learn why it failed (an EventSource never shows the HTTP status).
    source.onerror = () => {
      if (!current()) return;
      source.close();
      this._diagnose(url).then((result) => current() && this._end(result.code, result.reason, result.error));
    };
  }

  // The heartbeat: the server sends a `ping` event every `ping_interval` seconds (any event
  // counts). A stream silent for two intervals and a bit is dead (a half-open connection, a
  // proxy that stopped forwarding) even if the browser has not noticed: move on.
  _watch(current, intervalSecs) {
    clearInterval(this.watchdog);
    if (!intervalSecs) return; // an edge too old to name its heartbeat
    const limit = intervalSecs * 2000 + this.herald.options.pongTimeout;
    this.lastEvent = Date.now();
    const seen = () => (this.lastEvent = Date.now());
    for (const kind of ["ping", "message", "subscribed", "join", "leave", "broadcast"]) this.source.addEventListener(kind, seen);
    this.watchdog = setInterval(() => {
      if (!current()) return clearInterval(this.watchdog);
      if (Date.now() - this.lastEvent > limit) {
        clearInterval(this.watchdog);
        this._end(4000, "no heartbeat on the stream");
      }
    }, Math.min(limit, intervalSecs * 1000));
  }

  async _diagnose(url) {
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), 3000);
    try {
      const response = await fetch(url, { cache: "no-store", signal: abort.signal });
      if (response.ok) return { code: 0, reason: "stream interrupted" };
      const error = await errorFromResponse(response);
      const code = response.status === 401 ? (error.code === 113 ? 4010 : 4501) : response.status === 429 ? 4029 : 0;
      return { code, reason: error.message, error };
    } catch (_) {
      return { code: 0, reason: "stream interrupted" };
    } finally {
      clearTimeout(timer);
      abort.abort();
    }
  }

  _end(code, reason, error) {
    if (this.done) return;
    if (error && error.code && (error.status === 400 || error.status === 403)) {
      // A refused channel fails that subscription; the stream goes on with the others.
      const refused = this.subs && refusedSub(this.subs, error);
      if (refused) {
        this.herald._subscribeFailed(refused, error, this.gen);
        this.subs = null;
        return this._scheduleRestart();
      }
      code = 1008;
    }
    this.done = true;
    clearTimeout(this.welcomeTimer);
    clearInterval(this.watchdog);
    if (this.source) this.source.close();
    this.herald._lost(code, reason, { established: Boolean(this.proven), transport: this, error });
  }

  subscribe(sub) {
    if (!this.subs || !this.subs.includes(sub)) this._scheduleRestart();
  }

  unsubscribe() {
    this._scheduleRestart();
  }

  _scheduleRestart() {
    if (this.restartQueued) return;
    this.restartQueued = true;
    queueMicrotask(() => {
      this.restartQueued = false;
      if (this.live() && !this.done) this.restart();
    });
  }

  refresh(token) {
    this.token = token;
    this._scheduleRestart(); // the stream's URL holds the token: resume on a new stream
    return Promise.resolve();
  }

  close() {
    this.done = true;
    clearInterval(this.watchdog);
    if (this.source) this.source.close();
  }
}

class PollTransport extends HttpTransport {
  constructor(herald, gen, token) {
    super(herald, gen, token);
    this.name = "poll";
    this.established = false;
    this.abort = null;
    this.loop();
  }

  async loop() {
    const h = this.herald;
    let catchingUp = true; // short polls until a reply comes back empty, then long ones
    while (this.live() && !this.done) {
      const subs = h._activeSubs();
      if (!subs.length) {
        if (!this.established) {
          this.established = true;
          h._welcome({ node: null, client: null, user: undefined }, false);
        }
        await new Promise((resolve) => (this.wake = resolve));
        catchingUp = true;
        continue;
      }
      const positions = {};
      const url = this._query(h._endpoint("/poll"));
      for (const sub of subs) {
        url.searchParams.append("channel", sub.channel);
        if (sub.position) positions[sub.channel] = sub.position;
      }
      const tokens = subs.map((s) => s._tokenValue || "");
      if (tokens.some(Boolean)) for (const t of tokens) url.searchParams.append("channel_token", t);
      if (Object.keys(positions).length) url.searchParams.set("cursor", encodeCursor(positions));
      this.polling = subs;
      const fresh = subs.some((s) => !s.established);
      const wait = catchingUp || fresh ? 0 : h.options.pollTimeout;
      url.searchParams.set("timeout", String(wait));
      this.abort = new AbortController();
      const timer = setTimeout(() => this.abort.abort(), wait * 1000 + h.options.requestTimeout);
      let body;
      try {
        const response = await fetch(url, { cache: "no-store", signal: this.abort.signal });
        if (!response.ok) {
          const error = await errorFromResponse(response);
          let code = response.status === 401 ? (error.code === 113 ? 4010 : 4501) : response.status === 429 ? 4029 : 0;
          if (error.code && (response.status === 400 || response.status === 403)) {
            // A refused channel fails that subscription, not the connection.
            const refused = refusedSub(subs, error);
            if (refused) {
              h._subscribeFailed(refused, error, this.gen);
              continue;
            }
            code = 1008;
          }
          return this._end(code, error.message, error);
        }
        const node = response.headers.get("x-herald-node");
        if (node) h._setNode(node);
        body = await response.json();
      } catch (err) {
        if (this.restarting) {
          this.restarting = false;
          continue;
        }
        return this._end(0, "poll failed: " + err.message);
      } finally {
        clearTimeout(timer);
      }
      if (!this.live() || this.done) return;
      this.proven = true;
      if (!this.established) {
        this.established = true;
        h._welcome({ node: h.node, client: null, user: undefined });
      } else {
        h._proven();
      }
      for (const msg of body.messages) {
        msg.data = decodeData(msg.data);
        h._deliver(msg);
      }
      // The returned cursor is where each channel now stands. A channel the cursor puts
      // elsewhere than the messages did was reset by the server (recovered: false).
      const after = decodeCursor(body.cursor) || {};
      for (const sub of subs) {
        const p = after[sub.channel];
        if (!p || !sub.active) continue;
        const consistent = sub.position && sub.position.epoch === p.epoch && sub.position.offset === p.offset;
        if (!sub.established || !consistent) {
          const recovered = consistent || (body.recovered && !sub.position) || (sub.position && sub.position.epoch === "" && p.offset === 0);
          h._subscribedFrame(sub.channel, { epoch: p.epoch, offset: p.offset, recovered: Boolean(recovered) }, sub.established ? undefined : 1);
        }
      }
      catchingUp = body.messages.length > 0;
      if (h.options.pollTimeout === 0 && !catchingUp) {
        await new Promise((resolve) => {
          this.wake = resolve;
          setTimeout(resolve, h.options.pollInterval);
        });
      }
    }
  }

  _end(code, reason, error) {
    if (this.done) return;
    this.done = true;
    this.herald._lost(code, reason, { established: Boolean(this.proven), transport: this, error });
  }

  _poke() {
    // The set of channels changed: end the wait now and poll again with the new set.
    if (this.wake) this.wake();
    if (this.abort) {
      this.restarting = true;
      this.abort.abort();
    }
  }

  subscribe(sub) {
    if (!this.polling || !this.polling.includes(sub)) this._poke();
  }

  unsubscribe() {
    this._poke();
  }

  close() {
    this.done = true;
    if (this.abort) this.abort.abort();
    if (this.wake) this.wake();
  }
}

const TRANSPORTS = { websocket: WebSocketTransport, sse: SseTransport, poll: PollTransport };

// ---------------------------------------------------------------------------------- client

/** A connection to a Herald cluster that survives edges, proxies and networks. */
export class Herald {
  constructor(url, options = {}) {
    this.options = { ...DEFAULTS };
    for (const [k, v] of Object.entries(options)) if (v !== undefined) this.options[k] = v;
    const base = new URL(url || globalThis.location.href, globalThis.location && globalThis.location.href);
    base.search = "";
    base.hash = "";
    this._base = base;
    // A page on another origin than the edge (the edge must list it in `allowed_origins`):
    // no cookie reaches the edge, so a POST cannot be routed to the stream's edge by affinity
    // and names no stream (`client`); skipSelf is then applied here.
    this._crossOrigin = Boolean(globalThis.location && base.origin !== globalThis.location.origin);
    for (const t of this.options.transports) {
      if (!TRANSPORTS[t]) throw new HeraldError(`unknown transport ${t}`, { reason: "bad_request" });
    }
    /** "connecting" | "connected" | "disconnected" | "closed" */
    this.state = "disconnected";
    /** The transport in use ("websocket" | "sse" | "poll"), or null. */
    this.transport = null;
    this.node = null; // the edge that welcomed us (WebSocket, SSE) or answered last (poll)
    this.client = null; // our connection id on that edge
    this.user = null; // the user the server says we are ("" when anonymous)
    this._subs = new Map();
    this._listeners = new Map();
    this._gen = 0;
    this._conn = null;
    this._attempt = 0;
    this._level = 0; // index into options.transports
    this._worked = -1; // the best transport level that has connected
    this._outbox = []; // publishes waiting for a connection
    this._pubSeq = 0; // publish order, kept when a publish goes back into the outbox
    this._unsure = []; // publishes whose connection died before the ack
    this._token = null;
    this._tokenFresh = false;
    this._closedByUser = false;
    // The browser knows about the network before any socket does: when it goes offline the
    // connection is dropped (an open socket may linger unusable for a long while), and when it
    // comes back the reconnect starts at once instead of waiting out the backoff.
    this._onOnline = () => {
      if (this.state === "disconnected" && !this._closedByUser) this._connectNow();
    };
    this._onOffline = () => {
      if (this._closedByUser || this.state === "closed" || this.state === "disconnected") return;
      if (this._conn) this._conn.close();
      this._lost(0, "the browser went offline", { established: true });
    };
    if (globalThis.addEventListener) {
      globalThis.addEventListener("online", this._onOnline);
      globalThis.addEventListener("offline", this._onOffline);
    }
    if (options.autoConnect !== false) queueMicrotask(() => this.state === "disconnected" && !this._closedByUser && this.connect());
  }

  // ------------------------------------------------------------------ events

  /** Listens for "state", "transport", "error", "broadcast", "join", "leave". Returns an off function. */
  on(event, fn) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(fn);
    return () => this.off(event, fn);
  }

  off(event, fn) {
    const set = this._listeners.get(event);
    if (set) set.delete(fn);
  }

  _emit(event, value) {
    for (const fn of [...(this._listeners.get(event) || [])]) {
      try {
        fn(value);
      } catch (err) {
        setTimeout(() => {
          throw err;
        });
      }
    }
  }

  _setState(state) {
    if (this.state === state) return;
    this.state = state;
    this._emit("state", state);
  }

  _setNode(node) {
    if (node) this.node = node;
  }

  _endpoint(path, websocket = false) {
    const url = new URL(this._base);
    url.pathname = url.pathname.replace(/\/+$/, "") + path;
    if (websocket) url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    return url;
  }

  // ------------------------------------------------------------------ connection lifecycle

  /** Connects (done by the constructor unless `autoConnect: false`). */
  connect() {
    if (this._closedByUser && globalThis.addEventListener) {
      globalThis.addEventListener("online", this._onOnline);
      globalThis.addEventListener("offline", this._onOffline);
    }
    this._closedByUser = false;
    if (this.state === "connecting" || this.state === "connected") return;
    this._connectNow();
  }

  async _connectNow() {
    clearTimeout(this._retryTimer);
    this._teardown();
    const gen = ++this._gen;
    this._setState("connecting");
    let token;
    try {
      token = await this._getToken();
    } catch (err) {
      if (gen !== this._gen) return;
      this._emit("error", err instanceof HeraldError ? err : new HeraldError("token: " + err.message, { reason: "token", temporary: true }));
      this._setState("disconnected");
      return this._scheduleReconnect(backoff(this._attempt++, this.options.minReconnectDelay, this.options.maxReconnectDelay));
    }
    if (gen !== this._gen) return;
    // Channel tokens first: SSE and poll carry them in the URL of the first request.
    for (const sub of this._activeSubs()) {
      try {
        sub._tokenValue = await this._channelToken(sub);
      } catch (err) {
        sub._failed(err instanceof HeraldError ? err : new HeraldError("channel token: " + err.message, { reason: "token" }));
      }
      if (gen !== this._gen) return;
    }
    const name = this.options.transports[this._level];
    this._conn = new TRANSPORTS[name](this, gen, token);
    if (this.transport !== name) {
      this.transport = name;
      this._emit("transport", name);
    }
    clearTimeout(this._welcomeTimer);
    this._welcomeTimer = setTimeout(() => {
      if (gen === this._gen && !this._conn.established) {
        this._conn.close();
        this._lost(0, "no welcome in time", { established: false, transport: this._conn });
      }
    }, this.options.connectTimeout);
  }

  async _getToken() {
    const source = this.options.token;
    if (source === undefined || source === null) return null;
    if (typeof source === "string") return source;
    if (this._token && this._tokenFresh) return this._token;
    const token = await source();
    if (typeof token !== "string" || !token) throw new HeraldError("the token function gave no token", { reason: "token", temporary: true });
    this._token = token;
    this._tokenFresh = true;
    return token;
  }

  _teardown() {
    clearTimeout(this._welcomeTimer);
    clearTimeout(this._refreshTimer);
    clearTimeout(this._betterTimer);
    if (this._conn) {
      const conn = this._conn;
      this._conn = null;
      this._gen++;
      conn.close();
    }
    for (const sub of this._subs.values()) sub.established = false;
  }

  // The transport said welcome: subscribe everything, flush the outbox.
  _welcome(info, proven = true) {
    clearTimeout(this._welcomeTimer);
    if (proven) this._proven();
    if (info.node) this.node = info.node;
    this.client = info.client || null;
    if (info.user !== undefined) this.user = info.user;
    this._setState("connected");
    // Subscribe before the waiting publishes go out (channel tokens were fetched before the
    // connection): a resumed channel then delivers our own publishes after the resume point.
    for (const sub of this._subs.values()) {
      if (!sub.active || !this._conn) continue;
      if (sub.token && sub._tokenValue === undefined) this._sendSubscribe(sub); // subscribed while connecting
      else this._conn.subscribe(sub, sub._tokenValue);
    }
    this._scheduleRefresh();
    this._flush();
    if (this._level > 0 && this.options.retryBetterTransportAfter > 0) {
      clearTimeout(this._betterTimer);
      this._betterTimer = setTimeout(() => {
        // A quiet try of the better transport; if it fails before its welcome, we come back.
        if (this.state === "connected") {
          this._level = 0;
          this._connectNow();
        }
      }, this.options.retryBetterTransportAfter);
    }
  }

  // The transport delivered something from the server: it works here.
  _proven() {
    this._attempt = 0;
    this._rejected401 = false;
    this._worked = this._worked < 0 ? this._level : Math.min(this._worked, this._level);
  }

  async _sendSubscribe(sub) {
    const gen = this._gen;
    let token;
    try {
      token = await this._channelToken(sub);
    } catch (err) {
      return this._subscribeFailed(sub, err instanceof HeraldError ? err : new HeraldError("channel token: " + err.message, { reason: "token" }), gen);
    }
    if (gen !== this._gen || !this._conn || !sub.active) return;
    sub._tokenValue = token;
    this._conn.subscribe(sub, token);
  }

  async _channelToken(sub) {
    if (!sub.token) return undefined;
    return typeof sub.token === "function" ? await sub.token(sub.channel) : sub.token;
  }

  _subscribeFailed(sub, error, gen) {
    if (gen !== this._gen) return;
    if (error.temporary) {
      // A broker hiccup or a timeout: the connection will be retried as a whole.
      if (this._conn) this._conn.close();
      this._lost(0, error.message, { established: true, transport: this._conn });
      return;
    }
    sub._failed(error);
  }

  _subscribedFrame(channel, info, id) {
    const sub = this._subs.get(channel);
    if (!sub || !sub.active) return;
    sub._subscribed(info, id !== undefined && id !== null);
  }

  _deliver(msg) {
    // SSE and poll resumes deliver the recovered messages before the channel's `subscribed`.
    const sub = this._subs.get(msg.channel);
    if (sub && sub.active) sub._message(msg);
  }

  _presenceEvent(kind, frame) {
    const sub = this._subs.get(frame.channel);
    if (sub) sub._call(kind === "join" ? "onJoin" : "onLeave", frame);
    this._emit(kind, frame);
  }

  _activeSubs() {
    return [...this._subs.values()].filter((s) => s.active);
  }

  // A transport ended. Decide: next transport, reconnect (when), or stop.
  _lost(code, reason, { established, error } = {}) {
    if (this._closedByUser) return;
    this._teardown();
    this.client = null;
    this._setState("disconnected");
    this._emit("error", error || new HeraldError(reason || `closed (${code})`, { code, reason: "closed", temporary: !isTerminal(code) }));
    if (code === 4501 && this._tokenFresh && typeof this.options.token === "function" && !this._rejected401) {
      // Refused with a token we had kept: one more try with a fresh one.
      this._rejected401 = true;
      this._tokenFresh = false;
      return this._scheduleReconnect(0);
    }
    if (isTerminal(code)) {
      this._fail(new HeraldError(`the server closed the connection for good (${code} ${reason || ""})`.trim(), { code, reason: "closed" }));
      return;
    }
    if (code === 4010 && typeof this.options.token === "string") {
      // A fixed token cannot be renewed: reconnecting with it would be refused again.
      this._fail(new HeraldError("the connection token expired; give a token function to renew it", { code, reason: "token_expired" }));
      return;
    }
    if (code === 4010) {
      this._tokenFresh = false; // expired: ask the application for a new one, at once
      return this._scheduleReconnect(this._attempt++ === 0 ? 0 : backoff(this._attempt, this.options.minReconnectDelay, this.options.maxReconnectDelay));
    }
    const last = this.options.transports.length - 1;
    if (!established && (this._worked < 0 || this._worked > this._level)) {
      // This transport never worked here (a blocked upgrade, a buffering proxy) or a quiet try
      // of a better one failed: the next one, now. After the last, around again with backoff.
      if (this._level < last) {
        this._level++;
        return this._scheduleReconnect(0);
      }
      if (this._worked < 0) this._level = 0;
    }
    if (code === 1012) return this._scheduleReconnect(Math.random() * 1000); // drained: come back soon, spread out
    const o = this.options;
    let delay = backoff(this._attempt++, o.minReconnectDelay, o.maxReconnectDelay);
    if (code === 4029) delay = Math.max(delay, (error && error.retryAfter) * 1000 || 0, o.maxReconnectDelay / 2 + Math.random() * (o.maxReconnectDelay / 2));
    this._scheduleReconnect(delay);
  }

  _scheduleReconnect(delay) {
    clearTimeout(this._retryTimer);
    this._retryTimer = setTimeout(() => this._connectNow(), delay);
  }

  _fail(error) {
    this._setState("closed");
    this._rejectOutbox(error);
    for (const sub of this._subs.values()) if (!sub._readySettled) sub._failed(error);
  }

  // Renews the connection token before it expires (the server would close with 4010).
  _scheduleRefresh() {
    clearTimeout(this._refreshTimer);
    if (typeof this.options.token !== "function" || !this._token) return;
    const exp = tokenExpiry(this._token);
    if (!exp) return;
    const left = exp * 1000 - Date.now();
    const gen = this._gen;
    const lead = Math.max(1000, Math.min(60000, left / 5));
    this._refreshTimer = setTimeout(async () => {
      if (gen !== this._gen || !this._conn) return;
      this._tokenFresh = false;
      try {
        const token = await this._getToken();
        if (gen !== this._gen || !this._conn) return;
        await this._conn.refresh(token);
        this._scheduleRefresh();
      } catch (err) {
        this._emit("error", err); // the server ends the connection at exp (4010); we reconnect then
      }
    }, Math.max(0, left - lead));
  }

  /** Closes the connection for good; pending publishes are rejected. */
  close() {
    this._closedByUser = true;
    clearTimeout(this._retryTimer);
    this._teardown();
    if (globalThis.removeEventListener) {
      globalThis.removeEventListener("online", this._onOnline);
      globalThis.removeEventListener("offline", this._onOffline);
    }
    this._setState("closed");
    const closed = new HeraldError("closed", { reason: "closed" });
    this._rejectOutbox(closed);
    for (const sub of this._subs.values()) {
      if (!sub._readySettled) {
        sub._readySettled = true;
        sub._rejectReady(closed);
      }
    }
  }

  // ------------------------------------------------------------------ subscriptions

  /** Subscribes to `channel`; see herald.d.ts for the options. */
  subscribe(channel, options = {}) {
    if (this._subs.has(channel)) throw new HeraldError(`already subscribed to ${channel}`, { code: 109, reason: "already_subscribed" });
    const sub = new Subscription(this, channel, options);
    this._subs.set(channel, sub);
    if (this.state === "connected" && this._conn) this._sendSubscribe(sub);
    else if (this.state === "closed") sub._failed(new HeraldError("closed", { reason: "closed" }));
    return sub;
  }

  _unsubscribe(sub) {
    if (this._subs.get(sub.channel) === sub) this._subs.delete(sub.channel);
    // Also when not yet confirmed: a subscribe may be on its way (an error 110 is ignored).
    if (this._conn && this.state === "connected") this._conn.unsubscribe(sub);
    sub.established = false;
  }

  /** The subscription to `channel`, if any. */
  getSubscription(channel) {
    return this._subs.get(channel) || null;
  }

  // A gap in a live stream: read the missing offsets from history, then go on.
  async _fill(sub) {
    const gen = this._gen;
    try {
      let since = sub.position;
      const messages = [];
      for (;;) {
        const page = await this._conn.history(sub.channel, { since }, await this._channelToken(sub));
        if (gen !== this._gen) return;
        messages.push(...page.messages);
        if (!page.recovered) return sub._filled(messages, false, page);
        if (messages.length > this.options.maxBuffered) {
          sub._filling = false;
          sub._buffer = [];
          return this._resync(sub, "gap larger than maxBuffered");
        }
        if (!page.more || !page.messages.length) break;
        const last = page.messages[page.messages.length - 1];
        since = { epoch: last.epoch, offset: last.offset };
      }
      sub._filled(messages, true, null);
    } catch (err) {
      if (gen !== this._gen) return;
      // Could not read history: reconnect, and the resubscribe resumes from the position.
      sub._filling = false;
      sub._buffer = [];
      if (this._conn) this._conn.close();
      this._lost(0, "gap not filled: " + err.message, { established: true });
    }
  }

  _resync(sub, why) {
    this._emit("error", new HeraldError(`${sub.channel}: ${why}; resuming`, { reason: "resync", temporary: true }));
    if (this._conn) this._conn.close();
    this._lost(0, why, { established: true });
  }

  // ------------------------------------------------------------------ publish, presence, history

  /**
   * Publishes `data` (JSON, or bytes over WebSocket). Resolves with {epoch, offset}; rejects
   * with a HeraldError. While disconnected it waits (bounded count, `publishTimeout`); it is
   * never sent twice.
   */
  publish(channel, data, options = {}) {
    return new Promise((resolve, reject) => {
      if (this.state === "closed") return reject(new HeraldError("closed", { reason: "closed" }));
      if (this._outbox.length + this._unsure.length >= this.options.maxPendingPublishes) {
        return reject(new HeraldError("too many publishes waiting for a connection", { reason: "queue_full" }));
      }
      const item = { channel, data, options, resolve, reject, key: dataKey(data), attempt: 0, seq: this._pubSeq++ };
      item.timer = setTimeout(() => this._expire(item), options.timeout || this.options.publishTimeout);
      this._outbox.push(item);
      this._flush();
    });
  }

  _expire(item) {
    const inOutbox = this._outbox.indexOf(item);
    if (inOutbox >= 0) this._outbox.splice(inOutbox, 1);
    const unsure = this._unsure.indexOf(item);
    if (unsure >= 0) this._unsure.splice(unsure, 1);
    if ((item.sent || unsure >= 0) && !item.done) {
      // Sent and still unanswered: whether it was published is unknown. It is not resent.
      return this._settle(item, new HeraldError("no acknowledgement in time; it may or may not have been published", { reason: "unknown_outcome", temporary: true }));
    }
    this._settle(item, new HeraldError("not published: no connection in time", { reason: "timeout", temporary: true }));
  }

  _settle(item, error, ack) {
    if (item.done) return;
    item.done = true;
    clearTimeout(item.timer);
    if (error) item.reject(error);
    else item.resolve({ epoch: ack.epoch, offset: ack.offset });
  }

  _flush() {
    if (this.state !== "connected" || !this._conn) return;
    const conn = this._conn;
    const gen = this._gen;
    while (this._outbox.length && this._conn === conn) {
      const item = this._outbox.shift();
      if (item.done) continue;
      item.sent = true;
      item.gen = gen;
      item.from = this.client; // the connection it went out on (to recognise its echo)
      item.user = this.user;
      const sub = this._subs.get(item.channel);
      const holdSelf = item.options.skipSelf && sub && sub.active ? sub : null;
      if (holdSelf) holdSelf._selfPending++;
      conn.publish(item.channel, item.data, item.options).then(
        (ack) => {
          if (holdSelf) holdSelf._selfDone(ack);
          this._settle(item, null, ack);
        },
        (error) => {
          if (holdSelf) holdSelf._selfDone(null);
          if (item.done) return;
          if (this._closedByUser) {
            return this._settle(item, new HeraldError("closed before the acknowledgement; it may or may not have been published", { reason: "unknown_outcome" }));
          }
          if (error.notSent) {
            // The socket was already closing (a drain's close frame had arrived): nothing went
            // out. It waits for the next connection, in publish order, like any publish made
            // while disconnected.
            item.sent = false;
            const at = this._outbox.findIndex((o) => o.seq > item.seq);
            this._outbox.splice(at < 0 ? this._outbox.length : at, 0, item);
            return;
          }
          if (error.moved) {
            // Refused (nothing published) by an edge that does not hold our stream: the proxy
            // routed the POST elsewhere, because the stream's edge is gone or is marked failed
            // for a few seconds after a restart. Send it again after a pause (until the
            // publish's timeout); from the second refusal on, also move the stream.
            item.sent = false;
            item.moved = (item.moved || 0) + 1;
            if (item.moved >= 2 && gen === this._gen && this._conn === conn) {
              conn.close();
              this._lost(0, "publishes reach another edge than the stream's", { established: true });
            }
            setTimeout(() => {
              if (!item.done) {
                this._outbox.unshift(item);
                this._flush();
              }
            }, backoff(item.moved, this.options.minReconnectDelay, this.options.maxReconnectDelay));
          } else if (error.unknownOutcome || error.reason === "timeout") {
            // The connection died (or went quiet) with it in flight. The resumed subscription
            // tells whether it was published: it is sent again only if it was not. (Binary
            // frames carry no publisher, so a binary publish cannot be recognised: its outcome
            // stays unknown.)
            item.sent = false;
            if (item.key.startsWith("bin:")) {
              this._settle(item, new HeraldError("the connection closed before the acknowledgement; it may or may not have been published", { reason: "unknown_outcome", temporary: true }));
            } else {
              this._unsure.push(item);
            }
            if (gen === this._gen && this._conn === conn) {
              conn.close();
              this._lost(0, "publish outcome unknown: " + error.message, { established: true });
            } else {
              this._resolveUnsure(item.channel);
            }
          } else if (error.temporary && (error.code === 111 || error.code === 112 || error.status === 503 || error.status === 429)) {
            // Nothing was published (the edge said so): send it again after a pause.
            item.sent = false;
            setTimeout(() => {
              if (!item.done) {
                this._outbox.unshift(item);
                this._flush();
              }
            }, Math.max((error.retryAfter || 0) * 1000, backoff(item.attempt++, this.options.minReconnectDelay, this.options.maxReconnectDelay)));
          } else if (error.code === 113 || (error.status === 401 && typeof this.options.token === "function")) {
            item.sent = false;
            this._outbox.unshift(item);
            if (gen === this._gen) {
              // Our token expired: reconnect with a fresh one (the publish waits).
              this._tokenFresh = false;
              if (this._conn) this._conn.close();
              this._lost(4010, "token expired", { established: true });
            }
          } else {
            this._settle(item, error);
          }
        },
      );
    }
  }

  // Every message delivered on a channel during a resume is checked against the publishes
  // whose fate was unknown: our own echo (same connection id, or same user over polling, same
  // data) proves it was published.
  _sawMessage(sub, msg) {
    if (!this._unsure.length) return;
    const i = this._unsure.findIndex(
      (u) => u.channel === msg.channel && (u.from ? msg.from === u.from : u.user ? msg.user === u.user : !msg.from) && u.key === dataKey(msg.data),
    );
    if (i >= 0) {
      const [item] = this._unsure.splice(i, 1);
      this._settle(item, null, msg);
    }
  }

  // A subscription has caught up after a resume: publishes to it that were not seen were not
  // published, so they go out again (once).
  _recoveryComplete(sub) {
    this._resolveUnsure(sub.channel);
  }

  _resolveUnsure(channel) {
    const sub = this._subs.get(channel);
    const caughtUp = sub && sub.established && sub._caughtUp === null && !sub._filling;
    if (!caughtUp) {
      if (!sub || !sub.active) {
        // Not subscribed: its fate cannot be learned. Say so rather than risk a duplicate.
        for (const item of this._unsure.filter((u) => u.channel === channel)) {
          this._unsure.splice(this._unsure.indexOf(item), 1);
          this._settle(item, new HeraldError("the connection closed before the acknowledgement; it may or may not have been published", { reason: "unknown_outcome", temporary: true }));
        }
      }
      return; // resolved when the subscription has caught up (or the publish times out)
    }
    if (this.state !== "connected") return;
    const resend = this._unsure.filter((u) => u.channel === channel && u.gen !== this._gen);
    if (!resend.length) return;
    for (const item of resend) this._unsure.splice(this._unsure.indexOf(item), 1);
    this._outbox.unshift(...resend);
    this._flush();
  }

  _rejectOutbox(error) {
    for (const item of this._outbox) this._settle(item, error);
    // Those sent on a connection that died: whether they were published is not known.
    const unsure = new HeraldError(`${error.message}: it may or may not have been published`, { reason: "unknown_outcome", code: error.code });
    for (const item of this._unsure) this._settle(item, unsure);
    this._outbox = [];
    this._unsure = [];
  }

  /** Who is in `channel`: [{client, user, node, info?}]. */
  presence(channel, options = {}) {
    return this._read((conn) => conn.presence(channel, options.token));
  }

  /** A page of `channel`'s history after `since` (or the latest when none): {epoch, offset, recovered, more, messages}. */
  history(channel, options = {}) {
    return this._read((conn) => conn.history(channel, { since: options.since, limit: options.limit }, options.token));
  }

  async _read(fn) {
    if (this.state === "closed") throw new HeraldError("closed", { reason: "closed" });
    if (this.state !== "connected" || !this._conn) await this._connected(this.options.requestTimeout);
    return fn(this._conn);
  }

  _connected(timeout) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        off();
        reject(new HeraldError("not connected in time", { reason: "timeout", temporary: true }));
      }, timeout);
      const off = this.on("state", (s) => {
        if (s === "connected" || s === "closed") {
          clearTimeout(timer);
          off();
          if (s === "connected") resolve();
          else reject(new HeraldError("closed", { reason: "closed" }));
        }
      });
    });
  }
}

export default Herald;
