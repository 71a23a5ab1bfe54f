// Peer for the edgegate load benchmark: Socket.IO 4.8, the same broadcast scenario.
// A client emits `sub` (channel, ack) to join a room; `pub` (channel, data) is emitted to the
// room as `m` (data). WebSocket transport only (clients connect straight to it).
// Prints `ready port=N` once listening.
'use strict';
const http = require('http');
const { Server } = require('socket.io');

const port = Number(process.argv[2] || 0);
const srv = http.createServer();
const io = new Server(srv, {
  transports: ['websocket'],
  perMessageDeflate: false,
  serveClient: false,
  maxHttpBufferSize: 1 << 20,
});

io.on('connection', (socket) => {
  socket.on('sub', (ch, ack) => {
    socket.join(String(ch));
    if (typeof ack === 'function') ack();
  });
  socket.on('pub', (ch, data) => {
    io.to(String(ch)).emit('m', data);
  });
});

srv.listen(port, '127.0.0.1', () => console.log(`ready port=${srv.address().port}`));
