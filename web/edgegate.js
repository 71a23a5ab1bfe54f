// edgegate browser SDK: WebTransport with a WebSocket fallback, one protocol, reconnects that
// resume every subscription from its last offset. An ES module with no dependencies and no
// build step: `import { connect } from '/edgegate.js'` (every node serves it).
//
//   const gw = await connect(location.origin, { token });
//   gw.subscribe('chat:lobby', { onMessage: (m) => console.log(m.text) });
//   await gw.publish('chat:lobby', 'hello');
//
// See edgegate.d.ts for the full API.

import { encodeClient, decodeServer, withLength, StreamDecoder } from './codec.js';

export * from './codec.js';

const PROTOCOL_VERSION = 1;
const CLIENT_NAME = 'edgegate-js/0.1';
const enc = new TextEncoder();
const dec = new TextDecoder();

const DEFAULTS = {
  token: '',
  transport: 'auto', // 'auto' | 'webtransport' | 'websocket'
  webtransportHeadStartMs: 500,
  connectTimeoutMs: 10000,
  requestTimeoutMs: 10000,
  maxQueuedPublishes: 1000,
  backoffMinMs: 250,
  backoffMaxMs: 10000,
  pingIntervalMs: 5000,
  certHash: 'auto', // 'auto' (dev: fetch /cert.sha256 over plain http), a hex string, or null
  remember: true,
};

const hexToBytes = (h) => Uint8Array.from(h.match(/../g).map((x) => parseInt(x, 16)));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const storageKey = (url) => `edgegate.transport:${url}`;

function remembered(url) {
  try { return globalThis.localStorage?.getItem(storageKey(url)) ?? null; } catch { return null; }
}
function remember(url, t) {
  try { globalThis.localStorage?.setItem(storageKey(url), t); } catch { /* private mode */ }
}

/** A server error reply: `code` is the protocol's stable error code. */
export class EdgegateError extends Error {
  constructor(code, reason) { super(`${code}: ${reason}`); this.code = code; this.reason = reason; }
}

// ---- transports: each yields frames to `onFrame` and reports `onClose` once ----

async function openWebTransport(base, opts, onFrame, onClose) {
  const u = new URL(base);
  const url = `https://${u.host}/wt`;
  const init = {};
  let hash = opts.certHash;
  if (hash === 'auto') {
    hash = null;
    if (u.protocol === 'http:') { // a dev node: self-signed certificate, pinned by hash
      const r = await fetch(`${u.origin}/cert.sha256`, { cache: 'no-store' });
      if (r.ok) hash = (await r.text()).trim();
    }
  }
  if (hash) init.serverCertificateHashes = [{ algorithm: 'sha-256', value: hexToBytes(hash) }];
  const wt = new WebTransport(url, init);
  await wt.ready;
  const control = await wt.createBidirectionalStream();
  const writer = control.writable.getWriter();
  const dgWriter = wt.datagrams.writable.getWriter();
  let closed = false;
  const close = (why) => { if (!closed) { closed = true; onClose(why); } };
  const pump = async (readable) => {
    const reader = readable.getReader();
    const d = new StreamDecoder();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        for (const f of d.push(value)) onFrame(decodeServer(f));
      }
    } catch (e) { if (!closed) close(e); }
  };
  pump(control.readable).then(() => close('control stream ended'));
  (async () => {
    const uni = wt.incomingUnidirectionalStreams.getReader();
    try {
      for (;;) {
        const { value, done } = await uni.read();
        if (done) return;
        pump(value);
      }
    } catch { /* the session closed */ }
  })();
  (async () => {
    const dg = wt.datagrams.readable.getReader();
    try {
      for (;;) {
        const { value, done } = await dg.read();
        if (done) return;
        try { onFrame(decodeServer(value)); } catch { /* a bad datagram is dropped */ }
      }
    } catch { /* closed */ }
  })();
  wt.closed.then(() => close('closed'), (e) => close(e));
  return {
    kind: 'webtransport',
    send: (frame) => writer.write(withLength(encodeClient(frame))),
    sendDatagram: (frame) => dgWriter.write(encodeClient(frame)),
    close: () => { closed = true; try { wt.close(); } catch { /* already */ } },
  };
}

function openWebSocket(base, opts, onFrame, onClose) {
  const u = new URL(base);
  const url = `${u.protocol === 'https:' ? 'wss' : 'ws'}://${u.host}/ws`;
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    ws.binaryType = 'arraybuffer';
    let open = false;
    let closed = false;
    ws.onopen = () => {
      open = true;
      resolve({
        kind: 'websocket',
        send: (frame) => ws.send(encodeClient(frame)),
        sendDatagram: (frame) => ws.send(encodeClient(frame)),
        close: () => { closed = true; ws.close(); },
      });
    };
    ws.onmessage = (ev) => {
      try { onFrame(decodeServer(new Uint8Array(ev.data))); } catch (e) { ws.close(4000, 'bad frame'); }
    };
    ws.onclose = (ev) => {
      if (!open) reject(new Error(`WebSocket closed before opening (${ev.code})`));
      else if (!closed) { closed = true; onClose(`closed ${ev.code} ${ev.reason}`); }
    };
  });
}

// ---- the gateway object ----

class Gateway {
  constructor(url, opts) {
    this.url = url;
    this.home = url;
    this.opts = { ...DEFAULTS, ...opts };
    this.state = 'connecting';
    this.transport = null;
    this.rtt = null;
    this.sessionId = null;
    this.welcome = null;
    this.listeners = new Map();
    this.subs = new Map(); // channel → { opts, last: {epoch, offset} | null }
    this.pending = new Map(); // request id → { resolve, reject, timer }
    this.queue = []; // publishes made while disconnected
    this.nextId = 1;
    this.conn = null;
    this.attempt = 0;
    this.closing = false;
    this.pingTimer = null;
    this.stats = { received: 0, sent: 0 };
  }

  on(event, fn) {
    if (!this.listeners.has(event)) this.listeners.set(event, new Set());
    this.listeners.get(event).add(fn);
    return () => this.listeners.get(event)?.delete(fn);
  }

  emit(event, ...args) {
    for (const fn of this.listeners.get(event) ?? []) {
      try { fn(...args); } catch (e) { console.error('edgegate listener', e); }
    }
  }

  setState(state) {
    this.state = state;
    this.emit('state', state, this.transport);
  }

  id() { const i = this.nextId; this.nextId = this.nextId >= 0xfffffff0 ? 1 : this.nextId + 1; return i; }

  // One connection attempt: race the transports, send Hello, wait for Welcome.
  async open() {
    const o = this.opts;
    const url = this.url;
    const attempt = (opener) => new Promise((resolve, reject) => {
      let conn = null;
      let done = false;
      const early = []; // frames after Welcome, before this connection is adopted
      const timer = setTimeout(() => fail(new Error('connect timed out')), o.connectTimeoutMs);
      const fail = (e) => { if (!done) { done = true; clearTimeout(timer); conn?.close(); reject(e); } };
      const onFrame = (f) => {
        if (!done) {
          if (f.type === 'Welcome') { done = true; clearTimeout(timer); resolve({ conn, welcome: f, early }); } else if (f.type === 'Error') fail(new EdgegateError(f.code, f.reason));
          else if (f.type === 'GoingAway') fail(Object.assign(new Error('going away'), { reconnectTo: f.reconnect_to }));
          return;
        }
        if (this.conn === conn) this.onFrame(f); else if (early.length < 10000) early.push(f);
      };
      const onClose = (why) => {
        if (!done) fail(new Error(String(why)));
        else if (this.conn === conn) this.onClose(why);
      };
      Promise.resolve(opener(url, o, onFrame, onClose)).then((c) => {
        conn = c;
        if (done) { c.close(); return; }
        c.send({
          type: 'Hello', protocol_version: PROTOCOL_VERSION, token: o.token, client_name: CLIENT_NAME,
          resume: this.sessionId, single_stream: false,
        });
      }, fail);
    });
    const hasWT = typeof globalThis.WebTransport === 'function';
    const choice = o.transport;
    if (choice === 'websocket' || !hasWT) return attempt(openWebSocket);
    if (choice === 'webtransport') return attempt(openWebTransport);
    // auto: WebTransport first, WebSocket after a head start (at once if WebSocket won here
    // last time); the first Welcome wins.
    const headStart = remembered(url) === 'websocket' ? 0 : o.webtransportHeadStartMs;
    return new Promise((resolve, reject) => {
      let failures = 0;
      let won = false;
      let wsStarted = false;
      const errors = [];
      const settle = (p) => p.then((r) => {
        if (won) { r.conn.close(); return; }
        won = true;
        resolve(r);
      }, (e) => {
        errors.push(e);
        if (e instanceof EdgegateError || e.reconnectTo !== undefined) { if (!won) { won = true; reject(e); } return; }
        failures += 1;
        if (!wsStarted) startWs();
        if (failures === 2 && !won) reject(errors[errors.length - 1]);
      });
      const startWs = () => { if (!wsStarted && !won) { wsStarted = true; settle(attempt(openWebSocket)); } };
      settle(attempt(openWebTransport));
      setTimeout(startWs, headStart);
    });
  }

  async connectLoop() {
    let hint = null;
    for (;;) {
      if (this.closing) return;
      if (hint) this.url = hint;
      try {
        const { conn, welcome, early } = await this.open();
        if (this.closing) { conn.close(); return; }
        this.conn = conn;
        for (const f of early.splice(0)) this.onFrame(f);
        this.transport = conn.kind;
        this.welcome = welcome;
        this.sessionId = welcome.session_id;
        remember(this.url, conn.kind);
        this.attempt = 0;
        await this.resume();
        this.setState('connected');
        this.startPing();
        this.flushQueue();
        return;
      } catch (e) {
        if (e instanceof EdgegateError && (e.code >= 2000 && e.code < 3000)) {
          this.emit('error', e); // auth: retrying will not help
          this.close();
          return;
        }
        hint = e.reconnectTo ?? null;
        if (!hint && this.url !== this.home) this.url = this.home;
        this.attempt += 1;
        const cap = Math.min(this.opts.backoffMaxMs, this.opts.backoffMinMs * 2 ** Math.min(this.attempt, 16));
        if (!hint) await sleep(Math.max(50, Math.random() * cap)); // full jitter
      }
    }
  }

  // Resubscribes everything after a (re)connect, from the last offsets.
  async resume() {
    const subs = [...this.subs.entries()];
    await Promise.all(subs.map(([channel, s]) => this.sendSubscribe(channel, s).catch((e) => {
      s.opts.onError?.(e);
      this.emit('error', e);
    })));
  }

  sendSubscribe(channel, s) {
    const recover = s.last;
    return this.request({
      type: 'Subscribe', channel, recover,
      presence: s.opts.presence === undefined || s.opts.presence === null ? null : toBytes(s.opts.presence),
      presence_events: !!s.opts.onPresence,
    }).then((r) => {
      if (recover && (!r.recovered || r.position.epoch !== recover.epoch)) {
        const info = { channel, position: r.position, reason: r.recovered ? 'new epoch' : 'history does not cover the gap' };
        s.opts.onResync?.(info);
        this.emit('resync', info);
        s.last = r.position;
      } else if (!recover) {
        // A fresh subscription: everything after this position follows. (After a recovery
        // `position` is the head, and the recovered messages between `last` and it are still
        // on their way: `last` must stay where it is.)
        s.last = r.position;
      }
      return r;
    });
  }

  onClose(why) {
    this.conn = null;
    this.stopPing();
    for (const [, p] of this.pending) { clearTimeout(p.timer); p.reject(new Error('connection lost')); }
    this.pending.clear();
    if (this.closing) return;
    this.setState('reconnecting');
    this.emit('disconnect', String(why));
    this.connectLoop();
  }

  onFrame(f) {
    this.stats.received += 1;
    switch (f.type) {
      case 'Message': return this.onMessage(f);
      case 'Snapshot': {
        const s = this.subs.get(f.channel);
        if (s) {
          // Application state only: recovered messages may follow it on the same stream, so
          // it must not move the resume position.
          s.opts.onSnapshot?.(f.entries.map((e) => ({ ...e, get text() { return dec.decode(e.data); } })), f.position);
        }
        return undefined;
      }
      case 'Join': case 'Leave':
        return this.subs.get(f.channel)?.opts.onPresence?.({ type: f.type === 'Join' ? 'join' : 'leave', member: member(f.member) });
      case 'Ping': return this.conn?.send({ type: 'Pong', nonce: f.nonce });
      case 'Pong': {
        const sent = Number(f.nonce) / 1000;
        this.rtt = Math.max(0, performance.now() - sent);
        return this.emit('rtt', this.rtt);
      }
      case 'Dropped': return this.emit('dropped', { channel: f.channel, count: Number(f.count), reason: 'server' });
      case 'Resync': {
        const s = this.subs.get(f.channel);
        const info = { channel: f.channel, position: f.position, reason: 'resync' };
        if (s) { s.last = f.position; s.opts.onResync?.(info); }
        return this.emit('resync', info);
      }
      case 'Unsubscribed': {
        const s = this.subs.get(f.channel);
        this.subs.delete(f.channel);
        return s?.opts.onError?.(new EdgegateError(f.code, f.reason));
      }
      case 'GoingAway': {
        this.emit('goingaway', f);
        const conn = this.conn;
        this.conn = null;
        conn?.close();
        this.stopPing();
        this.setState('reconnecting');
        if (f.reconnect_to) this.url = f.reconnect_to;
        setTimeout(() => this.connectLoop(), Math.min(f.after_ms, 30000));
        return undefined;
      }
      case 'TokenExpiring': return this.emit('tokenexpiring', f.grace_ms);
      case 'Error':
        if (f.id !== 0) return this.reply(f.id, null, new EdgegateError(f.code, f.reason));
        return this.emit('error', new EdgegateError(f.code, f.reason));
      default:
        if (f.id !== undefined) return this.reply(f.id, f, null);
        return undefined;
    }
  }

  onMessage(m) {
    const s = this.subs.get(m.channel);
    if (!s) return;
    if (m.mode !== 'Datagram') {
      const last = s.last;
      if (last && last.epoch === m.epoch && m.offset <= last.offset) return; // a duplicate
      s.last = { epoch: m.epoch, offset: m.offset };
    }
    if (s.opts.mode && s.opts.mode !== m.mode.toLowerCase()) return;
    s.opts.onMessage?.({ ...m, mode: m.mode.toLowerCase(), get text() { return dec.decode(m.data); } });
  }

  reply(id, frame, err) {
    const p = this.pending.get(id);
    if (!p) return;
    this.pending.delete(id);
    clearTimeout(p.timer);
    if (err) p.reject(err); else p.resolve(frame);
  }

  request(frame) {
    if (!this.conn) return Promise.reject(new Error('not connected'));
    const id = this.id();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => { this.pending.delete(id); reject(new Error('request timed out')); }, this.opts.requestTimeoutMs);
      this.pending.set(id, { resolve, reject, timer });
      this.stats.sent += 1;
      Promise.resolve(this.conn.send({ ...frame, id })).catch((e) => this.reply(id, null, e));
    });
  }

  startPing() {
    this.stopPing();
    const ping = () => this.conn?.send({ type: 'Ping', nonce: Math.round(performance.now() * 1000) });
    ping();
    this.pingTimer = setInterval(ping, this.opts.pingIntervalMs);
  }

  stopPing() { if (this.pingTimer) clearInterval(this.pingTimer); this.pingTimer = null; }

  flushQueue() {
    const q = this.queue;
    this.queue = [];
    for (const item of q) this.sendPublish(item).then(item.resolve, item.reject);
  }

  sendPublish({ channel, data, mode, key }) {
    const frame = { type: 'Publish', channel, mode, key, data };
    if (mode === 'Datagram') {
      this.stats.sent += 1;
      return Promise.resolve(this.conn.sendDatagram({ ...frame, id: 0 })).then(() => null);
    }
    return this.request(frame).then((r) => r.position);
  }

  // ---- public API ----

  subscribe(channel, opts = {}) {
    if (this.subs.has(channel)) throw new Error(`already subscribed to ${channel}`);
    const s = { opts, last: null };
    this.subs.set(channel, s);
    const ready = this.conn ? this.sendSubscribe(channel, s) : Promise.resolve(null);
    ready.catch((e) => { this.subs.delete(channel); opts.onError?.(e); });
    return {
      channel,
      ready,
      unsubscribe: () => this.unsubscribe(channel),
    };
  }

  async unsubscribe(channel) {
    if (!this.subs.delete(channel) || !this.conn) return;
    await this.request({ type: 'Unsubscribe', channel });
  }

  publish(channel, data, opts = {}) {
    const mode = { reliable: 'Reliable', datagram: 'Datagram', latest: 'Latest' }[opts.mode ?? 'reliable'];
    if (!mode) return Promise.reject(new Error(`unknown mode ${opts.mode}`));
    const item = { channel, data: toBytes(data), mode, key: opts.key ?? null };
    if (this.conn) return this.sendPublish(item);
    if (mode === 'Datagram') return Promise.resolve(null); // stale state is worthless later
    return new Promise((resolve, reject) => {
      this.queue.push({ ...item, resolve, reject });
      while (this.queue.length > this.opts.maxQueuedPublishes) {
        const dropped = this.queue.shift();
        dropped.reject(new Error('dropped from the offline queue'));
        this.emit('dropped', { channel: dropped.channel, count: 1, reason: 'offline-queue' });
      }
    });
  }

  async presence(channel) {
    const r = await this.request({ type: 'Presence', channel });
    return r.members.map(member);
  }

  async history(channel, { since = null, limit = 100 } = {}) {
    const r = await this.request({ type: 'History', channel, since, limit });
    return { position: r.position, complete: r.complete, messages: r.messages.map((m) => ({ ...m, mode: m.mode.toLowerCase(), get text() { return dec.decode(m.data); } })) };
  }

  async refresh(token) {
    this.opts.token = token;
    if (this.conn) await this.request({ type: 'Refresh', token });
  }

  close() {
    this.closing = true;
    this.stopPing();
    this.conn?.close();
    this.conn = null;
    this.setState('closed');
  }
}

function toBytes(data) {
  if (data instanceof Uint8Array) return data;
  if (typeof data === 'string') return enc.encode(data);
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  return enc.encode(JSON.stringify(data));
}

function member(m) {
  let info = null;
  try { info = dec.decode(m.info); } catch { /* binary */ }
  return { sessionId: m.session_id, user: m.user, info, infoBytes: m.info };
}

/**
 * Connects to a node. `url` is the node's HTTP origin (`http://localhost:4433` for a dev
 * node, `https://node.example:4433` in production). Resolves once connected; reconnects by
 * itself afterwards until `close()`.
 */
export async function connect(url, opts = {}) {
  const gw = new Gateway(new URL(url).origin, opts);
  gw.setState('connecting');
  const first = gw.connectLoop();
  await Promise.race([
    first,
    new Promise((_, reject) => gw.on('error', (e) => { if (gw.state !== 'connected') reject(e); })),
  ]);
  if (gw.state !== 'connected') throw new Error('connection closed');
  return gw;
}
