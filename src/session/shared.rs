//! State shared by every session of a node: settings, node identity, the session registry
//! (for drain and forced reconnects) and node-wide admission.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::Deserialize;
use tokio::sync::Notify;

use super::Kind;
use super::admission::{self, Admission};
use crate::auth::Verifier;
use crate::hub::outbox::Config as OutboxConfig;
use crate::hub::{Hub, Outbox};
use crate::protocol::{
    DEFAULT_MAX_DATAGRAM_PAYLOAD, DEFAULT_MAX_FRAME, ErrorCode, Limits, ServerFrame,
};

/// Session settings (`[session]` in the config file).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Largest frame accepted from a client, bytes.
    pub max_frame: u32,
    /// Largest `datagram` payload, bytes.
    pub max_datagram_payload: u32,
    /// Most subscriptions per session.
    pub max_subscriptions: u32,
    /// Publishes per second per session (token bucket rate).
    pub publish_rate: u32,
    /// Publish burst (token bucket depth).
    pub publish_burst: u32,
    /// Refused requests in a row (rate, permission) before the session is closed.
    pub max_violations: u32,
    /// Largest presence info, bytes.
    pub max_presence_info: usize,
    /// Seconds a client has to send `Hello`.
    pub handshake_timeout_secs: u64,
    /// Seconds between server pings.
    pub heartbeat_secs: u64,
    /// Seconds without any frame from the client before the session is closed.
    pub idle_timeout_secs: u64,
    /// Seconds a client has to `Refresh` after its token expired.
    pub token_grace_secs: u64,
    /// Frames moved from the outbox per write (coalesced into one write per stream).
    pub write_batch: usize,
    /// Outbound queue capacities.
    pub outbox: OutboxConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_frame: DEFAULT_MAX_FRAME,
            max_datagram_payload: DEFAULT_MAX_DATAGRAM_PAYLOAD,
            // 128 channels covers a dashboard with many tickers; more is a client bug.
            max_subscriptions: 128,
            // 100/s sustained, 300 burst: a chat or an input stream, not a firehose; backends
            // publish through the HTTP API instead.
            publish_rate: 100,
            publish_burst: 300,
            max_violations: 50,
            max_presence_info: 1024,
            // 10 s: a TLS + HTTP/3 handshake takes a few RTTs; slow-loris holds less.
            handshake_timeout_secs: 10,
            heartbeat_secs: 15,
            // Three missed heartbeats.
            idle_timeout_secs: 45,
            token_grace_secs: 30,
            // 256 frames of ~100 bytes fill a few packets per write.
            write_batch: 256,
            outbox: OutboxConfig::default(),
        }
    }
}

impl Config {
    /// The limits told to clients in `Welcome`.
    pub fn limits(&self) -> Limits {
        Limits {
            max_frame: self.max_frame,
            max_datagram_payload: self.max_datagram_payload,
            max_subscriptions: self.max_subscriptions,
            publish_rate: self.publish_rate,
            publish_burst: self.publish_burst,
        }
    }
}

/// Node identity told to clients.
#[derive(Debug, Clone)]
pub struct Node {
    /// This node's id.
    pub id: String,
    /// This node's region.
    pub region: String,
}

/// The relay mesh as sessions and the HTTP API see it.
pub trait Relay: Send + Sync + std::fmt::Debug {
    /// Sends a reliable or latest publish to the channel's home when that is another node,
    /// and returns where its answer will come; `None` when this node is the home.
    fn forward(
        &self,
        p: &crate::hub::Publish<'_>,
    ) -> Option<tokio::sync::oneshot::Receiver<Result<crate::protocol::Position, crate::hub::Error>>>;
    /// A datagram was published here: hand it to the interested nodes.
    fn datagram(&self, p: &crate::hub::Publish<'_>);
    /// A client URL of another node of this region, for drained clients.
    fn reconnect_hint(&self) -> Option<String>;
    /// A client wants to recover `channel` from `want`, which this node's replica cannot
    /// serve yet: fetch from the home and resolve when it can (or cannot ever). `None` when
    /// nothing needs waiting for.
    fn prepare(
        &self,
        _channel: &str,
        _want: crate::protocol::Position,
    ) -> Option<tokio::sync::oneshot::Receiver<()>> {
        None
    }
}

/// What publishing did.
#[derive(Debug)]
pub enum Published {
    /// Done here (sequenced, or refused).
    Done(Result<crate::protocol::Position, crate::hub::Error>),
    /// Sent to the channel's home; its answer comes on this channel.
    Forwarded(tokio::sync::oneshot::Receiver<Result<crate::protocol::Position, crate::hub::Error>>),
}

/// How long a publish forwarded to the channel's home may take.
pub const FORWARD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl Published {
    /// Waits for the outcome (bounded by [`FORWARD_TIMEOUT`]).
    pub async fn wait(self) -> Result<crate::protocol::Position, crate::hub::Error> {
        match self {
            Published::Done(r) => r,
            Published::Forwarded(rx) => match tokio::time::timeout(FORWARD_TIMEOUT, rx).await {
                Ok(Ok(r)) => r,
                _ => Err(crate::hub::Error::new(
                    ErrorCode::Unavailable,
                    "the channel's home did not answer; publish again",
                )),
            },
        }
    }
}

/// Everything sessions share: the hub, the verifier, settings, and the session registry.
#[derive(Debug)]
pub struct Shared {
    /// The channel hub.
    pub hub: Hub,
    /// Token verifier.
    pub verifier: Verifier,
    /// Session settings.
    pub config: Config,
    /// Node identity.
    pub node: Node,
    /// Connection admission (`[limits]`), used by both transports.
    pub admission: Arc<Admission>,
    /// The relay mesh, when this node is part of one.
    pub relay: std::sync::OnceLock<Arc<dyn Relay>>,
    pub(super) next_id: AtomicU64,
    pub(super) registry: Mutex<HashMap<u64, Registered>>,
    /// Notified when the last session leaves.
    emptied: Notify,
    /// Set while the node drains: new sessions are sent away at once.
    draining: std::sync::atomic::AtomicBool,
    /// Where drained clients are told to reconnect (another node of the region).
    reconnect_hint: parking_lot::RwLock<Option<String>>,
}

#[derive(Debug)]
pub(super) struct Registered {
    pub(super) outbox: Arc<Outbox>,
    pub(super) kind: Kind,
}

impl Shared {
    /// Builds the shared state with the default `[limits]`.
    pub fn new(hub: Hub, verifier: Verifier, config: Config, node: Node) -> Arc<Self> {
        Self::with_limits(
            hub,
            verifier,
            config,
            node,
            admission::LimitsConfig::default(),
        )
    }

    /// Builds the shared state with connection limits.
    pub fn with_limits(
        hub: Hub,
        verifier: Verifier,
        config: Config,
        node: Node,
        limits: admission::LimitsConfig,
    ) -> Arc<Self> {
        let admission = Admission::new(limits, hub.counters().clone());
        Arc::new(Shared {
            hub,
            verifier,
            config,
            node,
            admission,
            relay: std::sync::OnceLock::new(),
            next_id: AtomicU64::new(1),
            registry: Mutex::new(HashMap::new()),
            emptied: Notify::new(),
            draining: std::sync::atomic::AtomicBool::new(false),
            reconnect_hint: parking_lot::RwLock::new(None),
        })
    }

    /// Sessions open now.
    pub fn session_count(&self) -> usize {
        self.registry.lock().len()
    }

    /// Sessions open now by transport.
    pub fn session_counts(&self) -> (usize, usize) {
        let r = self.registry.lock();
        let wt = r.values().filter(|s| s.kind == Kind::WebTransport).count();
        (wt, r.len() - wt)
    }

    /// Publishes through the mesh when there is one: reliable and latest go to the channel's
    /// home, datagrams fan out here and to interested nodes.
    pub fn publish(&self, p: crate::hub::Publish<'_>, now_ms: u64) -> Published {
        let Some(relay) = self.relay.get() else {
            return Published::Done(self.hub.publish(p, now_ms));
        };
        if p.mode == crate::protocol::Mode::Datagram {
            let r = self.hub.publish(
                crate::hub::Publish {
                    data: p.data.clone(),
                    ..p
                },
                now_ms,
            );
            if r.is_ok() {
                relay.datagram(&p);
            }
            return Published::Done(r);
        }
        match relay.forward(&p) {
            Some(rx) => Published::Forwarded(rx),
            None => Published::Done(self.hub.publish(p, now_ms)),
        }
    }

    /// Frames and bytes queued in every session's outbox.
    pub fn queue_depth(&self) -> (usize, usize) {
        self.registry
            .lock()
            .values()
            .map(|r| r.outbox.depth())
            .fold((0, 0), |(f, b), (f2, b2)| (f + f2, b + b2))
    }

    /// Removes a session from the registry (its guard calls this when it ends).
    pub(super) fn unregister(&self, id: u64) {
        let mut r = self.registry.lock();
        r.remove(&id);
        if r.is_empty() {
            self.emptied.notify_waiters();
        }
    }

    /// Resolves when no session is open.
    pub async fn wait_empty(&self) {
        loop {
            let notified = self.emptied.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.registry.lock().is_empty() {
                return;
            }
            notified.await;
        }
    }

    /// Starts draining: new sessions get `GoingAway` with `hint` instead of `Welcome`.
    pub fn start_draining(&self, hint: Option<String>) {
        *self.reconnect_hint.write() = hint;
        self.draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the node drains, and where to send clients.
    pub fn draining(&self) -> Option<Option<String>> {
        self.draining
            .load(std::sync::atomic::Ordering::Relaxed)
            .then(|| self.reconnect_hint.read().clone())
    }

    /// Tells the sessions open now to go away one by one, spread evenly over `window` (lame
    /// duck), so their reconnects do not land on the other nodes all at once. Returns how
    /// many were told.
    pub async fn going_away_spread(
        &self,
        reason: &str,
        reconnect_to: Option<String>,
        window: std::time::Duration,
    ) -> usize {
        let outboxes: Vec<Arc<Outbox>> = self
            .registry
            .lock()
            .values()
            .map(|r| r.outbox.clone())
            .collect();
        let n = outboxes.len();
        let frame = ServerFrame::GoingAway {
            reason: reason.to_string(),
            reconnect_to,
            after_ms: 0,
        };
        let start = tokio::time::Instant::now();
        for (i, o) in outboxes.iter().enumerate() {
            let at = start + window.mul_f64(i as f64 / n as f64);
            tokio::time::sleep_until(at).await;
            o.close_after(&frame, ErrorCode::GoingAway, reason);
        }
        n
    }

    /// Tells every session to go away (drain, shutdown, or a forced reconnect), delivering
    /// what is queued first. Returns how many were told.
    pub fn going_away(&self, reason: &str, reconnect_to: Option<String>, after_ms: u32) -> usize {
        let r = self.registry.lock();
        let frame = ServerFrame::GoingAway {
            reason: reason.to_string(),
            reconnect_to,
            after_ms,
        };
        for s in r.values() {
            s.outbox.close_after(&frame, ErrorCode::GoingAway, reason);
        }
        r.len()
    }
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
