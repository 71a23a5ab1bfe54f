//! A lean WebSocket client for the generator: one read drains every complete frame in the
//! buffer, nothing is allocated per frame, and the same code speaks three dialects: edgegate
//! (bincode frames in binary messages), the plain `ws` and uWebSockets.js peers (raw payload
//! per binary message) and Socket.IO 4 (Engine.IO v4 text packets over WebSocket).

use std::io;
use std::net::{IpAddr, SocketAddr};

use edgegate::protocol::{ServerFrame, decode_server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::proto;
use crate::stats::Tally;

/// Which server dialect a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// edgegate `/ws`.
    Edgegate,
    /// `benches/peers/ws.js` and `uws.js`: `/sub?ch=` and `/pub?ch=`.
    Plain,
    /// `benches/peers/socketio.js`: Socket.IO 4 over a direct WebSocket.
    SocketIo,
}

/// Opcodes.
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// Initial read buffer per connection: a few dozen 100-byte frames per read, small enough
/// for 15k connections in the generator.
const READ_BUF: usize = 8 * 1024;

/// Largest frame accepted from a server (far above anything the scenarios send).
const MAX_FRAME: usize = 1 << 20;

/// An open WebSocket connection.
pub struct Ws {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    mask: u32,
    out: Vec<u8>,
    /// Set once a close frame arrived.
    pub closed: bool,
}

/// What to do with one received frame.
pub enum Reply {
    /// Nothing.
    None,
    /// Send this binary (edgegate) or text (Socket.IO) message back.
    Send(u8, Vec<u8>),
}

impl Ws {
    /// Opens a TCP connection from `local` (any port) and upgrades it on `path`.
    pub async fn connect(server: SocketAddr, local: Option<IpAddr>, path: &str) -> io::Result<Ws> {
        let sock = if server.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(ip) = local {
            sock.bind(SocketAddr::new(ip, 0))?;
        }
        let stream = sock.connect(server).await?;
        stream.set_nodelay(true)?;
        let mut ws = Ws {
            stream,
            buf: vec![0; READ_BUF],
            start: 0,
            end: 0,
            mask: 0x9e37_79b9 ^ (server.port() as u32) ^ rand::random::<u32>(),
            out: Vec::new(),
            closed: false,
        };
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {server}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        ws.stream.write_all(req.as_bytes()).await?;
        loop {
            if let Some(at) = find(&ws.buf[..ws.end], b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&ws.buf[..at]).to_string();
                if !head.starts_with("HTTP/1.1 101") {
                    return Err(io::Error::other(format!(
                        "upgrade refused: {}",
                        head.lines().next().unwrap_or("")
                    )));
                }
                ws.start = at + 4;
                return Ok(ws);
            }
            if ws.end == ws.buf.len() {
                return Err(io::Error::other("upgrade response too large"));
            }
            let n = ws.stream.read(&mut ws.buf[ws.end..]).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            ws.end += n;
        }
    }

    /// Reads once from the socket (cancel-safe). Returns bytes read; 0 at end of stream.
    pub async fn fill(&mut self) -> io::Result<usize> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else {
                let n = self.buf.len() * 2;
                self.buf.resize(n, 0);
            }
        }
        let n = self.stream.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        Ok(n)
    }

    /// Calls `f(opcode, payload)` for every complete frame buffered, then sends whatever it
    /// asked to send (and answers WebSocket pings). Errors on a frame we cannot handle.
    pub async fn drain(&mut self, mut f: impl FnMut(u8, &[u8]) -> Reply) -> io::Result<()> {
        let mut replies: Vec<(u8, Vec<u8>)> = Vec::new();
        loop {
            let b = &self.buf[self.start..self.end];
            if b.len() < 2 {
                break;
            }
            let (op, masked, len7) = (b[0] & 0x0f, b[1] & 0x80 != 0, (b[1] & 0x7f) as usize);
            if b[0] & 0x80 == 0 || op == 0 || masked {
                return Err(io::Error::other("fragmented or masked server frame"));
            }
            let (len, hdr) = match len7 {
                126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
                127 if b.len() >= 10 => (
                    u64::from_be_bytes(b[2..10].try_into().expect("8 bytes")) as usize,
                    10,
                ),
                126 | 127 => break,
                n => (n, 2),
            };
            if len > MAX_FRAME {
                return Err(io::Error::other("server frame too large"));
            }
            if b.len() < hdr + len {
                break;
            }
            let payload = &b[hdr..hdr + len];
            match op {
                PING => replies.push((PONG, payload.to_vec())),
                PONG => {}
                CLOSE => self.closed = true,
                _ => {
                    if let Reply::Send(op, v) = f(op, payload) {
                        replies.push((op, v));
                    }
                }
            }
            self.start += hdr + len;
        }
        for (op, v) in replies {
            self.send(op, &[&v]).await?;
        }
        Ok(())
    }

    /// Sends each payload as its own masked message, all in one write.
    pub async fn send(&mut self, op: u8, payloads: &[&[u8]]) -> io::Result<()> {
        self.out.clear();
        for p in payloads {
            self.mask = self
                .mask
                .wrapping_mul(1_664_525)
                .wrapping_add(1_013_904_223);
            let key = self.mask.to_be_bytes();
            self.out.push(0x80 | op);
            match p.len() {
                n if n < 126 => self.out.push(0x80 | n as u8),
                n if n <= u16::MAX as usize => {
                    self.out.push(0x80 | 126);
                    self.out.extend_from_slice(&(n as u16).to_be_bytes());
                }
                n => {
                    self.out.push(0x80 | 127);
                    self.out.extend_from_slice(&(n as u64).to_be_bytes());
                }
            }
            self.out.extend_from_slice(&key);
            self.out
                .extend(p.iter().enumerate().map(|(i, b)| b ^ key[i & 3]));
        }
        self.stream.write_all(&self.out).await
    }

    /// Reads until `f` returns `Some`, answering pings; for handshakes.
    pub async fn wait_for<T>(
        &mut self,
        mut f: impl FnMut(u8, &[u8]) -> Option<T>,
    ) -> io::Result<T> {
        loop {
            let mut got = None;
            self.drain(|op, p| {
                if got.is_none() {
                    got = f(op, p);
                }
                Reply::None
            })
            .await?;
            if let Some(v) = got {
                return Ok(v);
            }
            if self.closed || self.fill().await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The URL path a subscriber (or publisher) of `channel` uses.
pub fn path(d: Dialect, channel: &str, publisher: bool) -> String {
    match d {
        Dialect::Edgegate => "/ws".into(),
        Dialect::Plain if publisher => format!("/pub?ch={channel}"),
        Dialect::Plain => format!("/sub?ch={channel}"),
        Dialect::SocketIo => "/socket.io/?EIO=4&transport=websocket".into(),
    }
}

/// Connects and, for subscribers, subscribes to `channel`; returns once the server has
/// confirmed (edgegate `Subscribed`, Socket.IO ack) or at once (plain `ws`).
pub async fn open(
    d: Dialect,
    server: SocketAddr,
    local: Option<IpAddr>,
    channel: &str,
    subscribe: bool,
    publisher: bool,
) -> io::Result<Ws> {
    let mut ws = Ws::connect(server, local, &path(d, channel, publisher)).await?;
    match d {
        Dialect::Edgegate => {
            ws.send(BINARY, &[&proto::hello()]).await?;
            ws.wait_for(|_, p| match decode_server(p, MAX_FRAME) {
                Ok(ServerFrame::Welcome { .. }) => Some(Ok(())),
                Ok(ServerFrame::Error { code, reason, .. }) => {
                    Some(Err(io::Error::other(format!("refused {code}: {reason}"))))
                }
                _ => None,
            })
            .await??;
            if subscribe {
                ws.send(BINARY, &[&proto::subscribe(1, channel)]).await?;
                ws.wait_for(|_, p| match decode_server(p, MAX_FRAME) {
                    Ok(ServerFrame::Subscribed { id: 1, .. }) => Some(Ok(())),
                    Ok(ServerFrame::Error { code, reason, .. }) => {
                        Some(Err(io::Error::other(format!("subscribe {code}: {reason}"))))
                    }
                    _ => None,
                })
                .await??;
            }
        }
        Dialect::Plain => {}
        Dialect::SocketIo => {
            ws.wait_for(|_, p| p.starts_with(b"0{").then_some(()))
                .await?;
            ws.send(TEXT, &[b"40"]).await?;
            ws.wait_for(|_, p| p.starts_with(b"40").then_some(()))
                .await?;
            if subscribe {
                let m = format!("421[\"sub\",\"{channel}\"]");
                ws.send(TEXT, &[m.as_bytes()]).await?;
                ws.wait_for(|_, p| p.starts_with(b"431").then_some(()))
                    .await?;
            }
        }
    }
    Ok(ws)
}

/// Handles one frame of a subscriber: records payloads, answers application pings.
pub fn on_frame(d: Dialect, tally: &mut Tally<'_>, op: u8, p: &[u8]) -> Reply {
    match d {
        Dialect::Edgegate => {
            if let Some(data) = proto::message_data(p) {
                tally.payload(data);
                return Reply::None;
            }
            match decode_server(p, MAX_FRAME) {
                Ok(ServerFrame::Ping { nonce }) => Reply::Send(BINARY, proto::pong(nonce).to_vec()),
                Ok(ServerFrame::Dropped { count, .. }) => {
                    tally.dropped(count);
                    Reply::None
                }
                Ok(_) => Reply::None,
                Err(_) => {
                    tally.bad();
                    Reply::None
                }
            }
        }
        Dialect::Plain => {
            if op == BINARY {
                tally.payload(p);
            }
            Reply::None
        }
        Dialect::SocketIo => {
            if let Some(rest) = p.strip_prefix(b"42[\"m\",\"")
                && let Some(body) = rest.strip_suffix(b"\"]")
            {
                tally.payload(body);
                Reply::None
            } else if p == b"2" {
                Reply::Send(TEXT, b"3".to_vec())
            } else {
                Reply::None
            }
        }
    }
}

/// Encodes one publish in `d`'s dialect: (opcode, message).
pub fn publish_message(
    d: Dialect,
    channel: &str,
    mode: edgegate::protocol::Mode,
    data: Vec<u8>,
) -> (u8, Vec<u8>) {
    match d {
        Dialect::Edgegate => (BINARY, proto::publish(channel, mode, data).to_vec()),
        Dialect::Plain => (BINARY, data),
        Dialect::SocketIo => {
            let s = String::from_utf8(data).unwrap_or_default();
            (
                TEXT,
                format!("42[\"pub\",\"{channel}\",\"{s}\"]").into_bytes(),
            )
        }
    }
}

/// Handles a frame arriving at a publisher: only pings need an answer.
pub fn on_publisher_frame(d: Dialect, op: u8, p: &[u8]) -> Reply {
    match d {
        Dialect::Edgegate => match decode_server(p, MAX_FRAME) {
            Ok(ServerFrame::Ping { nonce }) => Reply::Send(BINARY, proto::pong(nonce).to_vec()),
            _ => Reply::None,
        },
        Dialect::SocketIo if op == TEXT && p == b"2" => Reply::Send(TEXT, b"3".to_vec()),
        _ => Reply::None,
    }
}
