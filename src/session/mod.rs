//! One client session, independent of the transport: handshake, authentication, requests,
//! heartbeats, idle and token expiry, and the outbound writer loop.
//!
//! Talks to `hub`, `auth` and `protocol`; never names wtransport or axum types. A transport
//! adapter supplies a [`FrameRead`] and a [`FrameWrite`] and calls [`run`].
//!
//! # Life of a session
//!
//! 1. [`run`] waits up to `handshake_timeout` for the first frame, which must be `Hello`.
//! 2. The token is verified; the session is registered and gets `Welcome`.
//! 3. Three loops run in one task until one ends: the reader (requests → hub, replies →
//!    outbox), the writer (outbox → transport, coalesced) and the ticker (pings, idle and
//!    token expiry).
//! 4. A [`Guard`] removes the session's subscriptions and presence however it ends.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use tracing::{Instrument, debug, info_span};

use crate::auth::{Cap, Grant};

pub mod admission;
mod requests;
mod shared;
use crate::hub::outbox::{CONTROL, Closed};
use crate::hub::{self, Item, Lane, Outbox, SessionRef};
use crate::protocol::{
    ClientFrame, ErrorCode, Mode, PROTOCOL_VERSION, ServerFrame, decode_client, encode_server,
};
use requests::{Bucket, State};
use shared::Registered;
pub use shared::{Config, FORWARD_TIMEOUT, Node, Published, Relay, Shared, now_ms};

/// Which transport carries a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// WebTransport over HTTP/3.
    WebTransport,
    /// WebSocket over HTTP/1.1.
    WebSocket,
}

impl Kind {
    /// Label for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Kind::WebTransport => "webtransport",
            Kind::WebSocket => "websocket",
        }
    }
}

/// A transport failed or the peer went away.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The peer closed the connection.
    #[error("connection closed by peer")]
    Closed,
    /// The peer broke framing rules.
    #[error("{code}: {reason}")]
    Protocol {
        /// Error code to report.
        code: ErrorCode,
        /// Readable reason.
        reason: String,
    },
    /// An I/O or QUIC error.
    #[error("transport: {0}")]
    Io(String),
}

/// The inbound half of a transport: yields frame bodies (prefix removed).
pub trait FrameRead: Send {
    /// The next frame, `Ok(None)` when the peer closed cleanly.
    fn recv(&mut self) -> impl Future<Output = Result<Option<Bytes>, TransportError>> + Send;
    /// The next frame if one is already complete in the transport's buffer, without I/O:
    /// the session handles everything one read brought in one inline-write scope.
    fn try_next(&mut self) -> Option<Result<Option<Bytes>, TransportError>> {
        None
    }
}

/// The outbound half of a transport.
pub trait FrameWrite: Send {
    /// The client asked for every frame on the control stream (`Hello.single_stream`).
    fn set_single_stream(&mut self) {}
    /// Writes a batch: frames to their lanes (coalesced per lane), datagrams as datagrams
    /// (or messages). Datagrams it cannot send are returned in `undeliverable` count.
    fn write(
        &mut self,
        items: &[Item],
        datagrams: &[Bytes],
    ) -> impl Future<Output = Result<WriteReport, TransportError>> + Send;
    /// A synchronous write path the hub may use to write fan-out inline (see
    /// [`crate::hub::outbox::Direct`]); `None` for transports that can only write async.
    fn direct(&self) -> Option<Arc<dyn crate::hub::outbox::Direct>> {
        None
    }
    /// Bytes of an earlier write (inline or a control reply) are still waiting for the
    /// socket: the next [`write`](Self::write) must run even with nothing new to write.
    fn pending(&self) -> bool {
        false
    }
    /// Sends an error frame if asked, then closes with `code`.
    fn close(
        &mut self,
        code: ErrorCode,
        reason: &str,
        error_frame: Option<Bytes>,
    ) -> impl Future<Output = ()> + Send;
}

/// What a write could not do.
#[derive(Debug, Default, Clone, Copy)]
pub struct WriteReport {
    /// Datagrams not sent (too large for the path, or the send buffer was full).
    pub dropped_datagrams: u64,
}

/// Removes the session from the hub and the registry when it ends, however it ends.
struct Guard {
    shared: Arc<Shared>,
    who: SessionRef,
    kind: Kind,
    subs: Arc<Mutex<HashMap<String, Lane>>>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        // Unregister first: a subscription completing late (one that waited for the mesh)
        // sees the session gone and removes itself.
        self.shared.unregister(self.who.id);
        for ch in self.subs.lock().keys() {
            self.shared.hub.unsubscribe(self.who.id, ch);
        }
        let c = self.shared.hub.counters();
        match self.kind {
            Kind::WebTransport => c.sessions_wt.fetch_sub(1, Ordering::Relaxed),
            Kind::WebSocket => c.sessions_ws.fetch_sub(1, Ordering::Relaxed),
        };
    }
}

fn fail(code: ErrorCode, reason: impl Into<String>) -> (ErrorCode, String) {
    (code, reason.into())
}

/// Longest a recovering subscribe waits for the mesh to bring this node's replica up to date.
const PREPARE_TIMEOUT: Duration = Duration::from_secs(3);

/// Longest a transport may take to send the last frames and close. (Every `close` is boxed:
/// it is rare and its future is large, and in place it would be part of every idle session.)
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs a session over a transport until it ends. Never panics on client input.
pub async fn run<R: FrameRead, W: FrameWrite>(
    shared: Arc<Shared>,
    kind: Kind,
    peer: std::net::SocketAddr,
    mut reader: R,
    mut writer: W,
) {
    let span = info_span!("session", transport = kind.name(), %peer, sid = tracing::field::Empty, user = tracing::field::Empty);
    async move {
        let cfg = &shared.config;
        // Boxed: awaited in place, the handshake's futures would stay part of the session's
        // state (and of every idle connection's memory) for its whole life.
        let Some(hello) = Box::pin(hello(&shared, &mut reader)).await else {
            return;
        };
        let (grant, client_name, single_stream) = match hello {
            Ok(v) => v,
            Err((code, reason)) => {
                shared.hub.counters().handshake_failed(code.name());
                debug!(%code, %reason, "handshake refused");
                let f = encode_server(&ServerFrame::fatal(code, reason.clone()));
                let _ = tokio::time::timeout(
                    CLOSE_TIMEOUT,
                    Box::pin(writer.close(code, &reason, Some(f))),
                )
                .await;
                return;
            }
        };
        if let Some(hint) = shared.draining() {
            debug!("refused: node draining");
            let f = encode_server(&ServerFrame::GoingAway {
                reason: "node draining".into(),
                reconnect_to: hint,
                after_ms: 0,
            });
            let _ = tokio::time::timeout(
                CLOSE_TIMEOUT,
                Box::pin(writer.close(ErrorCode::GoingAway, "node draining", Some(f))),
            )
            .await;
            return;
        }
        if single_stream {
            writer.set_single_stream();
        }
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let who = SessionRef {
            id,
            sid: format!("{}-{id:x}", shared.node.id).into(),
            user: grant.user.as_str().into(),
        };
        tracing::Span::current()
            .record("sid", &*who.sid)
            .record("user", &*who.user);
        debug!(client = %client_name, "session open");
        let outbox = Outbox::with_direct(
            cfg.outbox.clone(),
            shared.hub.counters().clone(),
            writer.direct(),
        );
        {
            let c = shared.hub.counters();
            c.sessions_total.fetch_add(1, Ordering::Relaxed);
            match kind {
                Kind::WebTransport => {
                    c.sessions_wt.fetch_add(1, Ordering::Relaxed);
                    c.sessions_total_wt.fetch_add(1, Ordering::Relaxed)
                }
                Kind::WebSocket => {
                    c.sessions_ws.fetch_add(1, Ordering::Relaxed);
                    c.sessions_total_ws.fetch_add(1, Ordering::Relaxed)
                }
            };
        }
        shared.registry.lock().insert(
            id,
            Registered {
                outbox: outbox.clone(),
                kind,
            },
        );
        let subs = Arc::new(Mutex::new(HashMap::new()));
        let _guard = Guard {
            shared: shared.clone(),
            who: who.clone(),
            kind,
            subs: subs.clone(),
        };
        outbox.push_frame(
            CONTROL,
            &ServerFrame::Welcome {
                session_id: who.sid.to_string(),
                node_id: shared.node.id.clone(),
                region: shared.node.region.clone(),
                limits: cfg.limits(),
                heartbeat_ms: (cfg.heartbeat_secs * 1000) as u32,
            },
        );
        let last_rx = AtomicU64::new(now_ms());
        let expires = AtomicU64::new(grant.expires_at.unwrap_or(u64::MAX));
        // Ping nonces are microseconds since this instant, so a Pong gives the RTT.
        let start = Instant::now();
        let mut state = State {
            start,
            shared: &shared,
            who: &who,
            outbox: &outbox,
            grant,
            subs: &subs,
            next_lane: 1,
            bucket: Bucket::new(cfg.publish_rate, cfg.publish_burst),
            violations: 0,
            expires: &expires,
        };
        let read_loop = async {
            loop {
                let mut next = Some(reader.recv().await);
                // Everything this read brought is handled in one inline-write scope (see
                // `hub::outbox`): when publishes arrive faster than one at a time, each
                // subscriber then gets one write for all of them instead of one per message.
                let scope = crate::hub::outbox::InlineFlush::begin();
                let mut failed = None;
                let mut taken = 0;
                while let Some(r) = next.take() {
                    match r {
                        Ok(Some(b)) => {
                            last_rx.store(now_ms(), Ordering::Relaxed);
                            if let Err(e) = state.handle(&b) {
                                failed = Some(e);
                                break;
                            }
                        }
                        Ok(None) | Err(TransportError::Closed) => return,
                        Err(TransportError::Protocol { code, reason }) => {
                            failed = Some((code, reason));
                            break;
                        }
                        Err(TransportError::Io(e)) => {
                            debug!(error = %e, "read failed");
                            return;
                        }
                    }
                    taken += 1;
                    if taken < READ_BATCH {
                        next = reader.try_next();
                    }
                }
                // Written before any await: the scope is this thread's.
                drop(scope);
                if let Some((code, reason)) = failed {
                    outbox.close(code, reason);
                    // The writer sends the error and closes.
                    std::future::pending::<()>().await;
                }
            }
        };
        let write_loop = async {
            loop {
                outbox.ready().await;
                // Batch buffers come from a per-thread pool and go back after the write: an
                // idle session holds none, and a busy one allocates none per batch.
                let (mut items, mut datagrams) =
                    BATCH.with(|b| std::mem::take(&mut *b.borrow_mut()));
                items.clear();
                datagrams.clear();
                let closed = outbox.drain(&mut items, &mut datagrams, cfg.write_batch);
                if !items.is_empty() || !datagrams.is_empty() || writer.pending() {
                    // A peer that stops reading blocks the write; once the outbox overflows
                    // (or anything else closes it) the write is abandoned.
                    // The last batch of a graceful close (it carries `GoingAway`) is written
                    // with a time limit instead: the outbox already reads as closed.
                    let written = if closed.is_some() {
                        tokio::time::timeout(CLOSE_TIMEOUT, writer.write(&items, &datagrams))
                            .await
                            .ok()
                    } else {
                        tokio::select! {
                            r = writer.write(&items, &datagrams) => Some(r),
                            _ = outbox.closed() => None,
                        }
                    };
                    let Some(written) = written else {
                        items.clear();
                        datagrams.clear();
                        let closed = closed
                            .clone()
                            .or_else(|| outbox.drain(&mut items, &mut datagrams, 0));
                        if let Some(c) = closed {
                            debug!(code = %c.code, reason = %c.reason, "closing session while a write was blocked");
                            close(&mut writer, c).await;
                        }
                        return;
                    };
                    match written {
                        Ok(r) if r.dropped_datagrams > 0 => {
                            shared
                                .hub
                                .counters()
                                .dropped_datagram_send
                                .fetch_add(r.dropped_datagrams, Ordering::Relaxed);
                        }
                        Ok(_) => {}
                        Err(e) => {
                            debug!(error = %e, "write failed");
                            return;
                        }
                    }
                }
                outbox.written();
                items.clear();
                datagrams.clear();
                if items.capacity() <= BATCH_KEEP && datagrams.capacity() <= BATCH_KEEP {
                    BATCH.with(|b| *b.borrow_mut() = (items, datagrams));
                }
                if let Some(c) = closed {
                    debug!(code = %c.code, reason = %c.reason, "closing session");
                    close(&mut writer, c).await;
                    return;
                }
            }
        };
        let tick_loop = async {
            let hb = Duration::from_secs(cfg.heartbeat_secs.max(1));
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + hb, hb);
            let mut warned = false;
            loop {
                tick.tick().await;
                let now = now_ms();
                if now.saturating_sub(last_rx.load(Ordering::Relaxed))
                    > cfg.idle_timeout_secs * 1000
                {
                    outbox.close(
                        ErrorCode::IdleTimeout,
                        "nothing received within the idle timeout",
                    );
                    return std::future::pending::<()>().await;
                }
                let exp = expires.load(Ordering::Relaxed);
                if exp != u64::MAX {
                    let now_s = now / 1000;
                    if now_s >= exp + cfg.token_grace_secs {
                        outbox.close(
                            ErrorCode::TokenExpired,
                            "token expired and was not refreshed",
                        );
                        return std::future::pending::<()>().await;
                    }
                    if now_s + cfg.heartbeat_secs >= exp && !warned {
                        warned = true;
                        let grace = (exp + cfg.token_grace_secs).saturating_sub(now_s) * 1000;
                        outbox.push_frame(
                            CONTROL,
                            &ServerFrame::TokenExpiring {
                                grace_ms: grace as u32,
                            },
                        );
                    } else if now_s + cfg.heartbeat_secs < exp {
                        warned = false;
                    }
                }
                let nonce = start.elapsed().as_micros() as u64;
                outbox.push_frame(CONTROL, &ServerFrame::Ping { nonce });
            }
        };
        first_of([
            Box::pin(read_loop),
            Box::pin(write_loop),
            Box::pin(tick_loop),
        ])
        .await;
        debug!("session closed");
    }
    .instrument(span)
    .await
}

/// Closes the transport as `c` says: the `Error` frame first if it asks for one, within
/// [`CLOSE_TIMEOUT`].
async fn close<W: FrameWrite>(writer: &mut W, c: Closed) {
    let f = c
        .send_error
        .then(|| encode_server(&ServerFrame::fatal(c.code, c.reason.clone())));
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, Box::pin(writer.close(c.code, &c.reason, f))).await;
}

/// Waits for and checks the `Hello`: the grant, client name and `single_stream`, or the
/// error to refuse it with; `None` when the peer went away first.
/// The grant is boxed: the session holds it for its whole life, and in place it would be
/// laid out more than once in the session's state.
async fn hello<R: FrameRead>(
    shared: &Shared,
    reader: &mut R,
) -> Option<Result<(Box<Grant>, String, bool), (ErrorCode, String)>> {
    let cfg = &shared.config;
    let first = tokio::time::timeout(
        Duration::from_secs(cfg.handshake_timeout_secs),
        reader.recv(),
    )
    .await;
    Some(match first {
        Err(_) => Err(fail(
            ErrorCode::HandshakeTimeout,
            "no Hello within the handshake timeout",
        )),
        Ok(Err(TransportError::Protocol { code, reason })) => Err((code, reason)),
        Ok(Err(_)) | Ok(Ok(None)) => return None,
        Ok(Ok(Some(b))) => match decode_client(&b, cfg.max_frame as usize) {
            Ok(ClientFrame::Hello {
                protocol_version,
                token,
                resume: _,
                single_stream,
                client_name,
            }) => {
                if protocol_version != PROTOCOL_VERSION {
                    Err(fail(
                        ErrorCode::UnsupportedVersion,
                        format!(
                            "protocol version {protocol_version} is not supported; this server speaks {PROTOCOL_VERSION}"
                        ),
                    ))
                } else {
                    shared
                        .verifier
                        .verify(&token, now_ms() / 1000)
                        .map(|g| (Box::new(g), client_name, single_stream))
                        .map_err(|e| (e.code(), e.to_string()))
                }
            }
            Ok(_) => Err(fail(
                ErrorCode::UnexpectedFrame,
                "the first frame must be Hello",
            )),
            Err(e) => Err(fail(ErrorCode::Malformed, e.to_string())),
        },
    })
}

thread_local! {
    /// Batch buffers lent to a session's writer for one batch (see the write loop).
    static BATCH: std::cell::RefCell<(Vec<Item>, Vec<Bytes>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// Most frames handled in one inline-write scope (then the fan-out is written and the
/// reader goes on): bounds how long one busy publisher holds its writes back.
const READ_BATCH: usize = 256;

/// Largest batch buffers returned to the per-thread pool.
const BATCH_KEEP: usize = 1024;

/// One of a session's loops.
type Loop<'a> = std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// Runs the loops until the first one ends, polling each only when its own waker fired.
/// (`select!` polls every branch on each wake: the reader and the ticker on every write
/// batch, which cost a transport read attempt per delivery batch.) Each loop gets a waker
/// that sets its bit and wakes the session task; a wake-up polls only the loops whose bits
/// are set. Three small wakers cost less per session than a `FuturesUnordered`.
async fn first_of(mut loops: [Loop<'_>; 3]) {
    use std::sync::atomic::AtomicU8;
    use std::task::{Poll, Wake, Waker};

    struct Flags {
        ready: AtomicU8,
        task: futures::task::AtomicWaker,
    }
    struct Bit {
        flags: Arc<Flags>,
        bit: u8,
    }
    impl Wake for Bit {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.flags.ready.fetch_or(self.bit, Ordering::AcqRel);
            self.flags.task.wake();
        }
    }

    let flags = Arc::new(Flags {
        // Every loop is polled the first time.
        ready: AtomicU8::new(0b111),
        task: futures::task::AtomicWaker::new(),
    });
    let wakers: [Waker; 3] = [0u8, 1, 2].map(|i| {
        Waker::from(Arc::new(Bit {
            flags: flags.clone(),
            bit: 1 << i,
        }))
    });
    std::future::poll_fn(|cx| {
        // Registered before the bits are taken: a wake-up after the swap wakes us again.
        flags.task.register(cx.waker());
        let ready = flags.ready.swap(0, Ordering::AcqRel);
        for (i, (l, w)) in loops.iter_mut().zip(&wakers).enumerate() {
            if ready & (1 << i) != 0
                && l.as_mut()
                    .poll(&mut std::task::Context::from_waker(w))
                    .is_ready()
            {
                return Poll::Ready(());
            }
        }
        Poll::Pending
    })
    .await
}
