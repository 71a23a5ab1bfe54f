// The live demo served at `/` by every node: a shared scene (cursors on datagrams, positions
// kept on `latest` so new tabs see everyone at once), a reliable chat with presence, and the
// node's price ticker. Everything goes through the public SDK API.
import { connect } from '/edgegate.js';

const $ = (s) => document.querySelector(s);
const COLORS = ['#5eead4', '#f472b6', '#fbbf24', '#60a5fa', '#a78bfa', '#fb923c', '#4ade80', '#f87171'];
const ANIMALS = ['otter', 'lynx', 'heron', 'fox', 'orca', 'ibex', 'koala', 'puffin', 'gecko', 'yak'];
const me = {
  id: Math.random().toString(36).slice(2, 10),
  name: `${ANIMALS[Math.floor(Math.random() * ANIMALS.length)]}-${Math.floor(Math.random() * 90 + 10)}`,
  color: COLORS[Math.floor(Math.random() * COLORS.length)],
};

let received = 0;
function count() { received += 1; }

const gw = await connect(location.origin).catch((e) => {
  document.body.dataset.state = 'closed';
  $('#state').textContent = `failed: ${e.message}`;
  throw e;
});

function showState(state) {
  document.body.dataset.state = state;
  $('#state').textContent = state;
  $('#transport').textContent = gw.transport ?? '—';
  $('#node').textContent = gw.welcome ? `${gw.welcome.node_id} · ${gw.welcome.region}` : '—';
}
gw.on('state', showState);
showState(gw.state);
setInterval(() => {
  $('#rate').textContent = String(received);
  received = 0;
  $('#rtt').textContent = gw.rtt === null ? '—' : `${gw.rtt.toFixed(1)} ms`;
}, 1000);

// ---- the scene ----
const scene = $('#scene');
const canvas = $('#trails');
const ctx2d = canvas.getContext('2d');
const cursors = new Map(); // id → { el, x, y, color, seen }
function resize() { canvas.width = scene.clientWidth; canvas.height = scene.clientHeight; }
resize();
addEventListener('resize', resize);

function place(state) {
  if (!state || typeof state.x !== 'number') return;
  let c = cursors.get(state.id);
  if (!c) {
    const el = document.createElement('div');
    el.className = 'cursor';
    el.innerHTML = '<div class="dot"></div><div class="name"></div>';
    scene.appendChild(el);
    c = { el };
    cursors.set(state.id, c);
  }
  const x = state.x * scene.clientWidth;
  const y = state.y * scene.clientHeight;
  if (c.x !== undefined) {
    ctx2d.strokeStyle = state.color;
    ctx2d.globalAlpha = 0.6;
    ctx2d.lineWidth = 3;
    ctx2d.lineCap = 'round';
    ctx2d.beginPath(); ctx2d.moveTo(c.x, c.y); ctx2d.lineTo(x, y); ctx2d.stroke();
  }
  Object.assign(c, { x, y, seen: performance.now() });
  c.el.style.left = `${x}px`;
  c.el.style.top = `${y}px`;
  c.el.style.color = state.color;
  c.el.querySelector('.name').textContent = state.id === me.id ? `${state.name} (you)` : state.name;
}

// Fade the trails; forget cursors silent for 10 s.
setInterval(() => {
  ctx2d.globalAlpha = 1;
  ctx2d.fillStyle = 'rgba(13,20,40,0.18)';
  ctx2d.globalCompositeOperation = 'destination-out';
  ctx2d.fillRect(0, 0, canvas.width, canvas.height);
  ctx2d.globalCompositeOperation = 'source-over';
  const now = performance.now();
  for (const [id, c] of cursors) {
    if (id !== me.id && now - c.seen > 10000) { c.el.remove(); cursors.delete(id); }
  }
}, 50);

const parse = (text) => { try { return JSON.parse(text); } catch { return null; } };
gw.subscribe('scene:demo', {
  onSnapshot: (entries) => entries.forEach((e) => place(parse(e.text))),
  onMessage: (m) => { count(); place(parse(m.text)); },
});

let lastSent = 0;
let pending = null;
scene.addEventListener('pointermove', (ev) => {
  const r = scene.getBoundingClientRect();
  pending = { ...me, x: (ev.clientX - r.left) / r.width, y: (ev.clientY - r.top) / r.height };
  place(pending);
  const now = performance.now();
  if (now - lastSent > 16) { // ~60 Hz on datagrams: losing one costs nothing
    lastSent = now;
    gw.publish('scene:demo', JSON.stringify(pending), { mode: 'datagram' });
  }
});
// The latest position, conflated by key, so late joiners get everyone in the snapshot.
setInterval(() => {
  if (pending) gw.publish('scene:demo', JSON.stringify(pending), { mode: 'latest', key: me.id }).catch(() => {});
  pending = null;
}, 500);

// ---- the ticker ----
const rows = new Map();
function tick(text) {
  const t = parse(text);
  if (!t) return;
  let r = rows.get(t.s);
  if (!r) {
    const el = document.createElement('div');
    el.className = 'row';
    el.innerHTML = '<span class="sym"></span><span class="px"></span><span class="chg"></span>';
    el.querySelector('.sym').textContent = t.s;
    $('#ticker').appendChild(el);
    r = { el, open: t.p, last: t.p };
    rows.set(t.s, r);
  }
  const px = r.el.querySelector('.px');
  px.textContent = t.p >= 100 ? t.p.toFixed(2) : t.p.toFixed(4);
  px.className = `px ${t.p >= r.last ? 'flash-up' : 'flash-down'}`;
  const chg = ((t.p - r.open) / r.open) * 100;
  const c = r.el.querySelector('.chg');
  c.textContent = `${chg >= 0 ? '+' : ''}${chg.toFixed(2)}%`;
  c.className = `chg ${chg >= 0 ? 'up' : 'down'}`;
  r.last = t.p;
}
gw.subscribe('prices:ticker', {
  onSnapshot: (entries) => entries.forEach((e) => tick(e.text)),
  onMessage: (m) => { count(); tick(m.text); },
});

// ---- the chat ----
const online = new Map();
function drawOnline() {
  $('#online').replaceChildren(...[...online.values()].map((n) => {
    const s = document.createElement('span');
    s.textContent = n;
    return s;
  }));
}
function say(from, text, time, older = false) {
  const li = document.createElement('li');
  const b = document.createElement('b');
  b.textContent = from;
  const span = document.createElement('span');
  span.textContent = text;
  const t = document.createElement('time');
  t.textContent = new Date(time).toLocaleTimeString();
  li.append(b, span, t);
  const log = $('#chat-log');
  if (older) log.prepend(li); else log.appendChild(li);
  while (log.children.length > 200) log.firstChild.remove();
  log.scrollTop = log.scrollHeight;
}
gw.subscribe('chat:lobby', {
  presence: JSON.stringify({ name: me.name }),
  onPresence: (ev) => {
    const name = parse(ev.member.info)?.name ?? ev.member.sessionId;
    if (ev.type === 'join') online.set(ev.member.sessionId, name); else online.delete(ev.member.sessionId);
    drawOnline();
  },
  onMessage: (m) => {
    count();
    const msg = parse(m.text);
    if (msg) say(msg.name, msg.text, m.time_ms);
  },
  onResync: () => say('edgegate', 'the node restarted: chat history was reset', Date.now()),
}).ready.then(async (sub) => {
  for (const m of await gw.presence('chat:lobby')) online.set(m.sessionId, parse(m.info)?.name ?? m.sessionId);
  drawOnline();
  // What was said before this tab opened: up to the subscribe position (later ones arrive live).
  const h = await gw.history('chat:lobby', { limit: 50 });
  const older = h.messages.filter((m) => sub && m.epoch === sub.position.epoch && m.offset <= sub.position.offset);
  for (const m of older.reverse()) { const msg = parse(m.text); if (msg) say(msg.name, msg.text, m.time_ms, true); }
});

$('#chat-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const input = $('#chat-input');
  const text = input.value.trim();
  if (!text) return;
  input.value = '';
  gw.publish('chat:lobby', JSON.stringify({ name: me.name, text })).catch((e) => say('edgegate', `not sent: ${e.message}`, Date.now()));
});
