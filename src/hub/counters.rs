//! Node-wide counters kept by the hub and the sessions. Plain atomics: the telemetry module
//! reads them for `/metrics` and OpenTelemetry.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Counters for everything that is delivered, dropped or refused. Every drop has a field.
#[derive(Debug, Default)]
pub struct Counters {
    /// Messages accepted for publishing, `reliable`.
    pub published_reliable: AtomicU64,
    /// Messages accepted for publishing, `datagram`.
    pub published_datagram: AtomicU64,
    /// Messages accepted for publishing, `latest`.
    pub published_latest: AtomicU64,
    /// Frames handed to subscriber outboxes (one per subscriber per message).
    pub deliveries: AtomicU64,
    /// Sessions closed because their reliable queue overflowed.
    pub slow_consumers: AtomicU64,
    /// `latest` values replaced in a queue before they were sent.
    pub conflated: AtomicU64,
    /// `latest` values dropped for a new key with no room in the queue.
    pub dropped_latest: AtomicU64,
    /// Datagrams dropped from a full queue (oldest first).
    pub dropped_datagrams: AtomicU64,
    /// Datagrams the transport could not send (too large for the path, send buffer full).
    pub dropped_datagram_send: AtomicU64,
    /// Requests refused with an error, any code.
    pub request_errors: AtomicU64,
    /// Sessions open now, WebTransport.
    pub sessions_wt: AtomicI64,
    /// Sessions open now, WebSocket.
    pub sessions_ws: AtomicI64,
    /// Sessions accepted since start.
    pub sessions_total: AtomicU64,
    /// Handshakes that failed (bad hello, auth, timeout).
    pub handshake_failures: AtomicU64,
    /// Subscriptions open now.
    pub subscriptions: AtomicI64,
}

impl Counters {
    /// Reads a counter.
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}
