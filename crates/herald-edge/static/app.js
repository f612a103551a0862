// Herald browser demo: a chat with rooms over four transports.
//
// Plain JavaScript, no build step. The page keeps, per channel, the last position it has seen
// ({epoch, offset}) and the last cursor string the server gave it, and every reconnect resumes
// from there: WebSocket with `since`, SSE with `?since=<last event id>`, polling with `cursor`.
// When the server says `recovered: false` the page shows a notice: that flag is the only way
// Herald ever signals loss.
//
// Identity: an edge with a key configured wants a JWT connection token. A real application's
// backend would sign it; this demo asks the edge's DEVELOPMENT-ONLY endpoint
// `GET /dev/token?user=<name>` (off unless `[auth] dev_token_endpoint = true`). When that answers
// 404 the page connects without a token and names itself with `?user=`, as an anonymous client.
// With a token it goes on every transport: `?token=` on the WebSocket, SSE and poll URLs,
// `Authorization: Bearer` on POST /publish; the server then takes the user from the token (and
// refuses `?user=`). The token is renewed shortly before it expires (a live WebSocket with the
// `refresh` op, an SSE stream by resuming with the new token, polls just use it).
//
// For automated tests the state is exposed as `window.heraldDemo` (see the end of the file).

'use strict';

(function () {
  // ---------------------------------------------------------------------------------------
  // Settings

  const TRANSPORTS = {
    ws: 'WebSocket',
    sse: 'SSE + POST',
    longpoll: 'Long-poll',
    poll: 'Short poll (1 s)',
  };
  const BACKOFF_BASE_MS = 500;
  const BACKOFF_CAP_MS = 10000;
  const LONG_POLL_SECS = 25;
  const SHORT_POLL_EVERY_MS = 1000;
  const PRESENCE_EVERY_MS = 5000;
  const REQUEST_TIMEOUT_MS = 10000;
  const ROOM_PATTERN = /^[A-Za-z0-9_.@/-]{1,64}$/;
  const MAX_SHOWN = 500;
  const TOKEN_RENEW_BEFORE_S = 120; // get a fresh token this long before the current one expires

  // ---------------------------------------------------------------------------------------
  // State

  const query = new URLSearchParams(location.search);
  const stored = (key) => {
    try {
      return localStorage.getItem(key);
    } catch (_) {
      return null;
    }
  };
  const store = (key, value) => {
    try {
      localStorage.setItem(key, value);
    } catch (_) {
      // Private mode or storage disabled: settings just do not persist.
    }
  };

  const state = {
    transport: pick(query.get('transport'), stored('herald.transport'), 'ws'),
    room: validRoom(query.get('room')) || validRoom(stored('herald.room')) || 'lobby',
    user: cleanUser(query.get('user') || stored('herald.user') || 'guest-' + randomDigits(4)),
    node: null, // the edge this page is on (welcome `node`)
    client: null, // our client id on that edge (WebSocket and SSE)
    connected: false,
    received: [], // every message delivered to the page, in order
    notices: [], // every notice shown, for tests
    gaps: [], // offsets that were skipped without recovered:false (would be a server bug)
    positions: {}, // channel -> {epoch, offset}: the last message seen
    cursors: {}, // channel -> opaque cursor string from the server (SSE id, poll cursor)
    outbox: [], // messages waiting for the server's acknowledgement
    seq: 0,
    generation: 0, // bumped on every (re)start; callbacks of older connections are ignored
    attempt: 0, // reconnect attempts since the last success
    conn: null,
    reconnectTimer: null,
    presenceTimer: null,
    presenceUnavailable: false,
    flushing: false,
    flushTimer: null,
    flushAttempt: 0,
    // Identity. token: the connection token in use (null: anonymous, the edge has no dev token
    // endpoint); tokenUser: the user it was issued for; exp: its expiry (seconds).
    auth: { token: null, tokenUser: null, exp: 0 },
    authRetried: false, // one fresh token after a 4501, in case the edge's secret changed
    renewTimer: null,
    welcomeUser: null, // `user` of the last welcome (WebSocket and SSE)
  };

  function pick(...candidates) {
    return candidates.find((t) => t && Object.prototype.hasOwnProperty.call(TRANSPORTS, t));
  }

  function validRoom(room) {
    return room && ROOM_PATTERN.test(room) ? room : null;
  }

  // The server accepts letters, digits and `_-. @` in display names.
  function cleanUser(name) {
    const cleaned = String(name).replace(/[^\p{L}\p{N}_. @-]/gu, '').trim().slice(0, 32);
    return cleaned || 'guest-' + randomDigits(4);
  }

  function randomDigits(n) {
    return String(Math.floor(Math.random() * 10 ** n)).padStart(n, '0');
  }

  function channel() {
    return 'chat:' + state.room;
  }

  // ---------------------------------------------------------------------------------------
  // Connection tokens (development token endpoint)

  // The development endpoint takes letters, digits and `_-.@` for a user id: spaces become `_`.
  function tokenUser() {
    return state.user.replace(/\s+/g, '_').slice(0, 64);
  }

  // The token to connect with, fetched or renewed when needed; null when the edge has no token
  // endpoint (404), i.e. it runs without identity or the application hands out tokens itself.
  async function ensureToken() {
    const user = tokenUser();
    const now = Date.now() / 1000;
    const a = state.auth;
    if (a.token && a.tokenUser === user && a.exp - now > TOKEN_RENEW_BEFORE_S) {
      return a.token;
    }
    let response;
    try {
      response = await fetchWithTimeout('/dev/token?user=' + encodeURIComponent(user), {
        cache: 'no-store',
      });
    } catch (err) {
      throw new Transient('no token: ' + err.message);
    }
    if (response.status === 404) {
      state.auth = { token: null, tokenUser: null, exp: 0 };
      renderIdentity();
      return null;
    }
    if (!response.ok) {
      const reply = await response.json().catch(() => ({}));
      const message = (reply.error && reply.error.message) || 'HTTP ' + response.status;
      throw new (response.status >= 500 ? Transient : Error)('no token: ' + message);
    }
    const body = await response.json();
    state.auth = { token: body.token, tokenUser: user, exp: Number(body.exp) || 0 };
    renderIdentity();
    return body.token;
  }

  function dropToken() {
    state.auth = { token: null, tokenUser: null, exp: 0 };
  }

  // Renews the token shortly before it expires and hands it to the live connection.
  function scheduleRenewal(gen) {
    clearTimeout(state.renewTimer);
    state.renewTimer = null;
    if (!state.auth.token || !state.auth.exp) {
      return;
    }
    const inMs = Math.max(5, state.auth.exp - TOKEN_RENEW_BEFORE_S / 2 - Date.now() / 1000) * 1000;
    state.renewTimer = setTimeout(async () => {
      if (gen !== state.generation) {
        return;
      }
      try {
        const token = await ensureToken();
        if (gen !== state.generation || !state.conn) {
          return;
        }
        if (token && state.conn.refresh) {
          await state.conn.refresh(token); // WebSocket: the session goes on
          scheduleRenewal(gen);
        } else if (state.transport === 'sse') {
          start(); // the stream's URL holds the token: resume on a new stream with the new one
        } else {
          scheduleRenewal(gen); // polls read state.auth.token on every request
        }
      } catch (_) {
        // The connection ends at `exp` (4010) and the reconnect fetches a token then.
      }
    }, inMs);
  }

  function authHeaders() {
    return state.auth.token ? { Authorization: 'Bearer ' + state.auth.token } : {};
  }

  // The identity part of a WebSocket/SSE URL: the token, or (anonymous) the display name.
  function identify(url, token) {
    if (token) {
      url.searchParams.set('token', token);
    } else {
      url.searchParams.set('user', state.user);
    }
  }

  // ---------------------------------------------------------------------------------------
  // Positions and cursors

  // A message from any transport: drop duplicates, note gaps, remember the position.
  function onMessage(msg, cursor) {
    const pos = state.positions[msg.channel];
    if (pos && pos.epoch === msg.epoch && msg.offset <= pos.offset) {
      return; // already seen (a resumed stream may overlap what we had)
    }
    if (pos && pos.epoch === msg.epoch && msg.offset > pos.offset + 1) {
      state.gaps.push({ channel: msg.channel, after: pos.offset, got: msg.offset });
      console.warn('gap in', msg.channel, 'after', pos.offset, 'got', msg.offset);
    }
    state.positions[msg.channel] = { epoch: msg.epoch, offset: msg.offset };
    rememberCursor(msg.channel, cursor);
    const entry = {
      channel: msg.channel,
      epoch: msg.epoch,
      offset: msg.offset,
      ts: msg.ts,
      from: msg.from,
      user: msg.user, // set by the server from the publisher's token (absent: anonymous)
      data: msg.data,
    };
    state.received.push(entry);
    if (msg.channel === channel()) {
      renderMessage(entry);
    }
  }

  // A subscription confirmed. `resumed`: we asked to resume from a position. `unsolicited`: the
  // server reset our position on its own (it could not fill a gap in a live stream).
  function onSubscribed(info, resumed, unsolicited, cursor) {
    const pos = state.positions[info.channel];
    const keep = info.recovered && pos && pos.epoch === info.epoch;
    if (!keep) {
      // Fresh subscription, or the server could not fill the gap: start from its position.
      state.positions[info.channel] = { epoch: info.epoch, offset: info.offset };
    }
    rememberCursor(info.channel, cursor);
    if (!info.recovered && (resumed || unsolicited)) {
      notice(
        'Some messages in ' + info.channel + ' could not be recovered (history no longer holds ' +
          'them). Continuing from the current position.',
      );
    }
  }

  function rememberCursor(ch, cursor) {
    if (cursor) {
      state.cursors[ch] = cursor;
    } else {
      delete state.cursors[ch]; // the position moved on without a server cursor
    }
  }

  // The cursor to resume `ch` from over SSE or polling: the server's own when it is current,
  // else one made from the last position seen (e.g. after a switch from WebSocket). The format
  // is the one herald-protocol documents: base64url("h1\n<channel> <epoch> <offset>\n").
  function cursorFor(ch) {
    if (state.cursors[ch]) {
      return state.cursors[ch];
    }
    const pos = state.positions[ch];
    if (!pos) {
      return null;
    }
    const raw = 'h1\n' + ch + ' ' + pos.epoch + ' ' + pos.offset + '\n';
    return btoa(raw).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  }

  // ---------------------------------------------------------------------------------------
  // Connection lifecycle

  function start() {
    stopConnection();
    const gen = ++state.generation;
    const ch = channel();
    setStatus('connecting', 'connecting…');
    renderPresence(null);
    const make = { ws: wsConnection, sse: sseConnection, longpoll: pollConnection, poll: pollConnection };
    ensureToken().then(
      (token) => {
        if (gen !== state.generation) {
          return;
        }
        state.conn = make[state.transport](gen, ch, state.transport, token);
        scheduleRenewal(gen);
      },
      (err) => {
        if (gen !== state.generation) {
          return;
        }
        if (err instanceof Transient) {
          lost(gen, 0, err.message);
        } else {
          setStatus('closed', err.message);
          notice('Cannot connect: ' + err.message);
        }
      },
    );
  }

  function stopConnection() {
    state.generation++;
    clearTimeout(state.reconnectTimer);
    clearInterval(state.presenceTimer);
    clearTimeout(state.renewTimer);
    state.reconnectTimer = null;
    state.presenceTimer = null;
    state.renewTimer = null;
    if (state.conn) {
      state.conn.close();
      state.conn = null;
    }
    state.connected = false;
  }

  // Called by a connection once it is subscribed and will not lose messages from here on.
  function established(gen, node, client) {
    if (gen !== state.generation) {
      return;
    }
    state.attempt = 0;
    state.authRetried = false;
    state.connected = true;
    if (node !== undefined) {
      setNode(node);
    }
    if (client !== undefined) {
      state.client = client;
    }
    setStatus('connected', 'connected · ' + TRANSPORTS[state.transport]);
    refreshPresence();
    clearInterval(state.presenceTimer);
    state.presenceTimer = setInterval(refreshPresence, PRESENCE_EVERY_MS);
    flushOutbox();
  }

  // Close codes after which reconnecting cannot help.
  function isFinal(code) {
    return code === 1008 || (code >= 4500 && code <= 4999);
  }

  // Called by a connection that ended. Schedules the next attempt with backoff and jitter.
  function lost(gen, code, reason) {
    if (gen !== state.generation) {
      return;
    }
    state.connected = false;
    clearInterval(state.presenceTimer);
    if (state.conn) {
      state.conn.close();
      state.conn = null;
    }
    if (code === 4010) {
      dropToken(); // token expired: the reconnect gets a fresh one
    }
    if (code === 4501 && state.auth.token && !state.authRetried) {
      // Unauthorized with a token we held on to (the edge's secret may have changed since): one
      // more try with a fresh token before giving up.
      state.authRetried = true;
      dropToken();
      code = 0;
    }
    if (isFinal(code)) {
      setStatus('closed', 'closed: ' + (reason || 'code ' + code));
      notice('The server closed the connection for good (' + code + ' ' + (reason || '') + ').');
      return;
    }
    // 1012 (edge restarting) and 4008 (too slow) are not failures of ours: come back at once,
    // spread out a little so a whole edge's clients do not arrive in the same millisecond.
    const quick = code === 1012 || code === 4008;
    const delay = quick ? Math.random() * 1000 : backoff(state.attempt++);
    const why = reason ? ' (' + reason + ')' : code ? ' (code ' + code + ')' : '';
    setStatus('reconnecting', 'reconnecting in ' + (delay / 1000).toFixed(1) + ' s' + why);
    state.reconnectTimer = setTimeout(() => {
      if (gen === state.generation) {
        start();
      }
    }, delay);
  }

  // Exponential backoff with "equal jitter": half the step fixed, half random, capped.
  function backoff(attempt) {
    const step = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** Math.min(attempt, 10));
    return step / 2 + Math.random() * (step / 2);
  }

  // ---------------------------------------------------------------------------------------
  // WebSocket

  function wsConnection(gen, ch, kind, token) {
    const url = new URL('/ws', location.href);
    url.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
    identify(url, token);
    const ws = new WebSocket(url);
    const pending = new Map(); // request id -> {resolve, reject, timer}
    let nextId = 1;
    let pingTimer = null;
    let closed = false;
    let resumed = false;

    function request(frame) {
      return new Promise((resolve, reject) => {
        if (ws.readyState !== WebSocket.OPEN) {
          reject(new Transient('not connected'));
          return;
        }
        const id = nextId++;
        const timer = setTimeout(() => {
          pending.delete(id);
          reject(new Transient('no reply in time'));
        }, REQUEST_TIMEOUT_MS);
        pending.set(id, { resolve, reject, timer });
        ws.send(JSON.stringify(Object.assign({}, frame, { id })));
      });
    }

    function settle(frame) {
      const p = pending.get(frame.id);
      if (!p) {
        return false;
      }
      pending.delete(frame.id);
      clearTimeout(p.timer);
      if (frame.op === 'error') {
        p.reject(new Error(frame.message || frame.name || 'error'));
      } else {
        p.resolve(frame);
      }
      return true;
    }

    ws.onmessage = (event) => {
      if (gen !== state.generation || typeof event.data !== 'string') {
        return; // binary frames carry binary payloads; this chat only sends JSON
      }
      const frame = JSON.parse(event.data);
      switch (frame.op) {
        case 'welcome': {
          setNode(frame.node);
          state.client = frame.client;
          setWelcomeUser(frame.user);
          const since = state.positions[ch];
          resumed = Boolean(since);
          const sub = { op: 'subscribe', channel: ch };
          if (since) {
            sub.since = since;
          }
          request(sub)
            .then(() => established(gen, frame.node, frame.client))
            .catch((err) => {
              if (gen === state.generation) {
                notice('Could not join ' + ch + ': ' + err.message);
                ws.close();
              }
            });
          // Browsers cannot send protocol pings: an application ping finds dead connections.
          const every = Math.max(5, Number(frame.ping_interval) || 25) * 1000;
          pingTimer = setInterval(() => {
            request({ op: 'ping' }).catch(() => {
              if (ws.readyState === WebSocket.OPEN) {
                ws.close(4000, 'no pong');
              }
            });
          }, every);
          break;
        }
        case 'subscribed':
          onSubscribed(frame, resumed, frame.id === undefined || frame.id === null, null);
          settle(frame);
          break;
        case 'message':
          onMessage(frame, null);
          break;
        case 'join':
        case 'leave':
          refreshPresence();
          break;
        case 'broadcast':
          notice('Broadcast: ' + JSON.stringify(frame.data));
          break;
        default:
          if (!settle(frame) && frame.op === 'error') {
            notice('Server error: ' + frame.message);
          }
      }
    };

    ws.onclose = (event) => {
      closed = true;
      clearInterval(pingTimer);
      for (const p of pending.values()) {
        clearTimeout(p.timer);
        p.reject(new Transient('connection closed'));
      }
      pending.clear();
      lost(gen, event.code, event.reason);
    };

    return {
      close() {
        if (!closed) {
          closed = true;
          clearInterval(pingTimer);
          ws.close(1000, 'bye');
        }
      },
      publish(channelName, data) {
        return request({ op: 'publish', channel: channelName, data });
      },
      presence(channelName) {
        return request({ op: 'presence', channel: channelName }).then((r) => r.clients);
      },
      refresh(newToken) {
        return request({ op: 'refresh', token: newToken });
      },
    };
  }

  // ---------------------------------------------------------------------------------------
  // Server-Sent Events (publishing with POST /publish)

  function sseConnection(gen, ch, kind, token) {
    const url = new URL('/sse', location.href);
    url.searchParams.set('channel', ch);
    identify(url, token);
    const since = cursorFor(ch);
    if (since) {
      url.searchParams.set('since', since);
    }
    const es = new EventSource(url);
    let node;
    let client;

    const json = (event) => JSON.parse(event.data);
    es.addEventListener('welcome', (event) => {
      const w = json(event);
      node = w.node;
      client = w.client;
      setNode(node);
      setWelcomeUser(w.user);
    });
    es.addEventListener('subscribed', (event) => {
      if (gen !== state.generation) {
        return;
      }
      const info = json(event);
      const first = !state.connected;
      onSubscribed(info, Boolean(since), !first, event.lastEventId);
      if (first) {
        established(gen, node, client);
      }
    });
    es.onmessage = (event) => {
      if (gen === state.generation) {
        onMessage(json(event), event.lastEventId);
      }
    };
    es.addEventListener('join', refreshPresence);
    es.addEventListener('leave', refreshPresence);
    es.addEventListener('broadcast', (event) => notice('Broadcast: ' + event.data));
    es.addEventListener('close', (event) => {
      const c = json(event);
      es.close();
      lost(gen, c.code, c.reason);
    });
    // The browser would retry by itself, at a fixed interval and to the same URL. We take over
    // so reconnects back off with jitter and carry the cursor explicitly (`?since=`).
    es.onerror = () => {
      es.close();
      lost(gen, 0, 'stream interrupted');
    };

    return {
      close() {
        es.close();
      },
      // Naming our stream as `client` makes the publish come from a subscriber of the channel.
      publish: (channelName, data) => httpPublish(channelName, data, client),
      presence: httpPresence,
    };
  }

  // ---------------------------------------------------------------------------------------
  // Long-poll and short poll (publishing with POST /publish)

  function pollConnection(gen, ch, kind) {
    const abort = new AbortController();
    const long = kind === 'longpoll';
    let first = true;
    setNode(null); // each poll may land on any edge; learn which one from the replies

    async function loop() {
      while (gen === state.generation) {
        const cursor = cursorFor(ch);
        const url = new URL('/poll', location.href);
        url.searchParams.set('channel', ch);
        // The first request is always short: it hands us a cursor at once, and from then on
        // nothing is lost, whatever the timing of the next polls.
        url.searchParams.set('timeout', long && !first ? String(LONG_POLL_SECS) : '0');
        if (cursor) {
          url.searchParams.set('cursor', cursor);
        }
        if (state.auth.token) {
          url.searchParams.set('token', state.auth.token); // the current one: it is renewed
        }
        let body;
        try {
          const response = await fetch(url, { signal: abort.signal, cache: 'no-store' });
          if (response.status === 401) {
            dropToken(); // expired or refused: the reconnect asks for a fresh one
          }
          if (!response.ok) {
            throw new Error('HTTP ' + response.status);
          }
          const header = response.headers.get('x-herald-node');
          if (header) {
            setNode(header);
          }
          body = await response.json();
        } catch (err) {
          if (gen === state.generation && !abort.signal.aborted) {
            lost(gen, 0, err.message);
          }
          return;
        }
        if (gen !== state.generation) {
          return;
        }
        for (const msg of body.messages) {
          onMessage(msg, null);
        }
        if (!body.recovered) {
          // The server reset our position; positions we hold for it are stale.
          delete state.positions[ch];
          if (cursor) {
            notice(
              'Some messages in ' + ch + ' could not be recovered (history no longer holds ' +
                'them). Continuing from the current position.',
            );
          }
        }
        state.cursors[ch] = body.cursor;
        if (first) {
          first = false;
          established(gen);
          discoverNode(gen);
        }
        if (!long) {
          await sleep(SHORT_POLL_EVERY_MS);
        }
      }
    }
    loop();

    return {
      close() {
        abort.abort();
      },
      publish: (channelName, data) => httpPublish(channelName, data, null),
      presence: httpPresence,
    };
  }

  // A poll carries no welcome, so the page asks the HTTP API which edge answers (only where
  // the API needs no key; otherwise the edge shows as n/a).
  async function discoverNode(gen) {
    if (state.node) {
      return; // the poll reply named it (X-Herald-Node)
    }
    try {
      const response = await fetch('/api/info', { cache: 'no-store' });
      if (gen === state.generation) {
        setNode(response.ok ? (await response.json()).node : 'n/a');
      }
    } catch (_) {
      // Leave it as it was; the next reconnect tries again.
    }
  }

  // ---------------------------------------------------------------------------------------
  // HTTP publishing and presence (SSE and polling)

  // An error worth retrying (network, timeout, 5xx): the message stays in the outbox.
  class Transient extends Error {}

  async function httpPublish(channelName, data, client) {
    const body = { channel: channelName, data };
    if (client) {
      body.client = client;
    }
    let response;
    try {
      response = await fetchWithTimeout('/publish', {
        method: 'POST',
        headers: Object.assign({ 'Content-Type': 'application/json' }, authHeaders()),
        body: JSON.stringify(body),
      });
    } catch (err) {
      throw new Transient(err.message);
    }
    const reply = await response.json().catch(() => ({}));
    if (response.ok) {
      return reply;
    }
    const message =
      (reply && ((reply.error && reply.error.message) || reply.message)) || 'HTTP ' + response.status;
    if (response.status === 401 && state.auth.token) {
      // Our token expired (or the edge no longer takes it): get a fresh one, keep the message.
      dropToken();
      ensureToken().catch(() => {});
      throw new Transient(message);
    }
    if (response.status >= 500 || response.status === 408 || response.status === 429) {
      throw new Transient(message);
    }
    throw new Error(message);
  }

  async function httpPresence(channelName) {
    if (state.presenceUnavailable) {
      return null;
    }
    const response = await fetchWithTimeout('/api/presence/' + encodeURIComponent(channelName), {
      cache: 'no-store',
    });
    if (response.status === 401 || response.status === 403 || response.status === 404) {
      state.presenceUnavailable = true; // the HTTP API is guarded here
      return null;
    }
    if (!response.ok) {
      throw new Error('HTTP ' + response.status);
    }
    return (await response.json()).clients;
  }

  function fetchWithTimeout(url, options) {
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), REQUEST_TIMEOUT_MS);
    return fetch(url, Object.assign({ signal: abort.signal }, options)).finally(() =>
      clearTimeout(timer),
    );
  }

  function sleep(ms) {
    return new Promise((resolve) => setTimeout(resolve, ms));
  }

  // ---------------------------------------------------------------------------------------
  // Sending: an outbox that survives reconnects

  function send(text) {
    text = String(text).trim();
    if (!text) {
      return Promise.resolve(null);
    }
    return new Promise((resolve, reject) => {
      const data = { text, user: state.user, seq: ++state.seq };
      state.outbox.push({ channel: channel(), data, resolve, reject });
      renderOutbox();
      flushOutbox();
    });
  }

  async function flushOutbox() {
    if (state.flushing || !state.connected || !state.conn) {
      return;
    }
    state.flushing = true;
    clearTimeout(state.flushTimer);
    try {
      while (state.outbox.length && state.connected && state.conn) {
        const item = state.outbox[0];
        try {
          const ack = await state.conn.publish(item.channel, item.data);
          state.outbox.shift();
          state.flushAttempt = 0;
          item.resolve(ack);
        } catch (err) {
          if (err instanceof Transient) {
            // Retry later: after a reconnect (WebSocket) or after a backoff (HTTP).
            state.flushTimer = setTimeout(flushOutbox, backoff(state.flushAttempt++));
            break;
          }
          state.outbox.shift();
          notice('Message not sent: ' + err.message);
          item.reject(err);
        } finally {
          renderOutbox();
        }
      }
    } finally {
      state.flushing = false;
    }
  }

  // ---------------------------------------------------------------------------------------
  // Presence

  async function refreshPresence() {
    const conn = state.conn;
    const gen = state.generation;
    if (!conn || !state.connected) {
      return;
    }
    try {
      const clients = await conn.presence(channel());
      if (gen === state.generation) {
        renderPresence(clients);
      }
    } catch (_) {
      // Keep the last list; the next refresh tries again.
    }
  }

  // ---------------------------------------------------------------------------------------
  // Rendering

  const $ = (id) => document.getElementById(id);

  function setStatus(kind, text) {
    const el = $('status');
    el.dataset.state = kind;
    el.textContent = text;
  }

  function setNode(node) {
    state.node = node;
    $('node').textContent = node || '–';
  }

  function setWelcomeUser(user) {
    state.welcomeUser = user || null;
    renderIdentity();
  }

  function renderIdentity() {
    const el = $('identity');
    if (!el) {
      return;
    }
    if (state.auth.token) {
      el.textContent = 'token for ' + state.auth.tokenUser + ' (dev endpoint)';
      el.title = 'Connection token from the development endpoint /dev/token, expires ' +
        new Date(state.auth.exp * 1000).toLocaleTimeString();
    } else {
      el.textContent = 'anonymous';
      el.title = 'The edge has no /dev/token endpoint: connected without a token';
    }
  }

  function notice(text) {
    state.notices.push({ at: Date.now(), text });
    $('notice-text').textContent = text;
    $('notice').hidden = false;
  }

  function renderMessage(entry) {
    const list = $('messages');
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    const li = document.createElement('li');
    const data = entry.data;
    const isChat = data && typeof data === 'object' && typeof data.text === 'string';
    const who = document.createElement('span');
    who.className = 'who';
    // The server-set `user` (from the publisher's token) wins over the name inside the data.
    who.textContent = isChat ? entry.user || data.user || 'anonymous' : entry.user || 'server';
    const text = document.createElement('span');
    text.className = 'text';
    text.textContent = isChat ? data.text : JSON.stringify(data);
    const meta = document.createElement('span');
    meta.className = 'meta';
    const time = entry.ts ? new Date(entry.ts).toLocaleTimeString() : '';
    meta.textContent = '#' + entry.offset + (time ? ' · ' + time : '');
    const me = state.auth.token ? state.auth.tokenUser : state.user;
    if (isChat && (entry.user || data.user) === me) {
      li.className = 'mine';
    }
    li.append(who, text, meta);
    list.append(li);
    while (list.children.length > MAX_SHOWN) {
      list.firstChild.remove();
    }
    if (atBottom) {
      list.scrollTop = list.scrollHeight;
    }
  }

  function renderRoom() {
    $('messages').replaceChildren();
    $('channel-name').textContent = channel();
    for (const entry of state.received) {
      if (entry.channel === channel()) {
        renderMessage(entry);
      }
    }
  }

  function renderPresence(clients) {
    const list = $('presence');
    list.replaceChildren();
    const add = (text, cls) => {
      const li = document.createElement('li');
      li.textContent = text;
      if (cls) {
        li.className = cls;
      }
      list.append(li);
      return li;
    };
    if (clients === null || clients === undefined) {
      add(state.presenceUnavailable ? 'n/a (HTTP API needs a key)' : '–', 'muted');
      return;
    }
    if (!clients.length) {
      add('nobody (polling readers are not listed)', 'muted');
      return;
    }
    for (const c of clients) {
      const li = add(c.user || c.client, c.client === state.client ? 'me' : '');
      const node = document.createElement('span');
      node.className = 'meta';
      node.textContent = ' on ' + c.node;
      li.append(node);
    }
  }

  function renderOutbox() {
    const n = state.outbox.length;
    $('outbox').textContent = n ? n + ' message' + (n > 1 ? 's' : '') + ' waiting to be sent…' : '';
  }

  // ---------------------------------------------------------------------------------------
  // Actions

  function setTransport(transport) {
    if (!pick(transport)) {
      throw new Error('unknown transport ' + transport);
    }
    state.transport = transport;
    store('herald.transport', transport);
    $('transport').value = transport;
    state.presenceUnavailable = false;
    state.attempt = 0;
    if (transport !== 'ws' && transport !== 'sse') {
      state.client = null; // polls are not connections: no client id
    }
    start();
  }

  function join(room) {
    room = String(room).trim();
    if (!validRoom(room)) {
      notice('A room name is 1–64 letters, digits or _ . @ / -');
      return false;
    }
    state.room = room;
    store('herald.room', room);
    $('room').value = room;
    renderRoom();
    start();
    return true;
  }

  function setUser(name) {
    const user = cleanUser(name);
    $('user').value = user;
    if (user !== state.user) {
      state.user = user;
      store('herald.user', user);
      if (state.transport === 'ws' || state.transport === 'sse' || state.auth.token) {
        start(); // the name (or the token that carries it) is given when connecting
      }
    }
  }

  // ---------------------------------------------------------------------------------------
  // Wiring

  $('transport').value = state.transport;
  $('room').value = state.room;
  $('user').value = state.user;
  $('transport').addEventListener('change', (e) => setTransport(e.target.value));
  $('user').addEventListener('change', (e) => setUser(e.target.value));
  $('room-form').addEventListener('submit', (e) => {
    e.preventDefault();
    join($('room').value);
  });
  $('send-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const input = $('input');
    send(input.value).catch(() => {});
    input.value = '';
    input.focus();
  });
  $('notice-close').addEventListener('click', () => {
    $('notice').hidden = true;
  });
  // A network change is a good moment to retry at once instead of waiting out the backoff.
  window.addEventListener('online', () => {
    if (!state.connected) {
      start();
    }
  });

  window.heraldDemo = {
    get transport() {
      return state.transport;
    },
    get node() {
      return state.node;
    },
    get connected() {
      return state.connected;
    },
    get client() {
      return state.client;
    },
    get room() {
      return state.room;
    },
    get user() {
      return state.user;
    },
    // Identity: the token in use (null: anonymous), the user it was asked for, and the `user`
    // the last welcome reported (WebSocket and SSE).
    get token() {
      return state.auth.token;
    },
    get tokenUser() {
      return state.auth.tokenUser;
    },
    get welcomeUser() {
      return state.welcomeUser;
    },
    received: state.received,
    notices: state.notices,
    gaps: state.gaps,
    get pending() {
      return state.outbox.length;
    },
    positions: state.positions,
    send,
    setTransport,
    join,
    setUser,
  };

  renderRoom();
  start();
})();
