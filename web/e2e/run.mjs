// End to end in headless Chromium against real `edgegate serve` processes on loopback.
// Run by tests/browser.rs: EDGEGATE_BIN (the server binary), EDGEGATE_OUT (screenshot dir),
// CHROMIUM (browser path). Every wait is bounded; the process exits non-zero on failure.
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { mkdirSync } from 'node:fs';
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';

const BIN = process.env.EDGEGATE_BIN;
const OUT = process.env.EDGEGATE_OUT ?? 'target/test-output';
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const WAIT = 20000;

function serve(listen = '127.0.0.1:0') {
  const child = spawn(BIN, ['serve', '--listen', listen], { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, RUST_LOG: 'warn' } });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no ready line within 30 s')), 30000);
    createInterface({ input: child.stdout }).on('line', (line) => {
      if (!line.startsWith('ready ')) return;
      clearTimeout(timer);
      const f = Object.fromEntries(line.split(' ').slice(1).map((kv) => kv.split(/=(.*)/s).slice(0, 2)));
      resolve({ child, http: f.http, key: f.api_key, port: new URL(f.http).port });
    });
    child.on('exit', (code) => reject(new Error(`edgegate exited early (${code})`)));
  });
}

function stop(node) {
  return new Promise((resolve) => {
    if (node.child.exitCode !== null) { resolve(); return; }
    node.child.once('exit', resolve);
    node.child.kill('SIGKILL');
  });
}

async function api(node, path, body) {
  const r = await fetch(`${node.http}${path}`, {
    method: 'POST',
    headers: { authorization: `Bearer ${node.key}`, 'content-type': 'application/json' },
    body: JSON.stringify(body ?? {}),
  });
  const text = await r.text();
  assert.equal(r.status, 200, `${path}: ${text}`);
  return JSON.parse(text);
}

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});
let node = await serve();
after(async () => { await browser.close(); await stop(node); });

// A page on the node's origin with the SDK loaded as `window.eg` and a connected gateway.
async function page({ noWebTransport = false, channel = null } = {}) {
  const ctx = await browser.newContext();
  const p = await ctx.newPage();
  p.on('pageerror', (e) => console.error('page error:', e.message));
  if (noWebTransport) await p.addInitScript(() => { delete window.WebTransport; });
  await p.goto(`${node.http}/healthz`);
  await p.evaluate(async () => {
    window.eg = await import('/edgegate.js');
    window.got = {};
    window.events = [];
    window.gw = await window.eg.connect(location.origin);
    for (const ev of ['state', 'resync', 'dropped', 'goingaway', 'disconnect']) {
      window.gw.on(ev, (...a) => window.events.push([ev, JSON.stringify(a[0] ?? null)]));
    }
  });
  if (channel) await sub(p, channel);
  return p;
}

async function sub(p, channel, mode) {
  await p.evaluate(async ([c, m]) => {
    window.got[c] = [];
    await window.gw.subscribe(c, { mode: m, onMessage: (msg) => window.got[c].push([msg.offset, msg.text]) }).ready;
  }, [channel, mode]);
}

const transport = (p) => p.evaluate(() => window.gw.transport);
const count = (p, c) => p.evaluate((ch) => window.got[ch].length, c);
const waitCount = (p, c, n) => p.waitForFunction(([ch, k]) => window.got[ch].length >= k, [c, n], { timeout: WAIT });

test('two pages exchange reliable and datagram messages over WebTransport', async () => {
  const a = await page({ channel: 'chat:e2e' });
  const b = await page({ channel: 'chat:e2e' });
  assert.equal(await transport(a), 'webtransport');
  assert.equal(await transport(b), 'webtransport');
  await b.evaluate(async () => { for (let i = 0; i < 50; i++) await window.gw.publish('chat:e2e', `m${i}`); });
  await waitCount(a, 'chat:e2e', 50);
  const got = await a.evaluate(() => window.got['chat:e2e']);
  assert.deepEqual(got.map(([, t]) => t), Array.from({ length: 50 }, (_, i) => `m${i}`));
  assert.deepEqual(got.map(([o]) => o), Array.from({ length: 50 }, (_, i) => i + 1));
  await sub(a, 'scene:e2e', 'datagram');
  await b.evaluate(async () => { for (let i = 0; i < 100; i++) await window.gw.publish('scene:e2e', `d${i}`, { mode: 'datagram' }); });
  // Datagrams may be lost; on loopback nearly all arrive.
  await waitCount(a, 'scene:e2e', 90);
  await a.context().close(); await b.context().close();
});

test('a page without WebTransport falls back to WebSocket and interoperates both ways', async () => {
  const wt = await page({ channel: 'chat:fallback' });
  const ws = await page({ noWebTransport: true, channel: 'chat:fallback' });
  assert.equal(await transport(wt), 'webtransport');
  assert.equal(await transport(ws), 'websocket');
  await wt.evaluate(() => window.gw.publish('chat:fallback', 'from wt'));
  await ws.evaluate(() => window.gw.publish('chat:fallback', 'from ws'));
  for (const p of [wt, ws]) {
    await waitCount(p, 'chat:fallback', 2);
    const texts = (await p.evaluate(() => window.got['chat:fallback'])).map(([, t]) => t).sort();
    assert.deepEqual(texts, ['from ws', 'from wt']);
  }
  await wt.context().close(); await ws.context().close();
});

test('a cut mid-stream: the page reconnects and the reliable stream has no gap and no duplicate', async () => {
  const pages = [await page({ channel: 'room:cut' }), await page({ noWebTransport: true, channel: 'room:cut' })];
  const N = 300;
  for (let i = 1; i <= N; i++) {
    await api(node, '/api/publish', { channel: 'room:cut', data: `${i}` });
    if (i === 100 || i === 200) await api(node, '/api/disconnect');
  }
  for (const p of pages) {
    await waitCount(p, 'room:cut', N).catch(async (e) => {
      const st = await p.evaluate(() => {
        const offs = window.got['room:cut'].map(([o]) => o);
        const gaps = [];
        for (let i = 1; i < offs.length; i++) if (offs[i] !== offs[i - 1] + 1) gaps.push([offs[i - 1], offs[i]]);
        return { n: offs.length, first: offs[0], gaps, t: window.gw.transport };
      });
      console.error('cut test state', JSON.stringify(st));
      throw e;
    });
    const got = await p.evaluate(() => window.got['room:cut']);
    assert.deepEqual(got.map(([o]) => o), Array.from({ length: N }, (_, i) => i + 1), 'offsets 1..N, once each');
    const events = await p.evaluate(() => window.events);
    assert.ok(events.some(([e]) => e === 'goingaway' || e === 'disconnect'), 'was cut');
    assert.ok(!events.some(([e]) => e === 'resync'), 'history covered the cut');
    await p.context().close();
  }
});

test('after a server restart the page reconnects and reports a resync', async () => {
  const p = await page({ channel: 'room:restart' });
  await api(node, '/api/publish', { channel: 'room:restart', data: 'before' });
  await waitCount(p, 'room:restart', 1);
  const port = node.port;
  await stop(node);
  // Same port, new process: history is gone, the channel has a new epoch.
  for (let i = 0; ; i++) {
    try { node = await serve(`127.0.0.1:${port}`); break; } catch (e) { if (i > 20) throw e; await new Promise((r) => setTimeout(r, 100)); }
  }
  await p.waitForFunction(() => window.events.some(([e]) => e === 'resync'), null, { timeout: WAIT });
  await p.waitForFunction(() => window.gw.state === 'connected', null, { timeout: WAIT });
  await api(node, '/api/publish', { channel: 'room:restart', data: 'after' });
  await p.waitForFunction(() => window.got['room:restart'].some(([, t]) => t === 'after'), null, { timeout: WAIT });
  await p.context().close();
});

test('the demo page loads, connects, and is worth a look', async () => {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const pages = [await ctx.newPage(), await ctx.newPage()];
  for (const p of pages) {
    p.on('pageerror', (e) => { throw e; });
    await p.goto(`${node.http}/`);
    await p.waitForFunction(() => document.body.dataset.state === 'connected', null, { timeout: WAIT });
  }
  const [a, b] = pages;
  // Some life in the scene and the chat from the second tab.
  for (let i = 0; i < 20; i++) await b.mouse.move(300 + i * 15, 300 + Math.sin(i / 3) * 80);
  await b.fill('#chat-input', 'hello from the other tab');
  await b.press('#chat-input', 'Enter');
  await a.waitForFunction(() => document.querySelectorAll('#chat-log li').length > 0, null, { timeout: WAIT });
  await a.waitForFunction(() => document.querySelectorAll('#ticker .row').length >= 3, null, { timeout: WAIT });
  await a.waitForFunction(() => document.querySelectorAll('.cursor').length >= 1, null, { timeout: WAIT });
  const t = await a.evaluate(() => document.querySelector('#transport').textContent);
  assert.match(t, /webtransport/i);
  mkdirSync(OUT, { recursive: true });
  const path = `${OUT}/demo.png`;
  await a.screenshot({ path });
  console.log(`screenshot: ${path}`);
  await ctx.close();
});

test('the mesh page draws the node and updates itself', async () => {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 720 } });
  const p = await ctx.newPage();
  p.on('pageerror', (e) => { throw e; });
  await p.goto(`${node.http}/mesh`);
  await p.waitForFunction(() => document.body.dataset.state === 'live', null, { timeout: WAIT });
  const first = await p.textContent('#updated');
  await p.waitForFunction((t) => document.querySelector('#updated').textContent !== t, first, { timeout: WAIT });
  assert.ok((await p.$$('.node')).length >= 1, 'at least this node is drawn');
  mkdirSync(OUT, { recursive: true });
  const path = `${OUT}/mesh.png`;
  await p.screenshot({ path });
  console.log(`screenshot: ${path}`);
  await ctx.close();
});
