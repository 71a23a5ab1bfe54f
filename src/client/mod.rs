//! Rust client: WebTransport, or WebSocket when asked (or when WebTransport fails with
//! [`TransportChoice::Auto`]). Depends on `protocol` only, never on server modules.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use edgegate::client::{Client, Options};
//! use edgegate::protocol::Mode;
//! let mut c = Client::connect(Options::new("http://127.0.0.1:4433").dev_insecure()).await?;
//! c.subscribe("chat:lobby", Default::default()).await?;
//! c.publish("chat:lobby", Mode::Reliable, None, b"hi".to_vec()).await?;
//! while let Some(ev) = c.next_event().await {
//!     println!("{ev:?}");
//! }
//! # Ok(()) }
//! ```
//!
//! Replies are matched to requests by id; everything else arrives through
//! [`Client::next_event`], in order per channel. Events are buffered up to
//! [`EVENT_BUFFER`]; a client that stops reading stops reading the connection too, and the
//! server eventually closes it as a slow consumer, exactly as for any other client.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt};
use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::protocol::{
    ClientFrame, ErrorCode, Limits, Member, Message, Mode, PROTOCOL_VERSION, Position, ServerFrame,
    SnapshotEntry, StreamDecoder, decode_server, encode_client, encode_with_prefix,
};

mod conn;
mod resilient;
pub use resilient::Resilient;

/// Events buffered between the connection and the application.
pub const EVENT_BUFFER: usize = 16 * 1024;

/// How long a request waits for its reply.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Which transport to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportChoice {
    /// WebTransport, falling back to WebSocket if it fails.
    Auto,
    /// WebTransport only.
    WebTransport,
    /// WebSocket only.
    WebSocket,
}

/// How the server certificate is checked (WebTransport, and `wss://` for `https://` URLs).
#[derive(Debug, Clone)]
pub enum CertCheck {
    /// The system's root certificates.
    System,
    /// Pin the SHA-256 of the certificate (dev nodes serve it at `/cert.sha256`).
    Sha256([u8; 32]),
    /// No check at all: development only.
    Insecure,
}

/// Connection options.
#[derive(Debug, Clone)]
pub struct Options {
    /// Base URL of the node, `http://host:port` or `https://host:port`.
    pub url: String,
    /// Credential (JWT), empty for anonymous.
    pub token: String,
    /// Transport.
    pub transport: TransportChoice,
    /// Certificate check for WebTransport and, with an `https://` URL, for `wss://`.
    pub cert: CertCheck,
    /// Ask for every frame on the control stream.
    pub single_stream: bool,
    /// Name sent in `Hello`.
    pub client_name: String,
    /// Previous session id, to keep presence continuous.
    pub resume: Option<String>,
}

impl Options {
    /// Defaults for `url`: auto transport, system roots, anonymous.
    pub fn new(url: impl Into<String>) -> Self {
        Options {
            url: url.into(),
            token: String::new(),
            transport: TransportChoice::Auto,
            cert: CertCheck::System,
            single_stream: false,
            client_name: format!("edgegate-rs/{}", env!("CARGO_PKG_VERSION")),
            resume: None,
        }
    }

    /// Skips certificate checks (dev nodes with a self-signed certificate).
    pub fn dev_insecure(mut self) -> Self {
        self.cert = CertCheck::Insecure;
        self
    }

    /// Sets the token.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = token.into();
        self
    }

    /// Sets the transport.
    pub fn transport(mut self, t: TransportChoice) -> Self {
        self.transport = t;
        self
    }

    /// Pins the server certificate by its hex SHA-256.
    pub fn cert_sha256(mut self, hex_digest: &str) -> Result<Self, Error> {
        let v = hex::decode(hex_digest.trim()).map_err(|e| Error::Config(e.to_string()))?;
        let a: [u8; 32] = v
            .try_into()
            .map_err(|_| Error::Config("a SHA-256 is 32 bytes".into()))?;
        self.cert = CertCheck::Sha256(a);
        Ok(self)
    }

    fn parts(&self) -> Result<(bool, String), Error> {
        let (secure, rest) = if let Some(r) = self.url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = self.url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(Error::Config(format!(
                "url must start with http:// or https://: {}",
                self.url
            )));
        };
        Ok((secure, rest.trim_end_matches('/').to_string()))
    }
}

/// A client error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Bad options.
    #[error("config: {0}")]
    Config(String),
    /// Could not connect.
    #[error("connect: {0}")]
    Connect(String),
    /// The server refused a request or closed the session.
    #[error("server error {code}: {reason}")]
    Server {
        /// Error code.
        code: u16,
        /// Reason.
        reason: String,
    },
    /// The connection is gone.
    #[error("connection closed")]
    Closed,
    /// No reply in time.
    #[error("request timed out")]
    Timeout,
    /// The node is draining and sent the client elsewhere instead of a session.
    #[error("node going away: {reason}")]
    GoingAway {
        /// Why.
        reason: String,
        /// Where to reconnect, if the node said.
        reconnect_to: Option<String>,
    },
    /// The server sent something unexpected.
    #[error("protocol: {0}")]
    Protocol(String),
}

impl Error {
    /// The server's error code, if this is a server error.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Server { code, .. } => ErrorCode::from_code(*code),
            _ => None,
        }
    }
}

/// Something that happened on the connection.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A channel message.
    Message(Message),
    /// A channel snapshot (after subscribing).
    Snapshot {
        /// Channel.
        channel: String,
        /// Position it reflects.
        position: Position,
        /// Entries.
        entries: Vec<SnapshotEntry>,
    },
    /// Presence join.
    Join {
        /// Channel.
        channel: String,
        /// Member.
        member: Member,
    },
    /// Presence leave.
    Leave {
        /// Channel.
        channel: String,
        /// Member.
        member: Member,
    },
    /// Messages dropped for this client (datagram/latest backpressure).
    Dropped {
        /// Channel.
        channel: String,
        /// How many.
        count: u64,
    },
    /// The channel's history broke: resync.
    Resync {
        /// Channel.
        channel: String,
        /// New position.
        position: Position,
    },
    /// The server ended a subscription.
    Unsubscribed {
        /// Channel.
        channel: String,
        /// Code.
        code: u16,
        /// Reason.
        reason: String,
    },
    /// The server is draining.
    GoingAway {
        /// Reason.
        reason: String,
        /// Where to reconnect.
        reconnect_to: Option<String>,
        /// Delay before reconnecting.
        after_ms: u32,
    },
    /// The token expires soon.
    TokenExpiring {
        /// Grace period.
        grace_ms: u32,
    },
    /// The connection ended (the last event of a [`Client`]; a [`Resilient`] client
    /// reconnects instead and reports [`Event::Reconnected`]).
    Closed,
    /// A [`Resilient`] client is connected again, to `url`, with every subscription resumed.
    Reconnected {
        /// Base URL of the node now serving the client.
        url: String,
    },
    /// The server sent an error not tied to a request (fatal ones end the session).
    Error {
        /// Code.
        code: u16,
        /// Reason.
        reason: String,
        /// Session ends.
        fatal: bool,
    },
}

/// Result of a subscribe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscribed {
    /// Channel position at subscribe time.
    pub position: Position,
    /// Whether recovery covered the requested gap.
    pub recovered: bool,
}

/// Subscribe options.
#[derive(Debug, Clone, Default)]
pub struct SubscribeOptions {
    /// Resume after this position.
    pub recover: Option<Position>,
    /// Join presence with this info.
    pub presence: Option<Bytes>,
    /// Receive join/leave events.
    pub presence_events: bool,
}

/// What the server said in `Welcome`.
#[derive(Debug, Clone)]
pub struct Welcome {
    /// Session id.
    pub session_id: String,
    /// Node id.
    pub node_id: String,
    /// Region.
    pub region: String,
    /// Limits in force.
    pub limits: Limits,
    /// Heartbeat interval, ms.
    pub heartbeat_ms: u32,
}

enum Sender {
    Wt {
        conn: wtransport::Connection,
        control: tokio::sync::Mutex<wtransport::SendStream>,
    },
    Ws(tokio::sync::Mutex<SplitSink<WebSocketStream<MaybeTlsStream<TcpStream>>, WsMessage>>),
}

struct Inner {
    sender: Sender,
    pending: Mutex<HashMap<u32, oneshot::Sender<ServerFrame>>>,
    events: mpsc::Sender<Event>,
    max_frame: usize,
}

impl Inner {
    async fn send(&self, frame: &ClientFrame, datagram: bool) -> Result<(), Error> {
        let body = encode_client(frame);
        match &self.sender {
            Sender::Wt { conn, control } => {
                if datagram {
                    return conn
                        .send_datagram(&body)
                        .map_err(|e| Error::Protocol(format!("datagram: {e}")));
                }
                control
                    .lock()
                    .await
                    .write_all(&encode_with_prefix(&body))
                    .await
                    .map_err(|_| Error::Closed)
            }
            Sender::Ws(sink) => sink
                .lock()
                .await
                .send(WsMessage::Binary(body))
                .await
                .map_err(|_| Error::Closed),
        }
    }

    /// Routes one server frame: replies to their requests, pings answered, the rest to the
    /// event queue (waiting for room: backpressure reaches the server).
    async fn dispatch(&self, frame: ServerFrame) -> Result<(), ()> {
        let (id, ev) = match frame {
            ServerFrame::Ping { nonce } => {
                let _ = self.send(&ClientFrame::Pong { nonce }, false).await;
                return Ok(());
            }
            ServerFrame::Message(m) => (0, Some(Event::Message(m))),
            ServerFrame::Snapshot {
                channel,
                position,
                entries,
            } => (
                0,
                Some(Event::Snapshot {
                    channel,
                    position,
                    entries,
                }),
            ),
            ServerFrame::Join { channel, member } => (0, Some(Event::Join { channel, member })),
            ServerFrame::Leave { channel, member } => (0, Some(Event::Leave { channel, member })),
            ServerFrame::Dropped { channel, count } => (0, Some(Event::Dropped { channel, count })),
            ServerFrame::Resync { channel, position } => {
                (0, Some(Event::Resync { channel, position }))
            }
            ServerFrame::Unsubscribed {
                channel,
                code,
                reason,
            } => (
                0,
                Some(Event::Unsubscribed {
                    channel,
                    code,
                    reason,
                }),
            ),
            ServerFrame::GoingAway {
                reason,
                reconnect_to,
                after_ms,
            } => (
                0,
                Some(Event::GoingAway {
                    reason,
                    reconnect_to,
                    after_ms,
                }),
            ),
            ServerFrame::TokenExpiring { grace_ms } => (0, Some(Event::TokenExpiring { grace_ms })),
            ServerFrame::Error {
                id: 0,
                code,
                reason,
                fatal,
            } => (
                0,
                Some(Event::Error {
                    code,
                    reason,
                    fatal,
                }),
            ),
            f @ (ServerFrame::Ok { id }
            | ServerFrame::Subscribed { id, .. }
            | ServerFrame::Published { id, .. }
            | ServerFrame::PresenceList { id, .. }
            | ServerFrame::HistoryPage { id, .. }
            | ServerFrame::Error { id, .. }) => {
                if let Some(tx) = self.pending.lock().remove(&id) {
                    let _ = tx.send(f);
                }
                return Ok(());
            }
            ServerFrame::Pong { .. } | ServerFrame::Welcome { .. } => return Ok(()),
        };
        let _ = id;
        match ev {
            Some(e) => self.events.send(e).await.map_err(|_| ()),
            None => Ok(()),
        }
    }
}

/// A connection to an edgegate node.
pub struct Client {
    inner: Arc<Inner>,
    events: mpsc::Receiver<Event>,
    next_id: AtomicU32,
    welcome: Welcome,
    transport: TransportChoice,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("session", &self.welcome.session_id)
            .field("transport", &self.transport)
            .finish()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        if let Sender::Wt { conn, .. } = &self.inner.sender {
            conn.close(wtransport::VarInt::from_u32(0), b"client dropped");
        }
    }
}

impl Client {
    /// Connects and completes the handshake.
    pub async fn connect(opts: Options) -> Result<Client, Error> {
        match opts.transport {
            TransportChoice::WebSocket => Self::connect_ws(&opts).await,
            TransportChoice::WebTransport => Self::connect_wt(&opts).await,
            TransportChoice::Auto => match Self::connect_wt(&opts).await {
                Ok(c) => Ok(c),
                Err(Error::Server { code, reason }) => Err(Error::Server { code, reason }),
                Err(_) => Self::connect_ws(&opts).await,
            },
        }
    }

    /// The server's `Welcome`.
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// The transport in use (never `Auto`).
    pub fn transport(&self) -> TransportChoice {
        self.transport
    }

    fn id(&self) -> u32 {
        self.next_id.fetch_add(1, Ordering::Relaxed).max(1)
    }

    async fn request(&self, id: u32, frame: ClientFrame) -> Result<ServerFrame, Error> {
        let (tx, rx) = oneshot::channel();
        self.inner.pending.lock().insert(id, tx);
        if let Err(e) = self.inner.send(&frame, false).await {
            self.inner.pending.lock().remove(&id);
            return Err(e);
        }
        match tokio::time::timeout(REQUEST_TIMEOUT, rx).await {
            Err(_) => {
                self.inner.pending.lock().remove(&id);
                Err(Error::Timeout)
            }
            Ok(Err(_)) => Err(Error::Closed),
            Ok(Ok(ServerFrame::Error { code, reason, .. })) => Err(Error::Server { code, reason }),
            Ok(Ok(f)) => Ok(f),
        }
    }

    /// Subscribes to a channel.
    pub async fn subscribe(
        &self,
        channel: &str,
        opts: SubscribeOptions,
    ) -> Result<Subscribed, Error> {
        let id = self.id();
        let f = ClientFrame::Subscribe {
            id,
            channel: channel.into(),
            recover: opts.recover,
            presence: opts.presence,
            presence_events: opts.presence_events,
        };
        match self.request(id, f).await? {
            ServerFrame::Subscribed {
                position,
                recovered,
                ..
            } => Ok(Subscribed {
                position,
                recovered,
            }),
            other => Err(Error::Protocol(format!(
                "expected Subscribed, got {other:?}"
            ))),
        }
    }

    /// Ends a subscription.
    pub async fn unsubscribe(&self, channel: &str) -> Result<(), Error> {
        let id = self.id();
        self.request(
            id,
            ClientFrame::Unsubscribe {
                id,
                channel: channel.into(),
            },
        )
        .await
        .map(|_| ())
    }

    /// Publishes and waits for the position assigned.
    pub async fn publish(
        &self,
        channel: &str,
        mode: Mode,
        key: Option<&str>,
        data: impl Into<Bytes>,
    ) -> Result<Position, Error> {
        let id = self.id();
        let f = ClientFrame::Publish {
            id,
            channel: channel.into(),
            mode,
            key: key.map(str::to_string),
            data: data.into(),
        };
        match self.request(id, f).await? {
            ServerFrame::Published { position, .. } => Ok(position),
            other => Err(Error::Protocol(format!(
                "expected Published, got {other:?}"
            ))),
        }
    }

    /// Publishes without waiting for a reply. `datagram` publishes over WebTransport go as a
    /// QUIC datagram.
    pub async fn publish_nowait(
        &self,
        channel: &str,
        mode: Mode,
        key: Option<&str>,
        data: impl Into<Bytes>,
    ) -> Result<(), Error> {
        let f = ClientFrame::Publish {
            id: 0,
            channel: channel.into(),
            mode,
            key: key.map(str::to_string),
            data: data.into(),
        };
        self.inner.send(&f, mode == Mode::Datagram).await
    }

    /// A channel's presence members.
    pub async fn presence(&self, channel: &str) -> Result<Vec<Member>, Error> {
        let id = self.id();
        match self
            .request(
                id,
                ClientFrame::Presence {
                    id,
                    channel: channel.into(),
                },
            )
            .await?
        {
            ServerFrame::PresenceList { members, .. } => Ok(members),
            other => Err(Error::Protocol(format!(
                "expected PresenceList, got {other:?}"
            ))),
        }
    }

    /// A page of history: `(position, complete, messages)`.
    pub async fn history(
        &self,
        channel: &str,
        since: Option<Position>,
        limit: u32,
    ) -> Result<(Position, bool, Vec<Message>), Error> {
        let id = self.id();
        let f = ClientFrame::History {
            id,
            channel: channel.into(),
            since,
            limit,
        };
        match self.request(id, f).await? {
            ServerFrame::HistoryPage {
                position,
                complete,
                messages,
                ..
            } => Ok((position, complete, messages)),
            other => Err(Error::Protocol(format!(
                "expected HistoryPage, got {other:?}"
            ))),
        }
    }

    /// Replaces the session's credential (answer to [`Event::TokenExpiring`]). The new token
    /// must be for the same user.
    pub async fn refresh(&self, token: &str) -> Result<(), Error> {
        let id = self.id();
        let f = ClientFrame::Refresh {
            id,
            token: token.into(),
        };
        match self.request(id, f).await? {
            ServerFrame::Ok { .. } => Ok(()),
            other => Err(Error::Protocol(format!("expected Ok, got {other:?}"))),
        }
    }

    /// Sends raw bytes as one frame (tests of the server's bad-input handling).
    pub async fn send_raw(&self, body: &[u8]) -> Result<(), Error> {
        match &self.inner.sender {
            Sender::Wt { control, .. } => control
                .lock()
                .await
                .write_all(&encode_with_prefix(body))
                .await
                .map_err(|_| Error::Closed),
            Sender::Ws(sink) => sink
                .lock()
                .await
                .send(WsMessage::Binary(Bytes::copy_from_slice(body)))
                .await
                .map_err(|_| Error::Closed),
        }
    }

    /// The next event; `None` once the connection is closed and every event was read.
    ///
    /// Cancel-safe.
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// Closes the connection.
    pub async fn close(self) {
        match &self.inner.sender {
            Sender::Wt { conn, .. } => conn.close(wtransport::VarInt::from_u32(0), b"bye"),
            Sender::Ws(sink) => {
                let _ = sink.lock().await.close().await;
            }
        }
    }
}
