// Peer for the edgegate load benchmark: uWebSockets.js v20 (npm `uwebsockets` 3.0.6, a
// third-party republish of its binaries; benches/README.md), the same broadcast scenario as
// ws.js. GET /sub?ch=NAME subscribes a connection to a channel; every binary message received
// on /pub?ch=NAME goes to each subscriber of NAME through uWS's own pub/sub
// (`ws.subscribe` + `app.publish`). Prints `ready port=N` once listening on 127.0.0.1.
'use strict';
const uWS = require('uwebsockets');

const port = Number(process.argv[2] || 0);
const app = uWS.App();

app.ws('/*', {
  compression: uWS.DISABLED,
  maxPayloadLength: 1 << 20,
  // Slow subscribers are buffered, never skipped: 64 MiB per socket before a publish drops.
  maxBackpressure: 64 << 20,
  closeOnBackpressureLimit: false,
  // No idle timeout (and so no automatic pings): idle runs keep every connection open.
  idleTimeout: 0,
  sendPingsAutomatically: false,
  upgrade: (res, req, context) => {
    res.upgrade(
      { path: req.getUrl(), ch: req.getQuery('ch') || 'default' },
      req.getHeader('sec-websocket-key'),
      req.getHeader('sec-websocket-protocol'),
      req.getHeader('sec-websocket-extensions'),
      context,
    );
  },
  open: (ws) => {
    const { path, ch } = ws.getUserData();
    if (path === '/sub') ws.subscribe(ch);
  },
  message: (ws, message, isBinary) => {
    const { path, ch } = ws.getUserData();
    if (path === '/pub') app.publish(ch, message, isBinary);
  },
  dropped: () => {
    // Never expected with maxBackpressure above; say so loudly if it happens.
    console.error('uws.js: message dropped by backpressure');
  },
});

app.listen('127.0.0.1', port, (token) => {
  if (!token) {
    console.error(`uws.js: cannot listen on 127.0.0.1:${port}`);
    process.exit(1);
  }
  console.log(`ready port=${uWS.us_socket_local_port(token)}`);
});
