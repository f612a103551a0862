// Herald cluster status page: polls GET /api/info every 2 s and shows the nodes, their
// connections per transport, channels, message rates and a live chart; and this browser's own
// connection through herald.js. Plain JavaScript, an ES module (no build step).
//
// Rates: /api/info gives each node's counters (delivered, published) since it started and its
// uptime in whole seconds. Other nodes refresh their registry entry every few seconds, so a rate
// is taken between the newest sample of a node and one about ten seconds older, using the
// node's own uptime as the clock (browser time would count the registry's refresh lag).

import { Herald } from '/herald.js';

// ---------------------------------------------------------------------------------------
// This browser's own connection: herald.js on a private channel, publishing to itself every
// few seconds to show the round trip (publish → broker → edge → this page) and where it runs.

const PROBE_EVERY_MS = 5000;

async function probe() {
  const el = (id) => document.getElementById(id);
  const user = 'status-' + Math.random().toString(36).slice(2, 8);
  let token;
  try {
    const r = await fetch('/dev/token?user=' + user, { cache: 'no-store' });
    if (r.ok) token = async () => (await (await fetch('/dev/token?user=' + user, { cache: 'no-store' })).json()).token;
  } catch (_) {
    // No token endpoint reachable: connect anonymously.
  }
  const herald = new Herald(location.origin, token ? { token } : { user });
  const show = () => {
    el('probe-state').textContent = herald.state;
    el('probe-transport').textContent = herald.transport || '–';
    el('probe-node').textContent = herald.node || '–';
  };
  herald.on('state', show);
  herald.on('transport', show);
  const channel = 'status-probe:' + user;
  const sent = new Map();
  const sub = herald.subscribe(channel, {
    onMessage(m) {
      const at = m.data && sent.get(m.data.probe);
      if (at !== undefined) {
        sent.delete(m.data.probe);
        el('probe-rtt').textContent = (performance.now() - at).toFixed(1) + ' ms';
        show();
      }
    },
    onError(err) {
      el('probe-rtt').textContent = 'n/a (' + err.message + ')';
    },
  });
  try {
    await sub.ready;
  } catch (_) {
    return;
  }
  let n = 0;
  const once = () => {
    const id = ++n;
    sent.set(id, performance.now());
    if (sent.size > 10) sent.delete(sent.keys().next().value); // bounded: unanswered probes are forgotten
    herald.publish(channel, { probe: id }).catch((err) => {
      sent.delete(id);
      el('probe-rtt').textContent = 'n/a (' + err.message + ')';
    });
  };
  once();
  setInterval(once, PROBE_EVERY_MS);
  window.heraldStatusProbe = herald;
}
probe();

(function () {
  const POLL_EVERY_MS = 2000;
  const REQUEST_TIMEOUT_MS = 5000;
  const RATE_WINDOW_SECS = 10;
  const CHART_SECS = 300;
  const FORGET_GONE_MS = 10 * 60 * 1000;
  const KEY_STORAGE = 'herald.apikey';
  const TRANSPORTS = ['ws', 'sse', 'longpoll', 'poll'];
  const COLORS = { delivered: '#2f6fdf', published: '#e0803a' };

  const $ = (id) => document.getElementById(id);

  const state = {
    nodes: new Map(), // node id -> {info, samples, rates, goneAt}
    series: [], // {t, delivered, published} cluster totals per poll (null values: no answer)
    lastOk: null,
    answeredBy: null,
  };

  // ---------------------------------------------------------------------------------------
  // API key

  function apiKey() {
    try {
      return localStorage.getItem(KEY_STORAGE) || '';
    } catch (_) {
      return '';
    }
  }

  $('apikey').value = apiKey();
  $('key-form').addEventListener('submit', (e) => {
    e.preventDefault();
    try {
      const key = $('apikey').value.trim();
      if (key) {
        localStorage.setItem(KEY_STORAGE, key);
      } else {
        localStorage.removeItem(KEY_STORAGE);
      }
    } catch (_) {
      // Storage disabled: the key lasts until the page is closed.
    }
    poll();
  });

  // ---------------------------------------------------------------------------------------
  // Polling

  let timer = null;

  async function poll() {
    clearTimeout(timer);
    const headers = {};
    const key = $('apikey').value.trim() || apiKey();
    if (key) {
      headers.Authorization = 'apikey ' + key;
    }
    const abort = new AbortController();
    const timeout = setTimeout(() => abort.abort(), REQUEST_TIMEOUT_MS);
    try {
      const response = await fetch('/api/info', { headers, cache: 'no-store', signal: abort.signal });
      if (response.status === 401 || response.status === 403) {
        failed('bad', 'needs API key', 'This cluster protects /api/* with a key: paste it above.');
      } else if (!response.ok) {
        const body = await response.json().catch(() => ({}));
        failed('bad', 'error ' + response.status, body.message || 'The edge answered ' + response.status + '.');
      } else {
        update(await response.json());
      }
    } catch (err) {
      failed('bad', 'unreachable', 'No answer from the edge (' + err.message + '). Retrying…');
    } finally {
      clearTimeout(timeout);
      timer = setTimeout(poll, POLL_EVERY_MS);
    }
  }

  function failed(kind, short, message) {
    setState(kind, short);
    showNotice(message);
    state.series.push({ t: Date.now(), delivered: null, published: null });
    trimSeries();
    drawChart();
  }

  // ---------------------------------------------------------------------------------------
  // Model

  function update(body) {
    const now = Date.now();
    state.lastOk = now;
    state.answeredBy = body.node;
    const seen = new Set();
    for (const info of body.nodes || []) {
      seen.add(info.node);
      let entry = state.nodes.get(info.node);
      if (!entry) {
        entry = { info, samples: [], rates: { delivered: null, published: null }, goneAt: null };
        state.nodes.set(info.node, entry);
      }
      entry.goneAt = null;
      addSample(entry, info);
      entry.info = info;
    }
    for (const [id, entry] of state.nodes) {
      if (!seen.has(id) && entry.goneAt === null) {
        entry.goneAt = now;
      }
      if (entry.goneAt !== null && now - entry.goneAt > FORGET_GONE_MS) {
        state.nodes.delete(id);
      }
    }
    const live = [...state.nodes.values()].filter((e) => e.goneAt === null);
    const sum = (f) => live.reduce((acc, e) => acc + (f(e) || 0), 0);
    const totals = {
      nodes: live.length,
      connections: sum((e) => connectionTotal(e.info)),
      channels: sum((e) => e.info.channels),
      delivered: sum((e) => e.rates.delivered),
      published: sum((e) => e.rates.published),
    };
    state.series.push({ t: now, delivered: totals.delivered, published: totals.published });
    trimSeries();

    const gone = state.nodes.size - live.length;
    if (gone > 0) {
      setState('warn', live.length + ' up, ' + gone + ' gone');
    } else {
      setState('ok', live.length + (live.length === 1 ? ' node up' : ' nodes up'));
    }
    hideNotice();
    render(totals);
  }

  function addSample(entry, info) {
    const last = entry.samples[entry.samples.length - 1];
    const restarted =
      last &&
      (info.uptime_secs < last.uptime || info.delivered < last.delivered || info.published < last.published);
    if (restarted) {
      entry.samples = [];
      entry.rates = { delivered: null, published: null };
    } else if (last && last.uptime === info.uptime_secs) {
      return; // the same registry entry as before (or less than a second later)
    }
    const sample = { uptime: info.uptime_secs, delivered: info.delivered, published: info.published };
    entry.samples.push(sample);
    while (entry.samples.length > 2 && entry.samples[1].uptime <= sample.uptime - RATE_WINDOW_SECS) {
      entry.samples.shift();
    }
    const base = entry.samples[0];
    const span = sample.uptime - base.uptime;
    if (span >= 2) {
      entry.rates = {
        delivered: (sample.delivered - base.delivered) / span,
        published: (sample.published - base.published) / span,
      };
    }
  }

  function connectionTotal(info) {
    return Object.values(info.connections || {}).reduce((a, b) => a + b, 0);
  }

  function trimSeries() {
    const cutoff = Date.now() - CHART_SECS * 1000;
    while (state.series.length && state.series[0].t < cutoff) {
      state.series.shift();
    }
  }

  // ---------------------------------------------------------------------------------------
  // Rendering

  function setState(kind, text) {
    const el = $('state');
    el.dataset.state = kind;
    el.textContent = text;
  }

  function showNotice(text) {
    $('notice-text').textContent = text;
    $('notice').hidden = false;
  }

  function hideNotice() {
    $('notice').hidden = true;
  }

  function rate(v) {
    if (v === null || v === undefined) {
      return '–';
    }
    return v >= 100 ? Math.round(v).toLocaleString() : v.toFixed(1);
  }

  function uptime(secs) {
    const d = Math.floor(secs / 86400);
    const h = Math.floor((secs % 86400) / 3600);
    const m = Math.floor((secs % 3600) / 60);
    const s = secs % 60;
    if (d) return d + 'd ' + h + 'h';
    if (h) return h + 'h ' + m + 'm';
    if (m) return m + 'm ' + s + 's';
    return s + 's';
  }

  function render(totals) {
    $('answered-by').textContent = state.answeredBy || '–';
    $('updated').textContent = new Date(state.lastOk).toLocaleTimeString();
    $('total-nodes').textContent = totals.nodes;
    $('total-connections').textContent = totals.connections.toLocaleString();
    $('total-channels').textContent = totals.channels.toLocaleString();
    $('total-delivered').textContent = rate(totals.delivered);
    $('total-published').textContent = rate(totals.published);

    const body = $('nodes');
    body.replaceChildren();
    const entries = [...state.nodes.values()].sort((a, b) => a.info.node.localeCompare(b.info.node));
    for (const entry of entries) {
      const info = entry.info;
      const conns = info.connections || {};
      const gone = entry.goneAt !== null;
      const cells = [
        [info.node, 'left'],
        [info.address, 'left'],
        ...TRANSPORTS.map((t) => [String(conns[t] ?? 0)]),
        [String(connectionTotal(info))],
        [String(info.channels)],
        [gone ? '–' : rate(entry.rates.delivered)],
        [gone ? '–' : rate(entry.rates.published)],
        [uptime(info.uptime_secs)],
        [info.version, 'left'],
        [gone ? 'gone since ' + new Date(entry.goneAt).toLocaleTimeString() : 'up', 'left state'],
      ];
      const tr = document.createElement('tr');
      tr.dataset.node = info.node;
      if (gone) {
        tr.className = 'gone';
      }
      for (const [text, cls] of cells) {
        const td = document.createElement('td');
        td.textContent = text;
        if (cls) {
          td.className = cls;
        }
        tr.append(td);
      }
      body.append(tr);
    }
    drawChart();
  }

  // A line chart of the cluster's delivered and published rates, drawn on a canvas.
  function drawChart() {
    const canvas = $('chart');
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (!width || !height) {
      return;
    }
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
    const ctx = canvas.getContext('2d');
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);

    const pad = { left: 48, right: 12, top: 10, bottom: 22 };
    const plotW = width - pad.left - pad.right;
    const plotH = height - pad.top - pad.bottom;
    const now = Date.now();
    const values = state.series.flatMap((p) => [p.delivered, p.published]).filter((v) => v !== null);
    const top = niceCeiling(Math.max(1, ...values));
    const x = (t) => pad.left + plotW * (1 - (now - t) / (CHART_SECS * 1000));
    const y = (v) => pad.top + plotH * (1 - v / top);

    // Grid and labels.
    ctx.font = '11px system-ui, sans-serif';
    ctx.fillStyle = '#6b7385';
    ctx.strokeStyle = '#eef0f3';
    ctx.lineWidth = 1;
    ctx.textAlign = 'right';
    ctx.textBaseline = 'middle';
    for (let i = 0; i <= 4; i++) {
      const v = (top * i) / 4;
      const yy = Math.round(y(v)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(pad.left, yy);
      ctx.lineTo(width - pad.right, yy);
      ctx.stroke();
      const digits = top >= 40 ? 0 : top >= 4 ? 1 : 2;
      ctx.fillText(v.toLocaleString(undefined, { maximumFractionDigits: digits }), pad.left - 6, yy);
    }
    ctx.textAlign = 'center';
    ctx.textBaseline = 'top';
    for (let m = 5; m >= 0; m--) {
      const xx = x(now - m * 60000);
      ctx.fillText(m ? '-' + m + ' min' : 'now', Math.min(Math.max(xx, pad.left + 16), width - 20), height - pad.bottom + 6);
    }

    // One line per series; a poll with no answer breaks the line.
    for (const name of ['delivered', 'published']) {
      ctx.strokeStyle = COLORS[name];
      ctx.lineWidth = 2;
      ctx.beginPath();
      let drawing = false;
      for (const p of state.series) {
        const v = p[name];
        if (v === null) {
          drawing = false;
          continue;
        }
        if (drawing) {
          ctx.lineTo(x(p.t), y(v));
        } else {
          ctx.moveTo(x(p.t), y(v));
          drawing = true;
        }
      }
      ctx.stroke();
    }
  }

  // 1, 2, 5, 10, 20, 50… at or above v.
  function niceCeiling(v) {
    const exp = 10 ** Math.floor(Math.log10(v));
    for (const m of [1, 2, 5, 10]) {
      if (m * exp >= v) {
        return m * exp;
      }
    }
    return 10 * exp;
  }

  window.addEventListener('resize', drawChart);
  window.heraldStatus = state;
  poll();
})();
