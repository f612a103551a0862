// Loaded into a blank page by test_herald_js.py: drives herald.js (imported from the cluster, as
// an application would) and records everything it reports in `window.H.rec` for the test to read.
// `window.__ws` counts WebSocket constructions (installed before any script runs).
(() => {
  const rec = {
    states: [],
    transports: [],
    messages: [], // {channel, epoch, offset, data}
    resets: [],
    errors: [],
    tokenCalls: 0,
    acks: [],
    rejects: [],
    joins: [],
    ready: {},
  };
  window.H = {
    rec,
    herald: null,
    subs: {},
    // base: where herald.js and the endpoints are ("/direct", "/noupgrade", ...).
    // url: the edge's absolute URL, for a page on another origin (then `anonymous`: no token).
    async start({ base, url, anonymous, user, transports, ttl, badToken, channels, options }) {
      const root = url || location.origin + base;
      const mod = await import(root + "/herald.js");
      window.HeraldModule = mod;
      const token = async () => {
        rec.tokenCalls += 1;
        if (badToken) return "not-a-token";
        const q = new URLSearchParams({ user });
        if (ttl) q.set("ttl", String(ttl));
        const r = await fetch(base + "/dev/token?" + q, { cache: "no-store" });
        if (!r.ok) throw new Error("dev token: HTTP " + r.status);
        return (await r.json()).token;
      };
      const identity = anonymous ? { user } : { token };
      const herald = new mod.Herald(root, { transports, ...identity, ...(options || {}) });
      this.herald = herald;
      herald.on("state", (s) => rec.states.push(s));
      herald.on("transport", (t) => rec.transports.push(t));
      herald.on("error", (e) => rec.errors.push({ message: String(e.message), code: e.code, reason: e.reason }));
      for (const channel of channels || []) this.subscribe(channel);
      await Promise.all(Object.values(this.subs).map((s) => s.ready));
      return { transport: herald.transport, node: herald.node, user: herald.user, state: herald.state };
    },
    subscribe(channel) {
      const sub = this.herald.subscribe(channel, {
        onMessage: (m) => rec.messages.push({ channel, epoch: m.epoch, offset: m.offset, data: m.data, user: m.user }),
        onReset: (info) => rec.resets.push(info),
        onJoin: (p) => rec.joins.push({ kind: "join", channel, user: p.user }),
        onLeave: (p) => rec.joins.push({ kind: "leave", channel, user: p.user }),
        onError: (e) => rec.errors.push({ message: String(e.message), code: e.code, reason: e.reason, channel }),
      });
      this.subs[channel] = sub;
      sub.ready.then((r) => (rec.ready[channel] = r), (e) => (rec.ready[channel] = { error: e.code || e.reason }));
      return sub.ready;
    },
    // Publishes without waiting; the outcome lands in rec.acks / rec.rejects.
    send(channel, text, options) {
      const started = Date.now();
      return this.herald.publish(channel, { text }, options || {}).then(
        (a) => rec.acks.push({ text, epoch: a.epoch, offset: a.offset, ms: Date.now() - started }),
        (e) => rec.rejects.push({ text, message: String(e.message), code: e.code, reason: e.reason }),
      );
    },
    texts(channel) {
      return rec.messages.filter((m) => m.channel === channel).map((m) => m.data && m.data.text);
    },
    state() {
      const h = this.herald;
      return h && { state: h.state, transport: h.transport, node: h.node, user: h.user, client: h.client };
    },
  };
})();
