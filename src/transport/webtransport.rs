//! WebTransport (HTTP/3 over QUIC, `wtransport`) adapter: accepts sessions on `/wt` and runs
//! each as a [`session`](crate::session). No business rules here.
//!
//! Per session: the client opens one bidirectional control stream; the server opens one
//! unidirectional stream per subscription lane (unless the client asked for `single_stream`)
//! and sends `datagram` messages as QUIC datagrams. Everything queued for a stream is written
//! with one `write_all` per batch.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info};
use wtransport::endpoint::IncomingSession;
use wtransport::endpoint::endpoint_side::Server;
use wtransport::quinn;
use wtransport::{Connection, Endpoint, RecvStream, SendStream, ServerConfig, VarInt};

use crate::hub::outbox::Direct;
use crate::hub::{Item, Lane};
use crate::protocol::{ErrorCode, ServerFrame, StreamDecoder, encode_server, frame_len};
use crate::session::admission::{Permit, Refusal};
use crate::session::{self, FrameRead, FrameWrite, Kind, Shared, TransportError, WriteReport};
use crate::tls::Certs;

/// UDP socket buffer asked for, bytes (8 MiB): with the 208 KB default, handshakes are lost
/// under a connect burst. The kernel may grant less (`rmem_max`); the granted size is logged.
pub const UDP_BUFFER: usize = 8 * 1024 * 1024;

/// Binds the UDP socket (dual-stack when `addr` is `[::]`) with large buffers.
pub fn bind_udp(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    // Best effort: a smaller grant still works, just with less burst tolerance.
    let _ = socket.set_recv_buffer_size(UDP_BUFFER);
    let _ = socket.set_send_buffer_size(UDP_BUFFER);
    info!(
        requested = UDP_BUFFER,
        recv = socket.recv_buffer_size().unwrap_or(0),
        send = socket.send_buffer_size().unwrap_or(0),
        "UDP socket buffers"
    );
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// QUIC keep-alive PING interval when a session sends nothing else. 15 s keeps NAT bindings
/// (30 s and up on common routers) and stays well inside the idle timeout; the session's own
/// heartbeats usually make it unnecessary. At 5 s, keep-alives and their ACKs cost a third of
/// a core across 50,000 idle sessions.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Builds the server endpoint on an already bound socket.
/// Certificates come from `certs` at every handshake, so a reload takes effect on the next
/// connection without touching the endpoint or the sessions it holds.
pub fn endpoint(
    socket: std::net::UdpSocket,
    certs: &Arc<Certs>,
    idle_timeout: Duration,
) -> std::io::Result<Endpoint<Server>> {
    let mut transport = quinn::TransportConfig::default();
    // Clients open the control stream plus HTTP/3's three unidirectional streams; small
    // limits keep quinn's per-connection stream tables small.
    transport.max_concurrent_bidi_streams(4u32.into());
    transport.max_concurrent_uni_streams(8u32.into());
    transport.datagram_receive_buffer_size(Some(256 * 1024));
    transport.datagram_send_buffer_size(1024 * 1024);
    transport.max_idle_timeout(Some(
        idle_timeout
            .try_into()
            .map_err(|_| std::io::Error::other("idle timeout too large"))?,
    ));
    transport.keep_alive_interval(Some(KEEP_ALIVE));
    let config = ServerConfig::builder()
        .with_bind_socket(socket)
        .with_custom_tls_and_transport(certs.quic_server_config(), transport)
        .build();
    Endpoint::server(config)
}

/// Accepts sessions until `shutdown`, spawning each on `tracker`.
pub async fn serve(
    endpoint: Arc<Endpoint<Server>>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => i,
            _ = shutdown.cancelled() => break,
        };
        let peer = incoming.remote_address();
        match shared.admission.admit(peer.ip(), std::time::Instant::now()) {
            Ok(permit) => {
                tracker.spawn(handle(incoming, shared.clone(), permit));
            }
            Err(refusal) => match shared.admission.refusal_slot() {
                Some(slot) => {
                    tracker.spawn(refuse(incoming, shared.clone(), refusal, slot));
                }
                None => incoming.refuse(),
            },
        }
    }
}

/// Tells a refused client why: completes the handshake, accepts the CONNECT, and answers its
/// control stream with a fatal `Error` (`TooManyConnections`) before closing with the same
/// code. A rejected CONNECT (HTTP 429) would be cheaper, but neither browsers nor wtransport
/// let a client read the status of a rejected WebTransport session; an error frame they read
/// like any other. Bounded by the handshake timeout and by the caller's refusal slot.
async fn refuse(
    incoming: IncomingSession,
    shared: Arc<Shared>,
    refusal: Refusal,
    _slot: tokio::sync::OwnedSemaphorePermit,
) {
    let peer = incoming.remote_address();
    let timeout = Duration::from_secs(shared.config.handshake_timeout_secs);
    let reached = tokio::time::timeout(timeout, async {
        let request = incoming.await.ok()?;
        let conn = request.accept().await.ok()?;
        let (send, _recv) = conn.accept_bi().await.ok()?;
        Some((conn, send))
    })
    .await;
    let reason = refusal.reason();
    debug!(%peer, reason = %reason, "refused: {}", refusal.label());
    let Ok(Some((conn, control))) = reached else {
        return;
    };
    let mut writer = Writer {
        conn,
        control,
        lanes: HashMap::new(),
        single_stream: false,
        bufs: Vec::new(),
        datagrams: None,
    };
    let frame = encode_server(&ServerFrame::fatal(refusal.code(), reason.clone()));
    writer.close(refusal.code(), &reason, Some(frame)).await;
}

async fn handle(incoming: IncomingSession, shared: Arc<Shared>, _permit: Permit) {
    let peer = incoming.remote_address();
    let timeout = Duration::from_secs(shared.config.handshake_timeout_secs);
    let request = match tokio::time::timeout(timeout, incoming).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "QUIC/HTTP3 handshake failed");
            shared.hub.counters().handshake_failed("quic_handshake");
            return;
        }
        Err(_) => {
            debug!(%peer, "QUIC/HTTP3 handshake timed out");
            shared
                .hub
                .counters()
                .handshake_failed("quic_handshake_timeout");
            return;
        }
    };
    if request.path() != "/wt" {
        debug!(%peer, path = request.path(), "refused: not the WebTransport path");
        shared.hub.counters().handshake_failed("wrong_path");
        request.not_found().await;
        return;
    }
    let conn = match request.accept().await {
        Ok(c) => c,
        Err(e) => {
            debug!(%peer, error = %e, "session accept failed");
            return;
        }
    };
    let (send, recv) = match tokio::time::timeout(timeout, conn.accept_bi()).await {
        Ok(Ok(s)) => s,
        _ => {
            shared.hub.counters().handshake_failed("no_control_stream");
            conn.close(
                VarInt::from_u32(ErrorCode::HandshakeTimeout.code().into()),
                b"no control stream",
            );
            return;
        }
    };
    let max = shared.config.max_frame as usize;
    let reader = Reader {
        conn: conn.clone(),
        recv,
        decoder: StreamDecoder::new(max),
        max_datagram: max,
    };
    let writer = Writer {
        conn: conn.clone(),
        control: send,
        lanes: HashMap::new(),
        single_stream: false,
        bufs: Vec::new(),
        datagrams: Some(Arc::new(Datagrams {
            conn: conn.clone(),
            counters: shared.hub.counters().clone(),
        })),
    };
    // Boxed: awaited in place, the session's state would be laid out twice in this task.
    Box::pin(session::run(
        shared,
        Kind::WebTransport,
        peer,
        reader,
        writer,
    ))
    .await;
    conn.close(VarInt::from_u32(0), b"");
}

struct Reader {
    conn: Connection,
    recv: RecvStream,
    decoder: StreamDecoder,
    max_datagram: usize,
}

/// Most bytes taken from the control stream per read. Chunks are quinn's own buffers (no
/// per-session read buffer: a 16 KiB one was the largest item of an idle session).
const READ_CHUNK: usize = 64 * 1024;

fn framing_error(e: crate::protocol::DecodeError) -> TransportError {
    let code = match e {
        crate::protocol::DecodeError::TooLarge { .. } => ErrorCode::FrameTooLarge,
        _ => ErrorCode::Malformed,
    };
    TransportError::Protocol {
        code,
        reason: e.to_string(),
    }
}

impl FrameRead for Reader {
    fn try_next(&mut self) -> Option<Result<Option<Bytes>, TransportError>> {
        match self.decoder.next_frame() {
            Ok(Some(f)) => Some(Ok(Some(f))),
            Ok(None) => None,
            Err(e) => Some(Err(framing_error(e))),
        }
    }

    async fn recv(&mut self) -> Result<Option<Bytes>, TransportError> {
        loop {
            if let Some(f) = self.decoder.next_frame().map_err(framing_error)? {
                return Ok(Some(f));
            }
            tokio::select! {
                r = self.recv.quic_stream_mut().read_chunk(READ_CHUNK, true) => match r {
                    Ok(Some(chunk)) => self.decoder.extend(&chunk.bytes),
                    Ok(None) => {
                        if self.decoder.buffered() > 0 {
                            return Err(TransportError::Protocol {
                                code: ErrorCode::Malformed,
                                reason: "control stream ended inside a frame".into(),
                            });
                        }
                        return Ok(None);
                    }
                    Err(e) => return Err(TransportError::Io(e.to_string())),
                },
                d = self.conn.receive_datagram() => match d {
                    Ok(d) => {
                        let p = d.payload();
                        if p.is_empty() || p.len() > self.max_datagram {
                            // A bad datagram is dropped, not fatal: datagrams are best effort.
                            continue;
                        }
                        return Ok(Some(p));
                    }
                    Err(e) => return Err(TransportError::Io(e.to_string())),
                },
            }
        }
    }
}

struct Writer {
    conn: Connection,
    control: SendStream,
    lanes: HashMap<Lane, SendStream>,
    single_stream: bool,
    /// Per-lane write buffers reused across batches.
    bufs: Vec<(Lane, BytesMut)>,
    /// The inline path for datagrams (none while refusing).
    datagrams: Option<Arc<Datagrams>>,
}

/// WebTransport's inline path (see [`crate::hub::outbox::Direct`]): datagrams only. Sending
/// one is synchronous (it is queued in the QUIC connection, whose driver task sends it), so
/// the hub's fan-out hands datagrams over directly instead of waking the session's writer.
/// Stream frames need an open stream and flow-control credit, so they stay with the writer.
struct Datagrams {
    conn: Connection,
    counters: Arc<crate::hub::Counters>,
}

impl Direct for Datagrams {
    fn idle(&self) -> bool {
        true
    }

    fn takes_frames(&self) -> bool {
        false
    }

    fn write_now(&self, _items: &[Item], datagrams: &[Bytes]) -> bool {
        let mut dropped = 0;
        for d in datagrams {
            if self.conn.send_datagram(d).is_err() {
                dropped += 1;
            }
        }
        if dropped > 0 {
            self.counters
                .dropped_datagram_send
                .fetch_add(dropped, std::sync::atomic::Ordering::Relaxed);
        }
        false
    }
}

fn io(e: impl std::fmt::Display) -> TransportError {
    TransportError::Io(e.to_string())
}

impl FrameWrite for Writer {
    fn set_single_stream(&mut self) {
        self.single_stream = true;
    }

    fn direct(&self) -> Option<Arc<dyn Direct>> {
        self.datagrams.clone().map(|d| d as Arc<dyn Direct>)
    }

    async fn write(
        &mut self,
        items: &[Item],
        datagrams: &[Bytes],
    ) -> Result<WriteReport, TransportError> {
        for (_, b) in &mut self.bufs {
            b.clear();
        }
        let mut finished = Vec::new();
        for item in items {
            match item {
                Item::Frame(lane, frame) => {
                    let lane = if self.single_stream { 0 } else { *lane };
                    let buf = match self.bufs.iter().position(|(l, _)| *l == lane) {
                        Some(i) => &mut self.bufs[i].1,
                        None => {
                            self.bufs.push((lane, BytesMut::new()));
                            &mut self.bufs.last_mut().expect("invariant: just pushed").1
                        }
                    };
                    buf.extend_from_slice(&frame_len(frame.len()));
                    buf.extend_from_slice(frame);
                }
                Item::Finish(lane) => finished.push(*lane),
            }
        }
        for (lane, buf) in &self.bufs {
            if buf.is_empty() {
                continue;
            }
            let stream = if *lane == 0 {
                &mut self.control
            } else {
                match self.lanes.entry(*lane) {
                    std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::hash_map::Entry::Vacant(v) => {
                        let s = self.conn.open_uni().await.map_err(io)?.await.map_err(io)?;
                        v.insert(s)
                    }
                }
            };
            stream.write_all(buf).await.map_err(io)?;
        }
        // Forget buffers of lanes that went quiet so an idle session holds no memory.
        self.bufs.retain(|(l, b)| *l == 0 || !b.is_empty());
        for lane in finished {
            if let Some(mut s) = self.lanes.remove(&lane) {
                let _ = s.finish().await;
            }
            self.bufs.retain(|(l, _)| *l != lane);
        }
        let mut report = WriteReport::default();
        for d in datagrams {
            if self.conn.send_datagram(d).is_err() {
                report.dropped_datagrams += 1;
            }
        }
        Ok(report)
    }

    async fn close(&mut self, code: ErrorCode, reason: &str, error_frame: Option<Bytes>) {
        // Send the last frames and give the peer up to a second to receive them before the
        // close discards anything unacknowledged; a peer that does not read gets no longer.
        let control = &mut self.control;
        let _ = tokio::time::timeout(Duration::from_secs(1), async move {
            if let Some(f) = error_frame {
                let mut b = BytesMut::with_capacity(f.len() + 4);
                b.extend_from_slice(&frame_len(f.len()));
                b.extend_from_slice(&f);
                let _ = control.write_all(&b).await;
            }
            let _ = control.finish().await;
            let _ = control.quic_stream_mut().stopped().await;
        })
        .await;
        self.conn
            .close(VarInt::from_u32(code.code().into()), reason.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn binds_dual_stack_with_buffers() {
        let s = super::bind_udp("[::]:0".parse().expect("addr")).expect("bind");
        assert!(s.local_addr().expect("addr").port() > 0);
    }
}
