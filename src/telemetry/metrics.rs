//! Prometheus text exposition (format 0.0.4) of the node's counters, rendered on scrape.
//!
//! Names follow Prometheus conventions: `edgegate_` prefix, `_total` for counters, base units
//! (seconds, bytes). Other parts of the node (the mesh) add their own series through
//! [`MetricsSource`].

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use crate::hub::counters::LATENCY_BUCKETS;
use crate::session::Shared;

/// Something that appends its own series to a scrape.
pub trait MetricsSource: Send + Sync + std::fmt::Debug {
    /// Appends complete families (`# HELP`, `# TYPE`, samples) to `out`.
    fn render(&self, out: &mut String);
}

/// One metric family writer.
pub struct Family<'a> {
    out: &'a mut String,
    name: &'static str,
}

/// Starts a family with its help text and type.
pub fn family<'a>(out: &'a mut String, name: &'static str, kind: &str, help: &str) -> Family<'a> {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    Family { out, name }
}

impl Family<'_> {
    /// A sample without labels.
    pub fn value(&mut self, v: impl std::fmt::Display) -> &mut Self {
        let _ = writeln!(self.out, "{} {v}", self.name);
        self
    }

    /// A sample with labels (values escaped).
    pub fn labeled(&mut self, labels: &[(&str, &str)], v: impl std::fmt::Display) -> &mut Self {
        let _ = write!(self.out, "{}{{", self.name);
        for (i, (k, val)) in labels.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            let _ = write!(self.out, "{sep}{k}=\"{}\"", escape(val));
        }
        let _ = writeln!(self.out, "}} {v}");
        self
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn u(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

fn i(a: &AtomicI64) -> i64 {
    a.load(Ordering::Relaxed).max(0)
}

fn histogram(o: &mut String, name: &str, help: &str, h: &crate::hub::counters::Histogram) {
    let (buckets, sum, count) = h.snapshot();
    let _ = writeln!(o, "# HELP {name} {help}");
    let _ = writeln!(o, "# TYPE {name} histogram");
    for (b, n) in LATENCY_BUCKETS.iter().zip(&buckets) {
        let _ = writeln!(o, "{name}_bucket{{le=\"{b}\"}} {n}");
    }
    let _ = writeln!(
        o,
        "{name}_bucket{{le=\"+Inf\"}} {}",
        buckets.last().copied().unwrap_or(0)
    );
    let _ = writeln!(o, "{name}_sum {sum}");
    let _ = writeln!(o, "{name}_count {count}");
}

/// Renders every node metric.
pub fn render(
    shared: &Shared,
    draining: bool,
    extra: &[std::sync::Arc<dyn MetricsSource>],
) -> String {
    let c = shared.hub.counters();
    let mut out = String::with_capacity(8 * 1024);
    let o = &mut out;
    family(o, "edgegate_sessions", "gauge", "Client sessions open now.")
        .labeled(&[("transport", "webtransport")], i(&c.sessions_wt))
        .labeled(&[("transport", "websocket")], i(&c.sessions_ws));
    family(
        o,
        "edgegate_sessions_accepted_total",
        "counter",
        "Client sessions accepted (handshake completed) since start.",
    )
    .labeled(&[("transport", "webtransport")], u(&c.sessions_total_wt))
    .labeled(&[("transport", "websocket")], u(&c.sessions_total_ws));
    family(
        o,
        "edgegate_subscriptions",
        "gauge",
        "Subscriptions open now.",
    )
    .value(i(&c.subscriptions));
    family(
        o,
        "edgegate_channels",
        "gauge",
        "Channels with state on this node.",
    )
    .value(shared.hub.channels().len());
    family(
        o,
        "edgegate_messages_published_total",
        "counter",
        "Messages accepted for publishing, by delivery mode.",
    )
    .labeled(&[("mode", "reliable")], u(&c.published_reliable))
    .labeled(&[("mode", "datagram")], u(&c.published_datagram))
    .labeled(&[("mode", "latest")], u(&c.published_latest));
    family(
        o,
        "edgegate_messages_delivered_total",
        "counter",
        "Messages handed to subscriber queues (one per subscriber), by delivery mode.",
    )
    .labeled(&[("mode", "reliable")], u(&c.deliveries_reliable))
    .labeled(&[("mode", "datagram")], u(&c.deliveries_datagram))
    .labeled(&[("mode", "latest")], u(&c.deliveries_latest));
    family(
        o,
        "edgegate_messages_dropped_total",
        "counter",
        "Messages not delivered, by reason.",
    )
    .labeled(&[("reason", "conflated")], u(&c.conflated))
    .labeled(&[("reason", "latest_no_room")], u(&c.dropped_latest))
    .labeled(
        &[("reason", "datagram_queue_full")],
        u(&c.dropped_datagrams),
    )
    .labeled(&[("reason", "datagram_send")], u(&c.dropped_datagram_send));
    family(
        o,
        "edgegate_slow_consumers_total",
        "counter",
        "Sessions closed because their reliable queue overflowed.",
    )
    .value(u(&c.slow_consumers));
    let (frames, bytes) = shared.queue_depth();
    family(
        o,
        "edgegate_queue_frames",
        "gauge",
        "Frames queued in session outboxes.",
    )
    .value(frames);
    family(
        o,
        "edgegate_queue_bytes",
        "gauge",
        "Bytes queued in session outboxes.",
    )
    .value(bytes);
    {
        let reasons = c.handshake_reasons.lock().clone();
        let mut f = family(
            o,
            "edgegate_handshake_failures_total",
            "counter",
            "Connections that failed before a session started, by reason.",
        );
        for (reason, n) in reasons {
            f.labeled(&[("reason", reason)], n);
        }
    }
    family(
        o,
        "edgegate_connections",
        "gauge",
        "Client connections admitted and open now (both transports).",
    )
    .value(i(&c.connections_open));
    family(
        o,
        "edgegate_connections_refused_total",
        "counter",
        "Client connections refused by [limits], by reason; `silent` counts those of them \
         dropped without an error frame because too many refusals were in flight.",
    )
    .labeled(&[("reason", "per_address")], u(&c.refused_per_address))
    .labeled(&[("reason", "node_full")], u(&c.refused_node_full))
    .labeled(&[("reason", "rate")], u(&c.refused_rate))
    .labeled(&[("reason", "silent")], u(&c.refused_silently));
    family(
        o,
        "edgegate_certificate_reloads_total",
        "counter",
        "Certificate reloads from tls.cert/tls.key, by result (a refused pair keeps the old).",
    )
    .labeled(&[("result", "reloaded")], u(&c.cert_reloads))
    .labeled(&[("result", "refused")], u(&c.cert_reload_failures));
    family(
        o,
        "edgegate_request_errors_total",
        "counter",
        "Client requests refused with an error.",
    )
    .value(u(&c.request_errors));
    histogram(
        o,
        "edgegate_deliver_latency_seconds",
        "Time from fan-out to the transport write, oldest frame of each write batch.",
        &c.deliver_latency,
    );
    histogram(
        o,
        "edgegate_client_rtt_seconds",
        "Client round-trip time measured by heartbeats.",
        &c.rtt,
    );
    family(o, "edgegate_draining", "gauge", "1 while the node drains.").value(u8::from(draining));
    for s in extra {
        s.render(o);
    }
    out
}
