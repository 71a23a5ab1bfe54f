//! WebSocket fallback (HTTP/1.1 upgrade on `/ws`): the same session as WebTransport, one
//! protocol frame per binary message. No business rules here.
//!
//! Our own RFC 6455 framing ([`frame`]) straight on the socket rather than a general
//! WebSocket library, for two reasons the load benchmark measures:
//!
//! - **Idle memory.** An idle connection holds no buffer at all: the read buffer is freed
//!   once every message in it has been taken, and nothing of a write is kept once the socket
//!   has taken it.
//! - **Fan-out cost.** On plain TCP the socket is shared by the reader and the writer, and
//!   every write is a non-blocking `send` under one short lock. That makes the connection a
//!   [`Direct`]: the hub's fan-out writes to it inline (one `send` per subscriber per batch,
//!   no task wake-up). Bytes the socket does not take wait in a tail that the session's
//!   writer task flushes when the socket is writable again; while a tail waits, new frames
//!   stay in the outbox, so its bounds and drop policies apply unchanged.
//!
//! Over TLS (HTTPS/WSS on the TCP port) the stream is the TLS session: reads and writes go
//! through it asynchronously, the writer half behind an async lock (pongs and close replies
//! from the reader take it too), and there is no inline path.

pub mod frame;

use std::cell::RefCell;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tracing::debug;

use crate::hub::Item;
use crate::hub::outbox::Direct;
use crate::protocol::{ErrorCode, ServerFrame, encode_server};
use crate::session::admission::Refusal;
use crate::session::{self, FrameRead, FrameWrite, Kind, Shared, TransportError, WriteReport};
use frame::{Incoming, OP_BINARY, OP_CLOSE, OP_PONG, Parser};

/// Bytes asked of the socket per read. The buffer exists only while a message is being
/// read: it is freed once every message in it has been taken.
const READ_CHUNK: usize = 4096;

/// Longest the writer's reusable encoding buffer may stay (per thread): past this, a burst's
/// buffer is released after use.
const SCRATCH_KEEP: usize = 256 * 1024;

/// After our close frame, how long we read (and discard) for the client's, so that closing
/// with unread input does not reset the connection and lose the error frame.
const LINGER: Duration = Duration::from_secs(1);

/// The `/ws` route.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new().route("/ws", get(upgrade)).with_state(shared)
}

/// Checks the opening handshake (RFC 6455 §4.2.1); the client's key, or the response to
/// refuse it with.
#[allow(clippy::result_large_err)]
fn handshake(headers: &HeaderMap) -> Result<HeaderValue, Response> {
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if !has_token(header::CONNECTION, "upgrade") || !has_token(header::UPGRADE, "websocket") {
        return Err((
            StatusCode::BAD_REQUEST,
            "a WebSocket upgrade needs `Connection: upgrade` and `Upgrade: websocket`",
        )
            .into_response());
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        let mut r = (
            StatusCode::UPGRADE_REQUIRED,
            "only WebSocket version 13 is supported",
        )
            .into_response();
        r.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return Err(r);
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| (StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key").into_response())?;
    let accept = frame::accept_key(key.as_bytes());
    HeaderValue::from_str(&accept).map_err(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn switching(accept: HeaderValue) -> Response {
    let mut r = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = r.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    r
}

async fn upgrade(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut req: Request,
) -> Response {
    let accept = match handshake(req.headers()) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let max = shared.config.max_frame as usize;
    match shared.admission.admit(peer.ip(), std::time::Instant::now()) {
        Ok(permit) => {
            tokio::spawn(async move {
                let Ok(upgraded) = on_upgrade.await else {
                    return;
                };
                let (reader, writer) = split(upgraded, max);
                // Boxed: awaited in place, the session's state would be laid out twice in
                // this task (the future and its awaitee), 2 KB more per idle connection.
                Box::pin(session::run(shared, Kind::WebSocket, peer, reader, writer)).await;
                drop(permit);
            });
        }
        Err(refusal) => {
            if let Some(r) = refuse(&shared, refusal, on_upgrade) {
                return r;
            }
        }
    }
    switching(accept)
}

/// Tells a refused client why. While refusal slots last, the upgrade completes and the
/// client gets a fatal `Error` frame and close code 4204 (`TooManyConnections`), which a
/// browser can read (it cannot read the status of a failed upgrade): `None`, answer with
/// the upgrade. Past that, a plain `429` with the same JSON error body as the HTTP API:
/// cheap, and still readable by non-browser clients.
fn refuse(
    shared: &Shared,
    refusal: Refusal,
    on_upgrade: hyper::upgrade::OnUpgrade,
) -> Option<Response> {
    let code = refusal.code();
    let reason = refusal.reason();
    debug!(reason = %reason, "refused: {}", refusal.label());
    let Some(slot) = shared.admission.refusal_slot() else {
        let body =
            serde_json::json!({ "code": code.code(), "name": code.name(), "reason": reason });
        return Some((StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response());
    };
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let (_reader, mut writer) = split(upgraded, 0);
        let frame = encode_server(&ServerFrame::fatal(code, reason.clone()));
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            writer.close(code, &reason, Some(frame)),
        )
        .await;
        drop(slot);
    });
    None
}

/// The two halves of an upgraded connection: the plain socket shared by both, or a TLS
/// stream split in two.
fn split(upgraded: Upgraded, max: usize) -> (Reader, Writer) {
    match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => {
            // Copied out: `read_buf` is a view of hyper's (much larger) connection buffer.
            let buf = parts.read_buf.to_vec();
            let plain = Arc::new(Plain {
                tcp: parts.io.into_inner(),
                out: Mutex::new(Out::default()),
            });
            (
                Reader {
                    src: Src::Plain(plain.clone()),
                    buf,
                    parser: Parser::default(),
                    max,
                },
                Writer {
                    dst: Dst::Plain(plain),
                },
            )
        }
        Err(upgraded) => {
            let (rd, wr) = tokio::io::split(TokioIo::new(upgraded));
            let wr = Arc::new(tokio::sync::Mutex::new(wr));
            (
                Reader {
                    src: Src::Tls(rd, wr.clone()),
                    buf: Vec::new(),
                    parser: Parser::default(),
                    max,
                },
                Writer { dst: Dst::Tls(wr) },
            )
        }
    }
}

type TlsRead = ReadHalf<TokioIo<Upgraded>>;
type TlsWrite = Arc<tokio::sync::Mutex<WriteHalf<TokioIo<Upgraded>>>>;

/// A plain TCP connection, shared by the reader, the writer and the hub's inline writes.
struct Plain {
    tcp: TcpStream,
    out: Mutex<Out>,
}

/// What has been written but not yet taken by the socket.
#[derive(Default)]
struct Out {
    /// Bytes waiting, in order; empty (and unallocated) when the socket took everything.
    tail: Vec<u8>,
    /// The socket failed; later writes are discarded and the writer reports this.
    broken: Option<String>,
}

thread_local! {
    /// Encoding buffer for writes that go straight to the socket.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl Plain {
    /// Writes what `encode` appends, now: straight to the socket if nothing is waiting,
    /// after the tail otherwise. Returns whether bytes are left waiting.
    fn send(&self, encode: impl FnOnce(&mut Vec<u8>)) -> bool {
        let mut out = self.out.lock();
        if out.broken.is_some() {
            return false;
        }
        if !out.tail.is_empty() {
            encode(&mut out.tail);
            return true;
        }
        SCRATCH.with(|s| {
            let mut guard = s.try_borrow_mut();
            let mut local = Vec::new();
            let buf: &mut Vec<u8> = match &mut guard {
                Ok(b) => b,
                Err(_) => &mut local,
            };
            buf.clear();
            encode(buf);
            let mut at = 0;
            while at < buf.len() {
                match self.tcp.try_write(&buf[at..]) {
                    Ok(n) => at += n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => {
                        out.broken = Some(e.to_string());
                        break;
                    }
                }
            }
            if out.broken.is_none() && at < buf.len() {
                out.tail.extend_from_slice(&buf[at..]);
            }
            buf.clear();
            if buf.capacity() > SCRATCH_KEEP {
                *buf = Vec::new();
            }
        });
        !out.tail.is_empty()
    }

    /// Waits until the socket has taken every waiting byte.
    async fn flush(&self) -> Result<(), TransportError> {
        loop {
            {
                let mut out = self.out.lock();
                loop {
                    if let Some(e) = &out.broken {
                        return Err(TransportError::Io(e.clone()));
                    }
                    if out.tail.is_empty() {
                        out.tail = Vec::new();
                        return Ok(());
                    }
                    match self.tcp.try_write(&out.tail) {
                        Ok(n) => {
                            out.tail.drain(..n);
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) => out.broken = Some(e.to_string()),
                    }
                }
            }
            self.tcp
                .writable()
                .await
                .map_err(|e| TransportError::Io(e.to_string()))?;
        }
    }

    /// Our close frame has been sent: stop writing, then read and discard until the client
    /// closes too (or [`LINGER`] passes).
    async fn linger(&self) {
        let _ = socket2::SockRef::from(&self.tcp).shutdown(std::net::Shutdown::Write);
        let _ = tokio::time::timeout(LINGER, async {
            let mut sink = [0u8; 512];
            loop {
                if self.tcp.readable().await.is_err() {
                    return;
                }
                match self.tcp.try_read(&mut sink) {
                    Ok(0) => return,
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(_) => return,
                }
            }
        })
        .await;
    }
}

/// Appends every frame of a batch as a binary message.
fn encode_batch(items: &[Item], datagrams: &[Bytes], buf: &mut Vec<u8>) {
    for item in items {
        if let Item::Frame(_, b) = item {
            frame::encode(OP_BINARY, b, buf);
        }
    }
    for d in datagrams {
        frame::encode(OP_BINARY, d, buf);
    }
}

impl Direct for Plain {
    fn idle(&self) -> bool {
        let out = self.out.lock();
        out.tail.is_empty() && out.broken.is_none()
    }

    fn write_now(&self, items: &[Item], datagrams: &[Bytes]) -> bool {
        self.send(|buf| encode_batch(items, datagrams, buf))
    }
}

enum Src {
    Plain(Arc<Plain>),
    Tls(TlsRead, TlsWrite),
}

struct Reader {
    src: Src,
    /// Bytes read and not yet parsed; unallocated between messages.
    buf: Vec<u8>,
    parser: Parser,
    max: usize,
}

fn io_error(e: std::io::Error) -> TransportError {
    TransportError::Io(e.to_string())
}

impl Reader {
    /// One non-blocking read on a plain socket: `None` when nothing more is there (or on
    /// TLS, where reads are async only, or at end of stream, which `recv` reports).
    fn read_now(&mut self) -> Option<Result<(), TransportError>> {
        let Src::Plain(p) = &self.src else {
            return None;
        };
        self.buf.reserve(READ_CHUNK);
        let r = match p.tcp.try_read_buf(&mut self.buf) {
            Ok(0) => None,
            Ok(_) => Some(Ok(())),
            Err(e) if e.kind() == ErrorKind::WouldBlock => None,
            Err(e) => Some(Err(io_error(e))),
        };
        self.release_if_empty();
        r
    }

    /// Takes the next message or control frame out of the buffer (see [`Parser::next`]);
    /// returns it and how many bytes it used.
    fn take(&mut self) -> Result<(Option<Incoming>, usize), TransportError> {
        let (m, used) = self.parser.next(&self.buf, self.max)?;
        self.buf.drain(..used);
        self.release_if_empty();
        Ok((m, used))
    }

    /// An empty buffer gives its memory back: an idle connection holds none.
    fn release_if_empty(&mut self) {
        if self.buf.is_empty() {
            self.buf = Vec::new();
        }
    }

    /// Sends a control frame (pong, close reply) from the reader's side.
    async fn control(&mut self, opcode: u8, payload: &[u8]) {
        match &self.src {
            Src::Plain(p) => {
                if p.send(|b| frame::encode(opcode, payload, b)) {
                    let _ = tokio::time::timeout(LINGER, p.flush()).await;
                }
            }
            Src::Tls(_, wr) => {
                let mut buf = Vec::with_capacity(payload.len() + frame::MAX_HEADER);
                frame::encode(opcode, payload, &mut buf);
                let mut w = wr.lock().await;
                let _ = tokio::time::timeout(LINGER, async {
                    w.write_all(&buf).await?;
                    w.flush().await
                })
                .await;
            }
        }
    }
}

impl FrameRead for Reader {
    fn try_next(&mut self) -> Option<Result<Option<Bytes>, TransportError>> {
        loop {
            if self.buf.is_empty() {
                // What else has already arrived (one non-blocking read): a publisher that is
                // ahead of us gets its publishes handled, and fanned out, together.
                match self.read_now()? {
                    Ok(()) => continue,
                    Err(e) => return Some(Err(e)),
                }
            }
            // Data frames and pongs only: a ping or a close needs an answer written, which
            // `recv` does.
            let opcode = self.buf.first()? & 0x0F;
            if opcode != OP_BINARY && opcode != frame::OP_CONTINUATION && opcode != OP_PONG {
                return None;
            }
            let (m, used) = match self.take() {
                Ok(r) => r,
                Err(e) => return Some(Err(e)),
            };
            match m {
                Some(Incoming::Binary(b)) => return Some(Ok(Some(b))),
                Some(Incoming::Pong) => continue,
                Some(other) => {
                    unreachable!("only data frames and pongs are parsed here: {other:?}")
                }
                // An incomplete frame: perhaps its rest has arrived.
                None if used == 0 => match self.read_now()? {
                    Ok(()) => continue,
                    Err(e) => return Some(Err(e)),
                },
                // A fragment kept by the parser.
                None => continue,
            }
        }
    }

    async fn recv(&mut self) -> Result<Option<Bytes>, TransportError> {
        loop {
            if !self.buf.is_empty() {
                let (m, _) = self.take()?;
                match m {
                    Some(Incoming::Binary(b)) => return Ok(Some(b)),
                    // Boxed (rare): keeps the reader's future, held by every idle
                    // connection, small.
                    Some(Incoming::Ping(p)) => {
                        Box::pin(self.control(OP_PONG, &p)).await;
                        continue;
                    }
                    Some(Incoming::Pong) => continue,
                    Some(Incoming::Close(code)) => {
                        // Echo the client's code (§5.5.1), then end the session.
                        let payload = code.map(|c| c.to_be_bytes().to_vec()).unwrap_or_default();
                        Box::pin(self.control(OP_CLOSE, &payload)).await;
                        return Ok(None);
                    }
                    None => {}
                }
            }
            let n = match &mut self.src {
                Src::Plain(p) => {
                    // Readiness first, so an idle connection waits with no buffer.
                    p.tcp.readable().await.map_err(io_error)?;
                    self.buf.reserve(READ_CHUNK);
                    match p.tcp.try_read_buf(&mut self.buf) {
                        Ok(n) => n,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            self.release_if_empty();
                            continue;
                        }
                        Err(e) => return Err(io_error(e)),
                    }
                }
                Src::Tls(rd, _) => {
                    self.buf.reserve(READ_CHUNK);
                    rd.read_buf(&mut self.buf).await.map_err(io_error)?
                }
            };
            if n == 0 {
                // The peer closed without a close frame.
                return Ok(None);
            }
        }
    }
}

enum Dst {
    Plain(Arc<Plain>),
    Tls(TlsWrite),
}

struct Writer {
    dst: Dst,
}

impl FrameWrite for Writer {
    fn direct(&self) -> Option<Arc<dyn Direct>> {
        match &self.dst {
            Dst::Plain(p) => Some(p.clone()),
            Dst::Tls(_) => None,
        }
    }

    fn pending(&self) -> bool {
        match &self.dst {
            Dst::Plain(p) => !p.out.lock().tail.is_empty(),
            Dst::Tls(_) => false,
        }
    }

    async fn write(
        &mut self,
        items: &[Item],
        datagrams: &[Bytes],
    ) -> Result<WriteReport, TransportError> {
        match &self.dst {
            Dst::Plain(p) => {
                if !items.is_empty() || !datagrams.is_empty() {
                    p.send(|buf| encode_batch(items, datagrams, buf));
                }
                p.flush().await?;
            }
            Dst::Tls(wr) => {
                let mut buf = Vec::new();
                encode_batch(items, datagrams, &mut buf);
                let mut w = wr.lock().await;
                w.write_all(&buf).await.map_err(io_error)?;
                w.flush().await.map_err(io_error)?;
            }
        }
        Ok(WriteReport::default())
    }

    async fn close(&mut self, code: ErrorCode, reason: &str, error_frame: Option<Bytes>) {
        let close = frame::close_payload(code.ws_close_code(), reason);
        let encode = |buf: &mut Vec<u8>| {
            if let Some(f) = &error_frame {
                frame::encode(OP_BINARY, f, buf);
            }
            frame::encode(OP_CLOSE, &close, buf);
        };
        match &self.dst {
            Dst::Plain(p) => {
                p.send(encode);
                if p.flush().await.is_ok() {
                    p.linger().await;
                }
            }
            Dst::Tls(wr) => {
                let mut buf = Vec::new();
                encode(&mut buf);
                let mut w = wr.lock().await;
                if w.write_all(&buf).await.is_ok() {
                    let _ = w.shutdown().await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame.
    fn client(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [7u8, 1, 9, 3];
        let mut out = vec![0x80 | opcode, 0x80 | payload.len() as u8];
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    #[tokio::test]
    async fn one_read_yields_its_data_frames_without_io_and_leaves_pings_to_recv() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let mut peer = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        let plain = Arc::new(Plain {
            tcp: server,
            out: Mutex::new(Out::default()),
        });
        let mut reader = Reader {
            src: Src::Plain(plain),
            buf: Vec::new(),
            parser: Parser::default(),
            max: 1024,
        };
        let mut wire = client(OP_BINARY, b"one");
        wire.extend(client(OP_PONG, b""));
        wire.extend(client(OP_BINARY, b"two"));
        wire.extend(client(frame::OP_PING, b"p"));
        wire.extend(client(OP_BINARY, b"three"));
        peer.write_all(&wire).await.expect("write");
        let mut got = Vec::new();
        // All 5 frames may need more than one read to arrive; each read's frames come out.
        while got.len() < 3 {
            let first = tokio::time::timeout(Duration::from_secs(5), reader.recv())
                .await
                .expect("in time")
                .expect("frame")
                .expect("open");
            got.push(first);
            while let Some(next) = reader.try_next() {
                got.push(next.expect("frame").expect("open"));
            }
        }
        assert_eq!(got, vec![&b"one"[..], b"two", b"three"]);
        // The ping was answered (by recv, in order).
        let mut pong = [0u8; 3];
        tokio::time::timeout(Duration::from_secs(5), peer.read_exact(&mut pong))
            .await
            .expect("in time")
            .expect("pong");
        assert_eq!(pong, [0x80 | OP_PONG, 1, b'p']);
    }
}
