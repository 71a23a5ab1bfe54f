// Peer for the edgegate load benchmark: `ws` 8.x, the same broadcast scenario.
// GET /sub?ch=NAME subscribes a connection to a channel; every binary message received on
// /pub?ch=NAME is sent to each subscriber of NAME. Prints `ready port=N` once listening.
'use strict';
const { WebSocketServer } = require('ws');

const port = Number(process.argv[2] || 0);
const channels = new Map();
const wss = new WebSocketServer({
  host: '127.0.0.1',
  port,
  perMessageDeflate: false,
  maxPayload: 1 << 20,
  clientTracking: false,
});

wss.on('connection', (ws, req) => {
  const url = new URL(req.url, 'http://peer');
  const ch = url.searchParams.get('ch') || 'default';
  if (url.pathname === '/pub') {
    ws.on('message', (data, isBinary) => {
      const subs = channels.get(ch);
      if (!subs) return;
      for (const s of subs) s.send(data, { binary: isBinary });
    });
    return;
  }
  let subs = channels.get(ch);
  if (!subs) channels.set(ch, (subs = new Set()));
  subs.add(ws);
  ws.on('close', () => subs.delete(ws));
  ws.on('error', () => subs.delete(ws));
});

wss.on('listening', () => console.log(`ready port=${wss.address().port}`));
