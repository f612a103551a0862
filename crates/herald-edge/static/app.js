// Herald browser demo: a chat with rooms, on herald.js (the client library every edge serves at
// /herald.js; docs/CLIENT.md). The library does the hard parts — transport fallback, reconnects,
// resuming every channel from its position on any edge, gap checks, publishes that wait while
// reconnecting and are never sent twice. This file is the demo's UI around it.
//
// Identity: an edge with a key configured wants a JWT connection token. A real application's
// backend would sign it; this demo asks the edge's DEVELOPMENT-ONLY endpoint
// `GET /dev/token?user=<name>` (off unless `[auth] dev_token_endpoint = true`). When that answers
// 404 the page connects without a token and names itself with `?user=`, as an anonymous client.
//
// Transports: "auto" lets herald.js pick (WebSocket, then SSE + POST, then long-poll); the others
// pin one, to show each. Switching transport or room starts a new client that resumes from the
// last position seen, so nothing is missed in between.
//
// For automated tests the state is exposed as `window.heraldDemo` (see the end of the file).

import { Herald, HeraldError } from '/herald.js';

const TRANSPORTS = {
  auto: { label: 'Auto', options: {} },
  ws: { label: 'WebSocket', options: { transports: ['websocket'] } },
  sse: { label: 'SSE + POST', options: { transports: ['sse'] } },
  longpoll: { label: 'Long-poll', options: { transports: ['poll'], pollTimeout: 25 } },
  poll: { label: 'Short poll (1 s)', options: { transports: ['poll'], pollTimeout: 0, pollInterval: 1000 } },
};
const PRESENCE_EVERY_MS = 5000;
const ROOM_PATTERN = /^[A-Za-z0-9_.@/-]{1,64}$/;
const MAX_SHOWN = 500;

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
  transport: pick(query.get('transport'), stored('herald.transport'), 'auto'),
  room: validRoom(query.get('room')) || validRoom(stored('herald.room')) || 'lobby',
  user: cleanUser(query.get('user') || stored('herald.user') || 'guest-' + randomDigits(4)),
  herald: null,
  sub: null,
  ready: false, // the current subscription is confirmed
  received: [], // every message delivered to the page, in order
  notices: [], // every notice shown, for tests
  gaps: [], // offsets skipped without a reset (herald.js guarantees none: checked here anyway)
  positions: {}, // channel -> {epoch, offset}: the last message seen, carried across clients
  pending: 0, // sends not yet acknowledged
  carry: [], // sends a closed client never sent, for the next one
  seq: 0,
  auth: { token: null, tokenUser: null, exp: 0 },
  anonymous: null, // true once /dev/token said 404
  presenceTimer: null,
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

// The development endpoint takes letters, digits and `_-.@` for a user id: spaces become `_`.
function tokenUser() {
  return state.user.replace(/\s+/g, '_').slice(0, 64);
}

// herald.js calls this whenever it needs a token (at connect, before `exp`, after a 4010).
async function fetchToken() {
  const user = tokenUser();
  const response = await fetch('/dev/token?user=' + encodeURIComponent(user), { cache: 'no-store' });
  if (!response.ok) {
    throw new HeraldError('no token: HTTP ' + response.status, { reason: 'token', temporary: true });
  }
  const body = await response.json();
  state.auth = { token: body.token, tokenUser: user, exp: Number(body.exp) || 0 };
  renderIdentity();
  return body.token;
}

// Whether this edge hands out development tokens (else the page connects anonymously).
async function probeTokens() {
  if (state.anonymous !== null) return;
  try {
    const response = await fetch('/dev/token?user=' + encodeURIComponent(tokenUser()), { cache: 'no-store' });
    state.anonymous = response.status === 404;
  } catch (_) {
    state.anonymous = null; // unknown yet: try with tokens, the edge may be restarting
  }
}

// ---------------------------------------------------------------------------------------
// The client

async function start() {
  stop();
  const ch = channel();
  setStatus('connecting', 'connecting…');
  renderPresence(null);
  await probeTokens();
  const options = { ...TRANSPORTS[state.transport].options };
  if (state.anonymous) {
    options.user = state.user;
    state.auth = { token: null, tokenUser: null, exp: 0 };
    renderIdentity();
  } else {
    options.token = fetchToken;
  }
  const herald = new Herald(location.origin, options);
  state.herald = herald;
  flushCarry();
  herald.on('state', (s) => {
    if (herald !== state.herald) return;
    onState(s);
  });
  herald.on('error', (err) => console.debug('herald:', err.message));
  herald.on('broadcast', (data) => notice('Broadcast: ' + JSON.stringify(data)));
  const since = state.positions[ch];
  state.sub = herald.subscribe(ch, {
    since,
    onMessage: (m) => onMessage(m),
    onJoin: () => refreshPresence(),
    onLeave: () => refreshPresence(),
    onReset: (info) => {
      notice(
        'Some messages in ' + info.channel + ' could not be recovered (history no longer holds ' +
          'them). Continuing from the current position.',
      );
      state.positions[info.channel] = { epoch: info.epoch, offset: info.offset };
    },
    onError: (err) => {
      notice('Could not join ' + ch + ': ' + err.message);
      setStatus('closed', err.message);
    },
  });
  state.sub.ready.then(
    (r) => {
      if (herald !== state.herald) return;
      if (!state.positions[ch] || !r.recovered) state.positions[ch] = { epoch: r.epoch, offset: r.offset };
      state.ready = true;
      onState(herald.state);
    },
    () => {},
  );
}

function stop() {
  clearInterval(state.presenceTimer);
  state.ready = false;
  if (state.herald) {
    state.herald.close();
    state.herald = null;
    state.sub = null;
  }
}

function onState(s) {
  const herald = state.herald;
  if (s === 'connected' && state.ready) {
    setNode(herald.node);
    setStatus('connected', 'connected · ' + TRANSPORTS[state.transport].label + (state.transport === 'auto' ? ' (' + herald.transport + ')' : ''));
    refreshPresence();
    clearInterval(state.presenceTimer);
    state.presenceTimer = setInterval(refreshPresence, PRESENCE_EVERY_MS);
  } else if (s === 'connecting') {
    setStatus('connecting', 'connecting…');
  } else if (s === 'disconnected') {
    clearInterval(state.presenceTimer);
    setStatus('reconnecting', 'reconnecting…');
  } else if (s === 'closed') {
    clearInterval(state.presenceTimer);
    setStatus('closed', 'closed');
  }
}

function onMessage(m) {
  const pos = state.positions[m.channel];
  if (pos && pos.epoch === m.epoch && m.offset !== pos.offset + 1) {
    state.gaps.push({ channel: m.channel, after: pos.offset, got: m.offset });
    console.warn('gap in', m.channel, 'after', pos.offset, 'got', m.offset);
  }
  state.positions[m.channel] = { epoch: m.epoch, offset: m.offset };
  const entry = { channel: m.channel, epoch: m.epoch, offset: m.offset, ts: m.ts, from: m.from, user: m.user, data: m.data };
  state.received.push(entry);
  if (m.channel === channel()) renderMessage(entry);
}

// ---------------------------------------------------------------------------------------
// Sending: herald.js keeps messages while it reconnects and never sends one twice.

function send(text) {
  text = String(text).trim();
  if (!text) return Promise.resolve(null);
  const data = { text, user: state.user, seq: ++state.seq };
  return publish(channel(), data);
}

function publish(ch, data) {
  state.pending++;
  renderOutbox();
  return new Promise((resolve, reject) => {
    const attempt = (herald) => {
      herald.publish(ch, data).then(
        (ack) => {
          state.pending--;
          renderOutbox();
          resolve(ack);
        },
        (err) => {
          if (err.reason === 'closed' && herald !== state.herald) {
            // Never sent: the page switched clients (transport, room, name) before it went
            // out. The next client sends it.
            state.carry.push(attempt);
            if (state.herald) flushCarry();
            return;
          }
          state.pending--;
          renderOutbox();
          notice('Message not sent: ' + err.message);
          reject(err);
        },
      );
    };
    attempt(state.herald);
  });
}

function flushCarry() {
  const carried = state.carry;
  state.carry = [];
  for (const attempt of carried) attempt(state.herald);
}

// ---------------------------------------------------------------------------------------
// Presence

async function refreshPresence() {
  const herald = state.herald;
  if (!herald || herald.state !== 'connected') return;
  try {
    const clients = await herald.presence(channel());
    if (herald === state.herald) renderPresence(clients);
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
  $('node').textContent = node || '–';
}

function renderIdentity() {
  const el = $('identity');
  if (!el) return;
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
  if (isChat && (entry.user || data.user) === me) li.className = 'mine';
  li.append(who, text, meta);
  list.append(li);
  while (list.children.length > MAX_SHOWN) list.firstChild.remove();
  if (atBottom) list.scrollTop = list.scrollHeight;
}

function renderRoom() {
  $('messages').replaceChildren();
  $('channel-name').textContent = channel();
  for (const entry of state.received) if (entry.channel === channel()) renderMessage(entry);
}

function renderPresence(clients) {
  const list = $('presence');
  list.replaceChildren();
  const add = (text, cls) => {
    const li = document.createElement('li');
    li.textContent = text;
    if (cls) li.className = cls;
    list.append(li);
    return li;
  };
  if (clients === null || clients === undefined) {
    add('–', 'muted');
    return;
  }
  if (!clients.length) {
    add('nobody (polling readers are not listed)', 'muted');
    return;
  }
  const me = state.herald && state.herald.client;
  for (const c of clients) {
    const li = add(c.user || c.client, c.client === me ? 'me' : '');
    const node = document.createElement('span');
    node.className = 'meta';
    node.textContent = ' on ' + c.node;
    li.append(node);
  }
}

function renderOutbox() {
  const n = state.pending;
  $('outbox').textContent = n ? n + ' message' + (n > 1 ? 's' : '') + ' waiting to be sent…' : '';
}

// ---------------------------------------------------------------------------------------
// Actions

function setTransport(transport) {
  if (!pick(transport)) throw new Error('unknown transport ' + transport);
  state.transport = transport;
  store('herald.transport', transport);
  $('transport').value = transport;
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
    start(); // the name (or the token that carries it) is given when connecting
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

window.heraldDemo = {
  // "ws" | "sse" | "longpoll" | "poll" | "auto": what the page was asked to use.
  get transport() {
    return state.transport;
  },
  // What herald.js is using ("websocket" | "sse" | "poll").
  get using() {
    return state.herald && state.herald.transport;
  },
  get node() {
    return state.herald && state.herald.node;
  },
  get connected() {
    return Boolean(state.herald && state.herald.state === 'connected' && state.ready);
  },
  get client() {
    return state.herald && state.herald.client;
  },
  get room() {
    return state.room;
  },
  get user() {
    return state.user;
  },
  // Identity: the token in use (null: anonymous), the user it was asked for, and the `user`
  // the server says this connection is (WebSocket and SSE welcome).
  get token() {
    return state.auth.token;
  },
  get tokenUser() {
    return state.auth.tokenUser;
  },
  get welcomeUser() {
    return (state.herald && state.herald.user) || null;
  },
  received: state.received,
  notices: state.notices,
  gaps: state.gaps,
  get pending() {
    return state.pending;
  },
  positions: state.positions,
  send,
  setTransport,
  join,
  setUser,
};

renderRoom();
start();
