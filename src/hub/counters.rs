//! Node-wide counters kept by the hub and the sessions. Plain atomics: the telemetry module
//! reads them for `/metrics` and OpenTelemetry.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

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
    /// Of `deliveries`, `reliable`.
    pub deliveries_reliable: AtomicU64,
    /// Of `deliveries`, `datagram`.
    pub deliveries_datagram: AtomicU64,
    /// Of `deliveries`, `latest`.
    pub deliveries_latest: AtomicU64,
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
    /// Sessions accepted since start, WebTransport.
    pub sessions_total_wt: AtomicU64,
    /// Sessions accepted since start, WebSocket.
    pub sessions_total_ws: AtomicU64,
    /// Handshakes that failed (bad hello, auth, timeout); by reason in `handshake_reasons`.
    pub handshake_failures: AtomicU64,
    /// Handshake failures by reason (an error code name or a transport-level reason).
    pub handshake_reasons: Mutex<BTreeMap<&'static str, u64>>,
    /// Time from fan-out to the transport write of the oldest frame of each write batch.
    pub deliver_latency: Histogram,
    /// Client round-trip times measured by heartbeats.
    pub rtt: Histogram,
    /// Subscriptions open now.
    pub subscriptions: AtomicI64,
    /// Client connections admitted and open now (both transports, handshakes included).
    pub connections_open: AtomicI64,
    /// Connections refused: too many from one address.
    pub refused_per_address: AtomicU64,
    /// Connections refused: the node holds `max_connections`.
    pub refused_node_full: AtomicU64,
    /// Connections refused: over the node's new-connection rate.
    pub refused_rate: AtomicU64,
    /// Of the refused, those dropped without an explanation (too many refusals at once).
    pub refused_silently: AtomicU64,
    /// Certificate reloads that changed the certificate in force.
    pub cert_reloads: AtomicU64,
    /// New certificate pairs refused (the old pair stayed).
    pub cert_reload_failures: AtomicU64,
}

impl Counters {
    /// Reads a counter.
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    /// Counts a failed handshake. Rare, so a lock is fine.
    pub fn handshake_failed(&self, reason: &'static str) {
        self.handshake_failures.fetch_add(1, Ordering::Relaxed);
        *self.handshake_reasons.lock().entry(reason).or_insert(0) += 1;
    }
}

/// Upper bounds of the latency histogram buckets, seconds.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// A fixed-bucket histogram of durations (Prometheus-style cumulative on export).
#[derive(Debug, Default)]
pub struct Histogram {
    /// Non-cumulative counts per bucket of [`LATENCY_BUCKETS`], plus one for +Inf.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    /// Sum of observations, microseconds.
    sum_us: AtomicU64,
    /// Observations.
    count: AtomicU64,
}

impl Histogram {
    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Cumulative counts per bucket (the last is +Inf), the sum in seconds, and the count.
    pub fn snapshot(&self) -> (Vec<u64>, f64, u64) {
        let mut acc = 0;
        let cumulative = self
            .buckets
            .iter()
            .map(|b| {
                acc += b.load(Ordering::Relaxed);
                acc
            })
            .collect();
        (
            cumulative,
            self.sum_us.load(Ordering::Relaxed) as f64 / 1e6,
            self.count.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(5));
        let (b, sum, n) = h.snapshot();
        assert_eq!(n, 3);
        assert_eq!(b[0], 1);
        assert_eq!(b[5], 2, "3 ms falls in the 5 ms bucket");
        assert_eq!(*b.last().expect("inf"), 3);
        assert!((sum - 5.00305).abs() < 1e-6);
    }
}
